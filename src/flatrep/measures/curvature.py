"""Curvature operators of the training loss: the Hessian H and its Gauss-Newton part G.

The loss is L(theta) = (1/n) sum_i l(f(x_i), y_i) in the measure convention of
``flatrep.losses`` (1/2-MSE by default, L = (1/2n) sum_i ||f(x_i) - y_i||^2, whose Hessian is
K/2 times torch MSELoss's; or cross-entropy), over a fixed set of training points, with
the model in eval mode. Both operators meet ``flatrep.measures.operators.LinearOperator``
(``apply(V)`` for the rows of V, ``dim``, ``dtype``, ``device``), the only contract the
estimators (``flatrep.measures.trace_estimators``, ``flatrep.measures.krylov``,
``flatrep.measures.spectrum``) rely on.

* ``HessianOperator`` applies H to a batch of vectors by forward-over-reverse AD (``jvp`` of
  ``grad``, probes batched with ``vmap``; optionally through ``torch.compile``) or by
  reverse-over-reverse AD (double backward: the gradient's graph built once per point chunk,
  then one backward pass through it per batch of probes); ``"auto"`` picks between them by the
  model (``auto_engine``).
* ``GaussNewtonOperator`` applies the (generalised) Gauss-Newton matrix
  G = (1/n) sum_i J_i^T M_i J_i (J_i = d f(x_i) / d theta, M_i the loss's output Hessian):
  G v = (1/n) sum_i J_i^T M_i (J_i v) by one JVP and one VJP of the outputs, and gives the
  per-sample quadratic forms v^T G_i v = (J_i v)^T M_i (J_i v) from the JVP alone.

Devices: an operator lives where its model and points are
(``flatrep.cube.measuring.measure_checkpoints`` picks the device, ``measure.device``); the
results on a GPU are the CPU results up to floating-point rounding. How many probes and points
one pass takes is sized by ``flatrep.measures.memory.hvp_chunking``.
"""

from __future__ import annotations

import functools
import math

import torch
from torch import nn
from torch.func import functional_call, grad, jvp, vjp, vmap

from flatrep import losses
from flatrep.measures import jacobian, memory

#: How ``HessianOperator`` computes H V (``measure.curvature.hvp``): ``"auto"`` resolves to one
#: of the engines after it (``auto_engine``).
HVP_METHODS = ("auto", "forward_over_reverse", "forward_over_reverse_compiled",
               "double_backward")
#: The engine a measure job takes when ``measure.curvature.hvp`` is not given.
DEFAULT_HVP = "auto"


def auto_engine(model: nn.Module, probes: int) -> str:
    """The engine ``"auto"`` takes for ``probes`` vectors at once on ``model``:
    ``"double_backward"`` for an MLP (every parameter a Linear layer's) or a single vector,
    ``"forward_over_reverse"`` otherwise.

    Chosen by bench/curvature_peers.py and bench/RESULTS.md ("HVP engines"): on the MLPs the
    reused gradient graph saves the forward pass and the ``vmap`` set-up of every product, and
    a single vector (a Lanczos step) pays ``vmap``'s fixed cost alone; on the small VGG the
    two engines cost about the same per vector for a batch of probes, the convolutions'
    second derivatives dominating, and forward-over-reverse keeps no graph between calls.
    """
    if probes == 1 or jacobian.only_linear_parameters(model):
        return "double_backward"
    return "forward_over_reverse"


#: Modules whose output is linear in each of their parameters and in their input (weights
#: enter once, by a product with the input).
LINEAR_IN_PARAMETERS = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
#: Parameterless modules that are piecewise linear in their input.
PIECEWISE_LINEAR = (nn.ReLU, nn.LeakyReLU, nn.ReLU6, nn.Hardtanh, nn.MaxPool1d, nn.MaxPool2d,
                    nn.MaxPool3d, nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d, nn.AdaptiveAvgPool1d,
                    nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d, nn.Flatten,
                    nn.Unflatten, nn.Identity)


