"""Checkpoints travel (DVC remotes, shared caches), so loading one must never run code: a
crafted payload with a matching sha256 is refused, with the named error, through every entry
point (direct load, the measure job's command, resuming a training job), and creates nothing.
Every checkpoint flatrep writes is plain data that torch's safe loader reads, and identical
state gives identical bytes."""

import copy
import hashlib
import io
import json
import shutil

import pytest
import torch

from flatrep import checkpoint, cli
from flatrep.params import studies
from flatrep.training import ensemble, resume, single


class _CreatesAFile:
    """Unpickling this object calls open(path, "w"): it would create ``path``."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def _envelope(payload_content: dict, fmt: str = checkpoint.FORMAT) -> bytes:
    """A checkpoint file around ``payload_content`` with a correct sha256, as an attacker who
    knows the format would write it."""
    inner = io.BytesIO()
    torch.save(payload_content, inner)
    payload = inner.getvalue()
    outer = io.BytesIO()
    torch.save({"format": fmt, "sha256": hashlib.sha256(payload).hexdigest(),
                "payload": payload}, outer)
    return outer.getvalue()


def crafted(path, marker, fmt: str = checkpoint.FORMAT):
    """Write at ``path`` a checkpoint whose payload would create ``marker`` when unpickled."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(_envelope({"meta": _CreatesAFile(marker), "model": {}}, fmt))
    return path


@pytest.mark.parametrize("fmt", checkpoint.READABLE_FORMATS)
def test_a_crafted_payload_is_refused_by_load_and_creates_nothing(tmp_path, fmt):
    marker = tmp_path / "created"
    path = crafted(tmp_path / "step_10.pt", marker, fmt)
    with pytest.raises(checkpoint.CheckpointError, match="refuses to unpickle") as err:
        checkpoint.load(path)
    assert str(path) in str(err.value) and "not who wrote it" in str(err.value)
    assert not marker.exists()


def test_a_crafted_checkpoint_fails_the_measure_job_in_one_line(tmp_path, data_root, capsys):
    marker = tmp_path / "created"
    path = crafted(tmp_path / "step_10.pt", marker)
    measure_json = '{"points": 4, "point_seed": 0, "chunk_size": 4}'
    assert cli.main(["measure", "--checkpoints", str(path), "--measure-json", measure_json,
                     "--data-root", str(data_root), "--out", str(tmp_path / "m.nc")]) == 2
    err = capsys.readouterr().err
    message = err.replace("\r", "\n").strip().splitlines()[-1]
    assert message.startswith(f"flatrep measure: error: checkpoint {path}")
    assert "refuses to unpickle" in message and "Traceback" not in err
    assert not marker.exists() and not (tmp_path / "m.nc").exists()


def test_a_crafted_scratch_checkpoint_stops_a_resumed_training_job(tmp_path, data_root,
                                                                   tiny_study):
    """A crafted file in the run's scratch folder passes the digest check; the training job
    refuses to unpickle it, names it, and creates nothing."""
    study = copy.deepcopy(tiny_study)
    study["train"].update(iterations=10, checkpoints={"count": 2, "spacing": "linear"})
    run = studies.Run("lr0.1_bs20_seed0", {"lr": 0.1, "batch_size": 20, "seed": 0})
    marker = tmp_path / "created"
    scratch = resume.scratch_dir(tmp_path / "runs" / run.run_id) / "step_0.pt"
    crafted(scratch, marker)
    with pytest.raises(checkpoint.CheckpointError, match="refuses to unpickle") as err:
        single.train_run("tiny", study, run, tmp_path / "runs" / run.run_id, data_root,
                         threads=1)
    assert str(scratch) in str(err.value)
    assert not marker.exists()


def _safe_content(path) -> dict:
    """The file's envelope and payload read by torch's safe loader alone."""
    outer = torch.load(path, weights_only=True)
    return torch.load(io.BytesIO(outer["payload"]), weights_only=True)


