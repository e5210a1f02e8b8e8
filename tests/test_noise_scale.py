"""The lr / batch-size ratio decomposition (flatrep.analysis.noise_scale) against a hand-worked
nested ANOVA and statsmodels, its claims' verdict rule branch by branch and their reasons
for not testing, and its place in stats.nc, summary.json, summary.md and the claims table."""

import json
import math

import numpy as np
import pandas as pd
import pytest
import scipy.stats
import statsmodels.formula.api as smf
from statsmodels.stats.anova import anova_lm

from flatrep.analysis import bounds, claims, markdown, noise_scale, stats
from flatrep.cube import netcdf
from test_claims import CFG, FIGURES, RULES, claim, synthetic_study
from test_robust import _cube
from test_stats import _bounds

#: lr {0.05, 0.1, 0.2} x B {10, 20, 40}: lines lr / B = 0.00125 (1 configuration), 0.0025
#: (2), 0.005 (3), 0.01 (2), 0.02 (1), as the lr_batch_ratio study.
GRID_LR = np.repeat([0.05, 0.1, 0.2], 3)
GRID_BATCH = np.tile([10, 20, 40], 3)


def grid(seeds: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(lr, batch size, seed) of every run of the 3 x 3 grid with ``seeds`` seeds each."""
    return (np.repeat(GRID_LR, seeds), np.repeat(GRID_BATCH, seeds),
            np.tile(np.arange(seeds), len(GRID_LR)))


def test_lines_join_ratios_within_a_relative_tolerance():
    """0.1 / 20, 0.05 / 10 and 0.2 / 40 are one line, however float division rounds them; a
    ratio 1e-7 away (relative) joins it, one 1e-5 away does not."""
    ratios = np.array([0.1 / 20, 0.05 / 10, 0.2 / 40, 0.005 * (1 + 1e-7), 0.005 * (1 + 1e-5),
                       0.0025])
    np.testing.assert_array_equal(noise_scale.line_labels(ratios), [1, 1, 1, 1, 2, 0])
    layout = noise_scale.design(GRID_LR, GRID_BATCH)
    assert len(np.unique(layout.config)) == 9
    # lines in ratio order: 0.00125, 0.0025, 0.005, 0.01, 0.02
    np.testing.assert_array_equal(np.bincount(layout.line), [1, 2, 3, 2, 1])
    np.testing.assert_array_equal(layout.line[[0, 4, 8]], [2, 2, 2])    # the diagonal


#: Three configurations, two seeds each: (lr, B) = (0.1, 10) and (0.2, 20) on the line 0.01,
#: (0.1, 20) alone on 0.005.
HAND_LR = np.array([0.1, 0.1, 0.2, 0.2, 0.1, 0.1])
HAND_BATCH = np.array([10, 10, 20, 20, 20, 20])
HAND_Y = np.array([1.0, 3.0, 4.0, 6.0, 0.0, 2.0])


def test_nested_anova_by_hand():
    """Seeds as independent replicates (no seed labels). Configuration means 2, 5, 1; line
    means 3.5 (4 runs), 1 (2 runs); grand mean 8/3.
    SS_across = 4 (3.5 - 8/3)^2 + 2 (1 - 8/3)^2 = 100/36 + 200/36 = 25/3 (df 1);
    SS_within = 2 (2 - 3.5)^2 + 2 (5 - 3.5)^2 = 9 (df 1);
    SS_seed = 3 configurations x ((-1)^2 + 1^2) = 6 (df 3);
    the total, sum (y - 8/3)^2 = 210/9 = 70/3 = 25/3 + 9 + 6.
    share = 9 / (9 + 25/3) = 27/52; F_within = (9/1) / (6/3) = 4.5; F_across = (25/3) / 9
    = 25/27; seed-noise share = (3 - 1) (6/3) / (52/3) = 3/13.
    Permutation: the line 0.01's four runs {1, 3, 4, 6} split 2 + 2 between its two
    configurations in C(4, 2) = 6 ways, with first-configuration means 2, 2.5, 3.5, 3.5, 4.5,
    5 and SS_within = 4 (m - 3.5)^2 = 9, 4, 0, 0, 4, 9 (the line alone on 0.005 keeps its
    runs; SS_seed + SS_within is fixed within a line, so F grows with SS_within): 2 of 6
    splits reach the observed 9, p = 1/3."""
    layout = noise_scale.design(HAND_LR, HAND_BATCH)
    found = noise_scale.decompose(HAND_Y, layout, 2000, 0.95, 20_000,
                                  np.random.default_rng(0))
    np.testing.assert_allclose(found.squares, [25 / 3, 9, 0, 6], rtol=1e-14)
    np.testing.assert_array_equal(found.df, [1, 1, 0, 3])
    assert not found.seed_blocks
    assert found.within_share == pytest.approx(27 / 52, rel=1e-14)
    assert found.f_within == pytest.approx(4.5, rel=1e-14)
    assert found.f_across == pytest.approx(25 / 27, rel=1e-14)
    assert found.noise_share == pytest.approx(3 / 13, rel=1e-14)
    assert found.p_f_within == pytest.approx(scipy.stats.f.sf(4.5, 1, 3), rel=1e-12)
    assert found.p_f_across == pytest.approx(scipy.stats.f.sf(25 / 27, 1, 1), rel=1e-12)
    # Monte-Carlo p of 20 000 permutations: standard error sqrt((1/3)(2/3) / 20 000) = 0.0033
    assert found.p_perm == pytest.approx(1 / 3, abs=0.015)
    assert (found.n_runs, found.n_configs, found.n_lines, found.n_lines_informative,
            found.n_excluded, found.reason) == (6, 3, 2, 1, 0, "")
    assert found.ci_low <= found.within_share <= found.ci_high


def test_seed_blocks_by_hand():
    """The same configurations, the two runs of each seeds 0 and 1 (crossed: blocks), y of
    the third configuration (0.1, 20) now 0, 1. Configuration means 2, 5, 0.5; line means
    3.5, 0.5; grand mean 2.5.
    SS_across = 4 (1)^2 + 2 (-2)^2 = 12; SS_within = 9 as before;
    SS_spread = 2 + 2 + 0.5 = 4.5; seed means (1 + 4 + 0)/3 = 5/3 and (3 + 6 + 1)/3 = 10/3,
    SS_seeds = 3 ((5/6)^2 + (5/6)^2) = 25/6; SS_residual = 4.5 - 25/6 = 1/3, df (3-1)(2-1) = 2
    (total sum (y - 2.5)^2 = 25.5 = 12 + 9 + 25/6 + 1/3).
    share = 9/21 = 3/7; F_within = 9 / ((1/3)/2) = 54; F_across = 12/9 = 4/3; seed-noise
    share = 2 (1/6) / 21 = 1/63.
    Permutation within (line, seed): the line 0.01 has one run of each configuration per
    seed, swapped or not: 4 arrangements with configuration means (2, 5), (3.5, 3.5),
    (3.5, 3.5), (5, 2), SS_within 9, 0, 0, 9: p = 1/2.
    Block bootstrap: seeds {0, 0} (prob 1/4): configuration values 1, 4, 0, share
    9 / (9 + 25/3) = 27/52; {1, 1} (1/4): 3, 6, 1, SS_across = 4 (7/6)^2 + 2 (7/3)^2 = 49/3,
    share 27/76; {0, 1} (1/2): 3/7. The 2.5 % and 97.5 % quantiles: 27/76 and 27/52."""
    y = np.array([1.0, 3.0, 4.0, 6.0, 0.0, 1.0])
    layout = noise_scale.design(HAND_LR, HAND_BATCH, np.array([0, 1] * 3))
    assert layout.block is not None
    found = noise_scale.decompose(y, layout, 2000, 0.95, 20_000, np.random.default_rng(0))
    np.testing.assert_allclose(found.squares, [12, 9, 25 / 6, 1 / 3], rtol=1e-13)
    np.testing.assert_array_equal(found.df, [1, 1, 1, 2])
    assert found.seed_blocks
    assert found.within_share == pytest.approx(3 / 7, rel=1e-14)
    assert found.f_within == pytest.approx(54, rel=1e-12)
    assert found.p_f_within == pytest.approx(scipy.stats.f.sf(54, 1, 2), rel=1e-10)
    assert found.f_across == pytest.approx(4 / 3, rel=1e-14)
    assert found.noise_share == pytest.approx(1 / 63, rel=1e-12)
    # standard error sqrt((1/2)(1/2) / 20 000) = 0.0035
    assert found.p_perm == pytest.approx(1 / 2, abs=0.015)
    assert (found.ci_low, found.ci_high) == (pytest.approx(27 / 76, rel=1e-12),
                                             pytest.approx(27 / 52, rel=1e-12))
    # seeds not crossed (a seed missing from one configuration): independent replicates
    assert noise_scale.design(HAND_LR, HAND_BATCH, np.array([0, 1, 0, 1, 0, 2])).block is None


def test_nested_anova_against_statsmodels_and_scipy():
    """An unbalanced 3 x 3 grid (2-4 seeds a configuration, y = log lr - 0.5 log B + noise):
    SS_within and F_within as the F test of the nested models y ~ line against
    y ~ configuration (statsmodels anova_lm), SS_across as line's sum of squares in
    y ~ line, and the between-configuration F of scipy's one-way ANOVA over configurations
    as ((SS_across + SS_within) / (C - 1)) / (SS_seed / (N - C))."""
    rng = np.random.default_rng(3)
    counts = np.array([3, 2, 4, 3, 3, 2, 4, 3, 2])
    lr, batch = np.repeat(GRID_LR, counts), np.repeat(GRID_BATCH, counts)
    y = np.log(lr) - 0.5 * np.log(batch) + 0.2 * rng.standard_normal(len(lr))
    layout = noise_scale.design(lr, batch)
    found = noise_scale.decompose(y, layout, 200, 0.95, 200, np.random.default_rng(0))
    table = pd.DataFrame({"y": y, "line": layout.line, "config": layout.config})
    by_line = smf.ols("y ~ C(line)", table).fit()
    by_config = smf.ols("y ~ C(config)", table).fit()
    nested = anova_lm(by_line, by_config)
    assert found.squares[1] == pytest.approx(nested["ss_diff"][1], rel=1e-10)
    assert found.squares[3] == pytest.approx(by_config.ssr, rel=1e-10)
    assert found.squares[2] == 0 and found.df[2] == 0           # no seed blocks
    # 26 runs, 9 configurations, 5 lines: df 4 within lines, 17 for the seeds
    assert found.df[1] == nested["df_diff"][1] == 4 and found.df[3] == by_config.df_resid == 17
    assert found.f_within == pytest.approx(nested["F"][1], rel=1e-10)
    assert found.p_f_within == pytest.approx(nested["Pr(>F)"][1], rel=1e-8)
    lines_only = anova_lm(by_line)
    assert found.squares[0] == pytest.approx(lines_only["sum_sq"]["C(line)"], rel=1e-10)
    assert found.df[0] == lines_only["df"]["C(line)"] == 4
    one_way = scipy.stats.f_oneway(*(y[layout.config == c] for c in range(9)))
    assert (found.squares[0] + found.squares[1]) / 8 / (found.squares[3] / 17) == (
        pytest.approx(one_way.statistic, rel=1e-10))


def test_seed_blocks_against_statsmodels():
    """The 3 x 3 grid with 3 seeds crossed, a seed effect common to the configurations:
    SS_within and F_within as the F test of y ~ seed + line against y ~ seed + configuration,
    SS_residual and its df (C - 1)(S - 1) = 16 as the larger model's, SS_seeds as seed's sum
    of squares in y ~ seed (statsmodels)."""
    rng = np.random.default_rng(4)
    lr, batch, seed = grid(3)
    y = np.log(lr) - 0.5 * np.log(batch) + np.array([0.0, -0.1, 0.2])[seed] + (
        0.05 * rng.standard_normal(len(lr)))
    layout = noise_scale.design(lr, batch, seed)
    found = noise_scale.decompose(y, layout, 200, 0.95, 200, np.random.default_rng(0))
    table = pd.DataFrame({"y": y, "line": layout.line, "config": layout.config, "seed": seed})
    smaller = smf.ols("y ~ C(seed) + C(line)", table).fit()
    larger = smf.ols("y ~ C(seed) + C(config)", table).fit()
    nested = anova_lm(smaller, larger)
    assert found.squares[1] == pytest.approx(nested["ss_diff"][1], rel=1e-10)
    assert found.squares[3] == pytest.approx(larger.ssr, rel=1e-10)
    assert found.df[3] == larger.df_resid == 16 and found.df[1] == nested["df_diff"][1] == 4
    assert found.f_within == pytest.approx(nested["F"][1], rel=1e-10)
    assert found.p_f_within == pytest.approx(nested["Pr(>F)"][1], rel=1e-8)
    seeds_only = anova_lm(smf.ols("y ~ C(seed)", table).fit())
    assert found.squares[2] == pytest.approx(seeds_only["sum_sq"]["C(seed)"], rel=1e-10)


@pytest.mark.parametrize("alpha,beta,share", [
    (1.0, -1.0, 0.0),      # lr / B: nothing within lines
    (1.0, 0.0, 0.5),       # lr alone
    (0.0, 1.0, 0.5),       # B alone
    (2.0, -1.0, 0.1),      # lr^2 / B (sqrt scaling)
    (1.0, 1.0, 1.0),       # lr B: constant across lines (their mean log lr + log B is equal)
])
def test_share_of_a_log_linear_mean_on_the_grid(alpha, beta, share):
    """y = alpha log lr + beta log B, two identical seeds. With u = log2(lr / 0.05),
    v = log2(B / 10) in {0, 1, 2}, d = u - v fixes the line and s = u + v moves along it:
    y = const + log 2 ((alpha - beta) d + (alpha + beta) s) / 2. Every line has mean s = 2,
    so SS_across = 2 sum_lines n_l (m d)^2 = 2 (2 m^2 2 + 1 (2m)^2 2) = 24 m^2 and
    SS_within = 2 k^2 ((0-2)^2 + (4-2)^2 + 2 ((1-2)^2 + (3-2)^2)) = 24 k^2 (m, k the two
    coefficients times log 2 / 2): share = k^2 / (k^2 + m^2)
    = (alpha + beta)^2 / ((alpha + beta)^2 + (alpha - beta)^2)."""
    lr, batch, _ = grid(2)
    y = alpha * np.log(lr) + beta * np.log(batch)
    found = noise_scale.decompose(y, noise_scale.design(lr, batch), 100, 0.95, 100,
                                  np.random.default_rng(0))
    assert found.within_share == pytest.approx(share, abs=1e-12)
    k, m = (alpha + beta) * math.log(2) / 2, (alpha - beta) * math.log(2) / 2
    np.testing.assert_allclose(found.squares[:2], [24 * m ** 2, 24 * k ** 2], atol=1e-12)
    np.testing.assert_allclose(found.squares[2:], 0, atol=1e-25)   # identical seeds
    assert np.isnan(found.f_within) and np.isnan(found.p_perm)    # no seed variance


def test_the_block_bootstrap_resamples_whole_seeds():
    """Every seed gives the same y in each configuration: every resample of seeds (as
    blocks) is the data, so the CI is the estimate; with seed noise the CI has width."""
    lr, batch, _ = grid(3)
    layout = noise_scale.design(lr, batch)
    y = np.log(lr)
    low, high = noise_scale.bootstrap_share_ci(y, layout, 200, 0.95, np.random.default_rng(0))
    assert low == high == pytest.approx(0.5, rel=1e-12)
    noisy = y + 0.1 * np.random.default_rng(1).standard_normal(len(y))
    low, high = noise_scale.bootstrap_share_ci(noisy, layout, 200, 0.95,
                                               np.random.default_rng(0))
    assert low < high


def ratio_cube(y_of, seeds=3, noise=0.05, seed=0, extra=None):
    """A one-checkpoint cube of the 3 x 3 grid: sharpness = exp(y_of(lr, B) + noise), the
    log volumes y_of + noise, run coordinates lr, batch_size, seed (and ``extra``)."""
    lr, batch, seed_ = grid(seeds)
    rng = np.random.default_rng(seed)
    columns = {name: y_of(lr, batch) + noise * rng.standard_normal(len(lr))
               for name in ("sharpness", "log_lvr")}
    columns["sharpness"] = np.exp(columns["sharpness"])
    hparams = {"lr": lr, "batch_size": batch, "seed": seed_, **(extra or {})}
    return _cube(columns, hparams)


def ratio_only(lr, batch):
    return np.log(lr / batch)


def lr_only(lr, batch):
    return np.log(lr)


@pytest.mark.parametrize("name", ["sharpness", "log_lvr"])
def test_known_truths_give_the_expected_verdicts(name):
    """Truth lr / B (noise sd 0.05 against lines 2x apart, 8 seeds): within-line share near
    seed noise, CI below 0.05, supported. Truth lr alone (share 1/2): the within-line
    permutation p at its floor and the CI above 0.05, contradicted. Sharpness is analysed
    on the log scale (y = log S), the log volume as it is: both see the same y."""
    supported = noise_scale.measure_decomposition(ratio_cube(ratio_only, seeds=8), name, 500,
                                                  0.95, 500, 0)
    assert supported.ci_high <= claims.RATIO_MAX_WITHIN_SHARE
    contradicted = noise_scale.measure_decomposition(ratio_cube(lr_only, seeds=8), name, 500,
                                                     0.95, 500, 0)
    assert contradicted.within_share == pytest.approx(0.5, abs=0.05)
    assert contradicted.p_perm == 1 / 501
    rules = {**RULES, "ratio_max_within_share": 0.05}
    for found, expected in ((supported, claims.SUPPORTED), (contradicted, claims.CONTRADICTED)):
        outcome = claims.Outcome(found.within_share, found.ci_low, found.ci_high, found.p_perm,
                                 found.n_runs)
        assert claims.verdict(claim(claims.RATIO_ONLY), outcome, found.p_perm, rules) == (
            expected)


@pytest.mark.parametrize("outcome,p_holm,rules,expected", [
    (claims.Outcome(0.01, 0.002, 0.05, 0.4, 27), 1.0, {}, claims.SUPPORTED),
    (claims.Outcome(0.03, 0.01, 0.06, 0.01, 27), 0.02, {}, claims.INCONCLUSIVE),
    (claims.Outcome(0.3, 0.1, 0.5, 0.001, 27), 0.004, {}, claims.CONTRADICTED),
    (claims.Outcome(0.3, 0.1, 0.5, 0.01, 27), 0.06, {}, claims.INCONCLUSIVE),     # p too big
    (claims.Outcome(0.2, 0.05, 0.4, 0.001, 27), 0.004, {}, claims.INCONCLUSIVE),  # CI at s
    (claims.Outcome(0.08, 0.06, 0.09, 0.4, 27), 1.0, {"ratio_max_within_share": 0.1},
     claims.SUPPORTED),
    (claims.Outcome(0.08, 0.06, 0.09, 0.001, 27), 0.004, {"ratio_max_within_share": 0.05},
     claims.CONTRADICTED),
    ("no lr / B line holds >= 2 configurations (lr, B)", np.nan, {}, claims.NOT_TESTED),
])
def test_ratio_verdict_rule_branch_by_branch(outcome, p_holm, rules, expected):
    """s = ratio_max_within_share (default 0.05): supported when the CI's upper end <= s;
    contradicted when the Holm p < alpha and the CI's lower end > s; else inconclusive."""
    ratio_claim = claim(claims.RATIO_ONLY)
    assert claims.verdict(ratio_claim, outcome, p_holm, {**RULES, **rules}) == expected
    # a rounding band in units of tau never marks a share fragile
    assert not claims.fragile(ratio_claim, outcome, p_holm,
                              {**RULES, **rules, "rounding": {"estimate": 0.4, "p_factor": 3}})


def test_not_tested_with_the_reason():
    """Quick's cross (every lr / B distinct), one line, one seed a configuration, another
    swept axis, no lr coordinate, a missing measure; a -inf log volume leaves its run out."""
    def reason(lr, batch, seeds, name="sharpness", extra=None):
        hparams = {"lr": np.asarray(lr), "batch_size": np.asarray(batch),
                   "seed": np.asarray(seeds), **(extra or {})}
        cube = _cube({"sharpness": np.ones(len(lr))}, hparams)
        return noise_scale.measure_decomposition(cube, name, 100, 0.95, 100, 0).reason

    quick = [(0.05, 20), (0.1, 20), (0.2, 20), (0.1, 8), (0.1, 32)]
    lr, batch = (np.repeat([c[k] for c in quick], 2) for k in (0, 1))
    assert reason(lr, batch, np.tile([0, 1], 5)) == (
        "no lr / B line holds >= 2 configurations (lr, B) (5 lines of one configuration each)")
    assert reason([0.1, 0.1, 0.2, 0.2], [10, 10, 20, 20], [0, 1, 0, 1]) == (
        "fewer than 2 lr / B lines (1)")
    assert reason([0.1, 0.2, 0.1], [10, 20, 20], [0, 0, 0]) == (
        "no configuration has >= 2 runs (seeds): within-line variation cannot be told from "
        "seed noise")
    assert reason([0.1, 0.2, 0.1, 0.2], [10, 20, 10, 20], [0, 0, 0, 0],
                  extra={"weight_decay": np.array([0, 0, 1e-4, 1e-4])}) == (
        "the study varies weight_decay besides lr and batch size")
    assert reason(HAND_LR, HAND_BATCH, [0, 1] * 3, "hessian_lambda_max") == (
        "hessian_lambda_max is not in the cube")
    no_lr = _cube({"sharpness": np.ones(2)}, {"batch_size": np.array([8, 32])})
    assert noise_scale.measure_decomposition(no_lr, "sharpness", 100, 0.95, 100, 0).reason == (
        "the study has no lr coordinate")
    cube = ratio_cube(ratio_only)
    cube["log_lvr"][0] = -np.inf
    found = noise_scale.measure_decomposition(cube, "log_lvr", 100, 0.95, 100, 0)
    assert (found.n_excluded, found.n_runs, found.reason) == (1, 26, "")
    assert np.isfinite(found.within_share)


def test_the_quick_like_synthetic_study_leaves_the_ratio_claims_untested():
    """test_claims' synthetic study is quick's cross: no two configurations share lr / B."""
    cube, bound_ds = synthetic_study()
    table = claims.evaluate(cube, bound_ds, CFG, FIGURES)
    ratio = [c.name for c in claims.CLAIMS if c.direction == claims.RATIO_ONLY]
    assert len(ratio) == len(noise_scale.MEASURES)
    assert set(table["claim_verdict"].sel(claim=ratio).values) == {claims.NOT_TESTED}
    # the design's reason, also for the measures the cube lacks (top-3 volume, lambda_max)
    assert set(table["claim_note"].sel(claim=ratio).values) == {
        "no lr / B line holds >= 2 configurations (lr, B) (5 lines of one configuration each)"}


def wired_cube():
    """The 3 x 3 grid, 3 seeds: sharpness and log LVR depend on lr / B only, the other
    paired measures on lr alone (a copy of the lr-only sharpness)."""
    cube = ratio_cube(ratio_only)
    other = ratio_cube(lr_only, seed=1)
    lr_only_values = np.exp(other["log_lvr"])
    for name in (*stats.PAIRED_MEASURES, "sample_sharpness"):   # per sample, as measured
        values = {"log_lvr": cube["log_lvr"], "sample_sharpness": cube["sharpness"]}.get(
            name, lr_only_values)
        cube[name] = values.expand_dims(subset=["train", "test", "test_misclassified"],
                                        sample=2).transpose("run", "step", "subset", "sample")
    n = cube.sizes["run"]
    cube["train_loss"] = (("run", "step"), np.zeros((n, 1)))
    cube["train_acc"] = (("run", "step"), np.ones((n, 1)))
    cube["test_acc"] = (("run", "step"), np.full((n, 1), 0.9))
    cube.attrs["config"] = json.dumps({"data": {"name": "cifar10", "classes": [0, 1]},
                                       "train": {}})     # SGD, no averaging, by default
    return cube


def test_stats_summary_markdown_and_claims_carry_the_ratio_decomposition(tmp_path):
    cube = wired_cube()
    cfg = {**CFG, "permutations": 2000}     # a p of 1/2001 survives Holm over the family
    every = list(bounds.REGISTRY)         # the claims read the theorems' violations
    bound_ds = _bounds({name: np.ones(27) / 2 for name in every},
                       {name: np.ones(27) for name in every})
    result = stats.study_statistics(cube, bound_ds, cfg)
    assert list(result["ratio_measure"].values) == list(noise_scale.MEASURES)
    assert result["ratio_within_share"].attrs["long_name"] == (
        "within-line share of the between-configuration sum of squares")
    assert "definition" in result["ratio_f_within"].attrs
    netcdf.write(result, tmp_path / "stats.nc")
    written = netcdf.read(tmp_path / "stats.nc")
    assert written["ratio_p_perm"].attrs["long_name"] == "within-line permutation p of F_within"
    np.testing.assert_array_equal(written["ratio_config_runs"], np.full(9, 3))
    np.testing.assert_allclose(written["ratio_config_ratio"], GRID_LR / GRID_BATCH, rtol=1e-15)
    # the claims table and stats.nc give the same numbers (one generator per measure)
    direct = noise_scale.measure_decomposition(cube, "sharpness", 200, 0.95, 2000, 0)
    sharp = result.sel(ratio_measure="sharpness")
    assert float(sharp["ratio_within_share"]) == direct.within_share
    assert (float(sharp["ratio_ci_low"]), float(sharp["ratio_ci_high"])) == (
        direct.ci_low, direct.ci_high)
    np.testing.assert_allclose(sharp["ratio_sum_of_squares"], direct.squares, rtol=1e-15)
    # config means of log S: the mean over seeds of each configuration's y
    y = np.log(cube["sharpness"].values[:, 0]).reshape(9, 3).mean(1)
    order = np.lexsort((GRID_BATCH, GRID_LR))
    np.testing.assert_allclose(np.sort(sharp["ratio_config_mean"].values), np.sort(y[order]),
                               rtol=1e-12)
    out = json.loads(json.dumps(stats.summary(result, cube)))
    row = out["lr_batch_ratio"]["sharpness"]
    assert row["within_share"] == direct.within_share and row["reason"] is None
    assert row["seed_blocks"] is True                 # every configuration ran seeds 0-2
    assert (row["n_lines"], row["n_lines_informative"], row["n_configs"], row["n_runs"]) == (
        5, 3, 9, 27)
    assert out["lr_batch_ratio"]["hessian_lambda_max"]["reason"] == (
        "hessian_lambda_max is not in the cube")
    assert out["lr_batch_ratio"]["hessian_lambda_max"]["within_share"] is None
    table = claims.evaluate(cube, bound_ds, cfg, FIGURES, result)
    verdicts = dict(zip(table["claim"].values, table["claim_verdict"].values))
    assert verdicts["lr_batch_ratio_sharpness"] == claims.SUPPORTED
    assert verdicts["lr_batch_ratio_log_lvr"] == claims.SUPPORTED
    assert verdicts["lr_batch_ratio_mls"] == claims.CONTRADICTED
    assert verdicts["lr_batch_ratio_hessian_lambda_max"] == claims.NOT_TESTED
    assert float(table["claim_estimate"].sel(claim="lr_batch_ratio_sharpness")) == (
        direct.within_share)
    assert "('ratio_max_within_share', 0.05)" in table.attrs["claims_rules"]
    assert str(table["claim_note"].sel(claim="lr_batch_ratio_sharpness").values).startswith(
        "5 lr / B lines (3 with >= 2 configurations), 9 configurations, 27 runs; F_within = ")
    assert claims.summary(table)["lr_batch_ratio_mls"]["verdict"] == claims.CONTRADICTED
    section = markdown.lr_batch_ratio(result).splitlines()
    assert len(section) == 2 + len(noise_scale.MEASURES)
    assert all(line.count("|") == 9 for line in section)
    assert section[2].startswith(f"| sharpness | {direct.within_share:.3g} [")
    assert section[2].endswith("| 5 (3) / 9 / 27, seed blocks | — |")
    assert section[-1] == ("| hessian_lambda_max | — | — | — | — | — | — | "
                           "hessian_lambda_max is not in the cube |")
    summary_md = markdown.study_summary("grid", result, table)
    assert "## lr / batch size: within against across lines of equal lr / B" in summary_md
