"""Statistics against scipy/statsmodels computed independently and known cases."""

import json

import numpy as np
import pandas as pd
import pytest
import scipy.stats
import statsmodels.formula.api as smf
import xarray as xr
from statsmodels.stats.multitest import multipletests

from flatrep.analysis import correlations, markdown, regressions, stats


def _grid_cube(sharpness, measure, hparams, diverged=None):
    """One-checkpoint cube: sharpness, every paired measure = ``measure``, run coords hparams."""
    n = len(sharpness)
    per_run = {name: (("run", "step"), np.asarray(values, dtype=float)[:, None])
               for name, values in [("sharpness", sharpness), ("train_loss", np.zeros(n)),
                                    ("train_acc", np.ones(n)), ("test_acc", np.ones(n))]}
    per_run.update({name: (("run", "step"), np.asarray(measure, dtype=float)[:, None])
                    for name in stats.PAIRED_MEASURES})
    flags = np.zeros(n) if diverged is None else diverged
    per_run["diverged"] = (("run", "step"), np.asarray(flags, dtype=np.int8)[:, None])
    coords = {"run": [f"r{i}" for i in range(n)], "step": [0]}
    coords.update({name: ("run", np.asarray(values)) for name, values in hparams.items()})
    return xr.Dataset(per_run, coords=coords)


def _seeded_grid(seeds=4):
    """lr x batch_size x seed grid (8 configurations) as run coordinates."""
    lr, batch, seed = np.meshgrid([0.1, 0.2, 0.3, 0.4], [8, 32], np.arange(seeds),
                                  indexing="ij")
    return {"lr": lr.ravel(), "batch_size": batch.ravel(), "seed": seed.ravel()}


def test_correlate_matches_scipy_and_brackets_the_estimate():
    rng = np.random.default_rng(0)
    x = rng.normal(size=40)
    y = 2.0 * x + rng.normal(size=40)
    table = correlations.correlate(x, y, n_boot=500, level=0.95, rng=np.random.default_rng(1),
                                   n_perm=300)
    expected = [scipy.stats.pearsonr(x, y)[0], scipy.stats.spearmanr(x, y)[0],
                scipy.stats.kendalltau(x, y)[0]]
    np.testing.assert_allclose(table["estimate"], expected, rtol=1e-12)
    assert (table["ci_low"] < table["estimate"]).all()
    assert (table["estimate"] < table["ci_high"]).all()
    assert (table["p_value"] < 0.01).all()
    # |r| ~ 0.9 with n = 40: no permutation of 300 reaches it, p is the smallest possible.
    np.testing.assert_array_equal(table["p_perm"], 1 / 301)


@pytest.mark.parametrize("method, scipy_coefficient", [
    ("pearson", scipy.stats.pearsonr), ("spearman", scipy.stats.spearmanr),
    ("kendall", lambda x, y: scipy.stats.kendalltau(x, y, variant="b"))])
def test_batched_coefficients_equal_scipy_sample_by_sample(method, scipy_coefficient):
    """Rows of many samples at once, with ties in x and y (values on a coarse grid), against
    scipy's one-sample functions; constant rows give NaN, as scipy's undefined coefficient."""
    rng = np.random.default_rng(3)
    x = rng.integers(0, 5, size=(2, 300, 9)).astype(float)
    y = x + rng.integers(-2, 3, size=x.shape)
    x[0, 7] = 4.0                      # a constant x
    y[1, 11] = -1.0                    # a constant y
    batched = correlations.coefficients(x, y, method)
    assert batched.shape == (2, 300)
    expected = np.array([[scipy_coefficient(a, b).statistic if np.ptp(a) and np.ptp(b)
                          else np.nan for a, b in zip(xs, ys)] for xs, ys in zip(x, y)])
    assert np.isnan(batched[0, 7]) and np.isnan(batched[1, 11])
    np.testing.assert_allclose(batched, expected, rtol=1e-12, atol=1e-15)
    assert np.isnan(correlations.coefficients([1.0], [2.0], method))


def test_kendall_chunks_give_the_unchunked_coefficients(monkeypatch):
    rng = np.random.default_rng(4)
    x, y = rng.normal(size=(2, 50, 12))
    whole = correlations.coefficients(x, y, "kendall")
    monkeypatch.setattr(correlations, "_KENDALL_CHUNK", 12 * 12 * 7)    # 7 samples per chunk
    np.testing.assert_array_equal(correlations.coefficients(x, y, "kendall"), whole)


