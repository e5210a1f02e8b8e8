"""Operator norms of convolution layers, exact and the reference code's surrogate.

A bias-free ``nn.Conv1d``/``nn.Conv2d`` acting on inputs of one fixed shape is a linear map
A: R^{C_in x L} -> R^{C_out x L_out} (or the 2-D analogue); the network-wide measures need its
spectral norm ||A||_2, the largest singular value of the unrolled (doubly block Toeplitz)
matrix, not a norm of the kernel tensor K.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional

from flatrep.measures import krylov

ConvLayer = nn.Conv1d | nn.Conv2d

_FORWARD = {1: functional.conv1d, 2: functional.conv2d}
_ADJOINT = {1: functional.conv_transpose1d, 2: functional.conv_transpose2d}


def _check(conv: ConvLayer) -> None:
    """Only zero padding of a given size makes conv_transpose the adjoint of the forward map."""
    if conv.padding_mode != "zeros":
        raise ValueError(f"operator_norm needs padding_mode='zeros', the layer has "
                         f"padding_mode={conv.padding_mode!r}")
    if isinstance(conv.padding, str):
        raise ValueError(f"operator_norm needs numeric padding, the layer has "
                         f"padding={conv.padding!r}")


def _forward(conv: ConvLayer, x: torch.Tensor) -> torch.Tensor:
    """A x: the layer's convolution without bias, for one unbatched input x of shape (C_in, ...)."""
    return _FORWARD[x.dim() - 1](x.unsqueeze(0), conv.weight.detach(), None, conv.stride,
                                 conv.padding, conv.dilation, conv.groups).squeeze(0)


def _adjoint(conv: ConvLayer, y: torch.Tensor, input_shape: tuple[int, ...]) -> torch.Tensor:
    """A^T y by the transposed convolution, cropped to exactly ``input_shape``.

    conv_transpose with the same weight, stride, padding, dilation and groups is the adjoint of
    the convolution; its output length (L_out - 1) s - 2 p + d (k - 1) + 1 can fall short of L
    when the stride skips the last input rows, and ``output_padding`` restores them (as zero
    rows of A^T, since no output position reads them).
    """
    spatial = input_shape[1:]
    output_padding = tuple(
        size - ((out - 1) * stride - 2 * pad + dil * (k - 1) + 1)
        for size, out, stride, pad, dil, k in zip(spatial, y.shape[1:], conv.stride, conv.padding,
                                                  conv.dilation, conv.kernel_size))
    return _ADJOINT[len(spatial)](y.unsqueeze(0), conv.weight.detach(), None, conv.stride,
                                  conv.padding, output_padding, conv.groups,
                                  conv.dilation).squeeze(0)


class NormalOperator:
    """v -> A^T A v on flattened inputs of one shape, a ``LinearOperator`` for ``krylov.lanczos``.

    A is applied with ``conv1d``/``conv2d`` (the layer's stride, padding, dilation, groups, no
    bias) and A^T with ``conv_transpose1d``/``conv_transpose2d``, its adjoint. Its vectors live
    on the device of the layer's weight.
    """

    def __init__(self, conv: ConvLayer, input_shape: tuple[int, ...]):
        _check(conv)
        self.conv, self.input_shape = conv, tuple(input_shape)
        self.dim, self.dtype = math.prod(self.input_shape), conv.weight.dtype
        self.device = conv.weight.device

    def apply(self, vectors: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return torch.stack([
                _adjoint(self.conv, _forward(self.conv, v.reshape(self.input_shape)),
                         self.input_shape).reshape(-1) for v in vectors])


def operator_norm(conv: ConvLayer, input_shape: tuple[int, ...], steps: int = 100,
                  generator: torch.Generator | None = None) -> torch.Tensor:
    """Spectral norm ||A||_2 = sqrt(lambda_max(A^T A)) of x -> conv(x) without bias.

    ``input_shape`` is (C_in, L) or (C_in, H, W), without batch dim. Lanczos with full
    reorthogonalisation (``krylov.lanczos``, at most ``steps`` products with A^T A from a
    Gaussian start drawn on the CPU with ``generator``, seeded 0 when None so the global RNG
    is untouched; the result is on the layer's device). Power iteration is not enough here:
    the singular values of a convolution sample the kernel's frequency response and crowd
    near the top (s_2 / s_1 often > 0.999), so its error (s_2 / s_1)^{4k} stays ~1e-3 after
    100 steps, while Lanczos converges like a Chebyshev polynomial in the gap and reaches
    round-off within ~80 products on such layers.
    The largest Ritz value never exceeds lambda_max, so the result is a lower bound.

    The norm is that of the unrolled operator, as in Sedghi, Gupta & Long (2019, "The singular
    values of convolutional layers"), whose closed form needs circular padding; Chen et al.'s
    reference code uses instead the upper bound ``frobenius_surrogate``.
    """
    operator = NormalOperator(conv, input_shape)
    generator = generator if generator is not None else torch.Generator().manual_seed(0)
    ritz = krylov.lanczos(operator, steps, generator)
    return torch.tensor(max(ritz.lambda_max, 0.0), dtype=operator.dtype,
                        device=operator.device).sqrt()


def frobenius_surrogate(conv: ConvLayer, output_positions: int) -> torch.Tensor:
    """||K||_F sqrt(P), the reference code's upper bound on ||A||_2 (P = L_out or H_out W_out).

    Group the rows of A by output position p: block A_p (C_out rows) holds, for each output
    channel, that channel's kernel entries restricted to the window read at p (entries that
    fall on zero padding drop out), so ||A_p||_2 <= ||A_p||_F <= ||K||_F. Hence
    ||A||_2^2 = max_{||v||=1} sum_p ||A_p v||^2 <= sum_p ||A_p||_2^2 <= P ||K||_F^2.
    """
    return torch.linalg.vector_norm(conv.weight.detach()) * output_positions ** 0.5
