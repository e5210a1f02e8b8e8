"""Does a measure depend on the learning rate and the batch size only through lr / B, SGD's
noise scale? A nested analysis of variance over the healthy runs at the final checkpoint.

**Why.** Jastrzębski et al. 2017 ("Three factors influencing minima in SGD", arXiv 1711.04623)
show that SGD's noise scale, and with it the width of the minima it reaches, is set by the
ratio lr / B; Kaur et al. 2023 ("On the maximum Hessian eigenvalue and generalization",
PMLR 187) find lambda_max moving with lr / B while generalisation does not. Chen et al.'s "a
larger lr or a smaller batch gives flatter, more compressed minima" may then be one effect,
the noise scale's, counted twice.

**Design.** Runs are grouped into *configurations* (lr, B) and configurations into *lines* of
equal lr / B: two ratios belong to one line when they differ by at most ``RATIO_RTOL``
relative to the larger (ratios sorted and chained, so that float rounding of 0.1 / 20 against
0.05 / 10 never splits a line). Seeds are the replicates. The statistic needs lr and B to be
the only swept hyperparameters besides the seed (another swept axis would enter the lines'
differences). Only lines holding >= 2 configurations carry within-line information; a line
of one configuration adds to the across-line variation only.

**Values.** y = log v for the positive measures (``LOGGED``: sharpness, MLS, NMLS,
lambda_max), since lr and B act multiplicatively; the log volumes (log LVR, top-3 log volume,
log NVR) are already logs and enter as they are. A run whose y is not finite (a log volume of
-inf, where a training point's Jacobian is numerically rank-deficient, or a non-positive
value under the log) is left out and counted (``ratio_n_excluded``): a sum of squares has no
place for -inf.

**Nested ANOVA** (lines > configurations within lines > seeds; Sokal & Rohlf, *Biometry*,
ch. 10). With n_c runs in configuration c of line l, configuration means ybar_c, line means
ybar_l (run-weighted) and the grand mean ybar:

    SS_across = sum_l n_l (ybar_l - ybar)^2          df = L - 1
    SS_within = sum_c n_c (ybar_c - ybar_l(c))^2     df = C - L
    SS_spread = sum_runs (y - ybar_c(run))^2          df = N - C

and SS_across + SS_within is the between-configuration sum of squares. The effect size is the
*within-line share* of it,

    share = SS_within / (SS_within + SS_across),

0 when the configuration means depend on lr / B alone, 1 when they differ only inside lines.
On a balanced grid in log lr x log B whose lines are centred (as lr {a, 2a, 4a} x
B {b, 2b, 4b}), a mean log-linear in both, y = alpha log lr + beta log B, gives
share = (alpha + beta)^2 / ((alpha + beta)^2 + (alpha - beta)^2): 0 for lr / B (beta =
-alpha), 1/2 for lr alone or B alone, 1/10 for lr^2 / B (sqrt scaling, lr ~ sqrt B).

**Seeds as blocks.** flatrep's seed sets a run's initialisation and batch order alike for
every configuration, so one seed can be sharper than another in every configuration. Where
every configuration ran every seed once (``crossed``), the S seeds are blocks of a
randomised complete block design: their sum of squares SS_seeds = C sum_s (ybar_s - ybar)^2
(df S - 1) is taken out of SS_spread, leaving SS_residual = SS_spread - SS_seeds with
df (C - 1)(S - 1), the configuration x seed interaction. A common seed effect cancels from
differences of configuration means in such a design; left in the residual it would hide
within-line differences. Otherwise (seeds not shared, a run left out) the seeds are
independent replicates: SS_seeds = 0, SS_residual = SS_spread, df N - C. ``seed_blocks``
says which.

**Seed noise** must not pass for within-line variation: with residual variance sigma^2, the
expected SS_within grows by (C - L) sigma^2 even when nothing but lr / B matters. The
classical test compares the two: F_within = (SS_within / (C - L)) / (SS_residual /
df_residual) with its F(C - L, df_residual) p-value (normal errors), and a permutation p
that needs no normality: runs are permuted among the configurations of their line (with seed
blocks, among those of their line and seed: ``correlations.shuffle`` within strata;
exchangeable when only lr / B matters), and p = (1 + #{F* >= F}) / (1 + n_perm) (Phipson &
Smyth 2010). A permutation that only relabels a line's configurations (with seed blocks: the
same for every seed) leaves F unchanged, so p cannot fall below about
prod_l 1 / (k_l!)^(S - 1) over lines of k_l configurations (1/576 for lr_batch_ratio: lines
of 3, 2, 2 configurations, 3 seeds); the F-test p, with normal errors, has no such floor.
``noise_share`` = (C - 1) MS_residual / (SS_within + SS_across) is the part of the
between-configuration sum of squares that seed noise alone gives on average (its
expectation with no configuration effect at all); a share of the order of
noise_share * (C - L) / (C - 1) is what seed noise produces inside lines. The across-line
test is the nested design's F_across = MS_across / MS_within, F(L - 1, C - L).

**CI.** Percentile bootstrap of the share. With seed blocks, S seeds are drawn with
replacement, each bringing its run of every configuration (Davison & Hinkley 1997, §3.8: the
resampling unit of a crossed design is the block); otherwise seeds are resampled within
configurations (``correlations.resample``; configuration sizes kept). A resample adds seed
noise to the configuration means on top of the noise already in them, so the CI leans
upwards: conservative for a claim that the share is small. With 3 seeds a block bootstrap
has 10 distinct resamples; its interval is coarse.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import scipy.stats
import xarray as xr

from flatrep.analysis.correlations import cells, percentile_ci, resample, shuffle
from flatrep.cube.views import final_healthy, hyperparameters, run_level

#: Measures whose variation is decomposed: sharpness, the compression measures and, where
#: measured, lambda_max (Kaur et al.).
MEASURES = ("sharpness", "mls", "log_lvr", "log_lvr_top3", "nmls", "log_nvr",
            "hessian_lambda_max")

#: Positive measures, analysed on the log scale (lr and B act multiplicatively).
LOGGED = ("sharpness", "mls", "nmls", "hessian_lambda_max")

#: Two lr / B ratios lie on one line when they differ by at most this, relative to the larger.
RATIO_RTOL = 1e-6

#: The swept coordinates the lines are made of, and the replicate coordinate.
AXES, SEED = ("lr", "batch_size"), "seed"

#: Relative tolerance under which a permuted F counts as reaching the observed one
#: (as ``correlations._TIE_RTOL``: round-off must not decide a tie).
_TIE_RTOL = 1e-12


def line_labels(ratios: np.ndarray, rtol: float = RATIO_RTOL) -> np.ndarray:
    """An integer label per ratio, equal for ratios on one line: sorted, each ratio joins the
    previous one's line when |r - r_prev| <= rtol max(|r|, |r_prev|)."""
    ratios = np.asarray(ratios, dtype=float)
    order = np.argsort(ratios, kind="stable")
    ordered = ratios[order]
    larger = np.maximum(np.abs(ordered[1:]), np.abs(ordered[:-1]))
    gaps = np.abs(np.diff(ordered)) > rtol * larger
    labels = np.empty(len(ratios), dtype=int)
    labels[order] = np.concatenate([[0], np.cumsum(gaps)]) if len(ratios) else []
    return labels


