"""Iterate averaging (Polyak & Juditsky 1992; SWA, Izmailov et al. 2018; Granziol's "Gadam").

From step t0 on, every e-th iterate is averaged: after step t the averaged weights are

    theta_bar_t = (1 / k) sum_{j=0}^{k-1} theta_{t0 + j e},  k = floor((t - t0) / e) + 1,

kept as a running mean theta_bar <- theta_bar + (theta_s - theta_bar) / k in float64. e = 1
averages every iterate; e = one epoch's steps averages "once per epoch", as SWA and Granziol's
Gadam do (reference A.4). Batch
normalisation statistics do not average: the averaged model's running means and variances are
recomputed by one pass over the training data in train mode (``recompute_batchnorm``), as the
False-Friend paper does for its IA models (reference §C.12).
"""

from __future__ import annotations

import copy

import torch
from torch import nn

BATCH_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


def start_step(fraction: float, iterations: int) -> int:
    """t0 = round(fraction * iterations): fraction 1 averages only the last iterate."""
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"train.averaging_start must lie in [0, 1], got {fraction}")
    return int(round(fraction * iterations))


class IterateAverage:
    """The running mean of a model's parameters at steps ``start``, ``start + every``, ...

    For an ensemble the parameters are stacked (member first) and ``active`` (M,) says which
    members take part in an update: a member frozen after divergence stops averaging, as its
    single run, which stops training, does.
    """

    def __init__(self, start: int, members: int | None = None, every: int = 1):
        if type(every) is not int or every < 1:
            raise ValueError(f"train.averaging_every must be a positive integer, got {every!r}")
        self.start, self.every = start, every
        self.step: int | None = None   # the step of the latest ``update`` call
        self.counts = torch.zeros(() if members is None else (members,), dtype=torch.long)
        self.mean: dict[str, torch.Tensor] = {}

    @property
    def count(self) -> int:
        """Iterates averaged so far (of a single run)."""
        return int(self.counts)

    def count_of(self, member: int | None) -> int:
        """Iterates averaged so far by one ensemble member (``None``: a single run)."""
        return self.count if member is None else int(self.counts[member])

    def update(self, step: int, parameters: dict[str, torch.Tensor],
               active: torch.Tensor | None = None) -> None:
        """Add theta_step (``name -> tensor``, e.g. ``dict(model.named_parameters())``, or
        the stacked parameters of an ensemble) to the mean when step = start + j every,
        j >= 0."""
        self.step = step
        if step < self.start or (step - self.start) % self.every:
            return
        taking_part = torch.ones((), dtype=torch.bool) if active is None else active.cpu()
        self.counts = self.counts + taking_part.long()
        with torch.no_grad():
            for name, param in parameters.items():
                value = param.detach().to(torch.float64)
                if name not in self.mean:
                    self.mean[name] = value.clone()
                    continue
                shape = (-1,) + (1,) * (value.dim() - 1) if active is not None else ()
                counts = self.counts.clamp(min=1).reshape(shape).to(value.device)
                increment = (value - self.mean[name]) / counts
                if active is not None:
                    increment = torch.where(active.reshape(shape), increment, 0.0)
                self.mean[name] += increment

    def state_dict(self, member: int | None = None) -> dict:
        """The count and float64 running mean (of one ensemble member), for resuming."""
        return {"count": self.count_of(member),
                "mean": {name: (mean if member is None else mean[member]).clone()
                         for name, mean in self.mean.items()}}

    def load_members(self, states: list[dict], stacked: bool, device: torch.device) -> None:
        """Restore from ``state_dict`` outputs onto ``device``: one state for a single run,
        one per member (stacked along a leading axis) for an ensemble."""
        counts = torch.tensor([state["count"] for state in states], dtype=torch.long)
        self.counts = counts if stacked else counts[0]
        names = states[0]["mean"]
        self.mean = {name: (torch.stack([state["mean"][name] for state in states]) if stacked
                            else states[0]["mean"][name].clone()).to(device) for name in names}

    def model(self, model: nn.Module, x: torch.Tensor, batch_size: int,
              member: int | None = None) -> nn.Module:
        """The model to evaluate, at the step of the latest ``update``: ``model`` itself
        while the mean is that iterate (nothing averaged yet, or only theta_start at step
        start), else a copy holding the mean (BatchNorm statistics recomputed on ``x``);
        ``member`` picks one member of a stacked (ensemble) mean."""
        count = self.count_of(member)
        if count == 0 or (count == 1 and self.step == self.start):
            return model
        averaged = copy.deepcopy(model)
        with torch.no_grad():
            for name, param in averaged.named_parameters():
                mean = self.mean[name] if member is None else self.mean[name][member]
                param.copy_(mean.to(param.dtype))
        recompute_batchnorm(averaged, x, batch_size)
        return averaged


def recompute_batchnorm(model: nn.Module, x: torch.Tensor, batch_size: int) -> None:
    """Running statistics of every BatchNorm layer re-estimated on ``x`` in order, in batches
    of ``batch_size``: the running mean becomes the mean of the batch means and the running
    variance the mean of the (unbiased) batch variances (cumulative average, momentum None).
    A model without BatchNorm is left untouched."""
    norms = [m for m in model.modules() if isinstance(m, BATCH_NORMS)]
    if not norms:
        return
    momenta = [m.momentum for m in norms]
    was_training = model.training
    for module in norms:
        module.reset_running_stats()
        module.momentum = None
    model.train()
    with torch.no_grad():
        for start in range(0, len(x), batch_size):
            model(x[start:start + batch_size])
    for module, momentum in zip(norms, momenta):
        module.momentum = momentum
    model.train(was_training)
