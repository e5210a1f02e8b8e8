"""Training many runs of a study in one process as a vmapped ensemble (``train.ensemble``).

The M members' parameters are stacked along a leading axis
(``torch.func.stack_module_state``) and one forward/backward pass of
``vmap(grad_and_value(functional_call(model, member params, member batch)))`` trains them all
(vmapping the member's gradient, rather than differentiating the vmapped loss, gives gradients
in the parameters' own memory layout: about 1.3x faster on CPU, see bench/RESULTS.md): each member
draws its own minibatches (its ``data_order`` stream, the same permutation per epoch as a
single run), augments with its own stream, and has its own learning rate, momentum, weight
decay and seed; ``flatrep.training.optimizers`` applies torch.optim's update member by member.
Members must share what fixes the tensor shapes and the update rule: the batch size, the
optimizer kind and the iterate-averaging start (``studies.ensemble_groups``).

Each member's trajectory is the single run's (``flatrep.training.single.train_run``) up to
floating-point rounding: batched matrix products may sum in another order than the single run's, so
the numbers agree to rounding error (tests compare them in float32 and float64), not bit for bit.
Checkpoints are written per run, in the single run's format; a member whose loss turns NaN/inf
is frozen at that step and recorded as diverged, while the others go on.
Models that draw random numbers in their forward pass (Dropout) are refused: the members
would share torch's global generator and could not draw their single runs' masks
(``flatrep.params.validation`` says so before any job starts).
"""

from __future__ import annotations

import copy
import logging
from pathlib import Path

import torch
from torch import nn
from torch.func import functional_call, grad_and_value, stack_module_state, vmap

from flatrep import checkpoint
from flatrep.data import augment
from flatrep.params import studies
from flatrep.training import averaging, loop, optimizers, preparation, resume, run_state
from flatrep.training.batches import BatchOrder
from flatrep.training.optimizers import StackedOptimizer

log = logging.getLogger(__name__)


class EnsembleError(ValueError):
    """Runs that cannot share one ensemble (different shapes or update rules)."""


def _shared(runs: list[studies.Run], setup: preparation.Setup, key: str):
    """The one value of ``key`` all members share, else EnsembleError."""
    values = {setup.hyperparameters(run)[key] for run in runs}
    if len(values) != 1:
        raise EnsembleError(f"runs {[run.run_id for run in runs]} differ in {key} "
                            f"({sorted(map(str, values))}); an ensemble needs one value")
    return values.pop()


def _member_vector(runs, setup: preparation.Setup, key: str) -> torch.Tensor:
    """A hyperparameter of every member as a float64 vector on the device."""
    return torch.tensor([float(setup.hyperparameters(run)[key]) for run in runs],
                        dtype=torch.float64, device=setup.device)


def compiled(study: dict) -> bool:
    """``train.compile``: the members' batched gradient goes through ``torch.compile``
    (TorchInductor fuses the elementwise work around the products and cuts per-op overhead;
    it pays back its compile time, seconds to a minute, in long runs: see bench/RESULTS.md).
    The compiled kernels may round differently from the eager ones, so the members still
    follow their single runs to rounding, as without it."""
    return bool(study["train"].get("compile", False))