@dataclass(frozen=True)
class Design:
    """Runs grouped into configurations (``config``) nested in lines (``line``), each an
    integer label per run; the labels of one configuration's line agree. ``block``: each
    run's seed label where every configuration ran every seed once (seeds crossed with the
    configurations, ``crossed``), else None (seeds as independent replicates)."""
    config: np.ndarray
    line: np.ndarray
    block: np.ndarray | None = None

    @property
    def config_line(self) -> np.ndarray:
        """The line of each configuration label (configurations in label order)."""
        out = np.empty(self.config.max() + 1, dtype=int)
        out[self.config] = self.line
        return out


def design(lr: np.ndarray, batch_size: np.ndarray, seed: np.ndarray | None = None) -> Design:
    """Configurations (lr, B) and lines of equal lr / B (``line_labels``) of the runs, with
    the seeds as blocks where they are crossed with the configurations (``crossed``)."""
    config = cells([np.asarray(lr), np.asarray(batch_size)], len(lr))
    line = line_labels(np.asarray(lr, float) / np.asarray(batch_size, float))
    return relabel(Design(config, line, None if seed is None else cells([np.asarray(seed)],
                                                                        len(lr))))


def crossed(config: np.ndarray, block: np.ndarray) -> bool:
    """Whether every configuration holds every block exactly once (>= 2 blocks)."""
    n_config, n_block = config.max() + 1, block.max() + 1
    counts = np.bincount(config * n_block + block, minlength=n_config * n_block)
    return bool(n_block >= 2 and (counts == 1).all())


