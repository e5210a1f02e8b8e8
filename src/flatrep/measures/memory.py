"""Memory sizing of the curvature passes: how many probes, points and Lanczos runs fit.

* One HVP pass (``hvp_chunking``) holds about PARAMETER_COPIES * P floats a probe, whatever
  its points, and ACTIVATION_COPIES * A floats a probe and point, A the floats one sample's
  forward pass allocates (``activation_floats``).
* One batch of Lanczos runs (``batch_rows``) holds about (steps + ROW_VECTORS) * P floats a
  run: its basis and the vectors of one step.

The constants are estimates that bench/measure_memory.py checks against the measured rise.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

#: Default bound on the memory of one HVP pass (``hvp_chunking``).
HVP_BYTES = 1 << 30
#: Copies of a point's activations a forward-over-reverse pass holds per probe: primal and
#: tangent, each saved for the backward pass and met by its cotangent (an estimate).
ACTIVATION_COPIES = 4
#: Parameter-sized vectors a pass holds per probe, whatever its points: the chunk's H v, its
#: running sum over the point chunks, and the gradient's tangent before it is flattened (an
#: estimate; bench/measure_memory.py measures the whole rise).
PARAMETER_COPIES = 3
#: Parameter-sized vectors a reverse-over-reverse (double backward) pass holds per probe: one
#: more than forward-over-reverse's, the batched backward's product beside the running sum
#: (measured by bench/measure_memory.py on the 900k-parameter MLP).
REVERSE_PARAMETER_COPIES = PARAMETER_COPIES + 1
#: Copies of a point's activations the gradient graph of a reverse-over-reverse pass holds for
#: the whole pass, whatever its probes (``curvature.HessianOperator``'s ``"double_backward"``
#: builds it once per point chunk; an estimate, the same order as one probe's).
GRAPH_COPIES = ACTIVATION_COPIES
#: Default bound on the working set of one batch of Lanczos runs (``batch_rows``).
LANCZOS_BYTES = 1 << 30
#: P-vectors a run holds besides its ``steps`` basis vectors: its start, the gathered active
#: column, the residual w and the temporaries of its two reorthogonalisations and of the next
#: column, and the gradient, tangent and product of a forward-over-reverse HVP (an estimate
#: that bench/measure_memory.py checks against the measured rise).
ROW_VECTORS = 11


def activation_floats(model: nn.Module, x: torch.Tensor) -> int:
    """Floats the forward pass of ``model`` allocates for the single sample ``x[:1]``: every
    floating-point tensor an ATen operation puts out that shares no storage with its inputs
    (views, in-place results and reshapes of a fresh result are not new memory), in eval mode,
    so no BatchNorm statistics move. Operations outside modules count too (attention's
    T x T scores, residual sums, normalisation intermediates): an estimate of one sample's
    activations."""
    counter = _AllocatedFloats()
    training = model.training
    try:
        with torch.no_grad(), counter:
            model.eval()(x[:1])
    finally:
        model.train(training)
    return counter.total


class _AllocatedFloats(TorchDispatchMode):
    """Adds up the floating-point entries of the new tensors the operations run inside it
    put out (``total``)."""

    def __init__(self):
        super().__init__()
        self.total = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        result = func(*args, **kwargs)
        inputs = {t.untyped_storage().data_ptr() for t in _tensors((args, kwargs))}
        self.total += sum(t.numel() for t in _tensors(result)
                          if t.is_floating_point()
                          and t.untyped_storage().data_ptr() not in inputs)
        return result


def _tensors(tree) -> list[torch.Tensor]:
    """The tensors anywhere in nested tuples, lists and dicts."""
    return [leaf for leaf in tree_leaves(tree) if isinstance(leaf, torch.Tensor)]


def hvp_chunking(model: nn.Module, x: torch.Tensor, dim: int, probe_chunk: int,
                 max_bytes: int = HVP_BYTES, reverse: bool = False) -> tuple[int, int]:
    """(probes, points) of one HVP pass over ``dim`` parameters within ``max_bytes``.

    A forward-over-reverse pass holds about PARAMETER_COPIES * dim floats a probe, whatever
    its points, and ACTIVATION_COPIES * A floats a probe and point (A =
    ``activation_floats``); a ``reverse``-over-reverse one REVERSE_PARAMETER_COPIES * dim a
    probe, and its gradient graph GRAPH_COPIES * A a point whatever its probes. Probes:
    ``probe_chunk``, fewer where even one point each would pass ``max_bytes`` (at least one);
    points: all of ``x``, fewer where their activations would pass what the probes' vectors
    leave (at least one).
    """
    itemsize = x.element_size()
    probe_bytes = (REVERSE_PARAMETER_COPIES if reverse else PARAMETER_COPIES) * dim * itemsize
    floats = activation_floats(model, x)
    point_bytes = ACTIVATION_COPIES * floats * itemsize
    resident_bytes = (GRAPH_COPIES if reverse else 0) * floats * itemsize
    probes = max(1, min(probe_chunk, (max_bytes - resident_bytes)
                        // max(probe_bytes + point_bytes, 1)))
    points = (max_bytes - probes * probe_bytes) // max(probes * point_bytes + resident_bytes, 1)
    return probes, max(1, min(len(x), points))


def batch_rows(dim: int, steps: int, itemsize: int, rows: int,
               max_bytes: int = LANCZOS_BYTES) -> int:
    """How many runs one ``krylov.lanczos_runs`` call takes: ``rows``, fewer where their
    working set, about (steps + ROW_VECTORS) * P floats a run, would pass ``max_bytes`` (at
    least one)."""
    row_bytes = (steps + ROW_VECTORS) * dim * itemsize
    return max(1, min(rows, max_bytes // row_bytes))
