"""Checkpoints: model, optimizer, step and every RNG state, with the config that rebuilds them.

A file holds ``{"format", "sha256", "payload"}``: ``payload`` is the ``torch.save``
serialisation of ``{model, training_model, optimizer, rng, resume, meta}`` and ``sha256`` its
digest, so a truncated file fails to load and a file altered in place fails the digest check;
either way the error names the file and how to regenerate it. Files are written atomically
(``flatrep.atomic``): a killed job never leaves a half-written checkpoint under the final name.
"""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

import torch

from flatrep import atomic, models

FORMAT = "flatrep-checkpoint-2"


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
    ``resume`` what else continuing the run needs (``flatrep.train``: minibatch order, running
    average). ``meta`` holds at least ``study``, ``run``, ``step``, ``config`` (the resolved
    study) and ``hparams``, plus ``input_shape`` and ``num_outputs`` to rebuild the model.
    """
    content = {"meta": meta, "model": model.state_dict(),
               "training_model": (training_model.state_dict() if training_model is not None
                                  else None),
               "optimizer": optimizer_state, "rng": rng, "resume": resume}
    buffer = io.BytesIO()
    torch.save(content, buffer)
    payload = buffer.getvalue()
    with atomic.destination(path) as tmp:
        torch.save({"format": FORMAT, "sha256": hashlib.sha256(payload).hexdigest(),
                    "payload": payload}, tmp)


def verified_payload(path: str | Path) -> bytes:
    """The checkpoint's serialised content, after checking its format and digest, without
    unpickling it; one clear error for a missing, truncated, altered or foreign file."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist; rerun the training rule "
                              f"(`snakemake --cores all {path}`) to create it")
    try:
        outer = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises several types for truncated or foreign files
        raise CheckpointError(f"checkpoint {path} is corrupt or truncated ({err}); "
                              f"{_regenerate_hint(path)}") from err
    if not isinstance(outer, dict) or outer.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a {FORMAT} file; {_regenerate_hint(path)}")
    if hashlib.sha256(outer["payload"]).hexdigest() != outer["sha256"]:
        raise CheckpointError(f"checkpoint {path} fails its sha256 check (altered or damaged "
                              f"after writing); {_regenerate_hint(path)}")
    return outer["payload"]


def unpack(payload: bytes) -> dict:
    """The content ``{model, training_model, optimizer, rng, resume, meta}`` of a verified
    payload (``verified_payload``), tensors on the CPU."""
    return torch.load(io.BytesIO(payload), map_location="cpu", weights_only=False)


def read(path: str | Path) -> dict:
    """The checkpoint's content, after checking its format and digest."""
    return unpack(verified_payload(path))


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
