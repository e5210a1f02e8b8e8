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
