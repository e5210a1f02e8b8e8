"""The layers the network-wide measures run over, their inputs and their weight norms.

"Layer l" is every ``nn.Linear`` and ``nn.Conv2d`` module in definition order; its input
h_l is the tensor the module receives (h_1 = x for an MLP), as in Chen et al. (NMLS, M4).
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
from torch import nn

MEASURED_TYPES = (nn.Linear, nn.Conv2d)


def measured_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """``(qualified name, module)`` of every Linear/Conv2d layer, in definition order."""
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
    return torch.linalg.matrix_norm(weight.reshape(weight.shape[0], -1), ord=2)


def weight_norms(model: nn.Module) -> dict[str, torch.Tensor]:
    """Per measured layer: spectral norm ``||W_l||_2`` and Frobenius norm ``||W_l||_F``.

    For Conv2d layers ``spectral`` is the norm of the reshaped kernel, not of the unrolled
    convolution operator (that is a later measure).
    """
    weights = [module.weight.detach() for _, module in measured_layers(model)]
    return {"spectral": torch.stack([spectral_norm(w) for w in weights]),
            "frobenius": torch.stack([torch.linalg.vector_norm(w) for w in weights])}
