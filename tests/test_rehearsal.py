"""Rehearsals (flatrep.pipeline.rehearsal) and the random raw files they read
(flatrep.data.synthetic)."""

import copy
import subprocess
import sys

import numpy as np
import pytest
import xarray as xr
from conftest import REPO

from flatrep.data import datasets, synthetic
from flatrep.params import studies, validation
from flatrep.pipeline import rehearsal

SHIPPED = studies.load_params(REPO / "params.yaml")


@pytest.mark.parametrize("name", sorted(synthetic.IMAGE_SHAPES))
def test_random_raw_files_load_through_the_dataset_readers(tmp_path, name):
    written = synthetic.write_raw_files(name, tmp_path / "raw", num_train=23, num_test=7)
    assert all(path.is_file() for path in written)
    options = {"root": str(tmp_path / "raw"), "download": False}
    datasets.prepare(name, tmp_path / "data", **options)
    num_classes = datasets.spec(name).num_classes
    for split, count in (("train", 23), ("test", 7)):
        x, y = datasets.load(name, split, tmp_path / "data", **options)
        assert x.shape == (count, *synthetic.IMAGE_SHAPES[name])
        assert y.tolist() == [i % num_classes for i in range(count)]
        assert x.min() >= 0 and x.max() <= 255 and x.std() > 50   # uniform bytes: std ~ 74
        assert np.array_equal(x, x.round())
    x_pair, y_pair = datasets.load(name, "train", tmp_path / "data", classes=[0, 1],
                                   scale="unit_interval", **options)
    assert set(y_pair.tolist()) == {0, 1} and x_pair.max() <= 1
    assert len(y_pair) == sum(1 for i in range(23) if i % num_classes < 2)


def test_random_raw_files_of_an_unknown_dataset_are_refused(tmp_path):
    with pytest.raises(datasets.DataError, match="no raw-file writer for dataset 'mnist1d'"):
        synthetic.write_raw_files("mnist1d", tmp_path, 4, 4)


def leaves(tree: dict, prefix: tuple = ()) -> dict:
    """Every non-mapping value of a nested mapping, by its path of keys."""
    found = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            found.update(leaves(value, prefix + (key,)))
        else:
            found[prefix + (key,)] = value
    return found


@pytest.mark.parametrize("name", sorted(SHIPPED["studies"]))
def test_every_shipped_study_shrinks_to_a_valid_study_that_keeps_its_design(tmp_path, name):
    study = SHIPPED["studies"][name]
    small = rehearsal.rehearsal_study(study, tmp_path / "raw", iterations=12, seeds=2)
    validation.check_params({"run_studies": [name], "studies": {name: small}})
    assert small["train"]["iterations"] == 12
    assert small["train"]["seeds"] == study["train"]["seeds"][:2]
    steps = studies.checkpoint_steps(small["train"])
    assert steps[0] == 0 and steps[-1] == 12 and len(steps) <= rehearsal.MAX_CHECKPOINTS + 1
    spelled_out = copy.deepcopy(study)     # families switched on by `true`, with defaults
    curvature = spelled_out["measure"].get("curvature", {})
    curvature.update({family: options for family, options
                      in studies.curvature_families(curvature).items() if options})
    before, after = leaves(spelled_out), leaves(small)
    changed = {keys for keys in before.keys() | after.keys() if before.get(keys, "absent")
               != after.get(keys, "absent")}
    allowed = set(rehearsal.CAPS) | {("train", "iterations"), ("train", "seeds"),
                                     ("train", "checkpoints"), ("train", "checkpoints", "count"),
                                     ("data", "root"), ("data", "download")}
    assert changed <= allowed, changed - allowed
    for keys in changed & set(rehearsal.CAPS):
        assert after[keys] == rehearsal.CAPS[keys] and (before[keys] is None
                                                        or before[keys] > after[keys])
    assert small["model"] == study["model"]
    assert studies.expand_runs(small) == [run for run in studies.expand_runs(study)
                                          if run.hparams["seed"] in small["train"]["seeds"]]
    if study["data"]["name"] in synthetic.IMAGE_SHAPES:
        assert small["data"]["root"] == str((tmp_path / "raw").resolve())
        assert small["data"]["download"] is False


def test_sizes_at_or_below_their_caps_and_absent_families_are_kept():
    study = {"data": {"name": "mnist1d"},
             "train": {"iterations": 1000, "checkpoints": [250, 1000], "seeds": [5]},
             "measure": {"points": 3, "curvature": {"points": None, "probes": 40}}}
    small = rehearsal.rehearsal_study(study, "raw", iterations=20, seeds=2)
    assert small["measure"] == {"points": 3, "curvature": {"points": 32, "probes": 4}}
    assert small["train"] == {"iterations": 20, "checkpoints": [20], "seeds": [5]}
    assert small["data"] == {"name": "mnist1d"}
    assert study["measure"]["curvature"]["points"] is None   # the input is left untouched


