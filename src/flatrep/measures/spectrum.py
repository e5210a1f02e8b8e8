"""Hessian spectra and ranks: stochastic Lanczos quadrature, dense and Gauss-Newton ranks.

* Stochastic Lanczos quadrature (SLQ; Ubaru, Chen & Saad 2017, SIAM J. Matrix Anal. Appl.
  38:1075; Ghorbani, Krishnan & Xiao 2019, ICML): for a unit start vector q, m Lanczos steps
  give Ritz values theta_j and weights w_j (squared first components of the Ritz vectors)
  with sum_j w_j p(theta_j) = q^T p(H) q for every polynomial p of degree < 2m. For q
  uniform on the sphere E[q q^T] = I/P, so the mean over probes of sum_j w_j f(theta_j)
  estimates Tr f(H) / P, and sum_j w_j delta(lambda - theta_j) the spectral density.
* Smoothed density (Lin, Saad & Yang 2016, SIAM Review 58:34):
  rho(lambda) = mean_probes sum_j w_j N(lambda; theta_j, sigma^2), which integrates to 1.
* Rank from the mass at zero (Ubaru & Saad 2016, "Fast methods for estimating the numerical
  rank of large matrices", ICML): rank H ~ P (1 - mean_probes sum_{|theta_j| <= eps} w_j).
* Dense numerical rank #{|lambda| > tau max|lambda|} for a sweep of tau (Granziol-Ma-Ying
  reference notes, checklist item 6a).
* Gauss-Newton rank through the nK x nK Gram matrix (checklist item 6b): with A the stacked
  M_i^{1/2} J_i / sqrt(n), G = A^T A and K = A A^T share their nonzero eigenvalues.
* Rank-bound values of Granziol, "Flatness is a False Friend" (reference A.3.2, C.7; the
  exact form is unconfirmed, so every candidate is returned).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn
from torch.func import vjp, vmap

from flatrep.measures import curvature, krylov, layers, memory, operators, trace_estimators


@dataclass(frozen=True)
class SLQResult:
    """Gauss quadrature nodes and weights of ``probes`` Lanczos runs, shape (probes, steps).

    A run that stopped early (invariant subspace, or after P steps when steps > P) is padded
    with NaN nodes and zero weights.
    ``dim`` is P, the dimension of the operator. ``slq`` keeps nodes and weights on the CPU
    whatever the operator's device (they are few).
    """

    nodes: torch.Tensor
    weights: torch.Tensor
    dim: int

    def _per_probe(self, values: torch.Tensor) -> torch.Tensor:
        """sum_j w_j values_j for each probe, (probes,), skipping the padding."""
        return torch.where(self.nodes.isnan(), 0.0, self.weights * values).sum(1)

    def moment(self, k: int) -> float:
        """mean_probes sum_j w_j theta_j^k, which estimates Tr(H^k) / P."""
        return self._per_probe(self.nodes ** k).mean().item()

    def trace(self) -> trace_estimators.Estimate:
        """Tr H = P * moment(1), with the standard error over probes."""
        return trace_estimators.mean_and_se(self.dim * self._per_probe(self.nodes))

    def density(self, grid: torch.Tensor, sigma: float) -> torch.Tensor:
        """rho(lambda) = mean_probes sum_j w_j N(lambda; theta_j, sigma^2) on ``grid``.

        One probe at a time, so memory is steps x len(grid).
        """
        total = torch.zeros_like(grid)
        for nodes, weights in zip(self.nodes, self.weights):
            keep = ~nodes.isnan()
            z = (grid[None] - nodes[keep, None]) / sigma
            kernel = torch.exp(-0.5 * z ** 2) / (sigma * math.sqrt(2 * math.pi))
            total = total + weights[keep] @ kernel
        return total / len(self.nodes)

    def _mass_near_zero(self, eps: float) -> torch.Tensor:
        return self._per_probe((self.nodes.abs() <= eps).to(self.weights.dtype))

    def mass_near_zero(self, eps: float) -> float:
        """mean_probes sum_{|theta_j| <= eps} w_j, which estimates #{|lambda| <= eps} / P."""
        return self._mass_near_zero(eps).mean().item()

    def rank_estimate(self, eps: float) -> trace_estimators.Estimate:
        """P (1 - mass_near_zero(eps)) (Ubaru & Saad 2016), with the SE over probes."""
        return trace_estimators.mean_and_se(self.dim * (1 - self._mass_near_zero(eps)))