def test_monotone_data_have_rank_correlation_one():
    x = np.arange(10.0)
    table = correlations.correlate(x, np.exp(x), n_boot=200, level=0.95, rng=np.random.default_rng(0),
                                   n_perm=50)
    assert table["estimate"][1] == pytest.approx(1.0)
    assert table["ci_low"][1] == pytest.approx(1.0)


def test_too_few_points_give_nan_not_an_error():
    table = correlations.correlate(np.array([1.0, 2.0]), np.array([2.0, 1.0]), 100, 0.95,
                                   np.random.default_rng(0), 100)
    assert np.isnan(table["estimate"]).all() and np.isnan(table["p_perm"]).all()
    assert (table["n"] == 2).all()


@pytest.mark.parametrize("method", correlations.METHODS)
def test_permutation_p_value_matches_scipy_exact_permutation_test(method):
    rng = np.random.default_rng(8)
    x = rng.normal(size=6)
    y = x + rng.normal(size=6)
    n_perm = 2000
    p = correlations.permutation_p_value(x, y, method, n_perm, np.random.default_rng(6))
    # scipy enumerates all 6! = 720 pairings: P(|r_perm| >= |r_obs|) exactly.
    exact = scipy.stats.permutation_test(
        (y,), lambda v: abs(correlations.correlation(x, v, method)[0]), permutation_type="pairings",
        alternative="greater", n_resamples=np.inf, vectorized=False).pvalue
    assert 0.01 < exact < 0.5  # neither extreme: a one-sided or an unfloored p would differ
    monte_carlo_se = np.sqrt(exact * (1 - exact) / n_perm)
    assert abs(p - exact) < 4 * monte_carlo_se + 1 / (n_perm + 1)


@pytest.mark.parametrize("method", ["spearman", "kendall"])
def test_permutation_p_value_is_tiny_for_a_monotone_relation(method):
    x = np.arange(8.0)
    p = correlations.permutation_p_value(x, x ** 3, method, 2000, np.random.default_rng(0))
    # Exact p = 2 / 8! = 5e-5: with 2000 permutations (1 + K) / 2001, K almost surely 0.
    assert 1 / 2001 <= p <= 2 / 2001


def test_permutation_p_values_are_uniform_under_independence():
    rng = np.random.default_rng(7)
    datasets, n_perm = 100, 100
    ps = [correlations.permutation_p_value(rng.normal(size=10), rng.normal(size=10), "pearson",
                                           n_perm, rng) for _ in range(datasets)]
    # Under H0 p = (1 + K) / (1 + N), K | U ~ Binomial(N, U), U ~ Uniform(0, 1):
    # E p = 1/2 and Var p = (N/6 + N^2/12) / (N + 1)^2.
    se = np.sqrt((n_perm / 6 + n_perm ** 2 / 12) / (n_perm + 1) ** 2 / datasets)
    assert abs(np.mean(ps) - 0.5) < 4 * se


def test_permutation_within_groups_only_swaps_group_members():
    """Residuals x = y = (-1, 1, -2, 2) in groups (0, 0, 1, 1): of the 4 within-group
    permutations, 2 give |r| = 1 (p -> 1/2); of all 24 permutations only 2 do (p -> 1/12)."""
    groups = np.array([0, 0, 1, 1])
    x, y = np.array([9.0, 11.0, -7.0, -3.0]), np.array([0.0, 2.0, 8.0, 12.0])
    n_perm = 2000
    p = correlations.permutation_p_value(x, y, "pearson", n_perm, np.random.default_rng(0), groups)
    assert abs(p - 0.5) < 4 * np.sqrt(0.25 / n_perm)


def test_stratified_resampling_keeps_every_group_size_in_sorted_order():
    groups = np.array([2, 0, 1, 0, 2, 2, 1, 0, 0])
    for seed in range(20):
        idx = correlations.resample(groups, np.random.default_rng(seed))
        np.testing.assert_array_equal(groups[idx], np.sort(groups))


def test_within_group_residuals_of_rows_are_those_of_each_row():
    """_centered of a (rows, n) array against the residuals computed row by row by hand."""
    rng = np.random.default_rng(5)
    groups = np.array([1, 0, 1, 2, 0, 1])
    values = rng.normal(size=(4, 6))
    expected = np.array([[v[i] - v[groups == groups[i]].mean() for i in range(6)]
                         for v in values])
    np.testing.assert_allclose(correlations.centered(values, groups), expected, atol=1e-14)
    constant = np.array([3.3, 1.0, 3.3, 0.2, 1.0, 3.3])       # constant within every group
    assert (correlations.centered(constant, groups) == 0).all()


