"""Statistics of the study: correlations with bootstrap CIs, regressions, violation rates.

* Correlations (Pearson — the paper's statistic —, Spearman, Kendall tau-b) of sharpness with
  each compression measure, with percentile-bootstrap CIs (resampling units) and scipy's
  p-values; across runs at the final checkpoint, and within each run over the checkpoints
  after its train loss falls below ``stats.interpolation_loss``.
* OLS of log LHS on log RHS for every bound (statsmodels), across runs at the final
  checkpoint, and pooled over interpolated checkpoints with run-clustered standard errors.
* Violation rate of every bound with an exact (Clopper-Pearson) binomial CI.
"""

from __future__ import annotations

import numpy as np
import scipy.stats
import statsmodels.api as sm
import xarray as xr

METHODS = ("pearson", "spearman", "kendall")
#: Sharpness is correlated with each of these run-level measures (mean over subset=train).
PAIRED_MEASURES = ("mls", "log_lvr", "nmls", "local_dim")


def correlation(x: np.ndarray, y: np.ndarray, method: str) -> tuple[float, float]:
    """(estimate, two-sided p-value) of one correlation coefficient."""
    if method == "pearson":
        result = scipy.stats.pearsonr(x, y)
    elif method == "spearman":
        result = scipy.stats.spearmanr(x, y)
    else:
        result = scipy.stats.kendalltau(x, y, variant="b")
    return float(result.statistic), float(result.pvalue)


def bootstrap_ci(x: np.ndarray, y: np.ndarray, method: str, n_boot: int, level: float,
                 rng: np.random.Generator) -> tuple[float, float]:
    """Percentile bootstrap CI of a correlation, resampling (x_i, y_i) pairs with replacement.

    Resamples in which x or y is constant (correlation undefined) are dropped.
    """
    n = len(x)
    estimates = []
    for idx in rng.integers(0, n, size=(n_boot, n)):
        xs, ys = x[idx], y[idx]
        if np.ptp(xs) > 0 and np.ptp(ys) > 0:
            estimates.append(correlation(xs, ys, method)[0])
    if len(estimates) < 0.5 * n_boot:
        return float("nan"), float("nan")
    alpha = (1 - level) / 2
    low, high = np.quantile(estimates, [alpha, 1 - alpha])
    return float(low), float(high)


