"""Training of one run: SGD, Adam or AdamW on the study's ``train.loss`` (``flatrep.losses``).

The default is torch's ``MSELoss`` to one-hot targets (mean over batch *and* the K outputs, no
1/2), as the reference code, so the paper's learning rates mean the same thing; the measures
use the 1/2-MSE convention and record the factor 2/K between the two Hessians.
Checkpoints are written at a schedule known up front.

Iterate averaging (``train.averaging_start`` = s in [0, 1], Izmailov et al. 2018; the
"Gadam" arm of the False-Friend study): from step t0 = round(s T) on, the checkpoint at
step t >= t0 holds the mean of the iterates theta_t0, theta_t0+e, ..., up to t, every e =
``train.averaging_every`` steps (default 1; ``flatrep.training.averaging``), which is what
every measure sees; the raw iterate and the optimizer state are kept beside it for resuming. s = 1
(the default) averages the last iterate alone, i.e. no averaging. Weight decay (SGD's coupled L2,
AdamW's decoupled decay) changes the trajectory only: the measured Hessian is that of the data
loss, never of the penalty. A run whose minibatch loss becomes NaN/inf stops and is recorded as
diverged in the remaining scheduled checkpoints, so the study completes.
A job killed at any moment and started again resumes from its last checkpoint
(``flatrep.training.resume``) and ends with the weights of an uninterrupted run.
The loop itself is ``flatrep.training.loop``, which this module's ``SingleRun`` drives.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from flatrep.data import augment
from flatrep.params import studies
from flatrep.training import averaging, loop, optimizers, preparation, resume, run_state
from flatrep.training.batches import BatchOrder

log = logging.getLogger(__name__)


class SingleRun:
    """One run's trainer (``flatrep.training.loop.Trainer``): its model, optimizer, minibatch
    order, RNG streams and iterate average, writing ``out_dir/step_<k>.pt``."""

    def __init__(self, study_name: str, study: dict, run: studies.Run,
                 setup: preparation.Setup, out_dir: str | Path):
        self.study_name, self.study, self.run, self.setup = study_name, study, run, setup
        self.out_dir = Path(out_dir)
        self.hp = hp = setup.hyperparameters(run)
        preparation.seed_global_generator(hp["seed"])
        self.model = setup.initial_model(study, hp["seed"])
        self.optimizer = optimizers.make_optimizer(hp["optimizer"], self.model.parameters(),
                                                   hp["lr"], hp["momentum"], hp["weight_decay"])
        self.rng = preparation.generators(hp["seed"])
        self.batches = BatchOrder(len(setup.x), int(hp["batch_size"]), [self.rng["data_order"]],
                                  setup.device)
        self.average = averaging.IterateAverage(
            averaging.start_step(hp["averaging_start"], setup.iterations),
            every=hp["averaging_every"])
        self.diverged_at: int | None = None
        self.written: list[Path] = []
        self._resumable: tuple[int, dict] | None = None

    def resume_point(self) -> int | None:
        self._resumable = resume.latest(self.out_dir, self.setup.checkpoint_steps,
                                        run_state.belongs_to(self.study_name, self.study,
                                                             self.run))
        return None if self._resumable is None else self._resumable[0]

    def restore(self, step: int) -> None:
        _, content = self._resumable
        self.model.load_state_dict(run_state.iterate_weights(content))
        self.optimizer.load_state_dict(content["optimizer"])
        run_state.restore_streams([content], [self.rng], self.batches, self.average,
                                  self.setup.device, stacked=False)
        self.diverged_at = content["meta"]["diverged_at"]
        self.written += resume.restore(self.out_dir,
                                       [k for k in self.setup.checkpoint_steps if k <= step])
        log.info("run %s resumes from its checkpoint at step %d", self.run.run_id, step)

    def observe(self, step: int) -> None:
        self.average.update(step, dict(self.model.named_parameters()))

    def step(self, step: int) -> bool:
        """One minibatch update; at a NaN/inf loss, record the divergence and stop."""
        if self.diverged_at is not None:
            return False
        idx = self.batches.next()[0]
        inputs = augment.augment(self.setup.x[idx], self.setup.augmentation, self.rng["augment"])
        self.optimizer.param_groups[0]["lr"] = self.setup.learning_rate(
            self.hp["lr"], step, self.hp["averaging_start"])
        self.optimizer.zero_grad(set_to_none=True)
        value = self.setup.loss.training(self.model(inputs), self.setup.targets[idx])
        if not torch.isfinite(value):
            self.diverged_at = step
            log.warning("run %s diverged at step %d (loss %s)", self.run.run_id, step,
                        value.item())
            return False
        value.backward()
        self.optimizer.step()
        return True

    def save(self, step: int) -> None:
        meta = run_state.run_meta(self.study_name, self.study, self.run, step, self.setup,
                                  self.diverged_at, self.average.count)
        self.written.append(run_state.save_checkpoint(
            self.out_dir / f"step_{step}.pt", meta, self.model, self.average, self.setup,
            self.batches, self.optimizer.state_dict(), self.rng))


def train_run(study_name: str, study: dict, run: studies.Run, out_dir: str | Path,
              data_root: str | Path = "data", threads: int | None = None) -> list[Path]:
    """Train one run and write ``out_dir/step_<k>.pt`` for every scheduled step ``k``,
    resuming from the last checkpoint of an interrupted job (``flatrep.training.resume``)."""
    setup = preparation.prepare(study, data_root, threads)
    trainer = SingleRun(study_name, study, run, setup, out_dir)
    loop.train(trainer, setup.checkpoint_steps, run.run_id)
    resume.discard(out_dir)
    return trainer.written
