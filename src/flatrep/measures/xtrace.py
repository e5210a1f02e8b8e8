"""XTrace: the exchangeable Hutch++ trace estimator and its error estimate.

Epperly, Tropp & Webber (2024), "XTrace: making the most of every sample in stochastic trace
estimation", SIAM J. Matrix Anal. Appl. 45(1). Hutch++ (``trace_estimators.hutch_plus_plus``)
spends a third of its products on a sketch S, a third on A Q and a third on residual probes,
and each test vector serves one role only. XTrace uses each of m test vectors omega_i in both
roles: the i-th leave-one-out estimate is a Hutch++ estimate whose basis Q_(i) spans
A Omega_{-i} (every test vector but the i-th) and whose residual probe is omega_i,

    tr_i = Tr(Q_(i)^T A Q_(i)) + omega_i^T (I - P_i) A (I - P_i) omega_i,
    P_i = Q_(i) Q_(i)^T,

each unbiased (omega_i is independent of P_i and E[omega omega^T] = I), and XTrace is their
average, tr_X = (1/m) sum_i tr_i, symmetric in the test vectors (the exchangeability
principle). It costs 2m products: A Omega, then A Q for Q an orthonormal basis of A Omega.

Every Q_(i) is a downdate of one QR factorisation A Omega = Q R: range A Omega_{-i} is
range(Q) less the unit direction Q s_i orthogonal to the other columns of R,
s_i = R^{-T} e_i / ||R^{-T} e_i|| (the normalised i-th column of R^{-T}; the authors' code,
eepperly/XTrace ``code/xtrace.m``, normalises the rows of I - triu(R, 1) R^{-1} =
diag(R) R^{-1}, the same directions up to sign), so
P_i = Q (I - s_i s_i^T) Q^T and, with H = Q^T A Q, w_i = Q^T omega_i, b_i = Q^T A omega_i
(= R e_i), u_i = (I - s_i s_i^T) w_i and r_i = (I - P_i) omega_i = omega_i - Q u_i,

    Tr(Q_(i)^T A Q_(i)) = Tr H - s_i^T H s_i,
    r_i^T A r_i = omega_i^T A omega_i - 2 u_i^T b_i + u_i^T H u_i,
    ||r_i||^2 = ||omega_i||^2 - ||u_i||^2,

all from m x m quantities (A symmetric; no product beyond the 2m).

Test vectors: normalised Gaussians, uniform on the sphere of radius sqrt(N)
(``trace_estimators.sphere``), with the paper's normalisation (Sec. 2.3, the section the
authors' README names for their recommended ``'improved'`` test vectors): the residual probe
is rescaled to the norm sqrt(d_i) of a sphere vector of the complement,
d_i = N - dim range(Q_(i)) (= N - m + 1, the numerator of their code's scale),

    tr_i = Tr(Q_(i)^T A Q_(i)) + d_i r_i^T A r_i / ||r_i||^2.

Given P_i, a rotation-invariant omega_i makes r_i / ||r_i|| uniform on the unit sphere of
the d_i-dimensional complement, so the rescaled term stays unbiased and has the least
worst-case variance of Hutchinson on that complement (it removes the spread of ||r_i||^2,
the gain the paper reports on flat parts of a spectrum). Rademacher vectors are not
rotation-invariant: their projections r_i are not uniform on that sphere, the rescaling
would bias the estimate, and without it they lose that gain; the authors recommend this
"improved" sphere choice as XTrace's default.

Error estimate (the authors', ``err = std(ests) / sqrt(m)`` in their ``code/xtrace.m``): the
standard error of the mean of the leave-one-out estimates as if they were independent,

    err = sqrt( sum_i (tr_i - tr_X)^2 / (m (m - 1)) ) = std(tr_1..tr_m) / sqrt(m),

(``trace_estimators.mean_and_se``), NaN for m = 1. The tr_i share m - 2 basis vectors and are
positively correlated, so err tends to underestimate the error (the authors say so); the
tests state how far it is from the observed spread.

Rank deficiency: when A Omega has numerical rank r < m (A of rank < m, or A = 0), the QR
factor R is singular and R^{-T} does not exist. R's SVD, R = U Sigma V^T, gives the basis
Q U_r of the r directions above ``jacobian.numerical_rank``'s tolerance and the coefficients
Sigma_r V_r^T; column i of A Omega adds a direction of its own exactly when e_i lies in the
row space of those coefficients (||V_r^T e_i|| = 1 within ``ROW_SPACE_TOLERANCE``), and then
s_i = Sigma_r^{-1} V_r^T e_i normalised (= R^{-T} e_i normalised in the basis Q U when r = m).
Otherwise the other columns span the same range, Q_(i) = Q U_r and s_i = 0. For A of rank
< m every basis spans range A and every tr_i is Tr A to rounding, so XTrace is exact.
"""

