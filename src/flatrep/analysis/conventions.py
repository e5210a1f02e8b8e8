"""How flatrep's quantities map onto the axes Chen et al. plot (``figures.conventions``).

flatrep stores each quantity in the form the theorems use; the authors' code stores and plots
some of them transformed (reference ``paper_chen2023.md``, ``protocols_and_peers.md``):

* sharpness: flatrep's S = (1/n) sum_i ||df(x_i)/dtheta||_F^2 (eq. 3, the Gauss-Newton trace of
  the 1/2-MSE loss); the paper's axis is sqrt(S), with no loss factor;
* log volume: the theorem's LVR sums the logs of all K singular values of df/dx
  (``log_lvr``); the plotted "log volume" sums the top 3 (``log_lvr_top3``);
* local dimension: the paper plots the log of the mean over training points;
* Hessian measures: flatrep's ``hessian_*`` are of the 1/2-MSE loss (1/2n) sum_i ||f - y||^2;
  torch's ``MSELoss`` (the reference code's training loss, a mean over the K outputs too) has
  the Hessian 2/K times it (``losses.Loss.hessian_factor``).

Rank statistics (Spearman, Kendall) are unchanged by these monotone maps; Pearson's r is not,
so a figure on the paper's axes reports r computed on those axes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from flatrep import losses

CONVENTIONS = ("flatrep", "paper")


@dataclass(frozen=True)
class Axis:
    """One plotted quantity: the cube variable it reads and, per convention, the label and
    the map applied to the run-level value (mean over training points)."""
    variable: str
    label: str
    transform: Callable[[np.ndarray], np.ndarray] | None = None


def _identity(values):
    return values


#: The trajectory panels (Chen et al. Fig. 1/2) under each convention.
PANELS = {
    "flatrep": (Axis("train_loss", "train loss ({loss})"),
                Axis("nmls", "NMLS = sum_l MLS_l"),
                Axis("sharpness", "sharpness S = mean_i ||df/dθ||_F²"),
                Axis("log_lvr", "log LVR = sum_k log s_k(df/dx), full-rank points"),
                Axis("mls", "MLS = mean_i ||df/dx||_F²"),
                Axis("local_dim", "log(mean local dimension)", np.log)),
    "paper": (Axis("train_loss", "train loss ({loss})"),
              Axis("nmls", "NMLS = sum_l MLS_l"),
              Axis("sharpness", "√S = (mean_i ||df/dθ||_F²)^½", np.sqrt),
              Axis("log_lvr_top3", "log volume = sum_{k≤3} log s_k(df/dx)"),
              Axis("mls", "MLS = mean_i ||df/dx||_F²"),
              Axis("local_dim", "log(mean local dimension)", np.log)),
}


#: The torch loss each ``train.loss`` trains on, for the train-loss axis ("{loss}" in a label).
TORCH_LOSSES = {"mse": "torch MSELoss", "cross_entropy": "torch CrossEntropyLoss"}


def label(axis: Axis, loss_name: str) -> str:
    """``axis``'s label, naming the study's training loss where it plots it."""
    return axis.label.replace("{loss}", TORCH_LOSSES.get(loss_name, loss_name))


def sharpness_axis(conventions: str) -> Axis:
    """The sharpness axis of the correlation figure under ``conventions``."""
    return next(axis for axis in PANELS[conventions] if axis.variable == "sharpness")


def apply(axis: Axis, values):
    """``axis``'s transform of run-level values (the identity where it has none)."""
    return (axis.transform or _identity)(values)


def torch_hessian(value, loss_name: str, num_outputs: int):
    """A flatrep ``hessian_*`` value (of the mean per-sample loss, ``losses``) as the Hessian
    of torch's training loss: x 2/K for ``mse`` (``MSELoss``), x 1 for ``cross_entropy``.
    Linear in the Hessian, so it holds for the trace, lambda_max and the Frobenius norm."""
    return losses.get(loss_name).hessian_factor(num_outputs) * value


#: The "comparing with the paper" table of the docs: (quantity, flatrep variable, the paper's
#: quantity, conversion).
COMPARISON = (
    ("sharpness", "sharpness", "√S (stored and plotted by the authors' code)", "√S = sqrt(S)"),
    ("log volume (figures)", "log_lvr_top3", "sum of the logs of the top 3 singular values",
     "identity"),
    ("log volume (theorem)", "log_lvr", "LVR of the bound: all K singular values",
     "identity; not what the figures plot"),
    ("local dimension", "local_dim", "log of the mean over training points",
     "log(mean_i local_dim)"),
    ("Hessian trace, lambda_max, Frobenius norm", "hessian_trace, hessian_lambda_max, "
     "hessian_fro", "Hessian of torch MSELoss", "x 2/K (K outputs); cross-entropy: x 1"),
    ("train loss", "train_loss", "torch MSELoss (mean over samples and K outputs)", "identity"),
)


def comparison_markdown() -> str:
    """``COMPARISON`` as a Markdown table (for the docs)."""
    lines = ["| quantity | flatrep variable | the paper's quantity | conversion |",
             "|---|---|---|---|"]
    lines += [f"| {' | '.join(row)} |" for row in COMPARISON]
    return "\n".join(lines) + "\n"
