"""Figures: the paper's trajectory panels and LHS-vs-RHS plots of every bound."""

from __future__ import annotations

import textwrap
from pathlib import Path

import matplotlib
import matplotlib.ticker

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (backend must be chosen first)
import numpy as np  # noqa: E402
import xarray as xr  # noqa: E402

from flatrep import atomic  # noqa: E402
from flatrep.analysis import conventions, correlations, table_text
from flatrep.cube import views
from flatrep.params import studies


def _save(fig, path: str | Path) -> None:
    """Write the figure atomically (format from the suffix of ``path``) and close it."""
    with atomic.destination(path, suffix=Path(path).suffix) as tmp:
        fig.savefig(tmp, dpi=110)
    plt.close(fig)

def _rows(cube: xr.Dataset, rows_cfg: dict) -> list[tuple[str, xr.Dataset, str]]:
    """(title, runs, colour key): runs at the fixed batch coloured by lr, and vice versa; a
    study that sweeps neither (e.g. weight decay or optimiser arms) gets one row coloured by
    its configuration (the swept hyperparameters other than the seed)."""
    result = []
    if "batch_size" in cube.coords:
        at = rows_cfg["lr_row_batch_size"]
        result.append((f"batch size {at}, coloured by lr",
                       cube.where(cube["batch_size"] == at, drop=True), "lr"))
    if "lr" in cube.coords:
        at = rows_cfg["batch_row_lr"]
        result.append((f"lr {at}, coloured by batch size",
                       cube.where(cube["lr"] == at, drop=True), "batch_size"))
    result = [row for row in result if row[1].sizes["run"] > 0 and row[2] in row[1].coords]
    if not result:
        swept = [name for name in studies.SWEEPABLE if name != "seed" and name in cube.coords]
        labels = [", ".join(f"{name}={_text(cube[name].values[i])}" for name in swept) or "all"
                  for i in range(cube.sizes["run"])]
        result.append(("coloured by configuration",
                       cube.assign_coords(configuration=("run", labels)), "configuration"))
    return result


def _text(value) -> str:
    """A hyperparameter value as a legend shows it (numbers in %g)."""
    return f"{value:g}" if isinstance(value, (int, float, np.number)) else str(value)


def panel_values(cube: xr.Dataset, name: str) -> xr.DataArray:
    """A trajectory panel's value per run and step: ``views.run_level``, except that a
    per-sample -inf (the log volume of a numerically rank-deficient Jacobian) is left out of
    the mean over the training points, which would otherwise be -inf and leave no curve."""
    values = cube[name]
    if "sample" in values.dims:
        values = values.where(~np.isneginf(values))
    return views.run_level(cube.assign({name: values}), name)


def trajectories(cube: xr.Dataset, rows_cfg: dict, path: str | Path) -> None:
    """The six panels of Chen et al. Fig. 1/2 vs iteration (``conventions.PANELS`` under
    ``figures.conventions``); mean over seeds per config, with a min-max band."""
    rows = _rows(cube, rows_cfg)
    panels = conventions.PANELS[rows_cfg.get("conventions", "flatrep")]
    fig, axes = plt.subplots(len(rows), len(panels), figsize=(3.2 * len(panels), 3 * len(rows)),
                             squeeze=False, constrained_layout=True)
    for (title, runs, key), row_axes in zip(rows, axes):
        levels = np.unique(runs[key].values)
        colours = plt.cm.viridis(np.linspace(0, 0.9, len(levels)))
        for level, colour in zip(levels, colours):
            group = runs.where(runs[key] == level, drop=True)
            for axis, ax in zip(panels, row_axes):
                values = conventions.apply(axis, panel_values(group, axis.variable))
                steps = group["step"].values
                label_text = _text(level) if key == "configuration" else f"{key}={_text(level)}"
                ax.plot(steps, values.mean("run"), color=colour, label=label_text)
                ax.fill_between(steps, values.min("run"), values.max("run"), color=colour,
                                alpha=0.2, linewidth=0)
                ax.set_xlabel("iteration")
                ax.set_ylabel(conventions.label(axis, cube.attrs.get("loss", "mse")), fontsize=8)
        row_axes[0].set_yscale("log")
        row_axes[0].set_title(title, loc="left", fontsize=9)
        row_axes[0].legend(fontsize=7)
    _save(fig, path)


