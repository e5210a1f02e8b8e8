"""Figures survive what real studies produce: a bound never evaluated (all NaN), studies that
sweep neither lr nor batch size."""

import numpy as np
import xarray as xr

from flatrep.analysis import bounds, figures
from flatrep.cube import views


def test_bound_figures_with_a_bound_that_was_never_evaluated(measured_tiny_run, tmp_path):
    ds, _ = measured_tiny_run
    evaluated = bounds.evaluate(ds)
    for name in ("lhs", "rhs", "holds", "tightness"):
        evaluated[name].loc[{"bound": "rank_hessian_layers"}] = np.nan
    figures.bound_panels(evaluated, tmp_path / "bounds.png")
    figures.tightness_distributions(evaluated, tmp_path / "tightness.png")
    for png in ("bounds.png", "tightness.png"):
        assert (tmp_path / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_trajectories_of_a_study_with_optimiser_arms_only(measured_tiny_run, tmp_path):
    """No lr or batch-size row exists: one row coloured by configuration, string-valued
    hyperparameters included."""
    ds, _ = measured_tiny_run
    arms = xr.concat([ds, ds.assign_coords(run=["other"])], dim="run")
    arms = arms.drop_vars(["lr", "batch_size"]).assign_coords(
        optimizer=("run", ["sgd", "adamw"]), averaging_start=("run", [1.0, 0.5]))
    rows = figures._rows(arms, {"lr_row_batch_size": 20, "batch_row_lr": 0.1})
    assert [title for title, _, _ in rows] == ["coloured by configuration"]
    assert list(rows[0][1]["configuration"].values) == ["optimizer=sgd, averaging_start=1",
                                                        "optimizer=adamw, averaging_start=0.5"]
    figures.trajectories(arms, {"lr_row_batch_size": 20, "batch_row_lr": 0.1},
                         tmp_path / "trajectories.png")
    assert (tmp_path / "trajectories.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_log_volume_panel_averages_the_full_rank_points(measured_tiny_run):
    """Where some points' log LVR is -inf (rank-deficient J_x), the panel's value per run and
    step is the mean over the other points, not -inf; where every point's is -inf (the tiny
    MLP's 16-unit ReLU layers at these points) there is no value (NaN, a gap in the curve);
    other panels are views.run_level unchanged."""
    ds, _ = measured_tiny_run
    assert np.isneginf(ds["log_lvr"].sel(subset="train")).all()
    values = figures.panel_values(ds, "log_lvr")
    assert values.isnull().all()
    mixed = ds["log_lvr_pseudo"].copy()
    mixed.loc[{"subset": "train", "sample": 0}] = -np.inf
    values = figures.panel_values(ds.assign(log_lvr=mixed), "log_lvr")
    expected = ds["log_lvr_pseudo"].sel(subset="train").isel(sample=slice(1, None))
    np.testing.assert_allclose(values, expected.mean("sample"), rtol=1e-15)
    xr.testing.assert_identical(figures.panel_values(ds, "mls"),
                                views.run_level(ds, "mls"))