def test_every_checkpoint_flatrep_writes_is_plain_data(measured_tiny_run, tiny_study, data_root,
                                                       tmp_path):
    """Single runs (SGD) and ensembles (Adam with iterate averaging, so the raw iterate,
    optimizer moments and running average are stored too) load with weights_only=True, with
    JSON metadata."""
    _, single = measured_tiny_run
    study = copy.deepcopy(tiny_study)
    study["train"].update(iterations=8, checkpoints={"count": 2, "spacing": "linear"},
                          optimizer="adam", ensemble="seeds")
    runs = [studies.Run(f"seed{seed}", {"lr": 1e-3, "batch_size": 20, "seed": seed,
                                        "averaging_start": 0.5}) for seed in (0, 1)]
    members = ensemble.train_ensemble("tiny", study, runs, tmp_path / "runs", data_root,
                                      threads=1)
    for path in [*single, *members]:
        meta = json.loads(_safe_content(path)["meta"])
        assert meta["step"] == int(path.stem.removeprefix("step_"))
    assert [json.loads(_safe_content(p)["meta"])["run"] for p in members] == [
        p.parent.name for p in members]
    averaged = _safe_content(members[-1])
    assert averaged["training_model"] is not None and averaged["optimizer"]["state"]


def test_a_format_2_checkpoint_of_plain_data_still_loads(measured_tiny_run, tmp_path):
    """The previous format pickled ``meta`` as a dict: read by the same safe loader."""
    _, paths = measured_tiny_run
    content = checkpoint.read(paths[-1])
    old = tmp_path / "step_300.pt"
    old.write_bytes(_envelope(content, "flatrep-checkpoint-2"))
    model, meta = checkpoint.load(old)
    assert meta == content["meta"]
    reference, _ = checkpoint.load(paths[-1])
    for name, value in model.state_dict().items():
        assert torch.equal(value, reference.state_dict()[name])


def test_identical_state_gives_identical_bytes_whatever_the_file(measured_tiny_run, tmp_path):
    """No file name inside the archive: two saves of the same state, under different names and
    folders, are byte-identical (DVC sees a retrained, identical run as unchanged)."""
    _, paths = measured_tiny_run
    model, meta = checkpoint.load(paths[-1])
    first, second = tmp_path / "a" / "step_300.pt", tmp_path / "b" / "step_7.pt"
    for path in (first, second):
        path.parent.mkdir()
        checkpoint.save(path, model, meta)
    assert first.read_bytes() == second.read_bytes()
    assert b"step_" not in first.read_bytes()


def test_a_deterministic_failure_is_not_run_again_by_a_later_attempt(
        measured_tiny_run, tmp_path, data_root, capsys, monkeypatch):
    """Attempt 1 of a measure job fails on a crafted checkpoint and records it; attempt 2 of
    the same command fails at once with that error (the file, meanwhile replaced by a good
    one, is not read: a retry would have measured it); a new first attempt clears the record
    and measures. A command that never failed deterministically is run by every attempt."""
    monkeypatch.chdir(tmp_path)
    _, paths = measured_tiny_run
    path = crafted(tmp_path / "step_10.pt", tmp_path / "created")
    job = ["measure", "--checkpoints", str(path), "--measure-json",
           '{"points": 4, "point_seed": 0, "chunk_size": 4}', "--data-root", str(data_root),
           "--out", str(tmp_path / "m.nc")]
    assert cli.main(["--attempt", "1", *job]) == 2
    first = capsys.readouterr().err.strip().splitlines()[-1]
    assert "refuses to unpickle" in first
    shutil.copy(paths[-1], path)
    assert cli.main(["--attempt", "2", *job]) == 2
    second = capsys.readouterr().err.strip().splitlines()[-1]
    assert second.startswith(first) and "attempt 2: not run again" in second
    assert not (tmp_path / "m.nc").exists()
    assert cli.main(["--attempt", "1", *job]) == 0 and (tmp_path / "m.nc").exists()
    other = [*job[:-1], str(tmp_path / "n.nc")]
    assert cli.main(["--attempt", "2", *other]) == 0 and (tmp_path / "n.nc").exists()