def slq(operator: operators.LinearOperator, probes: int, steps: int,
        generator: torch.Generator, max_bytes: int = memory.LANCZOS_BYTES) -> SLQResult:
    """Stochastic Lanczos quadrature: ``probes`` Lanczos runs of ``steps`` on ``operator``.

    Each run starts from its own Gaussian vector, drawn probe by probe from ``generator`` on
    the CPU and normalised (a uniform direction). The runs are carried together
    (``krylov.lanczos_runs``: one batched operator call per step), ``memory.batch_rows`` at a
    time, so that their bases stay within ``max_bytes``; the batching changes no value beyond
    rounding. A run takes at most min(steps, P) steps (the Krylov space is then the whole
    space); the result always has ``steps`` columns (the cube's ``slq_node`` coordinate),
    those beyond a run's length padded with NaN nodes and zero weights. Nodes and weights are
    collected on the CPU.
    """
    dtype = operator.dtype
    nodes = torch.full((probes, steps), math.nan, dtype=dtype)
    weights = torch.zeros((probes, steps), dtype=dtype)
    starts = torch.stack([torch.randn(operator.dim, generator=generator, dtype=dtype)
                          for _ in range(probes)]).to(operator.device)
    batch = memory.batch_rows(operator.dim, min(steps, operator.dim), starts.element_size(),
                              probes, max_bytes)
    for first in range(0, probes, batch):
        runs = krylov.lanczos_runs(lambda active, rows: operator.apply(rows),
                                   starts[first:first + batch], steps)
        for row in range(len(runs.lengths)):
            result = runs.result(row)
            count = len(result.ritz_values)
            nodes[first + row, :count] = result.ritz_values.cpu()
            weights[first + row, :count] = result.weights.cpu()
    return SLQResult(nodes, weights, operator.dim)


def density_grid(result: SLQResult, bins: int, smoothing: float) -> tuple[torch.Tensor, float]:
    """A uniform grid of ``bins`` points over [min node - 3 sigma, max node + 3 sigma].

    sigma = smoothing * (max node - min node), or smoothing * max(|node|, 1) when every node
    is equal up to round-off (a spread of at most 1e-10 of the largest |node|, the relative
    level at which ``krylov.lanczos_runs`` declares an invariant subspace). The 3 sigma margins
    leave at most 0.135% of an extreme node's weight outside the grid. Granziol's and
    Ghorbani et al.'s tooling smooth with sigma ~ 1e-5 lambda_max on fine grids; the grid
    must resolve sigma (spacing below sigma, i.e. bins well above 1 / smoothing). The grid
    is returned so that it can be stored with the density evaluated on it.
    """
    nodes = result.nodes[~result.nodes.isnan()]
    low, high = nodes.min().item(), nodes.max().item()
    size = max(abs(low), abs(high))
    spread = high - low if high - low > 1e-10 * size else max(size, 1.0)
    sigma = smoothing * spread
    grid = torch.linspace(low - 3 * sigma, high + 3 * sigma, bins, dtype=nodes.dtype,
                          device=nodes.device)
    return grid, sigma


#: Rows of I one HVP pass of the dense Hessian takes (fewer where they would pass the
#: operator's memory budget): 4x the probes' chunk halves its time on the False-Friend MLP
#: (bench/measure_families.py).
DENSE_PROBE_CHUNK = 64


def dense_hessian(operator: operators.LinearOperator,
                  chunk: int = DENSE_PROBE_CHUNK) -> torch.Tensor:
    """The P x P Hessian from ``operator`` applied to ``chunk`` rows of I at a time.

    Returns (H + H^T) / 2, which removes the round-off asymmetry of the products.
    """
    dtype, dim, device = operator.dtype, operator.dim, operator.device
    h = torch.cat([operator.apply(_unit_rows(start, min(start + chunk, dim), dim, dtype, device))
                   for start in range(0, dim, chunk)])
    return (h + h.T) / 2


def _unit_rows(start: int, stop: int, size: int, dtype: torch.dtype,
               device: torch.device) -> torch.Tensor:
    """Rows start..stop-1 of the size x size identity, shape (stop - start, size)."""
    rows = torch.zeros(stop - start, size, dtype=dtype, device=device)
    rows[:, start:stop] = torch.eye(stop - start, dtype=dtype, device=device)
    return rows


