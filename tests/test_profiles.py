"""The cluster profiles (profiles/slurm, profiles/kubernetes): dry runs of tiny
studies through each executor plugin, checking the GPU, memory and time each job requests.
Dry runs only (seconds): no cluster, no `sbatch`, no `kubectl`, no kube config is needed."""

import copy
import os
import re
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import REPO, make_project

pytestmark = pytest.mark.workflow

SUBMIT_TOOLS = ("sbatch", "srun", "scancel", "kubectl")


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """The workflow with three tiny studies: one job per run on `device: auto` (tiny), vmapped
    seed ensembles on `device: cuda` (tiny_ens), one job per run on `device: cpu` (tiny_cpu);
    the measures on the default `measure.device: auto` but `cpu` for tiny_cpu."""
    root = make_project(tmp_path_factory.mktemp("profiles") / "project")
    params = yaml.safe_load((root / "params.yaml").read_text())
    base = params["studies"]["tiny"]
    studies = {name: copy.deepcopy(base) for name in ("tiny", "tiny_ens", "tiny_cpu")}
    studies["tiny"]["train"]["device"] = "auto"
    studies["tiny_ens"]["train"].update(device="cuda", ensemble="seeds")
    studies["tiny_cpu"]["train"]["device"] = "cpu"
    studies["tiny_cpu"]["measure"]["device"] = "cpu"
    params.update(run_studies=list(studies), studies=studies)
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    # Stand-ins for the submission tools: each call is recorded (and fails).
    stubs = root.parent / "stubs"
    stubs.mkdir()
    for tool in SUBMIT_TOOLS:
        path = stubs / tool
        path.write_text(f'#!/bin/sh\necho {tool} "$@" >> "{root.parent}/submit_calls.log"\n'
                        "exit 1\n")
        path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return root


def dry_run(project: Path, profile: str, *args: str) -> dict[str, list[dict[str, str]]]:
    """Rule name -> the `resources:` of each job `snakemake -n --profile` plans."""
    env = {
        **os.environ,
        "PATH": os.pathsep.join([str(project.parent / "stubs"), str(Path(sys.executable).parent),
                                 os.environ["PATH"]]),
        "KUBECONFIG": str(project.parent / "no-such-kubeconfig"),
    }
    cmd = ["snakemake", "-n", "--profile", f"profiles/{profile}", *args]
    result = subprocess.run(cmd, cwd=project, env=env, capture_output=True, text=True,
                            timeout=300)
    out = result.stdout + result.stderr
    assert result.returncode == 0, f"{cmd} failed:\n{out[-4000:]}"
    assert not (project.parent / "submit_calls.log").exists(), "a dry run called a submit tool"
    jobs: dict[str, list[dict[str, str]]] = {}
    rule = None
    for line in out.splitlines():
        if match := re.fullmatch(r"(?:local)?rule (\S+):", line.strip()):
            rule = match.group(1)
        elif line.strip().startswith("resources: ") and rule is not None:
            items = line.strip().removeprefix("resources: ").split(", ")
            jobs.setdefault(rule, []).append(dict(item.split("=", 1) for item in items))
            rule = None
    return jobs


def by_kind(jobs):
    """(per-run GPU jobs, ensemble GPU jobs, per-run CPU jobs, measure jobs)."""
    ens = [res for rule, rs in jobs.items() if rule.startswith("train_tiny_ens_") for res in rs]
    return jobs.get("train_tiny", []), ens, jobs.get("train_tiny_cpu", []), jobs.get("measure")


def check_requests(jobs, attempt=1):
    run, ens, cpu, measure = by_kind(jobs)
    assert len(run) == 6 and len(ens) == 3 and len(cpu) == 6 and len(measure) == 18
    for res in run:
        assert (res["gpu"], res["mem_mb"], res["runtime"]) == ("1", f"{2000 * attempt}",
                                                               f"{60 * attempt}")
    for res in ens:
        assert (res["gpu"], res["mem_mb"], res["runtime"]) == ("1", f"{4000 * attempt}",
                                                               f"{120 * attempt}")
    for res in cpu:
        assert res.get("gpu", "0") == "0"
        assert (res["mem_mb"], res["runtime"]) == (f"{2000 * attempt}", f"{60 * attempt}")
    assert sorted(res["gpu"] for res in measure) == ["0"] * 6 + ["1"] * 12
    for res in measure:
        assert (res["mem_mb"], res["runtime"]) == (f"{4000 * attempt}", f"{60 * attempt}")
    # the attempt reaches the command (`flatrep --attempt`: no rerun of a deterministic failure)
    assert {res["attempt"] for res in run + ens + cpu + measure} == {str(attempt)}
    for rule in ("prepare_data", "cube", "bounds", "stats", "figures"):
        for res in jobs[rule]:
            assert int(res["mem_mb"]) >= 4000 * attempt and int(res["runtime"]) >= 30 * attempt
            assert res.get("gpu", "0") == "0"


