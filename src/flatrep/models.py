"""Model builders. Every model is rebuilt from its config, which each checkpoint stores."""

from __future__ import annotations

import math

import torch
from torch import nn

ACTIVATIONS = {"relu": nn.ReLU, "tanh": nn.Tanh}


class ModelError(ValueError):
    """An unknown model or a bad model option."""


def mlp(in_features: int, num_outputs: int, hidden: list[int], activation: str = "relu",
        bias: bool = True) -> nn.Sequential:
    """Fully connected net ``in - hidden... - out``: Flatten, (Linear, activation)*, Linear."""
    if activation not in ACTIVATIONS:
        raise ModelError(f"unknown model.activation {activation!r}; allowed: {sorted(ACTIVATIONS)}")
    layers: list[nn.Module] = [nn.Flatten()]
    widths = [in_features, *hidden]
    for width_in, width_out in zip(widths[:-1], widths[1:]):
        layers += [nn.Linear(width_in, width_out, bias=bias), ACTIVATIONS[activation]()]
    layers.append(nn.Linear(widths[-1], num_outputs, bias=bias))
    return nn.Sequential(*layers)


BUILDERS = {"mlp": mlp}


def build(model_cfg: dict, input_shape: tuple[int, ...], num_outputs: int) -> nn.Module:
    """Build the model a study's ``model`` section describes (weights from the global RNG)."""
    options = {key: value for key, value in model_cfg.items() if key != "name"}
    name = model_cfg["name"]
    if name not in BUILDERS:
        raise ModelError(f"unknown model.name {name!r}; allowed: {sorted(BUILDERS)}")
    return BUILDERS[name](math.prod(input_shape), num_outputs, **options)


def seeded_build(model_cfg: dict, input_shape: tuple[int, ...], num_outputs: int,
                 seed: int) -> nn.Module:
    """``build`` with weights drawn from a generator seeded by ``seed`` only."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build(model_cfg, input_shape, num_outputs)
