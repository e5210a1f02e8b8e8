"""Dziugaite et al.'s robust sign-error and Jiang et al.'s conditional mutual information
(flatrep.analysis.robust) against hand-worked cases, and their place in stats.nc,
summary.json and summary.md."""

import json
import math

import numpy as np
import pytest
import xarray as xr

from flatrep.analysis import claims, figures, markdown, robust, stats
from flatrep.cube import netcdf
from test_stats import _bounds


def _cube(columns: dict, hparams: dict, attrs: dict | None = None) -> xr.Dataset:
    """One-checkpoint cube of healthy runs: ``columns`` {variable: value per run}, run
    coordinates ``hparams``."""
    n = len(next(iter(hparams.values())))
    data = {name: (("run", "step"), np.asarray(values, dtype=float)[:, None])
            for name, values in columns.items()}
    data["diverged"] = (("run", "step"), np.zeros((n, 1), dtype=np.int8))
    coords = {"run": [f"r{i}" for i in range(n)], "step": [0]}
    coords.update({name: ("run", np.asarray(values)) for name, values in hparams.items()})
    return xr.Dataset(data, coords=coords, attrs=attrs or {})


def _pair_set(pairs: robust.Pairs) -> set:
    return {frozenset((int(a), int(b))) for a, b in zip(pairs.a, pairs.b)}


def test_hoeffding_weight_by_hand():
    """w = (psi - 1/2)_+, psi = max(0, 1 - 2 exp(-n Δ^2 / 2))^2."""
    n = 10_000
    # Δ = 0.02: n Δ^2 / 2 = 2, 1 - 2 e^-2 = 1 - 0.2706705664732254 = 0.7293294335267746,
    # psi = 0.5319214226084860, w = 0.0319214226084860.
    # Δ = 0.05: n Δ^2 / 2 = 12.5, psi = (1 - 2 e^-12.5)^2 = 0.9999850934428636, w = 0.49998509...
    # Δ = 0.01: n Δ^2 / 2 = 0.5, 1 - 2 e^-0.5 = -0.213 < 0: psi = 0, w = 0.
    # Δ = 0: psi = 0 (a tie says nothing), w = 0; the sign of Δ does not matter.
    np.testing.assert_allclose(
        robust.hoeffding_weight(np.array([0.02, -0.02, 0.05, 0.01, 0.0]), n),
        [0.031921422608486, 0.031921422608486, 0.4999850934428636, 0.0, 0.0], rtol=1e-13)
    # n = 250 (MNIST-1D's test split in the CPU studies): psi > 1/2 needs
    # 1 - 2 exp(-125 Δ^2) > 2^-1/2, i.e. |Δ| > sqrt(ln(2 / (1 - 2^-1/2)) / 125) = 0.12397.
    assert robust.hoeffding_weight(np.array([0.1239]), 250)[0] == 0.0
    assert robust.hoeffding_weight(np.array([0.1241]), 250)[0] > 0.0


def test_sign_errors_and_signs_with_ties_infinities_and_nan():
    values = np.array([1.0, 2.0, -np.inf, -np.inf, np.nan])
    pairs = robust.Pairs(np.array([0, 1, 2, 0]), np.array([1, 0, 3, 4]), *[np.array([])] * 3,
                         {})
    # 2 - 1 > 0, 1 - 2 < 0, -inf vs -inf ties (two zero volumes), NaN unmeasured.
    np.testing.assert_array_equal(robust.pair_signs(values, pairs), [1, -1, 0, np.nan])
    np.testing.assert_array_equal(
        robust.sign_errors(np.array([1, 1, -1, 0]), np.array([1, -1, -1, 1])), [0, 1, 0, 0.5])


def test_axes_skip_the_seed_and_merge_an_arm():
    """False Friend's Adam + IA study: optimizer, lr and averaging_start set together are one
    axis; a coordinate that never varies is none."""
    hparams = {"averaging_start": np.repeat([1.0, 0.5], 2), "lr": np.repeat([0.1, 0.001], 2),
               "optimizer": np.repeat(["sgd", "adamw"], 2), "seed": np.tile([0, 1], 2),
               "batch_size": np.full(4, 32)}
    found = robust.axes(hparams)
    assert list(found) == ["averaging_start+lr+optimizer"]
    np.testing.assert_array_equal(found["averaging_start+lr+optimizer"],
                                  ["1.0/0.1/sgd"] * 2 + ["0.5/0.001/adamw"] * 2)
    pairs = robust.coupled_pairs(hparams)
    assert _pair_set(pairs) == {frozenset((0, 2)), frozenset((1, 3))}   # seed 0, seed 1
    assert pairs.shared_seed.all()


