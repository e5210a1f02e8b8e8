"""The layers the network-wide measures run over, their inputs and their weight norms.

"Layer l" is every ``nn.Linear``, ``nn.Conv1d`` and ``nn.Conv2d`` module in definition order;
its input h_l is the tensor the module receives (h_1 = x for an MLP), as in Chen et al.
(NMLS, M4).
"""

from __future__ import annotations

import math
from contextlib import contextmanager

import torch
from torch import nn

from flatrep.measures import conv

CONV_TYPES = (nn.Conv1d, nn.Conv2d)
MEASURED_TYPES = (nn.Linear, *CONV_TYPES)


def measured_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """``(qualified name, module)`` of every Linear/Conv1d/Conv2d layer, in definition order."""
    return [(name, module) for name, module in model.named_modules()
            if isinstance(module, MEASURED_TYPES)]


@contextmanager
def _hooks(model: nn.Module, register):
    """Register one hook per measured layer (``register(index, module)``), removed on exit."""
    handles = [register(index, module)
               for index, (_, module) in enumerate(measured_layers(model))]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def perturbed_inputs(model: nn.Module, holder: dict):
    """Add ``holder["deltas"][l]`` to the input of measured layer l during forward passes.

    With zero deltas the forward pass is unchanged, and the Jacobian of the output with respect
    to delta_l is exactly the Jacobian with respect to the layer input, df/dh_l. The hooks read
    the deltas at call time, so they work inside ``torch.func`` transforms.
    """
    def register(index, module):
        return module.register_forward_pre_hook(
            lambda _m, args: (args[0] + holder["deltas"][index],) + tuple(args[1:]))
    return _hooks(model, register)


def perturbed_outputs(model: nn.Module, holder: dict):
    """Add ``holder["deltas"][l]`` to the output z_l of measured layer l (gives df/dz_l)."""
    def register(index, module):
        return module.register_forward_hook(
            lambda _m, _args, output: output + holder["deltas"][index])
    return _hooks(model, register)


def recorded_inputs(model: nn.Module, store: list):
    """Append the input of every measured layer to ``store`` during forward passes."""
    def register(_index, module):
        return module.register_forward_pre_hook(lambda _m, args: store.append(args[0].detach()))
    return _hooks(model, register)


def layer_inputs(model: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    """The inputs h_l(x) of every measured layer for a batch x, each of shape (n, ...)."""
    store: list[torch.Tensor] = []
    with torch.no_grad(), recorded_inputs(model, store):
        model(x)
    return store


def spectral_norm(weight: torch.Tensor) -> torch.Tensor:
    """||W||_2, the largest singular value of a Linear weight (out x in)."""
    return torch.linalg.matrix_norm(weight, ord=2)


def weight_norms(model: nn.Module, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per measured layer l, three norms of its weight, each a tensor of shape (L,).

    ``x`` is a batch of inputs; its first sample fixes each layer's input shape. ``spectral``
    is the operator norm of the layer's linear map: ||W_l||_2 for a Linear layer, ||A_l||_2 of
    the unrolled convolution on that input shape for a conv layer (``conv.operator_norm``,
    Lanczos on A^T A, converged to round-off, from below). ``frobenius`` is ||W_l||_F of the
    weight tensor.
    ``reference`` is Chen et al.'s reference-code convention: ||W_l||_2 when the model has no
    conv layer; otherwise ||K_l||_F sqrt(P_l) for a conv layer with P_l output positions
    (``conv.frobenius_surrogate``) and ||W_l||_F for a Linear layer.

    Each conv layer's Lanczos run starts from a CPU generator seeded 0 (its start vector is
    drawn on the CPU, then moved to the model's device), so the result is reproducible on
    every device and the global RNG stream is untouched. The norms are on the model's device.
    """
    modules = [module for _, module in measured_layers(model)]
    inputs = layer_inputs(model, x[:1])
    has_conv = any(isinstance(module, CONV_TYPES) for module in modules)
    spectral, frobenius, reference = [], [], []
    for module, h in zip(modules, inputs):
        weight = module.weight.detach()
        frobenius.append(torch.linalg.vector_norm(weight))
        if isinstance(module, CONV_TYPES):
            spectral.append(conv.operator_norm(module, tuple(h.shape[1:])))
            with torch.no_grad():
                positions = math.prod(module(h).shape[2:])
            reference.append(conv.frobenius_surrogate(module, positions))
        else:
            spectral.append(spectral_norm(weight))
            reference.append(frobenius[-1] if has_conv else spectral[-1])
    return {"spectral": torch.stack(spectral), "frobenius": torch.stack(frobenius),
            "reference": torch.stack(reference)}