from __future__ import annotations

import math

import torch

from flatrep.measures import jacobian, operators
from flatrep.measures.trace_estimators import Estimate, mean_and_se, sphere


def row_space_tolerance(dtype: torch.dtype) -> float:
    """1 - ||V_r^T e_i||^2 at or below sqrt(eps) counts as 0 (e_i in the row space): the
    right singular vectors of R are accurate to about eps / gap, far below it, while an e_i
    outside the row space of a generic rank-deficient sketch misses it by O(1 - r/m)."""
    return math.sqrt(torch.finfo(dtype).eps)


def xtrace(operator: operators.LinearOperator, matvecs: int,
           generator: torch.Generator) -> Estimate:
    """XTrace estimate of Tr A with its error estimate, from at most ``matvecs`` products.

    m = max(matvecs // 2, 1) sphere test vectors drawn on the CPU from ``generator`` (moved to
    ``operator.device`` in ``operator.dtype``); A Omega (m products), then A Q for the basis Q
    of its numerical range (at most m more). Returns the mean of the m leave-one-out
    estimates (module docstring) and err = std(tr_i) / sqrt(m) (NaN for m = 1).
    """
    m = max(matvecs // 2, 1)
    omega = sphere(m, operator.dim, generator, operator.dtype, operator.device).T   # (N, m)
    sketch = operator.apply(omega.T).T                                                # A Omega
    basis, right, singular = range_basis(sketch)
    directions, alone = leave_one_out_directions(right, singular)
    basis_products = operator.apply(basis.T).T if basis.shape[1] else basis           # A Q
    return mean_and_se(leave_one_out_traces(omega, sketch, basis, basis_products, directions,
                                            alone))


def range_basis(sketch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(Q U_r, V_r^T, sigma_r) from A Omega = Q R (reduced QR) and R = U Sigma V^T: the
    orthonormal basis (N, r) of the r = ``jacobian.numerical_rank`` directions of A Omega,
    with A Omega = (Q U_r) diag(sigma_r) V_r^T up to the dropped rounding."""
    q, r = torch.linalg.qr(sketch)
    u, singular, vt = torch.linalg.svd(r)
    rank = int(jacobian.numerical_rank(singular, tuple(sketch.shape)))
    return q @ u[:, :rank], vt[:rank], singular[:rank]


def leave_one_out_directions(right: torch.Tensor,
                             singular: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(S, alone): column i of S (r, m) is s_i, the unit direction (in the basis of
    ``range_basis``) that column i of A Omega alone adds, Sigma_r^{-1} V_r^T e_i normalised
    (R^{-T} e_i normalised at full rank); ``alone`` (m,) says where there is one (e_i in the
    row space of V_r^T), and S's column is 0 where not."""
    leverage = right.pow(2).sum(0)                                   # ||V_r^T e_i||^2
    alone = 1 - leverage <= row_space_tolerance(right.dtype)
    raw = right / singular[:, None]
    unit = raw / raw.norm(dim=0)
    return torch.where(alone, unit, torch.zeros_like(unit)), alone


def leave_one_out_traces(omega: torch.Tensor, sketch: torch.Tensor, basis: torch.Tensor,
                         basis_products: torch.Tensor, directions: torch.Tensor,
                         alone: torch.Tensor) -> torch.Tensor:
    """tr_i = Tr H - s_i^T H s_i + d_i r_i^T A r_i / ||r_i||^2 for every test vector (columns
    of ``omega``, (N, m)), from ``sketch`` = A Omega, the basis Q (N, r), A Q and S (module
    docstring); d_i = N - r + [s_i != 0] is the dimension of the complement of range Q_(i),
    and the residual term is 0 where d_i = 0 (Q_(i) spans R^N)."""
    dim, rank = basis.shape
    h = basis.T @ basis_products                                     # Q^T A Q
    w = basis.T @ omega                                              # Q^T omega_i
    b = basis.T @ sketch                                             # Q^T A omega_i
    u = w - directions * (directions * w).sum(0)                     # (I - s_i s_i^T) w_i
    kept = h.trace() - (directions * (h @ directions)).sum(0)
    quadratic = (omega * sketch).sum(0) - 2 * (u * b).sum(0) + (u * (h @ u)).sum(0)
    residual_sq = omega.pow(2).sum(0) - u.pow(2).sum(0)
    complement = (dim - rank + alone.to(omega.dtype))
    rescaled = torch.where(complement > 0, complement * quadratic / residual_sq,
                           torch.zeros_like(quadratic))
    return kept + rescaled
