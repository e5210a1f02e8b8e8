"""Training of one run: SGD, Adam or AdamW on the study's ``train.loss`` (``flatrep.losses``).

The default is torch's ``MSELoss`` to one-hot targets (mean over batch *and* the K outputs, no
1/2), as the reference code, so the paper's learning rates mean the same thing; the measures
use the 1/2-MSE convention and record the factor 2/K between the two Hessians.
Checkpoints are written at a schedule known up front.

Iterate averaging (``train.averaging_start`` = s in [0, 1], Izmailov et al. 2018; the
"Gadam" arm of the False-Friend study): from step t0 = round(s T) on, the checkpoint at
step t >= t0 holds the mean of the iterates theta_t0, ..., theta_t (``flatrep.averaging``),
which is what every measure sees; the raw iterate and the optimizer state are kept beside it
for resuming. s = 1 (the default) averages the last iterate alone, i.e. no averaging.
Weight decay (SGD's coupled L2, AdamW's decoupled decay) changes the trajectory only: the
measured Hessian is that of the data loss, never of the penalty.
A run whose minibatch loss becomes NaN/inf stops and is recorded as diverged in the remaining
scheduled checkpoints, so the study completes.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import nn
from tqdm import tqdm

from flatrep import averaging, checkpoint, config, data, determinism, losses, models

log = logging.getLogger(__name__)


OPTIMIZERS = ("sgd", "adam", "adamw")


def make_optimizer(name: str, params, lr: float, momentum: float, weight_decay: float):
    """SGD (the paper's optimiser; L2 coupled to the gradient), Adam (L2 coupled) or AdamW
    (decay decoupled from the adaptive step, Loshchilov & Hutter 2019)."""
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    raise config.ConfigError(f"unknown train.optimizer {name!r}; allowed: {list(OPTIMIZERS)}")


def batch_order(n: int, batch_size: int, generator: torch.Generator):
    """Endless minibatch indices: a fresh permutation each epoch, incomplete last batch dropped."""
    if batch_size > n:
        raise config.ConfigError(f"batch_size {batch_size} exceeds the {n} training samples")
    while True:
        perm = torch.randperm(n, generator=generator)
        for start in range(0, n - batch_size + 1, batch_size):
            yield perm[start:start + batch_size]


def run_meta(study_name: str, study: dict, run: config.Run, step: int, input_shape, num_outputs,
             device: torch.device, mode: str, diverged_at: int | None,
             averaged_iterates: int) -> dict:
    """The metadata every checkpoint carries (see ``flatrep.checkpoint.load``)."""
    return {"study": study_name, "run": run.run_id, "step": step, "config": study,
            "hparams": run.hparams, "input_shape": list(input_shape), "num_outputs": num_outputs,
            "device": str(device), "determinism": mode, "diverged_at": diverged_at,
            "averaged_iterates": averaged_iterates}


def train_run(study_name: str, study: dict, run: config.Run, out_dir: str | Path,
              data_root: str | Path = "data", threads: int | None = None) -> list[Path]:
    """Train one run and write ``out_dir/step_<k>.pt`` for every scheduled step ``k``."""
    train_cfg = study["train"]
    hp = {**config.TRAIN_DEFAULTS, **train_cfg, **run.hparams}
    mode = determinism.configure(strict=train_cfg.get("determinism", "strict") == "strict",
                                 threads=threads)["mode"]
    device = determinism.pick_device(train_cfg.get("device", "auto"))
    x, y = data.load_study_split(study["data"], "train", data_root)
    num_outputs = data.spec(study["data"]["name"]).num_classes
    loss = losses.get(train_cfg.get("loss", "mse"))
    x, targets = x.to(device), loss.targets(y, num_outputs, torch.float32).to(device)

    model = models.seeded_build(study["model"], tuple(x.shape[1:]), num_outputs,
                                determinism.sub_seed(hp["seed"], "init")).to(device, torch.float32)
    optimizer = make_optimizer(hp["optimizer"], model.parameters(), hp["lr"], hp["momentum"],
                               hp["weight_decay"])
    generator = torch.Generator().manual_seed(determinism.sub_seed(hp["seed"], "data_order"))
    batches = batch_order(len(x), int(hp["batch_size"]), generator)
    schedule = config.checkpoint_steps(train_cfg)
    average = averaging.IterateAverage(
        averaging.start_step(hp["averaging_start"], schedule[-1]))
    out_dir = Path(out_dir)
    written: list[Path] = []
    diverged_at: int | None = None

    def save(step: int) -> None:
        path = out_dir / f"step_{step}.pt"
        meta = run_meta(study_name, study, run, step, x.shape[1:], num_outputs, device, mode,
                        diverged_at, average.count)
        evaluated = average.model(model, x, int(hp["batch_size"]))
        checkpoint.save(path, evaluated, meta, optimizer,
                        rng={"torch": torch.get_rng_state(), "data_order": generator.get_state()},
                        training_model=model if evaluated is not model else None)
        written.append(path)

    pending = iter(schedule)
    next_save = next(pending)
    progress = tqdm(range(schedule[-1] + 1), desc=run.run_id, mininterval=10, leave=False)
    for step in progress:
        average.update(step, model)
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
