"""`snakemake --cores N` never has two jobs writing one file: the raw files that concurrent
`prepare_data` jobs download into a shared folder (an inter-process lock), and the files and
folders the jobs of params.yaml (and the tiny per-run study) declare or write (the dry-run DAG)."""

import json
import multiprocessing
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import REPO, TINY_PARAMS, dry_run_jobs, make_project
from test_data_torchvision import fake_cifar

from flatrep.data import datasets


def slow_fake_download(intervals: Path, pause: float):
    """A stand-in for ``datasets._download`` that writes the real CIFAR-10 raw files slowly and
    appends its (start, end) monotonic times as one JSON line to ``intervals``."""

    def download(name: str, root: Path, missing: list[Path]) -> None:
        start = time.monotonic()
        time.sleep(pause)
        fake_cifar(root, name)
        time.sleep(pause)
        with open(intervals, "a") as handle:
            handle.write(json.dumps([start, time.monotonic()]) + "\n")

    return download


def prepare_after(barrier, prepared: Path, root: Path, num_train: int) -> None:
    """Wait for the other process at ``barrier``, then prepare CIFAR-10 from ``root``."""
    barrier.wait(timeout=30)
    datasets.prepare("cifar10", prepared, root=str(root), num_train=num_train)


def test_concurrent_prepares_of_one_dataset_download_once_and_never_together(
        tmp_path, monkeypatch):
    """Two studies with different `num_train` are two prepare_data jobs sharing one raw folder:
    both start together (a barrier), the download (slow, so unlocked calls would overlap) runs
    once, and each prepared file holds its first `num_train` training images."""
    intervals, root = tmp_path / "downloads.jsonl", tmp_path / "raw"
    monkeypatch.setattr(datasets, "_download", slow_fake_download(intervals, pause=0.5))
    context = multiprocessing.get_context("fork")   # the children inherit the fake download
    barrier = context.Barrier(2)
    workers = [context.Process(target=prepare_after, args=(barrier, tmp_path / "data", root, n))
               for n in (4, 7)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=120)
    assert [worker.exitcode for worker in workers] == [0, 0]
    spans = sorted(json.loads(line) for line in intervals.read_text().splitlines())
    assert all(end <= next_start for (_, end), (next_start, _) in zip(spans, spans[1:])), spans
    assert len(spans) == 1
    expected = fake_cifar(tmp_path / "expected", "cifar10")["train"]
    for n in (4, 7):
        path = datasets.prepared_path("cifar10", tmp_path / "data", num_train=n)
        with np.load(path) as stored:
            assert np.array_equal(stored["x_train"].reshape(n, -1), expected[0][:n])
            assert stored["y_train"].tolist() == expected[1][:n].tolist()


def test_a_raw_folder_that_cannot_hold_the_lock_is_one_clear_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(datasets.DataError, match="cannot create the download lock"):
        datasets.prepare("mnist", tmp_path / "data", root=str(blocker / "raw"))


def argument(args: list[str], flag: str) -> str | None:
    """The value after ``flag`` in a command's arguments, None if the flag is absent."""
    return args[args.index(flag) + 1] if flag in args else None


def written_run_folders(args: list[str]) -> set[str]:
    """The run folders a `flatrep train` / `train-ensemble` command writes into (checkpoints and
    the undeclared `.resume/` scratch folder): `--out-dir`, or `--out-root`/<each run of
    `--runs-json`>."""
    if argument(args, "--out-dir"):
        return {argument(args, "--out-dir")}
    runs = json.loads(argument(args, "--runs-json"))
    return {f"{argument(args, '--out-root')}/{run_id}" for run_id in runs}


def project_with_params(root: Path, params: Path) -> Path:
    """A temporary copy of the workflow with ``params`` as its params.yaml."""
    project = make_project(root)
    shutil.copy(params, project / "params.yaml")
    return project


def every_study_target(project: Path) -> list[str]:
    """Each study's summary and figures, so that every rule of every study is in the DAG."""
    studies = yaml.safe_load((project / "params.yaml").read_text())["studies"]
    return [path for name in studies for path in (f"results/{name}/summary.json",
                                                  f"results/{name}/figures/claims.png")]


@pytest.mark.workflow
@pytest.mark.parametrize("params", [REPO / "params.yaml", TINY_PARAMS], ids=["real", "tiny"])
def test_no_two_jobs_write_one_file_or_one_run_folder(tmp_path, params):
    """Snakemake rejects two jobs declaring one output, but not one log or benchmark file, nor
    a training command writing outside its declared outputs (`.resume/` scratch folders): every
    declared path is unique, and the run folders each training job's command writes are exactly
    its outputs' folders, disjoint from those of every other training job; each run folder is
    measured by exactly one job (per run, or per training group)."""
    project = project_with_params(tmp_path / "project", params)
    jobs = dry_run_jobs(project, *every_study_target(project))
    paths = [path for job in jobs for path in job["paths"]]
    assert len(paths) == len(set(paths)) and len(jobs) > 10
    folders = {}
    for job in jobs:
        if job["rule"].startswith("train_"):
            written = written_run_folders(job["args"])
            outputs = {str(Path(path).parent) for path in job["paths"] if path.endswith(".pt")}
            assert written == outputs, job["rule"]
            assert not written & set(folders), (job["rule"], written & set(folders))
            folders.update(dict.fromkeys(written, job["rule"]))
    measured = [str(Path(p).parent) for job in jobs if job["rule"].startswith("measure")
                for p in job["paths"] if p.endswith("measures.nc")]
    assert sorted(measured) == sorted(folders)   # per-run and per-group measure jobs alike
