"""Spectral norms of the per-sample output Hessians grad^2_theta f_c(x_i; theta), by Lanczos.

They enter the False-Friend spectral bound on the cross-entropy Hessian (Granziol, *Flatness
is a False Friend*, A2). With p_i = softmax(f(x_i)), y_i one-hot and l_i = -log p_iy,
H = G + R, G = (1/n) sum_i J_i^T M_i J_i, M_i = diag(p_i) - p_i p_i^T,
R = (1/n) sum_i sum_c (p_ic - y_ic) grad^2 f_c(x_i). Since |p_i - y_i|_1 = 2(1 - p_iy) <= 2 l_i
and ||M_i||_2 <= Tr M_i = 1 - ||p_i||^2 <= 2 l_i (as 1 - p <= -log p),
||H||_2 <= (2/n) sum_i l_i (||J_i||_2^2 + max_c ||grad^2_theta f_c(x_i)||_2).

||A||_2 = max(|lambda_max|, |lambda_min|) of each P x P output Hessian comes from Lanczos with
full reorthogonalisation (``flatrep.measures.krylov.lanczos_runs``), batched over all (i, c)
of a chunk of points. Ritz values are inner estimates of the extreme eigenvalues, so the
norms are lower estimates; they are exact once the Krylov space is invariant, which happens
after at most rank(A) + 1 steps for these low-rank per-sample Hessians (the range of A plus
the start's null-space part; ``steps`` > rank suffices).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import torch
from torch.func import functional_call, grad, jvp, vmap

from flatrep.measures import curvature, krylov, memory


@dataclass(frozen=True)
class OutputCurvature:
    norms: torch.Tensor      # (n, K): ||grad^2_theta f_c(x_i)||_2 (Ritz estimate)
    residuals: torch.Tensor  # (n, K): |beta_k y_j[k]| of the Ritz value giving the norm


def _output_hvp(operator: curvature.HessianOperator):
    """(x_r, e_r, v_r) -> grad^2_theta (e_r . f(x_r; theta)) v_r, one row; vmap it over rows."""
    def output(theta, x_r, e_r):
        params = {**operator.fixed, **operator._unflatten(theta)}
        return functional_call(operator.model, params, (x_r[None],))[0] @ e_r

    def hvp(x_r, e_r, v_r):
        return jvp(lambda t: grad(output)(t, x_r, e_r), (operator.theta,), (v_r,))[1]
    return vmap(hvp)


def _rows(operator: curvature.HessianOperator, generator: torch.Generator, points: int):
    """(x_i, e_c, start_i) for i = 1..points, c = 1..K in that order; the standard-normal
    start of a point, shared by its K outputs, is drawn on the CPU when its first row is
    asked for."""
    k = operator.output_values.shape[1]
    eye = torch.eye(k, dtype=operator.dtype, device=operator.device)
    for x in operator.x[:points]:
        start = torch.randn(operator.dim, generator=generator, dtype=operator.dtype)
        for c in range(k):
            yield x, eye[c], start


def output_hessian_norms(operator: curvature.HessianOperator, steps: int,
                         generator: torch.Generator, point_chunk: int = 4,
                         max_bytes: int = memory.LANCZOS_BYTES,
                         points: int | None = None) -> OutputCurvature:
    """||grad^2_theta f_c(x_i; theta)||_2 for the first ``points`` points x_i of ``operator``
    (all when None) and every output c.

    Lanczos with min(steps, P) Hessian-vector products jvp(grad(f_c(x_i; .)), theta, v) per
    (i, c), the rows (i, c) taken in order and batched by ``vmap``, ``memory.batch_rows`` at
    a time: point_chunk * K rows, fewer where the Lanczos bases and the forward-over-reverse
    vectors, about (steps + memory.ROW_VECTORS) * P floats a row, would pass ``max_bytes`` (a
    batch may then split a point's outputs). One standard-normal start vector per point, drawn
    point by point from ``generator`` on the CPU and moved to the operator's device, so the
    result depends neither on the batching nor on the device. The K outputs of a point share
    it: each (i, c) is a Lanczos run of its own, and a start drawn independently of the
    operator has a nonzero component along its top eigenvector almost surely, whether or
    not other runs start from it too (drawing K x P normals a point took longer than the
    HVPs on CIFAR-100).
    """
    steps = min(steps, operator.dim)
    n, k = operator.output_values.shape
    n = n if points is None else min(points, n)
    batch = memory.batch_rows(operator.dim, steps, operator.theta.element_size(), point_chunk * k,
                              max_bytes)
    hvp = _output_hvp(operator)
    rows = _rows(operator, generator, n)
    norms, residuals = [], []
    while chunk := list(itertools.islice(rows, batch)):
        rows_x, rows_e, starts = (torch.stack(column) for column in zip(*chunk))
        norm, residual = krylov.lanczos_runs(
            lambda active, q: hvp(rows_x[active], rows_e[active], q),
            starts.to(operator.device), steps).extreme_magnitude()
        norms.append(norm)
        residuals.append(residual)
    return OutputCurvature(torch.cat(norms).reshape(n, k), torch.cat(residuals).reshape(n, k))


def loss_weighted_output_curvature(per_sample_losses: torch.Tensor, norms: torch.Tensor) -> float:
    """(1/n) sum_i l_i max_c ||grad^2_theta f_c(x_i)||_2, the curvature term of the A2 bound."""
    return (per_sample_losses * norms.max(dim=1).values).mean().item()
