"""Statistics of the study: correlations with bootstrap CIs, regressions, violation rates.

This module assembles them into ``stats.nc`` and ``summary.json``; the coefficients, CIs and
p-values are computed by ``flatrep.analysis.correlations``, the regressions by
``flatrep.analysis.regressions``, on the cube views of ``flatrep.cube.views``.

* Correlations (Pearson — the paper's statistic —, Spearman, Kendall tau-b) of sharpness with
  each compression measure, with percentile-bootstrap CIs (resampling units), scipy's
  p-values and permutation p-values (Phipson & Smyth 2010); across runs at the final
  checkpoint (with Holm-adjusted p-values over the measure x coefficient family), within
  configurations (seed-only variation: residuals from the configuration means), and within
  each run over the checkpoints after its train loss falls below ``stats.interpolation_loss``.
* Granulated Kendall coefficient Psi (Jiang et al. 2020) across runs at the final checkpoint.
* OLS of log LHS on log RHS for every bound (statsmodels), across runs at the final
  checkpoint, and pooled over interpolated checkpoints with run-clustered standard errors; a
  mixed model with a random intercept per run on the same pooled checkpoints.
* Violation rate of every bound with an exact (Clopper-Pearson) binomial CI, over every
  evaluated point and over the points where the bound's assumptions hold; violations are
  attributed to the assumptions that failed where they occurred (``flatrep.analysis.bounds``).
* Paired bootstrap comparison of every bound with Ma & Ying's (tightness, Kendall tau).
* Dziugaite et al.'s robust sign-error (weighted mean and worst environment) and Jiang et
  al.'s conditional mutual information over coupled pairs of runs
  (``flatrep.analysis.robust``), of sharpness (and tr H, lambda_max where measured) against
  the generalisation gap, the test error and each paired measure.
* Whether sharpness, the compression measures and lambda_max depend on lr and B only through
  lr / B: the nested ANOVA of configurations within lines of equal lr / B, seeds as
  replicates (``flatrep.analysis.noise_scale``), variables ``ratio_*``.
"""

from __future__ import annotations

import json

import numpy as np
import scipy.stats
import xarray as xr

from flatrep.analysis.bounds import ASSUMPTIONS, assumption_flags
from flatrep.analysis.correlations import (DEFAULT_PERMUTATIONS, METHODS, bootstrap_mean_ci, cells,
                                           coefficients, correlate, correlation,
                                           granulated_kendall, holm, percentile_ci, unit_groups,
                                           usable_pairs)
from flatrep.analysis.late_phase import counts as late_phase_counts
from flatrep.analysis.late_phase import late_phase, phase_statistics
from flatrep.analysis.noise_scale import ratio_statistics
from flatrep.analysis.regressions import finite_logs, log_regression, mixed_regression
from flatrep.analysis.robust import n_test_rows, robust_statistics
from flatrep.cube.views import (diverged_runs, final_healthy, healthy_runs, hyperparameters,
                                run_level)

#: Sharpness is correlated with each of these run-level measures (mean over subset=train).
PAIRED_MEASURES = ("mls", "log_lvr", "log_lvr_top3", "nmls", "log_nvr", "local_dim")


#: Bound whose tightness and LHS-RHS rank agreement the others are compared with.
REFERENCE_BOUND = "ma_ying"


def across_runs(cube: xr.Dataset, n_boot: int, level: float, seed: int,
                n_perm: int) -> xr.Dataset:
    """Correlations of sharpness with each measure across runs at the final checkpoint.

    ``corr_p_holm`` and ``corr_p_perm_holm`` are Holm-adjusted over the family of all
    measure x coefficient cells.
    """
    final = final_healthy(cube)
    rng = np.random.default_rng(seed)
    x = run_level(final, "sharpness").values
    tables = [correlate(x, run_level(final, name).values, n_boot, level, rng, n_perm)
              for name in PAIRED_MEASURES]
    ds = _correlation_dataset(tables, "across runs at the final checkpoint", "corr")
    ds["corr_p_holm"] = _holm(ds["corr_p_value"])
    ds["corr_p_perm_holm"] = _holm(ds["corr_p_perm"])
    return ds


