"""Checks of ``params.yaml`` run by the Snakefile and ``flatrep validate`` before any job starts:
the JSON schema (``workflow/schemas/params.schema.yaml``), then what a schema cannot express.
Every failure is one ConfigError line naming the key path and the allowed values, such as
``studies.quick.train.grid[0].lr[1] = -0.1: must be a number > 0``."""

from __future__ import annotations

import functools
import math
import os
import reprlib
from pathlib import Path

import jsonschema
import yaml
from jsonschema.exceptions import best_match, relevance

from flatrep.params import schedules, studies

#: The params schema, relative to the project folder.
SCHEMA = Path("workflow") / "schemas" / "params.schema.yaml"
#: Folders the workflow writes into, relative to its working directory.
WRITTEN_FOLDERS = ("results", "data", "logs", "benchmarks")
#: The shape of one input sample of each dataset, as ``flatrep.data.load`` returns it (its
#: DatasetSpec does not say); ``train.augment`` needs image samples (C, H, W).
SAMPLE_SHAPES = {"mnist1d": (40,), "mnist": (1, 28, 28), "fashion_mnist": (1, 28, 28),
                 "cifar10": (3, 32, 32), "cifar100": (3, 32, 32)}

_SCALAR_WORDS = {"integer": "an integer", "number": "a number", "string": "a string",
                 "boolean": "true or false", "null": "null"}
_BOUND_SYMBOLS = (("minimum", ">="), ("exclusiveMinimum", ">"), ("maximum", "<="),
                  ("exclusiveMaximum", "<"))
#: Short one-line reprs of offending values (a long string or a whole section is cut).
_short = reprlib.Repr()
_short.maxstring = _short.maxother = 40


def check_workflow(params: dict, params_files, folders=WRITTEN_FOLDERS) -> None:
    """What the Snakefile checks before any job: no params file defines a key twice (Snakemake
    has already read them, keeping the last of duplicate keys), ``check_params``, and the
    folders the workflow writes are writable (``check_writable``)."""
    for path in params_files:
        studies.read_yaml(path)
    check_params(params)
    check_writable(folders)


def check_params(params: dict) -> None:
    """All checks of a params mapping; ConfigError naming the key path of the first problem."""
    _check_schema(params)
    _check_finite(params)
    check_studies(params["studies"])
    studies.selected_studies(params)


def check_studies(configs: dict) -> None:
    """Raise ConfigError for the first study with a semantic error (``studies.check_study``,
    the augmentation against the dataset, the output width, model options against the
    builder, the learning-rate schedule, the ensemble mode, the claims' ratio band). Imports
    torch (seconds), which a schema error does not need."""
    from flatrep import models
    from flatrep.data import datasets

    for name, study in configs.items():
        studies.check_study(name, study, datasets.spec(study["data"]["name"]).num_classes)
        _check_augment(name, study)
        try:
            datasets.num_outputs(study["data"])
            models.check_options(study["model"])
            schedule = schedules.resolve(study["train"].get("lr_schedule"))
            for run in studies.expand_runs(study):
                schedules.for_run(schedule, studies.hyperparameters(study["train"],
                                                                    run)["averaging_start"])
        except (datasets.DataError, models.ModelError, schedules.ScheduleError) as err:
            raise studies.ConfigError(f"studies.{name}: {err}") from None
        studies.ensemble_groups(study)
        _check_sizes(name, study, datasets.split_sizes(study["data"]))
        _check_ensemble_options(name, study)
        _check_ratio_band(name, study["stats"]["claims"]["ratio_band"])


def _check_sizes(name: str, study: dict, sizes: dict[str, int] | None) -> None:
    """Values that must fit the data: ``measure.points`` in both splits (a subset of each),
    ``measure.curvature.points`` in train, every run's batch size in train
    (``datasets.split_sizes``; nothing to check where the sizes are unknown before the data
    file is prepared, and the job then says the same)."""
    if sizes is None:
        return
    measure = study.get("measure", {})
    prefix = f"studies.{name}"
    smaller = min(sizes, key=sizes.get)
    limits = [(f"{prefix}.measure.points", measure.get("points"), smaller),
              (f"{prefix}.measure.curvature.points",
               measure.get("curvature", {}).get("points"), "train")]
    for run in studies.expand_runs(study):
        batch_size = studies.hyperparameters(study["train"], run).get("batch_size")
        if batch_size is None:
            raise studies.ConfigError(f"{prefix}: run {run.run_id} has no batch_size; set "
                                      "train.batch_size or sweep it in train.grid")
        limits.append((f"{prefix}: run {run.run_id}'s batch_size", batch_size, "train"))
    for key, value, split in limits:
        if value is not None and value > sizes[split]:
            options = {k: v for k, v in study["data"].items() if k != "name"}
            raise studies.ConfigError(
                f"{key} = {value}: more than the {sizes[split]} samples of the {split} split "
                f"(dataset {study['data']['name']} {options}: train {sizes['train']}, test "
                f"{sizes['test']}); allowed: 1..{sizes[split]}")