def test_families_switched_on_by_true_are_capped_at_their_default_options():
    study = {"data": {"name": "mnist1d"},
             "train": {"iterations": 1000, "checkpoints": [1000], "seeds": [0]},
             "measure": {"points": 3, "curvature": {"probes": 4, "lanczos": True,
                                                    "output_curvature": True, "rank": False}}}
    curvature = rehearsal.rehearsal_study(study, "raw", iterations=20, seeds=1)[
        "measure"]["curvature"]
    assert curvature == {"probes": 4, "lanczos": {"steps": 5}, "rank": False,
                         "output_curvature": {"steps": 3, "point_chunk": 8, "points": 2}}


def test_a_rehearsal_folder_is_cleared_but_no_other_folder_is_touched(tmp_path):
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep")
    with pytest.raises(rehearsal.RehearsalError, match="not empty and not a rehearsal folder"):
        rehearsal.write_project(SHIPPED, REPO, ["quick"], foreign, 10, 1)
    assert (foreign / "notes.txt").read_text() == "keep"
    with pytest.raises(rehearsal.RehearsalError, match=r"unknown studies \['quik'\]"):
        rehearsal.write_project(SHIPPED, REPO, ["quik"], tmp_path / "new", 10, 1)
    folder = rehearsal.write_project(SHIPPED, REPO, ["ff_mnist_rank_small"], tmp_path / "r", 10, 1)
    (folder / "results").mkdir()
    (folder / "results" / "old.txt").write_text("stale")
    rehearsal.write_project(SHIPPED, REPO, ["ff_cifar100_logreg_l2"], folder, 10, 1)
    assert not (folder / "results").exists()
    assert sorted(p.name for p in (folder / "raw").iterdir()) == ["cifar-100-python"]
    written = studies.load_params(folder / "params.yaml")
    assert written["run_studies"] == ["ff_cifar100_logreg_l2"]
    assert list(written["studies"]) == ["ff_cifar100_logreg_l2"]


def test_outcomes_name_each_failed_jobs_last_log_line(tmp_path):
    for path in ("results/good/summary.json", "results/good/figures/claims.png",
                 "results/half/summary.json"):
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / path).write_text("x")
    logs = {"good/train/r.log": "INFO fine\n",
            "half/figures.log": "Traceback (most recent call last):\n  ...\nValueError: no runs\n",
            "half/train/r.log": "INFO fine\n"}
    for path, text in logs.items():
        (tmp_path / "logs" / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "logs" / path).write_text(text)
    good, half, none = rehearsal.outcomes(tmp_path, ["good", "half", "none"])
    assert good == rehearsal.Outcome("good", True, ())
    assert not half.passed and half.errors == (
        f"{tmp_path / 'logs/half/figures.log'}: ValueError: no runs",)
    assert not none.passed and none.errors == ()
    table = rehearsal.report([good, half, none])
    assert "| good | passed |" in table and "| half | FAILED |" in table
    assert "ValueError: no runs" in table and "no job log names an error" in table


def test_outcomes_name_jobs_killed_without_a_traceback_by_their_exit_status(tmp_path):
    """A real Snakemake run whose job is killed by SIGKILL (as by the out-of-memory killer)
    and one whose job exits 3: the killed job's log has no traceback, yet it is reported."""
    (tmp_path / "Snakefile").write_text(
        'rule all:\n    input: "results/s/summary.json", "results/s/other.txt"\n'
        'rule killed:\n    output: "results/s/summary.json"\n    log: "logs/s/measure/r.log"\n'
        '    shell: "python -c \'import os, signal; print(1); os.kill(os.getpid(), '
        'signal.SIGKILL)\' > {log} 2>&1; touch {output}"\n'
        'rule exits:\n    output: "results/s/other.txt"\n    log: "logs/s/other.log"\n'
        '    shell: "python -c \'raise SystemExit(3)\' > {log} 2>&1"\n')
    assert rehearsal.run_snakemake(tmp_path, 1) != 0
    (outcome,) = rehearsal.outcomes(tmp_path, ["s"])
    assert not outcome.passed
    assert outcome.errors == (
        f"{tmp_path / 'logs/s/measure/r.log'}: exit status 137 (SIGKILL: out of memory?), "
        "no Python error",
        f"{tmp_path / 'logs/s/other.log'}: exit status 3, no Python error")


@pytest.mark.workflow
def test_a_paper_study_rehearses_end_to_end_on_random_cifar_files(tmp_path):
    """`flatrep rehearse` runs the CIFAR-2 LeNet-5 correlation study (its 5 configurations,
    one seed each, as ensembles by batch size; torchvision CIFAR-10 files, a class subset,
    [0, 1] scaling) through every stage."""
    name = "chen_cifar2_lenet5_correlation"
    folder = tmp_path / "rehearsal"
    result = subprocess.run(
        [sys.executable, "-m", "flatrep.cli", "rehearse", name, "--params",
         str(REPO / "params.yaml"), "--dir", str(folder), "--iterations", "6", "--seeds", "1",
         "--cores", "2"],
        capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert f"| {name} | passed |" in result.stdout
    cube = xr.open_dataset(folder / "results" / name / "cube.nc")
    assert cube.sizes["run"] == 5 and cube["step"].values.tolist() == [0, 6]
    assert set(cube["batch_size"].values.tolist()) == {8, 20, 32}
    assert np.isfinite(cube["sharpness"].values).all()
    assert (folder / "results" / name / "figures" / "claims.png").stat().st_size > 0
