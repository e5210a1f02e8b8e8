"""The claims table: verdict rules branch by branch, and verdicts on synthetic studies whose
truth is known by construction."""

import json
import re

import numpy as np
import pytest
import xarray as xr

from flatrep.analysis import bounds, claims

RULES = {"alpha": 0.05, "min_effect": 0.2, "margin": 0.3, "max_violation_rate": 0.01,
         "ratio_band": [10, 90]}
CFG = {"bootstrap": 200, "permutations": 200, "ci_level": 0.95, "seed": 0, "claims": RULES,
       "interpolation_loss": 0.02}
FIGURES = {"lr_row_batch_size": 20, "batch_row_lr": 0.1}
#: enough permutations for a Holm-adjusted p below alpha in a family of ~20 tested claims
PRECISE = {**CFG, "permutations": 2000}


def claim(direction):
    return claims.Claim("c", "paper", "statement", "statistic", direction, lambda e: "unused")


@pytest.mark.parametrize("direction,outcome,p_holm,expected", [
    ("positive", claims.Outcome(0.5, 0.3, 0.7, 0.001, 40), 0.004, claims.SUPPORTED),
    ("positive", claims.Outcome(0.5, 0.3, 0.7, 0.001, 40), 0.2, claims.INCONCLUSIVE),
    ("positive", claims.Outcome(0.1, 0.02, 0.2, 0.001, 40), 0.004, claims.INCONCLUSIVE),
    ("positive", claims.Outcome(-0.5, -0.7, -0.3, 0.001, 40), 0.004, claims.CONTRADICTED),
    ("negative", claims.Outcome(-0.5, -0.7, -0.3, 0.001, 40), 0.004, claims.SUPPORTED),
    ("none", claims.Outcome(0.05, -0.2, 0.25, 0.6, 40), 1.0, claims.SUPPORTED),
    ("none", claims.Outcome(0.1, -0.4, 0.5, 0.6, 40), 1.0, claims.INCONCLUSIVE),
    ("none", claims.Outcome(0.6, 0.4, 0.8, 0.001, 40), 0.004, claims.CONTRADICTED),
    ("bound", claims.Outcome(0.0, 0.0, 0.004, np.nan, 900), np.nan, claims.SUPPORTED),
    ("bound", claims.Outcome(0.0, 0.0, 0.05, np.nan, 72), np.nan, claims.INCONCLUSIVE),
    ("bound", claims.Outcome(0.5, 0.3, 0.7, np.nan, 72), np.nan, claims.CONTRADICTED),
    ("positive", "the study does not sweep it", np.nan, claims.NOT_TESTED),
    ("nonpositive", claims.Outcome(-0.4, -0.6, -0.2, 0.001, 40), 0.004, claims.SUPPORTED),
    ("nonpositive", claims.Outcome(0.05, -0.2, 0.25, 0.6, 40), 1.0, claims.SUPPORTED),
    ("nonpositive", claims.Outcome(0.1, -0.2, 0.4, 0.3, 40), 1.0, claims.INCONCLUSIVE),
    ("nonpositive", claims.Outcome(0.25, 0.1, 0.29, 0.001, 40), 0.004, claims.CONTRADICTED),
    ("nonpositive", claims.Outcome(0.25, 0.1, 0.29, 0.001, 40), 0.2, claims.SUPPORTED),
    ("band", claims.Outcome(30.0, 12.0, 80.0, np.nan, 10), np.nan, claims.SUPPORTED),
    ("band", claims.Outcome(10.0, 10.0, 90.0, np.nan, 10), np.nan, claims.SUPPORTED),
    ("band", claims.Outcome(12.0, 6.0, 20.0, np.nan, 10), np.nan, claims.INCONCLUSIVE),
    ("band", claims.Outcome(3.0, 2.0, 4.0, np.nan, 10), np.nan, claims.CONTRADICTED),
    ("band", claims.Outcome(200.0, 95.0, 300.0, np.nan, 10), np.nan, claims.CONTRADICTED),
    ("band", claims.Outcome(0.5, 0.3, 0.8, np.nan, 10), np.nan, claims.CONTRADICTED),
])
def test_verdict_rules(direction, outcome, p_holm, expected):
    assert claims.verdict(claim(direction), outcome, p_holm, RULES) == expected


def synthetic_study(n_seeds=12, seed=0):
    """lr in {0.05, 0.1, 0.2} at batch 20 and batch {8, 32} at lr 0.1: sharpness ~ 1/lr and
    ~ batch, compression measures follow sharpness, local dimension is independent noise."""
    rng = np.random.default_rng(seed)
    configs = [(lr, 20) for lr in (0.05, 0.1, 0.2)] + [(0.1, 8), (0.1, 32)]
    runs = [(lr, bs, s) for lr, bs in configs for s in range(n_seeds)]
    lr, bs, seeds = (np.array(column) for column in zip(*runs))
    n, steps, samples = len(runs), np.array([0, 50, 100]), 4
    sharp = (bs / 20) / lr * np.exp(0.1 * rng.standard_normal(n))
    trend = np.linspace(0.5, 1.0, len(steps))

    def per_sample(values):
        full = values[:, None, None, None] * trend[None, :, None, None] * np.ones(
            (1, 1, 3, samples))
        return (("run", "step", "subset", "sample"), full)

    data = {"sharpness": (("run", "step"), sharp[:, None] * trend),
            "diverged": (("run", "step"), np.zeros((n, len(steps)))),
            "test_acc": (("run", "step"), np.full((n, len(steps)), 0.9)),
            "train_loss": (("run", "step"), np.tile([1.0, 0.1, 0.01], (n, 1))),
            "hessian_lambda_max": (("run", "step"), np.ones((n, len(steps))))}
    for name in ("mls", "log_lvr", "nmls", "log_nvr"):
        data[name] = per_sample(sharp * np.exp(0.1 * rng.standard_normal(n)))
    # the sharpness is the train mean of sample_sharpness, as in a measured cube
    data["sample_sharpness"] = per_sample(sharp)
    data["local_dim"] = per_sample(3 + 0.1 * rng.standard_normal(n))
    cube = xr.Dataset(data, coords={"run": [f"r{k}" for k in range(n)], "step": steps,
                                    "subset": ["train", "test", "test_misclassified"],
                                    "lr": ("run", lr), "batch_size": ("run", bs),
                                    "seed": ("run", seeds)})
    cube.attrs["config"] = json.dumps({"train": {}})     # SGD, no averaging, by default
    names = list(bounds.REGISTRY)
    holds = np.ones((len(names), n, len(steps)))
    holds[names.index("rank_hessian_layers")] = 0
    bound_ds = xr.Dataset({"holds": (("bound", "run", "step"), holds),
                           "train_loss": (("run", "step"), np.zeros((n, len(steps))))},
                          coords={"bound": names, "run": cube["run"].values, "step": steps,
                                  "requires": ("bound", [",".join(bounds.REGISTRY[b].requires)
                                                         for b in names]),
                                  "layer_type": ("layer", ["Linear", "Linear"])},
                          attrs=cube.attrs)
    return cube, bound_ds


