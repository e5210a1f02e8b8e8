"""``summary.md``: the study's headline results as Markdown, beside its cubes.

The phase of training the runs reach and whether the two log volumes agree, then three
tables from stats.nc: the claims with their verdicts (``flatrep.analysis.claims``), the
across-runs correlations of sharpness with each compression measure, and every bound's
violation rate (over all points and where its assumptions hold), the assumptions blamed
for its violations, and its tightness; last, sharpness's robust sign-error and conditional
mutual information over coupled pairs of runs (``flatrep.analysis.robust``); and whether each
measure depends on lr and B only through lr / B (``flatrep.analysis.noise_scale``).
"""

from __future__ import annotations

import json

import numpy as np
import xarray as xr

from flatrep.analysis import claims, late_phase, table_text
from flatrep.analysis.bounds import ASSUMPTIONS


def correlations(stats_ds: xr.Dataset) -> str:
    """Pearson r and Kendall tau with CIs, the runs each uses, and the Holm-adjusted
    permutation p, across runs. Pearson drops runs with a non-finite value (a -inf log
    volume); tau ranks them lowest."""
    lines = ["| sharpness vs | Pearson r [CI] | Kendall τ [CI] | runs (r / τ) | "
             "permutation p, Holm (τ) |", "|---|---|---|---|---|"]
    for measure in stats_ds["measure"].values:
        cells = [table_text.interval(*(stats_ds[f"corr_{key}"].sel(measure=measure,
                                                                   coefficient=method)
                                       for key in ("estimate", "ci_low", "ci_high")),
                                     spec=".2f")
                 for method in ("pearson", "kendall")]
        runs = " / ".join(str(int(stats_ds["corr_n"].sel(measure=measure, coefficient=method)))
                          for method in ("pearson", "kendall"))
        p = stats_ds["corr_p_perm_holm"].sel(measure=measure, coefficient="kendall")
        lines.append(f"| {measure} | {cells[0]} | {cells[1]} | {runs} | "
                     f"{table_text.number(p)} |")
    return "\n".join(lines) + "\n"


def _blame(row: xr.Dataset) -> str:
    """``assumption: count`` of the violations at points where that assumption failed."""
    counts = {name: int(row[f"violations_without_{name}"]) for name in ASSUMPTIONS}
    return ", ".join(f"{name}: {count}" for name, count in counts.items() if count) or "—"


def bounds(stats_ds: xr.Dataset) -> str:
    """Violations (exact CI) over all points and where the bound's assumptions hold, the
    assumptions that failed where violations occurred, the median final tightness and the
    runs the final log-log regression keeps (it drops a zero LHS, e.g. the volume of a
    rank-deficient Jacobian, whose log is -inf)."""
    lines = ["| bound | violations / evaluated | violation rate CI | assumptions met: "
             "violations / evaluated | violations where an assumption failed | "
             "median final LHS/RHS | runs in the final log-log fit |",
             "|---|---|---|---|---|---|---|"]
    healthy = stats_ds.attrs["n_runs"] - stats_ds.attrs["n_diverged_runs"]
    for name in stats_ds["bound"].values:
        row = stats_ds.sel(bound=name)
        evaluated = int(row["evaluated"])
        interval = (f"[{float(row['violation_rate_ci_low']):.3g}, "
                    f"{float(row['violation_rate_ci_high']):.3g}]" if evaluated else "—")
        met = (f"{int(row['violations_assumptions_met'])} / "
               f"{int(row['evaluated_assumptions_met'])}")
        lines.append(f"| {name} | {int(row['violations'])} / {evaluated} | {interval} | "
                     f"{met} | {_blame(row)} | "
                     f"{table_text.number(row['tightness_final_median'])} | "
                     f"{int(row['final_n'])} of {healthy} |")
    return "\n".join(lines) + "\n"


