"""Statistics against scipy/statsmodels computed independently and known cases."""

import numpy as np
import pytest
import scipy.stats

from flatrep import stats


def test_correlate_matches_scipy_and_brackets_the_estimate():
    rng = np.random.default_rng(0)
    x = rng.normal(size=40)
    y = 2.0 * x + rng.normal(size=40)
    table = stats.correlate(x, y, n_boot=500, level=0.95, rng=np.random.default_rng(1))
    expected = [scipy.stats.pearsonr(x, y)[0], scipy.stats.spearmanr(x, y)[0],
                scipy.stats.kendalltau(x, y)[0]]
    np.testing.assert_allclose(table["estimate"], expected, rtol=1e-12)
    assert (table["ci_low"] < table["estimate"]).all()
    assert (table["estimate"] < table["ci_high"]).all()
    assert (table["p_value"] < 0.01).all()


def test_monotone_data_have_rank_correlation_one():
    x = np.arange(10.0)
    table = stats.correlate(x, np.exp(x), n_boot=200, level=0.95, rng=np.random.default_rng(0))
    assert table["estimate"][1] == pytest.approx(1.0)
    assert table["ci_low"][1] == pytest.approx(1.0)


def test_too_few_points_give_nan_not_an_error():
    table = stats.correlate(np.array([1.0, 2.0]), np.array([2.0, 1.0]), 100, 0.95,
                            np.random.default_rng(0))
    assert np.isnan(table["estimate"]).all() and (table["n"] == 2).all()


def test_log_regression_recovers_a_power_law():
    rng = np.random.default_rng(2)
    rhs = np.exp(rng.uniform(0, 3, size=50))
    lhs = 0.5 * rhs ** 1.5 * np.exp(rng.normal(scale=0.01, size=50))
    fit = stats.log_regression(lhs, rhs)
    assert fit["slope"] == pytest.approx(1.5, abs=0.02)
    assert fit["slope_ci_low"] < 1.5 < fit["slope_ci_high"]
    assert fit["intercept"] == pytest.approx(np.log(0.5), abs=0.05)


def test_study_statistics_on_a_measured_run(measured_run, tiny_study):
    from flatrep import bounds
    ds, _ = measured_run
    result = stats.study_statistics(ds, bounds.evaluate(ds), tiny_study["stats"])
    assert (result["violations"] == 0).all()
    assert (result["violation_rate_ci_high"] > 0).all()  # exact CI is not degenerate
    summary = stats.summary(result, ds)
    assert summary["n_runs"] == 1 and summary["n_diverged_runs"] == 0
    assert set(summary["bounds"]) == set(bounds.REGISTRY)


def test_within_run_correlations_use_only_interpolated_checkpoints():
    """Two runs whose sharpness tracks MLS after the loss threshold and anti-tracks before."""
    import xarray as xr

    steps = np.arange(8)
    loss = np.array([1.0, 0.9, 0.8, 0.05, 0.04, 0.03, 0.02, 0.01])
    sharp = np.array([1.0, 2.0, 3.0, 9.0, 8.0, 7.0, 6.0, 5.0])
    mls = np.array([9.0, 8.0, 7.0, 4.5, 4.0, 3.5, 3.0, 2.5])  # decreases with sharpness after
    cube = xr.Dataset(
        {"train_loss": (("run", "step"), np.stack([loss, loss])),
         "sharpness": (("run", "step"), np.stack([sharp, sharp])),
         "diverged": (("run", "step"), np.zeros((2, 8), dtype=np.int8))},
        coords={"run": ["a", "b"], "step": steps})
    for name in stats.PAIRED_MEASURES:
        cube[name] = (("run", "step", "subset", "sample"),
                      np.broadcast_to(mls[None, :, None, None], (2, 8, 1, 3)).copy())
    cube = cube.assign_coords(subset=["train"])
    result = stats.within_runs(cube, threshold=0.1, n_boot=100, level=0.95, seed=0)
    np.testing.assert_allclose(result["within_run_corr"].sel(coefficient="spearman"), 1.0,
                               rtol=1e-12)
    # Including the pre-interpolation checkpoints would make the rank correlation negative.
    everything = stats.within_runs(cube, threshold=2.0, n_boot=100, level=0.95, seed=0)
    assert (everything["within_run_corr"].sel(coefficient="spearman") < 0).all()
    assert (result["within_run_n_runs"] == 2).all()
