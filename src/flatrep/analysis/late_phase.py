"""The late phase of a training run (Chen et al. 2023 §5, Fig. 1/2): what follows
interpolation.

A run *interpolates* at its first checkpoint t* where the train accuracy is 1 and the train loss
is below ``stats.interpolation_loss``; its *late phase* is every checkpoint t >= t*. Chen et al.
report that there the sharpness S_t, after a peak, falls, and that MLS, log volume and NMLS fall
with it. ``fall`` summarises one run's sharpness trajectory by its peak max_t S_t, the final
value S_T and their ratio S_T / max_t S_t; a run shows the late-phase fall when the ratio is at
most a chosen fraction (0.8 in the default study's target) and the peak comes at or after t*.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import xarray as xr


def interpolation_index(train_acc: np.ndarray, train_loss: np.ndarray,
                        threshold: float) -> int | None:
    """Index of the first checkpoint with train accuracy 1 and train loss < ``threshold``
    (both in step order); None when the run never interpolates."""
    reached = (np.asarray(train_acc) >= 1.0) & (np.asarray(train_loss) < threshold)
    return int(np.argmax(reached)) if reached.any() else None


def late_phase(cube: xr.Dataset, threshold: float) -> xr.DataArray:
    """Boolean (run, step): the checkpoint is at or after the run's interpolation
    (``interpolation_index`` on the cube's ``train_acc`` and ``train_loss``)."""
    acc = cube["train_acc"].transpose("run", "step").values
    loss = cube["train_loss"].transpose("run", "step").values
    mask = np.zeros(acc.shape, dtype=bool)
    for r, (run_acc, run_loss) in enumerate(zip(acc, loss)):
        start = interpolation_index(run_acc, run_loss, threshold)
        if start is not None:
            mask[r, start:] = True
    return xr.DataArray(mask, dims=("run", "step"),
                        coords={"run": cube["run"], "step": cube["step"]})


@dataclass(frozen=True)
class Fall:
    """One run's sharpness trajectory: its peak, where the peak is, the final value."""
    peak: float
    peak_step: int
    final: float
    interpolation_step: int | None

    @property
    def ratio(self) -> float:
        """S_T / max_t S_t (1 when the peak is the last checkpoint)."""
        return self.final / self.peak

    @property
    def peak_after_interpolation(self) -> bool:
        return self.interpolation_step is not None and self.peak_step >= self.interpolation_step

    def falls(self, fraction: float) -> bool:
        """The late-phase fall: peak at or after interpolation, S_T <= ``fraction`` x peak."""
        return self.peak_after_interpolation and self.ratio <= fraction


def fall(steps: np.ndarray, sharpness: np.ndarray, train_acc: np.ndarray,
         train_loss: np.ndarray, threshold: float) -> Fall:
    """``Fall`` of one run from its checkpoints (arrays in step order)."""
    steps, sharpness = np.asarray(steps), np.asarray(sharpness, float)
    peak = int(np.nanargmax(sharpness))
    start = interpolation_index(train_acc, train_loss, threshold)
    return Fall(float(sharpness[peak]), int(steps[peak]), float(sharpness[-1]),
                None if start is None else int(steps[start]))


#: A run "falls" when its final sharpness is at most this fraction of a peak reached after
#: interpolation (the late-phase target of the default study: issue "The paper's regime").
FALL_FRACTION = 0.8
#: A study reaches the late phase when at least this share of its runs falls (the same target).
LATE_SHARE = 0.8


def phase_statistics(cube: xr.Dataset, threshold: float) -> xr.Dataset:
    """Per run (dim ``run``): ``interpolation_step`` (NaN: never), ``sharpness_peak``,
    ``sharpness_peak_step``, ``sharpness_final_over_peak`` and ``late_phase_fall``
    (``Fall.falls(FALL_FRACTION)``), from the cube's ``sharpness``, ``train_acc`` and
    ``train_loss``."""
    steps = cube["step"].values
    falls = [fall(steps, cube["sharpness"].sel(run=run).values,
                  cube["train_acc"].sel(run=run).values, cube["train_loss"].sel(run=run).values,
                  threshold) for run in cube["run"].values]
    columns = {
        "interpolation_step": [np.nan if f.interpolation_step is None else f.interpolation_step
                               for f in falls],
        "sharpness_peak": [f.peak for f in falls],
        "sharpness_peak_step": [f.peak_step for f in falls],
        "sharpness_final_over_peak": [f.ratio for f in falls],
        "late_phase_fall": [f.falls(FALL_FRACTION) for f in falls]}
    return xr.Dataset({name: ("run", np.asarray(values)) for name, values in columns.items()},
                      coords={"run": cube["run"].values})


def counts(phase: xr.Dataset) -> dict:
    """The study-level summary of ``phase_statistics``: runs, how many interpolate, how many
    fall, and the median final / peak sharpness (NaN without runs)."""
    runs = int(phase["late_phase_fall"].size)
    return {"runs": runs, "interpolated": int(phase["interpolation_step"].notnull().sum()),
            "falls": int(phase["late_phase_fall"].sum()),
            "final_over_peak_median": (float(phase["sharpness_final_over_peak"].median())
                                       if runs else np.nan)}
