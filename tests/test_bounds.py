"""The bound registry: every bound holds on real measured networks (they are theorems for
MLPs), and a violation is reported when one is fabricated."""

import numpy as np
import pytest

from flatrep import bounds


def test_every_theorem_holds_on_a_trained_mlp(measured_run):
    ds, _ = measured_run
    result = bounds.evaluate(ds)
    assert set(result["bound"].values) == set(bounds.REGISTRY)
    assert result["holds"].dims == ("bound", "run", "step")
    theorems = result.where(result["kind"] == bounds.THEOREM, drop=True)
    assert theorems.sizes["bound"] >= 11
    assert (theorems["holds"] == 1).all()
    assert ((theorems["tightness"] > 0) & (theorems["tightness"] <= 1 + bounds.RTOL)).all()
    conditional = result.where(result["kind"] == bounds.CONDITIONAL, drop=True)
    assert conditional["holds"].notnull().all()     # evaluated, whatever the verdict


def test_lvr_and_nvr_right_hand_sides_by_hand(measured_run):
    ds, _ = measured_run
    r = bounds.evaluate(ds).isel(run=0, step=-1)
    final = ds.isel(run=0, step=-1)
    train = final.sel(subset="train")
    n_sv = min(10, 40)                                     # K = 10 outputs, d = 40 inputs
    w1, sharp = float(final["weight_spectral_norm"][0]), float(final["sharpness"])
    x_sq = train["input_norm"].values ** 2
    geometric = (w1 ** 2 * sharp / (n_sv * np.exp(np.log(x_sq).mean()))) ** (n_sv / 2)
    assert float(r["rhs"].sel(bound="lvr_geometric")) == pytest.approx(geometric, rel=1e-10)
    assert float(r["lhs"].sel(bound="lvr_geometric")) == pytest.approx(
        np.exp(train["log_lvr"].values.mean()), rel=1e-10)
    sum_min = (w1 ** 2 * len(x_sq) * sharp / (n_sv * x_sq.min())) ** n_sv
    assert float(r["rhs"].sel(bound="lvr_sum_min")) == pytest.approx(sum_min, rel=1e-10)
    ratios = [float(final["weight_spectral_norm"][l]) ** 2
              / (10 * train["layer_input_norm"].values[:, l] ** 2) for l in range(3)]
    nvr = max(r.max() for r in ratios) ** 10 * (len(x_sq) * sharp) ** 10
    assert float(r["rhs"].sel(bound="nvr")) == pytest.approx(nvr, rel=1e-10)


def test_linear_stability_and_rank_bounds_by_hand(measured_run):
    ds, _ = measured_run
    r = bounds.evaluate(ds).isel(step=-1)
    final = ds.isel(step=-1)
    expected_lhs = 0.2 * final["hessian_lambda_max"]       # torch MSELoss Hessian: 2/K = 0.2
    np.testing.assert_allclose(r["lhs"].sel(bound="linear_stability"), expected_lhs)
    np.testing.assert_allclose(r["rhs"].sel(bound="linear_stability"), 2 / final["lr"])
    # 10 rank points x K = 10 outputs bound the Gauss-Newton rank of the 1/2-MSE loss
    assert (r["rhs"].sel(bound="rank_gauss_newton") == 100).all()
    # (K - 1) sum_l n_in,l = 9 (40 + 16 + 16) for the 40-16-16-10 MLP
    assert (r["rhs"].sel(bound="rank_hessian_layers") == 9 * 72).all()


def test_mls_chain_is_ordered(measured_run):
    ds, _ = measured_run
    r = bounds.evaluate(ds)
    a = r["lhs"].sel(bound="mls_a_le_bprime")
    bprime, c, d = (r["rhs"].sel(bound=name) for name in ("mls_a_le_bprime", "mls_bprime_le_c",
                                                           "mls_c_le_d"))
    assert (a <= bprime).all() and (bprime <= c).all() and (c <= d * (1 + 1e-12)).all()
    np.testing.assert_allclose(r["rhs"].sel(bound="mls"), d)


def test_ma_ying_rhs_by_hand(measured_run):
    ds, _ = measured_run
    r = bounds.evaluate(ds).isel(run=0, step=-1)
    final = ds.isel(run=0, step=-1)
    w1 = float(final["weight_spectral_norm"][0])
    x_norms = final["input_norm"].sel(subset="train").values
    expected = w1 ** 2 / x_norms.min() ** 2 * float(final["sharpness"])
    assert float(r["rhs"].sel(bound="ma_ying")) == pytest.approx(expected, rel=1e-12)
    assert float(r["lhs"].sel(bound="ma_ying")) == pytest.approx(
        float(final["jacobian_fro_sq"].sel(subset="train").mean()), rel=1e-12)


def test_a_fabricated_violation_is_reported(measured_run):
    ds, _ = measured_run
    broken = ds.copy(deep=True)
    broken["mls"][:] = broken["mls"] * 1e6  # sensitivities no network of this size can have
    result = bounds.evaluate(broken)
    assert (result["holds"].sel(bound="mls") == 0).all()
    assert (result["holds"].sel(bound="ma_ying") == 1).all()  # untouched inputs still hold


def test_per_sample_bounds_hold_at_every_point_and_match_the_lemma_by_hand(measured_run):
    ds, _ = measured_run
    r = bounds.evaluate(ds)
    assert r["sample_holds"].dims == ("sample_bound", "run", "step", "sample")
    assert (r["sample_holds"] == 1).all()
    final, at = ds.isel(run=0, step=-1), r.isel(run=0, step=-1, sample=3)
    train = final.sel(subset="train").isel(sample=3)
    w1 = float(final["weight_spectral_norm"][0])
    ratio = w1 * float(train["weight_grad_norm"][0]) / float(train["input_norm"])
    assert float(at["sample_rhs"].sel(sample_bound="mls_per_sample")) == pytest.approx(
        ratio, rel=1e-12)
    assert float(at["sample_rhs"].sel(sample_bound="lvr_per_sample")) == pytest.approx(
        (ratio ** 2 / 10) ** 5, rel=1e-10)
    broken = ds.copy(deep=True)
    broken["mls"][:] = broken["mls"] * 1e6
    assert (bounds.evaluate(broken)["sample_holds"].sel(sample_bound="mls_per_sample") == 0).all()