def _holm(p_values: xr.DataArray) -> xr.DataArray:
    """``holm`` over every cell of ``p_values`` (one family)."""
    return p_values.copy(data=holm(p_values.values))


def within_configs(cube: xr.Dataset, n_boot: int, level: float, seed: int,
                   n_perm: int) -> xr.Dataset:
    """Correlations of sharpness with each measure across seeds of one configuration.

    At the final checkpoint runs are grouped by every hyperparameter except ``seed``; per
    group, sharpness and the measure minus their group means (groups with < 2 runs dropped)
    are pooled and correlated, with a bootstrap resampling runs within configurations and a
    permutation p permuting within configurations. scipy's parametric p is not stored: it
    ignores the degrees of freedom spent on the group means. With few seeds per
    configuration the stratified bootstrap is narrow (a group of k runs keeps (k-1)/k of its
    variance in a resample), so the permutation p is the primary evidence.
    """
    final = final_healthy(cube)
    rng = np.random.default_rng(seed)
    hparams = hyperparameters(final)
    configs = cells([v for k, v in hparams.items() if k != "seed"], final.sizes["run"])
    x = run_level(final, "sharpness").values
    ys = [run_level(final, name).values for name in PAIRED_MEASURES]
    tables = [correlate(x, y, n_boot, level, rng, n_perm, configs) for y in ys]
    ds = _correlation_dataset(tables, "within configurations (seeds) at the final checkpoint",
                              "within_config_corr")
    ds = ds.drop_vars("within_config_corr_p_value")
    ds["within_config_n_configs"] = ("measure", [len(np.unique(usable_pairs(x, y, configs)[2]))
                                                 for y in ys])
    return ds


def within_runs(cube: xr.Dataset, threshold: float, n_boot: int, level: float,
                seed: int) -> xr.Dataset:
    """Correlations over time of sharpness with each measure, per run, after interpolation.

    Per run, every coefficient is computed over the checkpoints of its late phase
    (``flatrep.analysis.late_phase.late_phase``: at and after the first with train accuracy 1 and
    train loss below ``threshold``; at least 3 usable ones needed: Pearson's finite, the rank
    coefficients' with +-inf ranked as in ``correlate``); the per-run coefficients are
    summarised by their mean with a percentile-bootstrap CI over runs.
    """
    rng = np.random.default_rng(seed)
    healthy = cube.where(healthy_runs(cube), drop=True)
    per_run = np.full((healthy.sizes["run"], len(PAIRED_MEASURES), len(METHODS)), np.nan)
    late = late_phase(healthy, threshold).values
    for r in range(healthy.sizes["run"]):
        run, after = healthy.isel(run=r), late[r]
        x = run_level(run, "sharpness").values[after]
        for m, name in enumerate(PAIRED_MEASURES):
            y = run_level(run, name).values[after]
            for k, method in enumerate(METHODS):
                xk, yk, _ = usable_pairs(x, y, unit_groups(None, len(x)),
                                         infinite=method != "pearson")
                if len(xk) >= 3 and np.ptp(xk) > 0 and np.ptp(yk) > 0:
                    per_run[r, m, k] = correlation(xk, yk, method)[0]
    shape = (len(PAIRED_MEASURES), len(METHODS))
    mean, low, high, count = (np.full(shape, np.nan) for _ in range(4))
    for m, k in np.ndindex(*shape):
        values = per_run[:, m, k][np.isfinite(per_run[:, m, k])]
        count[m, k] = len(values)
        if len(values) >= 2:
            mean[m, k] = values.mean()
            low[m, k], high[m, k] = bootstrap_mean_ci(values, n_boot, level, rng)
    dims = ("measure", "coefficient")
    return xr.Dataset(
        {"within_run_corr": (("run",) + dims, per_run,
                             {"long_name": "correlation over checkpoints with train loss < "
                                           f"{threshold} of sharpness vs measure"}),
         "within_run_corr_mean": (dims, mean, {"long_name": "mean over runs"}),
         "within_run_corr_ci_low": (dims, low),
         "within_run_corr_ci_high": (dims, high),
         "within_run_n_runs": (dims, count)},
        coords={"run": healthy["run"].values, "measure": list(PAIRED_MEASURES),
                "coefficient": list(METHODS)})


