"""The minibatch order of a run, or of the members of an ensemble."""

from __future__ import annotations

import torch

from flatrep.params import studies


class BatchOrder:
    """Minibatch indices of one run, or of the M members of an ensemble: each draws a fresh
    permutation of the n training rows per epoch from its own ``data_order`` generator and
    walks it in batches of ``batch_size``, dropping the incomplete last batch. Members share n
    and the batch size, so their epochs start together. The current permutations and the
    position in them go into every checkpoint, so a resumed run continues mid-epoch exactly."""

    def __init__(self, n: int, batch_size: int, generators: list[torch.Generator],
                 device: torch.device):
        if batch_size > n:
            raise studies.ConfigError(f"batch_size {batch_size} exceeds the {n} training samples")
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
