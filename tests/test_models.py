"""Model builders: exact architectures (parameter counts in closed form), init statistics,
the explicit ViT attention and its second derivatives, and the measures running on them."""

import math

import numpy as np
import pytest
import torch
from torch import nn
from torch.func import jacrev, jvp
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.nn.functional import scaled_dot_product_attention

from flatrep import losses, models
from flatrep.cube import measuring
from flatrep.measures import curvature, layers

pytestmark = pytest.mark.usefixtures("float64_default")

TINY_VIT = {"name": "vit", "patch_size": 4, "dim": 8, "depth": 2, "heads": 2, "mlp_ratio": 2}


def num_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def linear(n_in: int, n_out: int) -> int:
    return n_in * n_out + n_out


def conv(c_in: int, c_out: int, k: int) -> int:
    return c_in * c_out * k * k + c_out


def test_paper_mlp_parameter_count():
    model = models.build({"name": "mlp", "hidden": [500, 500, 500], "activation": "tanh"},
                         (1, 28, 28), 10)
    assert num_params(model) == 784 * 500 + 500 + 2 * (500 * 500 + 500) + 500 * 10 + 10
    assert sum(isinstance(m, nn.Tanh) for m in model.modules()) == 3


@pytest.mark.parametrize("name, shape, expected", [
    ("lenet5", (3, 32, 32), 62006),
    ("lenet", (1, 28, 28), 61706),
    ("lenet5", (3, 32, 32), conv(3, 6, 5) + conv(6, 16, 5) + linear(400, 120) + linear(120, 84)
     + linear(84, 10)),
    ("lenet", (1, 28, 28), conv(1, 6, 5) + conv(6, 16, 5) + linear(400, 120) + linear(120, 84)
     + linear(84, 10)),
    ("vgg_small", (3, 32, 32), conv(3, 16, 3) + conv(16, 16, 3) + conv(16, 32, 3)
     + conv(32, 64, 3) + conv(64, 64, 3) + linear(64 * 2 * 2, 128) + linear(128, 10)),
    ("cnn2d", (1, 28, 28), conv(1, 32, 3) + conv(32, 64, 3) + linear(64 * 7 * 7, 128)
     + linear(128, 10)),
])
def test_parameter_counts(name, shape, expected):
    assert num_params(models.build({"name": name}, shape, 10)) == expected


def test_vgg16_bn_parameter_count():
    channels = [3, 64, 64, 128, 128, 256, 256, 256, 512, 512, 512, 512, 512, 512]
    convs = sum(conv(a, b, 3) + 2 * b for a, b in zip(channels[:-1], channels[1:]))
    model = models.build({"name": "vgg16_bn"}, (3, 32, 32), 100)
    assert num_params(model) == convs + linear(512, 512) * 2 + linear(512, 100)


@pytest.mark.parametrize("shape", [(3, 32, 32), (1, 28, 28)])
def test_vgg_small_flattened_width_is_the_references_256(shape):
    model = models.build({"name": "vgg_small"}, shape, 10)
    first_linear = next(m for m in model.modules() if isinstance(m, nn.Linear))
    assert first_linear.in_features == 256


@pytest.mark.parametrize("cfg, shape", [
    ({"name": "mlp", "hidden": [5]}, (1, 28, 28)),
    ({"name": "vgg_small", "channels": [2, 3, 2, 2, 2], "hidden": [5]}, (3, 32, 32)),
    ({"name": "vgg_small", "channels": [2, 2], "activation": "tanh"}, (1, 28, 28)),
    ({"name": "lenet"}, (1, 28, 28)),
    ({"name": "lenet5"}, (3, 32, 32)),
    ({"name": "lenet5"}, (1, 36, 40)),
    ({"name": "cnn2d", "channels": [3, 4], "hidden": [6, 5]}, (3, 32, 32)),
    ({"name": "cnn2d", "kernel_size": 5, "activation": "tanh"}, (1, 28, 28)),
    ({"name": "vgg16_bn", "width": 1 / 16, "dropout": 0.5}, (3, 32, 32)),
    ({"name": "vgg16_bn", "width": 1 / 16}, (3, 64, 48)),
    (TINY_VIT, (3, 32, 32)),
    (TINY_VIT, (1, 28, 28)),
])
def test_output_shapes(cfg, shape):
    model = models.build(cfg, shape, 7).eval()
    assert model(torch.randn(3, *shape)).shape == (3, 7)


