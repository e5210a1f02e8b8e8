"""The measurement-aware CIs: each error model's draws against its closed form, the two-stage
bootstrap against the run-level bootstrap it extends and against the closed-form variance of a
two-stage resample, and the claims' measurement-aware verdicts."""

import json

import numpy as np
import pytest
import xarray as xr
import yaml
from conftest import REPO
from test_claims import CFG, FIGURES, RULES, synthetic_study

from flatrep.analysis import claims, correlations, measurement_error

N_DRAWS = 20000
#: A Monte-Carlo variance over N_DRAWS draws has a relative SE of about sqrt(2 / N_DRAWS)
#: (0.01); five of them.
VARIANCE_RTOL = 5 * np.sqrt(2 / N_DRAWS)


def measured_cube(seed=0, runs=4, steps=3, points=30):
    """A cube with per-point measures, a probe estimate with its SE, Lanczos extremes with
    residuals and test accuracy over a 400-row test split."""
    rng = np.random.default_rng(seed)
    per_point = rng.lognormal(size=(runs, steps, 2, points))
    grid = (runs, steps)
    dims = ("run", "step")
    data = {"sample_sharpness": (("run", "step", "subset", "sample"), per_point),
            "mls": (("run", "step", "subset", "sample"), 2 * per_point),
            "sharpness": (dims, per_point[:, :, 0].mean(-1)),
            "hessian_trace": (dims, rng.uniform(1, 2, grid)),
            "hessian_trace_se": (dims, rng.uniform(0.1, 0.2, grid)),
            "hessian_lambda_max": (dims, rng.uniform(5, 6, grid)),
            "hessian_lambda_max_residual": (dims, rng.uniform(0.1, 1.0, grid)),
            "hessian_lambda_min": (dims, rng.uniform(-1, 0, grid)),
            "hessian_lambda_min_residual": (dims, rng.uniform(0.1, 1.0, grid)),
            "param_norm": (dims, rng.uniform(3, 4, grid)),
            "train_acc": (dims, np.ones(grid)),
            "train_loss": (dims, rng.uniform(0, 1, grid)),
            "test_acc": (dims, rng.uniform(0.5, 0.9, grid))}
    data["generalization_gap"] = (dims, 1 - data["test_acc"][1])
    data["hessian_lambda_max_scaled"] = (dims, data["hessian_lambda_max"][1]
                                         * data["param_norm"][1] ** 2)
    return xr.Dataset(data, coords={"run": [f"r{k}" for k in range(runs)],
                                    "step": [0, 10, 20][:steps],
                                    "subset": ["train", "test"]})


@pytest.fixture(scope="module")
def draws():
    return measurement_error.MeasurementDraws(measured_cube(), N_DRAWS, 0, 400)


def test_point_means_resample_the_points_with_the_plug_in_variance(draws):
    cube = draws.cube
    values = cube["sample_sharpness"].sel(subset="train").values
    drawn = draws.at(cube, "sample_sharpness")
    assert drawn.shape == (N_DRAWS, 4, 3)
    n = values.shape[-1]
    # Var of the mean of n draws with replacement = (1/n) (1/n) sum (v - mean v)^2
    np.testing.assert_allclose(drawn.var(0), values.var(-1) / n, rtol=VARIANCE_RTOL)
    np.testing.assert_allclose(drawn.mean(0), values.mean(-1),
                               atol=5 * np.sqrt((values.var(-1) / n / N_DRAWS).max()))
    assert draws.error_model("sample_sharpness") == measurement_error.POINTS


def test_point_draws_share_their_points_across_measures_and_checkpoints(draws):
    cube = draws.cube
    # mls = 2 x sample_sharpness point by point: drawn on the same points, exactly twice it
    np.testing.assert_array_equal(draws.at(cube, "mls"), 2 * draws.at(cube, "sample_sharpness"))
    # the sharpness is the train mean of sample_sharpness: its draws are theirs
    np.testing.assert_array_equal(draws.at(cube, "sharpness"),
                                  draws.at(cube, "sample_sharpness"))
    # one set of points per run for every checkpoint: a checkpoint whose points are another's
    # shifted by c has its draws shifted by c
    shifted = cube.copy(deep=True)
    values = shifted["sample_sharpness"].values
    values[:, 1] = values[:, 0] + 3.0
    again = measurement_error.MeasurementDraws(shifted, 50, 0, None)
    drawn = again.at(shifted, "sample_sharpness")
    np.testing.assert_allclose(drawn[:, :, 1], drawn[:, :, 0] + 3.0, rtol=1e-12)
    # runs draw their points independently: two runs with the same points differ
    values[1] = values[0]
    independent = measurement_error.MeasurementDraws(shifted, 50, 0, None)
    drawn = independent.at(shifted, "sample_sharpness")
    assert not np.array_equal(drawn[:, 0], drawn[:, 1])


