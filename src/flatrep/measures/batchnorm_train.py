"""The training-loss Hessian with BatchNorm in train mode, as Granziol's tooling takes it.

Granziol's HVPs (reference ``paper_granziol_mayin.md`` A.5, GadamX ``curvature/utils.py``)
run with every BatchNorm layer in train mode over loader batches of 128, each batch's mean
loss weighted by b/n. The loss is then

    L_bn(theta) = sum_b (|b| / n) (1/|b|) sum_{i in b} l(f_b(x_i; theta), y_i),

where f_b normalises every BatchNorm layer's input by the mean and variance of batch b itself,
so H_bn = grad^2 L_bn includes the derivatives through the batch statistics and depends on how
the points are split into batches (here: consecutive ``batch_size`` curvature points, the
last batch possibly shorter). Without BatchNorm layers H_bn is the eval-mode Hessian H. The
rest of the suite measures H (running statistics, points independent); this module gives the
reference's "replicate A" protocol (checklist §C: "Use Granziol's BN-train mode to replicate
A") its lambda_max, lambda_min and trace on the same probes as H's, so the two can be paired.
"""

from __future__ import annotations

import copy

from torch import nn

from flatrep import losses
from flatrep.measures import curvature, memory


def train_mode_copy(model: nn.Module) -> nn.Module:
    """A copy of ``model`` in train mode whose BatchNorm layers normalise by the statistics of
    the batch in front of them and update no running statistics (``track_running_stats``
    off: in train mode torch then passes none to ``batch_norm``; the copied buffers serve
    only an eval-mode pass, such as ``memory.activation_floats``'), with every Dropout's p
    set to 0, so that the loss is a deterministic function of the parameters."""
    copied = copy.deepcopy(model).train()
    for module in copied.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.track_running_stats = False
        elif isinstance(module, nn.modules.dropout._DropoutNd):
            module.p = 0.0
    return copied


def operator(model: nn.Module, x, targets, loss: losses.Loss, batch_size: int,
             method: str = "forward_over_reverse", probe_chunk: int = 16,
             max_bytes: int = memory.HVP_BYTES) -> curvature.HessianOperator:
    """v -> H_bn v: a ``HessianOperator`` on ``train_mode_copy(model)`` whose point chunks are
    the batches (consecutive ``batch_size`` rows of ``x``), each contributing
    (1/n) sum_{i in b} l_i, i.e. its mean loss weighted by |b|/n. The batches are the
    protocol's, not a memory choice, so ``max_bytes`` sizes the probe chunks only."""
    return curvature.HessianOperator(train_mode_copy(model), x, targets, method, probe_chunk,
                                     loss=loss, point_chunk=batch_size, max_bytes=max_bytes)
