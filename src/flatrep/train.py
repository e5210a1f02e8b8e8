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
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from tqdm import tqdm

from flatrep import (augment, averaging, checkpoint, config, data, determinism, losses, models,
                     schedules)

log = logging.getLogger(__name__)


OPTIMIZERS = ("sgd", "adam", "adamw")
#: ``train.dtype``: float32 (default) or float64 (exact comparisons, e.g. in the tests).
DTYPES = {"float32": torch.float32, "float64": torch.float64}


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


def run_meta(study_name: str, study: dict, run: config.Run, step: int, setup: "Setup",
             diverged_at: int | None, averaged_iterates: int) -> dict:
    """The metadata every checkpoint carries (see ``flatrep.checkpoint.load``)."""
    return {"study": study_name, "run": run.run_id, "step": step, "config": study,
            "hparams": run.hparams, "input_shape": list(setup.x.shape[1:]),
            "num_outputs": setup.num_outputs, "device": str(setup.device),
            "determinism": setup.mode, "diverged_at": diverged_at,
            "averaged_iterates": averaged_iterates}


@dataclass
class Setup:
    """What every run of a study shares: data on the device, loss, schedules, modes."""

    train_cfg: dict
    mode: str                      # "strict" or "fast" (flatrep.determinism.configure)
    device: torch.device
    x: torch.Tensor                # training inputs on the device
    targets: torch.Tensor          # training targets of the loss, on the device
    num_outputs: int
    loss: losses.Loss
    checkpoint_steps: list[int]    # known up front; the last is the iteration count
    lr_schedule: dict              # flatrep.schedules.resolve
    augmentation: str              # flatrep.augment name, "none" for no augmentation
    dtype: torch.dtype             # of weights and data: float32, or float64 for validation

    @property
    def iterations(self) -> int:
        return self.checkpoint_steps[-1]

    def hyperparameters(self, run: config.Run) -> dict:
        """The run's hyperparameters with the study's fixed values and the defaults."""
        return {**config.TRAIN_DEFAULTS, **self.train_cfg, **run.hparams}

    def initial_model(self, study: dict, seed: int) -> nn.Module:
        """The run's model with weights drawn from its ``init`` stream, on the device."""
        return models.seeded_build(study["model"], tuple(self.x.shape[1:]), self.num_outputs,
                                   determinism.sub_seed(seed, "init")).to(self.device,
                                                                          self.dtype)

    def learning_rate(self, base: float, step: int) -> float:
        return base * schedules.factor(self.lr_schedule, step, self.iterations)


def prepare(study: dict, data_root: str | Path = "data", threads: int | None = None) -> Setup:
    """Configure determinism and the device, load the training split and build the loss."""
    train_cfg = study["train"]
    mode = determinism.configure(strict=train_cfg.get("determinism", "strict") == "strict",
                                 threads=threads)["mode"]
    device = determinism.pick_device(train_cfg.get("device", "auto"))
    x, y = data.load_study_split(study["data"], "train", data_root)
    num_outputs = data.spec(study["data"]["name"]).num_classes
    loss = losses.get(train_cfg.get("loss", "mse"))
    augmentation = train_cfg.get("augment", "none")
    augment.check(augmentation, tuple(x.shape[1:]))
    dtype = DTYPES[train_cfg.get("dtype", "float32")]
    return Setup(train_cfg, mode, device, x.to(device, dtype),
                 loss.targets(y, num_outputs, dtype).to(device), num_outputs, loss,
                 config.checkpoint_steps(train_cfg),
                 schedules.resolve(train_cfg.get("lr_schedule")), augmentation, dtype)


def generators(seed: int) -> dict[str, torch.Generator]:
    """The run's CPU generators of minibatch order and augmentation, from its seed."""
    return {stream: torch.Generator().manual_seed(determinism.sub_seed(seed, stream))
            for stream in ("data_order", "augment")}


def save_checkpoint(path: Path, meta: dict, model: nn.Module, average: averaging.IterateAverage,
                    setup: Setup, batch_size: int, optimizer_state: dict,
                    rng: dict[str, torch.Generator], member: int | None = None) -> Path:
    """Write one checkpoint: the evaluated (averaged) weights, the raw iterate beside them
    when they differ, the optimizer state and every RNG state."""
    evaluated = average.model(model, setup.x, batch_size, member)
    checkpoint.save(path, evaluated, meta, optimizer_state,
                    rng={"torch": torch.get_rng_state(),
                         **{name: gen.get_state() for name, gen in rng.items()}},
                    training_model=model if evaluated is not model else None)
    return path


def train_run(study_name: str, study: dict, run: config.Run, out_dir: str | Path,
              data_root: str | Path = "data", threads: int | None = None) -> list[Path]:
    """Train one run and write ``out_dir/step_<k>.pt`` for every scheduled step ``k``."""
    setup = prepare(study, data_root, threads)
    hp = setup.hyperparameters(run)
    model = setup.initial_model(study, hp["seed"])
    optimizer = make_optimizer(hp["optimizer"], model.parameters(), hp["lr"], hp["momentum"],
                               hp["weight_decay"])
    rng = generators(hp["seed"])
    batch_size = int(hp["batch_size"])
    batches = batch_order(len(setup.x), batch_size, rng["data_order"])
    average = averaging.IterateAverage(
        averaging.start_step(hp["averaging_start"], setup.iterations))
    out_dir = Path(out_dir)
    written: list[Path] = []
    diverged_at: int | None = None

    def save(step: int) -> None:
        meta = run_meta(study_name, study, run, step, setup, diverged_at, average.count)
        written.append(save_checkpoint(out_dir / f"step_{step}.pt", meta, model, average, setup,
                                       batch_size, optimizer.state_dict(), rng))

    pending = iter(setup.checkpoint_steps)
    next_save = next(pending)
    progress = tqdm(range(setup.iterations + 1), desc=run.run_id, mininterval=10, leave=False)
    for step in progress:
        average.update(step, dict(model.named_parameters()))
        while next_save is not None and step == next_save:
            save(step)
            next_save = next(pending, None)
        if step == setup.iterations:
            break
        idx = next(batches).to(setup.device)
        inputs = augment.augment(setup.x[idx], setup.augmentation, rng["augment"])
        optimizer.param_groups[0]["lr"] = setup.learning_rate(hp["lr"], step)
        optimizer.zero_grad(set_to_none=True)
        value = setup.loss.training(model(inputs), setup.targets[idx])
        if not torch.isfinite(value):
            diverged_at = step
            log.warning("run %s diverged at step %d (loss %s)", run.run_id, step, value.item())
            break
        value.backward()
        optimizer.step()
    for step in ([next_save] if next_save is not None else []) + list(pending):
        save(step)   # after divergence: the remaining scheduled files record it
    return written