def test_coupled_pairs_of_the_quick_grid_share_their_seed():
    """lr {0.05, 0.1, 0.2} at batch 20 and batch {8, 32} at lr 0.1, seeds {0, 1}: 3 lr pairs
    and 3 batch pairs of configurations, each paired seed by seed; (0.05, 20) and (0.1, 8)
    differ in two axes and are not paired."""
    configs = [(0.05, 20), (0.1, 20), (0.2, 20), (0.1, 8), (0.1, 32)]
    lr = np.repeat([c[0] for c in configs], 2)
    batch = np.repeat([c[1] for c in configs], 2)
    seed = np.tile([0, 1], 5)
    pairs = robust.coupled_pairs({"lr": lr, "batch_size": batch, "seed": seed})
    expected = {frozenset((2 * i + s, 2 * j + s))
                for i, j in [(0, 1), (0, 2), (1, 2), (1, 3), (1, 4), (3, 4)] for s in (0, 1)}
    assert _pair_set(pairs) == expected
    assert pairs.shared_seed.all() and (seed[pairs.a] == seed[pairs.b]).all()
    assert sorted(set(pairs.environment)) == ["batch_size @ lr=0.1", "lr @ batch_size=20"]
    lr_pairs = pairs.axis == "lr"
    assert lr_pairs.sum() == 6 and (pairs.environment[lr_pairs] == "lr @ batch_size=20").all()
    # U on lr: the shared value for the batch pairs, the unordered pair for the lr pairs.
    assert set(pairs.keys["lr"][~lr_pairs]) == {"0.1"}
    assert set(pairs.keys["lr"][lr_pairs]) == {"0.05|0.1", "0.05|0.2", "0.1|0.2"}


def test_pairs_take_every_seed_combination_where_no_seed_is_shared():
    """lr 0.1 ran with seeds 0, 1 and lr 0.2 with seeds 2, 3: the 4 cross pairs."""
    pairs = robust.coupled_pairs({"lr": np.array([0.1, 0.1, 0.2, 0.2]),
                                  "seed": np.array([0, 1, 2, 3])})
    assert _pair_set(pairs) == {frozenset((i, j)) for i in (0, 1) for j in (2, 3)}
    assert not pairs.shared_seed.any()
    assert robust.coupled_pairs({"seed": np.arange(3)}).a.size == 0     # seeds only: none


def test_conditional_mutual_information_by_hand():
    """Six pairs, U = A for four and B for two, each pair counted in both orders.

    A: (sign Δc, sign Δg) = (+,+), (+,+), (+,+), (+,-); both orders: (+,+) 3, (-,-) 3,
    (+,-) 1, (-,+) 1 of 8; marginals 1/2 each. I_A = 2 (3/8) log2((3/8)/(1/4))
    + 2 (1/8) log2((1/8)/(1/4)) = (3/4) log2 1.5 - 1/4 = 0.4387218755 - 0.25 = 0.1887218755
    (= 1 - h(3/4)); H(V_g | A) = 1.
    B: (+,+), (-,+); both orders: (+,+), (-,-), (-,+), (+,-) once each: independent, I_B = 0,
    H(V_g | B) = 1.
    I(V_c; V_g | U) = (4/6) 0.1887218755 + (2/6) 0 = 0.1258145837; H(V_g | U) = 1.
    Unconditioned: both orders give (+,+) 4, (-,-) 4, (+,-) 2, (-,+) 2 of 12:
    I = (2/3) log2(4/3) + (1/3) log2(2/3) = 0.2766916723 - 0.1949875002 = 0.0817041659
    (= 1 - h(2/3)), lower than the conditioned value."""
    sign_c = np.array([1, 1, 1, 1, 1, -1.0])
    sign_g = np.array([1, 1, 1, -1, 1, 1.0])
    condition = np.array(["A", "A", "A", "A", "B", "B"])
    information, entropy = robust.conditional_mutual_information(sign_c, sign_g, condition)
    assert information == pytest.approx(0.12581458369391144, rel=1e-12)
    assert entropy == pytest.approx(1.0, rel=1e-12)
    information, entropy = robust.conditional_mutual_information(sign_c, sign_g,
                                                                 np.full(6, ""))
    assert information == pytest.approx(0.08170416594551044, rel=1e-12)
    assert entropy == pytest.approx(1.0, rel=1e-12)


