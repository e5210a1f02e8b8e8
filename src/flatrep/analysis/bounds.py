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

import json
from dataclasses import dataclass
from typing import Callable

import numpy as np
import xarray as xr

from flatrep.params import studies

#: Relative tolerance of "holds": the measures are float64 sums of O(1e5) terms, whose
#: round-off is ~1e-12 relative; 1e-9 leaves three orders of margin and cannot hide a real gap.
RTOL = 1e-9


#: ``kind`` of a bound: a theorem holds at every theta for the networks it names (a violation
#: is a bug); a conditional bound needs a state of training (interpolation, stability) or
#: compares quantities on different point sets, so its violations measure its assumptions.
THEOREM, CONDITIONAL = "theorem", "conditional"
#: Tolerance of the rank used by the rank bounds (the cube holds the whole sweep).
RANK_TOLERANCE = 1e-6


@dataclass(frozen=True)
class Assumption:
    """A checkable premise of a bound; ``holds(ds, interpolation_loss)`` is a boolean array
    over (run, step), ``ds`` a cube or the ``evaluate`` result (both carry train_loss, the
    run coordinates, ``layer_type`` and the config)."""
    name: str
    description: str
    holds: Callable[[xr.Dataset, float], xr.DataArray]


def _layer_types(cube: xr.Dataset) -> list[str]:
    return [str(t) for t in cube["layer_type"].values]


def _everywhere(cube: xr.Dataset, value: bool) -> xr.DataArray:
    return xr.full_like(cube["train_loss"], value, dtype=bool)


def hyperparameter(cube: xr.Dataset, name: str) -> xr.DataArray:
    """A training hyperparameter per run: its ``run`` coordinate when swept, else the study's
    ``train`` value (or ``flatrep.params.studies.TRAIN_DEFAULTS``) broadcast over runs."""
    if name in cube.coords:
        return cube[name]
    train = json.loads(cube.attrs["config"])["train"]
    return xr.full_like(cube["run"], train.get(name, studies.TRAIN_DEFAULTS.get(name)),
                        dtype=object if name == "optimizer" else float)


def _plain_sgd(cube: xr.Dataset) -> xr.DataArray:
    sgd = (hyperparameter(cube, "optimizer") == "sgd") & (hyperparameter(cube, "momentum") == 0)
    return sgd.broadcast_like(cube["train_loss"])


ASSUMPTIONS: dict[str, Assumption] = {a.name: a for a in [
    Assumption("dense_first_layer", "the first measured layer is nn.Linear, fed by x",
               lambda c, _t: _everywhere(c, _layer_types(c)[0] == "Linear")),
    Assumption("dense_layers", "every measured layer is nn.Linear (no conv surrogate)",
               lambda c, _t: _everywhere(c, set(_layer_types(c)) == {"Linear"})),
    Assumption("interpolation", "train loss below stats.interpolation_loss (at a minimum)",
               lambda c, t: c["train_loss"] < t),
    Assumption("plain_sgd", "trained by SGD without momentum", lambda c, _t: _plain_sgd(c)),
]}


def assumption_flags(ds: xr.Dataset, interpolation_loss: float) -> xr.DataArray:
    """Whether each assumption holds, dims (assumption, run, step)."""
    keep = ("run", "step")
    return xr.concat([a.holds(ds, interpolation_loss).drop_vars(
                          [n for n in ds.coords if n not in keep], errors="ignore")
                      for a in ASSUMPTIONS.values()], dim="assumption").assign_coords(
        assumption=list(ASSUMPTIONS)).transpose("assumption", "run", "step")


@dataclass(frozen=True)
class Bound:
    name: str
    lhs: Callable[[xr.Dataset], xr.DataArray]
    rhs: Callable[[xr.Dataset], xr.DataArray]
    statement: str
    assumptions: str
    equation: str
    kind: str = THEOREM
    #: names in ``ASSUMPTIONS`` this bound needs; its violations where one fails are
    #: attributed to it (``flatrep.analysis.stats``)
    requires: tuple[str, ...] = ()


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