def test_ratio_of_means_is_exact_for_constant_arms_and_undefined_without_a_positive_control():
    rng = np.random.default_rng(0)
    assert correlations.ratio_of_means(np.full(5, 6.0), np.full(4, 2.0), 200, 0.95, rng) == (
        3.0, 3.0, 3.0)
    estimate, low, high = correlations.ratio_of_means(np.array([1.0, 2.0]), np.array([-1.0, 1.0]),
                                                      200, 0.95, rng)
    assert np.isnan(estimate)
    # a control arm with half its values <= 0: fewer than half the resamples are defined
    assert np.isnan(low) and np.isnan(high)


def test_ratio_of_means_scales_with_the_treated_arm_and_keeps_the_arm_sizes():
    """Multiplying the treated arm by c multiplies the estimate and, on the same resamples
    (same seed), both CI ends by c; resamples keep each arm's size (a one-run arm is fixed)."""
    rng = np.random.default_rng(1)
    treated, control = rng.lognormal(1.0, 0.5, 7), rng.lognormal(0.0, 0.5, 5)
    base = correlations.ratio_of_means(treated, control, 500, 0.9, np.random.default_rng(2))
    scaled = correlations.ratio_of_means(7.5 * treated, control, 500, 0.9, np.random.default_rng(2))
    assert scaled == pytest.approx(tuple(7.5 * v for v in base), rel=1e-12)
    assert base[0] == pytest.approx(treated.mean() / control.mean(), rel=1e-14)
    assert base[1] < base[0] < base[2]
    # one control run: only the treated mean varies, so the CI is that of mean(treated) / c
    single = correlations.ratio_of_means(treated, control[:1], 500, 0.9, np.random.default_rng(3))
    low, high = correlations.bootstrap_mean_ci(treated, 500, 0.9, np.random.default_rng(4))
    assert single[1] == pytest.approx(low / control[0], rel=0.1)
    assert single[2] == pytest.approx(high / control[0], rel=0.1)


def test_ratio_of_means_ci_covers_the_true_ratio_at_about_its_level():
    """Lognormal arms of 20 runs, true ratio exp(mu_t - mu_c) = e; over 300 seeded studies the
    95% percentile-bootstrap CI covers it in 88-99% of them (percentile intervals of a ratio
    undercover a little at this size)."""
    rng = np.random.default_rng(5)
    covered = []
    for _ in range(300):
        treated, control = rng.lognormal(1.0, 0.4, 20), rng.lognormal(0.0, 0.4, 20)
        _, low, high = correlations.ratio_of_means(treated, control, 400, 0.95, rng)
        covered.append(low <= np.e <= high)
    assert 0.88 <= np.mean(covered) <= 0.99


def test_holm_matches_statsmodels():
    p = np.random.default_rng(0).uniform(0, 0.2, size=(4, 3))
    p[1, 2] = p[0, 0]  # a tie
    expected = multipletests(p.ravel(), method="holm")[1].reshape(p.shape)
    np.testing.assert_allclose(correlations.holm(p), expected, rtol=1e-15)


def test_holm_by_hand_ignores_nans():
    # m = 4: sorted 0.005*4 = 0.02, 0.01*3 = 0.03, 0.03*2 = 0.06, 0.04*1 -> max(0.06, 0.04).
    adjusted = correlations.holm([0.01, np.nan, 0.04, 0.03, 0.005])
    np.testing.assert_allclose(adjusted, [0.03, np.nan, 0.06, 0.06, 0.02], rtol=1e-15)
    np.testing.assert_array_equal(correlations.holm([0.5, 0.9]), [1.0, 1.0])


def test_across_runs_adjusts_the_measure_by_coefficient_family():
    rng = np.random.default_rng(1)
    sharp = rng.normal(size=12)
    cube = _grid_cube(sharp, sharp + rng.normal(size=12), {"seed": np.arange(12)})
    cube["mls"] = cube["mls"] * 0 + rng.normal(size=(12, 1))  # one unrelated measure
    result = stats.across_runs(cube, n_boot=50, level=0.95, seed=0, n_perm=200)
    for raw, adjusted in (("corr_p_value", "corr_p_holm"), ("corr_p_perm", "corr_p_perm_holm")):
        expected = multipletests(result[raw].values.ravel(), method="holm")[1]
        np.testing.assert_allclose(result[adjusted].values.ravel(), expected, rtol=1e-15)
    assert (result["corr_p_perm"] >= 1 / 201).all()


