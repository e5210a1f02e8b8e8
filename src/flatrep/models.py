"""Model builders. Every model is rebuilt from its config, which each checkpoint stores.

Every builder takes ``(input_shape, num_outputs, **options)``; ``build`` checks the options
against its signature. The measures treat every ``nn.Linear``, ``nn.Conv1d`` and ``nn.Conv2d``
as one "layer l", in definition order (``flatrep.measures.layers``), so the modules are
defined in the order the forward pass runs them. Models are measured in eval mode, so
BatchNorm layers use their running statistics and Dropout is off. The 2-D models take images
of shape (channels, height, width) and work out their flattened width by a dry forward pass,
so they fit any image size large enough for their pooling stages.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Sequence

import torch
from torch import nn

ACTIVATIONS = {"relu": nn.ReLU, "tanh": nn.Tanh}


class ModelError(ValueError):
    """An unknown model or a bad model option."""


def _activation(name: str) -> type[nn.Module]:
    """The activation module class ``model.activation`` names."""
    if name not in ACTIVATIONS:
        raise ModelError(f"unknown model.activation {name!r}; allowed: {sorted(ACTIVATIONS)}")
    return ACTIVATIONS[name]


def _dense(in_features: int, hidden: Sequence[int], num_outputs: int, act: type[nn.Module],
           bias: bool = True, dropout: float = 0.0) -> list[nn.Module]:
    """(Dropout if dropout > 0, Linear, activation) per hidden width, then the output Linear."""
    layers: list[nn.Module] = []
    widths = [in_features, *hidden]
    for width_in, width_out in zip(widths[:-1], widths[1:]):
        layers += [nn.Dropout(dropout)] if dropout > 0 else []
        layers += [nn.Linear(width_in, width_out, bias=bias), act()]
    layers.append(nn.Linear(widths[-1], num_outputs, bias=bias))
    return layers


def _image_shape(name: str, input_shape: tuple[int, ...]) -> tuple[int, int, int]:
    """``input_shape`` as (channels, height, width); ModelError for another rank."""
    if len(input_shape) != 3:
        raise ModelError(f"model {name!r} needs image inputs of shape (channels, height, "
                         f"width), got {tuple(input_shape)}")
    return tuple(input_shape)


def _flat_features(name: str, features: nn.Module, input_shape: tuple[int, ...]) -> int:
    """Values per sample that ``features`` puts out: one dry forward pass on zeros, without
    gradients and in eval mode (BatchNorm running statistics stay untouched)."""
    was_training = features.training
    features.eval()
    try:
        with torch.no_grad():
            return features(torch.zeros(1, *input_shape))[0].numel()
    except RuntimeError as error:
        raise ModelError(f"model {name!r}: inputs of shape {tuple(input_shape)} are too small "
                         f"for its conv/pooling stages ({error})") from error
    finally:
        features.train(was_training)


def _conv_features(in_channels: int, cfg: Sequence[int | str], kernel_size: int, padding: int,
                   act: type[nn.Module], batch_norm: bool = False) -> list[nn.Module]:
    """VGG-style feature stack: an int c is Conv2d(-> c)[-BatchNorm2d]-activation, "M" a 2x2
    max-pool with stride 2."""
    layers: list[nn.Module] = []
    for entry in cfg:
        if entry == "M":
            layers.append(nn.MaxPool2d(2))
            continue
        layers.append(nn.Conv2d(in_channels, entry, kernel_size, padding=padding))
        layers += [nn.BatchNorm2d(entry)] if batch_norm else []
        layers.append(act())
        in_channels = entry
    return layers


def _with_head(name: str, input_shape: tuple[int, ...], features: list[nn.Module],
               hidden: Sequence[int], num_outputs: int, act: type[nn.Module],
               dropout: float = 0.0) -> nn.Sequential:
    """features, Flatten, then ``_dense`` from the flattened width through ``hidden``."""
    body = nn.Sequential(*features, nn.Flatten())
    width = _flat_features(name, body, input_shape)
    return nn.Sequential(*body, *_dense(width, hidden, num_outputs, act, dropout=dropout))


def _init_conv_fan_out(model: nn.Module) -> None:
    """Conv weights N(0, 2 / (k_h k_w c_out)) and biases 0 (He init by fan-out, as the
    VGG codes of Ma & Ying / Chen et al. and of the SWA/Gadam repositories); Linear layers keep
    PyTorch's default."""
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            fan_out = math.prod(module.kernel_size) * module.out_channels
            nn.init.normal_(module.weight, 0.0, math.sqrt(2.0 / fan_out))
            nn.init.zeros_(module.bias)


