"""Training killed (SIGKILL) at any moment and started again ends bit-identical to an
uninterrupted run (CPU, strict mode): single runs and vmapped ensembles, killed between
checkpoints (mid-epoch), while a checkpoint is being written, and after divergence; with the
killed job's outputs deleted (as Snakemake does before rerunning an incomplete job) or left.
Through Snakemake: a training job killed on its first attempt is retried and resumes."""

import copy
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import make_project
from test_data_torchvision import fake_cifar

from flatrep import checkpoint
from flatrep.data import datasets
from flatrep.params import studies
from flatrep.training import ensemble, resume, run_state, single
from flatrep.training.batches import BatchOrder

#: Runs in a child process: patch one function to SIGKILL the process on its n-th call, then
#: train. argv: kind (single|ensemble), target (optimizer|replace|keep), n, study json,
#: runs json, out, data root.
KILLER = """
import json, os, signal, sys
import flatrep.atomic, flatrep.training.resume, flatrep.training.optimizers
from torch.optim.optimizer import register_optimizer_step_pre_hook
from flatrep.params import studies
from flatrep.training import ensemble, single

kind, target, n, study, runs, out, data_root = sys.argv[1:]
calls = [0]


def count_and_kill():
    calls[0] += 1
    if calls[0] == int(n):
        os.kill(os.getpid(), signal.SIGKILL)


def killing(original):
    def wrapper(*args, **kwargs):
        count_and_kill()
        return original(*args, **kwargs)
    return wrapper


if target == "optimizer" and kind == "single":   # every torch optimizer's step, before it runs
    register_optimizer_step_pre_hook(lambda *args: count_and_kill())
else:
    owner, name = {"optimizer": (flatrep.training.optimizers.StackedOptimizer, "step"),
                   "replace": (flatrep.atomic.os, "replace"),
                   "keep": (flatrep.training.resume, "keep")}[target]
    setattr(owner, name, killing(getattr(owner, name)))
study, runs = json.loads(study), [studies.Run(k, v) for k, v in json.loads(runs).items()]
if kind == "single":
    single.train_run("resume", study, runs[0], out, data_root, threads=1)
else:
    ensemble.train_ensemble("resume", study, runs, out, data_root, threads=1)
"""


def _study(tiny_study, **train_options):
    study = copy.deepcopy(tiny_study)
    study["model"] = {"name": "mlp", "hidden": [8, 8], "activation": "tanh"}
    study["train"].update(iterations=60, checkpoints=[0, 10, 25, 40, 60], averaging_start=0.5,
                          lr_schedule={"name": "linear_decay", "hold": 0.2}, **train_options)
    return study


def _runs(grid):
    return [studies.Run(studies.run_id(hp), hp) for hp in grid]


def _killed(kind, target, n, study, runs, out, data_root):
    """Run the killer child; it must die of SIGKILL."""
    out.parent.mkdir(parents=True, exist_ok=True)
    script = out.parent / "killer.py"
    script.write_text(KILLER)
    runs_json = json.dumps({run.run_id: run.hparams for run in runs})
    child = subprocess.run([sys.executable, str(script), kind, target, str(n), json.dumps(study),
                            runs_json, str(out), str(data_root)], capture_output=True, text=True,
                           timeout=600)
    assert child.returncode == -signal.SIGKILL, child.stderr[-2000:]


def _delete_outputs(out: Path) -> int:
    """What Snakemake does to an incomplete job's outputs before running it again."""
    outputs = list(out.rglob("step_*.pt"))
    for path in outputs:
        if resume.SCRATCH not in path.parts:
            path.unlink()
    return len(outputs)