def _correlation_dataset(tables: list[dict], scope: str, prefix: str) -> xr.Dataset:
    dims = ("measure", "coefficient")
    data = {f"{prefix}_{key}": (dims, np.stack([table[key] for table in tables]))
            for key in tables[0]}
    ds = xr.Dataset(data, coords={"measure": list(PAIRED_MEASURES), "coefficient": list(METHODS)})
    ds.attrs["scope"] = scope
    return ds


def granulated_statistics(cube: xr.Dataset, bounds: xr.Dataset) -> xr.Dataset:
    """Granulated Kendall psi_i and Psi at the final checkpoint across healthy runs.

    ``granulated_kendall`` (measure, axis): sharpness vs each paired measure;
    ``lhs_rhs_granulated_kendall`` (bound, axis): each bound's RHS vs its LHS.
    """
    final = final_healthy(cube)
    hparams = hyperparameters(final)
    final_bounds = bounds.where(healthy_runs(cube), drop=True).isel(step=-1)
    sharpness = run_level(final, "sharpness").values
    by_measure = [granulated_kendall(sharpness, run_level(final, name).values, hparams)
                  for name in PAIRED_MEASURES]
    by_bound = [granulated_kendall(b["rhs"].values, b["lhs"].values, hparams)
                for b in (final_bounds.sel(bound=name) for name in final_bounds["bound"].values)]
    return xr.merge([
        _granulated_dataset(by_measure, "measure", list(PAIRED_MEASURES), hparams,
                            "granulated_kendall"),
        _granulated_dataset(by_bound, "bound", list(final_bounds["bound"].values), hparams,
                            "lhs_rhs_granulated_kendall")])


def _granulated_dataset(rows: list[dict], dim: str, labels: list, hparams: dict,
                        name: str) -> xr.Dataset:
    """psi_i per (dim, axis) (NaN for axes with one value) and Psi per dim."""
    axes = list(hparams)
    return xr.Dataset(
        {name: ((dim, "axis"), [[row.get(axis, np.nan) for axis in axes] for row in rows],
                {"long_name": "granulated Kendall psi_i (Jiang et al. 2020)"}),
         f"{name}_psi": (dim, [row["psi"] for row in rows],
                         {"long_name": "granulated Kendall Psi = mean_i psi_i"})},
        coords={dim: labels, "axis": axes})


def violations(holds: np.ndarray, level: float) -> dict:
    """Violation count and rate of the evaluated entries of ``holds`` (1 holds, 0 violated,
    NaN not evaluated) with an exact (Clopper-Pearson) binomial CI."""
    evaluated = np.isfinite(holds)
    count = int((holds[evaluated] == 0).sum())
    total = int(evaluated.sum())
    if total == 0:   # e.g. the dense Hessian rank of a network above rank.dense_max_params
        return {"violations": 0, "evaluated": 0, "violation_rate": np.nan,
                "violation_rate_ci_low": np.nan, "violation_rate_ci_high": np.nan}
    interval = scipy.stats.binomtest(count, total).proportion_ci(level, "exact")
    return {"violations": count, "evaluated": total, "violation_rate": count / total,
            "violation_rate_ci_low": interval.low, "violation_rate_ci_high": interval.high}


def _nan_median(values: np.ndarray) -> float:
    """Median of the finite entries; NaN (no warning) when there are none."""
    finite = values[np.isfinite(values)]
    return float(np.median(finite)) if finite.size else np.nan