def mlp(input_shape: int | tuple[int, ...], num_outputs: int, hidden: list[int],
        activation: str = "relu", bias: bool = True) -> nn.Sequential:
    """Fully connected net ``in - hidden... - out``: Flatten, (Linear, activation)*, Linear.

    in = prod(input_shape), the flattened input size (an int is that size itself). Chen et al.'s
    Fashion-MNIST net is ``hidden=[500, 500, 500]`` with tanh or relu (784-500-500-500-10).
    """
    in_features = input_shape if isinstance(input_shape, int) else math.prod(input_shape)
    return nn.Sequential(nn.Flatten(),
                         *_dense(in_features, hidden, num_outputs, _activation(activation), bias))


def cnn(input_shape: tuple[int, ...], num_outputs: int, channels: Sequence[int] = (16, 16),
        kernel_size: int = 5, activation: str = "relu", bias: bool = True) -> nn.Sequential:
    """1-D conv net: Flatten, Unflatten to (C, L), (Conv1d, activation)*, Flatten, Linear.

    Inputs have shape (L,) (one channel, e.g. MNIST-1D's (40,)) or (C, L). Every Conv1d has
    stride 2 and padding p = kernel_size // 2, so a length L becomes
    floor((L + 2 p - kernel_size) / 2) + 1; the Linear head reads channels[-1] * L_out features.
    """
    act = _activation(activation)
    if len(input_shape) not in (1, 2):
        raise ModelError(f"model 'cnn' needs inputs of shape (length,) or (channels, length), "
                         f"got {tuple(input_shape)}")
    width, length = (1, *input_shape) if len(input_shape) == 1 else input_shape
    padding = kernel_size // 2
    layers: list[nn.Module] = [nn.Flatten(), nn.Unflatten(1, (width, length))]
    for width_out in channels:
        layers += [nn.Conv1d(width, width_out, kernel_size, stride=2, padding=padding, bias=bias),
                   act()]
        width, length = width_out, (length + 2 * padding - kernel_size) // 2 + 1
    layers += [nn.Flatten(), nn.Linear(width * length, num_outputs, bias=bias)]
    return nn.Sequential(*layers)


def logreg(input_shape: int | tuple[int, ...], num_outputs: int,
           bias: bool = True) -> nn.Sequential:
    """Multinomial logistic regression f(x) = W x + b (Flatten, Linear) — an ``mlp`` without
    hidden layers; with cross-entropy its Hessian is (1/n) sum_i (diag p_i - p_i p_i^T) (x) x~_i
    x~_i^T, x~_i = (x_i, 1) (the False-Friend loss bound A2 holds for it in closed form)."""
    return mlp(input_shape, num_outputs, [], bias=bias)


def _conv_pool_net(name: str, input_shape: tuple[int, ...], num_outputs: int,
                   channels: Sequence[int], kernel_size: int, padding: int,
                   hidden: Sequence[int], activation: str) -> nn.Sequential:
    """Per entry c of ``channels``: Conv2d(-> c, kernel_size, padding)-activation-MaxPool2d(2);
    then Flatten, (Linear, activation) per width in ``hidden``, Linear(-> num_outputs)."""
    act = _activation(activation)
    cfg = [entry for width in channels for entry in (width, "M")]
    features = _conv_features(_image_shape(name, input_shape)[0], cfg, kernel_size, padding, act)
    return _with_head(name, input_shape, features, hidden, num_outputs, act)