def test_probe_ritz_and_test_row_draws_follow_their_error_models(draws):
    cube = draws.cube
    trace = draws.at(cube, "hessian_trace")
    np.testing.assert_allclose(trace.std(0), cube["hessian_trace_se"].values,
                               rtol=VARIANCE_RTOL)
    assert draws.error_model("hessian_trace") == measurement_error.PROBES
    theta, r = cube["hessian_lambda_max"].values, cube["hessian_lambda_max_residual"].values
    top = draws.at(cube, "hessian_lambda_max")
    assert (top >= theta).all() and (top <= theta + r).all()
    # uniform on [theta, theta + r]: variance r^2 / 12
    np.testing.assert_allclose(top.var(0), r ** 2 / 12, rtol=VARIANCE_RTOL)
    theta, r = cube["hessian_lambda_min"].values, cube["hessian_lambda_min_residual"].values
    bottom = draws.at(cube, "hessian_lambda_min")
    assert (bottom <= theta).all() and (bottom >= theta - r).all()
    assert draws.error_model("hessian_lambda_min") == measurement_error.RITZ
    accuracy = draws.at(cube, "test_acc")
    np.testing.assert_allclose(accuracy * 400, np.round(accuracy * 400), atol=1e-9)
    p = cube["test_acc"].values
    np.testing.assert_allclose(accuracy.var(0), p * (1 - p) / 400, rtol=VARIANCE_RTOL)
    # derived quantities move with what they are made of
    np.testing.assert_allclose(draws.at(cube, "generalization_gap"), 1 - accuracy)
    np.testing.assert_allclose(draws.at(cube, "hessian_lambda_max_scaled"),
                               top * cube["param_norm"].values ** 2)
    # the rest is held exact
    np.testing.assert_array_equal(draws.at(cube, "train_loss"),
                                  np.broadcast_to(cube["train_loss"].values, top.shape))
    assert draws.error_model("train_loss") == measurement_error.EXACT
    assert measurement_error.MeasurementDraws(cube, 10, 0, None).error_model(
        "test_acc") == measurement_error.EXACT


def test_draws_read_at_one_checkpoint_per_run_are_the_grids(draws):
    cube = draws.cube
    grid = draws.at(cube, "mls")
    final = draws.at(cube.isel(step=-1), "mls")
    np.testing.assert_array_equal(final, grid[:, :, -1])
    # one checkpoint per run, step along run (as claims._at_equal_loss selects), runs reordered
    runs, positions = np.array([3, 0, 2]), np.array([1, 2, 0])
    point = cube.isel(run=xr.DataArray(runs, dims="run"),
                      step=xr.DataArray(positions, dims="run"))
    np.testing.assert_array_equal(draws.at(point, "mls"), grid[:, runs, positions])
    np.testing.assert_array_equal(draws.at(point, "hessian_trace"),
                                  draws.at(cube, "hessian_trace")[:, runs, positions])


def kendall_rows(x, y):
    return correlations.coefficients(x, y, "kendall")


def test_two_stage_without_measurement_error_is_the_run_level_bootstrap():
    rng = np.random.default_rng(3)
    x, y = rng.standard_normal(12), rng.standard_normal(12)
    n_boot = 500
    exact = [np.broadcast_to(v, (n_boot, len(v))) for v in (x, y)]
    assert measurement_error.two_stage_ci(kendall_rows, exact, n_boot, 0.95,
                                          np.random.default_rng(0)) == (
        correlations.bootstrap_ci(x, y, "kendall", n_boot, 0.95, np.random.default_rng(0)))
    # resampling within groups: the arm-mean ratio's stratified bootstrap
    control, treated = rng.uniform(1, 2, 5), rng.uniform(10, 20, 4)
    arm = np.repeat([0, 1], [5, 4])
    values = np.broadcast_to(np.concatenate([control, treated]), (n_boot, 9))
    assert measurement_error.two_stage_ci(
        lambda v: correlations.arm_mean_ratio(v, 5), [values], n_boot, 0.95,
        np.random.default_rng(1), arm) == correlations.ratio_of_means(
        treated, control, n_boot, 0.95, np.random.default_rng(1))[1:]


