"""Reruns and versioning on the tiny study: a changed learning rate retrains only the runs (or
the ensemble group) it changes; `dvc repro` reruns only the stages whose params changed; and
results pushed to a DVC remote are pulled on a fresh clone where, after the re-stamp step,
Snakemake plans nothing and still sees later parameter edits."""

import shutil
from pathlib import Path

import pytest
import xarray as xr
import yaml
from conftest import dry_run_jobs, run

pytestmark = pytest.mark.workflow

#: The runs of the tiny grid (tests/params_tiny.yaml).
TINY_RUNS = {f"lr{lr}_bs{bs}_seed{seed}" for lr, bs in ((0.1, 20), (0.2, 20), (0.1, 8))
             for seed in (0, 1)}
#: The runs that `change_one_lr` removes and adds.
OLD_RUNS, NEW_RUNS = ({f"lr{lr}_bs20_seed{seed}" for seed in (0, 1)} for lr in (0.2, 0.3))
#: The re-stamp step after `dvc pull` (README): mark every output up to date, recording
#: Snakemake's provenance metadata for every job (plain `--touch` records it only for the jobs
#: it finds out of date).
RESTAMP = ["snakemake", "--touch", "--forceall", "--cores", "1", "--quiet"]


def copy_project(source: Path, target: Path) -> Path:
    """A copy of a project with its outputs, their mtimes and Snakemake's `.snakemake/`
    metadata, so that it is exactly as up to date as ``source``."""
    shutil.copytree(source, target, symlinks=True)
    return target


def edit_study(project: Path, change) -> None:
    """Apply ``change`` to the tiny study of the project's params.yaml."""
    params = yaml.safe_load((project / "params.yaml").read_text())
    change(params["studies"]["tiny"])
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def change_one_lr(study: dict) -> None:
    """lr 0.2 -> 0.3 in the first cross of the grid (batch size 20)."""
    study["train"]["grid"][0]["lr"] = [0.1, 0.3]


#: The runs of the DVC test's study (`larger_data_fewer_runs`).
DVC_RUNS = {"lr0.1_bs20_seed0", "lr0.1_bs20_seed1"}


def larger_data_fewer_runs(study: dict) -> None:
    """4000 samples, a prepared file of 1.3 MB: over Snakemake's default checksum limit (1 MB),
    as real datasets are. Two runs measured without curvature keep the retraining this costs
    short."""
    study["data"]["num_samples"] = 4000
    study["train"]["grid"] = [{"lr": [0.1], "batch_size": [20]}]
    study["measure"]["curvature"] = {"enabled": False}


def run_folders_by_rule(jobs: list[dict]) -> dict[str, set[str]]:
    """Rule -> the runs whose folder (`results/tiny/runs/<run>/`) its planned jobs write."""
    folders = {}
    for job in jobs:
        for path in map(Path, job["paths"]):
            if path.parent.parent.name == "runs":
                folders.setdefault(job["rule"], set()).add(path.parent.name)
    return folders


def file_identities(folder: Path) -> dict[Path, tuple[int, int]]:
    """(inode, mtime in ns) of every file under ``folder``: both change when a file is
    rewritten, atomically (a new inode) or in place (a new mtime)."""
    return {path: (path.stat().st_ino, path.stat().st_mtime_ns)
            for path in folder.rglob("*") if path.is_file()}


def test_changing_one_lr_retrains_and_remeasures_only_its_runs(snakemake_project, tmp_path):
    project = copy_project(snakemake_project, tmp_path / "project")
    before = file_identities(project / "results/tiny/runs")
    edit_study(project, change_one_lr)
    jobs = dry_run_jobs(project)
    assert run_folders_by_rule(jobs) == {"train_tiny": NEW_RUNS, "measure": NEW_RUNS}
    assert {job["rule"] for job in jobs} == {"train_tiny", "measure", "cube", "bounds", "stats",
                                             "figures", "all"}
    run(["snakemake", "results/tiny/cube.nc", "--cores", "2", "--quiet"], project)
    after = file_identities(project / "results/tiny/runs")
    assert {path: after[path] for path in before} == before
    assert dry_run_jobs(project, "results/tiny/cube.nc") == []
    with xr.open_dataset(project / "results/tiny/cube.nc") as cube:
        assert set(cube["run"].values) == TINY_RUNS - OLD_RUNS | NEW_RUNS


@pytest.mark.parametrize("mode, retrained", [
    ("seeds", {"train_tiny_lr0_3_bs20": NEW_RUNS}),
    ("configs", {"train_tiny_bs20_optsgd_ia1_0": NEW_RUNS | {"lr0.1_bs20_seed0",
                                                             "lr0.1_bs20_seed1"}}),
], ids=["seeds", "configs"])
def test_changing_one_lr_of_an_ensemble_study_retrains_its_group(snakemake_project, tmp_path,
                                                                 mode, retrained):
    """`seeds`: one job, the new configuration's seeds. `configs`: the whole group sharing the
    batch size and optimizer (config.ensemble_groups) retrains, the lr 0.1 runs included, since
    its members are trained together; the batch-size-8 group does not. The ensemble project is
    marked up to date by `snakemake --touch` on a copy of the per-run one (the same checkpoint
    files) rather than trained again."""
    project = copy_project(snakemake_project, tmp_path / "project")
    edit_study(project, lambda study: study["train"].update(ensemble=mode))
    run(["snakemake", "--touch", "--cores", "1", "--quiet"], project)
    assert dry_run_jobs(project) == []
    edit_study(project, change_one_lr)
    jobs = dry_run_jobs(project, "results/tiny/cube.nc")
    assert run_folders_by_rule(jobs) == {**retrained, "measure": set().union(*retrained.values())}


