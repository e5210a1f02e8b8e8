"""The claims of the three papers, each given a statistic and a verdict by a rule fixed in
advance.

A claim states a direction: ``positive`` / ``negative`` (an association, Kendall tau-b with a
percentile-bootstrap CI and a permutation or signed-rank p-value), ``none`` (no association),
``nonpositive`` (no positive association), ``bound`` (a violation rate with an exact binomial
CI), ``band`` (a ratio of arm means with a stratified bootstrap CI,
``correlations.ratio_of_means``) or ``ratio_only`` (the within-line share of a nested ANOVA
over lines of equal lr / B, below). The verdict rule reads ``stats.claims`` in params.yaml (written
before the data are seen):

* positive / negative: *supported* when the Holm-adjusted p < ``alpha``, the CI excludes 0 on
  the claimed side and |estimate| >= ``min_effect``; *contradicted* when the same holds on
  the other side; otherwise *inconclusive*.
* none: *supported* when the CI lies inside (-``margin``, ``margin``); *contradicted* when an
  association is established (as above, either side); otherwise *inconclusive*.
* nonpositive: *contradicted* when a positive association is established (as above);
  otherwise *supported* when the CI's upper end < ``margin``; otherwise *inconclusive*.
* bound: *supported* when the CI's upper end <= ``max_violation_rate``; *contradicted* when
  its lower end exceeds it; otherwise *inconclusive*.
* band: *supported* when the CI lies inside ``ratio_band`` = [low, high]; *contradicted* when
  it lies wholly outside (above high or below low); otherwise *inconclusive*.
* *not tested* when the study has no data for the claim (e.g. no weight-decay variation).

**Robust verdict** (beside the tau verdict, which it leaves unchanged). A claim "flatter => X"
across runs, with sharpness S as the measure and a target that ``flatrep.analysis.robust``
covers (``Claim.robust`` = (measure, target): the five compression claims ``sharpness_mls``,
``sharpness_lvr``, ``sharpness_nmls``, ``sharpness_nvr``, ``sharpness_lvr_top3``), is also
judged on Dziugaite et al.'s sign-errors over the coupled pairs (the ``robust_*`` variables of
stats.nc). The sign-errors are taken in the claim's direction: for ``positive``, e as robust.py
defines it (e = 0: the pair's order by S is its order by X); for ``negative``, 1 - e, so the
pooled error becomes 1 - E and the worst environment 1 - min_e E_e. With
t = ``robust_max_sign_error``:

* *supported* when the worst environment's sign-error is <= t: in every environment with
  weight, the pairs agree with the claimed direction at least (1 - t) : t;
* *contradicted* when the pooled weighted sign-error is >= 1 - t: over all pairs the opposite
  direction holds as strongly;
* otherwise *not robust*; *not tested*, with robust.py's reason, where it has no sign-error
  (no coupled pairs, a variable missing, every weight 0).

Dziugaite et al. read sign-errors against chance, 1/2. t = 1/4 (the default) asks for a clear
margin over chance in the worst environment, halfway between perfect agreement and chance: an
environment of two pairs that split (E = 1/2) fails it, one of four with a single reversal
passes. flatrep's environments hold few pairs (their effective sample sizes are reported), so a
threshold nearer 1/2 would let one or two pairs decide; one nearer 0 would fail a measure for a
single reversed pair among many. Contradiction is read on the pooled error because the worst
environment of the opposite direction is the best environment of the claim's: one environment
should not overturn a claim, the pairs as a whole should. For t < 1/2 the two cannot both hold
(the pooled error is a weighted mean of the environments'). Full disclosure: t was set after
the quick study's pooled and worst sign-errors had been computed (they are in the commit log
that added them); the reasoning above does not use them. Claims of other directions
(``none``: no association has no direction to take a sign-error in; ``nonpositive``) and
other measures have no robust verdict (*not applicable*, "—" in the table): the claims on the
generalisation gap are ``nonpositive`` (raw lambda_max) or on lambda_max ||theta||^2, which
robust.py does not pair, and no claim pairs sharpness with test accuracy.

**Measurement-aware verdict** (issue "measurement error carried into the verdict"). The CIs above
resample runs as if each run's numbers were exact; every one of them is an estimate (a mean over
measurement points, a Hutchinson mean over probes, a Ritz value, a frequency over test rows).
Each association claim and each ratio of arm means also gets the CI of the same statistic under
the two-stage bootstrap of ``flatrep.analysis.measurement_error`` (runs resampled, then every
number drawn from its error model), and the verdict that this CI gives under the same rules, with
the same estimate and Holm p (the permutation p already treats the run-level numbers as
observed). Bound claims count violations point by point and have none (*not applicable*). With
``stats.claims.measurement_error``:

* ``flag`` (the default): the headline verdict reads the run-level CI; a supported or
  contradicted verdict that the measurement-aware CI does not give is marked *only without
  measurement error*;
* ``verdict``: the headline verdict reads the measurement-aware CI (the run-level verdict stands
  beside it, and the mark is the same).

The table gives both CIs and the widening (``claim_ci_widening``): the measurement-aware CI's
width over that of the run-level CI on the same resamples of runs, so that it measures
measurement error alone. The two-stage interval
errs wide (``measurement_error``: the within-run variance is counted twice), so the mark says a
verdict *may* hinge on measurement error, and a verdict without it does not.

**lr / B ratio verdict** (``lr_batch_ratio_<measure>``, direction ``ratio_only``). "The
measure depends on lr and B only through lr / B" (Jastrzębski et al. 2017; Kaur et al. 2023
for lambda_max) is judged on ``flatrep.analysis.noise_scale``'s nested ANOVA of the final
checkpoint (configurations (lr, B) nested in lines of equal lr / B; seeds as blocks where
every configuration ran every seed, else as independent replicates; the log of sharpness, MLS,
NMLS, lambda_max, the log volumes as they are): the estimate is the within-line share of the
between-configuration sum of squares, SS_within / (SS_within + SS_across), with a
percentile-bootstrap CI resampling seeds (as blocks, or within configurations); p is the
within-line permutation p of F_within = MS_within / MS_residual (runs permuted among the
configurations of their line, and seed), Holm-adjusted in the study's family. With
s = ``ratio_max_within_share`` (default 0.05):

* *supported* when the CI's upper end <= s: the configuration means vary inside lines by at
  most a share s of their whole variation (the bootstrap adds seed noise, so the CI leans
  upwards: the rule errs against support);
* *contradicted* when the Holm p < ``alpha`` (the within-line spread exceeds what seed noise
  gives) and the CI's lower end > s;
* otherwise *inconclusive* (also when the measure hardly varies with lr or B at all: seed noise
  alone then gives a share near (C - L) / (C - 1));
* *not tested*, with noise_scale's reason, where the study has no lr and batch-size
  coordinates, varies another hyperparameter besides the seed, has fewer than 2 lines or no
  line of >= 2 configurations, no seed replicates, or lacks the measure.

On a balanced log grid with centred lines (lr {a, 2a, 4a} x B {b, 2b, 4b}) a mean
alpha log lr + beta log B has share (alpha + beta)^2 / ((alpha + beta)^2 + (alpha - beta)^2):
s = 0.05 admits exponents with beta / alpha between -1.6 and -0.63 (lr / B^0.63 to
lr / B^1.6), and rules out lr alone or B alone (share 1/2) and sqrt scaling lr^2 / B (1/10).
The rule and s were written down before any run of the ``lr_batch_ratio`` study had finished
(the study was started after they were in params.yaml). Full disclosure: the seed blocks were
added to the statistic after the study's per-run final values had been seen (not any ratio
statistic of them): they showed one seed sharper than another in every configuration, which
left in the residual would have hidden within-line differences; the rule and s were not
changed. No rounding band is applied (``fragile``: the bands measured are in units of tau, not
of a share).

A verdict is marked *fragile* when moving its estimate, CI ends and Holm p by as much as
rounding moves them (``stats.claims.rounding``, measured on two runs of the study that differ
only in floating-point rounding) could change it (``fragile``).

Holm's correction runs over the p-values of every tested association claim of the study
(bound and band claims have none).

The catalogue follows reference ``paper_granziol_mayin.md`` §D: A3 (weight decay: lambda_max,
tr H, ||H||_F larger, ||theta|| smaller, test accuracy higher), A4 (Adam/AdamW + iterate
averaging sharper than SGD by tau, and "30x" as a ratio of arm means inside ``ratio_band``;
eval-mode and BatchNorm-train-mode Hessians), A5 (scale-normalised sharpness lambda_max
||theta||^2 predicts the generalisation gap, raw lambda_max does not; both gaps of §C.9),
A6 (rank bound), B1 (the Hessian tends to its Gauss-Newton part G as an MSE fit
interpolates: ||H - G||_F / ||H||_F falls with the train loss within runs) and B5 (Ma & Ying's
implicit Sobolev regularisation: g_x rises with g_W; test accuracy falls with g_x). B5's "a larger
lr or a smaller batch lowers tr H and g_W" is ``lr_flatter`` / ``batch_flatter``: g_W(1)^2 = mean_i
||J_i||_F^2 is the sharpness S itself (for every loss; the Hessian trace at an MSE interpolation up
to its factor), so a g_W twin would count one test twice in Holm's family. A2 and B2-B4 are bounds
of ``flatrep.analysis.bounds`` with their own violation statistics in stats.nc.

Chen et al.'s volume claims are judged on two log volumes: ``log_lvr`` sums the logs of all
K singular values of the input Jacobian (the LVR of the theorem), ``log_lvr_top3`` the top 3
(the "log volume" the authors plot, reference ``paper_chen2023.md``); the two can disagree in
sign. Their trajectory claims (Fig. 1/2) are judged within runs over the late phase
(``flatrep.analysis.late_phase``): ``late_sharpness_falls`` (tau of the iteration with S) and
``late_<measure>_follows`` (tau of S with MLS, each log volume and NMLS), with local
dimensionality's "not bounded" form ``late_local_dim_unbounded``.

Granziol's comparisons of arms by Kendall tau (weight decay; Adam/AdamW + iterate averaging
vs SGD) are made twice, on the same statistic and verdict rule, differing only in the
checkpoint read per run (``Checkpoint``); the "30x" ratios only at the end of training:

* at the end of training (``l2_*``, ``adam_ia_sharper*``, ``adam_ia_generalises``): every
  run's final checkpoint;
* at equal train loss (the same names + ``_equal_loss``), because arms that end at different
  train losses are not comparable (the Hessian measures fall with the loss level). Over the
  runs the statistic compares (all runs for weight decay; the two arms' runs for Adam + IA),
  the common level is L* = max over runs of (min over the run's checkpoints of train_loss),
  the lowest level every run reaches; by construction every run reaches it (the run setting
  L* at its minimum). Each run is read at its first checkpoint in step order with
  train_loss <= L*; the measure there (as at the end of training)
  enters the same Kendall tau. Checkpoints are discrete and nothing is interpolated between
  them, so the chosen checkpoints' train losses are <= L*, not equal to it (the claim's note
  gives L*, their range and the steps chosen). Non-finite train losses never qualify a
  checkpoint; a run with none finite is left out (noted). Diverged runs are already out of the
  evidence. ``equal_loss_checkpoints`` computes L* and the checkpoints.
"""

