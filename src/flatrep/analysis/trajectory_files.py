"""The study's trajectories as small CSV files that DVC plots (``dvc plots show``, and
``dvc plots diff`` to lay two experiments' curves over each other).

One file per quantity in ``TRAJECTORY_PLOTS``, ``results/<study>/trajectory/<name>.csv``,
with the columns ``step`` and ``<name>``: at each checkpoint step t the mean over the healthy
runs (``flatrep.cube.views.healthy_runs``) of the run-level value (``views.run_level``: a
scalar such as the sharpness S_t as it is, a per-sample measure such as MLS averaged over the
measurement points of ``subset=train``), i.e. (1/R) sum_r m_r(t). dvc.yaml declares each file
as a plot of its stage with ``x: step`` and ``y: <name>``.
"""

from __future__ import annotations

import numpy as np
import xarray as xr

from flatrep.cube import views

#: The quantities written as trajectory files, in the order of dvc.yaml's plots.
TRAJECTORY_PLOTS = ("sharpness", "mls")


def csv_text(cube: xr.Dataset, name: str) -> str:
    """``step,<name>`` and one row per checkpoint step: the mean over the healthy runs
    (empty where no healthy run has a finite value)."""
    values = views.run_level(cube, name).where(views.healthy_runs(cube), drop=True)
    rows = [f"step,{name}"]
    for step, column in zip(cube["step"].values, values.transpose("step", "run").values):
        finite = column[np.isfinite(column)]
        rows.append(f"{int(step)},{repr(float(finite.mean())) if finite.size else ''}")
    return "\n".join(rows) + "\n"
