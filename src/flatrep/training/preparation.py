"""What every run of a study shares before its first step: determinism and the device, the
training split on the device, the loss, the checkpoint steps and the learning-rate schedule
(``Setup``, ``prepare``), and what each run draws from its seed: its initial weights, its
global generator and its CPU streams of minibatch order and augmentation."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from flatrep import determinism, losses, models
from flatrep.data import augment, datasets
from flatrep.params import schedules, studies

#: ``train.dtype``: float32 (default) or float64 (exact comparisons, e.g. in the tests).
DTYPES = {"float32": torch.float32, "float64": torch.float64}


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
    lr_schedule: dict              # flatrep.params.schedules.resolve
    augmentation: str              # flatrep.data.augment name, "none" for no augmentation
    dtype: torch.dtype             # of weights and data: float32, or float64 for validation

    @property
    def iterations(self) -> int:
        return self.checkpoint_steps[-1]

    def hyperparameters(self, run: studies.Run) -> dict:
        """The run's hyperparameters with the study's fixed values and the defaults."""
        return studies.hyperparameters(self.train_cfg, run)

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
    x, y = datasets.load_study_split(study["data"], "train", data_root)
    num_outputs = datasets.num_outputs(study["data"])
    loss = losses.get(train_cfg.get("loss", "mse"))
    augmentation = train_cfg.get("augment", "none")
    augment.check(augmentation, tuple(x.shape[1:]))
    dtype = DTYPES[train_cfg.get("dtype", "float32")]
    return Setup(train_cfg, mode, device, x.to(device, dtype),
                 loss.targets(y, num_outputs, dtype).to(device), num_outputs, loss,
                 studies.checkpoint_steps(train_cfg),
                 schedules.resolve(train_cfg.get("lr_schedule")), augmentation, dtype)


def seed_global_generator(seed: int) -> None:
    """Seed torch's global generator (dropout masks during training draw from it) from the
    run's ``dropout`` sub-seed, so a run's global RNG state is a function of its seed."""
    torch.manual_seed(determinism.sub_seed(seed, "dropout"))


def generators(seed: int) -> dict[str, torch.Generator]:
    """The run's CPU generators of minibatch order and augmentation, from its seed."""
    return {stream: torch.Generator().manual_seed(determinism.sub_seed(seed, stream))
            for stream in ("data_order", "augment")}