def relabel(layout: Design, keep: np.ndarray | None = None) -> Design:
    """``layout`` restricted to the runs ``keep`` (all by default) with labels 0, 1, ...;
    its blocks kept only where they are crossed with its configurations."""
    keep = np.ones(len(layout.config), bool) if keep is None else keep
    config, line = (np.unique(labels[keep], return_inverse=True)[1]
                    for labels in (layout.config, layout.line))
    block = None
    if layout.block is not None:
        block = np.unique(layout.block[keep], return_inverse=True)[1]
        block = block if crossed(config, block) else None
    return Design(config, line, block)


def _group_means(values: np.ndarray, labels: np.ndarray,
                 count: int) -> tuple[np.ndarray, np.ndarray]:
    """(per-label means, per-label sizes) along the last axis of ``values`` (shape (..., n))."""
    sizes = np.bincount(labels, minlength=count).astype(float)
    sums = np.zeros(values.shape[:-1] + (count,))
    np.add.at(sums, (..., labels), values)     # sum over the units of each label
    with np.errstate(invalid="ignore", divide="ignore"):
        return sums / sizes, sizes


def sums_of_squares(values: np.ndarray, layout: Design) -> np.ndarray:
    """(SS_across, SS_within, SS_seeds, SS_residual) of the design (module docstring), along
    the last axis of ``values`` (shape (..., n) gives (..., 4)); configurations and lines
    weighted by their runs. SS_seeds is the seed blocks' sum of squares (0 without blocks),
    SS_residual the runs' spread about their configuration means less SS_seeds."""
    n_config = layout.config.max() + 1
    n_line = layout.line.max() + 1
    config_mean, config_size = _group_means(values, layout.config, n_config)
    line_mean, line_size = _group_means(values, layout.line, n_line)
    grand = values.mean(-1, keepdims=True)
    across = (line_size * (line_mean - grand) ** 2).sum(-1)
    within = (config_size * (config_mean - line_mean[..., layout.config_line]) ** 2).sum(-1)
    spread = ((values - config_mean[..., layout.config]) ** 2).sum(-1)
    seeds = np.zeros_like(spread)
    if layout.block is not None:
        block_mean, block_size = _group_means(values, layout.block, layout.block.max() + 1)
        seeds = (block_size * (block_mean - grand) ** 2).sum(-1)
    return np.stack([across, within, seeds, spread - seeds], axis=-1)


def degrees_of_freedom(layout: Design) -> np.ndarray:
    """(L - 1, C - L, S - 1, residual) of ``sums_of_squares``: the residual's is N - C
    without blocks, (C - 1)(S - 1) with S crossed seed blocks (and 0 for the seeds)."""
    n_runs, n_config, n_line = len(layout.config), layout.config.max() + 1, layout.line.max() + 1
    if layout.block is None:
        return np.array([n_line - 1, n_config - n_line, 0, n_runs - n_config])
    n_block = layout.block.max() + 1
    return np.array([n_line - 1, n_config - n_line, n_block - 1,
                     (n_config - 1) * (n_block - 1)])


