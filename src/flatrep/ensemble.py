"""Training many runs of a study in one process as a vmapped ensemble (``train.ensemble``).

The M members' parameters are stacked along a leading axis
(``torch.func.stack_module_state``) and one forward/backward pass of
``vmap(functional_call(model, member params, member batch))`` trains them all: each member
draws its own minibatches (its ``data_order`` stream, the same permutation per epoch as a
single run), augments with its own stream, and has its own learning rate, momentum, weight
decay and seed; ``flatrep.stacked_optim`` applies torch.optim's update member by member.
Members must share what fixes the tensor shapes and the update rule: the batch size, the
optimizer kind and the iterate-averaging start (``config.ensemble_groups``).

Each member's trajectory is the single run's (``flatrep.train.train_run``) up to floating-point
rounding: batched matrix products may sum in another order than the single run's, so the
numbers agree to rounding error (tests compare them in float32 and float64), not bit for bit.
Checkpoints are written per run, in the single run's format; a member whose loss turns NaN/inf
is frozen at that step and recorded as diverged, while the others go on.
"""

from __future__ import annotations

import copy
import logging
from pathlib import Path

import torch
from torch.func import functional_call, stack_module_state, vmap
from tqdm import tqdm

from flatrep import augment, averaging, config, schedules, train
from flatrep.stacked_optim import StackedOptimizer

log = logging.getLogger(__name__)


class EnsembleError(ValueError):
    """Runs that cannot share one ensemble (different shapes or update rules)."""


def _shared(runs: list[config.Run], setup: train.Setup, key: str):
    """The one value of ``key`` all members share, else EnsembleError."""
    values = {setup.hyperparameters(run)[key] for run in runs}
    if len(values) != 1:
        raise EnsembleError(f"runs {[run.run_id for run in runs]} differ in {key} "
                            f"({sorted(map(str, values))}); an ensemble needs one value")
    return values.pop()


class EpochBatches:
    """Each member's minibatch indices, exactly as ``train.batch_order`` draws them: a fresh
    permutation per epoch from the member's generator, incomplete last batch dropped. All
    members share n and the batch size, so their epochs start together."""

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


def _member_vector(runs, setup: train.Setup, key: str) -> torch.Tensor:
    """A hyperparameter of every member as a float64 vector on the device."""
    return torch.tensor([float(setup.hyperparameters(run)[key]) for run in runs],
                        dtype=torch.float64, device=setup.device)


class Ensemble:
    """The stacked state of M members: parameters, buffers, optimizer, averages, RNGs."""

    def __init__(self, study_name: str, study: dict, runs: list[config.Run],
                 setup: train.Setup):
        self.study_name, self.study, self.runs, self.setup = study_name, study, runs, setup
        self.batch_size = int(_shared(runs, setup, "batch_size"))
        self.hparams = [setup.hyperparameters(run) for run in runs]
        self.members = [setup.initial_model(study, hp["seed"]) for hp in self.hparams]
        self.params, self.buffers = stack_module_state(self.members)
        self.template = copy.deepcopy(self.members[0]).to("meta")
        self.optimizer = StackedOptimizer(
            _shared(runs, setup, "optimizer"), list(self.params.values()),
            _member_vector(runs, setup, "momentum"), _member_vector(runs, setup, "weight_decay"))
        self.base_lr = _member_vector(runs, setup, "lr")
        self.rngs = [train.generators(hp["seed"]) for hp in self.hparams]
        self.batches = EpochBatches(len(setup.x), self.batch_size,
                                    [rng["data_order"] for rng in self.rngs], setup.device)
        self.average = averaging.IterateAverage(averaging.start_step(
            _shared(runs, setup, "averaging_start"), setup.iterations), members=len(runs))
        self.active = torch.ones(len(runs), dtype=torch.bool, device=setup.device)
        self.diverged_at = torch.full((len(runs),), -1, dtype=torch.long, device=setup.device)
        self.batched_loss = vmap(self._member_loss)

    def _member_loss(self, params, buffers, inputs, targets):
        outputs = functional_call(self.template, (params, buffers), (inputs,))
        return self.setup.loss.training(outputs, targets)

    def _inputs(self, idx: torch.Tensor) -> torch.Tensor:
        """The members' minibatches (M, B, ...), each augmented with its own stream."""
        if self.setup.augmentation == "none":
            return self.setup.x[idx]
        return torch.stack([augment.augment(self.setup.x[row], self.setup.augmentation,
                                            rng["augment"]) for row, rng in zip(idx, self.rngs)])

    def step(self, step: int) -> None:
        """One update of every member still active; members whose loss is NaN/inf freeze
        and record ``step`` as the step of divergence."""
        idx = self.batches.next()
        values = self.batched_loss(self.params, self.buffers, self._inputs(idx),
                                   self.setup.targets[idx])
        finite = torch.isfinite(values)
        self.diverged_at = torch.where(self.active & ~finite, step, self.diverged_at)
        self.active = self.active & finite
        grads = torch.autograd.grad(values.sum(), list(self.params.values()))
        factor = schedules.factor(self.setup.lr_schedule, step, self.setup.iterations)
        self.optimizer.step(list(grads), self.base_lr * factor, self.active)

    def save(self, step: int, out_root: Path) -> list[Path]:
        """Copy each member out of the stack into its module and write its checkpoint."""
        diverged = [value if value >= 0 else None for value in self.diverged_at.tolist()]
        written = []
        for m, (run, hp, module) in enumerate(zip(self.runs, self.hparams, self.members)):
            with torch.no_grad():
                for name, tensor in module.named_parameters():
                    tensor.copy_(self.params[name][m])
                for name, tensor in module.named_buffers():
                    tensor.copy_(self.buffers[name][m])
            meta = train.run_meta(self.study_name, self.study, run, step, self.setup,
                                  diverged[m], self.average.count_of(m))
            single = train.make_optimizer(hp["optimizer"], module.parameters(), hp["lr"],
                                          hp["momentum"], hp["weight_decay"])
            written.append(train.save_checkpoint(
                out_root / run.run_id / f"step_{step}.pt", meta, module, self.average,
                self.setup, self.batch_size, self.optimizer.member_state_dict(m, single),
                self.rngs[m], member=m))
        return written


def train_ensemble(study_name: str, study: dict, runs: list[config.Run], out_root: str | Path,
                   data_root: str | Path = "data", threads: int | None = None) -> list[Path]:
    """Train ``runs`` together; write ``out_root/<run>/step_<k>.pt`` for every run and step."""
    setup = train.prepare(study, data_root, threads)
    ensemble = Ensemble(study_name, study, runs, setup)
    written: list[Path] = []
    pending = iter(setup.checkpoint_steps)
    next_save = next(pending)
    for step in tqdm(range(setup.iterations + 1), desc=f"{len(runs)} members", mininterval=10,
                     leave=False):
        ensemble.average.update(step, ensemble.params, ensemble.active)
        while next_save is not None and step == next_save:
            written += ensemble.save(step, Path(out_root))
            next_save = next(pending, None)
        if step == setup.iterations:
            break
        ensemble.step(step)
    diverged = {run.run_id: at for run, at in zip(runs, ensemble.diverged_at.tolist()) if at >= 0}
    if diverged:
        log.warning("diverged runs (step of divergence): %s", diverged)
    return written