class Ensemble:
    """The trainer (``flatrep.training.loop.Trainer``) of M members trained together: their
    stacked parameters, buffers, optimizer, averages and RNGs, writing
    ``out_root/<run>/step_<k>.pt``."""

    def __init__(self, study_name: str, study: dict, runs: list[studies.Run],
                 setup: preparation.Setup, out_root: str | Path):
        self.study_name, self.study, self.runs, self.setup = study_name, study, runs, setup
        self.out_root = Path(out_root)
        self.written: list[Path] = []
        self._resumable: list[dict] = []
        self.batch_size = int(_shared(runs, setup, "batch_size"))
        self.hparams = [setup.hyperparameters(run) for run in runs]
        preparation.seed_global_generator(self.hparams[0]["seed"])
        self.members = [setup.initial_model(study, hp["seed"]) for hp in self.hparams]
        if any(isinstance(module, nn.Dropout) and module.p > 0
               for module in self.members[0].modules()):
            raise EnsembleError(f"runs {[run.run_id for run in runs]} use Dropout, whose "
                                "masks an ensemble cannot draw as the single runs do; train "
                                "them one at a time (train.ensemble: none)")
        # Plain tensors: grad_and_value differentiates them itself, and a compiled gradient
        # is twice as fast on tensors that autograd does not track.
        params, self.buffers = stack_module_state(self.members)
        self.params = {name: tensor.detach() for name, tensor in params.items()}
        self.template = copy.deepcopy(self.members[0]).to("meta")
        self.optimizer = StackedOptimizer(
            _shared(runs, setup, "optimizer"), list(self.params.values()),
            _member_vector(runs, setup, "momentum"), _member_vector(runs, setup, "weight_decay"))
        self.base_lr = _member_vector(runs, setup, "lr")
        self.rngs = [preparation.generators(hp["seed"]) for hp in self.hparams]
        self.batches = BatchOrder(len(setup.x), self.batch_size,
                                  [rng["data_order"] for rng in self.rngs], setup.device)
        self.averaging_start = _shared(runs, setup, "averaging_start")
        self.average = averaging.IterateAverage(averaging.start_step(
            self.averaging_start, setup.iterations), members=len(runs),
            every=_shared(runs, setup, "averaging_every"))
        self.active = torch.ones(len(runs), dtype=torch.bool, device=setup.device)
        self.diverged_at = torch.full((len(runs),), -1, dtype=torch.long, device=setup.device)
        gradients = vmap(grad_and_value(self._member_loss))
        self.batched_gradients = torch.compile(gradients) if compiled(study) else gradients

    def _member_loss(self, params, buffers, inputs, targets):
        outputs = functional_call(self.template, (params, buffers), (inputs,))
        return self.setup.loss.training(outputs, targets)

    def _inputs(self, idx: torch.Tensor) -> torch.Tensor:
        """The members' minibatches (M, B, ...), each augmented with its own stream."""
        if self.setup.augmentation == "none":
            return self.setup.x[idx]
        return torch.stack([augment.augment(self.setup.x[row], self.setup.augmentation,
                                            rng["augment"]) for row, rng in zip(idx, self.rngs)])

    def observe(self, step: int) -> None:
        self.average.update(step, self.params, self.active)

    def step(self, step: int) -> bool:
        """One update of every member still active; members whose loss is NaN/inf freeze
        and record ``step`` as the step of divergence while the others go on."""
        idx = self.batches.next()
        grads, values = self.batched_gradients(self.params, self.buffers, self._inputs(idx),
                                               self.setup.targets[idx])
        finite = torch.isfinite(values)
        self.diverged_at = torch.where(self.active & ~finite, step, self.diverged_at)
        self.active = self.active & finite
        self.optimizer.step([grads[name] for name in self.params],
                            self.setup.learning_rate(self.base_lr, step, self.averaging_start),
                            self.active)
        return True

    def member(self, m: int) -> nn.Module:
        """Member ``m``'s module, its weights and buffers copied out of the stack."""
        module = self.members[m]
        with torch.no_grad():
            for name, tensor in module.named_parameters():
                tensor.copy_(self.params[name][m])
            for name, tensor in module.named_buffers():
                tensor.copy_(self.buffers[name][m])
        return module

    def save(self, step: int) -> None:
        """Copy each member out of the stack into its module and write its checkpoint."""
        diverged = [value if value >= 0 else None for value in self.diverged_at.tolist()]
        for m, (run, hp) in enumerate(zip(self.runs, self.hparams)):
            module = self.member(m)
            meta = run_state.run_meta(self.study_name, self.study, run, step, self.setup,
                                      diverged[m], self.average.count_of(m))
            torch_optimizer = optimizers.make_optimizer(hp["optimizer"], module.parameters(),
                                                        hp["lr"], hp["momentum"],
                                                        hp["weight_decay"])
            self.written.append(run_state.save_checkpoint(
                self.out_root / run.run_id / f"step_{step}.pt", meta, module, self.average,
                self.setup, self.batches, self.optimizer.member_state_dict(m, torch_optimizer),
                self.rngs[m], member=m))

    def resume_point(self) -> int | None:
        """The last step at which every member has a checkpoint to resume from; None to
        start afresh."""
        found = [resume.latest(self.out_root / run.run_id, self.setup.checkpoint_steps,
                               run_state.belongs_to(self.study_name, self.study, run))
                 for run in self.runs]
        if any(point is None for point in found):
            return None
        step = min(point[0] for point in found)
        self._resumable = [
            point[1] if point[0] == step else
            checkpoint.read(resume.scratch_dir(self.out_root / run.run_id) / f"step_{step}.pt")
            for run, point in zip(self.runs, found)]
        return step

    def restore(self, step: int) -> None:
        """Continue every member from its checkpoint at ``step``: weights, optimizer state,
        divergence, RNG states, minibatch order, average; their earlier checkpoints become
        outputs again."""
        contents = self._resumable
        with torch.no_grad():
            for m, (content, module) in enumerate(zip(contents, self.members)):
                module.load_state_dict(run_state.iterate_weights(content))
                for name, tensor in module.named_parameters():
                    self.params[name][m].copy_(tensor)
                for name, tensor in module.named_buffers():
                    self.buffers[name][m].copy_(tensor)
                self.optimizer.load_member_state(m, content["optimizer"], step)
                diverged_at = content["meta"]["diverged_at"]
                self.diverged_at[m] = -1 if diverged_at is None else diverged_at
        self.active = self.diverged_at < 0
        run_state.restore_streams(contents, self.rngs, self.batches, self.average,
                                  self.setup.device, stacked=True)
        for run in self.runs:
            self.written += resume.restore(self.out_root / run.run_id,
                                           [k for k in self.setup.checkpoint_steps if k <= step])
        log.info("ensemble of %d runs resumes from step %d", len(self.runs), step)

def train_ensemble(study_name: str, study: dict, runs: list[studies.Run], out_root: str | Path,
                   data_root: str | Path = "data", threads: int | None = None) -> list[Path]:
    """Train ``runs`` together; write ``out_root/<run>/step_<k>.pt`` for every run and step,
    resuming from the last step every member checkpointed when a job was interrupted."""
    setup = preparation.prepare(study, data_root, threads)
    ensemble = Ensemble(study_name, study, runs, setup, out_root)
    loop.train(ensemble, setup.checkpoint_steps, f"{len(runs)} members")
    for run in runs:
        resume.discard(Path(out_root) / run.run_id)
    diverged = {run.run_id: at for run, at in zip(runs, ensemble.diverged_at.tolist()) if at >= 0}
    if diverged:
        log.warning("diverged runs (step of divergence): %s", diverged)
    return ensemble.written