def within_share(squares: np.ndarray) -> np.ndarray:
    """SS_within / (SS_within + SS_across) along the last axis of ``sums_of_squares``; NaN
    where the configuration means are all equal."""
    between = squares[..., 0] + squares[..., 1]
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(between > 0, squares[..., 1] / between, np.nan)


def f_ratio(numerator: np.ndarray, df_numerator: int, denominator: np.ndarray,
            df_denominator: int) -> np.ndarray:
    """(numerator / df_numerator) / (denominator / df_denominator); NaN where a df is 0 or the
    denominator is 0 (no variation to compare with)."""
    if df_numerator < 1 or df_denominator < 1:
        return np.full(np.shape(numerator), np.nan)[()]
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_denominator = np.asarray(denominator, float) / df_denominator
        return np.where(mean_denominator > 0, (np.asarray(numerator, float) / df_numerator)
                        / np.where(mean_denominator > 0, mean_denominator, 1.0), np.nan)[()]


def f_p_value(f: float, df_numerator: int, df_denominator: int) -> float:
    """P(F(df_numerator, df_denominator) >= f); NaN where f is."""
    return float(scipy.stats.f.sf(f, df_numerator, df_denominator)) if np.isfinite(f) else np.nan


@dataclass
class Decomposition:
    """The nested ANOVA of one measure; NaN and a ``reason`` where it is not tested."""
    reason: str = ""
    within_share: float = np.nan
    ci_low: float = np.nan
    ci_high: float = np.nan
    p_perm: float = np.nan
    f_within: float = np.nan
    p_f_within: float = np.nan
    f_across: float = np.nan
    p_f_across: float = np.nan
    noise_share: float = np.nan
    squares: np.ndarray = field(default_factory=lambda: np.full(4, np.nan))
    df: np.ndarray = field(default_factory=lambda: np.zeros(4, dtype=int))
    seed_blocks: bool = False
    n_runs: int = 0
    n_excluded: int = 0
    n_configs: int = 0
    n_lines: int = 0
    n_lines_informative: int = 0


def _lacking(layout: Design) -> str:
    """Why ``layout`` cannot separate within-line from across-line variation ('' when it
    can): >= 2 lines, one of them with >= 2 configurations, and a configuration with >= 2
    runs (seed replicates)."""
    lines = np.unique(layout.line)
    per_line = np.bincount(layout.config_line[np.unique(layout.config)])
    if len(lines) < 2:
        return f"fewer than 2 lr / B lines ({len(lines)})"
    if per_line.max() < 2:
        return (f"no lr / B line holds >= 2 configurations (lr, B) ({len(lines)} lines of one "
                "configuration each)")
    if np.bincount(layout.config).max() < 2:
        return ("no configuration has >= 2 runs (seeds): within-line variation cannot be told "
                "from seed noise")
    return ""


