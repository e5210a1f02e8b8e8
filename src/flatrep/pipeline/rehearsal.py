"""Rehearsals: every stage of a study run for real, at toy scale, before its GPU-hours are spent.

``flatrep rehearse`` copies the workflow into a folder of its own, writes random images in
torchvision's raw formats there (``flatrep.data.synthetic``) for every torchvision dataset the
chosen studies read, shrinks each study (``rehearsal_study``: a few iterations and seeds, every
measurement family at a handful of points, probes and steps, short bootstraps) and runs
``snakemake --keep-going`` on it. The studies keep their names, models, optimizers, schedules,
grids, ensembles, losses, augmentation, class subsets and scalings, so the rehearsal exercises
the code paths of the full study (data preparation, ensemble training, checkpoints, every
measure, the cube, bounds, statistics, claims and figures) in minutes on a CPU. Its numbers
mean nothing: the images are noise and training stops after a few steps; what it shows is that
each study runs through, or which job fails and why (``outcomes``).
"""

from __future__ import annotations

import copy
import os
import re
import shutil
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import yaml

from flatrep.data import synthetic
from flatrep.params import studies

#: Rehearsal sizes of the torchvision datasets (random images, labels cycling the classes).
RAW_TRAIN_IMAGES = 500
RAW_TEST_IMAGES = 200

#: Upper limits on a study's sizes, by path of keys; a value above its limit, or null (all
#: points), becomes the limit. Keys a study lacks stay absent.
CAPS: dict[tuple[str, ...], int] = {
    ("data", "num_samples"): 600,
    ("data", "num_train"): RAW_TRAIN_IMAGES,
    ("measure", "points"): 8,
    ("measure", "chunk_size"): 8,
    ("measure", "curvature", "points"): 32,
    ("measure", "curvature", "probes"): 4,
    ("measure", "curvature", "lanczos", "steps"): 5,
    ("measure", "curvature", "adaptive_sharpness", "pairs"): 4,
    ("measure", "curvature", "spectral_density", "probes"): 2,
    ("measure", "curvature", "spectral_density", "steps"): 5,
    ("measure", "curvature", "rank", "points"): 4,
    ("measure", "curvature", "stability", "steps"): 4,
    ("measure", "curvature", "output_curvature", "steps"): 3,
    ("measure", "curvature", "output_curvature", "point_chunk"): 8,
    ("measure", "curvature", "output_curvature", "points"): 2,
    ("measure", "curvature", "batchnorm_train", "steps"): 5,
    ("stats", "bootstrap"): 100,
    ("stats", "permutations"): 100,
}

#: Checkpoints kept of a study that spaces them by count.
MAX_CHECKPOINTS = 3

#: Marks a folder as a rehearsal's, so that a rerun may clear it.
MARKER = ".flatrep-rehearsal"


class RehearsalError(ValueError):
    """A rehearsal cannot be set up (unknown study, a folder that is not a rehearsal's)."""


def _cap(section: dict, keys: tuple[str, ...], limit: int) -> None:
    """Lower ``section[keys[0]]...[keys[-1]]`` to ``limit`` where it is larger or null."""
    for key in keys[:-1]:
        section = section.get(key)
        if not isinstance(section, dict):
            return
    last = keys[-1]
    if last in section and (section[last] is None or section[last] > limit):
        section[last] = limit


def rehearsal_study(study: dict, raw_root: str | Path, iterations: int, seeds: int) -> dict:
    """``study`` at toy scale: ``iterations`` training steps, its first ``seeds`` seeds, at
    most ``MAX_CHECKPOINTS`` count-spaced checkpoints (an explicit list becomes the last step),
    the sizes of ``CAPS`` (curvature families with options switched on by ``true`` are
    spelled out with their defaults first, so that their sizes are capped too), and
    torchvision data read from ``raw_root`` without downloading."""
    small = copy.deepcopy(study)
    train = small["train"]
    train["iterations"] = iterations
    checkpoints = train["checkpoints"]
    train["checkpoints"] = (
        {**checkpoints, "count": min(checkpoints["count"], MAX_CHECKPOINTS)}
        if isinstance(checkpoints, dict) else [iterations])
    train["seeds"] = train["seeds"][:seeds]
    if small["data"]["name"] in synthetic.IMAGE_SHAPES:
        small["data"].update(root=str(Path(raw_root).resolve()), download=False)
    curvature = small["measure"].get("curvature")
    if isinstance(curvature, dict):
        curvature.update({family: options for family, options
                          in studies.curvature_families(curvature).items() if options})
    for keys, limit in CAPS.items():
        _cap(small, keys, limit)
    return small


def copy_workflow(source: Path, directory: Path) -> None:
    """The Snakefile, ``workflow/``, ``src/`` (the code inputs of every job) and ``profiles/``
    (Snakemake's default workflow profile) of ``source``."""
    shutil.copy2(source / "Snakefile", directory / "Snakefile")
    for name in ("workflow", "src", "profiles"):
        shutil.copytree(source / name, directory / name,
                        ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))


def _clear(directory: Path) -> None:
    """Make ``directory`` an empty rehearsal folder: create it, or empty an earlier rehearsal's;
    any other non-empty folder is refused, so nothing of the user's is deleted."""
    if directory.exists() and any(directory.iterdir()):
        if not (directory / MARKER).is_file():
            raise RehearsalError(f"{directory} is not empty and not a rehearsal folder; "
                                 "choose a new or empty folder with --dir")
        shutil.rmtree(directory)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / MARKER).write_text("written by `flatrep rehearse`; rerunning it clears this\n")