def bound_panels(bounds: xr.Dataset, path: str | Path) -> None:
    """LHS against RHS for each bound over all runs and checkpoints (log-log, y = x dashed)."""
    names = list(bounds["bound"].values)
    cols = min(3, len(names))
    rows = int(np.ceil(len(names) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 3.6 * rows), squeeze=False,
                             constrained_layout=True)
    for ax, name in zip(axes.flat, names):
        b = bounds.sel(bound=name)
        lhs, rhs = b["lhs"].values.ravel(), b["rhs"].values.ravel()
        step = np.broadcast_to(b["step"].values, b["lhs"].shape).ravel()
        ok = (lhs > 0) & (rhs > 0) & np.isfinite(lhs) & np.isfinite(rhs)
        if not ok.any():   # e.g. a dense rank above rank.dense_max_params
            ax.set_title(f"{name}  (not evaluated)", fontsize=9)
            ax.axis("off")
            continue
        points = ax.scatter(rhs[ok], lhs[ok], c=step[ok], s=8, cmap="viridis")
        low, high = min(lhs[ok].min(), rhs[ok].min()), max(lhs[ok].max(), rhs[ok].max())
        ax.plot([low, high], [low, high], "k--", linewidth=1)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        rate = 1 - np.nanmean(b["holds"].values)
        ax.set_title(f"{name}  (violations {rate:.1%})", fontsize=9)
        ax.set_xlabel("RHS")
        ax.set_ylabel("LHS")
    for ax in list(axes.flat)[len(names):]:
        ax.axis("off")
    fig.colorbar(points, ax=axes, label="iteration", shrink=0.6)
    _save(fig, path)


def _annotation(stats_ds: xr.Dataset, measure: str, x: np.ndarray, y: np.ndarray,
                sharpness: conventions.Axis) -> str:
    """'r = .. [lo, hi]  tau = .. [lo, hi]' from the across-runs correlations of stats.nc (of
    S); where the x axis is a transform of S, Pearson's r on the plotted values instead
    (without CI: stats.nc's bootstrap is of S), tau being unchanged by a monotone map."""
    parts = []
    for method, symbol in (("pearson", "r"), ("kendall", "τ")):
        if method == "pearson" and sharpness.transform is not None:
            finite = np.isfinite(x) & np.isfinite(y)
            estimate = (correlations.correlation(x[finite], y[finite], method)[0]
                        if finite.sum() >= 3 else np.nan)
            parts.append(f"{symbol} (on these axes) = {estimate:.2f}")
            continue
        cell = stats_ds.sel(measure=measure, coefficient=method)
        parts.append(f"{symbol} = {float(cell['corr_estimate']):.2f} "
                     f"[{float(cell['corr_ci_low']):.2f}, {float(cell['corr_ci_high']):.2f}]")
    return "\n".join(parts)


def correlation_pairs(cube: xr.Dataset, stats_ds: xr.Dataset, path: str | Path,
                      figures_cfg: dict | None = None) -> None:
    """Sharpness against each compression measure across runs at the final checkpoint,
    coloured by lr, annotated with Pearson r and Kendall tau and their bootstrap CIs; the
    sharpness axis under ``figures.conventions`` (``conventions.sharpness_axis``)."""
    final = views.final_healthy(cube)
    measures = list(stats_ds["measure"].values)
    fig, axes = plt.subplots(1, len(measures), figsize=(3.6 * len(measures), 3.4),
                             squeeze=False, constrained_layout=True)
    axis = conventions.sharpness_axis((figures_cfg or {}).get("conventions", "flatrep"))
    sharpness = conventions.apply(axis, views.run_level(final, "sharpness").values)
    colour = final["lr"].values if "lr" in final.coords else None
    for ax, measure in zip(axes[0], measures):
        values = views.run_level(final, measure).values
        points = ax.scatter(sharpness, values, c=colour, s=18, cmap="viridis")
        ax.set_xlabel(axis.label, fontsize=8)
        ax.set_ylabel(f"{measure} (train mean)")
        ax.text(0.03, 0.97, _annotation(stats_ds, measure, sharpness, values, axis),
                transform=ax.transAxes, va="top", fontsize=8)
    if colour is not None:
        fig.colorbar(points, ax=axes, label="lr", shrink=0.8)
    _save(fig, path)


