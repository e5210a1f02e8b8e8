"""End-to-end: the Snakemake DAG and DVC stages on the tiny study, in temporary projects."""

import json
import os
import shutil
import sys
from pathlib import Path

import pytest
import xarray as xr
import yaml
from conftest import REPO, make_project, run
from test_ensemble import assert_same_checkpoints

from flatrep import cli
from flatrep.cube import variables

pytestmark = pytest.mark.workflow


def test_cube_has_the_contract_dims_variables_and_attributes(snakemake_project):
    with xr.open_dataset(snakemake_project / "results/tiny/cube.nc") as cube:
        assert set(cube.dims) == {"run", "step", "subset", "sample", "layer", "moment",
                                  "spectrum_bin", "slq_probe", "slq_node", "rank_tolerance",
                                  "rank_bound"}
        assert list(cube["rank_tolerance"].values) == [1e-4, 1e-6, 1e-8]
        assert list(cube["moment"].values) == [1, 2]
        assert cube.sizes["run"] == 6 and cube.sizes["step"] == 4
        assert list(cube["subset"].values) == ["train", "test", "test_misclassified"]
        assert cube["sample_index"].dims == ("subset", "sample")
        for coord in ("lr", "batch_size", "seed"):
            assert cube[coord].dims == ("run",)
        for name, var in variables.CATALOG.items():
            assert cube[name].dims == ("run", "step") + var.dims, name
            for attr in ("long_name", "units", "definition"):
                assert cube[name].attrs[attr], (name, attr)
        assert cube["diverged_at"].dims == ("run",)
        assert (cube["diverged_at"].values == -1).all()   # no tiny run diverges
        config = json.loads(cube.attrs["config"])
        assert config["model"]["hidden"] == [16, 16]
        for attr in ("flatrep_version", "git_revision", "torch_version", "device",
                     "hessian_factor"):
            assert attr in cube.attrs
        assert cube.attrs["hessian_factor"] == pytest.approx(2 / 10)
        assert float(cube["train_loss"].isel(step=-1).max()) < float(
            cube["train_loss"].isel(step=0).min())