def holds_where_assumed(bounds: xr.Dataset, flags: xr.DataArray) -> xr.DataArray:
    """``bounds["holds"]`` with NaN (not evaluated) wherever one of the bound's own
    assumptions (its ``requires`` coordinate) fails; ``flags`` from ``assumption_flags``."""
    masks = [flags.sel(assumption=[a for a in str(required).split(",") if a]).all("assumption")
             for required in bounds["requires"].values]
    return bounds["holds"].where(xr.concat(masks, dim="bound").assign_coords(
        bound=bounds["bound"]))


def _bound_row(b: xr.Dataset, held: np.ndarray, flags: xr.DataArray, threshold: float,
               level: float) -> dict:
    """Every per-bound statistic of one bound's (run, step) values.

    ``held``: its ``holds`` where its assumptions hold (``holds_where_assumed``); ``flags``:
    ``assumption_flags`` of the same runs. The violation rate is given over every evaluated
    point and over the points where the bound's assumptions hold; ``violations_without_<a>``
    counts the violations at points where assumption ``a`` fails (which assumption a
    violation can be blamed on)."""
    final = b.isel(step=-1)
    after = b["train_loss"].values < threshold
    runs = np.broadcast_to(np.arange(b.sizes["run"])[:, None], after.shape)
    pooled = (b["lhs"].values[after], b["rhs"].values[after], runs[after])
    holds = b["holds"].values
    row = {**violations(holds, level),
           **{f"{key}_assumptions_met": value for key, value in violations(held, level).items()},
           **{f"violations_without_{name}": int((holds[~flags.sel(assumption=name).values]
                                                 == 0).sum())
              for name in flags["assumption"].values},
           "tightness_median": _nan_median(b["tightness"].values),
           "tightness_final_median": _nan_median(final["tightness"].values)}
    for prefix, fit in (("final", log_regression(final["lhs"].values, final["rhs"].values)),
                        ("interpolated", log_regression(*pooled)),
                        ("mixed", mixed_regression(*pooled))):
        row.update({f"{prefix}_{key}": value for key, value in fit.items()})
    return row


def bound_statistics(bounds: xr.Dataset, cube: xr.Dataset, threshold: float,
                     level: float) -> xr.Dataset:
    """Violation rate (exact binomial CI), tightness and log-log regressions of every bound.

    Regressions: ``final_*`` OLS across runs at the final checkpoint; ``interpolated_*`` OLS
    pooled over the checkpoints with train loss < ``threshold`` (run-clustered CI);
    ``mixed_*`` the mixed model with a random intercept per run on the same checkpoints.
    """
    bounds = bounds.where(healthy_runs(cube), drop=True)
    flags = assumption_flags(bounds, threshold)
    held = holds_where_assumed(bounds, flags)
    names = list(bounds["bound"].values)
    rows = [_bound_row(bounds.sel(bound=name), held.sel(bound=name).values, flags, threshold,
                       level) for name in names]
    return xr.Dataset({key: ("bound", np.asarray([row[key] for row in rows], dtype=float))
                       for key in rows[0]}, coords={"bound": names})


def _median_log_tightness(lhs: np.ndarray, rhs: np.ndarray) -> np.ndarray:
    """median over runs (the last axis) of log(LHS/RHS): 0 for an equality, higher is
    tighter."""
    return np.median(np.log(lhs / rhs), axis=-1)


def _lhs_rhs_kendall(lhs: np.ndarray, rhs: np.ndarray) -> np.ndarray:
    """Kendall tau-b of LHS and RHS across runs (the last axis)."""
    return coefficients(rhs, lhs, "kendall")


#: Statistics of a bound's (LHS, RHS) across runs compared between bounds, each along the
#: last axis (one value per bootstrap resample of runs).
_COMPARISONS = {"log_tightness": _median_log_tightness, "kendall": _lhs_rhs_kendall}