def test_verdicts_on_a_synthetic_study_with_known_truth():
    cube, bound_ds = synthetic_study()
    table = claims.evaluate(cube, bound_ds, CFG, FIGURES)
    verdict = dict(zip(table["claim"].values, table["claim_verdict"].values))
    for name in ("sharpness_mls", "sharpness_lvr", "sharpness_nmls", "sharpness_nvr",
                 "lr_flatter", "lr_compressed", "batch_flatter", "test_sharpness_rises",
                 "bounds_hold", "local_dim_unbounded"):
        assert verdict[name] == claims.SUPPORTED, name
    assert verdict["rank_bounded"] == claims.CONTRADICTED
    for name in ("l2_sharper", "l2_sharper_trace", "l2_sharper_fro", "l2_smaller_weights",
                 "l2_generalises", "adam_ia_sharper", "adam_ia_sharper_bn_train",
                 "adam_ia_sharper_trace", "adam_ia_generalises"):
        assert verdict[name] == claims.NOT_TESTED, name
        assert verdict[f"{name}_equal_loss"] == claims.NOT_TESTED, name
    for name in ("adam_ia_30x", "adam_ia_30x_trace", "scaled_sharpness_gap",
                 "raw_sharpness_gap", "input_param_smoothness"):
        assert verdict[name] == claims.NOT_TESTED, name     # arms or measures absent
    tested = np.isfinite(table["claim_p"].values) & (table["claim_direction"] != "bound").values
    assert (table["claim_p_holm"].values[tested] >= table["claim_p"].values[tested]).all()
    markdown = claims.markdown(table)
    assert markdown.count("\n") == len(claims.CLAIMS) + 2
    # eight cells a row: the |s of ||theta|| in a statement are escaped, not cell borders
    assert all(len(re.split(r"(?<!\\)\|", line)) == 10 for line in markdown.splitlines())
    robust = dict(zip(table["claim"].values, table["claim_robust_verdict"].values))
    covered = {c.name for c in claims.CLAIMS if c.robust}
    assert covered == {"sharpness_mls", "sharpness_lvr", "sharpness_nmls", "sharpness_nvr",
                       "sharpness_lvr_top3"}
    assert all(robust[name] == claims.NOT_APPLICABLE for name in robust if name not in covered)
    # no robust statistics given: the covered claims are not tested, with the reason
    assert all(robust[name] == claims.NOT_TESTED for name in covered)
    assert ("| not tested: no robust sign-error of sharpness against mls |" in markdown)
    assert r"lambda_max \|\|theta\|\|^2 predicts" in markdown
    assert "**not tested** — the study does not sweep weight_decay" in markdown


def test_adam_with_iterate_averaging_against_sgd_and_assumption_masking():
    """Half the runs Adam(W) + IA with a larger lambda_max and equal test accuracy: sharper
    is supported, better generalisation is not tested. A violation where a bound's assumption
    fails (a conv first layer) does not count against the bounds; on a dense net it does."""
    cube, bound_ds = synthetic_study()
    adaptive = np.arange(cube.sizes["run"]) % 2 == 0
    cube = cube.assign_coords(optimizer=("run", np.where(adaptive, "adamw", "sgd")),
                              averaging_start=("run", np.where(adaptive, 0.5, 1.0)))
    noise = np.random.default_rng(4).uniform(0.9, 1.1, cube.sizes["run"])
    cube["hessian_lambda_max"] = cube["hessian_lambda_max"] * (noise * np.where(adaptive, 3, 1)
                                                               )[:, None]
    bound_ds["holds"].loc[{"bound": "rank_hessian_layers"}] = 1
    bound_ds["holds"].loc[{"bound": "mls", "step": 0}] = 0     # violated by a conv network:
    bound_ds = bound_ds.assign_coords(layer_type=("layer", ["Conv1d", "Linear"]))
    table = claims.evaluate(cube, bound_ds, PRECISE, FIGURES)
    verdict = dict(zip(table["claim"].values, table["claim_verdict"].values))
    assert verdict["adam_ia_sharper"] == claims.SUPPORTED
    # perfect separation of 30 vs 30 runs: tau-b = 30 * 30 / sqrt(C(60, 2) (C(60, 2) - 2 C(30, 2)))
    assert float(table["claim_estimate"].sel(claim="adam_ia_sharper")) == pytest.approx(
        900 / np.sqrt(1770 * (1770 - 870)), rel=1e-12)
    # every run has the same train-loss curve: L* is the final loss, the final checkpoint
    assert verdict["adam_ia_sharper_equal_loss"] == claims.SUPPORTED
    assert float(table["claim_estimate"].sel(claim="adam_ia_sharper_equal_loss")) == float(
        table["claim_estimate"].sel(claim="adam_ia_sharper"))
    assert table["claim_note"].sel(claim="adam_ia_sharper_equal_loss").item().startswith(
        "equal train loss L* = 0.01: first checkpoint per run with train loss <= L* "
        "(step 100, train loss 0.01-0.01)")
    assert verdict["adam_ia_sharper_bn_train"] == claims.NOT_TESTED    # family off
    assert table["claim_note"].sel(claim="adam_ia_sharper_bn_train").item() == (
        "the study does not measure hessian_bn_train_lambda_max")
    assert verdict["adam_ia_generalises"] == claims.NOT_TESTED    # constant test accuracy
    assert verdict["adam_ia_generalises_equal_loss"] == claims.NOT_TESTED
    assert verdict["bounds_hold"] == claims.NOT_TESTED    # no dense network: no evidence
    dense = bound_ds.assign_coords(layer_type=("layer", ["Linear", "Linear"]))
    table = claims.evaluate(cube, dense, CFG, FIGURES)
    assert table["claim_verdict"].sel(claim="bounds_hold").item() == claims.CONTRADICTED
    # the BN-train-mode lambda_max measured, the arms' order reversed: contradicted
    cube["hessian_bn_train_lambda_max"] = 1 / cube["hessian_lambda_max"]
    table = claims.evaluate(cube, bound_ds, PRECISE, FIGURES)
    assert table["claim_verdict"].sel(claim="adam_ia_sharper_bn_train").item() == (
        claims.CONTRADICTED)
    assert float(table["claim_estimate"].sel(claim="adam_ia_sharper_bn_train")) == (
        pytest.approx(-900 / np.sqrt(1770 * (1770 - 870)), rel=1e-12))


