"""Recompute one number of summary.json from cube.nc alone and check that they agree.

    python workflow/analysis/summary_number.py --results results/quick

The number: the Pearson correlation across runs, at the final checkpoint, of sharpness with
the mean MLS over the measured train samples, over the runs that never diverged. Exits 1 when
the two differ by more than 1e-9 (relative).
"""

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np
import scipy.stats
import xarray as xr


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", type=Path, default=Path("results/quick"),
                        help="a study's results folder, holding cube.nc and summary.json")
    args = parser.parse_args()

    cube = xr.load_dataset(args.results / "cube.nc")
    healthy = cube["diverged"].max("step") == 0
    final = cube.isel(step=-1).where(healthy, drop=True)
    sharpness = final["sharpness"].values
    mls = final["mls"].sel(subset="train").mean("sample").values
    keep = np.isfinite(sharpness) & np.isfinite(mls)
    from_cube = float(scipy.stats.pearsonr(sharpness[keep], mls[keep]).statistic)

    summary = json.loads((args.results / "summary.json").read_text())
    from_summary = summary["correlation_across_runs"]["sharpness~mls"]["pearson"]["estimate"]
    print(f"from cube.nc:      {from_cube!r}")
    print(f"from summary.json: {from_summary!r}")
    agree = from_summary is not None and math.isclose(from_cube, from_summary, rel_tol=1e-9)
    print("agree" if agree else "DIFFER")
    sys.exit(0 if agree else 1)


if __name__ == "__main__":
    main()