def decompose(values: np.ndarray, layout: Design, n_boot: int, level: float, n_perm: int,
              rng: np.random.Generator) -> Decomposition:
    """The nested ANOVA of ``values`` (one y per run, already on its analysis scale) over
    ``layout``, with the share's bootstrap CI and the within-line permutation p; runs with a
    non-finite y are left out first (``n_excluded``)."""
    finite = np.isfinite(values)
    out = Decomposition(n_excluded=int((~finite).sum()))
    y = values[finite]
    if not len(y):
        out.reason = "no run with a finite value"
        return out
    layout = relabel(layout, finite)
    out.n_runs, out.n_configs = len(y), int(layout.config.max() + 1)
    out.n_lines = int(layout.line.max() + 1)
    out.n_lines_informative = int((np.bincount(layout.config_line) >= 2).sum())
    out.seed_blocks = layout.block is not None
    out.reason = _lacking(layout)
    if out.reason:
        return out
    out.df = degrees_of_freedom(layout)
    out.squares = sums_of_squares(y, layout)
    across, within, _, residual = out.squares
    out.within_share = float(within_share(out.squares))
    out.f_within = float(f_ratio(within, out.df[1], residual, out.df[3]))
    out.f_across = float(f_ratio(across, out.df[0], within, out.df[1]))
    out.p_f_within = f_p_value(out.f_within, out.df[1], out.df[3])
    out.p_f_across = f_p_value(out.f_across, out.df[0], out.df[1])
    if across + within > 0 and out.df[3] > 0:
        out.noise_share = float((out.n_configs - 1) * residual / out.df[3] / (across + within))
    out.ci_low, out.ci_high = bootstrap_share_ci(y, layout, n_boot, level, rng)
    out.p_perm = permutation_p(y, layout, n_perm, rng)
    return out


def bootstrap_share_ci(y: np.ndarray, layout: Design, n_boot: int, level: float,
                       rng: np.random.Generator) -> tuple[float, float]:
    """Percentile CI of the within-line share: with seed blocks, S seeds drawn with
    replacement, each bringing its run of every configuration (the pairing kept); without,
    seeds resampled within configurations (``correlations.resample``)."""
    if layout.block is None:
        draws = np.stack([resample(layout.config, rng) for _ in range(n_boot)])
        order = np.argsort(layout.config, kind="stable")     # each draw's runs in this layout
    else:
        by_block = np.argsort(layout.block * (layout.config.max() + 1) + layout.config)
        n_block = layout.block.max() + 1
        runs = by_block.reshape(n_block, -1)       # row: one seed's runs, configuration order
        draws = runs[rng.integers(0, n_block, size=(n_boot, n_block))].reshape(n_boot, -1)
        order = runs.ravel()
    drawn = Design(layout.config[order], layout.line[order])
    return percentile_ci(within_share(sums_of_squares(y[draws], drawn)), n_boot, level)


def permutation_p(y: np.ndarray, layout: Design, n_perm: int,
                  rng: np.random.Generator) -> float:
    """Within-line permutation p of F_within: runs permuted among the configurations of
    their line (with seed blocks, within line and seed), p = (1 + #{F* >= F (1 - 1e-12)}) /
    (1 + n_perm); NaN where F is."""
    df = degrees_of_freedom(layout)
    strata = layout.line if layout.block is None else (
        layout.line * (layout.block.max() + 1) + layout.block)

    def f_of(values: np.ndarray) -> np.ndarray:
        squares = sums_of_squares(values, layout)
        return f_ratio(squares[..., 1], df[1], squares[..., 3], df[3])

    observed = f_of(y)
    if not np.isfinite(observed):
        return float("nan")
    permuted = y[np.stack([shuffle(strata, rng) for _ in range(n_perm)])]
    hits = int((f_of(permuted) >= observed * (1 - _TIE_RTOL)).sum())
    return (1 + hits) / (1 + n_perm)


def analysis_values(final: xr.Dataset, name: str) -> np.ndarray:
    """y per run of the final checkpoint: log of a ``LOGGED`` measure (NaN where it is not
    positive), the others as they are (``views.run_level``)."""
    values = run_level(final, name).values.astype(float)
    if name not in LOGGED:
        return values
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(values > 0, np.log(np.where(values > 0, values, 1.0)), np.nan)


def not_swept(hparams: dict[str, np.ndarray]) -> str:
    """Why the runs' hyperparameters give no lr / B lines ('' when they do): lr and
    batch_size must be coordinates, and no other axis but the seed may vary."""
    missing = [name for name in AXES if name not in hparams]
    if missing:
        return f"the study has no {' or '.join(missing)} coordinate"
    others = sorted(name for name, values in hparams.items() if name not in (*AXES, SEED)
                    and len(np.unique(np.asarray(values).astype(str))) > 1)
    if others:
        return f"the study varies {', '.join(others)} besides lr and batch size"
    return ""