def test_equal_loss_checkpoints_by_hand():
    """L* = max over runs of the run's minimum finite train loss; per run the first checkpoint
    in step order at or below it; NaN checkpoints never chosen, an all-NaN run left out."""
    loss = xr.DataArray([[1.0, 0.4, 0.2],           # min 0.2; 0.4 <= L* at step 10
                         [0.9, np.nan, 0.4],        # min 0.4 = L*; step 20 (NaN skipped)
                         [np.nan, np.nan, np.nan],  # no finite loss: left out
                         [0.3, 0.35, 0.1],          # min 0.1; already <= L* at step 0
                         [np.inf, 0.5, 0.3]],       # min 0.3; step 20
                        dims=("run", "step"), coords={"step": [0, 10, 20]})
    level, first = claims.equal_loss_checkpoints(loss)
    assert level == 0.4
    assert first.tolist() == [1, 2, -1, 0, 2]
    # checkpoints stored out of step order: "first" follows the step values
    shuffled = loss.isel(step=[2, 0, 1])
    level, first = claims.equal_loss_checkpoints(shuffled)
    assert level == 0.4
    assert shuffled["step"].values[first[[0, 1, 3, 4]]].tolist() == [10, 20, 0, 20]
    assert np.isnan(claims.equal_loss_checkpoints(loss.isel(run=[2]))[0])


def false_friend_study(arm):
    """Two arms x 4 seeds over steps 0..400. Control: train loss falls fast and lambda_max
    and test accuracy peak on the way down; treated: train loss plateaus near 0.15-0.18. At
    the end the treated arm is sharper and generalises better; at equal train loss it is
    flatter and generalises worse. ``arm``: "l2" (weight decay 5e-4 vs 0) or "adam_ia"
    (AdamW + iterate averaging vs SGD)."""
    seeds = np.arange(4)
    treated = np.repeat([False, True], 4)
    s = np.tile(seeds, 2)[:, None]
    steps = np.array([0, 100, 200, 300, 400])
    loss = np.where(treated[:, None], [2.3, 0.9, 0.4, 0.25, 0.15],
                    [2.3, 0.6, 0.10, 0.03, 0.01]) + 0.0
    loss[treated] += [0, 0, 0, 0, 0.01] * s[:4]     # treated minima 0.15, 0.16, 0.17, 0.18
    loss[~treated, 2] += 0.03 * seeds               # control at step 200: .10 .13 .16 .19
    loss[2, 2] = np.nan                             # control seed 2: NaN at step 200
    lambda_max = np.where(treated[:, None], [1, 10, 12, 11, 10], [1, 30, 40, 20, 2]) + 0.1 * s
    test_acc = (np.where(treated[:, None], [0.1, 0.7, 0.85, 0.90, 0.93],
                         [0.1, 0.8, 0.97, 0.95, 0.90]) + 0.001 * s)
    n = len(treated)
    coords = {"run": [f"r{k}" for k in range(n)], "step": steps, "seed": ("run", s[:, 0])}
    if arm == "l2":
        coords["weight_decay"] = ("run", np.where(treated, 5e-4, 0.0))
    else:
        coords["optimizer"] = ("run", np.where(treated, "adamw", "sgd"))
        coords["averaging_start"] = ("run", np.where(treated, 0.5, 1.0))
    cube = xr.Dataset({"train_loss": (("run", "step"), loss),
                       "hessian_lambda_max": (("run", "step"), lambda_max),
                       "test_acc": (("run", "step"), test_acc),
                       "diverged": (("run", "step"), np.zeros((n, len(steps))))},
                      coords=coords, attrs={"config": json.dumps({"train": {}})})
    return cube