def _singular_values(cube: xr.Dataset) -> int:
    """N = min(K, d), the number of singular values of the input Jacobian."""
    return min(int(cube.attrs["num_outputs"]), int(cube.attrs["input_dim"]))


def _lvr_sum_min(cube: xr.Dataset) -> xr.DataArray:
    """(||W_1||_2^2 n S / (N min_i ||x_i||^2))^N."""
    n_points, big_n = _train(cube, "input_norm").sizes["sample"], _singular_values(cube)
    min_sq = (_train(cube, "input_norm") ** 2).min("sample")
    scale = _first_layer_norm(cube) ** 2 * n_points * cube["sharpness"] / (big_n * min_sq)
    return scale ** big_n


def _lvr_geometric(cube: xr.Dataset) -> xr.DataArray:
    """(||W_1||_2^2 S / (N GM_i ||x_i||^2))^(N/2)."""
    big_n = _singular_values(cube)
    gm_sq = np.exp(_mean(np.log(_train(cube, "input_norm") ** 2)))
    return (_first_layer_norm(cube) ** 2 * cube["sharpness"] / (big_n * gm_sq)) ** (big_n / 2)


def _nvr(cube: xr.Dataset) -> xr.DataArray:
    """max_{i,l} (||W_l||_2^2 / (N ||h_l(x_i)||^2))^N (n S)^N."""
    n_points, big_n = _train(cube, "input_norm").sizes["sample"], int(cube.attrs["num_outputs"])
    ratio = cube["weight_spectral_norm"] ** 2 / (big_n * _train(cube, "layer_input_norm") ** 2)
    return ratio.max(("sample", "layer")) ** big_n * (n_points * cube["sharpness"]) ** big_n


def _first_width(cube: xr.Dataset) -> float:
    """m, the output width of the first layer of an MLP (NaN for other models)."""
    model = json.loads(cube.attrs["config"])["model"]
    return float(model["hidden"][0]) if model["name"] == "mlp" else np.nan


def _gauss_newton_rank_bound(cube: xr.Dataset) -> xr.DataArray:
    """N K for 1/2-MSE (M_i = I), N (K - 1) for cross-entropy."""
    form = "gauss_newton_c" if cube.attrs.get("loss", "mse") == "mse" else \
        "gauss_newton_c_minus_1"
    return cube["hessian_rank_bound"].sel(rank_bound=form)


def _rank(cube: xr.Dataset, name: str) -> xr.DataArray:
    return cube[name].sel(rank_tolerance=RANK_TOLERANCE)


def _harm(cube: xr.Dataset) -> xr.DataArray:
    """harm = (1/n) sum_i sum_l ||W_l||_2^2 / ||h_l(x_i)||^2 (inf where some h_l = 0)."""
    ratio = cube["weight_spectral_norm"] ** 2 / _train(cube, "layer_input_norm") ** 2
    return _mean(ratio.sum("layer"))


def _sgd_noise(cube: xr.Dataset) -> xr.DataArray:
    """p = (n - B) / (B (n - 1)), n the training-set size (0 for full-batch GD)."""
    n, batch = float(cube.attrs["train_size"]), hyperparameter(cube, "batch_size")
    return (n - batch) / (batch * (n - 1))


def _sgd_threshold_top(cube: xr.Dataset) -> xr.DataArray:
    """2 lambda / (lambda^2 + p spread) with lambda = c lambda_m, spread = c^2 spread_m, c the
    hessian_factor from the measure to the training convention."""
    factor = cube.attrs["hessian_factor"]
    top = factor * cube["hessian_lambda_max"]
    spread = factor ** 2 * cube["stability_rayleigh_spread"]
    return 2 * top / (top ** 2 + _sgd_noise(cube) * spread)


def _sgd_threshold_trace(cube: xr.Dataset) -> xr.DataArray:
    """2 Tr H / ((1 - p) ||H||_F^2 + p mean ||H_i||_F^2), training convention."""
    factor, p = cube.attrs["hessian_factor"], _sgd_noise(cube)
    trace = factor * cube["hessian_gauss_newton_trace"]
    spread = factor ** 2 * ((1 - p) * cube["hessian_fro"] ** 2
                            + p * cube["per_sample_hessian_fro_sq"])
    return 2 * trace / spread