def measure_decomposition(cube: xr.Dataset, name: str, n_boot: int, level: float,
                          n_perm: int, seed: int) -> Decomposition:
    """``decompose`` of measure ``name`` over the healthy runs at the final checkpoint of
    ``cube`` (a fresh generator from ``seed`` per measure, so that the claims table and
    stats.nc give the same numbers); not tested with the reason where the study or the cube
    cannot give it: the study's design first (the same reason for every measure), then the
    measure (missing; too few finite runs left for the design, ``decompose``)."""
    final = final_healthy(cube)
    hparams = hyperparameters(final)
    reason = not_swept(hparams)
    layout = None if reason else design(hparams["lr"], hparams["batch_size"],
                                        hparams.get(SEED))
    reason = (reason or _lacking(layout)
              or ("" if name in final else f"{name} is not in the cube"))
    if reason:
        return Decomposition(reason=reason)
    return decompose(analysis_values(final, name), layout, n_boot, level, n_perm,
                     np.random.default_rng(seed))


#: long_name and definition of the per-measure variables ``ratio_statistics`` writes
#: (dim ``ratio_measure``), keyed by their ``Decomposition`` field.
ATTRIBUTES = {
    "within_share": ("within-line share of the between-configuration sum of squares",
                     "SS_within / (SS_within + SS_across): configurations (lr, B) nested in "
                     "lines of equal lr / B, y = log of a positive measure, a log volume as it "
                     "is"),
    "ci_low": ("lower end of the share's percentile-bootstrap CI",
               "seeds resampled as blocks (seed_blocks) or within configurations"),
    "ci_high": ("upper end of the share's percentile-bootstrap CI",
                "seeds resampled as blocks (seed_blocks) or within configurations"),
    "p_perm": ("within-line permutation p of F_within",
               "(1 + #{F* >= F}) / (1 + n_perm), runs permuted within their lr / B line (and "
               "seed, with seed_blocks)"),
    "f_within": ("F of configurations within lines against the residual seed variation",
                 "(SS_within / (C - L)) / (SS_residual / df_residual), df_residual = "
                 "(C - 1)(S - 1) with seed blocks, N - C without"),
    "p_f_within": ("F-test p of F_within", "P(F(C - L, df_residual) >= F_within), normal "
                   "errors"),
    "f_across": ("F of lines against configurations within lines",
                 "(SS_across / (L - 1)) / (SS_within / (C - L))"),
    "p_f_across": ("F-test p of F_across", "P(F(L - 1, C - L) >= F_across), normal errors"),
    "noise_share": ("between-configuration sum of squares expected from seed noise alone, "
                    "as a share of the observed", "(C - 1) (SS_residual / df_residual) / "
                    "(SS_within + SS_across)"),
    "seed_blocks": ("seeds analysed as blocks", "1 where every configuration ran every seed "
                    "once (seed effect common to the configurations removed), 0 where seeds "
                    "are independent replicates"),
    "n_runs": ("runs in the decomposition", "healthy runs with a finite y"),
    "n_excluded": ("healthy runs left out", "y not finite (a -inf log volume, a "
                   "non-positive value under the log)"),
    "n_configs": ("configurations (lr, B)", "C"),
    "n_lines": ("lines of equal lr / B", f"L; ratios equal to a relative {RATIO_RTOL:g}"),
    "n_lines_informative": ("lines with >= 2 configurations",
                            "the lines that carry within-line information"),
    "reason": ("why the decomposition is not tested", "'' where tested"),
}

#: The sums of squares and their degrees of freedom, along dim ``ratio_source``.
SOURCES = ("across_lines", "within_lines", "seeds", "residual")