@pytest.mark.parametrize("arm,other", [("l2", "adam_ia"), ("adam_ia", "l2")])
def test_equal_loss_reverses_an_end_of_training_difference(arm, other):
    cube = false_friend_study(arm)
    # by hand: L* = max(0.01 x 4 control minima, 0.15, 0.16, 0.17, 0.18) = 0.18. Control seeds
    # 0, 1 reach it at step 200 (0.10, 0.13), seed 2 at 300 (NaN at 200), seed 3 at 300
    # (0.19 > 0.18 at 200); every treated seed only at its last checkpoint, 400.
    level, first = claims.equal_loss_checkpoints(cube["train_loss"])
    assert level == pytest.approx(0.18)
    assert cube["step"].values[first].tolist() == [200, 200, 300, 300, 400, 400, 400, 400]
    evidence = claims.Evidence(cube, None, CFG, FIGURES)
    by_name = {c.name: c for c in claims.CLAIMS}
    # both variables separate the arms perfectly, either way round: |tau-b| of 4 vs 4 runs
    perfect = 16 / np.sqrt(28 * (28 - 2 * 6))
    for what in ("sharper", "generalises"):
        end = by_name[f"{arm}_{what}"].measure(evidence)
        equal = by_name[f"{arm}_{what}_equal_loss"].measure(evidence)
        assert end.estimate == pytest.approx(perfect, rel=1e-12), what
        assert equal.estimate == pytest.approx(-perfect, rel=1e-12), what
        assert end.n == equal.n == 8
        assert end.note == ""
        assert equal.note == ("equal train loss L* = 0.18: first checkpoint per run with "
                              "train loss <= L* (steps 200-400, train loss 0.03-0.18)")
        assert isinstance(by_name[f"{other}_{what}_equal_loss"].measure(evidence), str)
    # the measures are read at the chosen checkpoints: the control runs' lambda_max there
    point, _ = claims._at_equal_loss(cube)
    assert point["step"].values.tolist() == [200, 200, 300, 300, 400, 400, 400, 400]
    assert point["hessian_lambda_max"].values.tolist() == pytest.approx(
        [40, 40.1, 20.2, 20.3, 10, 10.1, 10.2, 10.3])


def test_equal_loss_not_tested_without_a_contrast_or_a_train_loss():
    cube = false_friend_study("l2")
    by_name = {c.name: c for c in claims.CLAIMS}
    measure = by_name["l2_sharper_equal_loss"].measure
    # the treated arm has no finite train loss: no weight-decay contrast left to compare
    no_loss = cube.copy(deep=True)
    no_loss["train_loss"][4:] = np.nan
    reason = measure(claims.Evidence(no_loss, None, CFG, FIGURES))
    assert reason == "the study does not sweep weight_decay (among the runs with a checkpoint)"
    no_loss["train_loss"][:] = np.nan
    assert measure(claims.Evidence(no_loss, None, CFG, FIGURES)) == (
        "no run has a finite train loss")
    assert measure(claims.Evidence(cube.drop_vars("train_loss"), None, CFG, FIGURES)) == (
        "the cube has no train_loss")
    one_arm = cube.isel(run=slice(0, 4))
    assert measure(claims.Evidence(one_arm, None, CFG, FIGURES)) == (
        "the study does not sweep weight_decay")
    # a run without any finite train loss is left out, and said so
    partial = cube.copy(deep=True)
    partial["train_loss"][0] = np.nan
    outcome = measure(claims.Evidence(partial, None, CFG, FIGURES))
    assert outcome.n == 7
    assert outcome.note.endswith("; 1 run(s) without a finite train loss left out")


def test_a_reversed_relation_is_contradicted():
    cube, bound_ds = synthetic_study(seed=1)
    cube["mls"] = 1 / cube["mls"]
    table = claims.evaluate(cube, bound_ds, CFG, FIGURES)
    assert table["claim_verdict"].sel(claim="sharpness_mls").item() == claims.CONTRADICTED


def test_summary_markdown_has_the_four_tables(measured_tiny_run, tiny_study):
    from flatrep.analysis import markdown, noise_scale, robust, stats

    ds, _ = measured_tiny_run
    evaluated = bounds.evaluate(ds)
    result = stats.study_statistics(ds, evaluated, tiny_study["stats"])
    table = claims.evaluate(ds, evaluated, tiny_study["stats"], tiny_study["figures"])
    text = markdown.study_summary("tiny", result, table)
    assert text.startswith("# tiny: summary\n\n1 runs (0 diverged")
    robust_rows = len(robust.ACCURACY_TARGETS) + len(stats.PAIRED_MEASURES)
    assert text.count("\n| ") == len(claims.CLAIMS) + len(stats.PAIRED_MEASURES) + len(
        bounds.REGISTRY) + robust_rows + len(noise_scale.MEASURES) + 5
    # one run: no coupled pairs, every robust statistic not tested, with the reason
    assert text.count("| not tested: no two healthy runs differ in exactly one hyperparameter "
                      "(seed aside) |") == robust_rows
    assert f"| ma_ying | 0 / {ds.sizes['step']} |" in text
    # one run: no lr / B lines, every ratio decomposition not tested, with the reason
    assert text.count("| fewer than 2 lr / B lines (1) |") == len(noise_scale.MEASURES)


def adaptive_study(factor, seed=4):
    """``synthetic_study`` with every other run Adam(W) + IA whose lambda_max is ``factor``
    times that of the SGD runs (up to +-10 % noise)."""
    cube, bound_ds = synthetic_study()
    adaptive = np.arange(cube.sizes["run"]) % 2 == 0
    cube = cube.assign_coords(optimizer=("run", np.where(adaptive, "adam", "sgd")),
                              averaging_start=("run", np.where(adaptive, 0.5, 1.0)))
    noise = np.random.default_rng(seed).uniform(0.9, 1.1, cube.sizes["run"])
    cube["hessian_lambda_max"] = cube["hessian_lambda_max"] * (
        noise * np.where(adaptive, factor, 1))[:, None]
    return cube, bound_ds, adaptive