def test_slurm_profile_requests_a_gpu_for_auto_and_cuda_jobs_only(project):
    pytest.importorskip("snakemake_executor_plugin_slurm")
    jobs = dry_run(project, "slurm")
    check_requests(jobs)
    # A retried job asks for more (`--attempt` is how Snakemake passes the attempt to a job).
    check_requests(dry_run(project, "slurm", "--attempt", "2"), attempt=2)

    # What the plugin makes of these resources: --gpus only for the GPU training jobs.
    from snakemake_executor_plugin_slurm.submit_string import get_submit_command
    from snakemake_executor_plugin_slurm.utils import set_gres_string

    class Resources(dict):
        __getattr__ = dict.__getitem__

    class Job:
        def __init__(self, res, threads):
            keys = ("gpu", "mem_mb", "runtime")
            self.resources = Resources({k: int(res[k]) for k in keys if k in res})
            self.threads = threads

    params = {"run_uuid": "x", "slurm_logfile": "x.log", "comment_str": "x", "account": "",
              "partition": "", "workdir": str(project)}
    run, ens, cpu, measure = by_kind(jobs)
    gpu_job, cpu_job = Job(run[0], threads=1), Job(cpu[0], threads=1)
    gpu_call = get_submit_command(gpu_job, params) + set_gres_string(gpu_job)
    cpu_call = get_submit_command(cpu_job, params) + set_gres_string(cpu_job)
    assert "--gpus=1" in gpu_call and "--mem 2000" in gpu_call and " -t 60" in gpu_call
    assert "--gpus" not in cpu_call and "--mem 2000" in cpu_call
    measure_gpus = {set_gres_string(Job(res, threads=1)) for res in measure}
    assert len(measure_gpus) == 2 and "--gpus=1" in " ".join(measure_gpus)   # cpu: none
    assert "--gpus=1" in set_gres_string(Job(ens[0], threads=2))


def test_kubernetes_profile_requests_nvidia_gpus_with_a_remote_default_storage(project):
    pytest.importorskip("snakemake_executor_plugin_kubernetes")
    pytest.importorskip("snakemake_storage_plugin_fs")
    # The plugin assumes no shared file system: every input and output goes through the
    # default storage (s3 in the profile). An empty local `fs` storage stands in for it here:
    # the sources the rules declare as inputs are `local(...)`, so nothing is uploaded first.
    storage = project.parent / "storage"
    storage.mkdir()
    jobs = dry_run(project, "kubernetes", "--default-storage-provider", "fs",
                   "--default-storage-prefix", str(storage))
    check_requests(jobs)
    for rule, resources in jobs.items():
        for res in resources:
            # needed by the plugin for every job declaring `gpu`, and limits = requests
            assert res["gpu_manufacturer"] == "nvidia" and res["scale"] == "0", rule


def test_the_default_profile_prints_a_failed_jobs_log_on_the_console(tmp_path):
    """With the project's workflow profile (profiles/default), a job that fails shows its log,
    where every rule sends its command's one-line error, on the console."""
    shutil.copytree(REPO / "profiles", tmp_path / "profiles")
    # printf joins the two words, so the joined line is in the log, not in the command text
    # that Snakemake prints for every failed job anyway
    (tmp_path / "Snakefile").write_text(
        'rule fails:\n    output: "out.txt"\n    log: "logs/fails.log"\n'
        '    shell: "printf \'%s %s\\\\n\' \'flatrep measure:\' \'error: x.pt is corrupt\' '
        '> {log}; exit 2"\n')
    result = subprocess.run([str(Path(sys.executable).parent / "snakemake"), "--cores", "1"],
                            cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert result.returncode != 0
    assert "flatrep measure: error: x.pt is corrupt" in result.stdout + result.stderr
