"""Spectral norms of the per-sample output Hessians grad^2_theta f_c(x_i; theta), by Lanczos.

They enter the False-Friend spectral bound on the cross-entropy Hessian (Granziol, *Flatness
is a False Friend*, A2). With p_i = softmax(f(x_i)), y_i one-hot and l_i = -log p_iy,
H = G + R, G = (1/n) sum_i J_i^T M_i J_i, M_i = diag(p_i) - p_i p_i^T,
R = (1/n) sum_i sum_c (p_ic - y_ic) grad^2 f_c(x_i). Since |p_i - y_i|_1 = 2(1 - p_iy) <= 2 l_i
and ||M_i||_2 <= Tr M_i = 1 - ||p_i||^2 <= 2 l_i (as 1 - p <= -log p),
||H||_2 <= (2/n) sum_i l_i (||J_i||_2^2 + max_c ||grad^2_theta f_c(x_i)||_2).

||A||_2 = max(|lambda_max|, |lambda_min|) of each P x P output Hessian comes from Lanczos with
full reorthogonalisation (as ``curvature.lanczos``), batched over all (i, c) of a chunk of
points. Ritz values are inner estimates of the extreme eigenvalues, so the norms are lower
estimates; they are exact once the Krylov space is invariant, which happens after rank(A)
steps for these low-rank per-sample Hessians (``steps`` >= rank suffices).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import torch
from torch.func import functional_call, grad, jvp, vmap

from flatrep.measures import curvature


#: Default bound on one batched Lanczos's working set (``output_hessian_norms``).
LANCZOS_BYTES = 1 << 30
#: P-vectors a row holds besides its ``steps`` basis vectors: its start, the gathered active
#: column, the residual w and the temporaries of its two reorthogonalisations and of the next
#: column, and the gradient, tangent and product of the forward-over-reverse HVP (an
#: estimate that bench/measure_memory.py checks against the measured rise).
ROW_VECTORS = 11

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


def _batched_lanczos(apply, starts: torch.Tensor, steps: int):
    """Lanczos on m operators at once; ``apply(active, Q)`` gives the rows' A Q (rows active).

    A row stops on an invariant subspace (beta <= 1e-10 of the largest |alpha|, beta seen):
    its later vectors, alphas and betas are zero, so T = T_k (+) 0 keeps the exact Ritz values
    of T_k and only adds zeros, which leave max |Ritz value| unchanged.
    Returns (max |Ritz value|, its residual |beta_k y_j[k]|) per row.
    """
    m, dim = starts.shape
    basis = starts.new_empty(m, steps, dim)  # column j is written before it is read
    basis[:, 0] = starts / starts.norm(dim=1, keepdim=True)
    alphas, betas = starts.new_zeros(m, steps), starts.new_zeros(m, steps)
    scale, last_beta = starts.new_zeros(m), starts.new_zeros(m)
    active = torch.ones(m, dtype=torch.bool, device=starts.device)
    length = torch.zeros(m, dtype=torch.long, device=starts.device)
    for j in range(steps):
        w = starts.new_zeros(m, dim)
        w[active] = apply(active, basis[active, j])
        alphas[:, j] = (w * basis[:, j]).sum(1)
        for _ in range(2):
            w = w - torch.einsum("mj,mjp->mp", torch.einsum("mjp,mp->mj", basis[:, :j + 1], w),
                                 basis[:, :j + 1])
        beta = w.norm(dim=1)
        length += active
        last_beta = torch.where(active, beta, last_beta)
        scale = torch.maximum(scale, alphas[:, j].abs())
        if j == steps - 1:
            break
        active = active & (beta > 1e-10 * scale.clamp_min(1e-300))
        if not active.any():
            break
        betas[:, j] = torch.where(active, beta, 0.0)
        scale = torch.maximum(scale, betas[:, j])
        basis[:, j + 1] = torch.where(active[:, None], w / torch.where(active, beta, 1.0)[:, None],
                                      0.0)
    k = int(length.max())
    off = betas[:, :k - 1]
    tri = torch.diag_embed(alphas[:, :k]) + torch.diag_embed(off, 1) + torch.diag_embed(off, -1)
    values, vectors = torch.linalg.eigh(tri)
    top = values[:, -1].abs() >= values[:, 0].abs()
    rows = torch.arange(m, device=starts.device)
    column = torch.where(top, k - 1, 0)
    residual = (last_beta * vectors[rows, length - 1, column]).abs()
    return torch.maximum(values[:, -1].abs(), values[:, 0].abs()), residual


def rows_per_batch(dim: int, steps: int, itemsize: int, point_chunk: int, outputs: int,
                   max_bytes: int = LANCZOS_BYTES) -> int:
    """How many (i, c) rows one batched Lanczos takes: point_chunk * K, fewer where their
    working set, about (steps + ROW_VECTORS) * P floats a row, would pass ``max_bytes``
    (at least one row)."""
    row_bytes = (steps + ROW_VECTORS) * dim * itemsize
    return max(1, min(point_chunk * outputs, max_bytes // row_bytes))


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
                         max_bytes: int = LANCZOS_BYTES,
                         points: int | None = None) -> OutputCurvature:
    """||grad^2_theta f_c(x_i; theta)||_2 for the first ``points`` points x_i of ``operator``
    (all when None) and every output c.

    Lanczos with min(steps, P) Hessian-vector products jvp(grad(f_c(x_i; .)), theta, v) per
    (i, c), the rows (i, c) taken in order and batched by ``vmap``, ``rows_per_batch`` at a
    time: point_chunk * K rows, fewer where the Lanczos bases and the forward-over-reverse
    vectors, about (steps + ROW_VECTORS) * P floats a row, would pass ``max_bytes`` (a batch
    may then split a point's outputs). One standard-normal start vector per point, drawn
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
    batch = rows_per_batch(operator.dim, steps, operator.theta.element_size(), point_chunk, k,
                           max_bytes)
    hvp = _output_hvp(operator)
    rows = _rows(operator, generator, n)
    norms, residuals = [], []
    while chunk := list(itertools.islice(rows, batch)):
        rows_x, rows_e, starts = (torch.stack(column) for column in zip(*chunk))
        norm, residual = _batched_lanczos(
            lambda active, q: hvp(rows_x[active], rows_e[active], q),
            starts.to(operator.device), steps)
        norms.append(norm)
        residuals.append(residual)
    return OutputCurvature(torch.cat(norms).reshape(n, k), torch.cat(residuals).reshape(n, k))


def loss_weighted_output_curvature(per_sample_losses: torch.Tensor, norms: torch.Tensor) -> float:
    """(1/n) sum_i l_i max_c ||grad^2_theta f_c(x_i)||_2, the curvature term of the A2 bound."""
    return (per_sample_losses * norms.max(dim=1).values).mean().item()
