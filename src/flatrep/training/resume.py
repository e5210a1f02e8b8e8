"""Resuming a killed training job from its last checkpoint.

Every checkpoint a job writes (``results/<study>/runs/<run>/step_<k>.pt``, a Snakemake output)
is also hard-linked into the run's scratch folder ``<run dir>/.resume/`` (no extra disk; a copy
where links are not supported). When a job is killed, Snakemake deletes the outputs of the
incomplete job before running it again (retries, or ``--rerun-incomplete``), as it should: its
outputs are never trusted half-made. The scratch folder is not an output, so the rerun finds
there the checkpoints already written, puts them back as outputs and continues from the last
one; the checkpoint holds everything the run's future depends on (weights, optimizer state,
every RNG state, the minibatch order, the running average), so the resumed run ends with the
same weights, bit for bit in strict mode on the CPU, as an uninterrupted one. The scratch
folder is removed when the job completes, and ignored (and removed) when its checkpoints were
written for another configuration or do not read cleanly.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path
from typing import Callable

from flatrep import atomic, checkpoint

log = logging.getLogger(__name__)

SCRATCH = ".resume"


def scratch_dir(run_dir: str | Path) -> Path:
    """``<run dir>/.resume``: where a run's written checkpoints survive an interrupted job."""
    return Path(run_dir) / SCRATCH


def _link(source: Path, target: Path) -> None:
    """Make ``target`` (atomically) a hard link to ``source``, or a copy of it."""
    with atomic.destination(target) as tmp:
        tmp.unlink()
        try:
            os.link(source, tmp)
        except OSError:
            shutil.copy2(source, tmp)


def keep(path: Path) -> None:
    """Record the checkpoint just written at ``path`` in its run's scratch folder."""
    _link(path, scratch_dir(path.parent) / path.name)


def discard(run_dir: str | Path) -> None:
    """Remove the run's scratch folder (the job completed, or its content is stale)."""
    shutil.rmtree(scratch_dir(run_dir), ignore_errors=True)


def latest(run_dir: str | Path, steps: list[int],
           belongs: Callable[[dict], bool]) -> tuple[int, dict] | None:
    """``(k, content)`` of the last checkpoint to resume from: the largest scheduled step k
    such that the scratch checkpoints of k and of every earlier scheduled step exist and pass
    their digest check (``checkpoint.verified_payload``); ``None`` to start afresh. Only the
    checkpoint at k is unpickled. When its metadata ``belongs`` rejects it (written for
    another config or run), the folder is stale and removed with a warning: a job writes its
    checkpoints in step order, so its last one tells whose the folder is."""
    folder = scratch_dir(run_dir)
    found = None
    for step in steps:
        path = folder / f"step_{step}.pt"
        if not path.is_file():
            break
        try:
            found = (step, checkpoint.verified_payload(path))
        except checkpoint.CheckpointError as err:
            log.warning("not resuming past %s: %s", path, err)
            break
    if found is None:
        return None
    step, content = found[0], checkpoint.unpack(found[1], folder / f"step_{found[0]}.pt")
    if not belongs(content["meta"]):
        log.warning("ignoring %s: its checkpoints belong to another configuration", folder)
        discard(run_dir)
        return None
    return step, content


def restore(run_dir: str | Path, steps: list[int]) -> list[Path]:
    """Put the scratch checkpoints of ``steps`` back as the run's outputs; their paths."""
    run_dir = Path(run_dir)
    paths = [run_dir / f"step_{step}.pt" for step in steps]
    for path in paths:
        _link(scratch_dir(run_dir) / path.name, path)
    return paths