def numerical_rank(eigenvalues: torch.Tensor, tolerances: Sequence[float]) -> list[int]:
    """#{|lambda| > tau max|lambda|} for each tau in ``tolerances`` (0 when all are 0)."""
    magnitudes = eigenvalues.abs()
    scale = magnitudes.max().item() if magnitudes.numel() else 0.0
    if scale == 0:
        return [0 for _ in tolerances]
    return [int((magnitudes > tau * scale).sum()) for tau in tolerances]


def gauss_newton_gram(operator: curvature.HessianOperator,
                      output_hessian: torch.Tensor | None = None,
                      chunk: int = 8) -> torch.Tensor:
    """K = M^{1/2} J J^T M^{1/2} / n, the nK x nK Gram matrix of the Gauss-Newton matrix.

    J (nK x P) stacks the per-sample Jacobians J_i = d f(x_i) / d theta of
    ``operator.outputs`` and M = blockdiag(M_i) the output Hessians (``output_hessian``,
    (n, K, K), PSD; None is the identity of the 1/2-MSE loss). With A = M^{1/2} J / sqrt(n),
    G = (1/n) sum_i J_i^T M_i J_i = A^T A and K = A A^T have the same nonzero eigenvalues
    (the squared singular values of A), so rank G = rank K and Tr G = Tr K: G's spectrum is
    read from an nK x nK matrix, cheap when P >> nK. M_i^{1/2} is taken by eigh, negative
    round-off eigenvalues clamped to 0.

    J is filled row by row from one forward pass: ``chunk`` vector-Jacobian products with
    unit cotangents are batched by vmap, so J is held once (n K P numbers); each batch costs
    a backward pass through the whole sample set.
    """
    outputs, pullback = vjp(operator.outputs, operator.theta)
    n, k = outputs.shape
    jac = operator.theta.new_empty(n * k, operator.dim)
    for start in range(0, n * k, chunk):
        stop = min(start + chunk, n * k)
        cotangents = _unit_rows(start, stop, n * k, outputs.dtype, outputs.device)
        cotangents = cotangents.reshape(-1, n, k)
        jac[start:stop] = vmap(pullback)(cotangents)[0]
    if output_hessian is not None:
        if output_hessian.shape != (n, k, k):
            raise ValueError(f"output_hessian has shape {tuple(output_hessian.shape)}, "
                             f"expected {(n, k, k)}")
        values, vectors = torch.linalg.eigh(output_hessian)
        roots = vectors @ (values.clamp(min=0).sqrt()[..., None] * vectors.mT)
        blocks = jac.view(n, k, -1)
        for start in range(0, n, chunk):
            blocks[start:start + chunk] = roots[start:start + chunk] @ blocks[start:start + chunk]
    return jac @ jac.T / n


def fan_in(module: nn.Module) -> int:
    """Inputs per output unit: in_features (Linear), in_channels / groups * prod(kernel)."""
    if isinstance(module, nn.Linear):
        return module.in_features
    if isinstance(module, layers.CONV_TYPES):
        return module.in_channels // module.groups * math.prod(module.kernel_size)
    raise TypeError(f"no fan-in for {type(module).__name__}")


#: The names ``rank_bounds`` returns, in order (the cube's ``rank_bound`` coordinate).
RANK_BOUNDS = ("layers_c_minus_1", "layers_c", "layers_c_minus_1_bias", "layers_c_bias",
               "gauss_newton_c_minus_1", "gauss_newton_c")


def rank_bounds(layer_fan_ins: list[int], num_classes: int, num_points: int) -> dict[str, int]:
    """Candidate forms of the False-Friend rank bound and the exact Gauss-Newton bounds.

    Layer bounds (Granziol, reference A.3.2 / C.7; form unconfirmed): (C-1) or C times
    sum_l n_in,l, with or without a bias input (n_in,l + 1). Gauss-Newton bounds: rank G <=
    sum_i rank M_i, i.e. N (C-1) for cross-entropy (M_i 1 = 0) and N C for 1/2-MSE (M_i = I).
    """
    fans = sum(layer_fan_ins)
    with_bias = fans + len(layer_fan_ins)
    c = num_classes
    values = ((c - 1) * fans, c * fans, (c - 1) * with_bias, c * with_bias,
              num_points * (c - 1), num_points * c)
    return dict(zip(RANK_BOUNDS, values))