@pytest.mark.parametrize("factor,expected", [(3, claims.CONTRADICTED), (30, claims.SUPPORTED)])
def test_thirty_times_sharper_is_a_ratio_of_arm_means_inside_the_band(factor, expected):
    cube, bound_ds, adaptive = adaptive_study(factor)
    table = claims.evaluate(cube, bound_ds, CFG, FIGURES)
    row = table.sel(claim="adam_ia_30x")
    final = cube["hessian_lambda_max"].isel(step=-1).values
    assert float(row["claim_estimate"]) == pytest.approx(
        final[adaptive].mean() / final[~adaptive].mean(), rel=1e-12)
    assert float(row["claim_ci_low"]) < float(row["claim_estimate"]) < float(row["claim_ci_high"])
    assert 0.85 * factor < float(row["claim_ci_low"]) and float(row["claim_ci_high"]) < (
        1.15 * factor)
    assert row["claim_verdict"].item() == expected
    assert np.isnan(float(row["claim_p_holm"]))        # not part of the Holm family
    assert row["claim_note"].item() == "ratio of arm means, 30 Adam+IA and 30 SGD runs"
    notes = dict(zip(table["claim"].values, table["claim_note"].values))
    assert notes["adam_ia_30x_trace"] == "the study does not measure hessian_trace"
    assert notes["adam_ia_30x_bn_train"] == (
        "the study does not measure hessian_bn_train_lambda_max")
    plain, _ = synthetic_study()
    table = claims.evaluate(plain, bound_ds, CFG, FIGURES)
    assert table["claim_note"].sel(claim="adam_ia_30x").item() == (
        "the study has no Adam + iterate-averaging arm beside an SGD arm")


def test_thirty_times_needs_a_positive_sgd_mean_and_two_finite_runs_per_arm():
    cube, _, adaptive = adaptive_study(30)
    by_name = {c.name: c for c in claims.CLAIMS}
    measure = by_name["adam_ia_30x"].measure
    negative = cube.copy(deep=True)
    negative["hessian_lambda_max"][~adaptive] *= -1
    assert measure(claims.Evidence(negative, None, CFG, FIGURES)) == (
        "the SGD arm's mean hessian_lambda_max is not positive")
    sparse = cube.copy(deep=True)
    sparse["hessian_lambda_max"][np.flatnonzero(adaptive)[1:], -1] = np.nan
    assert measure(claims.Evidence(sparse, None, CFG, FIGURES)) == (
        "fewer than 2 runs with a finite hessian_lambda_max in an arm")


def test_weight_decay_raises_trace_and_frobenius_and_shrinks_the_weights():
    """Claim A3 beyond lambda_max on the two-arm study: the treated (weight-decay) runs end
    with a larger tr H and ||H||_F and a smaller ||theta||, each separating the arms
    perfectly; a measure the study lacks is not tested."""
    cube = false_friend_study("l2")
    treated = cube["weight_decay"].values > 0
    cube["hessian_trace"] = 5 * cube["hessian_lambda_max"]
    cube["hessian_fro"] = 2 * cube["hessian_lambda_max"]
    cube["param_norm"] = xr.DataArray(np.where(treated, 4.0, 9.0)[:, None]
                                      + 0.01 * cube["seed"].values[:, None] + 0.1 * np.arange(5),
                                      dims=("run", "step"))
    evidence = claims.Evidence(cube, None, CFG, FIGURES)
    by_name = {c.name: c for c in claims.CLAIMS}
    perfect = 16 / np.sqrt(28 * (28 - 2 * 6))
    for name, sign in (("l2_sharper_trace", 1), ("l2_sharper_fro", 1),
                       ("l2_smaller_weights", -1)):
        claim = by_name[name]
        outcome = claim.measure(evidence)
        assert outcome.estimate == pytest.approx(sign * perfect, rel=1e-12), name
        assert claims.verdict(claim, outcome, outcome.p, RULES) == claims.SUPPORTED, name
    assert by_name["l2_smaller_weights"].direction == "negative"
    # at equal train loss the control runs are read at steps 200-300, where lambda_max (and
    # so tr H) is larger than the treated runs' at 400: the sign flips
    assert by_name["l2_sharper_trace_equal_loss"].measure(evidence).estimate == pytest.approx(
        -perfect, rel=1e-12)
    assert by_name["l2_sharper_fro"].measure(claims.Evidence(
        cube.drop_vars("hessian_fro"), None, CFG, FIGURES)) == (
        "the study does not measure hessian_fro")


def test_scale_normalised_sharpness_predicts_the_gap_and_raw_sharpness_does_not():
    """Claim A5 with known truth: the gap follows s = lambda_max ||theta||^2; ||theta||^2 =
    s^2 u (u independent noise), so raw lambda_max = 1 / (s u) falls as the gap rises. Then a
    study in which raw lambda_max rises with the gap contradicts the raw claim."""
    cube, bound_ds = synthetic_study()
    rng = np.random.default_rng(7)
    n = cube.sizes["run"]
    scaled = rng.lognormal(0.0, 0.5, n)
    lam = 1 / (scaled * rng.lognormal(0.0, 0.5, n))
    gap = 0.1 * scaled * rng.uniform(0.95, 1.05, n)
    for name, values in (("hessian_lambda_max", lam), ("hessian_lambda_max_scaled", scaled),
                         ("generalization_gap", gap), ("generalization_loss_gap", 3 * gap)):
        cube[name] = xr.DataArray(np.repeat(values[:, None], cube.sizes["step"], 1),
                                  dims=("run", "step"))
    table = claims.evaluate(cube, bound_ds, PRECISE, FIGURES)
    verdict = dict(zip(table["claim"].values, table["claim_verdict"].values))
    for name in ("scaled_sharpness_gap", "scaled_sharpness_loss_gap", "raw_sharpness_gap",
                 "raw_sharpness_loss_gap"):
        assert verdict[name] == claims.SUPPORTED, name
    assert float(table["claim_estimate"].sel(claim="raw_sharpness_gap")) < -0.2
    cube["hessian_lambda_max"] = cube["generalization_gap"] ** 2
    table = claims.evaluate(cube, bound_ds, PRECISE, FIGURES)
    assert float(table["claim_estimate"].sel(claim="raw_sharpness_gap")) == pytest.approx(1.0)
    assert table["claim_verdict"].sel(claim="raw_sharpness_gap").item() == claims.CONTRADICTED