def test_vgg_small_init():
    torch.manual_seed(0)
    model = models.build({"name": "vgg_small"}, (3, 32, 32), 10)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert [m.out_channels for m in convs] == [16, 16, 32, 64, 64]
    assert all(m.padding == (2, 2) and m.kernel_size == (3, 3) for m in convs)
    for module in convs:
        weight = module.weight.detach()
        expected = math.sqrt(2 / (9 * module.out_channels))
        # the sample std of N iid normals has relative standard error 1/sqrt(2N)
        assert abs(weight.std().item() / expected - 1) < 5 / math.sqrt(2 * weight.numel())
        assert abs(weight.mean().item()) < 5 * expected / math.sqrt(weight.numel())
        assert torch.count_nonzero(module.bias) == 0


def test_lenet5_xavier_init_and_zero_biases():
    torch.manual_seed(0)
    model = models.build({"name": "lenet5"}, (3, 32, 32), 10)
    fc1 = model[7]
    assert isinstance(fc1, nn.Linear) and fc1.in_features == 400
    expected = math.sqrt(2 / (400 + 120))
    assert abs(fc1.weight.std().item() / expected - 1) < 5 / math.sqrt(2 * fc1.weight.numel())
    assert all(torch.count_nonzero(m.bias) == 0 for m in model.modules()
               if isinstance(m, (nn.Conv2d, nn.Linear)))


def test_seeded_build_is_reproducible():
    a = models.seeded_build(TINY_VIT, (1, 8, 8), 3, seed=5).state_dict()
    b = models.seeded_build(TINY_VIT, (1, 8, 8), 3, seed=5).state_dict()
    assert all(torch.equal(a[key], b[key]) for key in a)


def test_explicit_attention_equals_sdpa():
    generator = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 3, 5, 4, generator=generator) for _ in range(3))
    with sdpa_kernel(SDPBackend.MATH):
        expected = scaled_dot_product_attention(q, k, v)
    torch.testing.assert_close(models.attention(q, k, v), expected, rtol=0, atol=1e-12)


def vit_operator(seed: int = 0) -> curvature.HessianOperator:
    torch.manual_seed(seed)
    model = models.build(TINY_VIT, (1, 8, 8), 3).eval()
    x, y = torch.randn(5, 1, 8, 8), torch.tensor([0, 1, 2, 0, 1])
    loss = losses.LOSSES["mse"]
    return curvature.HessianOperator(model, x, loss.targets(y, 3, x.dtype), loss=loss)


def test_vit_hessian_vector_product_matches_finite_differences():
    operator = vit_operator()
    v = torch.randn(2, operator.dim, generator=torch.Generator().manual_seed(1))
    v = v / v.norm(dim=1, keepdim=True)
    hv = operator.apply(v)  # forward over reverse: jvp of grad, batched by vmap
    gradient = torch.func.grad(operator.loss)
    eps = 1e-5              # central differences: error O(eps^2), round-off O(1e-16 / eps)
    for vector, product in zip(v, hv):
        difference = (gradient(operator.theta + eps * vector)
                      - gradient(operator.theta - eps * vector)) / (2 * eps)
        torch.testing.assert_close(product, difference, rtol=0,
                                   atol=1e-7 * product.abs().max().item())
    operator.method = "double_backward"
    torch.testing.assert_close(operator.apply(v), hv, rtol=1e-10, atol=1e-12)


def test_vit_input_jacobian_by_jacrev_and_forward_mode():
    torch.manual_seed(0)
    model = models.build(TINY_VIT, (1, 8, 8), 3).eval()
    x = torch.randn(1, 8, 8)

    def f(sample):
        return model(sample.unsqueeze(0)).squeeze(0)

    jacobian = jacrev(f)(x)
    assert jacobian.shape == (3, 1, 8, 8) and torch.isfinite(jacobian).all()
    direction = torch.randn(1, 8, 8)
    _, tangent = jvp(f, (x,), (direction,))
    torch.testing.assert_close(tangent, (jacobian * direction).sum((1, 2, 3)))


