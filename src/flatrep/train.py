"""Training of one run: SGD, Adam or AdamW on the study's ``train.loss`` (``flatrep.losses``).

The default is torch's ``MSELoss`` to one-hot targets (mean over batch *and* the K outputs, no
1/2), as the reference code, so the paper's learning rates mean the same thing; the measures
use the 1/2-MSE convention and record the factor 2/K between the two Hessians.
Checkpoints are written at a schedule known up front.

Iterate averaging (``train.averaging_start`` = s in [0, 1], Izmailov et al. 2018; the
"Gadam" arm of the False-Friend study): from step t0 = round(s T) on, the checkpoint at
step t >= t0 holds the mean of the iterates theta_t0, theta_t0+e, ..., up to t, every e =
``train.averaging_every`` steps (default 1; ``flatrep.averaging``), which is what every
measure sees; the raw iterate and the optimizer state are kept beside it
for resuming. s = 1 (the default) averages the last iterate alone, i.e. no averaging.
Weight decay (SGD's coupled L2, AdamW's decoupled decay) changes the trajectory only: the
measured Hessian is that of the data loss, never of the penalty.
A run whose minibatch loss becomes NaN/inf stops and is recorded as diverged in the remaining
scheduled checkpoints, so the study completes.
A job killed at any moment and started again resumes from its last checkpoint
(``flatrep.resume``) and ends with the weights of an uninterrupted run.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import nn
from tqdm import tqdm

from flatrep import (augment, averaging, checkpoint, config, data, determinism, losses, models,
                     resume, schedules)

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


class BatchOrder:
    """Minibatch indices of one run, or of the M members of an ensemble: each draws a fresh
    permutation of the n training rows per epoch from its own ``data_order`` generator and
    walks it in batches of ``batch_size``, dropping the incomplete last batch. Members share n
    and the batch size, so their epochs start together. The current permutations and the
    position in them go into every checkpoint, so a resumed run continues mid-epoch exactly."""

    def __init__(self, n: int, batch_size: int, generators: list[torch.Generator],
                 device: torch.device):
        if batch_size > n:
            raise config.ConfigError(f"batch_size {batch_size} exceeds the {n} training samples")
        self.n, self.batch_size, self.generators, self.device = n, batch_size, generators, device
        self.per_epoch = n // batch_size
        self.position = self.per_epoch
        self.order: torch.Tensor | None = None

    def next(self) -> torch.Tensor:
        """Indices (M, batch_size) of the next step."""
        if self.position == self.per_epoch:
            self.order = torch.stack([torch.randperm(self.n, generator=gen)
                                      for gen in self.generators]).to(self.device)
            self.position = 0
        start = self.position * self.batch_size
        self.position += 1
        return self.order[:, start:start + self.batch_size]

    def state_dict(self, member: int = 0) -> dict:
        """The member's current permutation and the position in it."""
        return {"order": None if self.order is None else self.order[member].cpu().clone(),
                "position": self.position}

    def load_members(self, states: list[dict]) -> None:
        """Continue from ``state_dict`` outputs, one per member."""
        self.position = states[0]["position"]
        self.order = (None if states[0]["order"] is None else
                      torch.stack([state["order"] for state in states]).to(self.device))


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
        return config.hyperparameters(self.train_cfg, run)

    def initial_model(self, study: dict, seed: int) -> nn.Module:
        """The run's model with weights drawn from its ``init`` stream, on the device."""
        return models.seeded_build(study["model"], tuple(self.x.shape[1:]), self.num_outputs,
                                   determinism.sub_seed(seed, "init")).to(self.device,
                                                                          self.dtype)

    def learning_rate(self, base: float | torch.Tensor, step: int,
                      averaging_start: float) -> float | torch.Tensor:
        """eta_t = base * schedule factor at ``step`` for runs averaging from
        ``averaging_start`` on (``schedules.for_run``); ``base`` is one run's rate or the
        ensemble members' vector of rates (who share their averaging start)."""
        schedule = schedules.for_run(self.lr_schedule, averaging_start)
        return base * schedules.factor(schedule, step, self.iterations)


def prepare(study: dict, data_root: str | Path = "data", threads: int | None = None) -> Setup:
    """Configure determinism and the device, load the training split and build the loss."""
    train_cfg = study["train"]
    mode = determinism.configure(strict=train_cfg.get("determinism", "strict") == "strict",
                                 threads=threads)["mode"]
    device = determinism.pick_device(train_cfg.get("device", "auto"))
    x, y = data.load_study_split(study["data"], "train", data_root)
    num_outputs = data.num_outputs(study["data"])
    loss = losses.get(train_cfg.get("loss", "mse"))
    augmentation = train_cfg.get("augment", "none")
    augment.check(augmentation, tuple(x.shape[1:]))
    dtype = DTYPES[train_cfg.get("dtype", "float32")]
    return Setup(train_cfg, mode, device, x.to(device, dtype),
                 loss.targets(y, num_outputs, dtype).to(device), num_outputs, loss,
                 config.checkpoint_steps(train_cfg),
                 schedules.resolve(train_cfg.get("lr_schedule")), augmentation, dtype)