def piecewise_linear(model: nn.Module) -> bool:
    """Whether every output f_c(x; theta) is, wherever it is differentiable, linear in each
    single parameter theta_p, so that d^2 f_c / d theta_p^2 = 0, diag(H - G) = 0 and
    Tr H = Tr G exactly (the residual term (1/n) sum_i sum_c (dl/df_c) grad^2 f_c(x_i) of
    Chen et al. B7 has a zero diagonal, for any loss l).

    True when ``model`` is an ``nn.Sequential`` tree of ``LINEAR_IN_PARAMETERS`` layers,
    ``PIECEWISE_LINEAR`` activations and pools, and Dropout or BatchNorm with running
    statistics in eval mode (fixed affine maps), and no parameter is shared between two
    layers: then f is a product of per-layer factors, each parameter entering one factor
    linearly. Any other module (tanh, softmax, LayerNorm, a custom forward) makes it False,
    the conservative answer: the control variate then estimates Tr(H - G).
    """
    owners: dict[int, int] = {}
    for _, module in model.named_modules(remove_duplicate=False):
        if isinstance(module, nn.Sequential):
            continue
        batchnorm = isinstance(module, nn.modules.batchnorm._BatchNorm)
        if batchnorm and (module.training or not module.track_running_stats):
            return False
        if isinstance(module, nn.Dropout) and module.training:
            return False
        if not isinstance(module, LINEAR_IN_PARAMETERS + PIECEWISE_LINEAR + (nn.Dropout,)) \
                and not batchnorm:
            return False
        for parameter in module.parameters(recurse=False):
            owners[id(parameter)] = owners.get(id(parameter), 0) + 1
    return all(count == 1 for count in owners.values())


