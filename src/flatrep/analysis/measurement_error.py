"""Measurement error carried into a claim's CI: a two-stage (hierarchical) bootstrap.

Every run-level number of a study is itself an estimate. A claim's run-level bootstrap
resamples the runs as if their numbers were exact; this module draws each number from its
error model instead, one of four:

* **points** — a per-point measure (dims subset, sample: MLS, log LVR, NMLS, local dimension,
  Ma & Ying's gradient moments, ...) enters a claim as its mean over the study's measurement
  points of one subset (``flatrep.cube.views.run_level``: subset=train), and the sharpness
  S = (1/n) sum_i ||grad_theta f(x_i)||_F^2 is the train mean of ``sample_sharpness``. The
  points are a sample of the split. A draw resamples them with replacement, the same indices
  for every measure and every checkpoint of a run (all are measured on the same points),
  independently across runs, and takes the mean over the drawn points that are not NaN (as
  ``run_level`` does; a -inf log volume among them makes the mean -inf, as there).
* **probes** — a stochastic curvature estimate with a standard error ``<name>_se``
  (Hutchinson-type: tr H, ||H||_F, ||H - G||_F, ...) is a mean over random probes, so by the
  central limit theorem a draw is ``estimate + se z``, z ~ N(0, 1), independent across runs,
  checkpoints and quantities (quantities from the same probes are in truth correlated; the
  draws ignore it).
* **Ritz** — a Lanczos extreme eigenvalue theta with residual bound r = |beta_k y_k|
  (``<name>_residual``). A Ritz value never exceeds lambda_max nor falls below lambda_min
  (Cauchy interlacing), and some eigenvalue lies within r of it, so once theta has converged to
  the extreme eigenvalue, lambda_max lies in [theta, theta + r] (lambda_min in
  [theta - r, theta]). The bound gives no distribution within the interval: a draw is uniform
  on it.
* **test rows** — test accuracy is a frequency over the n rows of the test split
  (``robust.n_test_rows``): a draw is Binomial(n, acc) / n. The accuracy gap
  ``generalization_gap`` = train_acc - test_acc moves with it (train accuracy is over the whole
  train split: exact). lambda_max ||theta||^2 (``hessian_lambda_max_scaled``) moves with its
  lambda_max.

Everything else is held exact: the train and test losses, ||theta||, the hyperparameters, and
the sampling of the curvature points (the cube stores no per-point curvature); ``error_model``
names the model a quantity is drawn from.

**Two stages** (Davison & Hinkley 1997, *Bootstrap methods*, §3.8, "strategy 2"). Draw b of a
statistic T (``two_stage_ci``): (1) resample the runs with replacement, within groups where the
run-level bootstrap has them, with the run-level bootstrap's random stream, so that with every
error model exact the interval is the run-level one to the bit; (2) read every drawn run's
numbers from measurement draw b. The percentile interval of the T_b is the measurement-aware
CI; its width over the run-level CI's is the widening. A run-level number already carries its
measurement error, so the between-run spread that stage (1) resamples contains it once, and
stage (2) adds it again: the interval errs wide (Davison & Hinkley show the same for the mean
of a two-stage sample). A verdict that survives it survives measurement error; one that does
not may hinge on it.
"""

from __future__ import annotations

import warnings
import zlib
from typing import Callable

import numpy as np
import xarray as xr

from flatrep.analysis.correlations import percentile_ci, resample, unit_groups

POINTS, PROBES, RITZ, TEST_ROWS, EXACT = "points", "probes", "Ritz", "test rows", "exact"

#: Draws gathered at a time when points are resampled (bounds the memory of one gather).
_DRAW_CHUNK = 64