def test_vit_measured_layers_in_forward_order():
    model = models.build(TINY_VIT, (1, 8, 8), 3)
    names = [name for name, _ in layers.measured_layers(model)]
    block = ["attn.qkv", "attn.proj", "mlp.0", "mlp.2"]
    assert names == ["patch", *(f"blocks.{i}.{n}" for i in range(2) for n in block), "head"]


@pytest.mark.parametrize("dropout", [0.0, 0.3])
def test_vgg16_bn_tiny(dropout):
    model = models.build({"name": "vgg16_bn", "width": 1 / 32, "dropout": dropout},
                         (3, 32, 32), 10)
    norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    measured = [m for _, m in layers.measured_layers(model)]
    assert len(norms) == 13
    assert [type(m) for m in measured] == [nn.Conv2d] * 13 + [nn.Linear] * 3
    assert [m.out_features for m in measured[13:]] == [16, 16, 10]
    assert sum(isinstance(m, nn.Dropout) for m in model.modules()) == (2 if dropout else 0)
    assert all(torch.count_nonzero(m.running_mean) == 0 for m in norms)   # dry pass left them
    x = torch.randn(4, 3, 32, 32)
    model.eval()
    out = model(x)
    assert out.shape == (4, 10)
    torch.testing.assert_close(model(x), out)
    torch.testing.assert_close(model(x[:1]), out[:1])   # eval mode: samples independent


@pytest.mark.parametrize("cfg, shape, message", [
    ({"name": "vgg_small", "width": 2}, (3, 32, 32), "unknown model.width"),
    ({"name": "vit", "hidden": [4]}, (3, 32, 32), "unknown model.hidden"),
    ({"name": "resnet"}, (3, 32, 32), "unknown model.name"),
    ({"name": "lenet"}, (784,), "needs image inputs"),
    ({"name": "vgg16_bn"}, (3, 32), "needs image inputs"),
    ({"name": "vgg16_bn"}, (1, 28, 28), "too small"),
    ({"name": "lenet5"}, (3, 8, 8), "too small"),
    ({"name": "vit"}, (1, 30, 30), "must divide"),
    ({"name": "vit", "dim": 10, "heads": 4}, (1, 8, 8), "multiple of heads"),
    ({"name": "cnn2d", "activation": "gelu"}, (1, 28, 28), "unknown model.activation"),
])
def test_build_rejects_bad_options_and_shapes(cfg, shape, message):
    with pytest.raises(models.ModelError, match=message):
        models.build(cfg, shape, 10)


@pytest.mark.parametrize("cfg, shape", [({"name": "lenet5"}, (3, 32, 32)),
                                        (TINY_VIT, (1, 8, 8))])
def test_point_measures_run_on_conv_and_transformer_models(cfg, shape):
    torch.manual_seed(0)
    model = models.build(cfg, shape, 10).eval()
    x = torch.randn(3, *shape)
    values = measuring.point_measures(model, x, chunk_size=2, moments=(1, 2))
    n_layers = len(layers.measured_layers(model))
    for key in ("mls", "log_lvr_pseudo", "nmls", "sample_sharpness", "local_dim"):
        assert values[key].shape == (3,) and np.isfinite(values[key]).all(), key
    # log LVR is finite exactly where J_x has full numerical rank min(K, d) = 10; the ViT's
    # width-8 tokens cap its rank at 8 (-inf there)
    assert (values["jacobian_rank"] <= cfg.get("dim", 10)).all()
    full = values["jacobian_rank"] == 10
    np.testing.assert_array_equal(np.isfinite(values["log_lvr"]), full)
    assert values["layer_mls"].shape == (3, n_layers)
    assert np.isfinite(values["layer_mls"]).all()
    # MLS is the largest singular value of the exact input Jacobian
    j = jacrev(lambda s: model(s.unsqueeze(0)).squeeze(0))(x[0]).reshape(10, -1)
    assert values["mls"][0] == pytest.approx(torch.linalg.matrix_norm(j, 2).item(), rel=1e-10)
