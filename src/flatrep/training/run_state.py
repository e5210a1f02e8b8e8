"""A run's whole training state in and out of its checkpoints: the metadata every checkpoint
carries, writing one (evaluated weights, raw iterate, optimizer, every RNG state, minibatch
order, running average) and setting a run, or every member of an ensemble, back to one."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch
from torch import nn

from flatrep import checkpoint
from flatrep.params import studies
from flatrep.training import averaging, resume
from flatrep.training.batches import BatchOrder
from flatrep.training.preparation import Setup


def run_meta(study_name: str, study: dict, run: studies.Run, step: int, setup: Setup,
             diverged_at: int | None, averaged_iterates: int) -> dict:
    """The metadata every checkpoint carries (see ``flatrep.checkpoint.load``)."""
    return {"study": study_name, "run": run.run_id, "step": step, "config": study,
            "hparams": run.hparams, "input_shape": list(setup.x.shape[1:]),
            "num_outputs": setup.num_outputs, "device": str(setup.device),
            "determinism": setup.mode, "diverged_at": diverged_at,
            "averaged_iterates": averaged_iterates}


def save_checkpoint(path: Path, meta: dict, model: nn.Module, average: averaging.IterateAverage,
                    setup: Setup, batches: BatchOrder, optimizer_state: dict,
                    rng: dict[str, torch.Generator], member: int | None = None) -> Path:
    """Write one checkpoint: the evaluated (averaged) weights, the raw iterate beside them
    when they differ, the optimizer state, every RNG state, and what resuming needs beyond
    them (minibatch order, running average); keep it for resuming (``flatrep.training.resume``)."""
    evaluated = average.model(model, setup.x, batches.batch_size, member)
    checkpoint.save(path, evaluated, meta, optimizer_state,
                    rng={**global_rng_states(setup.device),
                         **{name: gen.get_state() for name, gen in rng.items()}},
                    training_model=model if evaluated is not model else None,
                    resume={"batch_order": batches.state_dict(member or 0),
                            "average": average.state_dict(member)})
    resume.keep(path)
    return path


def global_rng_states(device: torch.device) -> dict[str, torch.Tensor]:
    """Torch's global generator states a resumed run needs: the CPU one, and the device's
    own one (``torch_cuda``; dropout on a GPU draws from it) when training on CUDA."""
    states = {"torch": torch.get_rng_state()}
    if device.type == "cuda":
        states["torch_cuda"] = torch.cuda.get_rng_state(device)
    return states


def belongs_to(study_name: str, study: dict, run: studies.Run) -> Callable[[dict], bool]:
    """Whether a checkpoint's metadata was written by this run of this study config."""
    def check(meta: dict) -> bool:
        return (meta["study"], meta["run"], meta["config"], meta["hparams"]) == \
            (study_name, run.run_id, study, run.hparams)
    return check


def restore_streams(contents: list[dict], rngs: list[dict[str, torch.Generator]],
                    batches: BatchOrder, average: averaging.IterateAverage,
                    device: torch.device, stacked: bool) -> None:
    """Set the RNG states, minibatch order and running average of one run (``stacked``
    False) or of every ensemble member from their checkpoints' ``contents``."""
    torch.set_rng_state(contents[0]["rng"]["torch"])
    if "torch_cuda" in contents[0]["rng"]:
        torch.cuda.set_rng_state(contents[0]["rng"]["torch_cuda"], device)
    for content, streams in zip(contents, rngs):
        for name, generator in streams.items():
            generator.set_state(content["rng"][name])
    batches.load_members([content["resume"]["batch_order"] for content in contents])
    average.load_members([content["resume"]["average"] for content in contents], stacked,
                         device)


def iterate_weights(content: dict) -> dict:
    """The raw iterate a checkpoint continues from (its model unless averaging differs)."""
    return content["training_model"] if content["training_model"] is not None \
        else content["model"]