class MeasurementDraws:
    """``n_draws`` joint draws of a study's run-level numbers from their error models (module
    docstring), over the runs and checkpoints of ``cube``.

    Each quantity is drawn once for the whole (run, step) grid of ``cube``, from a random
    stream of its own (``seed`` and the quantity's name), and cached: two readings of one
    quantity at the same run and checkpoint agree draw by draw, whatever subset of the runs
    each reads. ``n_test`` is the test split's size (None: test accuracy held exact).
    """

    def __init__(self, cube: xr.Dataset, n_draws: int, seed: int, n_test: int | None):
        self.cube, self.n_draws, self.seed, self.n_test = cube, n_draws, seed, n_test
        self._run = {str(run): k for k, run in enumerate(cube["run"].values)}
        self._step = {step: k for k, step in enumerate(cube["step"].values.tolist())}
        self._cache: dict[tuple, tuple[np.ndarray, str]] = {}

    def at(self, ds: xr.Dataset, name: str, subset: str = "train", **select) -> np.ndarray:
        """Draws of the run-level ``name`` (``select``: e.g. moment=1) at the runs and
        checkpoints of ``ds``, a selection of the cube with dims (run,) (one checkpoint per run:
        ``step`` a scalar or along ``run``) or (run, step); shape (n_draws, *those dims)."""
        grid, _ = self._grid(name, subset, select)
        runs = np.array([self._run[str(run)] for run in ds["run"].values])
        steps = np.array([self._step[step] for step in np.ravel(ds["step"].values).tolist()])
        if "step" in ds.dims:
            return grid[:, runs[:, None], steps[None, :]]
        return grid[:, runs, np.broadcast_to(steps, runs.shape)]

    def error_model(self, name: str, subset: str = "train", **select) -> str:
        """The error model ``name`` is drawn from (``POINTS``, ``PROBES``, ``RITZ``,
        ``TEST_ROWS`` or ``EXACT``)."""
        return self._grid(name, subset, select)[1]

    def _grid(self, name: str, subset: str, select: dict) -> tuple[np.ndarray, str]:
        key = (name, subset, tuple(sorted(select.items())))
        if key not in self._cache:
            self._cache[key] = self._draw(name, subset, select)
        return self._cache[key]

    def _draw(self, name: str, subset: str, select: dict) -> tuple[np.ndarray, str]:
        """(draws on the cube's (run, step) grid, error model) of one quantity."""
        cube = self.cube
        if name == "sharpness" and "sample_sharpness" in cube:
            return self._grid("sample_sharpness", "train", {})
        if name == "generalization_gap" and "train_acc" in cube and "test_acc" in cube:
            test, model = self._grid("test_acc", subset, {})
            return self._exact("train_acc") - test, model
        if name == "hessian_lambda_max_scaled" and {"hessian_lambda_max", "param_norm"} <= set(
                cube.data_vars):
            eigenvalue, model = self._grid("hessian_lambda_max", subset, {})
            return eigenvalue * self._exact("param_norm") ** 2, model
        values = cube[name].sel(select)
        if "sample" in values.dims:
            return self._point_means(values.sel(subset=subset), subset), POINTS
        rng = self._rng(name)
        shape = (self.n_draws, *self._exact(name).shape)
        if f"{name}_se" in cube:
            noise = self._exact(f"{name}_se") * rng.standard_normal(shape)
            return self._exact(name) + noise, PROBES
        if f"{name}_residual" in cube:
            side = -1.0 if "lambda_min" in name else 1.0
            return (self._exact(name) + side * self._exact(f"{name}_residual")
                    * rng.random(shape)), RITZ
        if name == "test_acc" and self.n_test:
            accuracy = self._exact(name)
            defined = np.isfinite(accuracy)
            counts = rng.binomial(self.n_test, np.where(defined, accuracy, 0.0), shape)
            return np.where(defined, counts / self.n_test, np.nan), TEST_ROWS
        return np.broadcast_to(self._exact(name), shape), EXACT

    def _exact(self, name: str) -> np.ndarray:
        """``name`` on the (run, step) grid, as measured."""
        return self.cube[name].transpose("run", "step").values.astype(float)

    def _rng(self, *labels: str) -> np.random.Generator:
        """The random stream of one quantity: the study seed and the labels' CRC-32s."""
        return np.random.default_rng([self.seed, *(zlib.crc32(label.encode())
                                                   for label in labels)])

    def _point_means(self, values: xr.DataArray, subset: str) -> np.ndarray:
        """Means over resampled points of (run, step, sample) ``values``: (n_draws, run, step).

        The point indices of a run are one stream per subset, shared by every measure."""
        values = values.transpose("run", "step", "sample").values.astype(float)
        runs, steps, points = values.shape
        index = self._rng("points", subset).integers(0, points, (self.n_draws, runs, points))
        out = np.empty((self.n_draws, runs, steps))
        # an all-NaN run (a checkpoint without measures) has a NaN mean, as run_level gives it
        with np.errstate(invalid="ignore"), warnings.catch_warnings():
            warnings.filterwarnings("ignore", "Mean of empty slice", RuntimeWarning)
            for start in range(0, self.n_draws, _DRAW_CHUNK):
                chunk = index[start:start + _DRAW_CHUNK, :, None, :]
                drawn = np.take_along_axis(values[None], np.broadcast_to(
                    chunk, (len(chunk), runs, steps, points)), axis=-1)
                out[start:start + _DRAW_CHUNK] = np.nanmean(drawn, axis=-1)
        return out


def two_stage_resamples(statistic: Callable[..., np.ndarray], drawn: list[np.ndarray],
                        n_boot: int, rng: np.random.Generator,
                        groups: np.ndarray | None = None) -> np.ndarray:
    """The n_boot values T_b of ``statistic`` under the two-stage bootstrap (module docstring).

    ``drawn`` holds one (n_boot, n) array per argument of ``statistic``, row b the n runs'
    numbers in measurement draw b (an exact quantity repeated in every row). Resample b draws
    the runs with ``correlations.resample(groups, rng)``, the run-level bootstrap's indices
    when ``rng`` is in the same state, and applies ``statistic`` to every argument's row b at
    those runs; ``statistic`` maps (n_boot, n) arrays to n_boot values (NaN: undefined)."""
    n = drawn[0].shape[1]
    groups = unit_groups(groups, n)
    index = np.stack([resample(groups, rng) for _ in range(n_boot)])
    return statistic(*(np.take_along_axis(d, index, axis=1) for d in drawn))


def two_stage_ci(statistic: Callable[..., np.ndarray], drawn: list[np.ndarray], n_boot: int,
                 level: float, rng: np.random.Generator,
                 groups: np.ndarray | None = None) -> tuple[float, float]:
    """Percentile CI (``correlations.percentile_ci``) of ``two_stage_resamples``: the
    measurement-aware CI."""
    return percentile_ci(two_stage_resamples(statistic, drawn, n_boot, rng, groups), n_boot,
                         level)


def widening(low: float, high: float, measured_low: float, measured_high: float) -> float:
    """Width of the measurement-aware CI over the run-level CI's (NaN when either is
    undefined or the run-level CI has no width)."""
    width = high - low
    if not (np.isfinite(width) and width > 0):
        return float("nan")
    return float((measured_high - measured_low) / width)