def test_two_stage_variance_of_a_mean_counts_the_within_run_variance_again():
    """Closed form: a run-level mean over R runs, run r the mean of m points with plug-in
    variance s_r^2, between-run plug-in variance V_B of the run means, W = mean_r s_r^2 / m.
    T* = (1/R) sum_k Y_k, Y_k run I_k's draw b; Var Y_k = V_B + W, and two k drawing the same
    run (probability 1/R) share its draw b: Var T* = (V_B + W) / R + (R - 1) W / R^2."""
    cube = measured_cube(seed=5, runs=6, steps=1, points=20)
    draws = measurement_error.MeasurementDraws(cube, N_DRAWS, 1, None)
    drawn = draws.at(cube.isel(step=0), "mls")
    resamples = measurement_error.two_stage_resamples(lambda v: v.mean(1), [drawn], N_DRAWS,
                                                      np.random.default_rng(2))
    points = cube["mls"].sel(subset="train").isel(step=0).values
    runs, m = points.shape
    between, within = points.mean(1).var(), (points.var(1) / m).mean()
    expected = (between + within) / runs + (runs - 1) * within / runs ** 2
    assert resamples.var() == pytest.approx(expected, rel=VARIANCE_RTOL)
    # the run-level bootstrap alone: V_B / R, narrower
    run_level = measurement_error.two_stage_resamples(
        lambda v: v.mean(1), [np.broadcast_to(points.mean(1), drawn.shape)], N_DRAWS,
        np.random.default_rng(2))
    assert run_level.var() == pytest.approx(between / runs, rel=VARIANCE_RTOL)


def test_a_measured_runs_sharpness_is_the_train_mean_of_its_sample_sharpness(measured_tiny_run):
    """The identity the sharpness draws rest on, on a run that flatrep trained and measured."""
    cube, _ = measured_tiny_run
    np.testing.assert_allclose(cube["sharpness"],
                               cube["sample_sharpness"].sel(subset="train").mean("sample"),
                               rtol=1e-12)


def test_widening_by_hand():
    assert measurement_error.widening(0.0, 1.0, -0.5, 1.5) == 2.0
    assert np.isnan(measurement_error.widening(0.5, 0.5, 0.0, 1.0))
    assert np.isnan(measurement_error.widening(np.nan, 1.0, 0.0, 1.0))


def noisy_points(cube, spread, seed=1):
    """``cube`` with every per-point measure of subset=train spread around its run mean by a
    factor exp(spread z) per point (z standard normal, independent across points and
    measures), the run means (and so the run-level values) unchanged."""
    rng = np.random.default_rng(seed)
    out = cube.copy(deep=True)
    for name in ("mls", "log_lvr", "nmls", "log_nvr", "sample_sharpness", "local_dim"):
        train = out[name].sel(subset="train").values
        factor = np.exp(spread * rng.standard_normal(train.shape))
        out[name].loc[{"subset": "train"}] = train * factor / factor.mean(-1, keepdims=True)
    return out


def test_claims_without_point_spread_keep_the_run_level_ci_of_their_tau():
    cube, bound_ds = synthetic_study(n_seeds=4)
    table = claims.evaluate(cube, bound_ds, CFG, FIGURES)
    row = table.sel(claim="sharpness_mls")
    x = cube["sharpness"].isel(step=-1).values
    y = cube["mls"].sel(subset="train").isel(step=-1).mean("sample").values
    expected = correlations.bootstrap_ci(x, y, "kendall", CFG["bootstrap"], CFG["ci_level"],
                                         np.random.default_rng(CFG["seed"]))
    # synthetic_study's points of a run are equal: no point error, Kendall's tau as before
    assert (float(row["claim_measured_low"]), float(row["claim_measured_high"])) == expected
    assert float(row["claim_ci_widening"]) == 1.0
    assert row["claim_measured_verdict"].item() == row["claim_verdict"].item()
    assert row["claim_measurement"].item() == "sharpness: points; mls: points"
    assert not bool(row["claim_only_without_measurement_error"])
    # claims whose statistic is a count of bound violations have no measurement-aware CI
    bound_row = table.sel(claim="bounds_hold")
    assert bound_row["claim_measured_verdict"].item() == claims.NOT_APPLICABLE
    assert np.isnan(float(bound_row["claim_ci_widening"]))