def test_independent_signs_have_zero_cmi():
    """In each cell sign Δc is + for one pair of each sign Δg: (+,+), (+,-) give, in both
    orders, every combination once: I = 0 in each cell, H(V_g | U) = 1."""
    information, entropy = robust.conditional_mutual_information(
        np.array([1, 1, -1, -1.0]), np.array([1, -1, 1, -1.0]), np.array(["A", "A", "B", "B"]))
    assert information == pytest.approx(0.0, abs=1e-15)
    assert entropy == pytest.approx(1.0, rel=1e-12)


def test_perfectly_dependent_signs_have_cmi_equal_to_the_entropy_of_the_gap_sign():
    """V_c = V_g: I(V_c; V_g | U) = H(V_g | U). Cell A: (+,+), (+,+), (0,0): both orders give
    +, -, 0 two each, H = log2 3 = 1.5849625007; cell B: (-,-): H = 1. With p(A) = 3/4,
    H(V_g | U) = (3/4) log2 3 + 1/4 = 1.4387218755."""
    signs = np.array([1, 1, 0, -1.0])
    information, entropy = robust.conditional_mutual_information(
        signs, signs, np.array(["A", "A", "A", "B"]))
    assert entropy == pytest.approx(0.75 * math.log2(3) + 0.25, rel=1e-12)
    assert information == pytest.approx(entropy, rel=1e-12)


#: The gap of ``_two_by_two``'s runs, in binary fractions (exact differences).
GAP = np.array([0.125, 0.25, 0.1328125, 0.28125])

#: Its run coordinates without the seed.
GRID = {"lr": np.array([0.1, 0.2, 0.1, 0.2]), "batch_size": np.array([8, 8, 32, 32])}


def _two_by_two(attrs=None):
    """lr {0.1, 0.2} x batch {8, 32}, one seed. Gap (= test error: train accuracy 1):
    r0 (0.1, 8) 1/8, r1 (0.2, 8) 1/4, r2 (0.1, 32) 17/128, r3 (0.2, 32) 9/32; sharpness
    1, 2, 3, 1; mls 1, 3, 2, 4 (ordered as the gap)."""
    return _cube({"sharpness": [1.0, 2.0, 3.0, 1.0], "generalization_gap": GAP,
                  "train_acc": np.ones(4), "test_acc": 1 - GAP, "mls": [1.0, 3.0, 2.0, 4.0],
                  "train_loss": np.zeros(4)},
                 {**GRID, "seed": np.zeros(4)},
                 attrs)


#: The Hoeffding weight at n = 10 000 of |Δg| = 1/32 (r1, r3): n Δ^2 / 2 = 4.8828125,
#: psi = (1 - 2 e^-4.8828125)^2 = (1 - 0.0151513549)^2 = 0.9699268538, w = 0.4699268538.
W_13 = (1 - 2 * math.exp(-4.8828125)) ** 2 - 0.5


