"""Figures: the paper's trajectory panels and LHS-vs-RHS plots of every bound."""

from __future__ import annotations

from pathlib import Path

import matplotlib
import matplotlib.ticker

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (backend must be chosen first)
import numpy as np  # noqa: E402
import xarray as xr  # noqa: E402

from flatrep import stats  # noqa: E402

#: (variable, y label, transform) of the six trajectory panels of Chen et al. Fig. 1/2.
PANELS = (("train_loss", "train loss", None),
          ("nmls", "NMLS", None),
          ("sharpness", "sharpness S", None),
          ("log_lvr", "log volume (log LVR)", None),
          ("mls", "MLS", None),
          ("local_dim", "log local dimension", np.log))


def _rows(cube: xr.Dataset, rows_cfg: dict) -> list[tuple[str, xr.Dataset, str]]:
    """(title, runs, colour key): runs at the fixed batch coloured by lr, and vice versa."""
    result = []
    if "batch_size" in cube.coords:
        at = rows_cfg["lr_row_batch_size"]
        result.append((f"batch size {at}, coloured by lr",
                       cube.where(cube["batch_size"] == at, drop=True), "lr"))
    if "lr" in cube.coords:
        at = rows_cfg["batch_row_lr"]
        result.append((f"lr {at}, coloured by batch size",
                       cube.where(cube["lr"] == at, drop=True), "batch_size"))
    return [row for row in result if row[1].sizes["run"] > 0 and row[2] in row[1].coords]


def trajectories(cube: xr.Dataset, rows_cfg: dict, path: str | Path) -> None:
    """Six panels vs iteration; mean over seeds per config, with a min-max band."""
    rows = _rows(cube, rows_cfg)
    fig, axes = plt.subplots(len(rows), len(PANELS), figsize=(3.2 * len(PANELS), 3 * len(rows)),
                             squeeze=False, constrained_layout=True)
    for (title, runs, key), row_axes in zip(rows, axes):
        levels = np.unique(runs[key].values)
        colours = plt.cm.viridis(np.linspace(0, 0.9, len(levels)))
        for level, colour in zip(levels, colours):
            group = runs.where(runs[key] == level, drop=True)
            for (name, label, transform), ax in zip(PANELS, row_axes):
                values = stats.run_level(group, name)
                if transform is not None:
                    values = transform(values)
                steps = group["step"].values
                ax.plot(steps, values.mean("run"), color=colour, label=f"{key}={level:g}")
                ax.fill_between(steps, values.min("run"), values.max("run"), color=colour,
                                alpha=0.2, linewidth=0)
                ax.set_xlabel("iteration")
                ax.set_ylabel(label)
        row_axes[0].set_yscale("log")
        row_axes[0].set_title(title, loc="left", fontsize=9)
        row_axes[0].legend(fontsize=7)
    fig.savefig(path, dpi=110)
    plt.close(fig)


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
        points = ax.scatter(rhs[ok], lhs[ok], c=step[ok], s=8, cmap="viridis")
        if ok.any():
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
    fig.savefig(path, dpi=110)
    plt.close(fig)