def _labelled(value, label: str) -> str:
    """'value (label)'; a dash without a label (the statistic was not tested)."""
    return f"{table_text.number(value)} ({label})" if label else table_text.NO_NUMBER


def robust(stats_ds: xr.Dataset) -> str:
    """Sharpness against each target over the coupled pairs: Dziugaite et al.'s weighted
    mean sign-error and worst environment, the pairs, Jiang et al.'s normalised CMI (minimum
    over conditioning sets, with its set), and why a statistic is not tested."""
    lines = ["| sharpness vs | sign-error (weighted mean) | worst environment | pairs | "
             "CMI / H, min (conditioning set) | not tested |", "|---|---|---|---|---|---|"]
    for target in stats_ds["robust_target"].values:
        row = stats_ds.sel(robust_measure="sharpness", robust_target=target)
        text = {name: str(row[f"robust_{name}"].values)
                for name in ("worst_environment", "cmi_set", "sign_error_reason",
                             "cmi_reason")}
        reasons = dict.fromkeys(reason for reason in (text["sign_error_reason"],
                                                      text["cmi_reason"]) if reason)
        lines.append(f"| {target} | {table_text.number(row['robust_sign_error'])} | "
                     f"{_labelled(row['robust_sign_error_worst'], text['worst_environment'])} | "
                     f"{int(row['robust_n_pairs'])} | "
                     f"{_labelled(row['robust_cmi_min'], text['cmi_set'])} | "
                     f"{'; '.join(reasons) or table_text.NO_NUMBER} |")
    return "\n".join(lines) + "\n"


def _with_p(value, p) -> str:
    """'value (p p)'; a dash without a value."""
    if not np.isfinite(float(value)):
        return table_text.NO_NUMBER
    return f"{table_text.number(value)} (p {table_text.number(p)})"


def lr_batch_ratio(stats_ds: xr.Dataset) -> str:
    """Each measure's nested ANOVA over lines of equal lr / B: the within-line share of the
    between-configuration sum of squares with its CI, the within-line permutation p, the F
    tests of configurations within lines (against the residual seed variation) and of lines
    (against configurations within lines), the share seed noise alone gives, the design
    (whether the seeds were blocks), and why a measure is not tested."""
    lines = ["| measure | within-line share [CI] | permutation p | F within lines (p) | "
             "F across lines (p) | seed-noise share | lines (>= 2 configs) / configs / runs "
             "| not tested |", "|---|---|---|---|---|---|---|---|"]
    for measure in stats_ds["ratio_measure"].values:
        row = stats_ds.sel(ratio_measure=measure)
        reason = str(row["ratio_reason"].values)
        design = (f"{int(row['ratio_n_lines'])} ({int(row['ratio_n_lines_informative'])}) / "
                  f"{int(row['ratio_n_configs'])} / {int(row['ratio_n_runs'])}"
                  f"{', seed blocks' if int(row['ratio_seed_blocks']) else ''}")
        share = table_text.interval(*(row[f"ratio_{key}"]
                                      for key in ("within_share", "ci_low", "ci_high")))
        lines.append(
            f"| {measure} | {share} | "
            f"{table_text.number(row['ratio_p_perm'])} | "
            f"{_with_p(row['ratio_f_within'], row['ratio_p_f_within'])} | "
            f"{_with_p(row['ratio_f_across'], row['ratio_p_f_across'])} | "
            f"{table_text.number(row['ratio_noise_share'])} | "
            f"{table_text.NO_NUMBER if reason else design} | "
            f"{reason or table_text.NO_NUMBER} |")
    return "\n".join(lines) + "\n"


def diverged_note(stats_ds: xr.Dataset) -> str:
    """One paragraph naming the runs excluded for divergence and where they diverged."""
    runs = json.loads(stats_ds.attrs.get("diverged_runs", "{}"))
    if not runs:
        return ""
    named = ", ".join(f"`{run}`" + (f" (iteration {at})" if at is not None else "")
                      for run, at in runs.items())
    return (f"Diverged (NaN/inf training loss), excluded from every statistic below: "
            f"{named}.\n\n")