def correlate(x: np.ndarray, y: np.ndarray, n_boot: int, level: float,
              rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Estimate, CI and p-value of every method for finite pairs; NaN when n < 3."""
    keep = np.isfinite(x) & np.isfinite(y)
    x, y = x[keep], y[keep]
    rows = {key: np.full(len(METHODS), np.nan) for key in ("estimate", "ci_low", "ci_high",
                                                            "p_value")}
    rows["n"] = np.full(len(METHODS), len(x))
    if len(x) < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return rows
    for k, method in enumerate(METHODS):
        rows["estimate"][k], rows["p_value"][k] = correlation(x, y, method)
        rows["ci_low"][k], rows["ci_high"][k] = bootstrap_ci(x, y, method, n_boot, level, rng)
    return rows


def run_level(cube: xr.Dataset, name: str) -> xr.DataArray:
    """A measure per run and step: scalars as they are, per-sample ones averaged over train."""
    values = cube[name]
    if "subset" in values.dims:
        values = values.sel(subset="train").mean("sample")
    return values


def healthy_runs(cube: xr.Dataset) -> xr.DataArray:
    """Runs that never diverged (the others are excluded from every statistic)."""
    return cube["diverged"].max("step") == 0


def across_runs(cube: xr.Dataset, n_boot: int, level: float, seed: int) -> xr.Dataset:
    """Correlations of sharpness with each measure across runs at the final checkpoint."""
    final = cube.isel(step=-1).where(healthy_runs(cube), drop=True)
    rng = np.random.default_rng(seed)
    x = run_level(final, "sharpness").values
    tables = [correlate(x, run_level(final, name).values, n_boot, level, rng)
              for name in PAIRED_MEASURES]
    return _correlation_dataset(tables, "across runs at the final checkpoint")


def within_runs(cube: xr.Dataset, threshold: float, n_boot: int, level: float,
                seed: int) -> xr.Dataset:
    """Correlations over time of sharpness with each measure, per run, after interpolation.

    Per run, every coefficient is computed over the checkpoints whose train loss is below
    ``threshold`` (at least 3 needed); the per-run coefficients are summarised by their mean
    with a percentile-bootstrap CI over runs.
    """
    rng = np.random.default_rng(seed)
    healthy = cube.where(healthy_runs(cube), drop=True)
    per_run = np.full((healthy.sizes["run"], len(PAIRED_MEASURES), len(METHODS)), np.nan)
    for r in range(healthy.sizes["run"]):
        run = healthy.isel(run=r)
        after = run["train_loss"].values < threshold
        x = run_level(run, "sharpness").values[after]
        for m, name in enumerate(PAIRED_MEASURES):
            y = run_level(run, name).values[after]
            ok = np.isfinite(x) & np.isfinite(y)
            if ok.sum() >= 3 and np.ptp(x[ok]) > 0 and np.ptp(y[ok]) > 0:
                per_run[r, m] = [correlation(x[ok], y[ok], method)[0] for method in METHODS]
    shape = (len(PAIRED_MEASURES), len(METHODS))
    mean, low, high, count = (np.full(shape, np.nan) for _ in range(4))
    for m, k in np.ndindex(*shape):
        values = per_run[:, m, k][np.isfinite(per_run[:, m, k])]
        count[m, k] = len(values)
        if len(values) >= 2:
            mean[m, k] = values.mean()
            boots = rng.choice(values, size=(n_boot, len(values))).mean(1)
            low[m, k], high[m, k] = np.quantile(boots, [(1 - level) / 2, (1 + level) / 2])
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


def _correlation_dataset(tables: list[dict], scope: str) -> xr.Dataset:
    dims = ("measure", "coefficient")
    data = {key: (dims, np.stack([table[key] for table in tables])) for key in tables[0]}
    ds = xr.Dataset(data, coords={"measure": list(PAIRED_MEASURES), "coefficient": list(METHODS)})
    ds.attrs["scope"] = scope
    return ds.rename({key: f"corr_{key}" for key in data})


def log_regression(lhs: np.ndarray, rhs: np.ndarray, groups: np.ndarray | None = None) -> dict:
    """OLS of log LHS on log RHS: slope, its 95% CI, intercept, R^2, n.

    With ``groups`` (the run of each checkpoint) the CI is cluster-robust by run; it is NaN
    when all points come from one run.
    """
    keep = np.isfinite(np.log(lhs)) & np.isfinite(np.log(rhs))
    out = {key: np.nan for key in ("slope", "slope_ci_low", "slope_ci_high", "intercept", "r2")}
    out["n"] = int(keep.sum())
    if keep.sum() < 3 or np.ptp(np.log(rhs[keep])) == 0:
        return out
    design = sm.add_constant(np.log(rhs[keep]))
    model = sm.OLS(np.log(lhs[keep]), design)
    clustered = groups is not None
    fit = (model.fit(cov_type="cluster", cov_kwds={"groups": groups[keep]})
           if clustered and len(np.unique(groups[keep])) >= 2 else model.fit())
    # Checkpoints of one run are not independent: with a single cluster no honest CI exists.
    low, high = ((np.nan, np.nan) if clustered and len(np.unique(groups[keep])) < 2
                 else fit.conf_int(0.05)[1])
    out.update(slope=fit.params[1], slope_ci_low=low, slope_ci_high=high,
               intercept=fit.params[0], r2=fit.rsquared)
    return out


def bound_statistics(bounds: xr.Dataset, cube: xr.Dataset, threshold: float,
                     level: float) -> xr.Dataset:
    """Violation rate (exact binomial CI), tightness and log-log regressions of every bound."""
    healthy = healthy_runs(cube)
    bounds = bounds.where(healthy, drop=True)
    names = list(bounds["bound"].values)
    rows: dict[str, list] = {}
    for name in names:
        b = bounds.sel(bound=name)
        holds = b["holds"].values
        evaluated = np.isfinite(holds)
        violations = int((holds[evaluated] == 0).sum())
        total = int(evaluated.sum())
        interval = scipy.stats.binomtest(violations, total).proportion_ci(level, "exact")
        final = b.isel(step=-1)
        after = b["train_loss"].values < threshold
        runs = np.broadcast_to(np.arange(b.sizes["run"])[:, None], after.shape)
        across = log_regression(final["lhs"].values, final["rhs"].values)
        pooled = log_regression(b["lhs"].values[after], b["rhs"].values[after], runs[after])
        row = {"violations": violations, "evaluated": total,
               "violation_rate": violations / total if total else np.nan,
               "violation_rate_ci_low": interval.low, "violation_rate_ci_high": interval.high,
               "tightness_median": float(np.nanmedian(b["tightness"].values)),
               "tightness_final_median": float(np.nanmedian(final["tightness"].values))}
        row.update({f"final_{key}": value for key, value in across.items()})
        row.update({f"interpolated_{key}": value for key, value in pooled.items()})
        for key, value in row.items():
            rows.setdefault(key, []).append(value)
    return xr.Dataset({key: ("bound", np.asarray(values, dtype=float))
                       for key, values in rows.items()}, coords={"bound": names})


def study_statistics(cube: xr.Dataset, bounds: xr.Dataset, stats_cfg: dict) -> xr.Dataset:
    """Every statistic of the study in one Dataset (written to stats.nc)."""
    n_boot, level, seed = stats_cfg["bootstrap"], stats_cfg["ci_level"], stats_cfg["seed"]
    threshold = stats_cfg["interpolation_loss"]
    ds = xr.merge([across_runs(cube, n_boot, level, seed),
                   within_runs(cube, threshold, n_boot, level, seed),
                   bound_statistics(bounds, cube, threshold, level)], compat="override",
                  combine_attrs="drop")
    ds.attrs.update({"ci_level": level, "bootstrap_resamples": n_boot, "bootstrap_seed": seed,
                     "interpolation_loss": threshold,
                     "n_runs": int(cube.sizes["run"]),
                     "n_diverged_runs": int((~healthy_runs(cube)).sum()),
                     "config": cube.attrs.get("config", "")})
    return ds


def summary(stats: xr.Dataset, cube: xr.Dataset) -> dict:
    """Headline numbers for ``summary.json`` (a DVC metric)."""
    final = cube.isel(step=-1).where(healthy_runs(cube), drop=True)
    out = {"n_runs": stats.attrs["n_runs"], "n_diverged_runs": stats.attrs["n_diverged_runs"],
           "final_train_loss_max": float(final["train_loss"].max()),
           "final_test_acc_mean": float(final["test_acc"].mean()),
           "correlation_across_runs": {}, "correlation_within_runs": {}, "bounds": {}}
    for measure in PAIRED_MEASURES:
        out["correlation_across_runs"][f"sharpness~{measure}"] = {
            method: {key: _number(stats[f"corr_{key}"].sel(measure=measure, coefficient=method))
                     for key in ("estimate", "ci_low", "ci_high", "p_value", "n")}
            for method in METHODS}
        out["correlation_within_runs"][f"sharpness~{measure}"] = {
            method: {key: _number(stats[f"within_run_corr_{key}"].sel(measure=measure,
                                                                       coefficient=method))
                     for key in ("mean", "ci_low", "ci_high")}
            for method in METHODS}
    for bound in stats["bound"].values:
        out["bounds"][str(bound)] = {
            key: _number(stats[key].sel(bound=bound))
            for key in ("violation_rate", "violation_rate_ci_low", "violation_rate_ci_high",
                        "tightness_final_median", "final_slope", "final_r2")}
    return out


def _number(value: xr.DataArray) -> float | None:
    """A JSON-safe float (None for NaN)."""
    number = float(value)
    return None if not np.isfinite(number) else number
