"""Statistics of the study: correlations with bootstrap CIs, regressions, violation rates.

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
  attributed to the assumptions that failed where they occurred (``flatrep.bounds``).
* Paired bootstrap comparison of every bound with Ma & Ying's (tightness, Kendall tau).
"""

from __future__ import annotations

import json
import warnings

import numpy as np
import scipy.stats
import statsmodels.api as sm
import xarray as xr
from statsmodels.tools.sm_exceptions import ConvergenceWarning

from flatrep.bounds import ASSUMPTIONS, assumption_flags
from flatrep.late_phase import counts as late_phase_counts, late_phase, phase_statistics

METHODS = ("pearson", "spearman", "kendall")
#: Sharpness is correlated with each of these run-level measures (mean over subset=train).
PAIRED_MEASURES = ("mls", "log_lvr", "log_lvr_top3", "nmls", "log_nvr", "local_dim")
#: Permutations of each permutation p-value when the params give no ``stats.permutations``.
DEFAULT_PERMUTATIONS = 2000
#: A permuted |r| counts as "at least as extreme" when >= |r_obs| (1 - _TIE_RTOL): a
#: permutation that reproduces the observed statistic must count even when float round-off
#: changes its last bits (~1e-16 relative); 1e-12 is far below any real difference.
_TIE_RTOL = 1e-12
#: Bound whose tightness and LHS-RHS rank agreement the others are compared with.
REFERENCE_BOUND = "ma_ying"


def correlation(x: np.ndarray, y: np.ndarray, method: str) -> tuple[float, float]:
    """(estimate, two-sided p-value) of one correlation coefficient."""
    if method == "pearson":
        result = scipy.stats.pearsonr(x, y)
    elif method == "spearman":
        result = scipy.stats.spearmanr(x, y)
    else:
        result = scipy.stats.kendalltau(x, y, variant="b")
    return float(result.statistic), float(result.pvalue)


#: Elements of the sign-difference arrays Kendall's tau is computed over at a time.
_KENDALL_CHUNK = 1 << 22


def coefficients(x: np.ndarray, y: np.ndarray, method: str) -> np.ndarray:
    """Correlation coefficients of many samples at once, along the last axis: x and y of
    shape (..., n) give shape (...); NaN where n < 2 or a sample's x or y is constant.

    * pearson:  r = sum_i dx_i dy_i / sqrt(sum_i dx_i^2 sum_i dy_i^2), d = deviation from the
      sample mean (clipped to [-1, 1] against round-off, as scipy does);
    * spearman: rho = r of the mid-ranks (tied values share their mean rank);
    * kendall:  tau_b = sum_{i<j} sgn(x_i - x_j) sgn(y_i - y_j) / sqrt(n_x n_y), n_x (n_y) the
      pairs not tied in x (y) (Kendall 1945; scipy's ``kendalltau(variant="b")``).

    The same numbers as scipy's one-sample functions to rounding; the bootstrap and
    permutation loops call this once for all their resamples.
    """
    x, y = np.broadcast_arrays(np.asarray(x, dtype=float), np.asarray(y, dtype=float))
    if x.shape[-1] < 2:
        return np.full(x.shape[:-1], np.nan)[()]
    undefined = (np.ptp(x, axis=-1) == 0) | (np.ptp(y, axis=-1) == 0)
    if method == "kendall":
        values = _kendall_tau_b(x, y)
    else:
        if method == "spearman":
            x, y = scipy.stats.rankdata(x, axis=-1), scipy.stats.rankdata(y, axis=-1)
        dx, dy = x - x.mean(-1, keepdims=True), y - y.mean(-1, keepdims=True)
        with np.errstate(divide="ignore", invalid="ignore"):
            values = np.clip((dx * dy).sum(-1) / np.sqrt((dx * dx).sum(-1) * (dy * dy).sum(-1)),
                             -1.0, 1.0)
    return np.where(undefined, np.nan, values)[()]