def _within_residuals(values, hparams):
    frame = pd.DataFrame({"v": values, "lr": hparams["lr"], "bs": hparams["batch_size"]})
    return (frame["v"] - frame.groupby(["lr", "bs"])["v"].transform("mean")).to_numpy()


def test_within_configs_removes_configuration_effects():
    """Config means drive both variables; seeds add independent noise."""
    rng = np.random.default_rng(2)
    hparams = _seeded_grid()
    config_effect = np.repeat(rng.normal(scale=3.0, size=8), 4)
    sharp = config_effect + rng.normal(scale=0.3, size=32)
    measure = config_effect + rng.normal(scale=0.3, size=32)
    cube = _grid_cube(sharp, measure, hparams)
    within = stats.within_configs(cube, n_boot=300, level=0.95, seed=0, n_perm=300)
    across = stats.across_runs(cube, n_boot=300, level=0.95, seed=0, n_perm=10)
    pearson = within.sel(measure="mls", coefficient="pearson")
    expected = scipy.stats.pearsonr(_within_residuals(sharp, hparams),
                                    _within_residuals(measure, hparams))[0]
    assert float(pearson["within_config_corr_estimate"]) == pytest.approx(expected, rel=1e-12)
    assert (within["within_config_corr_ci_low"] < 0).all()
    assert (within["within_config_corr_ci_high"] > 0).all()
    assert (within["within_config_corr_p_perm"] > 0.05).all()
    assert (across["corr_ci_low"].sel(coefficient="pearson") > 0.9).all()
    assert "within_config_corr_p_value" not in within


def test_within_configs_finds_a_seed_level_relation_and_drops_singletons():
    rng = np.random.default_rng(3)
    grid = _seeded_grid()
    config_effect = np.repeat(rng.normal(scale=3.0, size=8), 4)
    seed_noise = rng.normal(size=32)
    sharp = config_effect + seed_noise
    measure = -config_effect + seed_noise + rng.normal(scale=0.3, size=32)
    expected = scipy.stats.kendalltau(_within_residuals(sharp, grid),
                                      _within_residuals(measure, grid))[0]
    # A ninth configuration with one run: an outlier that must not enter.
    hparams = {key: np.append(values, 0.9 if key == "lr" else 0) for key, values in grid.items()}
    cube = _grid_cube(np.append(sharp, 50.0), np.append(measure, -50.0), hparams)
    within = stats.within_configs(cube, n_boot=300, level=0.95, seed=0, n_perm=300)
    kendall = within.sel(measure="nmls", coefficient="kendall")
    assert float(kendall["within_config_corr_estimate"]) == pytest.approx(expected, rel=1e-12)
    assert (within["within_config_corr_ci_low"] > 0.5).all()
    np.testing.assert_array_equal(within["within_config_corr_p_perm"], 1 / 301)
    assert (within["within_config_corr_n"] == 32).all()
    assert (within["within_config_n_configs"] == 8).all()


def test_log_regression_recovers_a_power_law():
    rng = np.random.default_rng(2)
    rhs = np.exp(rng.uniform(0, 3, size=50))
    lhs = 0.5 * rhs ** 1.5 * np.exp(rng.normal(scale=0.01, size=50))
    fit = regressions.log_regression(lhs, rhs)
    assert fit["slope"] == pytest.approx(1.5, abs=0.02)
    assert fit["slope_ci_low"] < 1.5 < fit["slope_ci_high"]
    assert fit["intercept"] == pytest.approx(np.log(0.5), abs=0.05)


