"""Figures survive what real studies produce: a bound never evaluated (all NaN), studies that
sweep neither lr nor batch size."""

import numpy as np
import xarray as xr

from flatrep import bounds, report


def test_bound_figures_with_a_bound_that_was_never_evaluated(measured_run, tmp_path):
    ds, _ = measured_run
    evaluated = bounds.evaluate(ds)
    for name in ("lhs", "rhs", "holds", "tightness"):
        evaluated[name].loc[{"bound": "rank_hessian_layers"}] = np.nan
    report.bound_panels(evaluated, tmp_path / "bounds.png")
    report.tightness_distributions(evaluated, tmp_path / "tightness.png")
    for png in ("bounds.png", "tightness.png"):
        assert (tmp_path / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_trajectories_of_a_study_with_optimiser_arms_only(measured_run, tmp_path):
    """No lr or batch-size row exists: one row coloured by configuration, string-valued
    hyperparameters included."""
    ds, _ = measured_run
    arms = xr.concat([ds, ds.assign_coords(run=["other"])], dim="run")
    arms = arms.drop_vars(["lr", "batch_size"]).assign_coords(
        optimizer=("run", ["sgd", "adamw"]), averaging_start=("run", [1.0, 0.5]))
    rows = report._rows(arms, {"lr_row_batch_size": 20, "batch_row_lr": 0.1})
    assert [title for title, _, _ in rows] == ["coloured by configuration"]
    assert list(rows[0][1]["configuration"].values) == ["optimizer=sgd, averaging_start=1",
                                                        "optimizer=adamw, averaging_start=0.5"]
    report.trajectories(arms, {"lr_row_batch_size": 20, "batch_row_lr": 0.1},
                        tmp_path / "trajectories.png")
    assert (tmp_path / "trajectories.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