def phase(stats_ds: xr.Dataset) -> str:
    """Which phase of training the study reaches (``flatrep.analysis.late_phase``): how many runs
    interpolate and how many end at S <= FALL_FRACTION x a peak reached after interpolation,
    the late phase of Chen et al. Fig. 1/2 that their trajectory claims speak about."""
    count = late_phase.counts(stats_ds)
    text = (f"**Phase.** {count['interpolated']} of {count['runs']} runs interpolate (train "
            f"accuracy 1, train loss < {stats_ds.attrs['interpolation_loss']:g}); "
            f"{count['falls']} end at sharpness <= {late_phase.FALL_FRACTION:g} x a peak "
            f"reached after interpolation (median final / peak "
            f"{count['final_over_peak_median']:.2f}).")
    if count["falls"] < late_phase.LATE_SHARE * count["runs"]:
        text += (f" Fewer than {late_phase.LATE_SHARE:.0%} of the runs reach the late phase "
                 "in which Chen et al. report that sharpness falls: the late-phase claims below "
                 "are judged on what the runs reach, and say how many interpolate.")
    return text + "\n\n"


#: Where the theorem's and the figures' log volume are compared: (where, the claim on log_lvr,
#: the claim on log_lvr_top3).
VOLUME_PAIRS = (("across runs at the final checkpoint", "sharpness_lvr", "sharpness_lvr_top3"),
                ("within runs after interpolation", "late_log_lvr_follows",
                 "late_log_lvr_top3_follows"))


def volumes(claims_table: xr.Dataset) -> str:
    """The theorem's log volume against the figures' (``VOLUME_PAIRS``): whether their taus
    with S agree in sign, across runs and within runs."""
    claims_named = set(claims_table["claim"].values)
    parts = []
    for where, theorem, figure in VOLUME_PAIRS:
        if not {theorem, figure} <= claims_named:
            continue
        taus = [float(claims_table["claim_estimate"].sel(claim=name))
                for name in (theorem, figure)]
        if all(np.isfinite(taus)):
            agree = ("agree in sign" if np.sign(taus[0]) == np.sign(taus[1])
                     else "**disagree in sign**")
            parts.append(f"{where} τ = {taus[0]:.2f} and {taus[1]:.2f}, {agree}")
    if not parts:
        return ""
    return ("**Two log volumes.** `log_lvr` (all K singular values of df/dx) is the LVR of "
            "Chen et al.'s theorem; `log_lvr_top3` (the top 3) is the log volume their figures "
            f"plot. Their Kendall τ with S: {'; '.join(parts)}. Where they disagree, a verdict "
            "on one volume says nothing of the other.\n\n")


def study_summary(study: str, stats_ds: xr.Dataset, claims_table: xr.Dataset) -> str:
    """The whole ``summary.md`` of one study."""
    return (f"# {study}: summary\n\n{stats_ds.attrs['n_runs']} runs "
            f"({stats_ds.attrs['n_diverged_runs']} diverged, excluded), "
            f"{stats_ds.attrs['ci_level']:.0%} CIs.\n\n{diverged_note(stats_ds)}"
            f"{phase(stats_ds)}{volumes(claims_table)}"
            f"## Claims\n\n{claims.markdown(claims_table)}\n"
            f"## Correlations across runs, final checkpoint\n\n{correlations(stats_ds)}\n"
            f"## Bounds over runs x checkpoints\n\n{bounds(stats_ds)}\n"
            f"## Robust sign-error and CMI over coupled runs, final checkpoint\n\n"
            f"{robust(stats_ds)}\n"
            f"## lr / batch size: within against across lines of equal lr / B, final "
            f"checkpoint\n\n{lr_batch_ratio(stats_ds)}")