def tightness_distributions(bounds: xr.Dataset, path: str | Path) -> None:
    """log10 tightness LHS/RHS of every bound at the final checkpoint, one box per bound
    (theorems blue, conditional bounds orange); 0 means tight, > 0 violated."""
    final = bounds.isel(step=-1)
    names = list(final["bound"].values)
    values = [np.log10(final["tightness"].sel(bound=name).values) for name in names]
    values = [v[np.isfinite(v)] for v in values]
    fig, ax = plt.subplots(figsize=(max(6.0, 0.55 * len(names)), 4.2), constrained_layout=True)
    boxes = ax.boxplot(values, patch_artist=True, widths=0.6)
    for patch, kind in zip(boxes["boxes"], final["kind"].values):
        patch.set_facecolor("tab:blue" if kind == "theorem" else "tab:orange")
    ax.axhline(0, color="k", linestyle="--", linewidth=1)
    ax.set_xticks(range(1, len(names) + 1), names, rotation=60, ha="right", fontsize=8)
    ax.set_ylabel("log10 tightness (LHS / RHS), final checkpoint")
    _save(fig, path)


VERDICT_COLOURS = {"supported": "#c7e9c0", "contradicted": "#fcbba1",
                   "inconclusive": "#f0f0f0", "not tested": "#ffffff"}


def claims_table(stats_ds: xr.Dataset, path: str | Path) -> None:
    """The claims table of stats.nc as a figure: statement, estimate [CI], Holm p, verdict."""
    rows = []
    for name in stats_ds["claim"].values:
        row = stats_ds.sel(claim=name)
        rows.append([row["claim_statement"].item(), row["claim_statistic"].item(),
                     table_text.interval(row["claim_estimate"], row["claim_ci_low"],
                                         row["claim_ci_high"]),
                     table_text.number(row["claim_p_holm"]), row["claim_verdict"].item()])
    fig, ax = plt.subplots(figsize=(18, 0.25 * len(rows) + 1.0), constrained_layout=True)
    ax.axis("off")
    table = ax.table(cellText=rows, colLabels=["claim", "statistic", "estimate [CI]",
                                               "p (Holm)", "verdict"],
                     colWidths=[0.38, 0.34, 0.12, 0.06, 0.08], loc="center", cellLoc="left")
    table.auto_set_font_size(False)
    table.set_fontsize(7.5)
    for i, row in enumerate(rows, start=1):
        table[i, 4].set_facecolor(VERDICT_COLOURS[row[4]])
    _save(fig, path)


def robust_cdf(stats_ds: xr.Dataset, path: str | Path) -> None:
    """Dziugaite et al.'s Fig. 1 for each measure (row) and target (column) of the robust
    sign-error: the empirical CDF of the environments' sign-errors E_e
    (``robust_environment_sign_error``, ``robust_environment_cdf``), the pooled weighted mean
    (dashed) and chance, 1/2 (dotted); a panel without a sign-error says why. A study where
    none is tested gets one panel with the reasons."""
    measures, targets = stats_ds["robust_measure"].values, stats_ds["robust_target"].values
    reasons = stats_ds["robust_sign_error_reason"].values.astype(str)
    if (reasons != "").all():
        fig, ax = plt.subplots(figsize=(6, 2), constrained_layout=True)
        ax.axis("off")
        ax.text(0.5, 0.5, "\n".join(sorted(set(reasons.ravel()))), ha="center", va="center",
                fontsize=9, wrap=True)
        _save(fig, path)
        return
    fig, axes = plt.subplots(len(measures), len(targets), squeeze=False,
                             figsize=(2.6 * len(targets), 2.4 * len(measures)),
                             constrained_layout=True, sharex=True, sharey=True)
    for i, measure in enumerate(measures):
        for j, target in enumerate(targets):
            ax, cell = axes[i, j], stats_ds.sel(robust_measure=measure, robust_target=target)
            ax.set_title(f"{measure} vs {target}", fontsize=8)
            if reasons[i, j]:
                ax.text(0.5, 0.5, textwrap.fill(reasons[i, j], 34), ha="center", va="center",
                        fontsize=6, transform=ax.transAxes)
                continue
            errors = cell["robust_environment_sign_error"].values
            defined = np.isfinite(errors)
            order = np.argsort(errors[defined], kind="stable")
            ax.step(np.r_[0.0, errors[defined][order], 1.0],
                    np.r_[0.0, cell["robust_environment_cdf"].values[defined][order], 1.0],
                    where="post", color="tab:blue")
            pooled = float(cell["robust_sign_error"])
            ax.axvline(pooled, color="k", linestyle="--", linewidth=1,
                       label=f"pooled {table_text.number(pooled)}")
            ax.axvline(0.5, color="grey", linestyle=":", linewidth=1)
            ax.legend(fontsize=6, loc="lower right")
    for ax in axes[-1]:
        ax.set_xlabel("sign-error of an environment", fontsize=8)
    for ax in axes[:, 0]:
        ax.set_ylabel("CDF over environments", fontsize=8)
    axes[0, 0].set_xlim(0, 1)
    _save(fig, path)
