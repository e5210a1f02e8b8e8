"""Regressions of log LHS on log RHS of a bound (statsmodels): OLS with a cluster-robust CI by
run, and a linear mixed model with a random intercept per run."""

from __future__ import annotations

import warnings

import numpy as np
import statsmodels.api as sm
from statsmodels.tools.sm_exceptions import ConvergenceWarning


def finite_logs(lhs: np.ndarray, rhs: np.ndarray) -> tuple[np.ndarray, np.ndarray,
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
    keep, log_lhs, log_rhs = finite_logs(lhs, rhs)
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
    keep, log_lhs, log_rhs = finite_logs(lhs, rhs)
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