def _assert_identical(a, b, where=""):
    """Recursively equal: tensors bit for bit (torch.equal), everything else by ==."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for key in a:
            _assert_identical(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_identical(x, y, f"{where}[{i}]")
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


def _assert_same_files(reference: Path, resumed: Path, runs, steps):
    """Every checkpoint of ``runs`` in ``resumed`` equals the reference's, bit for bit, and
    no scratch folder is left."""
    for run in runs:
        other = resumed / run.run_id
        assert sorted(p.name for p in other.glob("step_*.pt")) == \
            sorted(f"step_{k}.pt" for k in steps)
        assert not resume.scratch_dir(other).exists(), "scratch folder left after completion"
        for step in steps:
            _assert_identical(checkpoint.read(reference / run.run_id / f"step_{step}.pt"),
                              checkpoint.read(other / f"step_{step}.pt"),
                              f"{run.run_id}/step_{step}")


SINGLE = {"optimizer": "sgd", "momentum": 0.9, "weight_decay": 1e-3, "batch_size": 20}


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, tiny_study, data_root):
    """{case: (study, runs, folder)} trained without interruption."""
    cases = {
        "single": (_study(tiny_study), _runs([{"lr": 0.1, "seed": 0, **SINGLE}])),
        "diverged": (_study(tiny_study), _runs([{"lr": 1000.0, "seed": 0, **SINGLE}])),
        "ensemble": (_study(tiny_study, optimizer="adam", batch_size=20),
                     _runs([{"lr": lr, "seed": seed} for lr in (0.01, 0.003)
                            for seed in (0, 1)])),
    }
    done = {}
    for case, (study, runs) in cases.items():
        out = tmp_path_factory.mktemp(case) / "runs"
        if case == "ensemble":
            ensemble.train_ensemble("resume", study, runs, out, data_root, threads=1)
        else:
            single.train_run("resume", study, runs[0], out / runs[0].run_id, data_root, threads=1)
        done[case] = (study, runs, out)
    return done


@pytest.mark.parametrize("case, target, n, delete", [
    ("single", "optimizer", 33, True),     # between checkpoints 25 and 40, mid-epoch
    ("single", "optimizer", 5, False),     # before the second checkpoint, outputs left
    ("single", "replace", 7, True),        # checkpoint 40: written to its temporary name
    ("single", "keep", 3, True),           # checkpoint 25 written, not yet kept for resuming
    ("diverged", "replace", 8, True),      # writing the checkpoints after divergence
    ("ensemble", "optimizer", 33, True),
    ("ensemble", "replace", 29, True),     # 2 of 4 members' checkpoints at 40 written
])
def test_a_killed_run_resumes_bit_identical(uninterrupted, data_root, tmp_path, case, target, n,
                                            delete):
    study, runs, reference = uninterrupted[case]
    out = tmp_path / "runs"
    kind = "ensemble" if case == "ensemble" else "single"
    run_dir = out if kind == "ensemble" else out / runs[0].run_id
    _killed(kind, target, n, study, runs, run_dir, data_root)
    assert any(out.rglob(f"{resume.SCRATCH}/step_0.pt")), "nothing kept before the kill"
    if delete:
        _delete_outputs(out)
    if kind == "ensemble":
        ensemble.train_ensemble("resume", study, runs, out, data_root, threads=1)
    else:
        single.train_run("resume", study, runs[0], run_dir, data_root, threads=1)
    _assert_same_files(reference, out, runs, studies.checkpoint_steps(study["train"]))
    if case == "diverged":
        meta = checkpoint.read(run_dir / "step_60.pt")["meta"]
        assert meta["diverged_at"] is not None


def test_resuming_continues_from_the_last_checkpoint(uninterrupted, data_root, tmp_path,
                                                     monkeypatch):
    """The resumed job takes only the steps after its last checkpoint (25 of 60 done)."""
    study, runs, _ = uninterrupted["single"]
    run_dir = tmp_path / "runs" / runs[0].run_id
    _killed("single", "optimizer", 33, study, runs, run_dir, data_root)
    steps = []
    monkeypatch.setattr(BatchOrder, "next",
                        lambda self, original=BatchOrder.next: steps.append(1)
                        or original(self))
    single.train_run("resume", study, runs[0], run_dir, data_root, threads=1)
    assert len(steps) == 60 - 25



def test_finding_the_resume_point_unpickles_one_checkpoint(uninterrupted, data_root, tmp_path,
                                                           monkeypatch):
    """Of the four scratch checkpoints (steps 0, 10, 25, 40), every one is digest-checked and
    only the last is unpickled."""
    study, runs, _ = uninterrupted["single"]
    run_dir = tmp_path / "runs" / runs[0].run_id
    _killed("single", "optimizer", 45, study, runs, run_dir, data_root)
    verified, unpacked = [], []
    monkeypatch.setattr(checkpoint, "verified_payload",
                        lambda path, original=checkpoint.verified_payload:
                        verified.append(Path(path).name) or original(path))
    monkeypatch.setattr(checkpoint, "unpack", lambda payload, path, original=checkpoint.unpack:
                        unpacked.append(Path(path).name) or original(payload, path))
    step, content = resume.latest(run_dir, studies.checkpoint_steps(study["train"]),
                                  run_state.belongs_to("resume", study, runs[0]))
    assert (step, content["meta"]["step"]) == (40, 40)
    assert verified == [f"step_{k}.pt" for k in (0, 10, 25, 40)]
    assert unpacked == ["step_40.pt"]

def test_stale_or_damaged_scratch_is_not_resumed(uninterrupted, data_root, tmp_path):
    """Scratch checkpoints of another configuration are discarded; a damaged last one makes
    the run resume from the one before; either way the result is the uninterrupted run's."""
    study, runs, reference = uninterrupted["single"]
    out = tmp_path / "runs"
    run_dir = out / runs[0].run_id
    other = copy.deepcopy(study)
    other["train"]["weight_decay"] = 0.0
    _killed("single", "optimizer", 33, other, runs, run_dir, data_root)
    single.train_run("resume", study, runs[0], run_dir, data_root, threads=1)
    _assert_same_files(reference, out, runs, studies.checkpoint_steps(study["train"]))

    _killed("single", "optimizer", 45, study, runs, run_dir, data_root)
    last = resume.scratch_dir(run_dir) / "step_40.pt"
    last.write_bytes(last.read_bytes()[:-200])
    assert resume.latest(run_dir, studies.checkpoint_steps(study["train"]),
                         run_state.belongs_to("resume", study, runs[0]))[0] == 25
    single.train_run("resume", study, runs[0], run_dir, data_root, threads=1)
    _assert_same_files(reference, out, runs, studies.checkpoint_steps(study["train"]))


