"""Correlation coefficients with percentile-bootstrap CIs and permutation p-values.

* Pearson r, Spearman rho and Kendall tau-b (``coefficients``; tau-b as in scipy, computed
  for many resamples at once), scipy's p-values (``correlation``).
* Percentile-bootstrap CIs resampling units, within groups when given (``bootstrap_ci``,
  ``resample``), and permutation p-values (Phipson & Smyth 2010: (b + 1) / (m + 1)) permuting
  within groups (``permutation_p_value``, ``shuffle``); within-group residuals
  v_i - mean_g v (``centered``) for seed-only variation.
* Holm's step-down adjustment of a family of p-values (``holm``).
* +-inf stand-ins that keep ranks (``rank_stand_ins``), for log volumes of rank-deficient
  Jacobians.
* The granulated Kendall coefficient Psi of Jiang et al. 2020 (``granulated_kendall``).
"""

from __future__ import annotations

import numpy as np
import scipy.stats

METHODS = ("pearson", "spearman", "kendall")


#: Permutations of each permutation p-value when the params give no ``stats.permutations``.
DEFAULT_PERMUTATIONS = 2000


#: A permuted |r| counts as "at least as extreme" when >= |r_obs| (1 - _TIE_RTOL): a
#: permutation that reproduces the observed statistic must count even when float round-off
#: changes its last bits (~1e-16 relative); 1e-12 is far below any real difference.
_TIE_RTOL = 1e-12


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


def unit_groups(groups: np.ndarray | None, n: int) -> np.ndarray:
    """Group labels of n units; one group when ``groups`` is None."""
    return np.zeros(n, dtype=int) if groups is None else np.asarray(groups)


def centered(values: np.ndarray, groups: np.ndarray) -> np.ndarray:
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