def seed_global_generator(seed: int) -> None:
    """Seed torch's global generator (dropout masks during training draw from it) from the
    run's ``dropout`` sub-seed, so a run's global RNG state is a function of its seed."""
    torch.manual_seed(determinism.sub_seed(seed, "dropout"))


def generators(seed: int) -> dict[str, torch.Generator]:
    """The run's CPU generators of minibatch order and augmentation, from its seed."""
    return {stream: torch.Generator().manual_seed(determinism.sub_seed(seed, stream))
            for stream in ("data_order", "augment")}


def save_checkpoint(path: Path, meta: dict, model: nn.Module, average: averaging.IterateAverage,
                    setup: Setup, batches: BatchOrder, optimizer_state: dict,
                    rng: dict[str, torch.Generator], member: int | None = None) -> Path:
    """Write one checkpoint: the evaluated (averaged) weights, the raw iterate beside them
    when they differ, the optimizer state, every RNG state, and what resuming needs beyond
    them (minibatch order, running average); keep it for resuming (``flatrep.resume``)."""
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


def belongs_to(study_name: str, study: dict, run: config.Run) -> Callable[[dict], bool]:
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


def drive(setup: Setup, start: int, resumed: bool, observe: Callable[[int], None],
          save: Callable[[int], None], advance: Callable[[int], bool], desc: str) -> None:
    """The loop of a training job over steps t = start, ..., T: ``observe(t)`` (add theta_t
    to the running average), write the checkpoint scheduled at t, then ``advance(t)`` (the
    update theta_t -> theta_{t+1}; False stops, e.g. at divergence, and every remaining
    scheduled checkpoint is written as is). A ``resumed`` job starts after its checkpoint
    at ``start``, which already holds the observation of that step."""
    pending = [step for step in setup.checkpoint_steps if step > start or not resumed]
    progress = tqdm(total=setup.iterations, initial=start, desc=desc, mininterval=10,
                    leave=False)
    for step in range(start, setup.iterations + 1):
        if step > start or not resumed:
            observe(step)
            if pending and pending[0] == step:
                save(pending.pop(0))
        if step == setup.iterations or not advance(step):
            break
        progress.update()
    progress.close()
    for step in pending:
        save(step)


def train_run(study_name: str, study: dict, run: config.Run, out_dir: str | Path,
              data_root: str | Path = "data", threads: int | None = None) -> list[Path]:
    """Train one run and write ``out_dir/step_<k>.pt`` for every scheduled step ``k``,
    resuming from the last checkpoint of an interrupted job (``flatrep.resume``)."""
    setup = prepare(study, data_root, threads)
    hp = setup.hyperparameters(run)
    seed_global_generator(hp["seed"])
    model = setup.initial_model(study, hp["seed"])
    optimizer = make_optimizer(hp["optimizer"], model.parameters(), hp["lr"], hp["momentum"],
                               hp["weight_decay"])
    rng = generators(hp["seed"])
    batches = BatchOrder(len(setup.x), int(hp["batch_size"]), [rng["data_order"]], setup.device)
    average = averaging.IterateAverage(
        averaging.start_step(hp["averaging_start"], setup.iterations),
        every=hp["averaging_every"])
    out_dir = Path(out_dir)
    written: list[Path] = []
    diverged_at: int | None = None
    start = 0
    resumed = resume.latest(out_dir, setup.checkpoint_steps, belongs_to(study_name, study, run))
    if resumed is not None:
        start, content = resumed
        model.load_state_dict(iterate_weights(content))
        optimizer.load_state_dict(content["optimizer"])
        restore_streams([content], [rng], batches, average, setup.device, stacked=False)
        diverged_at = content["meta"]["diverged_at"]
        written += resume.restore(out_dir, [k for k in setup.checkpoint_steps if k <= start])
        log.info("run %s resumes from its checkpoint at step %d", run.run_id, start)

    def save(step: int) -> None:
        meta = run_meta(study_name, study, run, step, setup, diverged_at, average.count)
        written.append(save_checkpoint(out_dir / f"step_{step}.pt", meta, model, average, setup,
                                       batches, optimizer.state_dict(), rng))

    def advance(step: int) -> bool:
        nonlocal diverged_at
        if diverged_at is not None:
            return False
        idx = batches.next()[0]
        inputs = augment.augment(setup.x[idx], setup.augmentation, rng["augment"])
        optimizer.param_groups[0]["lr"] = setup.learning_rate(hp["lr"], step,
                                                              hp["averaging_start"])
        optimizer.zero_grad(set_to_none=True)
        value = setup.loss.training(model(inputs), setup.targets[idx])
        if not torch.isfinite(value):
            diverged_at = step
            log.warning("run %s diverged at step %d (loss %s)", run.run_id, step, value.item())
            return False
        value.backward()
        optimizer.step()
        return True

    drive(setup, start, resumed is not None,
          lambda step: average.update(step, dict(model.named_parameters())), save, advance,
          run.run_id)
    resume.discard(out_dir)
    return written