def test_outputs_of_every_stage_exist(snakemake_project):
    results = snakemake_project / "results/tiny"
    summary = json.loads((results / "summary.json").read_text())
    assert summary["n_runs"] == 6
    assert set(summary["correlation_across_runs"]) == {
        "sharpness~mls", "sharpness~log_lvr", "sharpness~log_lvr_top3", "sharpness~nmls",
        "sharpness~log_nvr", "sharpness~local_dim"}
    assert set(summary["late_phase"]) == {"runs", "interpolated", "falls",
                                          "final_over_peak_median"}
    assert summary["late_phase"]["runs"] == 6
    with xr.open_dataset(results / "bounds.nc") as b:
        theorems = b["holds"].where(b["kind"] == "theorem", drop=True)
        evaluated = theorems.notnull().any(("run", "step"))
        assert (theorems.sel(bound=evaluated) == 1).all()
        assert list(theorems["bound"].values[~evaluated.values]) == ["loss_trace"]  # mse study
        assert (b["sample_holds"] == 1).all()
    verdicts = {row["verdict"] for row in summary["claims"].values()}
    assert verdicts <= {"supported", "contradicted", "inconclusive", "not tested"}
    text = (results / "summary.md").read_text()
    assert "| verdict |" in text and "| sharpness vs |" in text and "| ma_ying |" in text
    for png in ("trajectories.png", "bounds.png", "correlations.png", "tightness.png",
                "claims.png", "robust_cdf.png"):
        assert (results / "figures" / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert list((snakemake_project / "logs/tiny/train").glob("*.log"))
    assert list((snakemake_project / "benchmarks/tiny/measure").glob("*.tsv"))


def planned_jobs(project: Path, *targets: str) -> dict[str, int]:
    """Rule name -> job count of what `snakemake -n` would run."""
    out = run(["snakemake", *targets, "--cores", "1", "-n", "--quiet", "rules"], project)
    counts = {}
    for line in (out.stdout + out.stderr).splitlines():
        fields = line.split()
        if len(fields) == 2 and fields[1].isdigit() and fields[0] != "total":
            counts[fields[0]] = int(fields[1])
    return counts


def test_rerun_is_a_no_op_and_code_edit_remeasures_without_retraining(snakemake_project):
    """The plan after an edit of a measure module: every run re-measured, none retrained, the
    analysis redone. The edit is then undone, content and mtime, leaving the shared project as
    it was (that executed plans settle is shown by test_reruns)."""
    assert planned_jobs(snakemake_project) == {}
    module = snakemake_project / "src/flatrep/measures/jacobian.py"
    source, stat = module.read_text(), module.stat()
    module.write_text(source + "\n# an edit\n")
    try:
        planned = planned_jobs(snakemake_project)
    finally:
        module.write_text(source)
        os.utime(module, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert planned.get("measure") == 6 and "train_tiny" not in planned
    assert {"cube", "bounds", "stats", "figures"} <= set(planned)
    assert planned_jobs(snakemake_project) == {}


def test_every_documented_output_is_a_target_of_rule_all(snakemake_project, tmp_path):
    """A deleted cube.nc, bounds.nc or stats.nc is planned again by a plain `snakemake`
    (before, the files made from them kept it at "Nothing to be done"). Each is moved aside
    and back, mtime kept, leaving the shared project as it was."""
    for name, rule in (("cube.nc", "cube"), ("bounds.nc", "bounds"), ("stats.nc", "stats")):
        path, aside = snakemake_project / "results/tiny" / name, tmp_path / name
        path.rename(aside)
        try:
            planned = planned_jobs(snakemake_project)
        finally:
            aside.rename(path)
        assert planned.get(rule) == 1, (name, planned)
    assert planned_jobs(snakemake_project) == {}


def test_a_fresh_project_measures_runs_identically(snakemake_project, tmp_path):
    """Data preparation, training and measurement from scratch in another project give
    every variable and attribute of the runs' measure files exactly (two of the six runs,
    one per batch size, to keep the test short; the cube only concatenates these files)."""
    other = make_project(tmp_path / "again")
    targets = [f"results/tiny/runs/{name}/measures.nc"
               for name in ("lr0.2_bs20_seed1", "lr0.1_bs8_seed0")]
    run(["snakemake", *targets, "--cores", "2", "--quiet"], other)
    for target in targets:
        with xr.open_dataset(snakemake_project / target) as first, \
                xr.open_dataset(other / target) as second:
            xr.testing.assert_identical(first.load(), second.load())


def test_report_registers_the_figures(snakemake_project):
    run(["snakemake", "--cores", "1", "--report", "report.zip"], snakemake_project)
    assert (snakemake_project / "report.zip").stat().st_size > 10_000


def test_snakemake_lint_is_clean():
    result = run(["snakemake", "--lint"], REPO)
    assert "Congratulations" in result.stdout + result.stderr


def test_ensemble_mode_trains_each_configuration_in_one_job_with_the_same_checkpoints(
        snakemake_project, tmp_path):
    """`train.ensemble: seeds`: one training job per configuration (3 for the tiny grid)
    writes the per-run project's checkpoint files: the same steps, metadata, generator
    states, weights and optimizer states, to float32 training rounding
    (tests/test_ensemble.py). The measures are a function of the checkpoints
    (test_a_fresh_project_measures_runs_identically), so they are not computed again."""
    project = make_project(tmp_path / "ensemble")
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["studies"]["tiny"]["train"]["ensemble"] = "seeds"
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    planned = planned_jobs(project, "results/tiny/cube.nc")
    assert {job: count for job, count in planned.items() if job.startswith("train")} == {
        "train_tiny_lr0_1_bs20": 1, "train_tiny_lr0_2_bs20": 1, "train_tiny_lr0_1_bs8": 1}
    runs = sorted(path.name for path in (snakemake_project / "results/tiny/runs").iterdir())
    assert len(runs) == 6
    checkpoints = {name: sorted((snakemake_project / "results/tiny/runs" / name).glob("*.pt"))
                   for name in runs}
    targets = [str(path.relative_to(snakemake_project)) for paths in checkpoints.values()
               for path in paths]
    run(["snakemake", *targets, "--cores", "2", "--quiet"], project)
    for name, single in checkpoints.items():
        together = [project / path.relative_to(snakemake_project) for path in single]
        assert_same_checkpoints(single, together)


GROUP = ("lr0.2_bs20_seed0", "lr0.2_bs20_seed1")


def group_copy(snakemake_project: Path, root: Path) -> tuple[list[Path], list[Path]]:
    """The checkpoints of the runs ``GROUP`` copied into run folders under ``root``, and the
    measures file each folder gets."""
    checkpoints, outs = [], []
    for name in GROUP:
        folder = root / "runs" / name
        folder.mkdir(parents=True)
        for path in sorted((snakemake_project / "results/tiny/runs" / name).glob("step_*.pt")):
            checkpoints.append(Path(shutil.copy(path, folder)))
        outs.append(folder / "measures.nc")
    return checkpoints, outs


def measure_command(project: Path, checkpoints, outs) -> list[str]:
    return ["measure", "--params", str(project / "params.yaml"), "--study", "tiny",
            "--data-root", str(project / "data"), "--checkpoints", *map(str, checkpoints),
            "--out", *map(str, outs)]


def test_one_process_measures_a_group_as_per_run_jobs_do(snakemake_project, tmp_path):
    """Two runs measured by one `flatrep measure` give each run's measures file exactly as
    its own job wrote it, every value and attribute (but the git revision, which this process
    reads from the repository and the project's jobs could not); the checkpoints may come in
    any order."""
    checkpoints, outs = group_copy(snakemake_project, tmp_path)
    assert cli.main(measure_command(snakemake_project, checkpoints[::-1], outs)) == 0
    where = {"git_revision", "content_sha256"}
    for name, out in zip(GROUP, outs):
        with xr.open_dataset(snakemake_project / "results/tiny/runs" / name / "measures.nc") as \
                alone, xr.open_dataset(out) as together:
            alone, together = alone.load(), together.load()
            for ds in (alone, together):
                ds.attrs = {key: value for key, value in ds.attrs.items() if key not in where}
            xr.testing.assert_identical(alone, together)


def test_a_group_refuses_a_damaged_checkpoint_before_measuring_any_run(
        snakemake_project, tmp_path, capsys):
    """A damaged checkpoint of the second run stops the job before the first run is
    measured; a checkpoint outside every run folder and a folder without checkpoints are
    named too."""
    checkpoints, outs = group_copy(snakemake_project, tmp_path)
    checkpoints[-1].write_bytes(checkpoints[-1].read_bytes()[:-100])
    assert cli.main(measure_command(snakemake_project, checkpoints, outs)) == 2
    assert str(checkpoints[-1]) in capsys.readouterr().err
    assert not any(out.exists() for out in outs)
    stray = tmp_path / "elsewhere.pt"
    assert cli.main(measure_command(snakemake_project, [stray], outs)) == 2
    assert f"checkpoint {stray} is in none of the folders" in capsys.readouterr().err
    assert cli.main(measure_command(snakemake_project, checkpoints[:1], outs)) == 2
    assert f"no checkpoint given in the folder of {outs[1]}" in capsys.readouterr().err


def test_group_measure_jobs_follow_the_training_groups(tmp_path):
    """`measure.jobs: group` in a study trained as `seeds` ensembles plans one measure job per
    configuration, named after its training group, and no per-run measure job."""
    project = make_project(tmp_path / "grouped")
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["studies"]["tiny"]["train"]["ensemble"] = "seeds"
    params["studies"]["tiny"]["measure"]["jobs"] = "group"
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    planned = planned_jobs(project, "results/tiny/cube.nc")
    assert {job: count for job, count in planned.items() if job.startswith("measure")} == {
        "measure_tiny_lr0_1_bs20": 1, "measure_tiny_lr0_2_bs20": 1, "measure_tiny_lr0_1_bs8": 1}


def test_the_figures_command_imports_no_statsmodels(snakemake_project, tmp_path):
    """`flatrep figures` draws every figure of the tiny study in a fresh process that never
    imports statsmodels (the regressions' library), as the CLI promises each subcommand
    imports only what it needs."""
    results = snakemake_project / "results/tiny"
    figures = json.dumps(yaml.safe_load((snakemake_project / "params.yaml").read_text())
                         ["studies"]["tiny"]["figures"])
    names = ("trajectories", "bound-plot", "correlations", "tightness", "claims-table",
             "robust-cdf")
    command = ["figures", str(results / "cube.nc"), str(results / "bounds.nc"),
               str(results / "stats.nc"), "--figures-json", figures,
               *[word for name in names for word in (f"--{name}", str(tmp_path / f"{name}.png"))]]
    script = ("import sys\nfrom flatrep import cli\n"
              f"status = cli.main({command!r})\n"
              "print(status, sorted(m for m in sys.modules if m.startswith('statsmodels'))[:3])\n")
    out = run([sys.executable, "-c", script], snakemake_project).stdout.split("\n")[-2]
    assert out == "0 []"
    assert all((tmp_path / f"{name}.png").read_bytes()[:4] == b"\x89PNG" for name in names)
