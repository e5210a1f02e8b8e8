"""Training of one run: plain SGD (or Adam) on the study's ``train.loss`` (``flatrep.losses``).

The default is torch's ``MSELoss`` to one-hot targets (mean over batch *and* the K outputs, no
1/2), as the reference code, so the paper's learning rates mean the same thing; the measures
use the 1/2-MSE convention and record the factor 2/K between the two Hessians.
Checkpoints are written at a schedule known up front.
A run whose minibatch loss becomes NaN/inf stops and is recorded as diverged in the remaining
scheduled checkpoints, so the study completes.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import nn
from tqdm import tqdm

from flatrep import checkpoint, config, data, determinism, losses, models

log = logging.getLogger(__name__)


def make_optimizer(name: str, params, lr: float, momentum: float, weight_decay: float):
    """SGD (the paper's optimiser) or Adam."""
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    raise config.ConfigError(f"unknown train.optimizer {name!r}; allowed: ['sgd', 'adam']")


def batch_order(n: int, batch_size: int, generator: torch.Generator):
    """Endless minibatch indices: a fresh permutation each epoch, incomplete last batch dropped."""
    if batch_size > n:
        raise config.ConfigError(f"batch_size {batch_size} exceeds the {n} training samples")
    while True:
        perm = torch.randperm(n, generator=generator)
        for start in range(0, n - batch_size + 1, batch_size):
            yield perm[start:start + batch_size]


def run_meta(study_name: str, study: dict, run: config.Run, step: int, input_shape, num_outputs,
             device: torch.device, mode: str, diverged_at: int | None) -> dict:
    """The metadata every checkpoint carries (see ``flatrep.checkpoint.load``)."""
    return {"study": study_name, "run": run.run_id, "step": step, "config": study,
            "hparams": run.hparams, "input_shape": list(input_shape), "num_outputs": num_outputs,
            "device": str(device), "determinism": mode, "diverged_at": diverged_at}


def train_run(study_name: str, study: dict, run: config.Run, out_dir: str | Path,
              data_root: str | Path = "data", threads: int | None = None) -> list[Path]:
    """Train one run and write ``out_dir/step_<k>.pt`` for every scheduled step ``k``."""
    train_cfg = study["train"]
    hp = {**train_cfg, **run.hparams}
    mode = determinism.configure(strict=train_cfg.get("determinism", "strict") == "strict",
                                 threads=threads)["mode"]
    device = determinism.pick_device(train_cfg.get("device", "auto"))
    x, y = data.load_study_split(study["data"], "train", data_root)
    num_outputs = data.spec(study["data"]["name"]).num_classes
    loss = losses.get(train_cfg.get("loss", "mse"))
    x, targets = x.to(device), loss.targets(y, num_outputs, torch.float32).to(device)

    model = models.seeded_build(study["model"], tuple(x.shape[1:]), num_outputs,
                                determinism.sub_seed(hp["seed"], "init")).to(device, torch.float32)
    optimizer = make_optimizer(hp.get("optimizer", "sgd"), model.parameters(), hp["lr"],
                               hp.get("momentum", 0.0), hp.get("weight_decay", 0.0))
    generator = torch.Generator().manual_seed(determinism.sub_seed(hp["seed"], "data_order"))
    batches = batch_order(len(x), int(hp["batch_size"]), generator)
    schedule = config.checkpoint_steps(train_cfg)
    out_dir = Path(out_dir)
    written: list[Path] = []
    diverged_at: int | None = None

    def save(step: int) -> None:
        path = out_dir / f"step_{step}.pt"
        meta = run_meta(study_name, study, run, step, x.shape[1:], num_outputs, device, mode,
                        diverged_at)
        checkpoint.save(path, model, meta, optimizer,
                        rng={"torch": torch.get_rng_state(), "data_order": generator.get_state()})
        written.append(path)

    pending = iter(schedule)
    next_save = next(pending)
    progress = tqdm(range(schedule[-1] + 1), desc=run.run_id, mininterval=10, leave=False)
    for step in progress:
        while next_save is not None and step == next_save:
            save(step)
            next_save = next(pending, None)
        if step == schedule[-1]:
            break
        idx = next(batches).to(device)
        optimizer.zero_grad(set_to_none=True)
        value = loss.training(model(x[idx]), targets[idx])
        if not torch.isfinite(value):
            diverged_at = step
            log.warning("run %s diverged at step %d (loss %s)", run.run_id, step, value.item())
            break
        value.backward()
        optimizer.step()
    for step in ([next_save] if next_save is not None else []) + list(pending):
        save(step)   # after divergence: the remaining scheduled files record it
    return written