from __future__ import annotations

import functools
import itertools
from dataclasses import dataclass, replace
from typing import Callable

import numpy as np
import scipy.stats
import xarray as xr

from flatrep.analysis import (bounds, correlations, late_phase, measurement_error,
                              noise_scale, robust, stats, table_text)
from flatrep.cube import views

SUPPORTED, CONTRADICTED = "supported", "contradicted"
INCONCLUSIVE, NOT_TESTED = "inconclusive", "not tested"
NOT_ROBUST, NOT_APPLICABLE = "not robust", "not applicable"

#: ``stats.claims.robust_max_sign_error`` where params.yaml leaves it out (module docstring).
ROBUST_MAX_SIGN_ERROR = 0.25

#: ``stats.claims.measurement_error`` where params.yaml leaves it out: the headline verdict
#: reads the run-level CI, the measurement-aware verdict stands beside it (module docstring).
MEASUREMENT_ERROR = "flag"

#: The direction of the lr / B ratio claims and ``stats.claims.ratio_max_within_share`` where
#: params.yaml leaves it out (module docstring).
RATIO_ONLY, RATIO_MAX_WITHIN_SHARE = "ratio_only", 0.05


@dataclass(frozen=True)
class Outcome:
    estimate: float
    ci_low: float
    ci_high: float
    p: float
    n: int
    note: str = ""
    measured_low: float = np.nan     # the measurement-aware CI (``measurement_error``)
    measured_high: float = np.nan
    measurement: str = ""            # the error model of each quantity read
    widening: float = np.nan         # its width over the run-level CI's on the same resamples


@dataclass(frozen=True)
class Evidence:
    cube: xr.Dataset        # healthy runs only
    bounds: xr.Dataset      # healthy runs only
    cfg: dict               # the study's ``stats`` section
    figures: dict           # the study's ``figures`` section (the lr row and batch row)

    @functools.cached_property
    def draws(self) -> measurement_error.MeasurementDraws:
        """``bootstrap`` measurement draws of the cube's numbers (``measurement_error``)."""
        return measurement_error.MeasurementDraws(self.cube, self.cfg["bootstrap"],
                                                  self.cfg["seed"], robust.n_test_rows(self.cube))


@dataclass(frozen=True)
class Claim:
    name: str
    source: str
    statement: str
    statistic: str
    direction: str
    measure: Callable[[Evidence], Outcome | str]   # a str: why it is not tested
    robust: tuple[str, str] | None = None           # (measure, target) of the robust verdict


def _rng(evidence: Evidence) -> np.random.Generator:
    return np.random.default_rng(evidence.cfg["seed"])


#: Ma & Ying's smoothness measures at k = 1 (reference B.6): g(1) = (mean_i sum_c sum_j
#: (df_c(x_i)/dz_j)^2)^{1/2} over the training points, z the input (g_x) or all the parameters
#: (g_W); a monotone function of the mean moment, so its Kendall tau is the moment's.
MA_YING_SMOOTHNESS = {"g_x": "input_grad_moment", "g_W": "param_grad_moment"}


def _unmeasured(ds: xr.Dataset, *names: str) -> str | None:
    """Why one of ``names`` cannot be read from ``ds`` (None when all can)."""
    for name in names:
        source = MA_YING_SMOOTHNESS.get(name, name)
        if source not in ds:
            return f"the study does not measure {source}"
        if name in MA_YING_SMOOTHNESS and 1 not in ds["moment"].values:
            return f"the study does not measure {source} at k = 1 (measure.moments)"
    return None


def _run_value(ds: xr.Dataset, name: str) -> xr.DataArray:
    """A measure per run (and step): a cube variable (``views.run_level``) or g_x / g_W."""
    if name in MA_YING_SMOOTHNESS:
        return np.sqrt(views.run_level(ds, MA_YING_SMOOTHNESS[name]).sel(moment=1))
    return views.run_level(ds, name)


def _run_draws(evidence: Evidence, ds: xr.Dataset, name: str) -> np.ndarray:
    """Measurement draws of ``_run_value(ds, name)``: shape (bootstrap, *its dims)."""
    if name in MA_YING_SMOOTHNESS:
        return np.sqrt(evidence.draws.at(ds, MA_YING_SMOOTHNESS[name], moment=1))
    return evidence.draws.at(ds, name)


def _error_model(evidence: Evidence, name: str) -> str:
    """``name``'s error model (``measurement_error``) for a claim's note."""
    source = MA_YING_SMOOTHNESS.get(name, name)
    select = {"moment": 1} if name in MA_YING_SMOOTHNESS else {}
    return f"{name}: {evidence.draws.error_model(source, **select)}"