def _check_ratio_band(name: str, band: list[float]) -> None:
    """``stats.claims.ratio_band`` = [low, high] needs low < high (``flatrep.analysis.claims``)."""
    low, high = band
    if not low < high:
        raise studies.ConfigError(
            f"studies.{name}.stats.claims.ratio_band = [{low}, {high}]: the low end must be "
            "below the high end, e.g. [10, 90]")


def _check_ensemble_options(name: str, study: dict) -> None:
    """Dropout models train one run per process: ensemble members would share torch's
    global generator, so their dropout masks, and trajectories, would not be their single
    runs' (``flatrep.training.ensemble``). ``train.compile`` compiles the ensemble's batched
    gradient, so it needs an ensemble."""
    mode = study["train"].get("ensemble", "none")
    dropout = study["model"].get("dropout", 0.0)
    if mode != "none" and dropout > 0:
        raise studies.ConfigError(
            f"studies.{name}.train.ensemble = {mode!r} with model.dropout = {dropout}: "
            "ensemble members cannot draw their own single runs' dropout masks; set "
            "train.ensemble: none (or model.dropout: 0)")
    if mode == "none" and study["train"].get("compile", False):
        raise studies.ConfigError(
            f"studies.{name}.train.compile = true with train.ensemble = 'none': compiling "
            "applies to ensembles; set train.ensemble: seeds or configs (or compile: false)")


def check_writable(folders) -> None:
    """PermissionError (NotADirectoryError for a file in the way) naming the folder and the
    fix unless each of ``folders`` is a writable folder or can be created (its nearest
    existing ancestor is a writable folder)."""
    for folder in map(Path, folders):
        existing = next(path for path in (folder, *folder.parents) if path.exists())
        if not existing.is_dir():
            raise NotADirectoryError(f"{existing} is a file, but the workflow writes into the "
                                     f"folder {folder}/: move the file away")
        if not os.access(existing, os.W_OK | os.X_OK):
            raise PermissionError(f"folder {existing}/ is not writable, but the workflow writes "
                                  f"into {folder}/: fix its permissions (chmod u+w {existing}) "
                                  "or run in a writable copy of the project")


def _check_augment(name: str, study: dict) -> None:
    """``train.augment`` must apply to the dataset's samples (crops need images)."""
    from flatrep.data import augment

    augmentation = study["train"].get("augment", "none")
    dataset = study["data"]["name"]
    problems = {choice: _value_error(augment.check, choice, SAMPLE_SHAPES[dataset])
                for choice in augment.AUGMENTATIONS}
    if problems[augmentation]:
        allowed = [choice for choice, problem in problems.items() if problem is None]
        raise studies.ConfigError(f"studies.{name}.train.augment = {augmentation!r}: "
                                  f"{problems[augmentation]} (dataset {dataset!r}); allowed: "
                                  f"{allowed}")


def _value_error(check, *args) -> str | None:
    """The message of the ValueError that ``check(*args)`` raises, or None if it passes."""
    try:
        check(*args)
    except ValueError as err:
        return str(err)
    return None


def _check_finite(tree, parts: tuple = ()) -> None:
    """ConfigError for the first NaN or infinite number (the schema's bounds let NaN pass)."""
    if isinstance(tree, float) and not math.isfinite(tree):
        raise studies.ConfigError(f"{studies.key_path(parts)} = {tree}: must be a finite number")
    children = (tree.items() if isinstance(tree, dict)
                else enumerate(tree) if isinstance(tree, list) else ())
    for key, child in children:
        _check_finite(child, (*parts, key))


def _is_strict_integer(checker, instance) -> bool:
    """JSON-schema ``integer`` without floats such as ``8.0`` (a float batch size or step
    count would pass the schema and fail in a job)."""
    return isinstance(instance, int) and not isinstance(instance, bool)


def schema_path() -> Path:
    """The params schema of the project in the working directory (where `snakemake` and
    `flatrep validate` run, also in a cluster job), else of the source tree that holds the
    package (an editable install used from elsewhere)."""
    for root in (Path.cwd(), Path(__file__).resolve().parents[3]):
        if (root / SCHEMA).is_file():
            return root / SCHEMA
    raise FileNotFoundError(f"the params schema {SCHEMA} is neither in {Path.cwd()} nor beside "
                            "the flatrep sources; run from the project folder")


def _validator() -> jsonschema.protocols.Validator:
    """A validator of the params schema (``schema_path``)."""
    return _validator_of(schema_path())


@functools.cache
def _validator_of(path: Path) -> jsonschema.protocols.Validator:
    """A validator of the schema in ``path``, integers strict (``_is_strict_integer``)."""
    schema = yaml.safe_load(path.read_text())
    base = jsonschema.validators.validator_for(schema)
    strict = jsonschema.validators.extend(
        base, type_checker=base.TYPE_CHECKER.redefine("integer", _is_strict_integer))
    return strict(schema)


def _check_schema(params: dict) -> None:
    """ConfigError with one line for the most relevant schema violation, if any."""
    error = best_match(_validator().iter_errors(params), key=_relevance)
    if error is not None:
        raise studies.ConfigError(_schema_message(error))