def paired_bound_comparison(bounds: xr.Dataset, n_boot: int, level: float,
                            rng: np.random.Generator,
                            reference: str = REFERENCE_BOUND) -> xr.Dataset:
    """Paired bootstrap comparison of every bound b with ``reference`` at the final checkpoint.

    Over the runs of ``bounds`` (pass the healthy ones) where both bounds have finite positive
    LHS and RHS: ``log_tightness_diff`` = median log(LHS/RHS)_b - median log(LHS/RHS)_ref
    (> 0: b is tighter) and ``kendall_diff`` = tau_b - tau_ref, tau the Kendall tau-b of LHS
    and RHS across runs. CIs: percentiles of the differences over resamples of runs drawn
    jointly for both bounds (paired); p = 2 min(P*(d <= 0), P*(d >= 0)) over the bootstrap
    differences d, floored at 1/n_boot and capped at 1. Variables ``vs_{reference}_*`` with
    dim bound, NaN for the reference itself.
    """
    final = bounds.isel(step=-1)
    names = [str(name) for name in final["bound"].values]
    ref = final.sel(bound=reference)
    rows = [_no_difference(0) if name == reference else
            _paired_difference(final.sel(bound=name), ref, n_boot, level, rng)
            for name in names]
    return xr.Dataset({f"vs_{reference}_{key}": ("bound", [row[key] for row in rows])
                       for key in rows[0]}, coords={"bound": names})


def _no_difference(n: int) -> dict:
    """A row of NaN comparisons over n runs."""
    row = {f"{name}_{key}": np.nan for name in _COMPARISONS
           for key in ("diff", "ci_low", "ci_high", "p")}
    row["n"] = n
    return row


def _paired_difference(b: xr.Dataset, ref: xr.Dataset, n_boot: int, level: float,
                       rng: np.random.Generator) -> dict:
    """Differences b - ref of every ``_COMPARISONS`` statistic with paired bootstrap CI and p."""
    keep = finite_logs(b["lhs"].values, b["rhs"].values)[0]
    keep &= finite_logs(ref["lhs"].values, ref["rhs"].values)[0]
    sides = [side.values[keep] for side in (b["lhs"], b["rhs"], ref["lhs"], ref["rhs"])]
    row = _no_difference(int(keep.sum()))
    if row["n"] < 3:
        return row
    draws = rng.integers(0, row["n"], size=(n_boot, row["n"]))
    for name, statistic in _COMPARISONS.items():
        boots = _difference(statistic, sides, draws)
        row[f"{name}_diff"] = float(_difference(statistic, sides, np.arange(row["n"])))
        row[f"{name}_ci_low"], row[f"{name}_ci_high"] = percentile_ci(boots, n_boot, level)
        row[f"{name}_p"] = _bootstrap_p(boots, n_boot)
    return row


def _difference(statistic, sides: list[np.ndarray], idx: np.ndarray) -> np.ndarray:
    """statistic(LHS_b, RHS_b) - statistic(LHS_ref, RHS_ref) over the runs ``idx`` (one set
    of runs, or a row of them per resample)."""
    b_lhs, b_rhs, ref_lhs, ref_rhs = (side[idx] for side in sides)
    return statistic(b_lhs, b_rhs) - statistic(ref_lhs, ref_rhs)


def _bootstrap_p(boots: np.ndarray, n_boot: int) -> float:
    """Two-sided bootstrap p of a difference: 2 min(P*(d <= 0), P*(d >= 0)) in [1/n_boot, 1].

    NaN when fewer than half of the resamples give a defined difference.
    """
    finite = boots[np.isfinite(boots)]
    if len(finite) < 0.5 * n_boot:
        return float("nan")
    p = 2 * min(np.mean(finite <= 0), np.mean(finite >= 0))
    return float(min(1.0, max(p, 1 / n_boot)))


def sample_bound_statistics(bounds: xr.Dataset, cube: xr.Dataset, level: float) -> xr.Dataset:
    """Violation rate over runs x checkpoints x training points of every per-sample bound
    (exact binomial CI) and its median tightness; variables ``sample_bound_*``."""
    if "sample_bound" not in bounds.dims:
        return xr.Dataset()
    bounds = bounds.where(healthy_runs(cube), drop=True)
    names = list(bounds["sample_bound"].values)
    rows = [{**violations(b["sample_holds"].values, level),
             "tightness_median": _nan_median(b["sample_tightness"].values)}
            for b in (bounds.sel(sample_bound=name) for name in names)]
    return xr.Dataset({f"sample_bound_{key}": ("sample_bound",
                                               np.asarray([row[key] for row in rows], float))
                       for key in rows[0]}, coords={"sample_bound": names})