def with_moments(cube, param_k1, input_k1):
    """``cube`` with Ma & Ying's moments at k = 1 and 2 per training sample: the k = 1 values
    are the given per-run values times per-sample factors of mean 1; the k = 2 values are
    unrelated (a claim reading k = 2 would not find the relations)."""
    rng = np.random.default_rng(11)
    shape = (cube.sizes["run"], cube.sizes["step"], cube.sizes["subset"], 4)
    factors = np.array([0.5, 1.5, 0.8, 1.2])
    for name, k1 in (("param_grad_moment", param_k1), ("input_grad_moment", input_k1)):
        first = k1[:, None, None, None] * factors * np.ones(shape)
        second = rng.lognormal(0.0, 1.0, shape)
        cube[name] = xr.DataArray(np.stack([first, second], -1),
                                  dims=("run", "step", "subset", "sample", "moment"))
    return cube.assign_coords(moment=[1, 2])


def test_ma_ying_implicit_sobolev_regularisation_claims():
    """Claim B5 with known truth: g_x^2 follows g_W^2, test accuracy falls with g_x. g(1) is
    the square root of the train-sample mean of the k = 1 moment."""
    cube, bound_ds = synthetic_study()
    rng = np.random.default_rng(3)
    sharp = cube["sharpness"].isel(step=-1).values
    param_k1 = sharp * rng.uniform(0.95, 1.05, len(sharp))
    input_k1 = 0.3 * param_k1 * rng.uniform(0.95, 1.05, len(sharp))
    cube = with_moments(cube, param_k1, input_k1)
    cube["test_acc"] = xr.DataArray(
        np.repeat((0.99 - 0.01 * np.sqrt(input_k1))[:, None], cube.sizes["step"], 1),
        dims=("run", "step"))
    g_w = claims._run_value(cube.isel(step=-1), "g_W").values
    assert g_w == pytest.approx(np.sqrt(param_k1), rel=1e-12)      # factors average to 1
    table = claims.evaluate(cube, bound_ds, PRECISE, FIGURES)
    verdict = dict(zip(table["claim"].values, table["claim_verdict"].values))
    for name in ("input_param_smoothness", "input_smoothness_generalises"):
        assert verdict[name] == claims.SUPPORTED, name
        assert table["claim_source"].sel(claim=name).item() == claims.MA_YING
    # moments measured without k = 1: not tested, and said why
    no_k1 = cube.assign_coords(moment=[2, 3])
    table = claims.evaluate(no_k1, bound_ds, CFG, FIGURES)
    assert table["claim_note"].sel(claim="input_param_smoothness").item() == (
        "the study does not measure param_grad_moment at k = 1 (measure.moments)")
    table = claims.evaluate(cube.drop_vars("input_grad_moment"), bound_ds, CFG, FIGURES)
    assert table["claim_note"].sel(claim="input_smoothness_generalises").item() == (
        "the study does not measure input_grad_moment")


def test_gauss_newton_at_interpolation_follows_the_train_loss_within_runs():
    """Claim B1 with known truth: in each run ||H - G||_F / ||H||_F shrinks with the train
    loss over the checkpoints (supported); reversed, it is contradicted; a cross-entropy study
    or one without the residual norm is not tested."""
    cube, bound_ds = synthetic_study()
    rng = np.random.default_rng(8)
    n = cube.sizes["run"]
    loss = np.array([1.0, 0.1, 0.01]) * rng.uniform(0.8, 1.2, (n, 1))
    cube["train_loss"] = xr.DataArray(loss, dims=("run", "step"))
    cube["hessian_fro"] = xr.DataArray(rng.uniform(1, 2, (n, 3)), dims=("run", "step"))
    cube["hessian_residual_fro"] = cube["hessian_fro"] * np.sqrt(cube["train_loss"])
    by_name = {c.name: c for c in claims.CLAIMS}
    claim = by_name["gauss_newton_at_interpolation"]
    outcome = claim.measure(claims.Evidence(cube, bound_ds, CFG, FIGURES))
    assert (outcome.estimate, outcome.ci_low, outcome.ci_high, outcome.n) == (1, 1, 1, n)
    assert claims.verdict(claim, outcome, outcome.p, RULES) == claims.SUPPORTED
    rising = cube.assign(hessian_residual_fro=cube["hessian_fro"] / cube["train_loss"])
    outcome = claim.measure(claims.Evidence(rising, bound_ds, CFG, FIGURES))
    assert outcome.estimate == -1
    assert claims.verdict(claim, outcome, outcome.p, RULES) == claims.CONTRADICTED
    cross_entropy = cube.assign_attrs(loss="cross_entropy")
    assert claim.measure(claims.Evidence(cross_entropy, bound_ds, CFG, FIGURES)) == (
        "stated for MSE (the study's loss is cross-entropy)")
    assert claim.measure(claims.Evidence(cube.drop_vars("hessian_residual_fro"), bound_ds, CFG,
                                         FIGURES)) == (
        "the study does not measure hessian_residual_fro")


def test_log_volume_claims_count_their_rank_deficient_points_and_runs():
    """Two runs each have one training point with log LVR = -inf: the note says so, and
    tau ranks those runs lowest instead of dropping them."""
    cube, bound_ds = synthetic_study()
    log_lvr = cube["log_lvr"].copy()
    final = log_lvr["step"].values[-1]
    low_runs = cube["run"].values[np.argsort(cube["sharpness"].isel(step=-1).values)[:2]]
    for run in low_runs:
        log_lvr.loc[{"run": run, "step": final, "subset": "train", "sample": 0}] = -np.inf
    cube["log_lvr"] = log_lvr
    table = claims.evaluate(cube, bound_ds, CFG, FIGURES)
    note = str(table["claim_note"].sel(claim="sharpness_lvr").item())
    points = cube.sizes["run"] * cube.sizes["sample"]
    assert (f"log_lvr = -inf (numerically rank-deficient Jacobian) at 2 of {points} train "
            f"points, in 2 of {cube.sizes['run']} runs") in note
    assert int(table["claim_n"].sel(claim="sharpness_lvr")) == cube.sizes["run"]
    assert table["claim_verdict"].sel(claim="sharpness_lvr").item() == claims.SUPPORTED
    assert "0 of" in str(table["claim_note"].sel(claim="sharpness_nvr").item())


