"""The one training loop (``flatrep.training.loop.train``) on a recording trainer: the order
of its calls from scratch, after a resume and when a step stops the job."""

from flatrep.training import loop


class Recorder:
    """A trainer that records every call; ``step`` fails from ``stop_at`` on, and
    ``resume_point`` returns ``resumable``."""

    def __init__(self, resumable=None, stop_at=None):
        self.resumable, self.stop_at, self.calls = resumable, stop_at, []

    def resume_point(self):
        return self.resumable

    def restore(self, step):
        self.calls.append(("restore", step))

    def observe(self, step):
        self.calls.append(("observe", step))

    def step(self, step):
        self.calls.append(("step", step))
        return self.stop_at is None or step < self.stop_at

    def save(self, step):
        self.calls.append(("save", step))


def test_from_scratch_each_step_is_observed_saved_when_scheduled_then_taken():
    trainer = Recorder()
    loop.train(trainer, [0, 2, 3], "test")
    assert trainer.calls == [("observe", 0), ("save", 0), ("step", 0), ("observe", 1),
                             ("step", 1), ("observe", 2), ("save", 2), ("step", 2),
                             ("observe", 3), ("save", 3)]


def test_a_resumed_job_continues_after_its_checkpoint_without_saving_it_again():
    trainer = Recorder(resumable=2)
    loop.train(trainer, [0, 2, 3], "test")
    assert trainer.calls == [("restore", 2), ("step", 2), ("observe", 3), ("save", 3)]


def test_a_stopped_job_writes_every_remaining_checkpoint_as_it_stands():
    trainer = Recorder(stop_at=1)
    loop.train(trainer, [0, 2, 3], "test")
    assert trainer.calls == [("observe", 0), ("save", 0), ("step", 0), ("observe", 1),
                             ("step", 1), ("save", 2), ("save", 3)]
