"""XTrace (flatrep.measures.xtrace) against dense matrices and a dense Hessian, in float64."""

import functools
import math

import dense_reference
import pytest
import torch
from conftest import MatrixOperator

from flatrep import models
from flatrep.measures import curvature, trace_estimators, xtrace

pytestmark = pytest.mark.usefixtures("float64_default")

DIM = 80
MATVECS = 20        # m = 10 test vectors
SEEDS = 200


def symmetric(eigenvalues: torch.Tensor, seed: int) -> torch.Tensor:
    """U diag(eigenvalues) U^T with U a Haar-random orthogonal matrix (QR of a Gaussian)."""
    gaussian = torch.randn(len(eigenvalues), len(eigenvalues),
                           generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    u, r = torch.linalg.qr(gaussian)
    u = u * torch.sign(torch.diagonal(r))
    return (u * eigenvalues) @ u.T


def decaying(power: float) -> torch.Tensor:
    """|lambda_j| = j^-power, every third one negative (indefinite, as a Hessian away from a
    minimum)."""
    j = torch.arange(1, DIM + 1, dtype=torch.float64)
    return torch.where(j % 3 == 0, -1.0, 1.0) * j ** -power


SPECTRA = {"fast": decaying(2.0), "slow": decaying(0.5)}


@functools.cache
def repeated(spectrum: str) -> dict:
    """XTrace's and Hutch++'s estimates, and XTrace's error estimates, over SEEDS seeds at
    MATVECS matvecs on one random matrix of the spectrum, with its exact trace."""
    matrix = symmetric(SPECTRA[spectrum], 0)
    operator = MatrixOperator(matrix)
    runs = [xtrace.xtrace(operator, MATVECS, torch.Generator().manual_seed(seed))
            for seed in range(SEEDS)]
    plus = [trace_estimators.hutch_plus_plus(operator, MATVECS,
                                             torch.Generator().manual_seed(seed)).value
            for seed in range(SEEDS)]
    return {"exact": torch.trace(matrix).item(),
            "values": torch.tensor([run.value for run in runs]),
            "errors": torch.tensor([run.standard_error for run in runs]),
            "hutch_plus_plus": torch.tensor(plus)}


def naive_xtrace(matrix: torch.Tensor, omega: torch.Tensor) -> trace_estimators.Estimate:
    """The definition, one QR per left-out test vector (columns of omega): tr_i =
    Tr(Q_i^T A Q_i) + d_i r_i^T A r_i / ||r_i||^2, Q_i = orth(A Omega_{-i}),
    r_i = (I - Q_i Q_i^T) omega_i, d_i = N - (m - 1); mean and std / sqrt(m)."""
    n, m = omega.shape
    estimates = []
    for i in range(m):
        others = torch.cat([omega[:, :i], omega[:, i + 1:]], dim=1)
        q, _ = torch.linalg.qr(matrix @ others)
        residual = omega[:, i] - q @ (q.T @ omega[:, i])
        estimates.append(torch.trace(q.T @ matrix @ q) + (n - m + 1) * (
            residual @ matrix @ residual) / (residual @ residual))
    return trace_estimators.mean_and_se(torch.stack(estimates))


def test_the_downdated_estimates_equal_the_definition_with_one_qr_each():
    """The efficient formulas (one QR of A Omega, downdated by the columns of R^-T) give the
    mean and error estimate of the m leave-one-out estimates computed from their definition."""
    matrix = symmetric(SPECTRA["slow"], 1)
    fast = xtrace.xtrace(MatrixOperator(matrix), MATVECS, torch.Generator().manual_seed(3))
    omega = trace_estimators.sphere(MATVECS // 2, DIM, torch.Generator().manual_seed(3)).T
    slow = naive_xtrace(matrix, omega)
    assert fast.value == pytest.approx(slow.value, rel=1e-12)
    assert fast.standard_error == pytest.approx(slow.standard_error, rel=1e-9)


@pytest.mark.parametrize("rank", [1, 4, 9])
@pytest.mark.parametrize("signs", ["psd", "indefinite"])
def test_a_matrix_of_rank_below_m_gets_its_exact_trace(rank, signs):
    """rank < m = 10: A Omega is rank-deficient (R singular), every leave-one-out basis spans
    range A, so every tr_i is Tr A to rounding and so is their mean; their spread is 0."""
    values = torch.linspace(0.5, 2.0, rank)
    if signs == "indefinite":
        values = values * torch.where(torch.arange(rank) % 2 == 0, 1.0, -1.0)
    matrix = symmetric(torch.cat([values, torch.zeros(DIM - rank)]), rank)
    est = xtrace.xtrace(MatrixOperator(matrix), MATVECS, torch.Generator().manual_seed(0))
    scale = values.abs().sum().item()
    assert est.value == pytest.approx(torch.trace(matrix).item(), abs=1e-10 * scale)
    assert est.standard_error <= 1e-10 * scale


def test_the_zero_operator_gives_zero_with_zero_error():
    est = xtrace.xtrace(MatrixOperator(torch.zeros(7, 7)), 6, torch.Generator().manual_seed(0))
    assert (est.value, est.standard_error) == (0.0, 0.0)


def test_more_test_vectors_than_dimensions_span_everything_and_are_exact():
    """m = 10 > N = 6: A Omega spans R^6, no column adds a direction of its own, every residual
    complement is empty (d_i = 0) and tr_i = Tr(Q^T A Q) = Tr A."""
    matrix = symmetric(torch.linspace(-1.0, 3.0, 6), 2)
    est = xtrace.xtrace(MatrixOperator(matrix), MATVECS, torch.Generator().manual_seed(0))
    assert est.value == pytest.approx(torch.trace(matrix).item(), rel=1e-12)
    assert est.standard_error < 1e-12


def test_the_normalisation_makes_a_multiple_of_the_identity_exact():
    """Sec. 2.3's rescaling of the residual probe to norm sqrt(d_i): for A = c I every
    tr_i = c (m - 1) + d_i c = c N whatever the test vectors (unscaled, the residual term
    c ||r_i||^2 would vary with them)."""
    est = xtrace.xtrace(MatrixOperator(2.5 * torch.eye(DIM)), MATVECS,
                        torch.Generator().manual_seed(4))
    assert est.value == pytest.approx(2.5 * DIM, rel=1e-12)
    assert est.standard_error < 1e-10


@pytest.mark.parametrize("spectrum", sorted(SPECTRA))
def test_unbiased_over_seeds(spectrum):
    """The mean of SEEDS estimates lies within 4 of its standard errors (from the observed
    spread over the seeds) of Tr A: a two-sided 4-sigma band, which an unbiased estimator
    leaves with probability about 6e-5."""
    run = repeated(spectrum)
    values = run["values"]
    standard_error = values.std().item() / math.sqrt(len(values))
    assert abs(values.mean().item() - run["exact"]) < 4 * standard_error


def test_smaller_mean_squared_error_than_hutch_plus_plus_on_a_fast_decaying_spectrum():
    """The paper's claim at equal matvecs (20: XTrace's 10 test vectors in both roles, against
    Hutch++'s 6 sketch, 6 basis and 6 residual probes) on |lambda_j| = j^-2."""
    run = repeated("fast")
    mse = ((run["values"] - run["exact"]) ** 2).mean().item()
    mse_plus = ((run["hutch_plus_plus"] - run["exact"]) ** 2).mean().item()
    assert mse < mse_plus


@pytest.mark.parametrize("spectrum", sorted(SPECTRA))
def test_the_error_estimate_is_calibrated_within_a_factor_two_in_variance(spectrum):
    """mean(err^2) over the seeds against the observed variance of the estimates: their ratio
    within [1/2, 2], i.e. err within a factor sqrt(2) of the RMS error. Not 1: the
    leave-one-out estimates share m - 2 basis vectors and are positively correlated, so
    std / sqrt(m) tends to underestimate (the authors' caveat; about 0.8 on these spectra);
    and the ratio's Monte-Carlo spread at 200 seeds is about sqrt(2 / 199) = 0.1 (the
    variance of a roughly Gaussian sample), so 1/2 lies three such spreads below 0.8."""
    run = repeated(spectrum)
    ratio = (run["errors"] ** 2).mean().item() / run["values"].var().item()
    assert 0.5 <= ratio <= 2.0


def test_agrees_with_the_dense_hessian_of_a_tiny_network_within_its_error_estimate():
    """Tr H of a tanh MLP (P = 51) by XTrace with 30 HVPs (m = 15 < P, a genuine estimate)
    against the dense float64 Hessian: within 4 error estimates."""
    torch.manual_seed(2)
    model = models.mlp(4, 3, [6], activation="tanh").double()
    x, y = torch.randn(30, 4), torch.randn(30, 3)
    operator = curvature.HessianOperator(model, x, y)
    exact = torch.trace(dense_reference.loss_hessian(model, x, y)).item()
    est = xtrace.xtrace(operator, 30, torch.Generator().manual_seed(0))
    assert est.standard_error > 0
    assert abs(est.value - exact) < 4 * est.standard_error


@pytest.mark.parametrize("matvecs, se_defined", [(1, False), (3, False), (4, True)])
def test_a_single_test_vector_has_no_error_estimate(matvecs, se_defined):
    """m = max(matvecs // 2, 1): with one test vector tr_1 is normalised Hutchinson
    (N omega^T A omega / ||omega||^2) and err is NaN (``mean_and_se``); from m = 2 it is
    finite."""
    matrix = symmetric(SPECTRA["slow"], 5)
    est = xtrace.xtrace(MatrixOperator(matrix), matvecs, torch.Generator().manual_seed(0))
    assert math.isfinite(est.value)
    assert math.isfinite(est.standard_error) == se_defined


def test_dtype_and_probes_follow_the_operator_and_the_generator():
    """A float32 operator is estimated in float32 from the same (CPU-drawn) test vectors as a
    float64 one: the same estimate to float32 rounding; the same seed, the same estimate."""
    matrix = symmetric(SPECTRA["slow"], 6)
    double = xtrace.xtrace(MatrixOperator(matrix), MATVECS, torch.Generator().manual_seed(7))
    single = xtrace.xtrace(MatrixOperator(matrix.float()), MATVECS,
                           torch.Generator().manual_seed(7))
    again = xtrace.xtrace(MatrixOperator(matrix), MATVECS, torch.Generator().manual_seed(7))
    assert single.value == pytest.approx(double.value, rel=1e-4)
    assert again == double


def test_the_cheapest_estimator_to_a_target_standard_error():
    """SE ~ matvecs^-1/2: SE 2 at 10 matvecs needs 10 (2 / 0.5)^2 = 160 for SE 0.5, SE 1 at
    30 needs 30 * 4 = 120, so the second is cheaper; one already at the target costs its
    measured matvecs; a NaN SE (one test vector) can never be chosen; rate 1 (SE ~ 1/matvecs)
    needs 10 * 4 = 40."""
    estimates = {"core": (trace_estimators.Estimate(5.0, 2.0), 10),
                 "hutch_plus_plus": (trace_estimators.Estimate(5.0, 1.0), 30),
                 "xtrace": (trace_estimators.Estimate(5.0, math.nan), 2)}
    name, needed = trace_estimators.cheapest_to_reach(estimates, 0.5)
    assert name == "hutch_plus_plus"
    assert needed == pytest.approx({"core": 160.0, "hutch_plus_plus": 120.0,
                                    "xtrace": math.inf})
    reached = {**estimates, "xtrace": (trace_estimators.Estimate(5.0, 0.25), 50)}
    assert trace_estimators.cheapest_to_reach(reached, 0.5) == ("xtrace", {
        "core": 160.0, "hutch_plus_plus": 120.0, "xtrace": 50.0})
    faster = trace_estimators.cheapest_to_reach(estimates, 0.5, rates={"core": 1.0})
    assert faster == ("core", {"core": 40.0, "hutch_plus_plus": 120.0, "xtrace": math.inf})
    exact = {"core": (trace_estimators.Estimate(5.0, 0.0), 10),
             "xtrace": (trace_estimators.Estimate(5.0, 0.25), 2)}
    assert trace_estimators.cheapest_to_reach(exact, 0.0) == ("core", {"core": 10.0,
                                                                       "xtrace": math.inf})