def _kendall_rows(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Kendall tau-b of every row of (draws, n) ``x`` and ``y`` (+-inf ranked, as
    ``correlations.correlate`` ranks them); NaN for a row with a NaN."""
    undefined = np.isnan(x).any(-1) | np.isnan(y).any(-1)
    x, y = (correlations.rank_stand_ins(np.nan_to_num(v, nan=0.0, posinf=np.inf,
                                                      neginf=-np.inf)) for v in (x, y))
    return np.where(undefined, np.nan, correlations.coefficients(x, y, "kendall"))


def _tau(point: xr.Dataset, x: str | np.ndarray, y_name: str,
         evidence: Evidence) -> Outcome | str:
    """Kendall tau of ``x`` (a measure's name, or exact values per run) with the measure
    ``y_name`` across the runs of ``point`` (one checkpoint per run): ``_kendall``, with the
    measurement-aware CI of the same tau (``measurement_error.two_stage_ci`` over the runs
    that ``_kendall`` uses). Its widening is over the run-level CI of the same resamples of
    runs (``correlations.correlate`` draws its own, so the two CIs of the table differ by
    Monte-Carlo error as well)."""
    x_values = _run_value(point, x).values if isinstance(x, str) else np.asarray(x, float)
    y_values = _run_value(point, y_name).values
    outcome = _kendall(x_values, y_values, evidence)
    if isinstance(outcome, str):
        return outcome
    keep = ~np.isnan(x_values) & ~np.isnan(y_values)
    n_draws = evidence.cfg["bootstrap"]
    exact = [np.broadcast_to(v[keep], (n_draws, int(keep.sum()))) for v in (x_values, y_values)]
    drawn = [_run_draws(evidence, point, x)[:, keep] if isinstance(x, str) else exact[0],
             _run_draws(evidence, point, y_name)[:, keep]]
    reference, (low, high) = (measurement_error.two_stage_ci(
        _kendall_rows, numbers, n_draws, evidence.cfg["ci_level"], _rng(evidence))
        for numbers in (exact, drawn))
    models = [_error_model(evidence, name) for name in (x, y_name) if isinstance(name, str)]
    return replace(outcome, measured_low=low, measured_high=high,
                   measurement="; ".join(models),
                   widening=measurement_error.widening(*reference, low, high))


def _kendall(x: np.ndarray, y: np.ndarray, evidence: Evidence) -> Outcome | str:
    """Kendall tau-b with bootstrap CI and permutation p (``correlations.correlate``)."""
    cfg = evidence.cfg
    row = correlations.correlate(np.asarray(x, float), np.asarray(y, float), cfg["bootstrap"],
                                 cfg["ci_level"], _rng(evidence),
                                 cfg.get("permutations", correlations.DEFAULT_PERMUTATIONS))
    k = correlations.METHODS.index("kendall")
    if not np.isfinite(row["estimate"][k]):
        return f"fewer than 3 usable runs or a constant variable (n = {int(row['n'][k])})"
    return Outcome(row["estimate"][k], row["ci_low"][k], row["ci_high"][k], row["p_perm"][k],
                   int(row["n"][k]))


#: Log volumes: -inf at a training point whose Jacobian is numerically rank-deficient
#: (``jacobian.log_volume``; for log NVR, every layer's), so a run's mean is -inf there.
LOG_VOLUMES = ("log_lvr", "log_lvr_top3", "log_nvr")


def rank_deficiency_note(point: xr.Dataset, name: str) -> str:
    """How many training points, and in how many runs, have a -inf log volume ``name`` in
    ``point`` (one checkpoint per run): Kendall's tau ranks those runs below all others."""
    values = point[name].sel(subset="train").transpose("run", "sample").values
    deficient = np.isneginf(values)
    return (f"{name} = -inf (numerically rank-deficient Jacobian) at "
            f"{int(deficient.sum())} of {int((~np.isnan(values)).sum())} train points, in "
            f"{int(deficient.any(axis=1).sum())} of {len(values)} runs (ranked lowest by tau)")


def paper_axes_note(sharpness: np.ndarray, y: np.ndarray, y_name: str) -> str:
    """Pearson r of y with sqrt(S), the paper's sharpness axis (``flatrep.analysis.conventions``),
    over the runs where both are finite: tau is unchanged by the square root, r is not."""
    x = np.sqrt(sharpness)
    finite = np.isfinite(x) & np.isfinite(y)
    if finite.sum() < 3 or np.ptp(x[finite]) == 0 or np.ptp(y[finite]) == 0:
        return ""
    r = scipy.stats.pearsonr(x[finite], y[finite]).statistic
    return f"on the paper's axes Pearson r(√S, {y_name}) = {r:.2f} ({int(finite.sum())} runs)"


def _across_runs(x_name: str, y_name: str) -> Callable[[Evidence], Outcome | str]:
    """tau of two run-level measures across runs at the final checkpoint; for a log volume
    the note counts its rank-deficient points and runs (``rank_deficiency_note``); against
    sharpness it adds Pearson's r on the paper's axes (``paper_axes_note``)."""
    def measure(evidence: Evidence) -> Outcome | str:
        missing = _unmeasured(evidence.cube, x_name, y_name)
        if missing:
            return missing
        final = evidence.cube.isel(step=-1)
        x, y = _run_value(final, x_name).values, _run_value(final, y_name).values
        outcome = _tau(final, x_name, y_name, evidence)
        if x_name == "sharpness":
            outcome = _noted(outcome, paper_axes_note(x, y, y_name))
        if y_name in LOG_VOLUMES:
            outcome = _noted(outcome, rank_deficiency_note(final, y_name))
        return outcome
    return measure


def _along(axis: str, y_name: str) -> Callable[[Evidence], Outcome | str]:
    """tau of a hyperparameter with a measure across the runs of its row of the study
    (lr at ``figures.lr_row_batch_size``; batch size at ``figures.batch_row_lr``)."""
    fixed = {"lr": ("batch_size", "lr_row_batch_size"), "batch_size": ("lr", "batch_row_lr")}

    def measure(evidence: Evidence) -> Outcome | str:
        other, key = fixed[axis]
        cube = evidence.cube
        if axis not in cube.coords or other not in cube.coords:
            return f"the study does not sweep {axis}"
        missing = _unmeasured(cube, y_name)
        if missing:
            return missing
        row = cube.where(cube[other] == evidence.figures[key], drop=True).isel(step=-1)
        return _tau(row, row[axis].values, y_name, evidence)
    return measure


def _checkpoint_tau(x: np.ndarray, y: np.ndarray) -> float:
    """Kendall tau-b of one run's checkpoints, over those where neither value is NaN (a -inf
    log volume ranks lowest); NaN with fewer than 3 such checkpoints."""
    kept = ~(np.isnan(x) | np.isnan(y))
    if kept.sum() < 3:
        return np.nan
    return scipy.stats.kendalltau(x[kept], y[kept]).statistic


#: One trend variable of ``_within_runs``: (values (run, step), their measurement draws
#: (bootstrap, run, step), error model).
Trend = tuple[xr.DataArray, np.ndarray, str]


def _trend_of(evidence: Evidence, name: str, subset: str = "train") -> Trend:
    """A measure's trend variable over the cube's runs and checkpoints."""
    cube = evidence.cube
    if name == "step":
        step = cube["step"].broadcast_like(cube["diverged"]).transpose("run", "step")
        return step, step.values[None], ""
    if subset != "train":
        values = cube[name].sel(subset=subset).mean("sample")
        return (values, evidence.draws.at(cube, name, subset),
                f"{name} ({subset}): {evidence.draws.error_model(name, subset)}")
    return _run_value(cube, name), _run_draws(evidence, cube, name), _error_model(evidence, name)


def _within_runs(x: Trend, y: Trend, evidence: Evidence, note: str,
                 kept: xr.DataArray | None = None) -> Outcome | str:
    """Per run, Kendall tau over its checkpoints of ``x`` with ``y`` (``kept``: the
    checkpoints that count, else all; a NaN value also marks a checkpoint out,
    ``_checkpoint_tau``); the mean over the runs where it is defined, a bootstrap CI over runs
    and a Wilcoxon signed-rank p; and the measurement-aware CI of that mean: per measurement
    draw every run's tau over the same checkpoints, the runs resampled
    (``measurement_error.two_stage_ci``), its widening over the same resamples without
    measurement error."""
    (x, x_draws, x_model), (y, y_draws, y_model) = x, y
    kept = xr.ones_like(x, dtype=bool) if kept is None else kept
    x, y = (v.where(kept).transpose("run", "step").values for v in (x, y))
    taus = np.array([_checkpoint_tau(a, b) for a, b in zip(x, y)])
    defined = np.isfinite(taus)
    if defined.sum() < 3:
        return "fewer than 3 runs with a defined trend"
    cfg = evidence.cfg
    low, high = correlations.bootstrap_mean_ci(taus[defined], cfg["bootstrap"],
                                               cfg["ci_level"], _rng(evidence))
    drawn = np.full((cfg["bootstrap"], len(taus)), np.nan)
    for r in np.flatnonzero(defined):
        used = ~(np.isnan(x[r]) | np.isnan(y[r]))
        drawn[:, r] = _kendall_rows(*(np.broadcast_to(d[:, r], (len(drawn), d.shape[2]))[:, used]
                                      for d in (x_draws, y_draws)))
    exact = np.broadcast_to(taus[defined], (len(drawn), int(defined.sum())))
    reference, measured = (measurement_error.two_stage_ci(_mean_defined, [numbers],
                                                          cfg["bootstrap"], cfg["ci_level"],
                                                          _rng(evidence))
                           for numbers in (exact, drawn[:, defined]))
    return Outcome(taus[defined].mean(), low, high, scipy.stats.wilcoxon(taus[defined]).pvalue,
                   int(defined.sum()), note, *measured,
                   "; ".join(model for model in (x_model, y_model) if model),
                   measurement_error.widening(*reference, *measured))


def _mean_defined(values: np.ndarray) -> np.ndarray:
    """Mean of every row over its finite entries (NaN for a row without one)."""
    finite = np.isfinite(values)
    count = finite.sum(-1)
    total = np.where(finite, values, 0.0).sum(-1)
    return np.where(count > 0, total / np.maximum(count, 1), np.nan)


def _test_sharpness_trend(evidence: Evidence) -> Outcome | str:
    """Per run, tau of the iteration with the test-point sharpness (``_within_runs``)."""
    return _within_runs(_trend_of(evidence, "step"),
                        _trend_of(evidence, "sample_sharpness", "test"), evidence,
                        "mean over runs of tau(step, S_test)")


def _gauss_newton_at_interpolation(evidence: Evidence) -> Outcome | str:
    """Per run, tau over its checkpoints of the train loss with ||H - G||_F / ||H||_F
    (``_within_runs``); for 1/2-MSE studies only, where H - G = (1/n) sum_i sum_c
    (f_c(x_i) - y_ic) grad^2 f_c(x_i) vanishes with the residuals (reference B1; a
    cross-entropy minimum is an infimum, §E)."""
    cube = evidence.cube
    if cube.attrs.get("loss", "mse") != "mse":
        return "stated for MSE (the study's loss is cross-entropy)"
    missing = _unmeasured(cube, "hessian_residual_fro", "hessian_fro", "train_loss")
    if missing:
        return missing
    residual = _trend_of(evidence, "hessian_residual_fro")
    fro = _trend_of(evidence, "hessian_fro")
    ratio = (residual[0] / fro[0], residual[1] / fro[1], f"{residual[2]}; {fro[2]}")
    return _within_runs(_trend_of(evidence, "train_loss"), ratio, evidence,
                        "mean over runs of tau(train loss, ||H - G||_F / ||H||_F)")


def _late_phase_trend(x_name: str, y_name: str) -> Callable[[Evidence], Outcome | str]:
    """Per run, Kendall tau of ``x_name`` (``step``: the iteration) with ``y_name`` over the
    run's checkpoints in its late phase (``late_phase.late_phase``: at and after the first with
    train accuracy 1 and train loss < ``interpolation_loss``; Chen et al. Fig. 1/2), summarised
    over the runs with at least 3 such checkpoints (``_within_runs``)."""
    def measure(evidence: Evidence) -> Outcome | str:
        cube = evidence.cube
        names = [name for name in (x_name, y_name) if name != "step"]
        missing = _unmeasured(cube, *names, "train_acc", "train_loss")
        if missing:
            return missing
        late = late_phase.late_phase(cube, evidence.cfg["interpolation_loss"])
        counts = late.sum("step").values
        y = _trend_of(evidence, y_name)
        note = (f"{int((counts > 0).sum())} of {len(counts)} runs interpolate, "
                f"{int((counts >= 3).sum())} with >= 3 checkpoints after it; mean over them of "
                f"tau({x_name}, {y_name})")
        outcome = _within_runs(_trend_of(evidence, x_name), y, evidence, note, late)
        if isinstance(outcome, str):
            return f"{outcome} after interpolation ({note.split('; ')[0]})"
        if y_name in LOG_VOLUMES:
            values = y[0].where(late).values
            outcome = _noted(outcome, f"{y_name} = -inf at {int(np.isneginf(values).sum())} of "
                                      f"{int((~np.isnan(values)).sum())} late run x checkpoint "
                                      "means (ranked lowest)")
        return outcome
    return measure


def _violations(names: list[str]) -> Callable[[Evidence], Outcome | str]:
    """Pooled violation rate of bounds over the runs and checkpoints where their assumptions
    hold (``stats.holds_where_assumed``), exact binomial CI."""
    def measure(evidence: Evidence) -> Outcome | str:
        chosen = evidence.bounds.sel(bound=names)
        flags = bounds.assumption_flags(chosen, evidence.cfg["interpolation_loss"])
        counted = stats.violations(stats.holds_where_assumed(chosen, flags).values,
                                   evidence.cfg["ci_level"])
        if counted["evaluated"] == 0:
            return "no checkpoint where the bounds' assumptions hold"
        return Outcome(counted["violation_rate"], counted["violation_rate_ci_low"],
                       counted["violation_rate_ci_high"], np.nan, counted["evaluated"],
                       f"{counted['violations']} of {counted['evaluated']} run x checkpoint "
                       "points")
    return measure


#: One checkpoint per run: ``at(cube)`` is ``(point, note)``, ``point`` the cube indexed to one
#: checkpoint per run (dim ``run``; ``step`` a coordinate along ``run``), ``note`` a remark for
#: the claims table; or a str, why there is no such checkpoint.
Checkpoint = Callable[[xr.Dataset], "tuple[xr.Dataset, str] | str"]


def _at_final(cube: xr.Dataset) -> tuple[xr.Dataset, str]:
    """The final checkpoint of every run (end of the training budget)."""
    return cube.isel(step=-1), ""


def equal_loss_checkpoints(train_loss: xr.DataArray) -> tuple[float, np.ndarray]:
    """The common train-loss level L* and each run's first checkpoint at or below it.

    L* is the largest, over runs, of the run's minimum train loss over its checkpoints: the
    lowest level that every run reaches. By construction every run reaches it (its minimum is
    <= L*; the run that sets L* reaches it exactly, at its minimum), so no run is lost to the
    matching. A run's checkpoint is the first one in step order whose train loss is <= L*.
    Non-finite train losses (NaN, inf) never count: such a checkpoint is skipped, and a run
    without any finite train loss takes no part in L* and gets position -1. Returns
    ``(L*, positions along step)``; ``(nan, all -1)`` when no run has a finite train loss.
    """
    loss = train_loss.transpose("run", "step").values.astype(float)
    order = np.argsort(train_loss["step"].values, kind="stable")
    loss = loss[:, order]
    finite = np.isfinite(loss)
    present = finite.any(axis=1)
    first = np.full(loss.shape[0], -1)
    if not present.any():
        return np.nan, first
    level = float(np.max(np.min(np.where(finite, loss, np.inf), axis=1)[present]))
    below = finite & (np.where(finite, loss, np.inf) <= level)
    first[present] = order[np.argmax(below[present], axis=1)]
    return level, first


def _at_equal_loss(cube: xr.Dataset) -> tuple[xr.Dataset, str] | str:
    """Each run at its first checkpoint with train loss <= L* (``equal_loss_checkpoints``,
    over the runs of ``cube``). No interpolation between checkpoints: the losses at the chosen
    checkpoints are <= L*, not equal to it (the note gives their range)."""
    if "train_loss" not in cube:
        return "the cube has no train_loss"
    level, first = equal_loss_checkpoints(cube["train_loss"])
    runs = np.flatnonzero(first >= 0)
    if len(runs) == 0:
        return "no run has a finite train loss"
    point = cube.isel(run=xr.DataArray(runs, dims="run"),
                      step=xr.DataArray(first[runs], dims="run"))
    loss, steps = point["train_loss"].values, point["step"].values
    where = (f"step {steps.min()}" if steps.min() == steps.max()
             else f"steps {steps.min()}-{steps.max()}")
    note = (f"equal train loss L* = {level:.3g}: first checkpoint per run with train loss "
            f"<= L* ({where}, train loss {loss.min():.3g}-{loss.max():.3g})")
    if len(runs) < cube.sizes["run"]:
        note += f"; {cube.sizes['run'] - len(runs)} run(s) without a finite train loss left out"
    return point, note


def _noted(outcome: Outcome | str, note: str) -> Outcome | str:
    """``outcome`` with ``note`` prepended to its note."""
    if isinstance(outcome, str) or not note:
        return outcome
    return replace(outcome, note="; ".join(n for n in (note, outcome.note) if n))


CHEN, GRANZIOL = "Chen et al. 2023", "Granziol 2020 (Flatness is a False Friend)"
MA_YING = "Ma & Ying 2021"
JASTRZEBSKI = "Jastrzębski et al. 2017 (Three factors influencing minima in SGD)"


def _through_ratio(name: str) -> Callable[[Evidence], Outcome | str]:
    """The within-line share of ``name``'s nested ANOVA over lr / B lines at the final
    checkpoint (``noise_scale.measure_decomposition``), its bootstrap CI and within-line
    permutation p; the note gives the design, the F tests and the seed-noise share."""
    def measure(evidence: Evidence) -> Outcome | str:
        cfg = evidence.cfg
        found = noise_scale.measure_decomposition(
            evidence.cube, name, cfg["bootstrap"], cfg["ci_level"],
            cfg.get("permutations", correlations.DEFAULT_PERMUTATIONS), cfg["seed"])
        if found.reason:
            return found.reason
        excluded = (f", {found.n_excluded} run(s) with a non-finite value left out"
                    if found.n_excluded else "")
        note = (f"{found.n_lines} lr / B lines ({found.n_lines_informative} with >= 2 "
                f"configurations), {found.n_configs} configurations, {found.n_runs} runs"
                f"{excluded}; F_within = {found.f_within:.3g} (F-test p {found.p_f_within:.3g}),"
                f" F_across = {found.f_across:.3g} (p {found.p_f_across:.3g}); seed noise alone "
                f"gives {found.noise_share:.3g} of the between-configuration SS")
        return Outcome(found.within_share, found.ci_low, found.ci_high, found.p_perm, found.n_runs,
                       note=note)
    return measure


#: The lr / B ratio claims' measures: (cube name, label, the scale it is analysed on).
_RATIO_MEASURES = (("sharpness", "sharpness", "log S"), ("mls", "MLS", "log mean MLS"),
                   ("log_lvr", "log LVR", "mean log LVR"),
                   ("log_lvr_top3", "top-3 log volume", "mean top-3 log volume"),
                   ("nmls", "NMLS", "log mean NMLS"), ("log_nvr", "log NVR", "mean log NVR"),
                   ("hessian_lambda_max", "lambda_max", "log lambda_max"))


def _tau_at(at: Checkpoint, cube: xr.Dataset, contrast, y_name: str, reason: str,
            evidence: Evidence) -> Outcome | str:
    """Kendall tau of ``contrast(point)`` (a value per run, or None when the point has no
    contrast) with ``y_name`` across runs, each run read at its checkpoint ``at``."""
    point = at(cube)
    if isinstance(point, str):
        return point
    checkpoint, note = point
    x = contrast(checkpoint)
    if x is None:
        return f"{reason} (among the runs with a checkpoint)"
    return _noted(_tau(checkpoint, x, y_name, evidence), note)


def _swept(coordinate: str, y_name: str, reason: str,
           at: Checkpoint = _at_final) -> Callable[[Evidence], Outcome | str]:
    """tau of a swept hyperparameter with a measure across runs, each run read at its
    checkpoint ``at``, when the study sweeps it."""
    def values(ds: xr.Dataset) -> np.ndarray | None:
        swept = coordinate in ds.coords and len(np.unique(ds[coordinate].values)) >= 2
        return ds[coordinate].values if swept else None

    def measure(evidence: Evidence) -> Outcome | str:
        if values(evidence.cube) is None:
            return reason
        return _unmeasured(evidence.cube, y_name) or _tau_at(at, evidence.cube, values, y_name,
                                                             reason, evidence)
    return measure


def _arms(ds: xr.Dataset) -> tuple[np.ndarray, np.ndarray]:
    """(Adam/AdamW with iterate averaging, SGD on its last iterate) masks over runs."""
    optimizer = bounds.hyperparameter(ds, "optimizer").values.astype(str)
    averaged = bounds.hyperparameter(ds, "averaging_start").values < 1
    return np.isin(optimizer, ["adam", "adamw"]) & averaged, (optimizer == "sgd") & ~averaged


def _adaptive_averaged(y_name: str,
                       at: Checkpoint = _at_final) -> Callable[[Evidence], Outcome | str]:
    """tau of the arm (1: Adam/AdamW with iterate averaging, 0: SGD on its last iterate) with
    a measure across the runs of these two arms, each run read at its checkpoint ``at`` (a
    rank-biserial effect size; runs in neither arm are left out, also of ``at``'s choice)."""
    def arm(ds: xr.Dataset) -> np.ndarray | None:
        treated, control = _arms(ds)
        return treated.astype(float) if treated.any() and control.any() else None

    def measure(evidence: Evidence) -> Outcome | str:
        if arm(evidence.cube) is None:
            return _NO_ARMS
        missing = _unmeasured(evidence.cube, y_name)
        if missing:
            return missing
        treated, control = _arms(evidence.cube)
        both = evidence.cube.isel(run=np.flatnonzero(treated | control))
        return _tau_at(at, both, arm, y_name, _NO_ARMS, evidence)
    return measure


def _adaptive_ratio(y_name: str) -> Callable[[Evidence], Outcome | str]:
    """mean ``y_name`` of the Adam/AdamW + iterate-averaging runs over that of the SGD runs at
    the final checkpoint (Granziol's "30x sharper"), with a bootstrap CI that resamples the
    runs within each arm (``correlations.ratio_of_means``) and its measurement-aware twin
    (``measurement_error.two_stage_ci``, the same resampling); runs with a non-finite value
    left out."""
    def measure(evidence: Evidence) -> Outcome | str:
        treated, control = _arms(evidence.cube)
        if not (treated.any() and control.any()):
            return _NO_ARMS
        missing = _unmeasured(evidence.cube, y_name)
        if missing:
            return missing
        point = evidence.cube.isel(step=-1)
        final = _run_value(point, y_name).values
        adaptive, sgd = treated & np.isfinite(final), control & np.isfinite(final)
        if min(adaptive.sum(), sgd.sum()) < 2:
            return f"fewer than 2 runs with a finite {y_name} in an arm"
        cfg = evidence.cfg
        estimate, low, high = correlations.ratio_of_means(final[adaptive], final[sgd],
                                                          cfg["bootstrap"], cfg["ci_level"],
                                                          _rng(evidence))
        if not np.isfinite(estimate):
            return f"the SGD arm's mean {y_name} is not positive"
        drawn = _run_draws(evidence, point, y_name)
        arm = np.repeat([0, 1], [sgd.sum(), adaptive.sum()])
        measured = measurement_error.two_stage_ci(
            lambda values: correlations.arm_mean_ratio(values, int(sgd.sum())),
            [np.concatenate([drawn[:, sgd], drawn[:, adaptive]], axis=1)], cfg["bootstrap"],
            cfg["ci_level"], _rng(evidence), arm)
        return Outcome(estimate, low, high, np.nan, int(adaptive.sum() + sgd.sum()),
                       f"ratio of arm means, {adaptive.sum()} Adam+IA and {sgd.sum()} SGD runs",
                       *measured, _error_model(evidence, y_name),
                       measurement_error.widening(low, high, *measured))
    return measure


def _at_end_and_equal_loss(name: str, statement: str, statistic: str,
                           measure: Callable[[Checkpoint], Callable],
                           direction: str = "positive") -> list[Claim]:
    """A False-Friend arm comparison judged at the end of training and, as ``<name>_equal_loss``,
    at equal train loss (module docstring); ``measure(at)`` is its measure at checkpoint ``at``."""
    return [Claim(name, GRANZIOL, statement, f"{statistic}, final checkpoint", direction,
                  measure(_at_final)),
            Claim(f"{name}_equal_loss", GRANZIOL, f"{statement}, at equal train loss",
                  f"{statistic}, first checkpoint at train loss <= L*", direction,
                  measure(_at_equal_loss))]


def _weight_decay(name: str, statement: str, y_name: str, label: str,
                  direction: str = "positive") -> list[Claim]:
    """Claim A3 for one measure: weight decay against ``y_name`` (``label`` in the statistic),
    at the end of training and at equal train loss."""
    return _at_end_and_equal_loss(name, statement, f"Kendall tau(weight decay, {label})",
                                  lambda at: _swept("weight_decay", y_name, _NO_WD, at),
                                  direction)


def _adaptive(name: str, statement: str, y_name: str, label: str) -> list[Claim]:
    """Claim A4 as an association: the Adam + IA arm against ``y_name``, at the end of training
    and at equal train loss."""
    return _at_end_and_equal_loss(name, statement, f"Kendall tau(Adam+IA arm, {label})",
                                  lambda at: _adaptive_averaged(y_name, at))


def _thirty_times(name: str, y_name: str, label: str) -> Claim:
    """Claim A4's magnitude: the Adam + IA over SGD ratio of ``y_name`` inside ``ratio_band``."""
    return Claim(name, GRANZIOL, f"Adam with iterate averaging is 30x sharper than SGD ({label})",
                 f"ratio of arm means of {label}, final checkpoint", "band",
                 _adaptive_ratio(y_name))


#: The two generalisation gaps of reference §C.9: (suffix, variable, name, definition).
_GAPS = (("gap", "generalization_gap", "generalisation gap", "train - test accuracy"),
         ("loss_gap", "generalization_loss_gap", "loss gap", "test - train loss"))


def _against_gaps(name: str, statement: str, x_name: str, label: str,
                  direction: str) -> list[Claim]:
    """Claim A5 for one sharpness measure: its tau with each generalisation gap across runs
    at the final checkpoint, as ``<name>_gap`` and ``<name>_loss_gap``."""
    return [Claim(f"{name}_{suffix}", GRANZIOL, f"{statement} the {gap_name}",
                  f"Kendall tau({label}, {definition}), final checkpoint", direction,
                  _across_runs(x_name, gap))
            for suffix, gap, gap_name, definition in _GAPS]


_NO_WD = "the study does not sweep weight_decay"
_NO_ARMS = "the study has no Adam + iterate-averaging arm beside an SGD arm"
_THEOREMS = ["ma_ying", "mls", "nmls", "lvr_sum_min", "lvr_geometric", "nvr"]

CLAIMS: list[Claim] = [
    Claim("bounds_hold", CHEN, "MLS, LVR, NVR, NMLS (and Ma & Ying's) bounds hold",
          "violation rate over runs x checkpoints", "bound", _violations(_THEOREMS)),
    Claim("sharpness_mls", CHEN, "flatter minima have smaller MLS",
          "Kendall tau(S, mean MLS), final checkpoint", "positive",
          _across_runs("sharpness", "mls"),
          robust=("sharpness", "mls")),
    Claim("sharpness_lvr", CHEN, "flatter minima have smaller local volumes (LVR)",
          "Kendall tau(S, mean log LVR), final checkpoint", "positive",
          _across_runs("sharpness", "log_lvr"),
          robust=("sharpness", "log_lvr")),
    Claim("sharpness_nmls", CHEN, "flatter minima have smaller NMLS",
          "Kendall tau(S, mean NMLS), final checkpoint", "positive",
          _across_runs("sharpness", "nmls"),
          robust=("sharpness", "nmls")),
    Claim("sharpness_nvr", CHEN, "flatter minima have smaller network volumes (NVR)",
          "Kendall tau(S, mean log NVR), final checkpoint", "positive",
          _across_runs("sharpness", "log_nvr"),
          robust=("sharpness", "log_nvr")),
    Claim("sharpness_lvr_top3", CHEN, "flatter minima have smaller top-3 log volumes (the "
          "paper's plotted log volume)", "Kendall tau(S, mean top-3 log volume), final "
          "checkpoint", "positive", _across_runs("sharpness", "log_lvr_top3"),
          robust=("sharpness", "log_lvr_top3")),
    Claim("local_dim_unbounded", CHEN, "local dimensionality is not bounded by sharpness",
          "Kendall tau(S, mean local dimension), final checkpoint", "none",
          _across_runs("sharpness", "local_dim")),
    Claim("late_sharpness_falls", CHEN, "after interpolation, sharpness falls",
          "mean over runs of Kendall tau(step, S) after interpolation", "negative",
          _late_phase_trend("step", "sharpness")),
    *[Claim(f"late_{name}_follows", CHEN,
            f"after interpolation, {label} follows sharpness (Chen et al.: both fall)",
            f"mean over runs of Kendall tau(S, mean {label}) after interpolation", "positive",
            _late_phase_trend("sharpness", name))
      for name, label in (("mls", "MLS"), ("log_lvr", "log LVR"),
                          ("log_lvr_top3", "top-3 log volume"), ("nmls", "NMLS"))],
    Claim("late_local_dim_unbounded", CHEN,
          "after interpolation, local dimensionality does not follow sharpness",
          "mean over runs of Kendall tau(S, mean local dimension) after interpolation", "none",
          _late_phase_trend("sharpness", "local_dim")),
    Claim("lr_flatter", CHEN, "a larger learning rate gives flatter minima",
          "Kendall tau(lr, S) at the lr row's batch size", "negative", _along("lr", "sharpness")),
    Claim("lr_compressed", CHEN, "a larger learning rate gives more compressed representations",
          "Kendall tau(lr, mean MLS) at the lr row's batch size", "negative",
          _along("lr", "mls")),
    Claim("batch_flatter", CHEN, "a smaller batch gives flatter minima",
          "Kendall tau(batch size, S) at the batch row's lr", "positive",
          _along("batch_size", "sharpness")),
    *[Claim(f"lr_batch_ratio_{name}", JASTRZEBSKI,
            f"{label} depends on lr and batch size only through lr / B",
            f"within-line SS share of {scale} (lines of equal lr / B), final checkpoint",
            RATIO_ONLY, _through_ratio(name))
      for name, label, scale in _RATIO_MEASURES],
    Claim("test_sharpness_rises", CHEN, "sharpness at test points rises during training",
          "mean over runs of Kendall tau(step, mean test-point sharpness)", "positive",
          _test_sharpness_trend),
    *_weight_decay("l2_sharper", "L2 regularisation makes minima sharper",
                   "hessian_lambda_max", "lambda_max"),
    *_weight_decay("l2_sharper_trace", "L2 regularisation raises the Hessian trace",
                   "hessian_trace", "tr H"),
    *_weight_decay("l2_sharper_fro", "L2 regularisation raises the Hessian Frobenius norm",
                   "hessian_fro", "||H||_F"),
    *_weight_decay("l2_smaller_weights", "L2 regularisation ends at smaller weights",
                   "param_norm", "||theta||", "negative"),
    *_weight_decay("l2_generalises", "L2 regularisation generalises better",
                   "test_acc", "test accuracy"),
    *_adaptive("adam_ia_sharper", "Adam with iterate averaging is sharper than SGD",
               "hessian_lambda_max", "lambda_max"),
    *_adaptive("adam_ia_sharper_bn_train",
               "Adam with iterate averaging is sharper than SGD, BatchNorm-train-mode Hessian",
               "hessian_bn_train_lambda_max", "BN-train-mode lambda_max"),
    *_adaptive("adam_ia_sharper_trace", "Adam with iterate averaging has a larger Hessian "
               "trace than SGD", "hessian_trace", "tr H"),
    _thirty_times("adam_ia_30x", "hessian_lambda_max", "lambda_max"),
    _thirty_times("adam_ia_30x_bn_train", "hessian_bn_train_lambda_max",
                  "BN-train-mode lambda_max"),
    _thirty_times("adam_ia_30x_trace", "hessian_trace", "tr H"),
    _thirty_times("adam_ia_30x_trace_bn_train", "hessian_bn_train_trace",
                  "BN-train-mode tr H"),
    *_adaptive("adam_ia_generalises", "Adam with iterate averaging generalises better",
               "test_acc", "test accuracy"),
    *_against_gaps("scaled_sharpness",
                   "scale-normalised sharpness lambda_max ||theta||^2 predicts",
                   "hessian_lambda_max_scaled", "lambda_max ||theta||^2", "positive"),
    *_against_gaps("raw_sharpness", "raw sharpness lambda_max does not predict",
                   "hessian_lambda_max", "lambda_max", "nonpositive"),
    Claim("rank_bounded", GRANZIOL, "the Hessian rank is at most (K - 1) sum_l n_in,l",
          "violation rate of rank_hessian_layers", "bound", _violations(["rank_hessian_layers"])),
    Claim("gauss_newton_at_interpolation", MA_YING,
          "the Hessian approaches its Gauss-Newton part as the train loss falls (MSE)",
          "mean over runs of Kendall tau(train loss, ||H - G||_F / ||H||_F) over checkpoints",
          "positive", _gauss_newton_at_interpolation),
    Claim("input_param_smoothness", MA_YING,
          "smaller parameter gradients go with smaller input gradients",
          "Kendall tau(g_W, g_x), final checkpoint", "positive", _across_runs("g_W", "g_x")),
    Claim("input_smoothness_generalises", MA_YING,
          "smaller input gradients go with lower test error",
          "Kendall tau(g_x, test accuracy), final checkpoint", "negative",
          _across_runs("g_x", "test_acc")),
]


def _significant(outcome: Outcome, p_holm: float, rules: dict, sign: int) -> bool:
    """Holm p below alpha, CI on the ``sign`` side of 0, |estimate| >= min_effect."""
    side = outcome.ci_low > 0 if sign > 0 else outcome.ci_high < 0
    return p_holm < rules["alpha"] and side and sign * outcome.estimate >= rules["min_effect"]


def verdict(claim: Claim, outcome: Outcome | str, p_holm: float, rules: dict) -> str:
    """The verdict of one claim under the rules of ``stats.claims`` (module docstring)."""
    if isinstance(outcome, str):
        return NOT_TESTED
    if claim.direction == RATIO_ONLY:
        return _ratio_verdict(outcome, p_holm, rules)
    if claim.direction == "bound":
        if outcome.ci_high <= rules["max_violation_rate"]:
            return SUPPORTED
        return CONTRADICTED if outcome.ci_low > rules["max_violation_rate"] else INCONCLUSIVE
    if claim.direction == "band":
        low, high = rules["ratio_band"]
        if low <= outcome.ci_low and outcome.ci_high <= high:
            return SUPPORTED
        return CONTRADICTED if outcome.ci_high < low or outcome.ci_low > high else INCONCLUSIVE
    if claim.direction == "nonpositive":
        if _significant(outcome, p_holm, rules, 1):
            return CONTRADICTED
        return SUPPORTED if outcome.ci_high < rules["margin"] else INCONCLUSIVE
    if claim.direction == "none":
        if -rules["margin"] < outcome.ci_low and outcome.ci_high < rules["margin"]:
            return SUPPORTED
        either = any(_significant(outcome, p_holm, rules, s) for s in (1, -1))
        return CONTRADICTED if either else INCONCLUSIVE
    sign = 1 if claim.direction == "positive" else -1
    if _significant(outcome, p_holm, rules, sign):
        return SUPPORTED
    return CONTRADICTED if _significant(outcome, p_holm, rules, -sign) else INCONCLUSIVE


def measured(outcome: Outcome | str) -> Outcome | str:
    """``outcome`` with its measurement-aware CI in place of the run-level CI (unchanged where
    it has none)."""
    if isinstance(outcome, str) or not np.isfinite([outcome.measured_low,
                                                    outcome.measured_high]).all():
        return outcome
    return replace(outcome, ci_low=outcome.measured_low, ci_high=outcome.measured_high)


def measured_verdict(claim: Claim, outcome: Outcome | str, p_holm: float, rules: dict) -> str:
    """The verdict that the measurement-aware CI gives under the same rules (module
    docstring); *not applicable* for a claim without one, *not tested* as ``verdict``."""
    if isinstance(outcome, str):
        return NOT_TESTED
    if measured(outcome) is outcome:
        return NOT_APPLICABLE
    return verdict(claim, measured(outcome), p_holm, rules)


def only_without_measurement_error(run_level: str, measurement_aware: str) -> bool:
    """Whether a verdict holds only when measurement error is ignored: the run-level verdict
    supports or contradicts the claim and the measurement-aware one does not agree."""
    return (run_level in (SUPPORTED, CONTRADICTED)
            and measurement_aware not in (run_level, NOT_APPLICABLE))


def _ratio_verdict(outcome: Outcome, p_holm: float, rules: dict) -> str:
    """The lr / B ratio rule (module docstring) under ``ratio_max_within_share``."""
    limit = rules.get("ratio_max_within_share", RATIO_MAX_WITHIN_SHARE)
    if outcome.ci_high <= limit:
        return SUPPORTED
    if p_holm < rules["alpha"] and outcome.ci_low > limit:
        return CONTRADICTED
    return INCONCLUSIVE


def fragile(claim: Claim, outcome: Outcome | str, p_holm: float, rules: dict) -> bool:
    """Whether an association claim's verdict changes within rounding: ``rules["rounding"]``
    = {estimate: d, p_factor: f} moves the estimate and each CI end by up to d (independently)
    and scales the Holm p by up to f, the largest changes measured between two runs of a study
    that differ only in rounding (workflow/analysis/verdict_flips.py). Without ``rounding``,
    and for bound, band and lr / B ratio claims, never."""
    band = rules.get("rounding")
    if band is None or isinstance(outcome, str) or claim.direction in ("bound", "band",
                                                                       RATIO_ONLY):
        return False
    nominal = verdict(claim, outcome, p_holm, rules)
    shifts = (-band["estimate"], 0.0, band["estimate"])
    for d_estimate, d_low, d_high in itertools.product(shifts, repeat=3):
        moved = replace(outcome, estimate=outcome.estimate + d_estimate,
                        ci_low=outcome.ci_low + d_low, ci_high=outcome.ci_high + d_high)
        for factor in (1 / band["p_factor"], band["p_factor"]):
            if verdict(claim, moved, p_holm * factor, rules) != nominal:
                return True
    return False


@dataclass(frozen=True)
class Robust:
    """A claim's robust sign-errors taken in its direction: the pooled weighted mean, the
    worst environment's and its label; ``reason`` (else '') why they are not tested."""
    sign_error: float = np.nan
    worst: float = np.nan
    environment: str = ""
    reason: str = ""


def robust_errors(claim: Claim, robust_stats: xr.Dataset | None) -> Robust | None:
    """The sign-errors of ``claim.robust`` from the ``robust_*`` variables of stats.nc, in the
    claim's direction (module docstring); None where the claim has no robust verdict."""
    if claim.robust is None or claim.direction not in ("positive", "negative"):
        return None
    measure, target = claim.robust
    if (robust_stats is None or "robust_sign_error" not in robust_stats
            or measure not in robust_stats["robust_measure"].values
            or target not in robust_stats["robust_target"].values):
        return Robust(reason=f"not tested: no robust sign-error of {measure} against {target}")
    cell = robust_stats.sel(robust_measure=measure, robust_target=target)
    reason = str(cell["robust_sign_error_reason"].values)
    if reason:
        return Robust(reason=reason)
    flip = claim.direction == "negative"
    errors = cell["robust_environment_sign_error"].values
    directed = 1 - errors if flip else errors
    worst = int(np.nanargmax(directed))
    pooled = float(cell["robust_sign_error"])
    return Robust(1 - pooled if flip else pooled, float(directed[worst]),
                  str(robust_stats["robust_environment"].values[worst]))


def robust_verdict(outcome: Robust | None, rules: dict) -> str:
    """The robust verdict (module docstring) under ``stats.claims.robust_max_sign_error``."""
    if outcome is None:
        return NOT_APPLICABLE
    if outcome.reason:
        return NOT_TESTED
    threshold = rules.get("robust_max_sign_error", ROBUST_MAX_SIGN_ERROR)
    if outcome.worst <= threshold:
        return SUPPORTED
    return CONTRADICTED if outcome.sign_error >= 1 - threshold else NOT_ROBUST


def evaluate(cube: xr.Dataset, bounds: xr.Dataset, stats_cfg: dict, figures_cfg: dict,
             robust_stats: xr.Dataset | None = None) -> xr.Dataset:
    """The claims table (dim ``claim``) of one study; the robust verdicts read the
    ``robust_*`` variables of ``robust_stats`` (``flatrep.analysis.robust``; without them,
    not tested)."""
    healthy = views.healthy_runs(cube)
    evidence = Evidence(cube.where(healthy, drop=True), bounds.where(healthy, drop=True),
                        stats_cfg, figures_cfg)
    outcomes = [claim.measure(evidence) for claim in CLAIMS]
    p_values = np.array([o.p if isinstance(o, Outcome) and claim.direction not in ("bound", "band")
                         else np.nan for claim, o in zip(CLAIMS, outcomes)])
    p_holm = correlations.holm(p_values)
    # the defaults written into the rules, so that claims_rules records them
    rules = {"robust_max_sign_error": ROBUST_MAX_SIGN_ERROR,
             "ratio_max_within_share": RATIO_MAX_WITHIN_SHARE,
             "measurement_error": MEASUREMENT_ERROR, **stats_cfg["claims"]}
    run_level = [verdict(c, o, p, rules) for c, o, p in zip(CLAIMS, outcomes, p_holm)]
    aware = [measured_verdict(c, o, p, rules) for c, o, p in zip(CLAIMS, outcomes, p_holm)]
    headline = outcomes
    if rules["measurement_error"] == "verdict":
        headline = [measured(o) for o in outcomes]
    numbers = {field: [getattr(o, field) if isinstance(o, Outcome) else np.nan
                       for o in outcomes]
               for field in ("estimate", "ci_low", "ci_high", "p", "n", "measured_low",
                             "measured_high")}
    text = {"source": [c.source for c in CLAIMS], "statement": [c.statement for c in CLAIMS],
            "statistic": [c.statistic for c in CLAIMS],
            "direction": [c.direction for c in CLAIMS],
            "verdict": [verdict(c, o, p, rules) for c, o, p in zip(CLAIMS, headline, p_holm)],
            "note": [o if isinstance(o, str) else o.note for o in outcomes],
            "run_level_verdict": run_level, "measured_verdict": aware,
            "measurement": [o.measurement if isinstance(o, Outcome) else "" for o in outcomes]}
    data = {f"claim_{key}": ("claim", np.asarray(values, dtype=float))
            for key, values in numbers.items()}
    data["claim_ci_widening"] = ("claim", [o.widening if isinstance(o, Outcome) else np.nan
                                           for o in outcomes])
    data["claim_only_without_measurement_error"] = ("claim", np.array(
        [only_without_measurement_error(r, a) for r, a in zip(run_level, aware)]))
    data["claim_p_holm"] = ("claim", p_holm)
    data["claim_fragile"] = ("claim", np.array([fragile(c, o, p, rules) for c, o, p
                                                in zip(CLAIMS, headline, p_holm)]))
    data.update({f"claim_{key}": ("claim", values) for key, values in text.items()})
    sign_errors = [robust_errors(c, robust_stats) for c in CLAIMS]
    data["claim_robust_verdict"] = ("claim", [robust_verdict(r, rules) for r in sign_errors])
    for key, field in (("robust_sign_error", "sign_error"), ("robust_sign_error_worst", "worst"),
                       ("robust_worst_environment", "environment"), ("robust_note", "reason")):
        data[f"claim_{key}"] = ("claim", [getattr(r or Robust(), field) for r in sign_errors])
    ds = xr.Dataset(data, coords={"claim": [c.name for c in CLAIMS]})
    ds.attrs["claims_rules"] = repr(sorted(rules.items()))
    return ds


def _fragile_mark(fragile_verdict: bool) -> str:
    return " (fragile)" if fragile_verdict else ""


def markdown(table: xr.Dataset) -> str:
    """The claims table as Markdown (one row per claim; a ``|`` in a text, as in ||theta||,
    escaped so that it does not split the cell)."""
    def text(row: xr.Dataset, key: str) -> str:
        return row[f"claim_{key}"].item().replace("|", "\\|")

    lines = ["| claim | source | statistic | estimate [CI] | p (Holm) | verdict | "
             "with measurement error | robust |", "|---|---|---|---|---|---|---|---|"]
    for name in table["claim"].values:
        row = table.sel(claim=name)
        estimate = table_text.interval(row["claim_estimate"], row["claim_ci_low"],
                                       row["claim_ci_high"])
        note = text(row, "note")
        lines.append(f"| {text(row, 'statement')} | {text(row, 'source')} | "
                     f"{text(row, 'statistic')} | {estimate} | "
                     f"{table_text.number(row['claim_p_holm'])} | "
                     f"**{row['claim_verdict'].item()}**"
                     f"{_fragile_mark(bool(row['claim_fragile']))}"
                     f"{_measurement_mark(bool(row['claim_only_without_measurement_error']))}"
                     f"{' — ' + note if note else ''} | {_measured_text(row)} | "
                     f"{_robust_text(row)} |")
    return "\n".join(lines) + "\n"


def _measurement_mark(only_without: bool) -> str:
    return " (only without measurement error)" if only_without else ""


def _measured_text(row: xr.Dataset) -> str:
    """The measurement-aware CI of one claims-table row, its widening over the run-level CI
    and the verdict it gives; a dash where the claim has none."""
    verdict_ = row["claim_measured_verdict"].item()
    if verdict_ in (NOT_APPLICABLE, NOT_TESTED):
        return table_text.NO_NUMBER
    low, high = (table_text.number(row[f"claim_measured_{end}"]) for end in ("low", "high"))
    return (f"[{low}, {high}], {table_text.number(row['claim_ci_widening'])}x as wide: "
            f"**{verdict_}**")


def _robust_text(row: xr.Dataset) -> str:
    """The robust verdict of one claims-table row: verdict with its worst-environment and
    pooled sign-errors, the reason where not tested, a dash where not applicable."""
    verdict_ = row["claim_robust_verdict"].item()
    if verdict_ == NOT_APPLICABLE:
        return table_text.NO_NUMBER
    if verdict_ == NOT_TESTED:
        return row["claim_robust_note"].item()
    return (f"**{verdict_}** (worst {table_text.number(row['claim_robust_sign_error_worst'])}, "
            f"pooled {table_text.number(row['claim_robust_sign_error'])})")


def digest(summary_claims: dict) -> str:
    """The tested claims of a ``summary.json`` (its ``claims``, as ``summary`` writes them) as
    a short Markdown table for the README: statement, estimate [CI] and verdict (marked
    fragile where ``fragile``, and where it holds only without measurement error), in
    catalogue order; claims not tested are left out."""
    lines = ["| claim | estimate [CI] | verdict |", "|---|---|---|"]
    for claim in CLAIMS:
        entry = summary_claims.get(claim.name)
        if entry is None or entry["verdict"] == NOT_TESTED:
            continue
        estimate = table_text.interval(entry["estimate"], entry["ci_low"], entry["ci_high"])
        statement = claim.statement.replace("|", "\\|")
        lines.append(f"| {statement} | {estimate} | **{entry['verdict']}**"
                     f"{_fragile_mark(entry['fragile'])}"
                     f"{_measurement_mark(entry['only_without_measurement_error'])} |")
    return "\n".join(lines) + "\n"


def summary(table: xr.Dataset) -> dict:
    """{claim: {verdict, fragile, estimate, ci_low, ci_high, p_holm, robust_verdict,
    robust_sign_error, robust_sign_error_worst, run_level_verdict, measured_verdict,
    only_without_measurement_error, measured_low, measured_high, ci_widening}} for
    summary.json (None for NaN)."""
    def number(value) -> float | None:
        value = float(value)
        return value if np.isfinite(value) else None

    return {str(name): {"verdict": str(row["claim_verdict"].item()),
                        "fragile": bool(row["claim_fragile"]),
                        "robust_verdict": str(row["claim_robust_verdict"].item()),
                        "run_level_verdict": str(row["claim_run_level_verdict"].item()),
                        "measured_verdict": str(row["claim_measured_verdict"].item()),
                        "only_without_measurement_error": bool(
                            row["claim_only_without_measurement_error"]),
                        **{key: number(row[f"claim_{key}"])
                           for key in ("estimate", "ci_low", "ci_high", "p_holm",
                                       "robust_sign_error", "robust_sign_error_worst",
                                       "measured_low", "measured_high", "ci_widening")}}
            for name, row in ((n, table.sel(claim=n)) for n in table["claim"].values)}