def test_study_statistics_on_a_measured_run(measured_tiny_run, tiny_study):
    from flatrep.analysis import bounds
    ds, _ = measured_tiny_run
    evaluated = bounds.evaluate(ds)
    result = stats.study_statistics(ds, evaluated, tiny_study["stats"])
    theorems = evaluated["bound"].values[evaluated["kind"].values == bounds.THEOREM]
    assert (result["violations"].sel(bound=theorems) == 0).all()
    evaluated = result["evaluated"] > 0
    assert (result["violation_rate_ci_high"].where(evaluated, 1) > 0).all()  # exact CI
    assert (~evaluated).sum() == 2     # loss_trace, loss_spectral: cross-entropy only
    summary = json.loads(json.dumps(stats.summary(result, ds)))
    assert summary["n_runs"] == 1 and summary["n_diverged_runs"] == 0
    # One run: no within-configuration pairs, no second group for the mixed model.
    assert summary["correlation_within_configs"]["sharpness~mls"]["pearson"]["n"] == 0
    assert all(row["mixed_slope"] is None for row in summary["bounds"].values())
    assert set(summary["bounds"]) == set(bounds.REGISTRY)
    points = ds.sizes["step"] * ds.sizes["sample"]
    assert (result["sample_bound_evaluated"] == points).all()
    assert (result["sample_bound_violations"] == 0).all()
    assert set(summary["per_sample_bounds"]) == set(bounds.SAMPLE_REGISTRY)
    # every assumption holds for a trained MLP except interpolation at early checkpoints
    for name in ("dense_first_layer", "dense_layers", "plain_sgd"):
        assert (result[f"violations_without_{name}"] == 0).all()
    met = result["evaluated_assumptions_met"]
    assert (met <= result["evaluated"]).all()
    assert (met.sel(bound="ma_ying") == result["evaluated"].sel(bound="ma_ying")).all()
    late = (ds["train_loss"] < tiny_study["stats"]["interpolation_loss"]).sum().item()
    assert int(met.sel(bound="linear_stability")) == late