def write_project(params: dict, source: str | Path, studies: list[str], directory: str | Path,
                  iterations: int, seeds: int) -> Path:
    """A runnable project in ``directory`` rehearsing ``studies`` of ``params``: the workflow
    of project ``source``, random raw files under ``raw/`` and a ``params.yaml`` selecting the
    shrunk studies. Returns the folder."""
    unknown = [name for name in studies if name not in params["studies"]]
    if unknown:
        raise RehearsalError(f"unknown studies {unknown}; known: {sorted(params['studies'])}")
    directory = Path(directory).resolve()
    _clear(directory)
    copy_workflow(Path(source), directory)
    raw_root = directory / "raw"
    shrunk = {name: rehearsal_study(params["studies"][name], raw_root, iterations, seeds)
              for name in studies}
    for dataset in sorted({study["data"]["name"] for study in shrunk.values()}
                          & set(synthetic.IMAGE_SHAPES)):
        synthetic.write_raw_files(dataset, raw_root, RAW_TRAIN_IMAGES, RAW_TEST_IMAGES)
    (directory / "params.yaml").write_text(
        "# Written by `flatrep rehearse`: toy-scale copies of the studies, on random images.\n"
        + yaml.safe_dump({"run_studies": list(studies), "studies": shrunk}, sort_keys=False))
    return directory


def run_snakemake(directory: Path, cores: int) -> int:
    """``snakemake --cores <cores> --keep-going`` in ``directory`` with this interpreter's
    ``bin`` first on PATH (the jobs call ``flatrep``); its exit status."""
    env = {**os.environ,
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    command = [sys.executable, "-m", "snakemake", "--cores", str(cores), "--keep-going"]
    return subprocess.run(command, cwd=directory, env=env).returncode


@dataclass(frozen=True)
class Outcome:
    """How one study's rehearsal ended: its final outputs, and the last line of each failed
    job's log (a log holding a Python traceback)."""

    study: str
    passed: bool
    errors: tuple[str, ...]


#: A failed shell command in Snakemake's log: "Command '... > <job log> 2>&1 ...' returned
#: non-zero exit status <N>." (every rule sends its output to its log this way).
_FAILED_COMMAND = re.compile(r"Command '.*?> (\S+) 2>&1.*' returned non-zero exit status (\d+)")


def exit_statuses(directory: Path) -> dict[Path, int]:
    """Job log -> exit status of its last failed attempt, from Snakemake's newest log in
    ``directory/.snakemake/log`` (that of the rehearsal's one run); empty without one."""
    runs = sorted((directory / ".snakemake" / "log").glob("*.snakemake.log"))
    if not runs:
        return {}
    return {directory / log: int(status)
            for log, status in _FAILED_COMMAND.findall(runs[-1].read_text(errors="replace"))}


def _exit_description(status: int) -> str:
    """"exit status 137 (SIGKILL: out of memory?)" and the like."""
    if status <= 128:
        return f"exit status {status}"
    name = signal.Signals(status - 128).name if status - 128 in signal.valid_signals() else "?"
    hint = ": out of memory?" if name == "SIGKILL" else ""
    return f"exit status {status} ({name}{hint})"


def _failed_logs(folder: Path, statuses: dict[Path, int]) -> list[str]:
    """``<log>: <last line>`` for each log under ``folder`` that holds a traceback, and
    ``<log>: <exit status>, no Python error`` for each other log of a failed command (a job
    killed by a signal, e.g. by the out-of-memory killer, leaves no traceback)."""
    failed = []
    for log in sorted(folder.rglob("*.log")) if folder.is_dir() else []:
        lines = log.read_text(errors="replace").strip().splitlines()
        if any(line.startswith("Traceback") for line in lines):
            failed.append(f"{log}: {lines[-1]}")
        elif log in statuses:
            failed.append(f"{log}: {_exit_description(statuses[log])}, no Python error")
    return failed


def outcomes(directory: str | Path, studies: list[str]) -> list[Outcome]:
    """Each study passed when its summary and its figures (the last jobs) exist; a failed one
    lists its failed jobs' logs and those of the data preparation."""
    directory = Path(directory)
    statuses = exit_statuses(directory)
    preparation = _failed_logs(directory / "logs" / "prepare_data", statuses)
    result = []
    for name in studies:
        passed = all((directory / "results" / name / path).is_file()
                     for path in ("summary.json", "figures/claims.png"))
        errors = () if passed else tuple(_failed_logs(directory / "logs" / name, statuses)
                                         + preparation)
        result.append(Outcome(name, passed, errors))
    return result


def report(results: list[Outcome]) -> str:
    """A Markdown table of the outcomes, then the errors of each failed study."""
    lines = ["| study | rehearsal |", "|---|---|"]
    lines += [f"| {o.study} | {'passed' if o.passed else 'FAILED'} |" for o in results]
    for outcome in results:
        if not outcome.passed:
            lines += ["", f"{outcome.study}:"]
            lines += [f"  {error}" for error in outcome.errors or ("no job log names an error; "
                                                                   "see snakemake's output",)]
    return "\n".join(lines)
