"""Views of a study cube that the statistics, the claims and the figures share: a measure per
run and step, the runs that never diverged, their final checkpoint and hyperparameters."""

from __future__ import annotations

import numpy as np
import xarray as xr


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


def final_healthy(cube: xr.Dataset) -> xr.Dataset:
    """The final checkpoint of the healthy runs."""
    return cube.isel(step=-1).where(healthy_runs(cube), drop=True)


def hyperparameters(cube: xr.Dataset) -> dict[str, np.ndarray]:
    """The run coordinates (lr, batch_size, seed, ...): 1-D coordinates along ``run``."""
    return {str(name): coord.values for name, coord in cube.coords.items()
            if coord.dims == ("run",) and name != "run"}