def git_dvc_project(project: Path, remote: Path) -> None:
    """Make ``project`` a git + DVC repository whose default DVC remote is the folder
    ``remote``; Snakemake's metadata, logs and benchmarks stay out of both."""
    (project / ".dvcignore").write_text(".snakemake/\nlogs/\nbenchmarks/\n")
    (project / ".gitignore").write_text(".snakemake/\nlogs/\nbenchmarks/\n__pycache__/\n")
    run(["git", "init", "-q"], project)
    run(["dvc", "init", "-q"], project)
    run(["dvc", "remote", "add", "-d", "local", str(remote)], project)
    # as the project's .dvc/config: linking keeps the mtimes Snakemake compares
    run(["dvc", "config", "cache.type", "hardlink,copy"], project)


def commit_all(project: Path) -> None:
    """Commit every file git does not ignore (dvc.lock, params, code, the .dvc config)."""
    run(["git", "add", "-A"], project)
    run(["git", "-c", "user.name=flatrep tests", "-c", "user.email=tests@example.invalid",
         "-c", "commit.gpgsign=false", "commit", "-q", "-m", "tiny study"], project)


def result_bytes(project: Path) -> dict[str, bytes]:
    """The content of every file under data/ and results/, by path relative to ``project``."""
    return {str(path.relative_to(project)): path.read_bytes()
            for folder in ("data", "results") for path in (project / folder).rglob("*")
            if path.is_file()}


def test_dvc_repro_push_and_pull_on_a_fresh_clone_then_restamp(snakemake_project, tmp_path):
    """`dvc repro` runs every stage once, then reports up to date, and after a stats edit
    reruns the analysis only: no training or measure job, though DVC gives the data file a new
    mtime (on data over 1 MB, which the Snakemake profile's checksum limit covers). `dvc pull`
    restores data, checkpoints and cube byte for byte and DVC calls them current, but the
    clone has no `.snakemake/` metadata and pull-time mtimes; after the re-stamp step
    `snakemake` plans nothing, and a later training parameter edit still retrains every run
    (plain `--touch` would leave the training jobs without provenance, blind to it)."""
    project = copy_project(snakemake_project, tmp_path / "origin")
    edit_study(project, larger_data_fewer_runs)
    shutil.rmtree(project / "results/tiny/runs")   # the fixture's six runs
    git_dvc_project(project, tmp_path / "remote")
    first = run(["dvc", "repro"], project).stdout
    assert "Running stage 'analysis@tiny'" in first and (project / "dvc.lock").is_file()
    assert "up to date" in run(["dvc", "repro"], project).stdout
    assert dry_run_jobs(project) == []   # DVC's commit left Snakemake's mtime order intact
    job_logs = {name: file_identities(project / "logs/tiny" / name)
                for name in ("train", "measure")}
    stats_log = (project / "logs/tiny/stats.log").stat().st_mtime_ns
    edit_study(project, lambda study: study["stats"].update(bootstrap=300))
    changed = run(["dvc", "repro"], project).stdout
    # The data stage's params hold every study, so it reruns, and DVC first replaces the
    # hard-linked data file by a copy with a new mtime (unprotecting a persistent output);
    # Snakemake must see from the file's checksum that the training inputs did not change.
    assert "Running stage 'data'" in changed and "Running stage 'analysis@tiny'" in changed
    assert "Running stage 'runs@tiny'" not in changed
    assert file_identities(project / "logs/tiny/train") == job_logs["train"]
    assert file_identities(project / "logs/tiny/measure") == job_logs["measure"]
    assert (project / "logs/tiny/stats.log").stat().st_mtime_ns != stats_log
    assert "results/tiny/summary.json" in run(["dvc", "metrics", "show", "--json"],
                                              project).stdout
    run(["dvc", "push"], project)
    commit_all(project)
    clone = tmp_path / "clone"
    run(["git", "clone", "-q", str(project), str(clone)], tmp_path)
    assert not (clone / "data").exists() and not (clone / "results/tiny/runs").exists()
    run(["dvc", "pull"], clone)
    assert result_bytes(clone) == result_bytes(project)
    assert "up to date" in run(["dvc", "status"], clone).stdout
    unstamped = run(["snakemake", "--cores", "1", "-n"], clone)
    assert "missing provenance" in unstamped.stdout + unstamped.stderr
    run(RESTAMP, clone)
    assert dry_run_jobs(clone) == []
    assert "up to date" in run(["dvc", "status"], clone).stdout
    edit_study(clone, lambda study: study["train"].update(momentum=0.5))
    assert run_folders_by_rule(dry_run_jobs(clone, "results/tiny/cube.nc")) == {
        "train_tiny": DVC_RUNS, "measure": DVC_RUNS}