def _cross_entropy_only(cube: xr.Dataset, values: xr.DataArray) -> xr.DataArray:
    """``values`` for a cross-entropy study, NaN (not evaluated) otherwise."""
    return values if cube.attrs.get("loss") == "cross_entropy" else values * np.nan


def _hessian_spectral_norm(cube: xr.Dataset) -> xr.DataArray:
    """||H||_2 = max(|lambda_max|, |lambda_min|) from the Lanczos Ritz values."""
    return np.maximum(abs(cube["hessian_lambda_max"]), abs(cube["hessian_lambda_min"]))


_DENSE_FIRST = ("dense_first_layer",)
_STABLE_SGD = ("plain_sgd", "interpolation")

REGISTRY: dict[str, Bound] = {bound.name: bound for bound in [
    Bound("ma_ying", lambda c: _mean(_train(c, "jacobian_fro_sq")),
          lambda c: _first_layer_norm(c) ** 2 / (_train(c, "input_norm") ** 2).min("sample")
          * c["sharpness"],
          "(1/n) sum_i ||J_i||_F^2 <= ||W_1||_2^2 / min_i ||x_i||^2 * S",
          "first layer dense and fed by x; holds for any theta (S is the GN trace)",
          "Ma & Ying 2021 Eq. 6 with k=2, vector output (B0)", requires=_DENSE_FIRST),
    Bound("mls_a_le_bprime", lambda c: _mean(_train(c, "mls")), _mls_b_prime,
          "A = (1/n) sum_i MLS(x_i) <= B'",
          "first layer dense and fed by x (lemma L1)",
          "Chen et al. Eq. (mls), chain step A<=B' (B4)", requires=_DENSE_FIRST),
    Bound("mls_bprime_le_c", _mls_b_prime, _mls_c, "B' <= C", "Cauchy-Schwarz over samples",
          "Chen et al. Eq. (mls), chain step B'<=C (B4)"),
    Bound("mls_c_le_d", _mls_c, _mls_d, "C <= D",
          "||grad_{W_1} f||_F^2 <= ||grad_theta f||_F^2", "Chen et al. Eq. (mls), step C<=D (B4)",
          requires=_DENSE_FIRST),
    Bound("mls", lambda c: _mean(_train(c, "mls")), _mls_d,
          "A = (1/n) sum_i MLS(x_i) <= D = ||W_1||_2 sqrt(mean ||x_i||^-2) sqrt(S)",
          "first layer dense and fed by x", "Chen et al. Eq. (mls), v3 Eq. 11 (B4)",
          requires=_DENSE_FIRST),
    Bound("nmls", lambda c: _mean(_train(c, "nmls")),
          lambda c: np.sqrt(c["sharpness"] * _harm(c)),
          "NMLS = (1/n) sum_i sum_l ||df/dh_l||_2 <= sqrt(S) sqrt(harm)",
          "every measured layer dense (Linear); heuristic for conv layers",
          "Chen et al. Eq. (nmls), v3 Eq. 12 / Prop. 3.10 (B5)", requires=("dense_layers",)),
    Bound("ma_ying_fro", lambda c: _mean(_train(c, "jacobian_fro_sq")),
          lambda c: c["weight_fro_norm"].isel(layer=0) ** 2
          / (_train(c, "input_norm") ** 2).min("sample") * c["sharpness"],
          "(1/n) sum_i ||J_i||_F^2 <= ||W_1||_F^2 / min_i ||x_i||^2 * S",
          "first layer dense and fed by x (looser than ma_ying: ||W||_2 <= ||W||_F)",
          "Ma & Ying 2021 Eq. 6, Frobenius form (B0)", requires=_DENSE_FIRST),
    Bound("lvr_sum_min", lambda c: np.exp(2 * _train(c, "log_lvr")).sum("sample"), _lvr_sum_min,
          "sum_i LVR(x_i)^2 <= (||W_1||_2^2 n S / (N min_i ||x_i||^2))^N, N = min(K, d)",
          "first layer dense and fed by x; per sample AM-GM (B1), then sum c_i^N <= (sum c_i)^N",
          "Chen et al. Eq. (main) / v3 Eq. 9, sum-min form (B2a)", requires=_DENSE_FIRST),
    Bound("lvr_geometric", lambda c: np.exp(_mean(_train(c, "log_lvr"))), _lvr_geometric,
          "GM_i LVR(x_i) <= (||W_1||_2^2 S / (N GM_i ||x_i||^2))^(N/2)",
          "first layer dense and fed by x; per sample AM-GM (B1), then Jensen on log",
          "Chen et al. Eq. (main), geometric-mean form the reviewers asked for (B2b)",
          requires=_DENSE_FIRST),
    Bound("nvr", lambda c: np.exp(2 * _train(c, "layer_log_lvr")).sum(("sample", "layer")), _nvr,
          "sum_i sum_l LVR_l(x_i)^2 <= max_{i,l} (||W_l||_2^2 / (N ||h_l(x_i)||^2))^N (n S)^N",
          "every layer dense with input width >= K (N = K singular values per layer)",
          "Chen et al. Eq. (nvol_bound), v3 Eq. 10 (B3)", requires=("dense_layers",)),
    Bound("relative_flatness_mls", lambda c: _mean(_train(c, "normalized_mls")),
          lambda c: c["relative_flatness_first"],
          "(1/n) sum_i ||x_i||^2 MLS(x_i)^2 <= kappa_Tr(W_1)",
          "interpolation (H = G) and the curvature points standing for the measurement points "
          "(kappa_Tr is measured on them, by Hutchinson)",
          "Chen et al. B6 via kappa_Tr(W_1) = (1/n) sum_i ||x_i||^2 ||J_i||_F^2", CONDITIONAL,
          ("dense_first_layer", "interpolation")),
    Bound("adaptive_sharpness_iimls", lambda c: _mean(_train(c, "iimls")),
          lambda c: _first_width(c) * c["adaptive_sharpness"],
          "(1/n) sum_i ||J_i x_i||^2 / d <= m Tr(D H D), m the first layer's width",
          "MLP; interpolation (diag H = diag G) and the curvature points standing for the "
          "measurement points", "Chen et al. B6, adaptive-sharpness candidate", CONDITIONAL,
          ("dense_layers", "interpolation")),
    Bound("rank_gauss_newton", lambda c: _rank(c, "gauss_newton_rank"), _gauss_newton_rank_bound,
          f"rank G (tolerance {RANK_TOLERANCE}) <= N K (mse) or N (K - 1) (cross-entropy)",
          "none (rank of a sum of N terms of rank <= rank M_i)",
          "Granziol, Flatness is a False Friend A.3 (exact GGN form)"),
    Bound("rank_hessian_layers", lambda c: _rank(c, "hessian_rank"),
          lambda c: c["hessian_rank_bound"].sel(rank_bound="layers_c_minus_1"),
          f"rank H (tolerance {RANK_TOLERANCE}) <= (K - 1) sum_l n_in,l",
          "Kronecker (GGN) argument; the residual term may add rank off interpolation; form "
          "UNCONFIRMED (the cube holds the other candidates)",
          "Granziol, Flatness is a False Friend A.3.2", CONDITIONAL, ("interpolation",)),
    Bound("linear_stability", lambda c: c.attrs["hessian_factor"] * c["hessian_lambda_max"],
          lambda c: 2.0 / hyperparameter(c, "lr"),
          "lambda_max of the training-loss Hessian <= 2 / lr",
          "the run has converged to a minimum SGD is stable at (necessary for SGD, Mulayoff & "
          "Michaeli 2023); plain SGD without momentum",
          "Ma & Ying 2021 Thm. 1 (full-batch case); Wu, Ma & E 2018", CONDITIONAL, _STABLE_SGD),
    Bound("sgd_stability_top", lambda c: hyperparameter(c, "lr"), _sgd_threshold_top,
          "lr <= 2 lambda / (lambda^2 + p (1/n) sum_i (v^T H_i v - lambda)^2), (lambda, v) the "
          "top eigenpair of the training-loss Hessian, p = (n - B) / (B (n - 1))",
          "a minimum SGD (batch B of n, no momentum) is stable at in mean square; H_i = G_i "
          "(interpolation); the curvature points stand for the n training points",
          "Mulayoff & Michaeli 2023 necessary condition (lambda_max form), restating Ma & Ying "
          "2021 Thm. 1", CONDITIONAL, _STABLE_SGD),
    Bound("sgd_stability_trace", lambda c: hyperparameter(c, "lr"), _sgd_threshold_trace,
          "lr <= 2 Tr H / ((1 - p) ||H||_F^2 + p (1/n) sum_i ||H_i||_F^2), training-loss "
          "Hessians, p = (n - B) / (B (n - 1))",
          "as sgd_stability_top; ||H||_F by Hutchinson (hessian_fro), Tr H the exact "
          "Gauss-Newton trace",
          "Mulayoff & Michaeli 2023 necessary condition (trace form)", CONDITIONAL, _STABLE_SGD),
    Bound("loss_trace", lambda c: c["hessian_gauss_newton_trace"],
          lambda c: _cross_entropy_only(c, 2 * c["loss_weighted_jacobian_sq"]),
          "Tr G <= (2/n) sum_i l_i ||J_i||_2^2 (logistic regression: Tr H <= (2/n) sum_i "
          "||x~_i||^2 l_i)",
          "cross-entropy (not evaluated for mse); any theta: ||M_i||_2 <= Tr M_i = 1 - ||p_i||^2 "
          "<= 2 (1 - p_iy) <= 2 l_i; Tr H = Tr G for logistic regression and ReLU networks",
          "Granziol, Flatness is a False Friend A2 (trace form)"),
    Bound("loss_spectral", _hessian_spectral_norm,
          lambda c: _cross_entropy_only(c, 2 * (c["loss_weighted_jacobian_sq"]
                                                + c["loss_weighted_output_curvature"])),
          "||H||_2 <= (2/n) sum_i l_i (||J_i||_2^2 + max_c ||grad^2_theta f_c(x_i)||_2)",
          "cross-entropy (not evaluated for mse); H = G + (1/n) sum_i sum_c (p_ic - y_ic) "
          "grad^2 f_c(x_i), ||p_i - y_i||_1 <= 2 l_i; Ritz values stand for the extreme "
          "eigenvalues (Lanczos residuals in the cube)",
          "Granziol, Flatness is a False Friend A2 (deep-network form)", CONDITIONAL),
]}