def test_sign_errors_environments_and_cmi_of_a_two_by_two_grid_by_hand():
    """Pairs, |Δg|, weight (n = 10 000), sign Δsharpness, sign Δg, sign-error:
    (r0, r1) lr at batch 8:    1/8,    w = 0.5 (e^-78 vanishes), +, +, 0
    (r2, r3) lr at batch 32:   19/128, w = 0.5 (e^-110 vanishes), -, +, 1
    (r0, r2) batch at lr 0.1:  1/128,  w = 0 (psi = 0),          +, +, 0
    (r1, r3) batch at lr 0.2:  1/32,   w = W_13 = 0.46993,       -, +, 1
    Weighted mean (0.5 + W_13) / (1 + W_13) = 0.6394; environments: lr @ batch 8: 0,
    lr @ batch 32: 1, batch @ lr 0.1: undefined (weight 0), batch @ lr 0.2: 1; worst 1, the
    first in sorted order on the tie; CDF over the three defined: 1/3 for 0, 1 for the 1s.
    CMI (sharpness, gap), pairs in both orders: unconditioned 2 of 4 concordant, I = 0;
    given lr (U = '0.1|0.2' for the two lr pairs, one concordant; '0.1' and '0.2' for the
    batch pairs, one each): I = (2/4) 0 + (1/4) 1 + (1/4) 1 = 0.5, H = 1, and the same given
    batch; given both, every pair alone: I = H = 1. Minimum 0, unconditioned.
    Sharpness against mls (weight 1 each): errors 0, 1, 0, 1, mean 0.5. mls against the gap
    (a measure ordered as the target): sign-error 0 in every environment, I/H = 1."""
    result = robust.robust_statistics(_two_by_two(), ("mls",), 10_000)
    sharp = result.sel(robust_measure="sharpness")
    gap = sharp.sel(robust_target="generalization_gap")
    assert float(gap["robust_sign_error"]) == pytest.approx((0.5 + W_13) / (1 + W_13),
                                                            rel=1e-12)
    assert float(gap["robust_weight_sum"]) == pytest.approx(1 + W_13, rel=1e-12)
    assert int(gap["robust_n_pairs"]) == 4
    envs = ["batch_size @ lr=0.1", "batch_size @ lr=0.2", "lr @ batch_size=32",
            "lr @ batch_size=8"]
    assert list(result["robust_environment"].values) == envs
    np.testing.assert_array_equal(gap["robust_environment_sign_error"], [np.nan, 1, 1, 0])
    np.testing.assert_array_equal(gap["robust_environment_cdf"], [np.nan, 1, 1, 1 / 3])
    np.testing.assert_array_equal(gap["robust_environment_ess"], [np.nan, 1, 1, 1])
    assert float(gap["robust_environment_weight"][1]) == pytest.approx(W_13, rel=1e-12)
    assert float(gap["robust_sign_error_worst"]) == 1.0
    assert str(gap["robust_worst_environment"].values) == "batch_size @ lr=0.2"
    assert str(gap["robust_sign_error_reason"].values) == ""
    assert list(result["robust_environment_axis"].values) == ["batch_size"] * 2 + ["lr"] * 2
    assert {frozenset(pair) for pair in zip(result["robust_pair_run_a"].values,
                                            result["robust_pair_run_b"].values)} == {
        frozenset(("r0", "r1")), frozenset(("r2", "r3")), frozenset(("r0", "r2")),
        frozenset(("r1", "r3"))}
    assert (result["robust_pair_shared_seed"] == 1).all()
    np.testing.assert_array_equal(np.sort(result["robust_pair_weight"].sel(
        robust_target="mls")), np.ones(4))
    # the test error equals the gap here (train accuracy 1): the same numbers
    test_error = sharp.sel(robust_target="test_error")
    for name in ("robust_sign_error", "robust_cmi_min"):
        assert float(test_error[name]) == pytest.approx(float(gap[name]), rel=1e-12)
    sets = list(result["robust_conditioning"].values)
    assert sets == ["none", "lr", "batch_size", "lr, batch_size"]
    np.testing.assert_allclose(gap["robust_cmi"], [0, 0.5, 0.5, 1], atol=1e-15)
    np.testing.assert_allclose(gap["robust_cmi_entropy"], [1, 1, 1, 1], rtol=1e-12)
    assert float(gap["robust_cmi_min"]) == pytest.approx(0, abs=1e-15)
    assert str(gap["robust_cmi_set"].values) == "none"
    assert float(sharp.sel(robust_target="mls")["robust_sign_error"]) == 0.5
    pairs = robust.coupled_pairs(GRID)
    mls_vs_gap = robust.cell(np.array([1.0, 3, 2, 4]), GAP, ("mls", "generalization_gap"),
                             np.ones(4), pairs, envs, robust.conditioning_sets(list(pairs.keys)),
                             None)
    assert mls_vs_gap.sign_error == 0.0 and mls_vs_gap.worst == 0.0
    np.testing.assert_array_equal(mls_vs_gap.environments[0], [0, 0, 0, 0])
    np.testing.assert_allclose(mls_vs_gap.cmi, np.ones((4, 2)), rtol=1e-12)
    assert mls_vs_gap.cmi_min == pytest.approx(1.0, rel=1e-12)