class HessianOperator:
    """v -> H v for the loss of ``model`` on ``(x, targets)``, parameters flattened.

    ``loss``: a ``flatrep.losses.Loss`` (default 1/2-MSE; ``targets`` as its ``targets`` makes
    them: float (n, K) for MSE, int labels (n,) for cross-entropy).

    ``method`` (``HVP_METHODS``): ``"forward_over_reverse"`` (``jvp`` of ``grad``, batched by
    ``vmap``); ``"forward_over_reverse_compiled"``, the same through ``torch.compile``
    (TorchInductor's kernels: the same H V to rounding, faster per chunk once compiled, a
    compilation per distinct chunk shape in each process; bench/hvp_engines.py says when it
    pays); ``"double_backward"``: g_c = grad L_c(theta) with its graph, once per point chunk
    c, then H_c V = d(g_c . v)/d theta for a chunk of probes by one ``autograd.grad`` batched
    over them (``is_grads_batched``); the graph is kept for later calls when one chunk holds
    every point, and the chunk sizes leave room for it (``memory.hvp_chunking``'s
    ``reverse``; a single vector's chunks are sized for one probe, ``single_point_chunk``,
    so that a Lanczos run keeps its graph where a batch of probes could not); or ``"auto"``,
    one of those by the model and the number of vectors (``auto_engine``). Every engine gives
    the same H V to rounding.
    At most ``probe_chunk`` vectors are pushed through at once, over ``point_chunk`` points
    at a time (``memory.hvp_chunking`` fits both in ``max_bytes``: fewer probes where their
    parameter-sized vectors and one point each would pass it, then all points unless their
    activations would; a ``point_chunk`` given is kept); H V = sum_c H_c V over the point
    chunks c, H_c the Hessian of (1/n) sum_{i in c} l_i (a compiled operator compiles once
    more for a shorter last chunk).
    ``wrt``: names of the parameters H is taken over (default all); the others stay fixed.
    ``device``: that of the parameters (model, ``x`` and ``targets`` must share it).
    """

    def __init__(self, model: nn.Module, x: torch.Tensor, targets: torch.Tensor,
                 method: str = "forward_over_reverse", probe_chunk: int = 16,
                 wrt: list[str] | None = None, loss: losses.Loss = losses.LOSSES["mse"],
                 point_chunk: int | None = None, max_bytes: int = memory.HVP_BYTES):
        if method not in HVP_METHODS:
            raise ValueError(f"unknown HVP method {method!r}; allowed: {list(HVP_METHODS)}")
        self.model, self.x, self.targets = model, x, targets
        self.method = method
        params = {name: p.detach() for name, p in model.named_parameters()}
        unknown = set(wrt or []) - set(params)
        if unknown:
            raise ValueError(f"no parameters named {sorted(unknown)}")
        self.names = list(wrt) if wrt is not None else list(params)
        self.shapes = [params[name].shape for name in self.names]
        self.theta = torch.cat([params[name].reshape(-1) for name in self.names])
        self.fixed = {name: p for name, p in params.items() if name not in self.names}
        self.fixed.update({name: b.detach() for name, b in model.named_buffers()})
        self.dim, self.dtype, self.device = self.theta.numel(), self.theta.dtype, self.theta.device
        self.loss_fn = loss
        self._auto_engines: dict[int, str] = {}     # probes -> auto_engine's choice
        with torch.no_grad():
            self.output_values = self.outputs(self.theta)
        self.probe_chunk, fitted_points = memory.hvp_chunking(
            model, x, self.dim, probe_chunk, max_bytes,
            reverse=self.engine(probe_chunk) == "double_backward")
        self.point_chunk = point_chunk or fitted_points
        self._given_point_chunk, self._max_bytes = point_chunk, max_bytes
        self._kept_graph = None     # (point chunk, theta, gradient with its graph)

    @functools.cached_property
    def single_point_chunk(self) -> int:
        """Points a double-backward pass of a single vector takes at once (its gradient graph
        and one probe within ``max_bytes``): all of them wherever they fit, so that the graph
        is kept, also where a batch of probes needs smaller chunks (a ``point_chunk`` given is
        kept)."""
        return self._given_point_chunk or memory.hvp_chunking(
            self.model, self.x, self.dim, 1, self._max_bytes, reverse=True)[1]

    def _unflatten(self, theta: torch.Tensor) -> dict:
        chunks = torch.split(theta, [math.prod(s) for s in self.shapes])
        return {name: c.reshape(s) for name, c, s in zip(self.names, chunks, self.shapes)}

    def outputs(self, theta: torch.Tensor, x: torch.Tensor | None = None) -> torch.Tensor:
        """f(x_i; theta) for all points (or for the rows of ``x``), shape (n, K)."""
        return functional_call(self.model, {**self.fixed, **self._unflatten(theta)},
                               (self.x if x is None else x,))

    def loss(self, theta: torch.Tensor) -> torch.Tensor:
        """L(theta) = (1/n) sum_i l(f(x_i; theta), y_i), summed over the point chunks."""
        return sum(self._part_loss(theta, x, targets) for x, targets in self.parts())

    def _part_loss(self, theta: torch.Tensor, x: torch.Tensor,
                   targets: torch.Tensor) -> torch.Tensor:
        """(1/n) sum_{i in part} l(f(x_i; theta), y_i): the parts' losses add up to L."""
        return self.loss_fn.per_sample(self.outputs(theta, x), targets).sum() / len(self.x)

    def parts(self, point_chunk: int | None = None):
        """(x, targets) of consecutive chunks of ``point_chunk`` points (default the
        operator's)."""
        chunk = point_chunk or self.point_chunk
        return zip(self.x.split(chunk), self.targets.split(chunk))

    def engine(self, probes: int) -> str:
        """The engine that computes H V for ``probes`` vectors: ``method``, or for ``"auto"``
        ``auto_engine``'s choice (kept per number of vectors: the model does not change
        during the operator's life)."""
        if self.method != "auto":
            return self.method
        if probes not in self._auto_engines:
            self._auto_engines[probes] = auto_engine(self.model, probes)
        return self._auto_engines[probes]

    def apply(self, vectors: torch.Tensor) -> torch.Tensor:
        """H V for V of shape (m, P) -> (m, P): sum over the point chunks c of H_c V, H_c the
        Hessian of (1/n) sum_{i in c} l_i, ``probe_chunk`` rows of V at a time."""
        engine = self.engine(len(vectors))
        if engine == "double_backward":
            return self._reverse_over_reverse(vectors)
        self._kept_graph = None     # its memory is the forward-over-reverse pass's now
        forward_over_reverse = (self._forward_over_reverse if engine == "forward_over_reverse"
                                else functools.partial(_compiled_forward_over_reverse(), self))
        return torch.cat([sum(forward_over_reverse(chunk, x, targets)
                              for x, targets in self.parts())
                          for chunk in vectors.split(self.probe_chunk)])

    def _reverse_over_reverse(self, vectors: torch.Tensor) -> torch.Tensor:
        """H V = sum_c H_c V, H_c v = d(g_c . v)/d theta by a backward pass through the graph
        of g_c = grad L_c (``_gradient_graphs``), ``probe_chunk`` rows of V in one batched
        pass (a single row unbatched, over chunks of ``single_point_chunk`` points)."""
        products = torch.zeros_like(vectors)
        point_chunk = self.single_point_chunk if len(vectors) == 1 else self.point_chunk
        with torch.enable_grad():
            for theta, gradient in self._gradient_graphs(point_chunk):
                for start in range(0, len(vectors), self.probe_chunk):
                    rows = slice(start, start + self.probe_chunk)
                    chunk = vectors[rows]
                    if len(chunk) == 1:
                        (part,) = torch.autograd.grad(gradient, theta, chunk[0],
                                                      retain_graph=True)
                    else:
                        (part,) = torch.autograd.grad(gradient, theta, chunk, retain_graph=True,
                                                      is_grads_batched=True)
                    products[rows] += part.reshape(len(chunk), -1)
        return products

    def _gradient_graphs(self, point_chunk: int):
        """(theta, g_c = grad_theta L_c(theta) with its graph) for each chunk c of
        ``point_chunk`` points, L_c = (1/n) sum_{i in c} l_i. With one chunk for every point its
        graph is kept for later calls of the same chunking (a later product is one backward
        pass, no forward) until a pass of another chunking or engine; with several, each is
        built per call and dropped after its products (one chunk's graph in memory)."""
        if self._kept_graph is not None and self._kept_graph[0] == point_chunk:
            yield self._kept_graph[1:]
            return
        self._kept_graph = None
        for x, targets in self.parts(point_chunk):
            theta = self.theta.detach().clone().requires_grad_(True)
            (gradient,) = torch.autograd.grad(self._part_loss(theta, x, targets), theta,
                                              create_graph=True)
            if point_chunk >= len(self.x):
                self._kept_graph = (point_chunk, theta, gradient)
            yield theta, gradient

    def _forward_over_reverse(self, vectors: torch.Tensor, x: torch.Tensor,
                              targets: torch.Tensor) -> torch.Tensor:
        gradient = grad(self._part_loss)
        return vmap(lambda v: jvp(lambda t: gradient(t, x, targets), (self.theta,), (v,))[1])(
            vectors)