def test_a_verdict_drowned_by_point_noise_holds_only_without_measurement_error():
    cube, bound_ds = synthetic_study(n_seeds=4)
    quiet = claims.evaluate(cube, bound_ds, CFG, FIGURES)
    noisy = claims.evaluate(noisy_points(cube, spread=3.0), bound_ds, CFG, FIGURES)
    name = "sharpness_mls"
    # the run means are unchanged, so the run-level statistic and verdict are too
    for key in ("claim_estimate", "claim_ci_low", "claim_ci_high", "claim_verdict"):
        assert noisy[key].sel(claim=name).item() == quiet[key].sel(claim=name).item()
    assert quiet["claim_verdict"].sel(claim=name).item() == claims.SUPPORTED
    row = noisy.sel(claim=name)
    assert float(row["claim_ci_widening"]) > 1
    assert row["claim_measured_verdict"].item() == claims.INCONCLUSIVE
    assert bool(row["claim_only_without_measurement_error"])
    markdown = claims.markdown(noisy)
    line = next(line for line in markdown.splitlines() if line.startswith("| flatter minima "
                                                                          "have smaller MLS"))
    assert "**supported** (only without measurement error)" in line
    assert "x as wide: **inconclusive**" in line
    summary = claims.summary(noisy)[name]
    assert summary["only_without_measurement_error"] is True
    assert summary["measured_verdict"] == claims.INCONCLUSIVE
    assert summary["run_level_verdict"] == claims.SUPPORTED
    assert summary["ci_widening"] == pytest.approx(float(row["claim_ci_widening"]))
    # the rule 'verdict': the headline verdict reads the measurement-aware CI
    strict = {**CFG, "claims": {**RULES, "measurement_error": "verdict"}}
    headline = claims.evaluate(noisy_points(cube, spread=3.0), bound_ds, strict, FIGURES)
    assert headline["claim_verdict"].sel(claim=name).item() == claims.INCONCLUSIVE
    assert headline["claim_run_level_verdict"].sel(claim=name).item() == claims.SUPPORTED
    assert "('measurement_error', 'verdict')" in headline.attrs["claims_rules"]
    assert "('measurement_error', 'flag')" in noisy.attrs["claims_rules"]


def test_the_within_run_trend_without_point_spread_keeps_its_run_level_ci():
    cube, bound_ds = synthetic_study(n_seeds=4)
    # test-point sharpness with a trend of its own per run (equal at every point of a run)
    rng = np.random.default_rng(7)
    test = cube["sample_sharpness"].loc[{"subset": "test"}]
    cube["sample_sharpness"].loc[{"subset": "test"}] = test * np.exp(
        rng.standard_normal(test.shape[:2]))[:, :, None]
    table = claims.evaluate(cube, bound_ds, CFG, FIGURES)
    row = table.sel(claim="test_sharpness_rises")
    means = cube["sample_sharpness"].sel(subset="test").mean("sample").values
    taus = np.array([claims._checkpoint_tau(cube["step"].values.astype(float), run)
                     for run in means])
    assert len(np.unique(taus)) > 1
    assert (float(row["claim_ci_low"]), float(row["claim_ci_high"])) == (
        correlations.bootstrap_mean_ci(taus, CFG["bootstrap"], CFG["ci_level"],
                                       np.random.default_rng(CFG["seed"])))
    # without point error the two-stage CI is that of the mean tau over the same resamples (to
    # rounding: the draws' taus come from correlations.coefficients, the exact ones from scipy)
    same_resamples = measurement_error.two_stage_ci(
        lambda t: t.sum(1) / t.shape[1], [np.broadcast_to(taus, (CFG["bootstrap"], len(taus)))],
        CFG["bootstrap"], CFG["ci_level"], np.random.default_rng(CFG["seed"]))
    assert (float(row["claim_measured_low"]), float(row["claim_measured_high"])) == (
        pytest.approx(same_resamples, rel=1e-12))
    assert float(row["claim_ci_widening"]) == pytest.approx(1.0, rel=1e-12)
    assert row["claim_measurement"].item() == "sample_sharpness (test): points"


def test_the_test_split_size_comes_from_the_study_config():
    cube, bound_ds = synthetic_study(n_seeds=2)
    assert claims.Evidence(cube, bound_ds, CFG, FIGURES).draws.n_test is None
    cube.attrs["config"] = json.dumps({"data": {"name": "mnist1d", "num_samples": 2000,
                                                "train_split": 0.25}})
    assert claims.Evidence(cube, bound_ds, CFG, FIGURES).draws.n_test == 1500


def test_the_schema_defaults_of_the_claim_rules_are_the_codes():
    """params.yaml may leave out the claim rules with a default; the schema's documented
    defaults are the ones claims.evaluate applies."""
    schema = yaml.safe_load((REPO / "workflow" / "schemas" / "params.schema.yaml").read_text())
    rules = schema["$defs"]["study"]["properties"]["stats"]["properties"]["claims"]["properties"]
    assert rules["measurement_error"]["default"] == claims.MEASUREMENT_ERROR
    assert rules["robust_max_sign_error"]["default"] == claims.ROBUST_MAX_SIGN_ERROR