def _lvr_per_sample(cube: xr.Dataset) -> xr.DataArray:
    """(||W_1||_2^2 ||grad_{W_1} f(x)||_F^2 / (N ||x||^2))^(N/2) per sample."""
    big_n = _singular_values(cube)
    ratio = _first_layer_norm(cube) * _first_layer_grad(cube) / _train(cube, "input_norm")
    return (ratio ** 2 / big_n) ** (big_n / 2)


#: Per-sample bounds, evaluated at every training measurement point (dims run, step, sample).
SAMPLE_REGISTRY: dict[str, Bound] = {bound.name: bound for bound in [
    Bound("mls_per_sample", lambda c: _train(c, "mls"),
          lambda c: _first_layer_norm(c) * _first_layer_grad(c) / _train(c, "input_norm"),
          "MLS(x) <= ||J(x)||_F <= ||W_1||_2 ||grad_{W_1} f(x)||_F / ||x||",
          "first layer dense and fed by x (lemma L1)", "Chen et al. lemma L1, step T1 (B4)",
          requires=_DENSE_FIRST),
    Bound("lvr_per_sample", lambda c: np.exp(_train(c, "log_lvr")), _lvr_per_sample,
          "LVR(x) <= (||W_1||_2^2 ||grad_{W_1} f(x)||_F^2 / (N ||x||^2))^(N/2)",
          "first layer dense and fed by x; AM-GM on the N singular values",
          "Chen et al. Eq. 8 (B1)", requires=_DENSE_FIRST),
]}