def study_statistics(cube: xr.Dataset, bounds: xr.Dataset, stats_cfg: dict) -> xr.Dataset:
    """Every statistic of the study in one Dataset (written to stats.nc).

    Reads ``stats_cfg`` keys bootstrap, ci_level, seed, interpolation_loss and permutations
    (default ``DEFAULT_PERMUTATIONS``).
    """
    n_boot, level, seed = stats_cfg["bootstrap"], stats_cfg["ci_level"], stats_cfg["seed"]
    threshold = stats_cfg["interpolation_loss"]
    n_perm = int(stats_cfg.get("permutations", DEFAULT_PERMUTATIONS))
    healthy_bounds = bounds.where(healthy_runs(cube), drop=True)
    ds = xr.merge([across_runs(cube, n_boot, level, seed, n_perm),
                   within_configs(cube, n_boot, level, seed, n_perm),
                   within_runs(cube, threshold, n_boot, level, seed),
                   phase_statistics(cube.where(healthy_runs(cube), drop=True), threshold),
                   granulated_statistics(cube, bounds),
                   bound_statistics(bounds, cube, threshold, level),
                   sample_bound_statistics(bounds, cube, level),
                   paired_bound_comparison(healthy_bounds, n_boot, level,
                                           np.random.default_rng(seed))],
                  compat="override", combine_attrs="drop")
    # merged apart so that its variables keep their long_name and definition
    ds = ds.merge(robust_statistics(cube, PAIRED_MEASURES, n_test_rows(cube)))
    ds = ds.merge(ratio_statistics(cube, n_boot, level, n_perm, seed))
    ds.attrs.update({"ci_level": level, "bootstrap_resamples": n_boot, "bootstrap_seed": seed,
                     "permutations": n_perm, "interpolation_loss": threshold,
                     "n_runs": int(cube.sizes["run"]),
                     "n_diverged_runs": int((~healthy_runs(cube)).sum()),
                     "diverged_runs": json.dumps(diverged_runs(cube), sort_keys=True),
                     "config": cube.attrs.get("config", "")})
    return ds


#: Keys of the summary per correlation / per bound (stats.nc names without their prefix).
_ACROSS_KEYS = ("estimate", "ci_low", "ci_high", "p_value", "n", "p_perm", "p_holm",
                "p_perm_holm")


_WITHIN_CONFIG_KEYS = ("estimate", "ci_low", "ci_high", "p_perm", "n")


_BOUND_KEYS = ("violation_rate", "violation_rate_ci_low", "violation_rate_ci_high",
               "violations_assumptions_met", "evaluated_assumptions_met",
               "violation_rate_assumptions_met", "violation_rate_ci_high_assumptions_met",
               *(f"violations_without_{name}" for name in ASSUMPTIONS),
               "tightness_final_median", "final_slope", "final_r2", "mixed_slope",
               "mixed_slope_ci_low", "mixed_slope_ci_high", "lhs_rhs_granulated_kendall_psi")


