"""The bound registry: every bound holds on real measured networks (they are theorems for
MLPs), and a violation is reported when one is fabricated."""

import numpy as np
import pytest

from flatrep import bounds


def test_every_bound_holds_on_a_trained_mlp(measured_run):
    ds, _ = measured_run
    result = bounds.evaluate(ds)
    assert set(result["bound"].values) == set(bounds.REGISTRY)
    assert result["holds"].dims == ("bound", "run", "step")
    assert (result["holds"] == 1).all()
    assert ((result["tightness"] > 0) & (result["tightness"] <= 1 + bounds.RTOL)).all()


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