def vgg_small(input_shape: tuple[int, ...], num_outputs: int,
              channels: Sequence[int] = (16, 16, 32, 64, 64), hidden: Sequence[int] = (128,),
              activation: str = "relu") -> nn.Sequential:
    """Ma & Ying's small "VGG-11", as in Chen et al.'s code (sharpdim ``src/models/vgg.py``,
    ``vgg11``, cfg 'A'): per entry c of ``channels``, Conv2d(3x3, padding 2)-activation-
    MaxPool2d(2), then Flatten, Linear(-> 128), activation, Linear(128 -> num_outputs) (``hidden``
    lists the widths of the hidden Linear layers, as for ``mlp``).

    Padding 2 with a 3x3 kernel is the reference's (each conv grows the image by 2 pixels):
    32x32 -> 34/17 -> 19/9 -> 11/5 -> 7/3 -> 5/2, so the head reads 64 * 2 * 2 = 256 features
    (also for 28x28). Conv weights N(0, 2 / (9 c_out)), conv biases 0; Linear layers keep
    PyTorch's default init (as the reference).
    """
    model = _conv_pool_net("vgg_small", input_shape, num_outputs, channels, 3, 2, hidden,
                           activation)
    _init_conv_fan_out(model)
    return model


def _lenet(name: str, input_shape: tuple[int, ...], num_outputs: int, first_padding: int,
           activation: str) -> nn.Sequential:
    """Conv2d(-> 6, 5x5, padding first_padding)-act-MaxPool2d(2)-Conv2d(6 -> 16, 5x5)-act-
    MaxPool2d(2)-Flatten-Linear(-> 120)-act-Linear(120 -> 84)-act-Linear(84 -> num_outputs)."""
    channels, _, _ = _image_shape(name, input_shape)
    act = _activation(activation)
    features = [nn.Conv2d(channels, 6, 5, padding=first_padding), act(), nn.MaxPool2d(2),
                nn.Conv2d(6, 16, 5), act(), nn.MaxPool2d(2)]
    return _with_head(name, input_shape, features, [120, 84], num_outputs, act)


def lenet(input_shape: tuple[int, ...], num_outputs: int,
          activation: str = "relu") -> nn.Sequential:
    """Chen et al.'s Fashion-MNIST LeNet (sharpdim ``src/models/fnn.py``, ``LeNet``): the first
    conv padded by 2, so 1x28x28 -> 6x28x28 -> 6x14x14 -> 16x10x10 -> 16x5x5 = 400 features
    (``_lenet``); PyTorch's default init (as the reference). 61706 parameters on 1x28x28."""
    return _lenet("lenet", input_shape, num_outputs, 2, activation)


def lenet5(input_shape: tuple[int, ...], num_outputs: int,
           activation: str = "relu") -> nn.Sequential:
    """Chen et al.'s CIFAR LeNet-5 (sharpdim ``src/models/fnn.py``, ``LeNet5``): no padding,
    so 3x32x32 -> 6x28x28 -> 6x14x14 -> 16x10x10 -> 16x5x5 = 400 features (``_lenet``);
    every weight Xavier-normal, every bias 0 (as the reference). 62006 parameters on 3x32x32."""
    model = _lenet("lenet5", input_shape, num_outputs, 0, activation)
    for module in model.modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            nn.init.xavier_normal_(module.weight)
            nn.init.zeros_(module.bias)
    return model


def cnn2d(input_shape: tuple[int, ...], num_outputs: int, channels: Sequence[int] = (32, 64),
          kernel_size: int = 3, hidden: Sequence[int] = (128,),
          activation: str = "relu") -> nn.Sequential:
    """A simple 2-D CNN for the False-Friend "simple CNN" experiment: per entry c of
    ``channels``, Conv2d(-> c, kernel_size, padding kernel_size // 2)-activation-MaxPool2d(2),
    then Flatten, (Linear, activation) per width in ``hidden``, Linear(-> num_outputs);
    PyTorch's default init. 1x28x28 -> 32x14x14 -> 64x7x7 = 3136 features with the defaults.

    The paper's exact network is UNCONFIRMED (neither the paper text nor its code gives it):
    this is the common conv32-conv64-dense128 MNIST/CIFAR net, with a pool after each conv.
    """
    return _conv_pool_net("cnn2d", input_shape, num_outputs, channels, kernel_size,
                          kernel_size // 2, hidden, activation)


VGG16_CFG = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M",
             512, 512, 512, "M")


