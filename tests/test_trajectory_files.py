"""The trajectory files DVC plots (``flatrep.analysis.trajectory_files``): the mean over the
healthy runs at each step, by hand on a cube built here."""

import numpy as np
import xarray as xr

from flatrep.analysis import trajectory_files


def cube() -> xr.Dataset:
    """Three runs, two steps; run c diverged at step 10; MLS per sample on two subsets."""
    sharpness = np.array([[1.0, 2.0], [3.0, 6.0], [5.0, np.nan]])        # (run, step)
    mls = np.zeros((3, 2, 2, 2))                                          # run, step, subset, sample
    mls[:, :, 0, :] = [[[1.0, 3.0], [2.0, 2.0]], [[5.0, 5.0], [np.inf, 4.0]],
                       [[7.0, 7.0], [9.0, 9.0]]]
    mls[:, :, 1, :] = 100.0                                              # test: not averaged in
    return xr.Dataset(
        {"sharpness": (("run", "step"), sharpness),
         "mls": (("run", "step", "subset", "sample"), mls),
         "diverged": (("run", "step"), np.array([[0, 0], [0, 0], [0, 1]], dtype=np.int8))},
        coords={"run": ["a", "b", "c"], "step": [0, 10], "subset": ["train", "test"]})


def test_each_step_is_the_mean_over_the_healthy_runs():
    assert trajectory_files.csv_text(cube(), "sharpness") == "step,sharpness\n0,2.0\n10,4.0\n"


def test_a_per_sample_measure_is_averaged_over_train_then_runs_skipping_non_finite_runs():
    """Run a: means 2 and 2; run b: 5 and inf (left out at step 10); run c diverged."""
    assert trajectory_files.csv_text(cube(), "mls") == "step,mls\n0,3.5\n10,2.0\n"


def test_a_step_without_a_finite_value_is_empty():
    ds = cube()
    ds["sharpness"][:, 1] = np.nan
    assert trajectory_files.csv_text(ds, "sharpness").splitlines()[2] == "10,"