def _per_run_step(values: xr.DataArray, template: xr.DataArray) -> xr.DataArray:
    """Shaped like ``template``, without the scalar coordinates left by selecting a subset, a
    layer, a rank tolerance or a rank form."""
    drop = ["subset", "layer", "layer_name", "layer_type", "rank_tolerance", "rank_bound"]
    values = values.drop_vars(drop, errors="ignore")
    return values.broadcast_like(template.drop_vars(drop, errors="ignore")).transpose(
        *template.dims)


def _side(function: Callable[[xr.Dataset], xr.DataArray], cube: xr.Dataset,
          template: xr.DataArray) -> xr.DataArray:
    """One side of a bound; all NaN (not evaluated) when the study did not measure one of its
    ingredients (a curvature family switched off)."""
    try:
        return _per_run_step(function(cube), template)
    except KeyError:
        return xr.full_like(template, np.nan)


def _sides(registry: dict[str, Bound], names: list[str], cube: xr.Dataset, dim: str):
    template = cube["sharpness"] if dim == "bound" else _train(cube, "mls")
    return (xr.concat([_side(side(registry[name]), cube, template) for name in names],
                      dim=dim).assign_coords({dim: names})
            for side in (lambda b: b.lhs, lambda b: b.rhs))


def _verdicts(lhs: xr.DataArray, rhs: xr.DataArray, prefix: str = "") -> dict:
    valid = np.isfinite(lhs) & ~np.isnan(rhs)
    return {
        f"{prefix}lhs": lhs.assign_attrs(long_name="left-hand side", units="1"),
        f"{prefix}rhs": rhs.assign_attrs(long_name="right-hand side", units="1"),
        f"{prefix}holds": (lhs <= rhs * (1 + RTOL)).where(valid).assign_attrs(
            long_name="LHS <= RHS * (1 + rtol)", units="1", rtol=RTOL,
            definition="1 holds, 0 violated, NaN not evaluable (diverged checkpoint)"),
        f"{prefix}tightness": (lhs / rhs).assign_attrs(long_name="tightness LHS/RHS",
                                                       units="1"),
    }


