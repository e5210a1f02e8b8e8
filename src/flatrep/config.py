"""Studies described in ``params.yaml``: semantic checks, grid expansion, run ids, schedules.

The JSON schema (``workflow/schemas/params.schema.yaml``) checks types and allowed values;
this module checks what a schema cannot (checkpoint steps inside the training length,
duplicate runs, class indices inside the dataset) and turns one study into its runs.
Every path derived here is a pure function of the parameters.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from pathlib import Path

import yaml

#: Hyperparameters a study may sweep; each becomes a coordinate along ``run`` in the cube.
SWEEPABLE = ("lr", "batch_size", "weight_decay", "momentum", "optimizer", "averaging_start",
             "seed")
#: Short names used in run ids (``lr0.1_bs20_seed0``).
_ABBREVIATION = {"lr": "lr", "batch_size": "bs", "seed": "seed", "weight_decay": "wd",
                 "momentum": "mom", "optimizer": "opt", "averaging_start": "ia"}
#: Values of the optional ``train`` keys when a study leaves them out.
TRAIN_DEFAULTS = {"optimizer": "sgd", "momentum": 0.0, "weight_decay": 0.0,
                  "averaging_start": 1.0}


class ConfigError(ValueError):
    """A parameter is invalid; the message names the key path and the allowed values."""


@dataclass(frozen=True)
class Run:
    """One training run: its id (a pure function of its hyperparameters) and hyperparameters."""

    run_id: str
    hparams: dict


def load_params(path: str | Path) -> dict:
    """Read a params file, with a clear error when it is missing or not YAML."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"params file {path} does not exist; pass the path of your params.yaml")
    try:
        params = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ConfigError(f"{path} is not valid YAML: {err}") from err
    if not isinstance(params, dict) or "studies" not in params:
        raise ConfigError(f"{path}: top-level key 'studies' is missing")
    return params


def study_config(params: dict, study: str) -> dict:
    """The config of one study, with a clear error for an unknown name."""
    studies = params["studies"]
    if study not in studies:
        raise ConfigError(f"unknown study {study!r}; studies in params: {sorted(studies)}")
    return studies[study]


def format_value(value) -> str:
    """Canonical text of a hyperparameter value, used in run ids (``0.1``, ``5e-04``, ``20``)."""
    if isinstance(value, bool) or not isinstance(value, float):
        return str(value)
    text = repr(value)
    return f"{value:.0e}" if "e" in text else text


def run_id(hparams: dict) -> str:
    """Run id such as ``lr0.1_bs20_seed0``: the swept hyperparameters in a fixed order."""
    return "_".join(f"{_ABBREVIATION[key]}{format_value(hparams[key])}"
                    for key in SWEEPABLE if key in hparams)


def expand_runs(study: dict) -> list[Run]:
    """All runs of a study: the union of the grid's crosses, each crossed with every seed.

    ``train.grid`` is a list of crosses (dicts of lists); a hyperparameter missing from a cross
    takes its value from ``train`` (or ``TRAIN_DEFAULTS``). Duplicate points of overlapping
    crosses are kept once.
    """
    train = study["train"]
    swept = sorted({key for cross in train["grid"] for key in cross} | {"seed"},
                   key=SWEEPABLE.index)
    runs: dict[str, Run] = {}
    for cross in train["grid"]:
        axes = {key: cross.get(key, [train.get(key, TRAIN_DEFAULTS.get(key))])
                for key in swept if key != "seed"}
        axes["seed"] = train["seeds"]
        for values in itertools.product(*axes.values()):
            hparams = {key: axes_value for key, axes_value in zip(axes, values)}
            hparams = {key: hparams[key] for key in swept}
            rid = run_id(hparams)
            runs.setdefault(rid, Run(rid, hparams))
    return list(runs.values())


def find_run(study: dict, rid: str) -> Run:
    """The run of a study with id ``rid``."""
    for run in expand_runs(study):
        if run.run_id == rid:
            return run
    raise ConfigError(f"run {rid!r} is not in the study's grid")


#: ``train.ensemble`` modes: how runs share a training process (``flatrep.ensemble``).
ENSEMBLE_MODES = ("none", "seeds", "configs")
#: What the members of one ensemble must share: the shapes and the update rule.
ENSEMBLE_SHARED = ("batch_size", "optimizer", "averaging_start")


