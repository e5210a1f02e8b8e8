"""Lanczos tridiagonalisation of symmetric operators, one run or many at once.

For a symmetric A and a unit start q_1, k steps build an orthonormal basis Q_k of the Krylov
space span{q_1, A q_1, ..., A^{k-1} q_1} and the tridiagonal T_k = Q_k^T A Q_k
(diagonal alpha_j = q_j^T A q_j, off-diagonal beta_j = ||r_j||, r_j = A q_j - alpha_j q_j -
beta_{j-1} q_{j-1}; Golub & Van Loan §10.1). Here every r_j is orthogonalised against the
whole basis, twice (full reorthogonalisation: classical Gram-Schmidt run twice), so Q_k stays
orthonormal to rounding.

* Ritz pairs (theta_j, Q_k y_j) from T_k y_j = theta_j y_j; the residual
  ||A Q_k y_j - theta_j Q_k y_j|| = |beta_k e_k^T y_j| bounds the distance from theta_j to
  the spectrum.
* Gauss quadrature (Golub & Meurant): with gamma_j = (e_1^T y_j)^2,
  sum_j gamma_j p(theta_j) = q_1^T p(A) q_1 for every polynomial p of degree < 2k, the basis
  of stochastic Lanczos quadrature (``flatrep.measures.spectrum.slq``).
* Invariant subspace: a run stops once beta_j <= 1e-10 of the largest |alpha| or beta it has
  seen; T_k then holds exact eigenvalues of A.

``lanczos_runs`` carries m independent runs at once, one call of the operator per step on
the m current vectors (a batched Hessian-vector product costs much less than m single ones:
bench/RESULTS.md); a run that stops early no longer enters the operator. ``lanczos`` is one
run from a Gaussian start; ``flatrep.measures.memory.batch_rows`` says how many runs fit
in memory at once.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch

from flatrep.measures import operators

#: A run stops when beta <= this times the largest |alpha| or beta it has seen.
INVARIANCE = 1e-10


@dataclass(frozen=True)
class LanczosResult:
    ritz_values: torch.Tensor   # ascending
    residuals: torch.Tensor     # |beta_k * last component of each Ritz vector|
    weights: torch.Tensor       # squared first component of each Ritz vector (quadrature)
    top_vector: torch.Tensor    # unit Ritz vector of the largest Ritz value, length dim

    @property
    def lambda_max(self) -> float:
        return self.ritz_values[-1].item()

    @property
    def lambda_min(self) -> float:
        return self.ritz_values[0].item()


@dataclass(frozen=True)
class LanczosRuns:
    """m Lanczos runs; run r took ``lengths[r]`` steps, its entries beyond them are zero."""

    alphas: torch.Tensor     # (m, steps): diagonal of each T
    betas: torch.Tensor      # (m, steps): betas[r, j] couples steps j and j + 1 of run r
    last_beta: torch.Tensor  # (m,): the beta after a run's last step, its residual scale
    lengths: torch.Tensor    # (m,): steps taken
    basis: torch.Tensor      # (m, longest run, P): the orthonormal Lanczos vectors q_j

    def tridiagonal(self, rows: torch.Tensor | slice, k: int) -> torch.Tensor:
        """T_k of the runs ``rows`` (all of length >= k), shape (runs, k, k)."""
        off = self.betas[rows, :k - 1]
        return (torch.diag_embed(self.alphas[rows, :k]) + torch.diag_embed(off, 1)
                + torch.diag_embed(off, -1))

    def ritz(self) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """(rows, values (g, k), vectors (g, k, k)): the eigenpairs of T_k of the runs of each
        length k, values ascending, one batched ``eigh`` per length."""
        for k in self.lengths.unique().tolist():
            rows = (self.lengths == k).nonzero().flatten()
            values, vectors = torch.linalg.eigh(self.tridiagonal(rows, k))
            yield rows, values, vectors

    def result(self, row: int) -> LanczosResult:
        """Ritz values, residuals |beta_k y_j[k]|, quadrature weights y_j[1]^2 and the top Ritz
        vector Q_k y_max of run ``row``."""
        k = int(self.lengths[row])
        values, vectors = torch.linalg.eigh(self.tridiagonal(slice(row, row + 1), k)[0])
        return LanczosResult(values, (self.last_beta[row] * vectors[-1]).abs(),
                             vectors[0].pow(2), self.basis[row, :k].T @ vectors[:, -1])

    def extreme_magnitude(self) -> tuple[torch.Tensor, torch.Tensor]:
        """max |theta_j| of each run (a lower estimate of ||A||_2, exact on an invariant
        subspace) and the residual |beta_k y_j[k]| of the Ritz value giving it, each (m,)."""
        norms, residuals = torch.empty_like(self.last_beta), torch.empty_like(self.last_beta)
        for rows, values, vectors in self.ritz():
            k = values.shape[1]
            top = values[:, -1].abs() >= values[:, 0].abs()
            norms[rows] = torch.where(top, values[:, -1], values[:, 0]).abs()
            last = vectors[torch.arange(len(rows), device=vectors.device), k - 1,
                           torch.where(top, k - 1, 0)]
            residuals[rows] = (self.last_beta[rows] * last).abs()
        return norms, residuals


def lanczos_runs(apply: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
                 starts: torch.Tensor, steps: int) -> LanczosRuns:
    """min(steps, P) Lanczos steps from each row of ``starts`` (m, P), normalised.

    ``apply(active, Q)`` returns A_r q_r for the rows r of the boolean mask ``active`` (the
    runs still going) and their current vectors Q (one row each): one operator for all runs
    (``lambda active, rows: operator.apply(rows)``) or one per run (the per-sample output Hessians
    of ``flatrep.measures.output_curvature``).
    """
    m, dim = starts.shape
    steps = min(steps, dim)
    basis = starts.new_empty(m, steps, dim)  # column j is written before it is read
    basis[:, 0] = starts / starts.norm(dim=1, keepdim=True)
    alphas, betas = starts.new_zeros(m, steps), starts.new_zeros(m, steps)
    scale, last_beta = starts.new_zeros(m), starts.new_zeros(m)
    active = torch.ones(m, dtype=torch.bool, device=starts.device)
    lengths = torch.zeros(m, dtype=torch.long, device=starts.device)
    for j in range(steps):
        if active.all():
            w = apply(active, basis[:, j])
        else:
            w = starts.new_zeros(m, dim)
            w[active] = apply(active, basis[active, j])
        alphas[:, j] = (w * basis[:, j]).sum(1)
        for _ in range(2):
            w = w - torch.einsum("mj,mjp->mp", torch.einsum("mjp,mp->mj", basis[:, :j + 1], w),
                                 basis[:, :j + 1])
        beta = w.norm(dim=1)
        lengths += active
        last_beta = torch.where(active, beta, last_beta)
        scale = torch.maximum(scale, alphas[:, j].abs())
        if j == steps - 1:
            break
        active = active & (beta > INVARIANCE * scale.clamp_min(1e-300))
        if not active.any():
            break
        betas[:, j] = torch.where(active, beta, 0.0)
        scale = torch.maximum(scale, betas[:, j])
        basis[:, j + 1] = torch.where(active[:, None], w / torch.where(active, beta, 1.0)[:, None],
                                      0.0)
    return LanczosRuns(alphas, betas, last_beta, lengths, basis[:, :int(lengths.max())])


def lanczos(operator: operators.LinearOperator, steps: int,
            generator: torch.Generator) -> LanczosResult:
    """One Lanczos run of min(steps, P) steps on ``operator`` from a Gaussian start, drawn on
    the CPU from ``generator`` and moved to the operator's device; the result lives there
    too."""
    start = torch.randn(operator.dim, generator=generator, dtype=operator.dtype)
    runs = lanczos_runs(lambda active, rows: operator.apply(rows),
                        start.to(operator.device)[None], steps)
    return runs.result(0)