def test_the_robust_verdict_of_sharpness_mls_on_the_two_by_two_grid():
    """Sharpness against mls (weight 1 each): sign-errors 0 (lr @ batch 8), 1 (lr @ batch
    32), 0 (batch @ lr 0.1), 1 (batch @ lr 0.2); pooled 0.5, worst 1 at the first in sorted
    order, batch_size @ lr=0.2: not robust (1 > 1/4, 0.5 < 3/4)."""
    result = robust.robust_statistics(_two_by_two(), ("mls",), None)
    claim = next(c for c in claims.CLAIMS if c.name == "sharpness_mls")
    outcome = claims.robust_errors(claim, result)
    assert (outcome.sign_error, outcome.worst, outcome.environment, outcome.reason) == (
        0.5, 1.0, "batch_size @ lr=0.2", "")
    assert claims.robust_verdict(outcome, {}) == claims.NOT_ROBUST


def _half_fraction():
    """A half fraction of a 2^3 design: every two runs differ in two axes (no coupled pair)."""
    return _cube({"sharpness": [1.0, 2.0, 3.0, 4.0], "train_acc": np.ones(4),
                  "test_acc": [0.9, 0.8, 0.7, 0.6], "mls": [1.0, 2.0, 3.0, 4.0]},
                 {"lr": [0.1, 0.2, 0.1, 0.2], "batch_size": [8, 32, 32, 8],
                  "weight_decay": [0.0, 0.0, 1e-4, 1e-4]})


def test_not_tested_with_a_reason_never_an_error(tmp_path):
    """No coupled pairs (a half fraction of a 2^3 design: every two runs differ in two axes),
    a missing target, an unknown test-set size and a gap within test-set noise each give NaN
    and a reason; stats.nc still writes."""
    crossed = _half_fraction()
    result = robust.robust_statistics(crossed, ("mls", "log_lvr"), 10_000)
    assert result.sizes["robust_pair"] == 0
    assert np.isnan(result["robust_sign_error"]).all() and np.isnan(result["robust_cmi_min"]).all()
    assert set(result["robust_sign_error_reason"].values.ravel()) == {
        "not tested: no two healthy runs differ in exactly one hyperparameter (seed aside)",
        "not tested: log_lvr is not in the cube"}
    netcdf.write(result, tmp_path / "none.nc")
    assert netcdf.read(tmp_path / "none.nc").sizes["robust_pair"] == 0
    unknown = robust.robust_statistics(_two_by_two(), ("mls",), None)
    row = unknown.sel(robust_measure="sharpness", robust_target="test_error")
    assert np.isnan(float(row["robust_sign_error"]))
    assert str(row["robust_sign_error_reason"].values) == (
        "not tested: the test-set size is unknown (no Hoeffding weights)")
    assert float(row["robust_cmi_min"]) == pytest.approx(0, abs=1e-15)    # CMI is unweighted
    assert np.isnan(float(unknown["robust_pair_weight"].sel(robust_target="test_error")[0]))
    # n = 100: psi > 1/2 needs |Δg| > sqrt(2 ln(2 / (1 - 2^-1/2)) / 100) = 0.196, and every
    # |Δg| is at most 19/128 = 0.148
    noisy = robust.robust_statistics(_two_by_two(), (), 100)
    assert str(noisy["robust_sign_error_reason"].sel(
        robust_measure="sharpness", robust_target="generalization_gap").values) == (
        "not tested: every pair's Δgeneralization_gap is within test-set noise (weight 0 "
        "at n_test = 100)")
    lines = markdown.robust(noisy).splitlines()
    assert all(line.count("|") == 7 for line in lines)       # no reason breaks a table cell
    assert lines[2].startswith("| generalization_gap | — | — | 4 | 0 (none) | not tested: ")