def ensemble_groups(study: dict) -> dict[str, list[Run]]:
    """The runs of a study grouped into training processes, by ``train.ensemble``:

    * ``none`` (default): one process per run (group id = run id);
    * ``seeds``: all seeds of one configuration together (group id = run id without the seed),
      so changing one configuration retrains that configuration's seeds only;
    * ``configs``: all runs sharing ``ENSEMBLE_SHARED`` together (group id names those values).
    """
    mode = study["train"].get("ensemble", "none")
    if mode not in ENSEMBLE_MODES:
        raise ConfigError(f"unknown train.ensemble {mode!r}; allowed: {list(ENSEMBLE_MODES)}")
    groups: dict[str, list[Run]] = {}
    for run in expand_runs(study):
        if mode == "none":
            key = run.run_id
        elif mode == "seeds":
            key = run_id({k: v for k, v in run.hparams.items() if k != "seed"}) or "all"
        else:
            resolved = {**TRAIN_DEFAULTS, **study["train"], **run.hparams}
            key = run_id({k: resolved[k] for k in ENSEMBLE_SHARED})
        groups.setdefault(key, []).append(run)
    return groups


def checkpoint_steps(train: dict) -> list[int]:
    """The checkpoint schedule, known before training starts.

    ``train.checkpoints`` is either an explicit list of steps, or ``{count, spacing}`` with
    spacing ``linear`` or ``log``; step 0 (initialisation) and the last step are always included.
    """
    total = int(train["iterations"])
    spec = train["checkpoints"]
    if isinstance(spec, list):
        steps = {int(step) for step in spec}
    else:
        count = int(spec["count"])
        if spec.get("spacing", "linear") == "log":
            steps = {int(round(total ** (k / (count - 1)))) for k in range(count)} | {0}
        else:
            steps = {int(round(total * k / (count - 1))) for k in range(count)}
    steps |= {0, total}
    return sorted(steps)


#: The switchable families of ``measure.curvature`` and their default options (the measures
#: and their costs: ``flatrep.measures.suite``).
CURVATURE_FAMILIES: dict[str, dict] = {
    "hutch_plus_plus": {},
    "lanczos": {"steps": 20},
    "relative_flatness": {},
    "adaptive_sharpness": {"rho": 0.01, "pairs": 64},
    "spectral_density": {"probes": 4, "steps": 30, "bins": 200, "smoothing": 0.01},
    "rank": {"points": 32, "dense_max_params": 3000, "tolerances": [1e-4, 1e-6, 1e-8]},
    "stability": {"steps": 20},
    "output_curvature": {"steps": 20, "point_chunk": 16},
}


def curvature_families(curvature: dict) -> dict[str, dict]:
    """The enabled families of a ``measure.curvature`` section with their options: a key
    absent or false is off, true takes the defaults, a mapping overrides them."""
    enabled = {}
    for family, defaults in CURVATURE_FAMILIES.items():
        setting = curvature.get(family, False)
        if setting is True:
            enabled[family] = dict(defaults)
        elif isinstance(setting, dict):
            enabled[family] = {**defaults, **setting}
    return enabled


def _check_curvature(name: str, curvature: dict) -> None:
    density = curvature_families(curvature).get("spectral_density")
    if density is not None:
        # grid spacing sigma (1/smoothing + 6) / (bins - 1) must not exceed sigma
        needed = math.ceil(1 / density["smoothing"] + 7)
        if density["bins"] < needed:
            raise ConfigError(f"studies.{name}.measure.curvature.spectral_density.bins = "
                              f"{density['bins']} cannot resolve smoothing = "
                              f"{density['smoothing']}: use bins >= {needed} or a larger "
                              "smoothing")


def check_study(name: str, study: dict, dataset_classes: int | None = None) -> None:
    """Checks a schema cannot express; raises ConfigError naming the key path."""
    train = study["train"]
    prefix = f"studies.{name}.train"
    total = int(train["iterations"])
    spec = train["checkpoints"]
    if isinstance(spec, list):
        beyond = [step for step in spec if int(step) > total]
        if beyond:
            raise ConfigError(f"{prefix}.checkpoints: steps {beyond} exceed "
                              f"{prefix}.iterations = {total}")
    elif int(spec["count"]) < 2:
        raise ConfigError(f"{prefix}.checkpoints.count must be >= 2 (got {spec['count']})")
    if not expand_runs(study):
        raise ConfigError(f"{prefix}.grid expands to no run")
    classes = study["data"].get("classes")
    if classes is not None and dataset_classes is not None:
        bad = [c for c in classes if not 0 <= c < dataset_classes]
        if bad:
            raise ConfigError(f"studies.{name}.data.classes: {bad} out of range "
                              f"0..{dataset_classes - 1}")
    _check_curvature(name, study.get("measure", {}).get("curvature", {}))


def selected_studies(params: dict) -> list[str]:
    """The studies ``rule all`` builds (``run_studies``), each checked to exist."""
    selected = params.get("run_studies", [])
    for study in selected:
        study_config(params, study)
    return list(selected)