def _relevance(error: jsonschema.ValidationError) -> tuple:
    """jsonschema's relevance, except that a ``not`` ranks last: an unknown ``data.name`` also
    breaks the ``not`` that keeps out the other datasets' options, and the name is the error."""
    return error.validator != "not", relevance(error)


def _schema_message(error: jsonschema.ValidationError) -> str:
    """One line for a schema violation: the key path, the offending value, what is allowed."""
    parts = list(error.absolute_path)
    where = studies.key_path(parts) or "params"
    value = _short.repr(error.instance)
    if "propertyNames" in error.absolute_schema_path:
        return f"{where}: name {value} must match {error.validator_value}"
    if error.validator == "additionalProperties":
        allowed = sorted(error.schema.get("properties", {}))
        key = next(key for key in error.instance if key not in allowed)
        return (f"{studies.key_path([*parts, key])}: unknown key"
                f"{studies.did_you_mean(key, allowed)}; allowed: {allowed}")
    if error.validator == "required":
        key = next(key for key in error.validator_value if key not in error.instance)
        return (f"{studies.key_path([*parts, key])}: required key missing; must be "
                f"{_describe(error.schema['properties'][key])}")
    if error.validator == "not":
        return _forbidden_message(error, parts)
    if error.validator == "enum":
        return (f"{where} = {value}: unknown value"
                f"{studies.did_you_mean(error.instance, error.validator_value)}; allowed: "
                f"{error.validator_value}")
    return f"{where} = {value}: must be {_describe(error.schema)}{_yaml_number_hint(error)}"


def _yaml_number_hint(error: jsonschema.ValidationError) -> str:
    """How to write a number that YAML read as text: YAML 1.1 (PyYAML, Snakemake) takes
    ``1e-3`` (no decimal point) for a string, so ``lr: [1e-3]`` arrives as '1e-3'."""
    instance, expected = error.instance, _resolve(error.schema).get("type")
    if error.validator != "type" or expected not in ("number", "integer") or \
            not isinstance(instance, str):
        return ""
    try:
        number = float(instance)
    except ValueError:
        return ""
    if "e" not in instance.lower():
        return ""
    if expected == "integer":
        return (f" (YAML reads {instance} as text: write {int(number)})"
                if number.is_integer() else "")
    return (f" (YAML reads {instance} without a decimal point as text: write {number!r} or "
            f"{instance.lower().replace('e', '.0e', 1)})")


def _forbidden_message(error: jsonschema.ValidationError, parts: list) -> str:
    """One line for a ``not: {anyOf: [{required: [key]}, ...]}`` violation: the first key
    present that the schema rules out here, and the schema's description of why."""
    options = error.validator_value.get("anyOf", [error.validator_value])
    keys = [key for option in options for key in option.get("required", [])
            if key in error.instance]
    reason = error.schema.get("description", "see the schema")
    return f"{studies.key_path([*parts, *keys[:1]])}: not allowed here ({reason})"


def _resolve(schema: dict) -> dict:
    """``schema`` with its local ``$ref`` (``#/$defs/...``) followed."""
    while "$ref" in schema:
        schema = functools.reduce(dict.__getitem__, schema["$ref"].split("/")[1:],
                                  _validator().schema)
    return schema


def _describe(schema: dict) -> str:
    """The values ``schema`` allows, in words: ``a number > 0``, ``one of ['sgd', 'adam']``."""
    schema = _resolve(schema)
    if "enum" in schema:
        return f"one of {schema['enum']}"
    if "oneOf" in schema:
        return "either " + " or ".join(f"({_describe(option)})" for option in schema["oneOf"])
    if schema.get("type") == "array":
        return _describe_list(schema)
    if schema.get("type") == "object":
        return _describe_mapping(schema)
    words = [_SCALAR_WORDS.get(schema.get("type"), "a value")]
    words += [" and ".join(f"{symbol} {schema[keyword]}"
                           for keyword, symbol in _BOUND_SYMBOLS if keyword in schema)]
    if "pattern" in schema:
        words.append(f"matching {schema['pattern']}")
    return " ".join(word for word in words if word)


def _describe_list(schema: dict) -> str:
    """``a list of 2+ unique entries, each an integer >= 0`` (``2`` when exactly 2, ``1-3``
    between 1 and 3)."""
    low, high = schema.get("minItems"), schema.get("maxItems")
    count = ("" if low is None and high is None else f"{low}+ " if high is None
             else f"{low} " if low == high else f"{low or 0}-{high} ")
    unique = "unique " if schema.get("uniqueItems") else ""
    return f"a list of {count}{unique}entries, each {_describe(schema.get('items', {}))}"


def _describe_mapping(schema: dict) -> str:
    """``a mapping of 1+ keys from ['lr', 'batch_size']``."""
    count = f"{schema['minProperties']}+ " if "minProperties" in schema else ""
    keys = sorted(schema.get("properties", {}))
    return f"a mapping of {count}keys from {keys}" if keys else "a mapping"
