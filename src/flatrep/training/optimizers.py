"""The optimisers: SGD, Adam and AdamW of torch.optim for one run (``make_optimizer``), and
``StackedOptimizer``, the same updates on stacked parameters for M ensemble members at once.

Stacked, every parameter tensor has the member axis first, shape (M, ...); the learning rate,
momentum and weight decay are per-member vectors of length M, so members with different
hyperparameters share one update. The formulas are torch.optim's (torch 2.x, no dampening, no
Nesterov, not maximising), member by member, with base learning rate eta_t:

* SGD:   g <- g + wd theta;  b <- g (first step) or mu b + g;  theta <- theta - eta_t b
  (with mu = 0 the buffer is g itself; torch keeps none, and neither do we when every member
  has mu = 0).
* Adam:  g <- g + wd theta;  m <- m + (1 - beta1)(g - m);  v <- beta2 v + (1 - beta2) g^2;
  theta <- theta - (eta_t / (1 - beta1^t)) m / (sqrt(v) / sqrt(1 - beta2^t) + eps).
* AdamW: theta <- theta (1 - eta_t wd) first, then Adam without the coupled term
  (Loshchilov & Hutter 2019).

A member whose ``active`` flag is False (it diverged) gets a zero gradient and a zero rate:
its parameters stay exactly as they are, without a host synchronisation per step.
``member_state_dict`` gives one member's state in the format of the torch optimizer a single
run uses, so checkpoints are the same either way, and ``load_member_state`` takes it back when
an ensemble resumes.
"""

from __future__ import annotations

import torch

from flatrep.params import studies

OPTIMIZERS = ("sgd", "adam", "adamw")


def make_optimizer(name: str, params, lr: float, momentum: float, weight_decay: float):
    """SGD (the paper's optimiser; L2 coupled to the gradient), Adam (L2 coupled) or AdamW
    (decay decoupled from the adaptive step, Loshchilov & Hutter 2019)."""
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    raise studies.ConfigError(f"unknown train.optimizer {name!r}; allowed: {list(OPTIMIZERS)}")


BETAS = (0.9, 0.999)
EPS = 1e-8


def _per_member(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """A length-M vector shaped (M, 1, ..., 1) to broadcast against ``like`` (M, ...)."""
    return values.reshape(-1, *([1] * (like.dim() - 1)))


class StackedOptimizer:
    """The state and update of one optimizer kind over stacked parameters."""

    def __init__(self, kind: str, params: list[torch.Tensor], momentum: torch.Tensor,
                 weight_decay: torch.Tensor):
        if kind not in OPTIMIZERS:
            raise ValueError(f"unknown optimizer {kind!r}; allowed: {list(OPTIMIZERS)}")
        self.kind = kind
        self.params = params
        self.momentum = momentum
        self.weight_decay = weight_decay
        self.steps = 0
        # Terms every member has at zero are skipped: each costs a pass over M x P numbers.
        self.decays = bool((weight_decay != 0).any())
        self.buffers = ([torch.zeros_like(p) for p in params]
                        if kind == "sgd" and bool((momentum != 0).any()) else None)
        self.exp_avg = [torch.zeros_like(p) for p in params] if kind != "sgd" else None
        self.exp_avg_sq = [torch.zeros_like(p) for p in params] if kind != "sgd" else None

    @torch.no_grad()
    def step(self, grads: list[torch.Tensor], lr: torch.Tensor, active: torch.Tensor) -> None:
        """One update with per-member rates ``lr`` (M,) for the members flagged ``active``;
        ``grads`` (fresh tensors, e.g. from ``torch.autograd.grad``) are overwritten."""
        self.steps += 1
        lr = lr * active
        # A frozen member's gradient may be NaN; zero it (on the CPU only once one exists,
        # elsewhere always, as asking would make the host wait for the device).
        mask = active.device.type != "cpu" or not bool(active.all())
        for i, (param, grad) in enumerate(zip(self.params, grads)):
            if mask:
                grad.masked_fill_(~_per_member(active, grad), 0.0)
            rate = _per_member(lr, param).to(param.dtype)
            decay = _per_member(self.weight_decay, param).to(param.dtype)
            if self.kind == "adamw":
                if self.decays:
                    param.mul_(1 - rate * decay)
            elif self.decays:
                grad.addcmul_(param, decay)
            if self.kind == "sgd":
                self._sgd(i, param, grad, rate)
            else:
                self._adam(i, param, grad, rate)

    def _sgd(self, i: int, param: torch.Tensor, grad: torch.Tensor, rate: torch.Tensor) -> None:
        if self.buffers is not None:
            buf = self.buffers[i]
            if self.steps == 1:
                buf.copy_(grad)
            else:
                torch.addcmul(grad, buf, _per_member(self.momentum, buf).to(buf.dtype), out=buf)
            grad = buf
        param.addcmul_(grad, rate, value=-1)

    def _adam(self, i: int, param: torch.Tensor, grad: torch.Tensor, rate: torch.Tensor) -> None:
        beta1, beta2 = BETAS
        exp_avg, exp_avg_sq = self.exp_avg[i], self.exp_avg_sq[i]
        exp_avg.lerp_(grad, 1 - beta1)
        exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
        correction1 = 1 - beta1 ** self.steps
        correction2_sqrt = (1 - beta2 ** self.steps) ** 0.5
        denom = (exp_avg_sq.sqrt() / correction2_sqrt).add_(EPS)
        param.addcmul_(exp_avg / denom, rate / correction1, value=-1)

    def member_state_dict(self, member: int, optimizer: torch.optim.Optimizer) -> dict:
        """Member ``member``'s state written into ``optimizer`` (a torch optimizer of the
        member's own module, built like a single run's) and returned as its state_dict."""
        if not self.steps or (self.kind == "sgd" and float(self.momentum[member]) == 0):
            return optimizer.state_dict()      # torch keeps no state for these
        for i, param in enumerate(optimizer.param_groups[0]["params"]):
            if self.kind == "sgd":
                optimizer.state[param] = {"momentum_buffer": self.buffers[i][member].clone()}
            else:
                optimizer.state[param] = {
                    "step": torch.tensor(float(self.steps)),
                    "exp_avg": self.exp_avg[i][member].clone(),
                    "exp_avg_sq": self.exp_avg_sq[i][member].clone()}
        return optimizer.state_dict()

    def load_member_state(self, member: int, state_dict: dict, steps: int) -> None:
        """Continue member ``member`` from a ``member_state_dict`` output after ``steps``
        updates (members with no torch state, e.g. SGD without momentum, keep zeros)."""
        self.steps = steps
        for i, state in state_dict["state"].items():
            if self.kind == "sgd":
                self.buffers[i][member].copy_(state["momentum_buffer"])
            else:
                self.exp_avg[i][member].copy_(state["exp_avg"])
                self.exp_avg_sq[i][member].copy_(state["exp_avg_sq"])
