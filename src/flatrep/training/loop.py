"""The training loop, one for a single run and for an ensemble: the ``Trainer`` interface.

A job trains steps t = start, ..., T (T the last scheduled checkpoint step). It starts afresh
at t = 0, or continues from its last checkpoint (``resume_point``, then ``restore``). At each
step it writes the checkpoint scheduled there (``save``), then updates theta_t -> theta_{t+1}
(``step``) and adds the new iterate to the running average (``observe``). ``step`` returns
False when the job cannot go on (a single run whose loss diverged); every checkpoint still
scheduled is then written as it stands, so the study completes with the divergence recorded.
"""

from __future__ import annotations

from typing import Protocol

from tqdm import tqdm


class Trainer(Protocol):
    """What the loop asks of a single run (``flatrep.training.single.SingleRun``) or of an
    ensemble (``flatrep.training.ensemble.Ensemble``)."""

    def resume_point(self) -> int | None:
        """The step of the last checkpoint the job can continue from; None to start afresh."""

    def restore(self, step: int) -> None:
        """Set the state to that of the checkpoint at ``step`` (which holds the observation
        of that step), and put back the checkpoints written up to it as outputs."""

    def observe(self, step: int) -> None:
        """Add theta_step to the running iterate average."""

    def step(self, step: int) -> bool:
        """The update theta_step -> theta_step+1; False stops the job."""

    def save(self, step: int) -> None:
        """Write the checkpoint of ``step``."""


def train(trainer: Trainer, checkpoint_steps: list[int], desc: str) -> None:
    """Run ``trainer`` to the last of ``checkpoint_steps``, writing each checkpoint once."""
    iterations = checkpoint_steps[-1]
    start = trainer.resume_point()
    if start is None:
        start, pending = 0, list(checkpoint_steps)
        trainer.observe(0)
    else:
        trainer.restore(start)
        pending = [step for step in checkpoint_steps if step > start]
    progress = tqdm(total=iterations, initial=start, desc=desc, mininterval=10, leave=False)
    step = start
    while True:
        if pending and pending[0] == step:
            trainer.save(pending.pop(0))
        if step == iterations or not trainer.step(step):
            break
        step += 1
        trainer.observe(step)
        progress.update()
    progress.close()
    for remaining in pending:
        trainer.save(remaining)