def vgg16_bn(input_shape: tuple[int, ...], num_outputs: int, width: float = 1.0,
             dropout: float = 0.0) -> nn.Sequential:
    """VGG-16 with BatchNorm for CIFAR, the VGG16BN of the SWA codebase (Izmailov et al.) that
    Granziol's Gadam/GadamX code uses (``core/models/vgg.py``): 13 Conv2d(3x3, padding 1)-
    BatchNorm2d-ReLU in the cfg 64,64,M,128,128,M,256x3,M,512x3,M,512x3,M (M a 2x2 max-pool),
    then Flatten, Dropout-Linear(-> 512)-ReLU-Dropout-Linear(512 -> 512)-ReLU-
    Linear(512 -> num_outputs). Conv weights N(0, 2 / (9 c_out)), conv biases 0, BatchNorm
    weight 1 and bias 0, Linear layers PyTorch's default (as that code).

    The reference Dropout has p = 0.5; here ``dropout`` defaults to 0 (no Dropout modules), so
    the trained function is the eval-mode function the measures see. ``width`` scales every
    conv channel count and the two 512-unit Linear layers (rounded, at least 1), so tests can
    build a tiny copy. A 3x32x32 input leaves 512 x 1 x 1 features for the head; larger images
    give more (the flattened width is computed), smaller than 32x32 are rejected.
    """
    def scaled(channels: int) -> int:
        return max(1, round(channels * width))

    cfg = [entry if entry == "M" else scaled(entry) for entry in VGG16_CFG]
    features = _conv_features(_image_shape("vgg16_bn", input_shape)[0], cfg, 3, 1, nn.ReLU,
                              batch_norm=True)
    model = _with_head("vgg16_bn", input_shape, features, [scaled(512)] * 2, num_outputs,
                       nn.ReLU, dropout)
    _init_conv_fan_out(model)
    return model


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """softmax(Q K^T / sqrt(d)) V over the last two dims, d = q.shape[-1], with plain matmuls.

    Written out rather than ``F.scaled_dot_product_attention``, whose fused (flash, memory-
    efficient) kernels support neither double backward nor forward-mode AD: the measures need
    both (Hessian-vector products are ``jvp`` of ``grad``).
    """
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
    return scores.softmax(-1) @ v


