"""The training losses a study can choose (``train.loss``) and the conventions the measures use.

Each loss has two scalings, kept apart on purpose:

* ``training``: what SGD minimises, torch's own reduction. ``mse`` is ``nn.MSELoss`` to one-hot
  targets (mean over samples *and* the K outputs, no 1/2) as in Chen et al.'s code, so the
  paper's learning rates mean the same thing; ``cross_entropy`` is ``nn.CrossEntropyLoss``
  (mean over samples), as in the False-Friend studies.
* ``per_sample``: the loss l(f, y) the Hessian measures differentiate, L = (1/n) sum_i l.
  For ``mse`` it is l = (1/2)||f - y||^2 (the papers' 1/2-MSE convention: the Gauss-Newton
  matrix is (1/n) sum_i J_i^T J_i), which is K/2 times the training scaling
  (``hessian_factor`` = 2/K converts back); for ``cross_entropy`` it is the training loss.

``output_hessian`` M_i = d^2 l / df^2 gives the generalised Gauss-Newton matrix
G = (1/n) sum_i J_i^T M_i J_i: M_i = I for ``mse``; M_i = diag(p_i) - p_i p_i^T with
p_i = softmax(f(x_i)) for ``cross_entropy`` (rank K - 1, null vector 1).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn


@dataclass(frozen=True)
class Loss:
    name: str
    #: (labels (n,) int64, K, float dtype) -> the targets ``training`` and ``per_sample`` take
    targets: Callable[[torch.Tensor, int, torch.dtype], torch.Tensor]
    training: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    per_sample: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    #: outputs (n, K) -> M_i (n, K, K)
    output_hessian: Callable[[torch.Tensor], torch.Tensor]
    #: Hessian of the training loss = hessian_factor(K) * Hessian of mean(per_sample)
    hessian_factor: Callable[[int], float]

    def output_quadratic(self, outputs: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        """u_i^T M_i u_i per sample for output-space vectors u (n, K) (e.g. u_i = J_i v)."""
        return torch.einsum("nk,nkl,nl->n", u, self.output_hessian(outputs), u)

    def gauss_newton_trace(self, outputs: torch.Tensor, jacobian_gram: torch.Tensor) -> float:
        """Tr G = (1/n) sum_i Tr(M_i J_i J_i^T), exact, from the per-sample K x K Gram matrices
        J_i J_i^T of the parameter Jacobians (for ``mse``: (1/n) sum_i ||J_i||_F^2)."""
        return (self.output_hessian(outputs) * jacobian_gram).sum((1, 2)).mean().item()


def _one_hot(labels: torch.Tensor, num_classes: int, dtype: torch.dtype) -> torch.Tensor:
    return nn.functional.one_hot(labels, num_classes).to(dtype)


def _identity(outputs: torch.Tensor) -> torch.Tensor:
    n, k = outputs.shape
    return torch.eye(k, dtype=outputs.dtype, device=outputs.device).expand(n, k, k)


def _softmax_hessian(outputs: torch.Tensor) -> torch.Tensor:
    p = torch.softmax(outputs, dim=-1)
    return torch.diag_embed(p) - p[:, :, None] * p[:, None, :]


LOSSES = {
    "mse": Loss("mse", _one_hot, nn.functional.mse_loss,
                lambda f, y: 0.5 * (f - y).pow(2).sum(-1), _identity, lambda k: 2.0 / k),
    "cross_entropy": Loss("cross_entropy", lambda labels, _k, _dtype: labels,
                          nn.functional.cross_entropy,
                          lambda f, y: nn.functional.cross_entropy(f, y, reduction="none"),
                          _softmax_hessian, lambda _k: 1.0),
}


def get(name: str) -> Loss:
    """The loss called ``name`` (``train.loss``)."""
    if name not in LOSSES:
        raise ValueError(f"unknown train.loss {name!r}; allowed: {sorted(LOSSES)}")
    return LOSSES[name]
