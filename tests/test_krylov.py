"""Lanczos runs, one at a time and batched, against dense eigendecompositions in float64."""

import pytest
import torch
from conftest import MatrixOperator

from flatrep.measures import krylov, memory, spectrum

pytestmark = pytest.mark.usefixtures("float64_default")


def symmetric(dim, seed, rank=None):
    """A random symmetric matrix, of the given rank when ``rank`` is set."""
    generator = torch.Generator().manual_seed(seed)
    factor = torch.randn(dim, rank or dim, generator=generator)
    if rank is not None:
        return factor @ torch.diag(torch.linspace(-1.0, 2.0, rank)) @ factor.T
    return (factor + factor.T) / 2


def shared(matrix):
    """``apply`` of one operator for every run, recording how many rows each call got."""
    calls = []

    def apply(active, rows):
        calls.append(len(rows))
        return rows @ matrix
    return apply, calls


def test_runs_carried_together_equal_runs_carried_alone():
    """Each run of a batch has the Ritz values, residuals, quadrature weights and top vector of
    the same start run alone, to rounding."""
    a = symmetric(12, seed=0)
    starts = torch.randn(4, 12, generator=torch.Generator().manual_seed(1))
    apply, _ = shared(a)
    together = krylov.lanczos_runs(apply, starts, 7)
    for row, start in enumerate(starts):
        alone = krylov.lanczos_runs(apply, start[None], 7).result(0)
        batched = together.result(row)
        for name in ("ritz_values", "residuals", "weights", "top_vector"):
            torch.testing.assert_close(getattr(batched, name), getattr(alone, name),
                                       rtol=0.0, atol=1e-12)


def test_a_run_stops_on_its_invariant_subspace_and_leaves_the_operator():
    """A start inside a 2-dimensional eigenspace stops after 2 steps with exact eigenvalues,
    while a generic start goes on; after the stop only the other run is applied."""
    values = torch.tensor([-1.0, 0.5, 2.0, 3.0, 4.0, 5.0])
    q, _ = torch.linalg.qr(torch.randn(6, 6, generator=torch.Generator().manual_seed(2)))
    a = q @ torch.diag(values) @ q.T
    inside = q[:, 1] + 2 * q[:, 3]
    generic = torch.randn(6, generator=torch.Generator().manual_seed(3))
    apply, calls = shared(a)
    runs = krylov.lanczos_runs(apply, torch.stack([inside, generic]), 6)
    assert runs.lengths.tolist() == [2, 6]
    assert calls == [2, 2, 1, 1, 1, 1]
    torch.testing.assert_close(runs.result(0).ritz_values, values[[1, 3]], rtol=0.0, atol=1e-12)
    torch.testing.assert_close(runs.result(1).ritz_values, values, rtol=0.0, atol=1e-10)


def test_ritz_pairs_of_a_full_run_are_the_eigenpairs():
    """P steps: the Ritz values are the spectrum, every residual vanishes, the weights are the
    squared components of the start along the eigenvectors and the top vector is the top
    eigenvector (up to sign)."""
    a = symmetric(9, seed=4)
    values, vectors = torch.linalg.eigh(a)
    start = torch.randn(9, generator=torch.Generator().manual_seed(5))
    apply, _ = shared(a)
    result = krylov.lanczos_runs(apply, start[None], 9).result(0)
    scale = values.abs().max().item()
    torch.testing.assert_close(result.ritz_values, values, rtol=0.0, atol=1e-10 * scale)
    assert result.residuals.max() < 1e-8 * scale
    torch.testing.assert_close(result.weights, (vectors.T @ start / start.norm()) ** 2,
                               rtol=0.0, atol=1e-10)
    assert abs(abs(result.top_vector @ vectors[:, -1]) - 1) < 1e-10


def test_extreme_magnitude_per_operator_against_dense_norms():
    """One operator per run (``apply`` takes the active runs' own matrices): the Krylov space
    of a rank-3 matrix from a generic start is its range plus the start's null-space part, so
    every run stops after 4 steps with its max |Ritz value| the spectral norm."""
    matrices = torch.stack([symmetric(10, seed, rank=3) for seed in range(5)])
    starts = torch.randn(5, 10, generator=torch.Generator().manual_seed(6))
    runs = krylov.lanczos_runs(
        lambda active, rows: torch.einsum("mp,mpq->mq", rows, matrices[active]), starts, 10)
    norms, residuals = runs.extreme_magnitude()
    torch.testing.assert_close(norms, torch.linalg.matrix_norm(matrices, ord=2),
                               rtol=1e-10, atol=0.0)
    assert runs.lengths.tolist() == [4] * 5
    assert residuals.max() < 1e-8 * norms.max()


def test_lanczos_draws_its_start_from_the_generator():
    """``lanczos`` is the run from the generator's first standard-normal vector."""
    a = symmetric(8, seed=7)
    result = krylov.lanczos(MatrixOperator(a), 5, torch.Generator().manual_seed(8))
    start = torch.randn(8, generator=torch.Generator().manual_seed(8))
    apply, _ = shared(a)
    expected = krylov.lanczos_runs(apply, start[None], 5).result(0)
    torch.testing.assert_close(result.ritz_values, expected.ritz_values, rtol=0.0, atol=0.0)


def test_a_byte_budget_splits_slq_without_changing_it(lanczos_batches):
    """SLQ's probes run in batches of ``batch_rows``: a budget of 2 runs gives batches 2, 2, 1
    and the nodes and weights of one batch of 5."""
    a = symmetric(15, seed=9)
    operator = MatrixOperator(a)
    whole = spectrum.slq(operator, 5, 6, torch.Generator().manual_seed(10))
    lanczos_batches.clear()
    row_bytes = (6 + memory.ROW_VECTORS) * 15 * 8
    split = spectrum.slq(operator, 5, 6, torch.Generator().manual_seed(10),
                         max_bytes=2 * row_bytes + row_bytes // 2)
    assert lanczos_batches == [2, 2, 1]
    torch.testing.assert_close(split.nodes, whole.nodes, rtol=0.0, atol=1e-12)
    torch.testing.assert_close(split.weights, whole.weights, rtol=0.0, atol=1e-12)


def test_batch_rows_by_hand():
    row_bytes = (20 + memory.ROW_VECTORS) * 1000 * 8
    assert memory.batch_rows(1000, 20, 8, 160, 10**12) == 160
    assert memory.batch_rows(1000, 20, 8, 160, 7 * row_bytes) == 7
    assert memory.batch_rows(1000, 20, 8, 160, row_bytes - 1) == 1