def resample(groups: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Bootstrap indices drawn with replacement within each group (group sizes kept), group
    by group in sorted label order: ``groups[idx]`` is ``np.sort(groups)`` for every draw."""
    order = np.argsort(groups, kind="stable")
    ordered = groups[order]
    start = np.searchsorted(ordered, ordered, side="left")
    size = np.searchsorted(ordered, ordered, side="right") - start
    return order[start + (rng.random(len(groups)) * size).astype(int)]


def shuffle(groups: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A uniformly random permutation pi with groups[pi[i]] == groups[i] for every i."""
    permutation = np.empty(len(groups), dtype=int)
    permutation[np.argsort(groups, kind="stable")] = np.lexsort((rng.random(len(groups)),
                                                                 groups))
    return permutation


def percentile_ci(estimates: np.ndarray | list[float], n_boot: int,
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
    return percentile_ci(boots, n_boot, level)


def ratio_of_means(treated: np.ndarray, control: np.ndarray, n_boot: int, level: float,
                   rng: np.random.Generator) -> tuple[float, float, float]:
    """mean(treated) / mean(control) with a stratified percentile-bootstrap CI.

    Each resample draws len(treated) treated and len(control) control values with replacement
    (the arms' sizes kept, ``resample``) and takes the same ratio. A ratio whose control mean
    is not positive is undefined (NaN): the estimate then, and such resamples are dropped (the
    CI is NaN when fewer than half remain). Returns ``(estimate, ci_low, ci_high)``.
    """
    treated, control = np.asarray(treated, float), np.asarray(control, float)
    values = np.concatenate([control, treated])
    arm = np.repeat([0, 1], [len(control), len(treated)])
    draws = values[np.stack([resample(arm, rng) for _ in range(n_boot)])]
    boots = arm_mean_ratio(draws, len(control))
    return (float(arm_mean_ratio(values, len(control))), *percentile_ci(boots, n_boot, level))


def arm_mean_ratio(values: np.ndarray, n_control: int) -> np.ndarray:
    """mean(treated) / mean(control) along the last axis of ``values``, whose first
    ``n_control`` entries are the control arm's and the rest the treated arm's; NaN where the
    control mean is not positive."""
    top, bottom = values[..., n_control:].mean(-1), values[..., :n_control].mean(-1)
    return np.where(bottom > 0, top / np.where(bottom > 0, bottom, 1.0), np.nan)


def bootstrap_ci(x: np.ndarray, y: np.ndarray, method: str, n_boot: int, level: float,
                 rng: np.random.Generator,
                 groups: np.ndarray | None = None) -> tuple[float, float]:
    """Percentile bootstrap CI of a correlation, resampling (x_i, y_i) pairs with replacement.

    With ``groups`` the pairs are resampled within each group (stratified bootstrap) and each
    resample's statistic is the correlation of its within-group residuals (``centered``).
    Resamples in which x or y is constant (correlation undefined) are dropped.
    """
    groups = unit_groups(groups, len(x))
    draws = np.stack([resample(groups, rng) for _ in range(n_boot)])
    drawn_groups = np.sort(groups, kind="stable")
    estimates = coefficients(centered(x[draws], drawn_groups),
                             centered(y[draws], drawn_groups), method)
    return percentile_ci(estimates, n_boot, level)


def permutation_p_value(x: np.ndarray, y: np.ndarray, method: str, n_perm: int,
                        rng: np.random.Generator, groups: np.ndarray | None = None) -> float:
    """Two-sided Monte-Carlo permutation p-value of a correlation (Phipson & Smyth 2010, Eq. 2).

    p = (1 + #{b <= n_perm : |r(x, y_pi_b)| >= |r(x, y)|}) / (1 + n_perm), pi_b uniform random
    permutations; never 0, and valid (P(p <= a) <= a) under exchangeability. With ``groups``,
    r is the correlation of within-group residuals and pi_b permutes within groups (the
    residuals of a within-group permutation of y are the permuted residuals of y). NaN when
    x or y is constant.
    """
    groups = unit_groups(groups, len(x))
    xs, ys = centered(x, groups), centered(y, groups)
    observed = abs(coefficients(xs, ys, method))
    if not np.isfinite(observed):
        return float("nan")
    shuffled = ys[np.stack([shuffle(groups, rng) for _ in range(n_perm)])]
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


def usable_pairs(x: np.ndarray, y: np.ndarray, groups: np.ndarray,
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

    Pearson uses the finite pairs; Spearman and Kendall also those with +-inf (``usable_pairs``):
    a run whose log volume is -inf ranks below every other, while Pearson drops it (``n``
    says how many remain). NaN when n < 3. With ``groups``, every statistic is that of the
    within-group residuals of the groups with >= 2 finite pairs (a residual from an infinite
    value is undefined, so every method drops them), and the bootstrap and the permutations
    stay within groups.
    """
    grouped = groups is not None
    groups = unit_groups(groups, len(x))
    rows = {key: np.full(len(METHODS), np.nan)
            for key in ("estimate", "ci_low", "ci_high", "p_value", "p_perm")}
    rows["n"] = np.zeros(len(METHODS), dtype=int)
    for k, method in enumerate(METHODS):
        xk, yk, gk = usable_pairs(x, y, groups, infinite=method != "pearson" and not grouped)
        rows["n"][k] = len(xk)
        xs, ys = centered(xk, gk), centered(yk, gk)
        if len(xk) < 3 or np.ptp(xs) == 0 or np.ptp(ys) == 0:
            continue
        rows["estimate"][k], rows["p_value"][k] = correlation(xs, ys, method)
        rows["ci_low"][k], rows["ci_high"][k] = bootstrap_ci(xk, yk, method, n_boot, level, rng,
                                                             gk)
        rows["p_perm"][k] = permutation_p_value(xk, yk, method, n_perm, rng, gk)
    return rows


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
    out = {axis: _mean_tau(x, y, cells([v for k, v in hparams.items() if k != axis], len(x)))
           for axis in axes}
    defined = [value for value in out.values() if np.isfinite(value)]
    out["psi"] = float(np.mean(defined)) if defined else float("nan")
    return out


def _mean_tau(x: np.ndarray, y: np.ndarray, cells: np.ndarray) -> float:
    """Mean over cells of Kendall's tau of the cell's pairs (undefined taus left out)."""
    taus = [coefficients(x[cells == c], y[cells == c], "kendall") for c in np.unique(cells)]
    defined = [tau for tau in taus if np.isfinite(tau)]
    return float(np.mean(defined)) if defined else float("nan")


def cells(columns: list[np.ndarray], n: int) -> np.ndarray:
    """Integer label of each of n runs' combination of ``columns`` values (0 with none)."""
    keys = ["\x1f".join(str(column[i]) for column in columns) for i in range(n)]
    return np.unique(keys, return_inverse=True)[1]