def ratio_statistics(cube: xr.Dataset, n_boot: int, level: float, n_perm: int,
                     seed: int) -> xr.Dataset:
    """Every measure of ``MEASURES``' nested ANOVA (``measure_decomposition``) as the
    ``ratio_*`` variables of stats.nc: one row per measure (dim ``ratio_measure``), the sums
    of squares and degrees of freedom along ``ratio_source``, and the configurations' lr, B,
    line ratio, runs and mean y (dim ``ratio_config``)."""
    rows = [measure_decomposition(cube, name, n_boot, level, n_perm, seed) for name in MEASURES]
    data = {f"ratio_{key}": ("ratio_measure", _column([getattr(row, key) for row in rows]),
                             dict(zip(("long_name", "definition"), text)))
            for key, text in ATTRIBUTES.items()}
    data["ratio_sum_of_squares"] = (("ratio_measure", "ratio_source"),
                                    np.stack([row.squares for row in rows]),
                                    {"long_name": "nested-ANOVA sums of squares",
                                     "definition": "SS_across, SS_within, SS_seeds (blocks; 0 "
                                                   "without), SS_residual (module "
                                                   "flatrep.analysis.noise_scale)"})
    data["ratio_df"] = (("ratio_measure", "ratio_source"), np.stack([row.df for row in rows]),
                        {"long_name": "degrees of freedom",
                         "definition": "L - 1, C - L, S - 1 and (C - 1)(S - 1) with seed "
                                       "blocks; 0 and N - C without"})
    ds = xr.Dataset(data, coords={"ratio_measure": list(MEASURES),
                                  "ratio_source": list(SOURCES)})
    return ds.merge(_configurations(cube))


def _column(values: list) -> np.ndarray:
    """One variable's values over the measures; flags as int8 (NetCDF has no bool)."""
    return np.asarray(values, dtype=np.int8) if isinstance(values[0], bool) else np.asarray(
        values)


def _configurations(cube: xr.Dataset) -> xr.Dataset:
    """Per configuration (lr, B) of the healthy runs: its lr, B, lr / B, runs and the mean y
    of every measure (NaN where a measure is missing or no run has a finite y); empty when
    the study does not sweep lr and B alone."""
    final = final_healthy(cube)
    hparams = hyperparameters(final)
    if not_swept(hparams):
        return xr.Dataset(coords={"ratio_config": np.arange(0)})
    layout = design(hparams["lr"], hparams["batch_size"])
    first = np.array([np.flatnonzero(layout.config == c)[0]
                      for c in range(layout.config.max() + 1)])
    means = np.full((len(MEASURES), len(first)), np.nan)
    for m, name in enumerate(MEASURES):
        if name in final:
            y = analysis_values(final, name)
            finite = np.isfinite(y)
            counts = np.bincount(layout.config[finite], minlength=len(first))
            sums = np.bincount(layout.config[finite], weights=y[finite], minlength=len(first))
            with np.errstate(invalid="ignore", divide="ignore"):
                means[m] = np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)
    lr = np.asarray(hparams["lr"], float)[first]
    batch = np.asarray(hparams["batch_size"], float)[first]
    return xr.Dataset(
        {"ratio_config_mean": (("ratio_measure", "ratio_config"), means,
                               {"long_name": "mean y of the configuration's runs",
                                "definition": "y = log of a positive measure, a log volume "
                                              "as it is; runs with a non-finite y left out"}),
         "ratio_config_runs": ("ratio_config", np.bincount(layout.config),
                               {"long_name": "healthy runs of the configuration"})},
        coords={"ratio_measure": list(MEASURES), "ratio_config": np.arange(len(first)),
                "ratio_config_lr": ("ratio_config", lr),
                "ratio_config_batch_size": ("ratio_config", batch),
                "ratio_config_ratio": ("ratio_config", lr / batch),
                "ratio_config_line": ("ratio_config", layout.config_line)})