ROUNDING = {**RULES, "rounding": {"estimate": 0.05, "p_factor": 1.5}}


@pytest.mark.parametrize("direction,outcome,p_holm,is_fragile", [
    # p 0.04 x 1.5 = 0.06 crosses alpha = 0.05
    ("positive", claims.Outcome(0.5, 0.3, 0.7, 0.01, 40), 0.04, True),
    ("positive", claims.Outcome(0.5, 0.3, 0.7, 0.001, 40), 0.004, False),
    # the CI's lower end 0.02 moves below 0
    ("positive", claims.Outcome(0.5, 0.02, 0.7, 0.001, 40), 0.004, True),
    # |estimate| 0.22 moves below min_effect 0.2
    ("negative", claims.Outcome(-0.22, -0.4, -0.1, 0.001, 40), 0.004, True),
    # "none": the CI end 0.27 moves past margin 0.3
    ("none", claims.Outcome(0.0, -0.2, 0.27, 0.6, 40), 1.0, True),
    ("none", claims.Outcome(0.0, -0.2, 0.2, 0.6, 40), 1.0, False),
    # bound and band claims have no Holm p and are left alone
    ("bound", claims.Outcome(0.0, 0.0, 0.0099, np.nan, 900), np.nan, False),
    ("positive", "the study does not sweep it", np.nan, False),
])
def test_a_verdict_within_rounding_of_its_threshold_is_fragile(direction, outcome, p_holm,
                                                               is_fragile):
    assert claims.fragile(claim(direction), outcome, p_holm, ROUNDING) == is_fragile
    assert not claims.fragile(claim(direction), outcome, p_holm, RULES)   # no rounding given


def test_fragile_verdicts_are_marked_in_the_table_and_the_summary():
    cube, bound_ds = synthetic_study()
    rules = {**RULES, "rounding": {"estimate": 0.05, "p_factor": 1.0e6}}   # every p crosses
    table = claims.evaluate(cube, bound_ds, {**CFG, "claims": rules}, FIGURES)
    assert table["claim_fragile"].sel(claim="sharpness_mls").item()
    assert not table["claim_fragile"].sel(claim="bounds_hold").item()
    assert "**supported** (fragile)" in claims.markdown(table)
    assert claims.summary(table)["sharpness_mls"]["fragile"] is True
    plain = claims.evaluate(cube, bound_ds, CFG, FIGURES)
    assert not plain["claim_fragile"].any() and "(fragile)" not in claims.markdown(plain)


#: Environments of the hand-made robust statistics (sorted, as robust.py labels them).
ENVIRONMENTS = ["batch_size @ lr=0.1", "lr @ batch_size=32", "lr @ batch_size=8"]


def robust_stats(cells: dict) -> xr.Dataset:
    """``robust_*`` variables of stats.nc for measure sharpness: {target: (pooled sign-error,
    the environments' sign-errors, reason)}."""
    targets = list(cells)
    mt = ("robust_measure", "robust_target")
    return xr.Dataset(
        {"robust_sign_error": (mt, [[cells[t][0] for t in targets]]),
         "robust_environment_sign_error": (mt + ("robust_environment",),
                                           [[cells[t][1] for t in targets]]),
         "robust_sign_error_reason": (mt, [[cells[t][2] for t in targets]])},
        coords={"robust_measure": ["sharpness"], "robust_target": targets,
                "robust_environment": ENVIRONMENTS})


NOT_PAIRED = "not tested: no two healthy runs differ in exactly one hyperparameter (seed aside)"
#: (pooled, environments, reason) of one target each: worst 0.25 (at most t = 1/4); worst
#: 0.5; pooled 0.8 (at least 1 - t); no pairs. The undefined environment (NaN) is skipped.
HAND = {"mls": (0.1, [0.0, 0.25, np.nan], ""), "nmls": (0.2, [0.0, 0.5, 0.1], ""),
        "log_lvr": (0.8, [1.0, 0.6, 0.9], ""),
        "log_lvr_top3": (np.nan, [np.nan] * 3, NOT_PAIRED)}


def robust_claim(direction, target):
    return claims.Claim("c", "paper", "flatter => X", "statistic", direction,
                        lambda e: "unused", robust=("sharpness", target))


@pytest.mark.parametrize("direction,target,expected,pooled,worst,environment", [
    ("positive", "mls", claims.SUPPORTED, 0.1, 0.25, "lr @ batch_size=32"),
    ("positive", "nmls", claims.NOT_ROBUST, 0.2, 0.5, "lr @ batch_size=32"),
    ("positive", "log_lvr", claims.CONTRADICTED, 0.8, 1.0, "batch_size @ lr=0.1"),
    # negative: every sign-error becomes 1 - e, pooled 0.2, environments 0, 0.4, 0.1
    ("negative", "log_lvr", claims.NOT_ROBUST, 0.2, 0.4, "lr @ batch_size=32"),
    # negative on the positive claim's data: environments 1, 0.75; pooled 0.9 >= 0.75
    ("negative", "mls", claims.CONTRADICTED, 0.9, 1.0, "batch_size @ lr=0.1"),
])
def test_robust_verdict_rule_by_hand(direction, target, expected, pooled, worst, environment):
    outcome = claims.robust_errors(robust_claim(direction, target), robust_stats(HAND))
    assert outcome.sign_error == pytest.approx(pooled, abs=1e-15)
    assert outcome.worst == pytest.approx(worst, abs=1e-15)
    assert (outcome.environment, outcome.reason) == (environment, "")
    assert claims.robust_verdict(outcome, RULES) == expected


