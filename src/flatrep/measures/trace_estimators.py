"""Randomised estimators of the trace and Frobenius norm of a symmetric operator.

They see only ``operator.apply(V)`` (rows of V are vectors), ``operator.dim``,
``operator.dtype`` and ``operator.device`` (``flatrep.measures.operators.LinearOperator``), so
they take the Hessian, its Gauss-Newton part or any other symmetric operator. Random probes
are always drawn on the CPU from the caller's seeded ``torch.Generator`` and then moved to
``operator.device``, so the same seed gives the same probes on every device.

* Hutchinson: Tr A = E[v^T A v] for Rademacher v (Hutchinson 1989); SE = std/sqrt(m).
* Frobenius norm: ||A||_F^2 = E[||A v||^2] from the same probes.
* Effective rank Tr(A)^2 / ||A||_F^2 from the same probes.
* Hutch++ (Meyer, Musco, Musco & Woodruff 2021, Alg. 1): exact trace on the range of A S,
  Hutchinson on its orthogonal complement; SE from the complement's probes.
* Deflated Frobenius norm: Hutch++ on A^2, ||A Q||_F^2 exact plus Hutchinson on the
  complement, ||A (I - QQ^T) g||^2.
* Control variate: Tr H = Tr G + Tr(H - G) with G = (1/n) sum_i J_i^T M_i J_i the
  (generalised) Gauss-Newton matrix, whose trace the per-sample Jacobians give exactly;
  Hutchinson estimates only the residual term (1/n) sum_i sum_c (dl/df_c) grad^2 f_c(x_i)
  (Chen et al. B7) as v^T H v - v^T G v, so for MSE its variance vanishes at interpolation.
* Residual Frobenius norm: ||H - G||_F^2 = E[||H v - G v||^2] on the same probes (Ma & Ying's
  B1: the ratio ||H - G||_F / ||H||_F -> 0 at an MSE interpolation).
* XTrace (Epperly, Tropp & Webber 2024): Hutch++'s split made exchangeable, every test vector
  both in the basis and in the residual; in ``flatrep.measures.xtrace``, on the ``sphere``
  test vectors drawn here.
* Which estimator reaches a target SE with the fewest matvecs, from their measured SEs
  (``cheapest_to_reach``; SE ~ matvecs^-1/2 unless told otherwise); the curvature suite's
  ``hessian_trace`` takes the cheaper of the control variate and XTrace by it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from flatrep.measures import operators


def rademacher(m: int, dim: int, generator: torch.Generator, dtype=torch.float64,
               device: torch.device | None = None) -> torch.Tensor:
    """m Rademacher vectors (entries +-1 with probability 1/2), shape (m, dim), on ``device``.

    The bits are drawn on the CPU from the CPU ``generator`` (the same vectors on every
    device), then moved.
    """
    bits = torch.randint(0, 2, (m, dim), generator=generator)
    return (2 * bits - 1).to(device=device, dtype=dtype)


def sphere(m: int, dim: int, generator: torch.Generator, dtype=torch.float64,
           device: torch.device | None = None) -> torch.Tensor:
    """m vectors uniform on the sphere of radius sqrt(dim) (normalised Gaussians,
    sqrt(dim) g / ||g||), shape (m, dim), on ``device``; E[v v^T] = I as for ``rademacher``.

    The Gaussians are drawn in float64 on the CPU from the CPU ``generator`` (the same vectors
    on every device and in every dtype), normalised, then moved.
    """
    gaussians = torch.randn((m, dim), generator=generator, dtype=torch.float64)
    vectors = gaussians * (math.sqrt(dim) / gaussians.norm(dim=1, keepdim=True))
    return vectors.to(device=device, dtype=dtype)


@dataclass(frozen=True)
class Estimate:
    value: float
    standard_error: float


@dataclass(frozen=True)
class HutchinsonResult:
    """Tr A, ||A||_F (with SEs) and Tr(A)^2 / ||A||_F^2 from the Rademacher probes ``vectors``
    (rows) and their products ``products`` = A V, kept for reuse."""

    trace: Estimate
    frobenius: Estimate
    effective_rank: float
    vectors: torch.Tensor
    products: torch.Tensor


def mean_and_se(samples: torch.Tensor) -> Estimate:
    """Sample mean and its standard error std/sqrt(m) (unbiased std).

    The standard error of a single sample (m = 1) is undefined and returned as NaN.
    """
    m = samples.numel()
    se = samples.std(unbiased=True).item() / math.sqrt(m) if m > 1 else math.nan
    return Estimate(samples.mean().item(), se)


def hutchinson(operator: operators.LinearOperator, probes: int,
               generator: torch.Generator) -> HutchinsonResult:
    """Tr A and ||A||_F with standard errors, and the effective rank, from ``probes`` products.

    ``frobenius`` is sqrt of the mean of ||A v||^2, with SE by the delta method
    (SE / (2 ||A||_F)). ``effective_rank`` is Tr(A)^2 / ||A||_F^2 from the same probes.
    Degenerate case: when every product A v is 0 (e.g. A = 0), the samples ||A v||^2 are all
    0, and ``frobenius`` = 0 with SE 0 (no spread among the probes; the delta method's 0/0 is
    not used) and ``effective_rank`` = 0 (the rank of the zero matrix; the trace estimate is
    then 0 too).
    """
    v = rademacher(probes, operator.dim, generator, operator.dtype, operator.device)
    av = operator.apply(v)
    trace = mean_and_se((v * av).sum(1))
    squares = squared_frobenius(av)
    fro = frobenius(squares)
    rank = trace.value ** 2 / squares.value if fro.value > 0 else 0.0
    return HutchinsonResult(trace, fro, rank, v, av)


def squared_frobenius(products: torch.Tensor) -> Estimate:
    """||A||_F^2 = E ||A v||^2, estimated by the mean of ||A v||^2 over the products A V of
    Rademacher probes V (rows), with its standard error."""
    return mean_and_se(products.pow(2).sum(1))


def frobenius(squares: Estimate) -> Estimate:
    """||A||_F = sqrt(||A||_F^2) from ``squared_frobenius``'s estimate, SE by the delta method,
    SE(||A v||^2 mean) / (2 ||A||_F); 0 with SE 0 when every product is 0 (no spread; the
    delta method's 0/0 is not used)."""
    fro = math.sqrt(max(squares.value, 0.0))
    return Estimate(fro, squares.standard_error / (2 * fro) if fro > 0 else 0.0)


def residual_frobenius(hessian_products: torch.Tensor,
                       gauss_newton_products: torch.Tensor) -> Estimate:
    """||H - G||_F by Hutchinson on (H - G)^2 over Rademacher probes V from their products
    H V and G V: sqrt(mean_v ||H v - G v||^2), SE by the delta method (``frobenius``)."""
    return frobenius(squared_frobenius(hessian_products - gauss_newton_products))


def control_variate_trace(gauss_newton_trace: float, vectors: torch.Tensor,
                          products: torch.Tensor,
                          gauss_newton_quadratic: torch.Tensor) -> Estimate:
    """Tr H = Tr G (exact, given) + Hutchinson on H - G over the Rademacher probes ``vectors``:
    Tr G + mean_v (v . H v - v^T G v), from the products H V and the quadratic forms v^T G v
    (``curvature.GaussNewtonOperator.quadratic``, or v . G v from its products)."""
    rest = mean_and_se((vectors * products).sum(1) - gauss_newton_quadratic)
    return Estimate(gauss_newton_trace + rest.value, rest.standard_error)


def hutch_plus_plus(operator: operators.LinearOperator, matvecs: int,
                    generator: torch.Generator) -> Estimate:
    """Hutch++ trace with ``matvecs`` products (a third each for sketch, projection, residual).

    Tr A = Tr(Q^T A Q) + Tr((I - QQ^T) A (I - QQ^T)) with Q an orthonormal basis of A S; the
    second term by Hutchinson on projected Rademacher vectors, whose SE is returned. With
    ``matvecs`` < 6 that term has a single probe and its SE is NaN (``mean_and_se``).
    """
    k = max(matvecs // 3, 1)
    q, g = _deflation(operator, k, k, generator)
    exact = (q * operator.apply(q.T).T).sum()
    residual = (g * operator.apply(g)).sum(1)
    rest = mean_and_se(residual)
    return Estimate(exact.item() + rest.value, rest.standard_error)


def deflated_frobenius(operator: operators.LinearOperator, matvecs: int,
                       generator: torch.Generator) -> Estimate:
    """||A||_F of a symmetric A with ``matvecs`` products: Hutch++ on the PSD A^2.

    ||A||_F^2 = Tr(A QQ^T A) + Tr(A P A) = ||A Q||_F^2 + ||A P||_F^2 for Q an orthonormal
    basis of A S (k = matvecs // 3 Rademacher columns S) and P = I - QQ^T (A symmetric, P
    idempotent): the first term exact from the k products A Q, the second by Hutchinson,
    the mean of ||A P g||^2 over the other matvecs - 2k Rademacher probes g (A Q and A P G in
    one pass). Its SE is the residual probes'; ||A||_F and its SE by the delta method
    (``frobenius``). Range(Q) holds the top of A's spectrum, which carries most of
    ||A||_F^2 = sum lambda^2 on a trained network's Hessian, so the residual's variance,
    2 ||P A^2 P||_F^2 for Gaussian probes, is a fraction of plain Hutchinson's 2 ||A^2||_F^2
    (Meyer, Musco, Musco & Woodruff 2021: O(1/eps) products for a PSD matrix against
    O(1/eps^2)). With ``matvecs`` < 4 the residual has a single probe and the SE is NaN
    (0 where every product is 0, ``frobenius``).
    """
    k = max(matvecs // 3, 1)
    q, g = _deflation(operator, k, max(matvecs - 2 * k, 1), generator)
    products = operator.apply(torch.cat([q.T, g]))
    rest = squared_frobenius(products[k:])
    return frobenius(Estimate(products[:k].pow(2).sum().item() + rest.value,
                              rest.standard_error))


def _deflation(operator: operators.LinearOperator, sketch_size: int, probes: int,
               generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """(Q, G): Q (P, sketch_size) an orthonormal basis of A S for ``sketch_size`` Rademacher
    columns S (that many products), then ``probes`` Rademacher rows G with range(Q) projected
    out, G (I - QQ^T)."""
    dtype, device = operator.dtype, operator.device
    sketch = rademacher(sketch_size, operator.dim, generator, dtype, device)
    q, _ = torch.linalg.qr(operator.apply(sketch).T)
    g = rademacher(probes, operator.dim, generator, dtype, device)
    return q, g - (g @ q) @ q.T


#: The exponent p of SE ~ matvecs^-p that ``matvecs_to_reach`` assumes by default: 1/2, exact
#: for Hutchinson and the control variate (a mean of i.i.d. probes) and the conservative rate
#: for Hutch++ and XTrace (their residual term is Hutchinson's; their low-rank part may improve
#: faster on a decaying spectrum, e.g. Hutch++'s 1/matvecs for PSD matrices, which an
#: indefinite Hessian does not guarantee).
SE_RATE = 0.5


def matvecs_to_reach(estimate: Estimate, matvecs: float, target_se: float,
                     rate: float = SE_RATE) -> float:
    """Matvecs an estimator needs for SE <= ``target_se``, from its SE at ``matvecs``:
    matvecs (SE / target)^(1/rate) (SE ~ matvecs^-rate, ``SE_RATE``) when SE > target; the
    measured ``matvecs`` when SE <= target (reached: no extrapolation below the measured
    budget, where a low-rank estimator's basis would shrink); inf when SE is NaN (m = 1) or
    the target is 0 and SE is not (an exact estimate is out of a sampling estimator's reach)."""
    se = estimate.standard_error
    if math.isnan(se):
        return math.inf
    if se <= target_se:
        return float(matvecs)
    if target_se <= 0:
        return math.inf
    return matvecs * (se / target_se) ** (1 / rate)


def cheapest_to_reach(candidates: dict[str, tuple[Estimate, float]], target_se: float,
                      rates: dict[str, float] | None = None) -> tuple[str, dict[str, float]]:
    """(name, needed): which of ``candidates`` (name -> (estimate, matvecs it cost)) reaches
    ``target_se`` with the fewest matvecs (``matvecs_to_reach``, SE ~ matvecs^-rate with
    ``rates[name]``, default ``SE_RATE``), the first listed on a tie, and every candidate's
    matvecs. The costs are the caller's, in HVP-equivalents (the control-variate core: probes
    HVPs + probes Gauss-Newton products, a JVP and a VJP each; Hutch++: probes; XTrace: at
    most probes). ``flatrep.measures.suite.cheapest_trace`` lets ``hessian_trace`` take the
    cheaper of the control variate and XTrace by it."""
    rates = rates or {}
    needed = {name: matvecs_to_reach(estimate, matvecs, target_se, rates.get(name, SE_RATE))
              for name, (estimate, matvecs) in candidates.items()}
    return min(needed, key=needed.get), needed
