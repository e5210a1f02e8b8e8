"""The claims table: verdict rules branch by branch, and verdicts on synthetic studies whose
truth is known by construction."""

import json

import numpy as np
import pytest
import xarray as xr

from flatrep import bounds, claims

RULES = {"alpha": 0.05, "min_effect": 0.2, "margin": 0.3, "max_violation_rate": 0.01}
CFG = {"bootstrap": 200, "permutations": 200, "ci_level": 0.95, "seed": 0, "claims": RULES,
       "interpolation_loss": 0.02}
FIGURES = {"lr_row_batch_size": 20, "batch_row_lr": 0.1}


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
    for name in ("mls", "log_lvr", "nmls", "log_nvr", "sample_sharpness"):
        data[name] = per_sample(sharp * np.exp(0.1 * rng.standard_normal(n)))
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
    for name in ("l2_sharper", "l2_generalises", "adam_ia_sharper", "adam_ia_sharper_bn_train",
                 "adam_ia_generalises"):
        assert verdict[name] == claims.NOT_TESTED, name
        assert verdict[f"{name}_equal_loss"] == claims.NOT_TESTED, name
    tested = np.isfinite(table["claim_p"].values) & (table["claim_direction"] != "bound").values
    assert (table["claim_p_holm"].values[tested] >= table["claim_p"].values[tested]).all()
    markdown = claims.markdown(table)
    assert markdown.count("\n") == len(claims.CLAIMS) + 2
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
    table = claims.evaluate(cube, bound_ds, {**CFG, "permutations": 2000}, FIGURES)
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
    table = claims.evaluate(cube, bound_ds, {**CFG, "permutations": 2000}, FIGURES)
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


def test_summary_markdown_has_the_three_tables(measured_run, tiny_study):
    from flatrep import markdown, stats

    ds, _ = measured_run
    evaluated = bounds.evaluate(ds)
    result = stats.study_statistics(ds, evaluated, tiny_study["stats"])
    table = claims.evaluate(ds, evaluated, tiny_study["stats"], tiny_study["figures"])
    text = markdown.study_summary("tiny", result, table)
    assert text.startswith("# tiny: summary\n\n1 runs (0 diverged")
    assert text.count("\n| ") == len(claims.CLAIMS) + len(stats.PAIRED_MEASURES) + len(
        bounds.REGISTRY) + 3
    assert f"| ma_ying | 0 / {ds.sizes['step']} |" in text