def test_the_cdf_figure_with_and_without_coupled_pairs(tmp_path):
    """The two-by-two grid (sign-errors of every target but the gap and test error, unknown
    n) and the half fraction (no coupled pair: one panel with the reason) both write a PNG."""
    png = b"\x89PNG\r\n\x1a\n"
    figures.robust_cdf(robust.robust_statistics(_two_by_two(), ("mls",), None),
                       tmp_path / "pairs.png")
    unpaired = robust.robust_statistics(_half_fraction(), ("mls",), 10_000)
    assert set(unpaired["robust_sign_error_reason"].values.ravel()) == {
        "not tested: no two healthy runs differ in exactly one hyperparameter (seed aside)"}
    figures.robust_cdf(unpaired, tmp_path / "none.png")
    for name in ("pairs.png", "none.png"):
        assert (tmp_path / name).read_bytes()[:8] == png


def test_n_test_rows_reads_the_study_data_section():
    """CIFAR-10 classes 0 and 1: 1000 test images each; a cube without config: unknown."""
    config = json.dumps({"data": {"name": "cifar10", "classes": [0, 1]}})
    assert robust.n_test_rows(_two_by_two({"config": config})) == 2000
    assert robust.n_test_rows(_two_by_two()) is None


def test_study_statistics_summary_and_markdown_carry_the_robust_statistics(tmp_path):
    """The two-by-two grid through stats.study_statistics (test-set size from the config:
    CIFAR-10 classes 0-1, n = 2000), summary.json and summary.md."""
    config = json.dumps({"data": {"name": "cifar10", "classes": [0, 1]}})
    cube = _two_by_two({"config": config})
    for name in stats.PAIRED_MEASURES:
        cube[name] = cube["mls"]
    cfg = {"bootstrap": 20, "ci_level": 0.95, "seed": 0, "interpolation_loss": 0.2,
           "permutations": 20}
    result = stats.study_statistics(cube, _bounds({"ma_ying": np.ones(4) / 2},
                                                  {"ma_ying": np.ones(4)}), cfg)
    assert float(result["robust_test_set_size"]) == 2000
    assert result["robust_sign_error"].attrs["long_name"] == (
        "weighted mean sign-error over the coupled pairs")
    assert "definition" in result["robust_cmi_min"].attrs
    netcdf.write(result, tmp_path / "stats.nc")                     # as the stats job writes
    assert netcdf.read(tmp_path / "stats.nc")["robust_cmi_min"].attrs["long_name"] == (
        "normalised CMI, minimum over conditioning sets")
    # n = 2000: the batch pairs weigh 0 (|Δg| = 1/32: n Δ^2 / 2 = 0.9765625,
    # psi = (1 - 2 e^-0.9765625)^2 = (1 - 0.7532)^2 = 0.0609 < 1/2; |Δg| = 1/128 smaller);
    # the lr pairs just under 1/2: |Δg| = 1/8, n Δ^2 / 2 = 15.625, w_01 = 0.49999934;
    # |Δg| = 19/128, n Δ^2 / 2 = 22.03, w_23 = 0.5 - 1.1e-9.
    w_01 = (1 - 2 * math.exp(-2000 * (1 / 8) ** 2 / 2)) ** 2 - 0.5
    w_23 = (1 - 2 * math.exp(-2000 * (19 / 128) ** 2 / 2)) ** 2 - 0.5
    out = json.loads(json.dumps(stats.summary(result, cube)))
    assert out["robust_test_set_size"] == 2000
    row = out["robust"]["sharpness~generalization_gap"]
    # errors 0 (r0, r1) and 1 (r2, r3): weighted mean w_23 / (w_01 + w_23)
    assert row["sign_error"] == pytest.approx(w_23 / (w_01 + w_23), rel=1e-12)
    assert row["worst_sign_error"] == 1.0 and row["worst_environment"] == "lr @ batch_size=32"
    assert row["n_pairs"] == 4 and row["reason"] is None and row["cmi_reason"] is None
    assert row["cmi_min"] == pytest.approx(0, abs=1e-15) and row["cmi_conditioning"] == "none"
    assert out["robust"]["sharpness~mls"]["sign_error"] == 0.5
    assert set(out["robust"]) == {f"sharpness~{target}" for target in
                                  ("generalization_gap", "test_error", *stats.PAIRED_MEASURES)}
    table = markdown.robust(result).splitlines()
    assert len(table) == 2 + 2 + len(stats.PAIRED_MEASURES)
    assert table[2] == (f"| generalization_gap | {w_23 / (w_01 + w_23):.3g} | 1 "
                        "(lr @ batch_size=32) | 4 | 0 (none) | — |")