def summary(stats: xr.Dataset, cube: xr.Dataset) -> dict:
    """Headline numbers for ``summary.json`` (a DVC metric)."""
    final = final_healthy(cube)
    out = {"n_runs": stats.attrs["n_runs"], "n_diverged_runs": stats.attrs["n_diverged_runs"],
           "final_train_loss_max": float(final["train_loss"].max()),
           "final_test_acc_mean": float(final["test_acc"].mean()),
           "correlation_across_runs": {}, "correlation_within_runs": {},
           "correlation_within_configs": {}, "granulated_kendall_psi": {}, "bounds": {}}
    for measure in PAIRED_MEASURES:
        pair = f"sharpness~{measure}"
        out["correlation_across_runs"][pair] = _per_method(stats, "corr", _ACROSS_KEYS,
                                                           measure, METHODS)
        out["correlation_within_runs"][pair] = _per_method(
            stats, "within_run_corr", ("mean", "ci_low", "ci_high"), measure, METHODS)
        out["correlation_within_configs"][pair] = _per_method(
            stats, "within_config_corr", _WITHIN_CONFIG_KEYS, measure, ("pearson", "kendall"))
        out["granulated_kendall_psi"][pair] = _number(
            stats["granulated_kendall_psi"].sel(measure=measure))
    vs_keys = [name for name in stats.data_vars if name.startswith(f"vs_{REFERENCE_BOUND}_")]
    for bound in stats["bound"].values:
        out["bounds"][str(bound)] = {key: _number(stats[key].sel(bound=bound))
                                     for key in (*_BOUND_KEYS, *vs_keys)}
    phase = late_phase_counts(stats)
    out["late_phase"] = {**phase, "final_over_peak_median": _number(
        phase["final_over_peak_median"])}
    out["per_sample_bounds"] = {
        str(bound): {key: _number(stats[f"sample_bound_{key}"].sel(sample_bound=bound))
                     for key in ("violation_rate", "violation_rate_ci_high", "evaluated",
                                 "tightness_median")}
        for bound in (stats["sample_bound"].values if "sample_bound" in stats.dims else [])}
    out["robust_test_set_size"] = _number(stats["robust_test_set_size"])
    out["robust"] = {f"{measure}~{target}": _robust_row(stats.sel(robust_measure=measure,
                                                                  robust_target=target))
                     for measure in stats["robust_measure"].values
                     for target in stats["robust_target"].values}
    out["lr_batch_ratio"] = {str(measure): _ratio_row(stats.sel(ratio_measure=measure))
                             for measure in stats["ratio_measure"].values}
    return out


#: Keys of the lr / B ratio decomposition per measure in summary.json (``ratio_<key>``).
_RATIO_KEYS = ("within_share", "ci_low", "ci_high", "p_perm", "f_within", "p_f_within", "f_across",
               "p_f_across", "noise_share")
_RATIO_COUNTS = ("n_runs", "n_excluded", "n_configs", "n_lines", "n_lines_informative")


def _ratio_row(row: xr.Dataset) -> dict:
    """One measure's nested ANOVA over lr / B lines for ``summary.json``: the within-line
    share with its CI and p-values, the F ratios, the counts, whether the seeds were blocks,
    and the reason (else None) where it is not tested."""
    return {**{key: _number(row[f"ratio_{key}"]) for key in _RATIO_KEYS},
            **{key: int(row[f"ratio_{key}"]) for key in _RATIO_COUNTS},
            "seed_blocks": bool(row["ratio_seed_blocks"]),
            "reason": str(row["ratio_reason"].values) or None}


def _robust_row(row: xr.Dataset) -> dict:
    """The robust sign-error and CMI of one (measure, target) for ``summary.json``; a
    reason (else None) where either is not tested."""
    def text(name: str) -> str | None:
        return str(row[name].values) or None

    return {"sign_error": _number(row["robust_sign_error"]),
            "worst_sign_error": _number(row["robust_sign_error_worst"]),
            "worst_environment": text("robust_worst_environment"),
            "n_pairs": int(row["robust_n_pairs"]),
            "cmi_min": _number(row["robust_cmi_min"]),
            "cmi_conditioning": text("robust_cmi_set"),
            "reason": text("robust_sign_error_reason"),
            "cmi_reason": text("robust_cmi_reason")}


def _per_method(stats: xr.Dataset, prefix: str, keys: tuple, measure: str,
                methods: tuple) -> dict:
    """{method: {key: stats[prefix_key] at (measure, method)}}."""
    return {method: {key: _number(stats[f"{prefix}_{key}"].sel(measure=measure,
                                                               coefficient=method))
                     for key in keys}
            for method in methods}


def _number(value: xr.DataArray) -> float | None:
    """A JSON-safe float (None for NaN)."""
    number = float(value)
    return None if not np.isfinite(number) else number
