"""Shared fixtures: a tiny prepared MNIST-1D dataset, a tiny trained + measured run, and the
tiny study run end to end by Snakemake in a temporary project."""

import copy
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from flatrep.cube import measuring
from flatrep.data import datasets
from flatrep.params import studies
from flatrep.pipeline import rehearsal
from flatrep.training import single

REPO = Path(__file__).resolve().parents[1]
TINY_PARAMS = Path(__file__).parent / "params_tiny.yaml"


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items):
    """Tests marked ``gpu`` need a CUDA device: skipped, with one reason, where there is none.
    Every test gets its pytest-xdist group (see :func:`worker_group`), before pytest-xdist's
    own hook reads the groups."""
    skip = pytest.mark.skip(reason="needs a CUDA device (marked gpu)")
    for item in items:
        if "gpu" in item.keywords and not torch.cuda.is_available():
            item.add_marker(skip)
        group = worker_group(item)
        if group:
            item.add_marker(pytest.mark.xdist_group(group))


def worker_group(item) -> str | None:
    """The worker that runs a test under ``pytest -n N --dist loadgroup`` (``make test``): tests
    of the Snakemake-run project share one worker, and so do the tests of a module with a
    module-scoped fixture, so each such fixture is built once; other tests go to any worker."""
    if "snakemake_project" in item.fixturenames:
        return "snakemake_project"
    definitions = item._fixtureinfo.name2fixturedefs
    if any(definitions[name][-1].scope == "module" for name in item.fixturenames
           if name in definitions):
        return item.module.__name__
    return None


@pytest.fixture
def float64_default():
    """Build tensors and modules in float64 during a test, restoring the default after."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(previous)



class MatrixOperator:
    """v -> A v for an explicit symmetric matrix A: a ``flatrep.measures.operators.LinearOperator``
    (rows of V are vectors; ``dim``, ``dtype`` and ``device``)."""

    def __init__(self, matrix: torch.Tensor):
        self.matrix, self.dim = matrix, len(matrix)
        self.dtype, self.device = matrix.dtype, matrix.device

    def apply(self, vectors: torch.Tensor) -> torch.Tensor:
        return vectors @ self.matrix

@pytest.fixture
def lanczos_batches(monkeypatch):
    """The number of runs of each ``krylov.lanczos_runs`` call made while the test runs, in
    call order (the calls themselves unchanged)."""
    from flatrep.measures import krylov

    sizes, lanczos_runs = [], krylov.lanczos_runs

    def counted(apply, starts, steps):
        sizes.append(len(starts))
        return lanczos_runs(apply, starts, steps)

    monkeypatch.setattr(krylov, "lanczos_runs", counted)
    return sizes


@pytest.fixture(scope="session")
def tiny_study():
    """The tiny study of tests/params_tiny.yaml."""
    return yaml.safe_load(TINY_PARAMS.read_text())["studies"]["tiny"]


@pytest.fixture(scope="session")
def data_root(tmp_path_factory, tiny_study):
    root = tmp_path_factory.mktemp("data")
    options = {k: v for k, v in tiny_study["data"].items() if k != "name"}
    datasets.prepare("mnist1d", root, **options)
    return root


@pytest.fixture(scope="session")
def measured_tiny_run(tmp_path_factory, tiny_study, data_root):
    """(run dataset, checkpoint paths) of one trained and measured tiny run."""
    study = copy.deepcopy(tiny_study)
    run = studies.expand_runs(study)[0]
    out = tmp_path_factory.mktemp("run")
    paths = single.train_run("tiny", study, run, out, data_root, threads=1)
    return measuring.measures_file(paths, study["measure"], data_root), paths


def make_project(root: Path) -> Path:
    """A copy of the workflow with tests/params_tiny.yaml as its params.yaml."""
    root.mkdir(parents=True, exist_ok=True)
    rehearsal.copy_workflow(REPO, root)
    shutil.copy(REPO / "dvc.yaml", root / "dvc.yaml")
    shutil.copy(TINY_PARAMS, root / "params.yaml")
    return root


def run(cmd: list[str], cwd: Path) -> subprocess.CompletedProcess:
    """Run a command with the test interpreter's bin directory first on PATH."""
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    result = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, (f"{cmd} failed:\n{result.stdout[-3000:]}\n"
                                    f"{result.stderr[-3000:]}")
    return result


def dry_run_jobs(project: Path, *targets: str) -> list[dict]:
    """The jobs `snakemake -n -p` plans for ``targets``, each as its rule, its declared paths
    (output, log, benchmark) and its shell command's arguments, parsed from the job blocks."""
    out = run(["snakemake", *targets, "--cores", "1", "-n", "--printshellcmds"], project)
    jobs = []
    for line in out.stdout.splitlines():
        if line.startswith(("rule ", "localrule ")):
            jobs.append({"rule": line.split()[1].rstrip(":"), "paths": [], "args": []})
        elif line.startswith(("    output: ", "    log: ", "    benchmark: ")):
            jobs[-1]["paths"] += line.split(": ", 1)[1].split(", ")
        elif line.startswith("Shell command: "):
            jobs[-1]["args"] = shlex.split(line.removeprefix("Shell command: "))
    return jobs


@pytest.fixture(scope="session")
def snakemake_project(tmp_path_factory):
    """A project in which `snakemake` has run the tiny study (shared by the workflow tests)."""
    project = make_project(tmp_path_factory.mktemp("wf") / "project")
    run(["snakemake", "--cores", "2", "--quiet"], project)
    return project