class SelfAttention(nn.Module):
    """Multi-head self-attention: Linear qkv (dim -> 3 dim), ``attention`` per head, Linear proj."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, tokens, dim = x.shape
        q, k, v = (self.qkv(x).reshape(n, tokens, 3, self.heads, dim // self.heads)
                   .permute(2, 0, 3, 1, 4))                       # each (n, heads, tokens, d)
        return self.proj(attention(q, k, v).transpose(1, 2).reshape(n, tokens, dim))


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(LN(x)), then x + MLP(LN(x)); MLP is
    Linear-GELU-Linear."""

    def __init__(self, dim: int, heads: int, mlp_width: int):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = SelfAttention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, mlp_width), nn.GELU(), nn.Linear(mlp_width, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class VisionTransformer(nn.Module):
    """Patch embedding, class token, learned position embedding, pre-norm blocks, LayerNorm and
    a Linear head on the class token (see ``vit``)."""

    def __init__(self, input_shape: tuple[int, int, int], num_outputs: int, patch_size: int,
                 dim: int, depth: int, heads: int, mlp_width: int):
        super().__init__()
        channels, height, width = input_shape
        tokens = (height // patch_size) * (width // patch_size)
        self.patch = nn.Conv2d(channels, dim, patch_size, stride=patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, tokens + 1, dim))
        nn.init.normal_(self.cls_token, std=0.02)
        nn.init.normal_(self.pos_embed, std=0.02)
        self.blocks = nn.Sequential(*(Block(dim, heads, mlp_width) for _ in range(depth)))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_outputs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch(x).flatten(2).transpose(1, 2)               # (n, tokens, dim)
        x = torch.cat([self.cls_token.expand(len(x), -1, -1), x], 1) + self.pos_embed
        return self.head(self.norm(self.blocks(x)[:, 0]))


def vit(input_shape: tuple[int, ...], num_outputs: int, patch_size: int = 4, dim: int = 128,
        depth: int = 4, heads: int = 4, mlp_ratio: float = 2) -> VisionTransformer:
    """A small vision transformer trained from scratch (ViT, Dosovitskiy et al. 2021, pre-norm).

    Conv2d(kernel = stride = patch_size) embeds each patch in R^dim; a learned class token is
    prepended and a learned position embedding added (both N(0, 0.02^2)); ``depth`` blocks of
    x + MHSA(LN(x)) and x + MLP(LN(x)) (``heads`` heads, MLP Linear(dim -> mlp_ratio dim)-GELU-
    Linear); a final LayerNorm and Linear(dim -> num_outputs) on the class token. No dropout;
    Linear/Conv/LayerNorm keep PyTorch's default init. The measured layers, in order, are the
    patch Conv2d, then per block qkv, proj and the two MLP Linears, then the head.

    Attention is computed explicitly as softmax(Q K^T / sqrt(d_head)) V with plain matmuls
    (``attention``), never by ``F.scaled_dot_product_attention``, whose fused kernels lack
    double backward and forward-mode AD: Hessian-vector products (forward-over-reverse) and the
    ``torch.func`` input Jacobians work on this model. Chen et al. use pretrained timm ViTs on
    ImageNet instead (sharpdim ``vit_exp.py``); this small from-scratch ViT is ours.
    """
    channels, height, width = _image_shape("vit", input_shape)
    if height % patch_size or width % patch_size:
        raise ModelError(f"model 'vit': patch_size {patch_size} must divide the image size "
                         f"{height}x{width}")
    if dim % heads:
        raise ModelError(f"model 'vit': dim {dim} must be a multiple of heads {heads}")
    return VisionTransformer((channels, height, width), num_outputs, patch_size, dim, depth,
                             heads, round(dim * mlp_ratio))


BUILDERS = {"mlp": mlp, "cnn": cnn, "logreg": logreg, "vgg_small": vgg_small, "lenet": lenet,
            "lenet5": lenet5, "cnn2d": cnn2d, "vgg16_bn": vgg16_bn, "vit": vit}


def build(model_cfg: dict, input_shape: tuple[int, ...], num_outputs: int) -> nn.Module:
    """Build the model a study's ``model`` section describes (weights from the global RNG).

    Every builder takes ``(input_shape, num_outputs, **options)``; an option it does not
    take raises ModelError.
    """
    options = check_options(model_cfg)
    return BUILDERS[model_cfg["name"]](tuple(input_shape), num_outputs, **options)


def check_options(model_cfg: dict) -> dict:
    """The builder options of a ``model`` section; ModelError for an unknown model name or an
    option its builder does not take (run before any job starts)."""
    options = {key: value for key, value in model_cfg.items() if key != "name"}
    name = model_cfg["name"]
    if name not in BUILDERS:
        raise ModelError(f"unknown model.name {name!r}; allowed: {sorted(BUILDERS)}")
    parameters = list(inspect.signature(BUILDERS[name]).parameters.values())[2:]
    allowed = sorted(parameter.name for parameter in parameters)
    for key in options:
        if key not in allowed:
            raise ModelError(f"unknown model.{key} for model.name {name!r}; allowed: {allowed}")
    for parameter in parameters:
        if parameter.default is inspect.Parameter.empty and parameter.name not in options:
            raise ModelError(f"model.{parameter.name} is required for model.name {name!r}")
    return options


def seeded_build(model_cfg: dict, input_shape: tuple[int, ...], num_outputs: int,
                 seed: int) -> nn.Module:
    """``build`` with weights drawn from a generator seeded by ``seed`` only."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build(model_cfg, input_shape, num_outputs)
