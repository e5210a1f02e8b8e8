"""Checkpoints: model, optimizer, step and every RNG state, with the config that rebuilds them.

A file holds ``{"format", "sha256", "payload"}``: ``payload`` is the ``torch.save``
serialisation of ``{model, training_model, optimizer, rng, resume, meta}`` and ``sha256`` its
digest, so a truncated file fails to load and a file altered in place fails the digest check;
either way the error names the file and how to regenerate it. Files are written atomically
(``flatrep.atomic``): a killed job never leaves a half-written checkpoint under the final name.

**Loading never runs code.** Checkpoints travel (DVC remotes, shared caches), and unpickling
arbitrary objects can execute anything. Everything a checkpoint holds is therefore tensors,
state dicts of tensors and plain numbers, and ``meta`` a JSON string; the envelope and the
payload are both read with ``torch.load(..., weights_only=True)``, whose unpickler builds only
those. A file that holds anything else (crafted, or not written by flatrep) is refused with a
``CheckpointError`` before any of its objects is built. The sha256 is an integrity check
(truncation, bit rot, an edit that forgot the digest), not an authenticity check: whoever
crafts a payload can write its digest beside it, which is why the safe loader, not the digest,
is what keeps code from running.

Identical state gives identical bytes: both levels are serialised in memory (a zip archive's
record names come from the file name torch writes to; in memory they are always "archive/"),
so retraining with identical tensors leaves every file, and DVC's view of it, unchanged.

Files of the previous format (``flatrep-checkpoint-2``, ``meta`` a pickled dict) are read the
same safe way, so they keep loading when they hold only plain data and are refused when not.
"""

from __future__ import annotations

import hashlib
import io
import json
import pickle
from pathlib import Path

import torch

from flatrep import atomic, models

FORMAT = "flatrep-checkpoint-3"
#: Older formats read the same way (``weights_only``): only ``meta``'s encoding differs.
READABLE_FORMATS = (FORMAT, "flatrep-checkpoint-2")
#: What torch's safe unpickler says when it refuses a class or function reference (torch >=
#: 2.4: "unsupported GLOBAL ..."); other refusals (garbage opcodes) read as corruption. Either
#: way nothing is built: the wording only picks the message.
_REFUSED = "GLOBAL"


class CheckpointError(RuntimeError):
    """A checkpoint is missing, truncated, corrupt or not a flatrep checkpoint."""


def _regenerate_hint(path: Path) -> str:
    return (f"delete {path} and rerun the training rule (`snakemake --cores all {path}`) "
            "to regenerate it")


def save(path: str | Path, model: torch.nn.Module, meta: dict,
         optimizer_state: dict | None = None, rng: dict | None = None,
         training_model: torch.nn.Module | None = None,
         resume: dict | None = None) -> None:
    """Write the checkpoint of ``model`` atomically to ``path``.

    ``model`` is what the measures see (the averaged weights under iterate averaging);
    ``training_model`` the raw iterate the optimizer continues from, when it differs;
    ``optimizer_state`` the torch optimizer's ``state_dict()``; ``rng`` the generator states;
    ``resume`` what else continuing the run needs (``flatrep.training.single``: minibatch order,
    running average). ``meta`` holds at least ``study``, ``run``, ``step``, ``config`` (the
    resolved study) and ``hparams``, plus ``input_shape`` and ``num_outputs`` to rebuild the model.
    """
    content = {"meta": json.dumps(meta), "model": model.state_dict(),
               "training_model": (training_model.state_dict() if training_model is not None
                                  else None),
               "optimizer": optimizer_state, "rng": rng, "resume": resume}
    payload = _serialised(content)
    envelope = _serialised({"format": FORMAT, "sha256": hashlib.sha256(payload).hexdigest(),
                            "payload": payload})
    with atomic.destination(path) as tmp:
        tmp.write_bytes(envelope)


def _serialised(content: dict) -> bytes:
    """``torch.save`` bytes of ``content``, made in memory: the same content gives the same
    bytes whatever file they go to."""
    buffer = io.BytesIO()
    torch.save(content, buffer)
    return buffer.getvalue()


def _safe_load(source, path: Path, what: str) -> object:
    """``torch.load(source, weights_only=True)`` on the CPU. An object the safe unpickler
    refuses to build (a class or function reference: what code execution by unpickling goes
    through) is a ``CheckpointError`` saying so; any other failure (truncated, garbage) one
    saying the file is corrupt. Both name the file."""
    try:
        return torch.load(source, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises several types for truncated or foreign files
        if isinstance(err, pickle.UnpicklingError) and _REFUSED in str(err):
            raise CheckpointError(
                f"checkpoint {path}: its {what} holds objects other than tensors and plain "
                "data, which flatrep refuses to unpickle because that could run code (the file "
                "was not written by flatrep, or was crafted; its sha256 checks integrity, not "
                f"who wrote it); {_regenerate_hint(path)}") from None
        raise CheckpointError(f"checkpoint {path} is corrupt or truncated ({err}); "
                              f"{_regenerate_hint(path)}") from err


def verified_payload(path: str | Path) -> bytes:
    """The checkpoint's serialised content, after checking its format and digest, without
    unpickling it; one clear error for a missing, truncated, altered or foreign file."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist; rerun the training rule "
                              f"(`snakemake --cores all {path}`) to create it")
    outer = _safe_load(path, path, "envelope")
    if not isinstance(outer, dict) or outer.get("format") not in READABLE_FORMATS:
        raise CheckpointError(f"{path} is not a {FORMAT} file; {_regenerate_hint(path)}")
    if hashlib.sha256(outer["payload"]).hexdigest() != outer["sha256"]:
        raise CheckpointError(f"checkpoint {path} fails its sha256 check (altered or damaged "
                              f"after writing); {_regenerate_hint(path)}")
    return outer["payload"]


def unpack(payload: bytes, path: str | Path) -> dict:
    """The content ``{model, training_model, optimizer, rng, resume, meta}`` of a verified
    payload (``verified_payload`` of the file at ``path``), tensors on the CPU, ``meta`` a
    dict; built by the safe loader only (``_safe_load``)."""
    path = Path(path)
    content = _safe_load(io.BytesIO(payload), path, "payload")
    if not isinstance(content, dict) or "meta" not in content:
        raise CheckpointError(f"checkpoint {path} has no flatrep content; "
                              f"{_regenerate_hint(path)}")
    if isinstance(content["meta"], str):
        content["meta"] = json.loads(content["meta"])
    return content


def read(path: str | Path) -> dict:
    """The checkpoint's content, after checking its format and digest."""
    return unpack(verified_payload(path), path)


def load(path: str | Path) -> tuple[torch.nn.Module, dict]:
    """``(model, meta)``: the model rebuilt from ``meta`` in eval mode on the CPU."""
    content = read(path)
    meta = content["meta"]
    model = models.build(meta["config"]["model"], tuple(meta["input_shape"]), meta["num_outputs"])
    try:
        model.load_state_dict(content["model"])
    except RuntimeError as err:
        raise CheckpointError(f"checkpoint {path} does not fit the model its config describes "
                              f"({err}); {_regenerate_hint(Path(path))}") from err
    return model.eval(), meta