def _descriptions(registry: dict[str, Bound], names: list[str], dim: str) -> dict:
    fields = {field: (dim, [getattr(registry[n], field) for n in names])
              for field in ("kind", "statement", "assumptions", "equation")}
    fields["requires"] = (dim, [",".join(registry[n].requires) for n in names])
    return fields


def evaluate(cube: xr.Dataset, names: list[str] | None = None) -> xr.Dataset:
    """LHS, RHS, holds and tightness of each bound for every run and checkpoint, and of each
    per-sample bound (``sample_*`` variables, dim ``sample_bound``) for every training point."""
    names = list(REGISTRY) if names is None else names
    ds = xr.Dataset(_verdicts(*_sides(REGISTRY, names, cube, "bound")))
    ds = ds.assign_coords(_descriptions(REGISTRY, names, "bound"))
    sample_names = list(SAMPLE_REGISTRY)
    per_sample = xr.Dataset(_verdicts(*_sides(SAMPLE_REGISTRY, sample_names, cube,
                                              "sample_bound"), prefix="sample_"))
    per_sample = per_sample.assign_coords(
        {f"sample_{key}": value for key, value in
         _descriptions(SAMPLE_REGISTRY, sample_names, "sample_bound").items()})
    ds = xr.merge([ds, per_sample.drop_vars("sample_index", errors="ignore")],
                  compat="no_conflicts", join="exact")
    ds["train_loss"] = cube["train_loss"]
    ds = ds.assign_coords(layer_type=cube["layer_type"])
    ds.attrs.update({key: value for key, value in cube.attrs.items()})
    return ds
