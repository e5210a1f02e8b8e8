"""Learning-rate schedules (``train.lr_schedule``): the factor that multiplies the base rate.

* ``constant`` (default; Chen et al.'s runs use no schedule): factor(t) = 1.
* ``linear_decay`` (the False-Friend recipe of Granziol's code, reference §A.4): constant for
  the first ``hold`` fraction of the T iterations, then linear decay to ``final`` at the ``end``
  fraction, then constant:

      factor(t) = 1                                   for t <= hold T
                = 1 - (1 - final) (t/T - hold) / (end - hold)   for hold T < t < end T
                = final                               for t >= end T

  with defaults hold 0.5, end 0.9, final 0.01. With ``averaged_final`` a, a run that averages
  its iterates from the fraction s = ``train.averaging_start`` < 1 on decays instead to a by s
  (end = s, final = a; ``for_run``): Granziol's Gadam/SWA recipe, "decay to the IA rate by
  epoch 161, then average" (reference A.4). Runs without averaging keep end and final.
"""

from __future__ import annotations

SCHEDULES = ("constant", "linear_decay")
LINEAR_DECAY_DEFAULTS = {"hold": 0.5, "end": 0.9, "final": 0.01, "averaged_final": None}


class ScheduleError(ValueError):
    """An unknown schedule or inconsistent schedule options."""


def resolve(spec: dict | None) -> dict:
    """The schedule with its defaults filled in; ``None`` means constant."""
    spec = dict(spec or {"name": "constant"})
    name = spec.get("name", "constant")
    if name not in SCHEDULES:
        raise ScheduleError(f"unknown train.lr_schedule.name {name!r}; allowed: {list(SCHEDULES)}")
    if name == "constant":
        return {"name": "constant"}
    resolved = {**LINEAR_DECAY_DEFAULTS, **spec}
    if not 0.0 <= resolved["hold"] < resolved["end"] <= 1.0:
        raise ScheduleError("train.lr_schedule needs 0 <= hold < end <= 1, got "
                            f"hold={resolved['hold']}, end={resolved['end']}")
    for key in ("final", "averaged_final"):
        if resolved[key] is not None and not 0.0 < resolved[key] <= 1.0:
            raise ScheduleError(f"train.lr_schedule.{key} must lie in (0, 1], got "
                                f"{resolved[key]}")
    return resolved


def for_run(spec: dict, averaging_start: float) -> dict:
    """The schedule of a run averaging from the fraction ``averaging_start`` on (1: none):
    ``spec`` itself, or with ``averaged_final`` set and averaging_start < 1 the decay to
    averaged_final by averaging_start, which must come after ``hold``."""
    if spec["name"] == "constant" or spec["averaged_final"] is None or averaging_start >= 1:
        return spec
    if not spec["hold"] < averaging_start:
        raise ScheduleError(f"train.averaging_start = {averaging_start} must come after "
                            f"train.lr_schedule.hold = {spec['hold']}: a run with "
                            f"lr_schedule.averaged_final decays to it by averaging_start")
    return {**spec, "end": averaging_start, "final": spec["averaged_final"]}


def factor(spec: dict, step: int, iterations: int) -> float:
    """The multiplier of the base learning rate for the update made at ``step`` (0-based)."""
    if spec["name"] == "constant":
        return 1.0
    progress = step / iterations
    if progress <= spec["hold"]:
        return 1.0
    if progress >= spec["end"]:
        return spec["final"]
    return 1.0 - (1.0 - spec["final"]) * (progress - spec["hold"]) / (spec["end"] - spec["hold"])
