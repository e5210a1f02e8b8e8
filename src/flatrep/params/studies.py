"""Studies described in ``params.yaml``: semantic checks, grid expansion, run ids, schedules.

The JSON schema (``workflow/schemas/params.schema.yaml``) checks types and allowed values;
this module checks what a schema cannot (checkpoint steps inside the training length,
duplicate runs, class indices inside the dataset) and turns one study into its runs.
Every path derived here is a pure function of the parameters.
"""

from __future__ import annotations

import difflib
import itertools
import json
import math
from collections.abc import Mapping
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
                  "averaging_start": 1.0, "averaging_every": 1}


class ConfigError(ValueError):
    """A parameter is invalid; the message names the key path and the allowed values."""


@dataclass(frozen=True)
class Run:
    """One training run: its id (a pure function of its hyperparameters) and hyperparameters."""

    run_id: str
    hparams: dict


def key_path(parts) -> str:
    """The key path of a value, as error messages name it: ``studies.quick.train.grid[0].lr[1]``
    (identifier keys after dots, list indices and any other key as its repr in brackets)."""
    text = ""
    for part in parts:
        if isinstance(part, str) and part.isidentifier():
            text += f".{part}" if text else part
        else:
            text += f"[{part!r}]"
    return text


def did_you_mean(word, choices) -> str:
    """``" (did you mean 'lr'?)"`` naming the closest of ``choices`` (difflib), or ``""``."""
    close = difflib.get_close_matches(str(word), [str(choice) for choice in choices], n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def read_yaml(path: str | Path):
    """The YAML document in ``path``. A syntax error, or a key given twice in one mapping (which
    ``yaml.safe_load`` silently merges, keeping the last), is a one-line ConfigError naming the
    line."""
    path = Path(path)
    loader = yaml.SafeLoader(path.read_text())
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _check_unique_keys(path, node)
        return loader.construct_document(node)
    except yaml.YAMLError as err:
        raise ConfigError(_yaml_error_line(path, err)) from err
    finally:
        loader.dispose()


def _yaml_error_line(path: Path, err: yaml.YAMLError) -> str:
    """``params.yaml:12: not valid YAML: <problem>`` on one line."""
    mark = getattr(err, "problem_mark", None)
    where = f"{path}:{mark.line + 1}" if mark else str(path)
    problem = getattr(err, "problem", None) or err
    return f"{where}: not valid YAML: {' '.join(str(problem).split())}"


def _check_unique_keys(path: Path, node: yaml.Node, parts: tuple = ()) -> None:
    """ConfigError naming the key path and both lines of the first key that a YAML mapping
    under ``node`` defines twice."""
    if isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            _check_unique_keys(path, item, (*parts, index))
    if not isinstance(node, yaml.MappingNode):
        return
    first_lines: dict[tuple[str, str], int] = {}
    for key_node, value_node in node.value:
        scalar = isinstance(key_node, yaml.ScalarNode)
        name = key_node.value if scalar else "<complex key>"
        key, line = (key_node.tag, name), key_node.start_mark.line + 1
        if scalar and key in first_lines:
            raise ConfigError(f"{path}:{line}: duplicate key {key_path((*parts, name))} (first "
                              f"at line {first_lines[key]}); YAML would keep only the last: "
                              "rename or merge them")
        first_lines[key] = line
        _check_unique_keys(path, value_node, (*parts, name))


def typed_overrides(value):
    """``snakemake --config`` values with every scalar read as YAML reads it in params.yaml.

    Snakemake parses ``--config key=value`` with YAML's base loader, which leaves each nested
    scalar a string (``studies={tiny: {train: {iterations: 200}}}`` gives '200'), so no
    numeric nested override could pass validation. A string that YAML reads as a number,
    boolean or null becomes that; any other string stays as it is."""
    if isinstance(value, Mapping):
        return {key: typed_overrides(item) for key, item in value.items()}
    if isinstance(value, list):
        return [typed_overrides(item) for item in value]
    if isinstance(value, str):
        try:
            parsed = yaml.safe_load(value)
        except yaml.YAMLError:
            return value
        return parsed if parsed is None or isinstance(parsed, (bool, int, float)) else value
    return value


def load_params(path: str | Path) -> dict:
    """Read a params file, with a one-line error when it is missing, not YAML, or defines a key
    twice."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"params file {path} does not exist; pass the path of your params.yaml")
    params = read_yaml(path)
    if not isinstance(params, dict) or "studies" not in params:
        raise ConfigError(f"{path}: top-level key 'studies' is missing")
    return params


def _unknown_study(study, studies: dict) -> str:
    """The message for a study name that ``studies`` lacks."""
    return (f"unknown study {study!r}{did_you_mean(study, studies)}; studies in params: "
            f"{sorted(studies)}")


def study_config(params: dict, study: str) -> dict:
    """The config of one study, with a clear error for an unknown name."""
    studies = params["studies"]
    if study not in studies:
        raise ConfigError(_unknown_study(study, studies))
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


#: ``train.ensemble`` modes: how runs share a training process (``flatrep.training.ensemble``).
ENSEMBLE_MODES = ("none", "seeds", "configs")
#: What the members of one ensemble must share: the shapes and the update rule.
ENSEMBLE_SHARED = ("batch_size", "optimizer", "averaging_start")


def hyperparameters(train: dict, run: Run) -> dict:
    """A run's hyperparameters: its swept values over the study's ``train`` section over
    ``TRAIN_DEFAULTS``."""
    return {**TRAIN_DEFAULTS, **train, **run.hparams}


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
            resolved = hyperparameters(study["train"], run)
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


#: Default ``measure.memory_mb``: the budget, in MiB, of each of a measure job's largest
#: intermediates (per-sample parameter Jacobian blocks, the activations of one HVP pass over
#: the curvature points, one batch of output-curvature Lanczos bases); over it, they are
#: computed in smaller blocks with the same result.
MEASURE_MEMORY_MB = 1024


def measure_memory_bytes(measure: dict) -> int:
    """``measure.memory_mb`` (default ``MEASURE_MEMORY_MB``) in bytes."""
    return measure.get("memory_mb", MEASURE_MEMORY_MB) << 20


#: The switchable families of ``measure.curvature`` and their default options (the measures
#: and their costs: ``flatrep.measures.suite``).
CURVATURE_FAMILIES: dict[str, dict] = {
    "hutch_plus_plus": {},
    "xtrace": {},
    "deflated_frobenius": {},
    "lanczos": {"steps": 20},
    "relative_flatness": {},
    "adaptive_sharpness": {"rho": 0.01, "pairs": 64},
    "spectral_density": {"probes": 4, "steps": 30, "bins": 200, "smoothing": 0.01},
    "rank": {"points": 32, "dense_max_params": 3000, "tolerances": [1e-4, 1e-6, 1e-8]},
    "stability": {"steps": 20},
    "output_curvature": {"steps": 20, "point_chunk": 16, "points": None},
    "batchnorm_train": {"batch_size": 128, "steps": 20},
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


def _bins_needed(smoothing: float) -> float:
    """Least ``spectral_density.bins`` that resolve ``smoothing``: the grid spacing
    (1/smoothing + 6) / (bins - 1) must not exceed it (inf where 1/smoothing overflows)."""
    needed = 1 / smoothing + 7
    return math.ceil(needed) if math.isfinite(needed) else needed


def _check_curvature(name: str, curvature: dict) -> None:
    """The spectral density's bins must resolve its smoothing."""
    density = curvature_families(curvature).get("spectral_density")
    if density is not None:
        needed = _bins_needed(density["smoothing"])
        if density["bins"] < needed:
            raise ConfigError(f"studies.{name}.measure.curvature.spectral_density.bins = "
                              f"{density['bins']} cannot resolve smoothing = "
                              f"{density['smoothing']}: use bins >= {needed} or a larger "
                              "smoothing")


def _check_checkpoints(name: str, train: dict) -> None:
    """Explicit checkpoint steps must lie inside the training length; a count needs >= 2
    and as many distinct steps (none collapse in rounding)."""
    total = int(train["iterations"])
    spec = train["checkpoints"]
    prefix = f"studies.{name}.train.checkpoints"
    if isinstance(spec, list):
        for index, step in enumerate(spec):
            if int(step) > total:
                raise ConfigError(f"{prefix}[{index}] = {step}: beyond the training length "
                                  f"studies.{name}.train.iterations = {total}; allowed: "
                                  f"0..{total}")
    elif int(spec["count"]) < 2:
        raise ConfigError(f"{prefix}.count = {spec['count']}: must be >= 2 (start and end)")
    elif len(steps := checkpoint_steps(train)) < int(spec["count"]):
        spacing = spec.get("spacing", "linear")
        raise ConfigError(f"{prefix}.count = {spec['count']}: {spacing} spacing over "
                          f"{total} iterations gives only {len(steps)} "
                          "distinct steps; use a smaller count (at most iterations + 1) or "
                          "list the steps")


def _check_classes(name: str, classes, dataset_classes: int) -> None:
    """Every entry of ``data.classes`` must be a class index of the dataset."""
    for index, label in enumerate(classes or []):
        if not 0 <= label < dataset_classes:
            raise ConfigError(f"studies.{name}.data.classes[{index}] = {label}: not a class "
                              f"of the dataset; allowed: 0..{dataset_classes - 1}")


def check_study(name: str, study: dict, dataset_classes: int | None = None) -> None:
    """Checks a schema cannot express; raises ConfigError naming the key path."""
    _check_checkpoints(name, study["train"])
    if not expand_runs(study):
        raise ConfigError(f"studies.{name}.train.grid expands to no run")
    if dataset_classes is not None:
        _check_classes(name, study["data"].get("classes"), dataset_classes)
    _check_curvature(name, study.get("measure", {}).get("curvature", {}))


def selected_studies(params: dict) -> list[str]:
    """The studies ``rule all`` builds (``run_studies``), each checked to exist."""
    selected = params.get("run_studies", [])
    for index, study in enumerate(selected):
        if study not in params["studies"]:
            raise ConfigError(f"run_studies[{index}]: {_unknown_study(study, params['studies'])}")
    return list(selected)


#: The study sections a cube depends on (the params of the DVC stage ``runs``): editing
#: ``stats`` or ``figures`` leaves the cube untouched.
CUBE_SECTIONS = ("data", "model", "train", "measure")


def cube_sections(study: dict) -> str:
    """The cube's ``config`` attribute: the ``CUBE_SECTIONS`` of ``study`` as sorted JSON.
    Also the Snakemake cube rule's param, so that only these sections rerun it."""
    return json.dumps({key: study[key] for key in CUBE_SECTIONS}, sort_keys=True)
