"""Model builders. Every model is rebuilt from its config, which each checkpoint stores."""

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


def mlp(input_shape: int | tuple[int, ...], num_outputs: int, hidden: list[int],
        activation: str = "relu", bias: bool = True) -> nn.Sequential:
    """Fully connected net ``in - hidden... - out``: Flatten, (Linear, activation)*, Linear.

    in = prod(input_shape), the flattened input size (an int is that size itself).
    """
    act = _activation(activation)
    in_features = input_shape if isinstance(input_shape, int) else math.prod(input_shape)
    layers: list[nn.Module] = [nn.Flatten()]
    widths = [in_features, *hidden]
    for width_in, width_out in zip(widths[:-1], widths[1:]):
        layers += [nn.Linear(width_in, width_out, bias=bias), act()]
    layers.append(nn.Linear(widths[-1], num_outputs, bias=bias))
    return nn.Sequential(*layers)


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


BUILDERS = {"mlp": mlp, "cnn": cnn, "logreg": logreg}


def build(model_cfg: dict, input_shape: tuple[int, ...], num_outputs: int) -> nn.Module:
    """Build the model a study's ``model`` section describes (weights from the global RNG).

    Every builder takes ``(input_shape, num_outputs, **options)``; an option it does not
    take raises ModelError.
    """
    options = {key: value for key, value in model_cfg.items() if key != "name"}
    name = model_cfg["name"]
    if name not in BUILDERS:
        raise ModelError(f"unknown model.name {name!r}; allowed: {sorted(BUILDERS)}")
    allowed = sorted(list(inspect.signature(BUILDERS[name]).parameters)[2:])
    for key in options:
        if key not in allowed:
            raise ModelError(f"unknown model.{key} for model.name {name!r}; allowed: {allowed}")
    return BUILDERS[name](tuple(input_shape), num_outputs, **options)


def seeded_build(model_cfg: dict, input_shape: tuple[int, ...], num_outputs: int,
                 seed: int) -> nn.Module:
    """``build`` with weights drawn from a generator seeded by ``seed`` only."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build(model_cfg, input_shape, num_outputs)
