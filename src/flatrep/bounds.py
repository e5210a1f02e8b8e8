"""The bounds under test: a registry with one small declarative entry per bound.

Each entry names its left- and right-hand sides as functions of the cube (per run and
checkpoint), its assumptions and the paper equation. ``evaluate`` gives, for every run x
checkpoint, LHS, RHS, whether LHS <= RHS (to a relative tolerance set by float64 round-off,
not tuned) and the tightness LHS/RHS. Formulas: shared/references/paper_chen2023.md §3.

Notation (the measurement points x_i of subset=train, n of them): J_i = df/dx(x_i);
W_l, h_l the weight and input of Linear layer l (l = 1 first); S the sharpness
(1/n) sum_i ||grad_theta f(x_i)||_F^2.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import xarray as xr

#: Relative tolerance of "holds": the measures are float64 sums of O(1e5) terms, whose
#: round-off is ~1e-12 relative; 1e-9 leaves three orders of margin and cannot hide a real gap.
RTOL = 1e-9


@dataclass(frozen=True)
class Bound:
    name: str
    lhs: Callable[[xr.Dataset], xr.DataArray]
    rhs: Callable[[xr.Dataset], xr.DataArray]
    statement: str
    assumptions: str
    equation: str


def _train(cube: xr.Dataset, name: str) -> xr.DataArray:
    return cube[name].sel(subset="train")


def _mean(values: xr.DataArray) -> xr.DataArray:
    return values.mean("sample")


def _first_layer_norm(cube: xr.Dataset) -> xr.DataArray:
    return cube["weight_spectral_norm"].isel(layer=0)


def _first_layer_grad(cube: xr.Dataset) -> xr.DataArray:
    return _train(cube, "weight_grad_norm").isel(layer=0)


def _quad(cube: xr.Dataset) -> xr.DataArray:
    """sqrt((1/n) sum_i ||x_i||^-2)."""
    return np.sqrt(_mean(_train(cube, "input_norm") ** -2.0))


def _mls_b_prime(cube: xr.Dataset) -> xr.DataArray:
    """B' = ||W_1||_2 (1/n) sum_i ||grad_{W_1} f(x_i)||_F / ||x_i||."""
    return _first_layer_norm(cube) * _mean(_first_layer_grad(cube) / _train(cube, "input_norm"))


def _mls_c(cube: xr.Dataset) -> xr.DataArray:
    """C = ||W_1||_2 sqrt(mean ||x_i||^-2) sqrt(mean ||grad_{W_1} f(x_i)||_F^2)."""
    return _first_layer_norm(cube) * _quad(cube) * np.sqrt(_mean(_first_layer_grad(cube) ** 2))


def _mls_d(cube: xr.Dataset) -> xr.DataArray:
    """D = ||W_1||_2 sqrt(mean ||x_i||^-2) sqrt(S)."""
    return _first_layer_norm(cube) * _quad(cube) * np.sqrt(cube["sharpness"])


def _harm(cube: xr.Dataset) -> xr.DataArray:
    """harm = (1/n) sum_i sum_l ||W_l||_2^2 / ||h_l(x_i)||^2 (inf where some h_l = 0)."""
    ratio = cube["weight_spectral_norm"] ** 2 / _train(cube, "layer_input_norm") ** 2
    return _mean(ratio.sum("layer"))


REGISTRY: dict[str, Bound] = {bound.name: bound for bound in [
    Bound("ma_ying", lambda c: _mean(_train(c, "jacobian_fro_sq")),
          lambda c: _first_layer_norm(c) ** 2 / (_train(c, "input_norm") ** 2).min("sample")
          * c["sharpness"],
          "(1/n) sum_i ||J_i||_F^2 <= ||W_1||_2^2 / min_i ||x_i||^2 * S",
          "first layer dense and fed by x; holds for any theta (S is the GN trace)",
          "Ma & Ying 2021 Eq. 6 with k=2, vector output (B0)"),
    Bound("mls_a_le_bprime", lambda c: _mean(_train(c, "mls")), _mls_b_prime,
          "A = (1/n) sum_i MLS(x_i) <= B'",
          "first layer dense and fed by x (lemma L1)", "Chen et al. Eq. (mls), chain step A<=B' (B4)"),
    Bound("mls_bprime_le_c", _mls_b_prime, _mls_c, "B' <= C", "Cauchy-Schwarz over samples",
          "Chen et al. Eq. (mls), chain step B'<=C (B4)"),
    Bound("mls_c_le_d", _mls_c, _mls_d, "C <= D",
          "||grad_{W_1} f||_F^2 <= ||grad_theta f||_F^2", "Chen et al. Eq. (mls), step C<=D (B4)"),
    Bound("mls", lambda c: _mean(_train(c, "mls")), _mls_d,
          "A = (1/n) sum_i MLS(x_i) <= D = ||W_1||_2 sqrt(mean ||x_i||^-2) sqrt(S)",
          "first layer dense and fed by x", "Chen et al. Eq. (mls), v3 Eq. 11 (B4)"),
    Bound("nmls", lambda c: _mean(_train(c, "nmls")),
          lambda c: np.sqrt(c["sharpness"] * _harm(c)),
          "NMLS = (1/n) sum_i sum_l ||df/dh_l||_2 <= sqrt(S) sqrt(harm)",
          "every measured layer dense (Linear); heuristic for conv layers",
          "Chen et al. Eq. (nmls), v3 Eq. 12 / Prop. 3.10 (B5)"),
]}


def _per_run_step(values: xr.DataArray) -> xr.DataArray:
    """Drop the scalar coordinates left by selecting a subset or a layer."""
    return values.drop_vars(["subset", "layer", "layer_name"], errors="ignore")


def evaluate(cube: xr.Dataset, names: list[str] | None = None) -> xr.Dataset:
    """LHS, RHS, holds and tightness of each bound for every run and checkpoint."""
    names = list(REGISTRY) if names is None else names
    lhs, rhs = (xr.concat([_per_run_step(side(REGISTRY[name])(cube)) for name in names],
                          dim="bound").assign_coords(bound=names)
                for side in (lambda b: b.lhs, lambda b: b.rhs))
    valid = np.isfinite(lhs) & ~np.isnan(rhs)
    holds = (lhs <= rhs * (1 + RTOL)).where(valid)
    ds = xr.Dataset({
        "lhs": lhs.assign_attrs(long_name="left-hand side", units="1"),
        "rhs": rhs.assign_attrs(long_name="right-hand side", units="1"),
        "holds": holds.assign_attrs(long_name="LHS <= RHS * (1 + rtol)", units="1",
                                    rtol=RTOL, definition="1 holds, 0 violated, NaN not "
                                    "evaluable (diverged checkpoint)"),
        "tightness": (lhs / rhs).assign_attrs(long_name="tightness LHS/RHS", units="1"),
    })
    ds = ds.assign_coords(
        statement=("bound", [REGISTRY[n].statement for n in names]),
        assumptions=("bound", [REGISTRY[n].assumptions for n in names]),
        equation=("bound", [REGISTRY[n].equation for n in names]))
    ds["train_loss"] = cube["train_loss"]
    ds.attrs.update({key: value for key, value in cube.attrs.items()})
    return ds