def _kendall_tau_b(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """tau_b of ``coefficients`` from the n x n sign matrices of every sample (each pair
    counted twice in numerator and denominator alike), a chunk of samples at a time."""
    n = x.shape[-1]
    flat_x, flat_y = x.reshape(-1, n), y.reshape(-1, n)
    out = np.empty(len(flat_x))
    rows = max(1, _KENDALL_CHUNK // (n * n))
    for start in range(0, len(flat_x), rows):
        chunk = slice(start, start + rows)
        sx = np.sign(flat_x[chunk, :, None] - flat_x[chunk, None, :]).astype(np.int8)
        sy = np.sign(flat_y[chunk, :, None] - flat_y[chunk, None, :]).astype(np.int8)
        concordance = (sx * sy).sum((1, 2), dtype=np.int64)
        untied = np.abs(sx).sum((1, 2), dtype=np.int64) * np.abs(sy).sum((1, 2), dtype=np.int64)
        with np.errstate(divide="ignore", invalid="ignore"):
            out[chunk] = concordance / np.sqrt(untied.astype(float))
    return out.reshape(x.shape[:-1])


def _groups(groups: np.ndarray | None, n: int) -> np.ndarray:
    """Group labels of n units; one group when ``groups`` is None."""
    return np.zeros(n, dtype=int) if groups is None else np.asarray(groups)


def _centered(values: np.ndarray, groups: np.ndarray) -> np.ndarray:
    """Within-group residuals v_i - mean_{j in g(i)} v_j along the last axis of ``values``
    (shape (..., n); ``groups`` (n,) labels the units of every row alike).

    Computed as d_i - mean_g d with d_i = v_i - min_g v, so that a constant group gives
    exactly 0 (not round-off). With one group this is a shift, which leaves Pearson, Spearman
    and Kendall coefficients unchanged.
    """
    values = np.asarray(values, dtype=float)
    out = np.empty_like(values)
    for label in np.unique(groups):
        member = groups == label
        offset = values[..., member] - values[..., member].min(-1, keepdims=True)
        out[..., member] = offset - offset.mean(-1, keepdims=True)
    return out


def _resample(groups: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Bootstrap indices drawn with replacement within each group (group sizes kept), group
    by group in sorted label order: ``groups[idx]`` is ``np.sort(groups)`` for every draw."""
    order = np.argsort(groups, kind="stable")
    ordered = groups[order]
    start = np.searchsorted(ordered, ordered, side="left")
    size = np.searchsorted(ordered, ordered, side="right") - start
    return order[start + (rng.random(len(groups)) * size).astype(int)]


def _shuffle(groups: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A uniformly random permutation pi with groups[pi[i]] == groups[i] for every i."""
    permutation = np.empty(len(groups), dtype=int)
    permutation[np.argsort(groups, kind="stable")] = np.lexsort((rng.random(len(groups)),
                                                                 groups))
    return permutation


def _percentile_ci(estimates: np.ndarray | list[float], n_boot: int,
                   level: float) -> tuple[float, float]:
    """Percentile interval of the finite bootstrap estimates; NaN if < half are finite."""
    finite = np.asarray(estimates, dtype=float)
    finite = finite[np.isfinite(finite)]
    if len(finite) < 0.5 * n_boot:
        return float("nan"), float("nan")
    low, high = np.quantile(finite, [(1 - level) / 2, (1 + level) / 2])
    return float(low), float(high)


def bootstrap_mean_ci(values: np.ndarray, n_boot: int, level: float,
                      rng: np.random.Generator) -> tuple[float, float]:
    """Percentile-bootstrap CI of the mean of ``values`` (resampled with replacement)."""
    boots = rng.choice(values, size=(n_boot, len(values))).mean(1)
    return _percentile_ci(boots, n_boot, level)


def ratio_of_means(treated: np.ndarray, control: np.ndarray, n_boot: int, level: float,
                   rng: np.random.Generator) -> tuple[float, float, float]:
    """mean(treated) / mean(control) with a stratified percentile-bootstrap CI.

    Each resample draws len(treated) treated and len(control) control values with replacement
    (the arms' sizes kept, ``_resample``) and takes the same ratio. A ratio whose control mean
    is not positive is undefined (NaN): the estimate then, and such resamples are dropped (the
    CI is NaN when fewer than half remain). Returns ``(estimate, ci_low, ci_high)``.
    """
    def ratio(top: np.ndarray, bottom: np.ndarray) -> np.ndarray:
        bottom = np.asarray(bottom, dtype=float)
        return np.where(bottom > 0, top / np.where(bottom > 0, bottom, 1.0), np.nan)

    treated, control = np.asarray(treated, float), np.asarray(control, float)
    values = np.concatenate([control, treated])
    arm = np.repeat([0, 1], [len(control), len(treated)])
    draws = values[np.stack([_resample(arm, rng) for _ in range(n_boot)])]
    boots = ratio(draws[:, len(control):].mean(1), draws[:, :len(control)].mean(1))
    return (float(ratio(treated.mean(), control.mean())),
            *_percentile_ci(boots, n_boot, level))


def bootstrap_ci(x: np.ndarray, y: np.ndarray, method: str, n_boot: int, level: float,
                 rng: np.random.Generator,
                 groups: np.ndarray | None = None) -> tuple[float, float]:
    """Percentile bootstrap CI of a correlation, resampling (x_i, y_i) pairs with replacement.

    With ``groups`` the pairs are resampled within each group (stratified bootstrap) and each
    resample's statistic is the correlation of its within-group residuals (``_centered``).
    Resamples in which x or y is constant (correlation undefined) are dropped.
    """
    groups = _groups(groups, len(x))
    draws = np.stack([_resample(groups, rng) for _ in range(n_boot)])
    drawn_groups = np.sort(groups, kind="stable")
    estimates = coefficients(_centered(x[draws], drawn_groups),
                             _centered(y[draws], drawn_groups), method)
    return _percentile_ci(estimates, n_boot, level)


def permutation_p_value(x: np.ndarray, y: np.ndarray, method: str, n_perm: int,
                        rng: np.random.Generator, groups: np.ndarray | None = None) -> float:
    """Two-sided Monte-Carlo permutation p-value of a correlation (Phipson & Smyth 2010, Eq. 2).

    p = (1 + #{b <= n_perm : |r(x, y_pi_b)| >= |r(x, y)|}) / (1 + n_perm), pi_b uniform random
    permutations; never 0, and valid (P(p <= a) <= a) under exchangeability. With ``groups``,
    r is the correlation of within-group residuals and pi_b permutes within groups (the
    residuals of a within-group permutation of y are the permuted residuals of y). NaN when
    x or y is constant.
    """
    groups = _groups(groups, len(x))
    xs, ys = _centered(x, groups), _centered(y, groups)
    observed = abs(coefficients(xs, ys, method))
    if not np.isfinite(observed):
        return float("nan")
    shuffled = ys[np.stack([_shuffle(groups, rng) for _ in range(n_perm)])]
    hits = int((np.abs(coefficients(xs, shuffled, method)) >= observed * (1 - _TIE_RTOL)).sum())
    return (1 + hits) / (1 + n_perm)


def holm(p_values: np.ndarray) -> np.ndarray:
    """Holm-Bonferroni adjusted p-values (Holm 1979), same shape; NaNs stay NaN.

    With the m finite p-values sorted, p_(1) <= ... <= p_(m):
    p~_(k) = min(1, max_{j <= k} (m - j + 1) p_(j)); NaNs do not count in m.
    """
    p = np.asarray(p_values, dtype=float)
    adjusted = np.full(p.shape, np.nan)
    finite = np.isfinite(p)
    order = np.argsort(p[finite], kind="stable")
    m = len(order)
    steps = np.minimum(1.0, np.maximum.accumulate((m - np.arange(m)) * p[finite][order]))
    ranked = np.empty(m)
    ranked[order] = steps
    adjusted[finite] = ranked
    return adjusted


def rank_stand_ins(values: np.ndarray) -> np.ndarray:
    """``values`` with -inf replaced by a finite value below every finite one and +inf by one
    above every finite one (NaN kept): every rank, and so every Spearman and Kendall
    coefficient, is unchanged. A log volume is -inf where the Jacobian is numerically
    rank-deficient (volume exactly 0, below every finite one), so rank statistics keep it."""
    values = np.asarray(values, dtype=float)
    finite = values[np.isfinite(values)]
    low, high = (finite.min(), finite.max()) if len(finite) else (0.0, 0.0)
    out = np.where(values == -np.inf, low - (1.0 + abs(low)), values)
    return np.where(out == np.inf, high + (1.0 + abs(high)), out)


def _usable(x: np.ndarray, y: np.ndarray, groups: np.ndarray,
            infinite: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Finite pairs, restricted to the groups that keep at least two of them; with
    ``infinite`` also the pairs with +-inf, replaced by ``rank_stand_ins`` (for rank
    coefficients)."""
    keep = (~np.isnan(x) & ~np.isnan(y)) if infinite else (np.isfinite(x) & np.isfinite(y))
    _, inverse, counts = np.unique(groups[keep], return_inverse=True, return_counts=True)
    keep[keep] = counts[inverse] >= 2
    if infinite:
        return rank_stand_ins(x[keep]), rank_stand_ins(y[keep]), groups[keep]
    return x[keep], y[keep], groups[keep]


def correlate(x: np.ndarray, y: np.ndarray, n_boot: int, level: float,
              rng: np.random.Generator, n_perm: int,
              groups: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Estimate, bootstrap CI, scipy p-value, permutation p (``p_perm``) and the number of
    pairs used (``n``) of every method.

    Pearson uses the finite pairs; Spearman and Kendall also those with +-inf (``_usable``):
    a run whose log volume is -inf ranks below every other, while Pearson drops it (``n``
    says how many remain). NaN when n < 3. With ``groups``, every statistic is that of the
    within-group residuals of the groups with >= 2 finite pairs (a residual from an infinite
    value is undefined, so every method drops them), and the bootstrap and the permutations
    stay within groups.
    """
    grouped = groups is not None
    groups = _groups(groups, len(x))
    rows = {key: np.full(len(METHODS), np.nan)
            for key in ("estimate", "ci_low", "ci_high", "p_value", "p_perm")}
    rows["n"] = np.zeros(len(METHODS), dtype=int)
    for k, method in enumerate(METHODS):
        xk, yk, gk = _usable(x, y, groups, infinite=method != "pearson" and not grouped)
        rows["n"][k] = len(xk)
        xs, ys = _centered(xk, gk), _centered(yk, gk)
        if len(xk) < 3 or np.ptp(xs) == 0 or np.ptp(ys) == 0:
            continue
        rows["estimate"][k], rows["p_value"][k] = correlation(xs, ys, method)
        rows["ci_low"][k], rows["ci_high"][k] = bootstrap_ci(xk, yk, method, n_boot, level, rng,
                                                             gk)
        rows["p_perm"][k] = permutation_p_value(xk, yk, method, n_perm, rng, gk)
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


def diverged_runs(cube: xr.Dataset) -> dict[str, int | None]:
    """{run id: iteration at which it diverged} of the runs excluded from the statistics
    (``None`` where the cube has no ``diverged_at``)."""
    unhealthy = cube["run"].values[~healthy_runs(cube).values]
    return {str(run): (int(cube["diverged_at"].sel(run=run)) if "diverged_at" in cube
                       else None) for run in unhealthy}


def _final(cube: xr.Dataset) -> xr.Dataset:
    """The final checkpoint of the healthy runs."""
    return cube.isel(step=-1).where(healthy_runs(cube), drop=True)


def _hyperparameters(cube: xr.Dataset) -> dict[str, np.ndarray]:
    """The run coordinates (lr, batch_size, seed, ...): 1-D coordinates along ``run``."""
    return {str(name): coord.values for name, coord in cube.coords.items()
            if coord.dims == ("run",) and name != "run"}


def _cells(columns: list[np.ndarray], n: int) -> np.ndarray:
    """Integer label of each of n runs' combination of ``columns`` values (0 with none)."""
    keys = ["\x1f".join(str(column[i]) for column in columns) for i in range(n)]
    return np.unique(keys, return_inverse=True)[1]


def across_runs(cube: xr.Dataset, n_boot: int, level: float, seed: int,
                n_perm: int) -> xr.Dataset:
    """Correlations of sharpness with each measure across runs at the final checkpoint.

    ``corr_p_holm`` and ``corr_p_perm_holm`` are Holm-adjusted over the family of all
    measure x coefficient cells.
    """
    final = _final(cube)
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
    final = _final(cube)
    rng = np.random.default_rng(seed)
    hparams = _hyperparameters(final)
    configs = _cells([v for k, v in hparams.items() if k != "seed"], final.sizes["run"])
    x = run_level(final, "sharpness").values
    ys = [run_level(final, name).values for name in PAIRED_MEASURES]
    tables = [correlate(x, y, n_boot, level, rng, n_perm, configs) for y in ys]
    ds = _correlation_dataset(tables, "within configurations (seeds) at the final checkpoint",
                              "within_config_corr")
    ds = ds.drop_vars("within_config_corr_p_value")
    ds["within_config_n_configs"] = ("measure", [len(np.unique(_usable(x, y, configs)[2]))
                                                 for y in ys])
    return ds


def within_runs(cube: xr.Dataset, threshold: float, n_boot: int, level: float,
                seed: int) -> xr.Dataset:
    """Correlations over time of sharpness with each measure, per run, after interpolation.

    Per run, every coefficient is computed over the checkpoints of its late phase
    (``flatrep.late_phase.late_phase``: at and after the first with train accuracy 1 and train
    loss below ``threshold``; at least 3 usable ones needed: Pearson's finite, the rank
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
                xk, yk, _ = _usable(x, y, _groups(None, len(x)), infinite=method != "pearson")
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


def granulated_kendall(x: np.ndarray, y: np.ndarray,
                       hparams: dict[str, np.ndarray]) -> dict[str, float]:
    """Granulated Kendall coefficient of x and y (Jiang et al. 2020, "Fantastic generalization
    measures and where to find them", Sec. 2, psi_i and Psi) over runs with hyperparameters
    ``hparams`` (name -> value per run).

    For every axis i with more than one value: psi_i = (1/m_i) sum_c tau(c), c over the m_i
    cells of runs sharing the values of every other axis (seed is one more axis: Jiang et al.
    have one run per configuration), tau Kendall's tau-b of (x, y) over the cell's runs (= the
    paper's tau when there are no ties); pairs with a NaN are dropped and +-inf ranked
    (``rank_stand_ins``); cells with < 2 pairs or a constant x or y (tau undefined) are left
    out. Returns {axis: psi_i} and "psi": Psi = mean_i psi_i over
    the axes with a defined psi_i (NaN when none).
    """
    keep = ~np.isnan(x) & ~np.isnan(y)
    x, y = rank_stand_ins(x[keep]), rank_stand_ins(y[keep])
    hparams = {name: np.asarray(values)[keep] for name, values in hparams.items()}
    axes = [name for name, values in hparams.items() if len(np.unique(values)) > 1]
    out = {axis: _mean_tau(x, y, _cells([v for k, v in hparams.items() if k != axis], len(x)))
           for axis in axes}
    defined = [value for value in out.values() if np.isfinite(value)]
    out["psi"] = float(np.mean(defined)) if defined else float("nan")
    return out


def _mean_tau(x: np.ndarray, y: np.ndarray, cells: np.ndarray) -> float:
    """Mean over cells of Kendall's tau of the cell's pairs (undefined taus left out)."""
    taus = [coefficients(x[cells == c], y[cells == c], "kendall") for c in np.unique(cells)]
    defined = [tau for tau in taus if np.isfinite(tau)]
    return float(np.mean(defined)) if defined else float("nan")


def granulated_statistics(cube: xr.Dataset, bounds: xr.Dataset) -> xr.Dataset:
    """Granulated Kendall psi_i and Psi at the final checkpoint across healthy runs.

    ``granulated_kendall`` (measure, axis): sharpness vs each paired measure;
    ``lhs_rhs_granulated_kendall`` (bound, axis): each bound's RHS vs its LHS.
    """
    final = _final(cube)
    hparams = _hyperparameters(final)
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


def _finite_logs(lhs: np.ndarray, rhs: np.ndarray) -> tuple[np.ndarray, np.ndarray,
                                                              np.ndarray]:
    """(mask of the points with finite log LHS and log RHS, log LHS, log RHS)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        log_lhs, log_rhs = np.log(lhs), np.log(rhs)
    return np.isfinite(log_lhs) & np.isfinite(log_rhs), log_lhs, log_rhs


def log_regression(lhs: np.ndarray, rhs: np.ndarray, groups: np.ndarray | None = None) -> dict:
    """OLS of log LHS on log RHS: slope, its 95% CI, intercept, R^2, n.

    With ``groups`` (the run of each checkpoint) the CI is cluster-robust by run; it is NaN
    when all points come from one run.
    """
    keep, log_lhs, log_rhs = _finite_logs(lhs, rhs)
    out = {key: np.nan for key in ("slope", "slope_ci_low", "slope_ci_high", "intercept", "r2")}
    out["n"] = int(keep.sum())
    if keep.sum() < 3 or np.ptp(log_rhs[keep]) == 0:
        return out
    model = sm.OLS(log_lhs[keep], sm.add_constant(log_rhs[keep]))
    clustered = groups is not None
    fit = (model.fit(cov_type="cluster", cov_kwds={"groups": groups[keep]})
           if clustered and len(np.unique(groups[keep])) >= 2 else model.fit())
    # Checkpoints of one run are not independent: with a single cluster no honest CI exists.
    low, high = ((np.nan, np.nan) if clustered and len(np.unique(groups[keep])) < 2
                 else fit.conf_int(0.05)[1])
    out.update(slope=fit.params[1], slope_ci_low=low, slope_ci_high=high,
               intercept=fit.params[0], r2=fit.rsquared)
    return out


def mixed_regression(lhs: np.ndarray, rhs: np.ndarray, groups: np.ndarray) -> dict:
    """Linear mixed model log LHS_gc = a + b log RHS_gc + u_g + e_gc (statsmodels MixedLM, REML).

    u_g ~ N(0, s_u^2) is a random intercept per group (run), e_gc ~ N(0, s^2) per point
    (checkpoint). Returns slope b, its 95% Wald CI, p (Wald z-test of b = 0), n, n_groups and
    converged (1, or 0 when the optimizer reports no convergence or statsmodels warns
    ConvergenceWarning). NaN when < 3 points, < 2 groups, log RHS constant or the fit fails.
    """
    keep, log_lhs, log_rhs = _finite_logs(lhs, rhs)
    out = {key: np.nan for key in ("slope", "slope_ci_low", "slope_ci_high", "p", "converged")}
    out.update(n=int(keep.sum()), n_groups=len(np.unique(groups[keep])))
    if out["n"] < 3 or out["n_groups"] < 2 or np.ptp(log_rhs[keep]) == 0:
        return out
    try:
        fit, converged = _fit_mixed(log_lhs[keep], log_rhs[keep], groups[keep])
    except (np.linalg.LinAlgError, ValueError):
        return out
    low, high = fit.conf_int(0.05)[1]
    out.update(slope=fit.fe_params[1], slope_ci_low=low, slope_ci_high=high, p=fit.pvalues[1],
               converged=float(converged))
    return out


def _fit_mixed(y: np.ndarray, x: np.ndarray, groups: np.ndarray):
    """(MixedLM fit of y ~ 1 + x with a random intercept per group, whether it converged).

    ConvergenceWarnings are recorded into the flag; any other warning is re-issued.
    """
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConvergenceWarning)
        fit = sm.MixedLM(y, sm.add_constant(x), groups).fit()
    for warning in caught:
        if not issubclass(warning.category, ConvergenceWarning):
            warnings.warn_explicit(warning.message, warning.category, warning.filename,
                                   warning.lineno)
    warned = any(issubclass(warning.category, ConvergenceWarning) for warning in caught)
    return fit, bool(fit.converged) and not warned


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
    keep = _finite_logs(b["lhs"].values, b["rhs"].values)[0]
    keep &= _finite_logs(ref["lhs"].values, ref["rhs"].values)[0]
    sides = [side.values[keep] for side in (b["lhs"], b["rhs"], ref["lhs"], ref["rhs"])]
    row = _no_difference(int(keep.sum()))
    if row["n"] < 3:
        return row
    draws = rng.integers(0, row["n"], size=(n_boot, row["n"]))
    for name, statistic in _COMPARISONS.items():
        boots = _difference(statistic, sides, draws)
        row[f"{name}_diff"] = float(_difference(statistic, sides, np.arange(row["n"])))
        row[f"{name}_ci_low"], row[f"{name}_ci_high"] = _percentile_ci(boots, n_boot, level)
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
    final = _final(cube)
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
    return out


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