def test_checksum_catches_a_checkpoint_altered_in_place(uninterrupted, tmp_path):
    _, runs, reference = uninterrupted["single"]
    data = bytearray((reference / runs[0].run_id / "step_60.pt").read_bytes())
    middle = len(data) // 2
    data[middle] ^= 0xFF
    altered = tmp_path / "step_60.pt"
    altered.write_bytes(bytes(data))
    with pytest.raises(checkpoint.CheckpointError) as caught:
        checkpoint.read(altered)
    message = str(caught.value)
    assert str(altered) in message and "rerun the training rule" in message
    assert "sha256" in message or "corrupt" in message


KILL_FIRST_ATTEMPT = """
import os, signal
marker = os.environ["FLATREP_TEST_KILL_MARKER"]
if not os.path.exists(marker):
    from torch.optim.optimizer import register_optimizer_step_pre_hook
    calls = [0]

    def kill_once(*args):
        calls[0] += 1
        if calls[0] == 150:
            open(marker, "w").close()
            os.kill(os.getpid(), signal.SIGKILL)

    register_optimizer_step_pre_hook(kill_once)
"""


@pytest.mark.workflow
def test_snakemake_retries_a_killed_training_job_which_resumes(snakemake_project, tmp_path):
    """The tiny study's training job is SIGKILLed at step 150 of 300 on its first attempt
    (a `sitecustomize` on PYTHONPATH, inherited by the job); Snakemake deletes its outputs
    and retries it (`retries: 2`), the retry resumes from the checkpoint at step 100, and the
    checkpoints equal those of the uninterrupted project."""
    project = make_project(tmp_path / "project")
    hooks = tmp_path / "hooks"
    hooks.mkdir()
    (hooks / "sitecustomize.py").write_text(KILL_FIRST_ATTEMPT)
    marker = tmp_path / "killed"
    run_id = "lr0.1_bs20_seed0"
    steps = studies.checkpoint_steps(
        studies.study_config(studies.load_params(project / "params.yaml"), "tiny")["train"])
    target = f"results/tiny/runs/{run_id}/step_{steps[-1]}.pt"
    env = {**os.environ, "PYTHONPATH": str(hooks), "FLATREP_TEST_KILL_MARKER": str(marker),
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    result = subprocess.run(["snakemake", "--cores", "1", target], cwd=project, env=env,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert marker.exists(), "the first attempt was not killed"
    log = (project / f"logs/tiny/train/{run_id}.log").read_text()
    assert f"resumes from its checkpoint at step {steps[1]}" in log
    _assert_same_files(snakemake_project / "results/tiny/runs", project / "results/tiny/runs",
                       [studies.Run(run_id, {})], steps)


@pytest.mark.gpu
def test_a_killed_dropout_run_on_cuda_resumes_bit_identical(data_root, tmp_path):
    """Dropout on the GPU draws from the device's own generator: its state is checkpointed
    (``torch_cuda``) and restored, so the resumed trajectory is the uninterrupted one."""
    fake_cifar(tmp_path / "raw", "cifar10")
    datasets.prepare("cifar10", tmp_path / "data", root=str(tmp_path / "raw"))
    study = {"data": {"name": "cifar10", "root": str(tmp_path / "raw"), "download": False,
                      "scale": "unit_interval"},
             "model": {"name": "vgg16_bn", "width": 0.0625, "dropout": 0.5},
             "train": {"optimizer": "sgd", "momentum": 0.9, "loss": "cross_entropy",
                       "batch_size": 8, "iterations": 12, "checkpoints": [0, 4, 8, 12],
                       "determinism": "strict", "device": "cuda", "grid": [], "seeds": []}}
    runs = _runs([{"lr": 0.05, "seed": 0}])
    reference = tmp_path / "reference"
    single.train_run("resume", study, runs[0], reference / runs[0].run_id, tmp_path / "data", 1)
    assert "torch_cuda" in checkpoint.read(reference / runs[0].run_id / "step_4.pt")["rng"]
    out = tmp_path / "runs"
    _killed("single", "optimizer", 7, study, runs, out / runs[0].run_id, tmp_path / "data")
    _delete_outputs(out)
    single.train_run("resume", study, runs[0], out / runs[0].run_id, tmp_path / "data", 1)
    _assert_same_files(reference, out, runs, [0, 4, 8, 12])