def test_within_run_correlations_use_only_interpolated_checkpoints():
    """Two runs whose sharpness tracks MLS after the loss threshold and anti-tracks before."""
    steps = np.arange(8)
    loss = np.array([1.0, 0.9, 0.8, 0.05, 0.04, 0.03, 0.02, 0.01])
    sharp = np.array([1.0, 2.0, 3.0, 9.0, 8.0, 7.0, 6.0, 5.0])
    mls = np.array([9.0, 8.0, 7.0, 4.5, 4.0, 3.5, 3.0, 2.5])  # decreases with sharpness after
    cube = xr.Dataset(
        {"train_loss": (("run", "step"), np.stack([loss, loss])),
         "train_acc": (("run", "step"), np.ones((2, 8))),
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
    # Below the loss threshold at accuracy < 1 is not interpolation: run b's late phase starts
    # at step 5, where the 3 checkpoints left track MLS the same way.
    cube["train_acc"][1, :5] = 0.99
    partial = stats.within_runs(cube, threshold=0.1, n_boot=100, level=0.95, seed=0)
    np.testing.assert_allclose(partial["within_run_corr"].sel(coefficient="spearman"), 1.0,
                               rtol=1e-12)
    cube["train_acc"][1, :6] = 0.99       # two late checkpoints: too few for a coefficient
    short = stats.within_runs(cube, threshold=0.1, n_boot=100, level=0.95, seed=0)
    assert np.isnan(short["within_run_corr"].sel(run="b")).all()
    assert (short["within_run_n_runs"] == 1).all()


def test_granulated_kendall_by_hand_on_a_2x2x2_grid():
    """x = 4a + 2b + s; y = 4a - 2b + s * sign, sign = -1 only at a = b = 1.

    Axis a: every (b, s) cell has x and y increasing with a -> psi_a = 1. Axis b: x up, y
    down -> psi_b = -1. Axis s: y follows x in 3 of the 4 (a, b) cells -> psi_s = (3 - 1) / 4.
    Psi = (1 - 1 + 0.5) / 3.
    """
    a, b, s = (v.ravel() for v in np.meshgrid([0, 1], [0, 1], [0, 1], indexing="ij"))
    sign = np.where((a == 1) & (b == 1), -1, 1)
    x, y = 4.0 * a + 2 * b + s, 4.0 * a - 2 * b + s * sign
    hparams = {"a": a, "b": b, "s": s, "constant": np.full(8, 0.1)}
    result = correlations.granulated_kendall(x, y, hparams)
    assert result == pytest.approx({"a": 1.0, "b": -1.0, "s": 0.5, "psi": 1 / 6}, rel=1e-15)


def test_granulated_kendall_skips_undefined_cells():
    """Axis a: the (b=1) cell has one run; axis b: the (a=1) cell has one run."""
    a, b = np.array([0, 1, 0]), np.array([0, 0, 1])
    x, y = np.array([1.0, 2.0, 3.0]), np.array([1.0, 2.0, 0.0])
    result = correlations.granulated_kendall(x, y, {"a": a, "b": b})
    assert result == pytest.approx({"a": 1.0, "b": -1.0, "psi": 0.0})
    assert np.isnan(correlations.granulated_kendall(x, y, {"a": np.zeros(3)})["psi"])


def test_mixed_regression_matches_statsmodels_formula_and_covers_the_slope():
    rng = np.random.default_rng(4)
    groups = np.repeat(np.arange(12), 10)
    log_rhs = rng.uniform(0, 3, size=groups.size)
    log_lhs = (0.2 + 0.7 * log_rhs + rng.normal(scale=0.5, size=12)[groups]
               + rng.normal(scale=0.1, size=groups.size))
    lhs, rhs = np.exp(log_lhs), np.exp(log_rhs)
    fit = regressions.mixed_regression(lhs, rhs, groups)
    frame = pd.DataFrame({"y": np.log(lhs), "x": np.log(rhs), "g": groups})
    reference = smf.mixedlm("y ~ x", frame, groups=frame["g"]).fit()
    assert fit["slope"] == pytest.approx(reference.fe_params["x"], rel=1e-12)
    np.testing.assert_allclose([fit["slope_ci_low"], fit["slope_ci_high"]],
                               reference.conf_int(0.05).loc["x"], rtol=1e-12)
    assert fit["p"] == pytest.approx(reference.pvalues["x"], rel=1e-12)
    assert fit["slope_ci_low"] < 0.7 < fit["slope_ci_high"]
    assert (fit["n"], fit["n_groups"], fit["converged"]) == (120, 12, 1.0)


def test_mixed_regression_needs_two_runs():
    rhs = np.exp(np.arange(5.0))
    fit = regressions.mixed_regression(rhs ** 0.5, rhs, np.zeros(5))
    assert np.isnan(fit["slope"]) and np.isnan(fit["converged"]) and fit["n_groups"] == 1


def _bounds(lhs, rhs, steps=1, train_loss=None):
    """A bounds Dataset (bound, run, step) from lhs/rhs dicts of (run, step) arrays."""
    names = list(lhs)
    stack = {side: np.stack([np.asarray(values[name], dtype=float).reshape(-1, steps)
                             for name in names]) for side, values in (("lhs", lhs), ("rhs", rhs))}
    dims = ("bound", "run", "step")
    n_runs = stack["lhs"].shape[1]
    loss = np.zeros((n_runs, steps)) if train_loss is None else train_loss
    return xr.Dataset({"lhs": (dims, stack["lhs"]), "rhs": (dims, stack["rhs"]),
                       "holds": (dims, (stack["lhs"] <= stack["rhs"]).astype(float)),
                       "tightness": (dims, stack["lhs"] / stack["rhs"]),
                       "train_loss": (("run", "step"), loss)},
                      coords={"bound": names, "run": [f"r{i}" for i in range(n_runs)],
                              "step": np.arange(steps), "requires": ("bound", [""] * len(names)),
                              "layer_type": ("layer", ["Linear"])},
                      attrs={"config": json.dumps({"train": {}})})


def test_paired_comparison_of_a_bound_tighter_by_exactly_a_factor_two():
    rng = np.random.default_rng(5)
    rhs = np.exp(rng.normal(size=20))
    lhs = rhs * rng.uniform(0.01, 0.4, size=20)
    bounds = _bounds({"ma_ying": lhs, "a": lhs}, {"ma_ying": rhs, "a": rhs / 2})
    result = stats.paired_bound_comparison(bounds, 200, 0.95, np.random.default_rng(0))
    a = result.sel(bound="a")
    keys = ("diff", "ci_low", "ci_high")
    np.testing.assert_allclose([a[f"vs_ma_ying_log_tightness_{key}"] for key in keys], np.log(2),
                               rtol=1e-12)
    assert float(a["vs_ma_ying_log_tightness_p"]) == 1 / 200
    assert float(a["vs_ma_ying_kendall_diff"]) == 0.0  # same LHS/RHS ranks
    assert float(a["vs_ma_ying_n"]) == 20
    assert result.sel(bound="ma_ying").to_array().isnull().sum() == len(result) - 1


def test_paired_comparison_of_kendall_taus():
    rng = np.random.default_rng(6)
    rhs = np.exp(rng.normal(size=30))
    noisy = rhs * np.exp(rng.normal(scale=2.0, size=30))
    bounds = _bounds({"ma_ying": 0.5 * rhs, "a": noisy}, {"ma_ying": rhs, "a": rhs * 100})
    a = stats.paired_bound_comparison(bounds, 300, 0.95, np.random.default_rng(0)).sel(bound="a")
    expected = scipy.stats.kendalltau(noisy, rhs)[0] - 1.0
    assert float(a["vs_ma_ying_kendall_diff"]) == pytest.approx(expected, rel=1e-12)
    assert a["vs_ma_ying_kendall_ci_low"] < expected < a["vs_ma_ying_kendall_ci_high"] < 0
    assert float(a["vs_ma_ying_kendall_p"]) == 1 / 300


def test_study_statistics_and_summary_on_a_synthetic_grid():
    """8 configurations x 2 seeds, one diverged run; two bounds over three checkpoints."""
    rng = np.random.default_rng(7)
    hparams = _seeded_grid(seeds=2)
    sharp = np.exp(rng.normal(size=16))
    diverged = np.zeros(16)
    diverged[3] = 1
    cube = _grid_cube(sharp, sharp * np.exp(rng.normal(scale=0.3, size=16)), hparams, diverged)
    cube["diverged_at"] = ("run", np.where(diverged == 1, 57, -1))
    rhs = np.exp(rng.normal(size=(16, 3)))
    lhs = rhs * np.exp(rng.normal(scale=0.2, size=(16, 3)) - 1.0)
    loss = np.broadcast_to([1.0, 0.1, 0.05], (16, 3))
    bounds = _bounds({"ma_ying": lhs, "a": lhs}, {"ma_ying": rhs, "a": rhs / 2}, 3, loss)
    cfg = {"bootstrap": 100, "ci_level": 0.95, "seed": 0, "interpolation_loss": 0.2,
           "permutations": 100}
    result = stats.study_statistics(cube, bounds, cfg)
    diverged_run = str(cube["run"].values[3])
    assert json.loads(result.attrs["diverged_runs"]) == {diverged_run: 57}
    assert markdown.diverged_note(result) == (
        f"Diverged (NaN/inf training loss), excluded from every statistic below: "
        f"`{diverged_run}` (iteration 57).\n\n")
    healthy = np.arange(16) != 3
    pooled = [side[healthy, 1:].ravel() for side in (lhs, rhs)]
    runs = np.repeat(np.arange(15), 2)
    mixed = regressions.mixed_regression(*pooled, runs)
    assert float(result["mixed_slope"].sel(bound="a")) == pytest.approx(mixed["slope"], rel=1e-12)
    assert float(result["mixed_n_groups"].sel(bound="a")) == 15
    assert result.attrs["permutations"] == 100
    psi = correlations.granulated_kendall(sharp[healthy], cube["mls"].values[healthy, 0],
                                          {key: values[healthy] for key, values in hparams.items()})
    assert float(result["granulated_kendall_psi"].sel(measure="mls")) == psi["psi"]
    assert set(result["axis"].values) == {"lr", "batch_size", "seed"}
    out = json.loads(json.dumps(stats.summary(result, cube)))
    assert out["bounds"]["a"]["vs_ma_ying_log_tightness_diff"] == pytest.approx(np.log(2))
    assert out["bounds"]["ma_ying"]["vs_ma_ying_log_tightness_diff"] is None
    assert out["bounds"]["a"]["mixed_slope"] == pytest.approx(mixed["slope"], rel=1e-12)
    across = out["correlation_across_runs"]["sharpness~mls"]["pearson"]
    assert across["n"] == 15 and 1 / 101 <= across["p_perm"] <= across["p_perm_holm"]
    within = out["correlation_within_configs"]["sharpness~nmls"]["kendall"]
    assert within["n"] == 14 and within["ci_low"] <= within["estimate"] <= within["ci_high"]
    assert out["granulated_kendall_psi"]["sharpness~mls"] == psi["psi"]


def test_a_bound_never_evaluated_gets_nan_rates_not_an_error():
    """E.g. the dense Hessian rank of a network too large for it: every holds is NaN."""
    rng = np.random.default_rng(3)
    hparams = _seeded_grid(seeds=1)
    sharp = np.exp(rng.normal(size=8))
    cube = _grid_cube(sharp, sharp, hparams)
    rhs = np.exp(rng.normal(size=(8, 1)))
    bounds = _bounds({"ma_ying": rhs / 2, "never": rhs / 2}, {"ma_ying": rhs, "never": rhs})
    bounds["holds"].loc[{"bound": "never"}] = np.nan
    result = stats.bound_statistics(bounds, cube, threshold=1.0, level=0.95)
    never = result.sel(bound="never")
    assert int(never["evaluated"]) == 0 and np.isnan(float(never["violation_rate"]))
    assert np.isnan(float(never["violation_rate_ci_high"]))
    assert float(result["violation_rate"].sel(bound="ma_ying")) == 0.0


def test_rank_stand_ins_keep_every_rank_and_nan():
    values = np.array([-np.inf, 3.0, np.nan, -1e300, np.inf, 2.0, -np.inf])
    replaced = correlations.rank_stand_ins(values)
    assert np.isfinite(replaced[[0, 1, 3, 4, 5, 6]]).all() and np.isnan(replaced[2])
    kept = ~np.isnan(values)
    np.testing.assert_array_equal(scipy.stats.rankdata(replaced[kept]),
                                  scipy.stats.rankdata(values[kept]))
    np.testing.assert_array_equal(correlations.rank_stand_ins(np.array([-np.inf, -np.inf])), [-1, -1])


def test_rank_coefficients_keep_minus_infinity_and_pearson_drops_it():
    """A log volume is -inf at a rank-deficient Jacobian: Spearman and Kendall rank those runs
    lowest (as scipy does with the raw -inf), Pearson uses the finite runs and says so in n."""
    rng = np.random.default_rng(3)
    x = rng.normal(size=30)
    y = x + 0.5 * rng.normal(size=30)
    y[np.argsort(x)[:4]] = -np.inf            # the four smallest x: volume 0
    y[7] = np.nan                             # a point not measured
    table = correlations.correlate(x, y, n_boot=300, level=0.95, rng=np.random.default_rng(1),
                                   n_perm=200)
    finite, measured = np.isfinite(y), ~np.isnan(y)
    np.testing.assert_array_equal(table["n"], [finite.sum(), measured.sum(), measured.sum()])
    expected = [scipy.stats.pearsonr(x[finite], y[finite])[0],
                scipy.stats.spearmanr(x[measured], y[measured])[0],
                scipy.stats.kendalltau(x[measured], y[measured])[0]]
    np.testing.assert_allclose(table["estimate"], expected, rtol=1e-12)
    assert np.isfinite(table["ci_low"]).all() and np.isfinite(table["p_perm"]).all()
    assert (table["ci_low"] <= table["estimate"]).all()
    assert (table["estimate"] <= table["ci_high"]).all()


def test_within_group_correlations_drop_infinite_values_for_every_method():
    """A residual from a group mean with a -inf member is undefined: every method drops it."""
    x = np.arange(12.0)
    y = x.copy()
    y[0] = -np.inf
    groups = np.repeat([0, 1, 2], 4)
    table = correlations.correlate(x, y, n_boot=50, level=0.9, rng=np.random.default_rng(0),
                                   n_perm=50, groups=groups)
    np.testing.assert_array_equal(table["n"], [11, 11, 11])
    np.testing.assert_allclose(table["estimate"], 1.0)


def test_granulated_kendall_ranks_minus_infinity_lowest():
    x = np.array([1.0, 2.0, 3.0, 4.0])
    y = np.array([-np.inf, 0.0, 1.0, 2.0])
    assert correlations.granulated_kendall(x, y, {"a": np.array([0, 0, 1, 1]),
                                           "b": np.array([0, 1, 0, 1])}) == pytest.approx(
        {"a": 1.0, "b": 1.0, "psi": 1.0})


def test_summary_tables_count_the_runs_a_minus_infinite_volume_drops():
    """Two runs' log volumes are -inf (rank-deficient Jacobians; LHS volume 0): the
    correlation table gives Pearson 6 runs and tau 8, the bounds table the final log-log fit's
    6 of 8 runs."""
    rng = np.random.default_rng(2)
    hparams = _seeded_grid(seeds=1)
    sharp = np.exp(rng.normal(size=8))
    volume = np.log(sharp)
    volume[:2] = -np.inf
    cube = _grid_cube(sharp, volume, hparams)
    rhs = np.exp(rng.normal(size=8)) + 1
    lhs = np.exp(volume)
    bound_ds = _bounds({"ma_ying": lhs, "a": lhs}, {"ma_ying": rhs, "a": rhs})
    cfg = {"bootstrap": 50, "ci_level": 0.95, "seed": 0, "interpolation_loss": 0.2,
           "permutations": 50}
    result = stats.study_statistics(cube, bound_ds, cfg)
    np.testing.assert_array_equal(result["corr_n"].sel(measure="log_lvr"), [6, 8, 8])
    rows = {line.split(" | ")[0]: line for line in markdown.correlations(result).splitlines()}
    assert " | 6 / 8 | " in rows["| log_lvr"]
    bounds_rows = markdown.bounds(result).splitlines()
    assert bounds_rows[2].startswith("| ma_ying |") and bounds_rows[2].endswith(" | 6 of 8 |")