@functools.cache
def _compiled_forward_over_reverse():
    """``HessianOperator._forward_over_reverse`` through ``torch.compile``, one for every
    operator of the process (made on first use): TorchDynamo keys its graphs on the code and
    guards on the shapes, so the operators of later checkpoints reuse the first one's graphs."""
    return torch.compile(HessianOperator._forward_over_reverse)


class GaussNewtonOperator:
    """v -> G v, G = (1/n) sum_i J_i^T M_i J_i, at the parameters and points of ``hessian``.

    J_i = d f(x_i) / d theta over the parameters H is taken over, M_i = the loss's output
    Hessian at f(x_i) (I for 1/2-MSE; diag(p_i) - p_i p_i^T for cross-entropy), so G is H
    without the residual term (1/n) sum_i sum_c (dl/df_c) grad^2 f_c(x_i). The points are
    taken in ``hessian``'s chunks of ``point_chunk``, ``probe_chunk`` vectors at a time.
    """

    def __init__(self, hessian: HessianOperator):
        self.hessian = hessian
        self.dim, self.dtype, self.device = hessian.dim, hessian.dtype, hessian.device

    def _parts(self):
        """(x, outputs) of consecutive chunks of ``point_chunk`` points."""
        chunk = self.hessian.point_chunk
        return zip(self.hessian.x.split(chunk), self.hessian.output_values.split(chunk))

    def _part(self, x: torch.Tensor, values: torch.Tensor):
        """V -> G_c V for the point chunk c (inputs ``x``, outputs ``values``),
        G_c = (1/n) sum_{i in c} J_i^T M_i J_i: a forward-mode JVP of the outputs (J v, batched
        over the rows of V by ``vmap``), the loss's output Hessians M_i at the outputs, and one
        reverse-mode VJP (J^T) whose pullback is built once for every V the part is applied
        to."""
        hessian = self.hessian

        def outputs(theta):
            return hessian.outputs(theta, x)

        _, pullback = vjp(outputs, hessian.theta)
        output_hessians = hessian.loss_fn.output_hessian(values)

        def apply(vectors: torch.Tensor) -> torch.Tensor:
            tangents = vmap(lambda v: jvp(outputs, (hessian.theta,), (v,))[1])(vectors)
            weighted = torch.einsum("nkl,mnl->mnk", output_hessians, tangents)
            return vmap(lambda w: pullback(w)[0])(weighted) / len(hessian.x)

        return apply

    def apply(self, vectors: torch.Tensor) -> torch.Tensor:
        """G V for V of shape (m, P): G v = (1/n) sum_i J_i^T M_i (J_i v) = sum_c G_c v over the
        point chunks c (``_part``), ``probe_chunk`` rows of V at a time."""
        products = torch.zeros_like(vectors)
        probe_chunk = self.hessian.probe_chunk
        for x, values in self._parts():
            part = self._part(x, values)
            for start in range(0, len(vectors), probe_chunk):
                rows = slice(start, start + probe_chunk)
                products[rows] += part(vectors[rows])
        return products

    def per_sample_quadratic(self, vectors: torch.Tensor) -> torch.Tensor:
        """v^T G_i v = (J_i v)^T M_i (J_i v) per probe row v and sample i, shape (m, n): one
        forward-mode JVP of the outputs per probe (M_i = I for 1/2-MSE)."""
        hessian = self.hessian

        def quadratic(v, x, values):
            tangent = jvp(lambda theta: hessian.outputs(theta, x), (hessian.theta,), (v,))[1]
            return hessian.loss_fn.output_quadratic(values, tangent)

        parts = list(self._parts())
        return torch.cat([torch.cat([vmap(quadratic, in_dims=(0, None, None))(chunk, x, values)
                                     for x, values in parts], dim=1)
                          for chunk in vectors.split(hessian.probe_chunk)])

    def quadratic(self, vectors: torch.Tensor) -> torch.Tensor:
        """v^T G v = (1/n) sum_i (J_i v)^T M_i (J_i v) for each row v."""
        return self.per_sample_quadratic(vectors).mean(1)
