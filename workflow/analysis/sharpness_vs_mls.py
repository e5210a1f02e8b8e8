"""Sharpness vs mean train MLS across runs at the final checkpoint, from cube.nc alone.

    python workflow/analysis/sharpness_vs_mls.py --results results/quick

Each point is one run that never diverged, coloured by its learning rate. The Pearson r in the
title is summary.json's across-runs correlation (of the raw values, not their logs).
"""

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import scipy.stats  # noqa: E402
import xarray as xr  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", type=Path, default=Path("results/quick"),
                        help="a study's results folder, holding cube.nc")
    parser.add_argument("--out", type=Path,
                        help="PNG to write (default: <results>/figures/sharpness_vs_mls.png)")
    args = parser.parse_args()
    out = args.out or args.results / "figures" / "sharpness_vs_mls.png"

    cube = xr.load_dataset(args.results / "cube.nc")
    healthy = cube["diverged"].max("step") == 0
    final = cube.isel(step=-1).where(healthy, drop=True)
    sharpness = final["sharpness"].values
    mls = final["mls"].sel(subset="train").mean("sample").values
    lr = final["lr"].values
    keep = np.isfinite(sharpness) & np.isfinite(mls)
    r = scipy.stats.pearsonr(sharpness[keep], mls[keep]).statistic

    fig, ax = plt.subplots(figsize=(4.5, 3.5), layout="constrained")
    points = ax.scatter(sharpness[keep], mls[keep], c=lr[keep], cmap="viridis",
                        norm=matplotlib.colors.LogNorm())
    fig.colorbar(points, ax=ax, label="learning rate")
    ax.set(xscale="log", yscale="log", xlabel="sharpness (final checkpoint)",
           ylabel="mean train MLS (final checkpoint)",
           title=f"Pearson r = {r:.2f} over {keep.sum()} runs")
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=150)
    print(out)


if __name__ == "__main__":
    main()
