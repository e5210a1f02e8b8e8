"""The contract every curvature operator meets, and the only one the estimators rely on.

A ``LinearOperator`` is a symmetric linear map A on R^dim, applied to a batch of vectors at
once: ``apply(V)`` returns V A^T = V A for V of shape (m, dim), whose rows are the vectors,
on ``device`` in ``dtype``. The Hessian H (``flatrep.measures.curvature.HessianOperator``), the
Gauss-Newton matrix G (``curvature.GaussNewtonOperator``), the BatchNorm-train Hessian
(``flatrep.measures.batchnorm_train.operator``), the non-uniformity (1/n) sum_i G_i^2 - G^2
(``flatrep.measures.stability.NonUniformityOperator``) and a convolution's A^T A
(``flatrep.measures.conv.NormalOperator``) are such operators; the trace estimators
(``flatrep.measures.trace_estimators``), Lanczos (``flatrep.measures.krylov``), stochastic
Lanczos quadrature and the dense Hessian (``flatrep.measures.spectrum``) take any of them.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch


@runtime_checkable
class LinearOperator(Protocol):
    """A symmetric linear map A on R^dim: ``apply(V)`` gives the rows A v of the rows v of V
    (``isinstance`` checks that the attributes and ``apply`` are there)."""

    dim: int
    dtype: torch.dtype
    device: torch.device

    def apply(self, vectors: torch.Tensor) -> torch.Tensor:
        """A V for V of shape (m, dim) (rows are vectors) -> (m, dim)."""
        ...