def test_robust_verdict_direction_flip_supports_a_negative_claim():
    """Environments 1, 0.8, 0.9 and pooled 0.9 against a negative claim: 0, 0.2, 0.1 and 0.1;
    worst 0.2 <= 1/4. The same data contradict a positive claim (pooled 0.9 >= 0.75)."""
    data = robust_stats({"mls": (0.9, [1.0, 0.8, 0.9], "")})
    negative = claims.robust_errors(robust_claim("negative", "mls"), data)
    assert negative.worst == pytest.approx(0.2, abs=1e-15)
    assert negative.sign_error == pytest.approx(0.1, abs=1e-15)
    assert negative.environment == "lr @ batch_size=32"
    assert claims.robust_verdict(negative, RULES) == claims.SUPPORTED
    positive = claims.robust_errors(robust_claim("positive", "mls"), data)
    assert claims.robust_verdict(positive, RULES) == claims.CONTRADICTED


def test_robust_verdict_not_tested_not_applicable_and_its_threshold():
    data = robust_stats(HAND)
    untested = claims.robust_errors(robust_claim("positive", "log_lvr_top3"), data)
    assert untested.reason == NOT_PAIRED and np.isnan(untested.worst)
    assert claims.robust_verdict(untested, RULES) == claims.NOT_TESTED
    absent = claims.robust_errors(robust_claim("positive", "log_nvr"), data)
    assert absent.reason == "not tested: no robust sign-error of sharpness against log_nvr"
    assert claims.robust_errors(robust_claim("positive", "mls"), None).reason == (
        "not tested: no robust sign-error of sharpness against mls")
    assert claims.robust_errors(claim("positive"), data) is None          # no robust pair
    assert claims.robust_errors(robust_claim("none", "mls"), data) is None   # no direction
    assert claims.robust_verdict(None, RULES) == claims.NOT_APPLICABLE
    # the threshold is read from stats.claims: worst 0.5 fails t = 0.49, worst 0.25 fails 0.2
    nmls = claims.robust_errors(robust_claim("positive", "nmls"), data)
    assert claims.robust_verdict(nmls, {**RULES, "robust_max_sign_error": 0.49}) == (
        claims.NOT_ROBUST)
    mls = claims.robust_errors(robust_claim("positive", "mls"), data)
    assert claims.robust_verdict(mls, {**RULES, "robust_max_sign_error": 0.2}) == (
        claims.NOT_ROBUST)
    assert claims.ROBUST_MAX_SIGN_ERROR == 0.25


def test_claims_table_summary_and_markdown_carry_the_robust_verdict():
    """The synthetic study with hand-made robust statistics: sharpness_mls supported,
    sharpness_nmls not robust, sharpness_lvr contradicted, sharpness_lvr_top3 not tested (no
    pairs), sharpness_nvr not tested (log_nvr absent); the tau verdicts are unchanged."""
    cube, bound_ds = synthetic_study()
    plain = claims.evaluate(cube, bound_ds, CFG, FIGURES)
    table = claims.evaluate(cube, bound_ds, CFG, FIGURES, robust_stats(HAND))
    assert (table["claim_verdict"] == plain["claim_verdict"]).all()
    assert "('robust_max_sign_error', 0.25)" in table.attrs["claims_rules"]
    robust = table.sel(claim=["sharpness_mls", "sharpness_nmls", "sharpness_lvr",
                              "sharpness_lvr_top3", "sharpness_nvr", "lr_flatter"])
    assert list(robust["claim_robust_verdict"].values) == [
        claims.SUPPORTED, claims.NOT_ROBUST, claims.CONTRADICTED, claims.NOT_TESTED,
        claims.NOT_TESTED, claims.NOT_APPLICABLE]
    np.testing.assert_array_equal(robust["claim_robust_sign_error"],
                                  [0.1, 0.2, 0.8, np.nan, np.nan, np.nan])
    np.testing.assert_array_equal(robust["claim_robust_sign_error_worst"],
                                  [0.25, 0.5, 1.0, np.nan, np.nan, np.nan])
    assert list(robust["claim_robust_worst_environment"].values) == [
        "lr @ batch_size=32", "lr @ batch_size=32", "batch_size @ lr=0.1", "", "", ""]
    assert list(robust["claim_robust_note"].values)[3:] == [
        NOT_PAIRED, "not tested: no robust sign-error of sharpness against log_nvr", ""]
    out = json.loads(json.dumps(claims.summary(table)))
    assert {key: out["sharpness_mls"][key] for key in
            ("robust_verdict", "robust_sign_error", "robust_sign_error_worst")} == {
        "robust_verdict": "supported", "robust_sign_error": 0.1, "robust_sign_error_worst": 0.25}
    assert out["lr_flatter"]["robust_verdict"] == "not applicable"
    assert out["lr_flatter"]["robust_sign_error"] is None
    rows = {line.split(" | ")[0][2:]: line for line in claims.markdown(table).splitlines()}
    assert rows["flatter minima have smaller MLS"].endswith(
        "| **supported** (worst 0.25, pooled 0.1) |")
    assert rows["flatter minima have smaller NMLS"].endswith(
        "| **not robust** (worst 0.5, pooled 0.2) |")
    assert rows["flatter minima have smaller local volumes (LVR)"].endswith(
        "| **contradicted** (worst 1, pooled 0.8) |")
    assert rows["flatter minima have smaller top-3 log volumes (the paper's plotted log "
                "volume)"].endswith(f"| {NOT_PAIRED} |")
    assert rows["a larger learning rate gives flatter minima"].endswith(" | — |")
