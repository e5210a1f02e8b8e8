"""DVC's own ways of comparing runs on the tiny study: `dvc exp run -S` changes a parameter
of params.yaml and reruns what it touches, `dvc exp show` lists the experiment's parameters
and summary metrics beside the baseline's, and `dvc plots diff` lays the two trajectory files
of each quantity (flatrep.analysis.trajectory_files) over each other."""

import json

import pytest
import xarray as xr
import yaml
from conftest import make_project, run
from test_reruns import commit_all, edit_study, git_dvc_project

from flatrep.analysis.trajectory_files import TRAJECTORY_PLOTS

pytestmark = pytest.mark.workflow

BASELINE_ITERATIONS, LONGER_ITERATIONS = 60, 90


def one_run_without_curvature(study: dict) -> None:
    """One run, no curvature families: the experiment retrains it in seconds."""
    study["train"].update(iterations=BASELINE_ITERATIONS, seeds=[0],
                          grid=[{"lr": [0.1], "batch_size": [20]}])
    study["measure"]["curvature"] = {"enabled": False}


def experiment_rows(project) -> dict[str, dict]:
    """`dvc exp show --json` by row: commits (and the workspace) by revision, experiments by
    name -> {"params": params.yaml's values, "metrics": summary.json's}."""
    rows = {}
    for commit in json.loads(run(["dvc", "exp", "show", "--json"], project).stdout):
        entries = [(commit["rev"], commit)] + [
            (exp["name"], exp) for group in commit.get("experiments") or []
            for exp in group["revs"]]
        for key, entry in entries:
            data = entry["data"]
            rows[key] = {"params": data["params"]["params.yaml"]["data"],
                         "metrics": data["metrics"]["results/tiny/summary.json"]["data"]}
    return rows


def iterations(row: dict) -> int:
    return row["params"]["studies"]["tiny"]["train"]["iterations"]


def test_exp_run_set_param_then_exp_show_and_plots_diff(tmp_path):
    project = make_project(tmp_path / "project")
    edit_study(project, one_run_without_curvature)
    git_dvc_project(project, tmp_path / "remote")
    run(["dvc", "repro"], project)
    commit_all(project)
    baseline = run(["git", "rev-parse", "HEAD"], project).stdout.strip()

    out = run(["dvc", "exp", "run", "-n", "longer", "-S",
               f"studies.tiny.train.iterations={LONGER_ITERATIONS}"], project).stdout
    assert "Running stage 'runs@tiny'" in out and "Running stage 'analysis@tiny'" in out
    # the workspace holds the experiment: params.yaml and the cube's steps
    study = yaml.safe_load((project / "params.yaml").read_text())["studies"]["tiny"]
    assert study["train"]["iterations"] == LONGER_ITERATIONS
    with xr.open_dataset(project / "results/tiny/cube.nc") as cube:
        assert int(cube["step"].max()) == LONGER_ITERATIONS

    rows = experiment_rows(project)
    assert iterations(rows[baseline]) == BASELINE_ITERATIONS
    assert iterations(rows["longer"]) == LONGER_ITERATIONS
    assert rows["longer"]["metrics"]["claims"] and rows[baseline]["metrics"]["claims"]

    plots = json.loads(run(["dvc", "plots", "diff", "HEAD", "longer", "--json"],
                           project).stdout)["data"]
    for name in TRAJECTORY_PLOTS:
        [plot] = plots[f"results/tiny/trajectory/{name}.csv"]
        by_rev = {}
        for row in plot["content"]["data"]["values"]:
            by_rev.setdefault(row["rev"], []).append(row)
        assert set(by_rev) == {"HEAD", "longer"}
        assert {rev: max(int(row["step"]) for row in values) for rev, values in by_rev.items()} \
            == {"HEAD": BASELINE_ITERATIONS, "longer": LONGER_ITERATIONS}
        assert all(float(row[name]) > 0 for values in by_rev.values() for row in values)
