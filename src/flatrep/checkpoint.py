"""Checkpoints: model, optimizer, step and every RNG state, with the config that rebuilds them.

Files are written atomically (temporary file, then rename) so a killed job never leaves a
half-written checkpoint under the final name.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import torch

from flatrep import models


class CheckpointError(RuntimeError):
    """A checkpoint is missing, truncated, corrupt or not a flatrep checkpoint."""


def save(path: str | Path, model: torch.nn.Module, meta: dict,
         optimizer_state: dict | None = None, rng: dict | None = None,
         training_model: torch.nn.Module | None = None) -> None:
    """Write ``{model, training_model, optimizer, rng, meta}`` atomically to ``path``.

    ``model`` is what the measures see (the averaged weights under iterate averaging);
    ``training_model`` the raw iterate the optimizer continues from, when it differs;
    ``optimizer_state`` the torch optimizer's ``state_dict()``.
    ``meta`` holds at least ``study``, ``run``, ``step``, ``config`` (the resolved study) and
    ``hparams``, plus ``input_shape`` and ``num_outputs`` to rebuild the model.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"format": "flatrep-checkpoint-1", "meta": meta,
               "model": model.state_dict(),
               "training_model": (training_model.state_dict() if training_model is not None
                                  else None),
               "optimizer": optimizer_state,
               "rng": rng}
    with tempfile.NamedTemporaryFile(dir=path.parent, suffix=".tmp", delete=False) as handle:
        torch.save(payload, handle)
    os.replace(handle.name, path)


def read(path: str | Path) -> dict:
    """The raw checkpoint payload, with one clear error for missing or unreadable files."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist; rerun the training rule "
                              "(`snakemake --cores all <that file>`) to create it")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:  # torch raises several types for truncated or foreign files
        raise CheckpointError(f"checkpoint {path} is corrupt or truncated ({err}); delete it and "
                              "rerun the training rule to regenerate it") from err
    if not isinstance(payload, dict) or payload.get("format") != "flatrep-checkpoint-1":
        raise CheckpointError(f"{path} is not a flatrep checkpoint")
    return payload


def load(path: str | Path) -> tuple[torch.nn.Module, dict]:
    """``(model, meta)``: the model rebuilt from ``meta`` in eval mode on the CPU."""
    payload = read(path)
    meta = payload["meta"]
    model = models.build(meta["config"]["model"], tuple(meta["input_shape"]), meta["num_outputs"])
    try:
        model.load_state_dict(payload["model"])
    except RuntimeError as err:
        raise CheckpointError(f"checkpoint {path} does not fit the model its config describes "
                              f"({err})") from err
    return model.eval(), meta
