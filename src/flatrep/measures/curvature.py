"""Curvature of the training loss: Hessian-vector products and the estimators built on them.

The loss is L(theta) = (1/n) sum_i l(f(x_i), y_i) in the measure convention of
``flatrep.losses`` (1/2-MSE by default, L = (1/2n) sum_i ||f(x_i) - y_i||^2, whose Hessian is
K/2 times torch MSELoss's; or cross-entropy), over a fixed set of training points, with
the model in eval mode. ``HessianOperator`` applies H to a batch of vectors by
forward-over-reverse AD (``jvp`` of ``grad``, probes batched with ``vmap``; optionally through
``torch.compile``) or by double backward; every estimator only sees ``operator(V)`` (rows of V
are vectors), ``operator.dim``,
``operator.dtype`` and ``operator.device``, so any symmetric linear operator with these works.

Devices: an operator lives where its model and points are
(``flatrep.cube.measuring.measure_checkpoints`` picks the device, ``measure.device``). Random
probes and start vectors are always drawn on the CPU from the caller's seeded ``torch.Generator``
and then moved to ``operator.device``, so the same seed gives the same probes on every device, and
the results on a GPU are the CPU results up to floating-point rounding.

* Hutchinson: Tr H = E[v^T H v] for Rademacher v (Hutchinson 1989); SE = std/sqrt(m).
* Frobenius norm: ||H||_F^2 = E[||H v||^2] from the same probes.
* Effective rank Tr(H)^2 / ||H||_F^2 from the same probes.
* Hutch++ (Meyer, Musco, Musco & Woodruff 2021, Alg. 1): exact trace on the range of H S,
  Hutchinson on its orthogonal complement; SE from the complement's probes.
* Control variate: Tr H = Tr G + Tr(H - G) with G = (1/n) sum_i J_i^T M_i J_i the
  (generalised) Gauss-Newton matrix, whose trace the per-sample Jacobians give exactly;
  Hutchinson estimates only the residual term (1/n) sum_i sum_c (dl/df_c) grad^2 f_c(x_i)
  (Chen et al. B7) as v^T H v - v^T G v, so for MSE its variance vanishes at interpolation.
* Residual Frobenius norm: ||H - G||_F^2 = E[||H v - G v||^2] on the same probes, G v =
  (1/n) sum_i J_i^T M_i (J_i v) by one JVP and one VJP of the outputs (Ma & Ying's B1: the
  ratio ||H - G||_F / ||H||_F -> 0 at an MSE interpolation).
* Lanczos with full reorthogonalisation lives in ``flatrep.measures.krylov``.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch
from torch import nn
from torch.func import functional_call, grad, jvp, vjp, vmap
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from flatrep import losses


#: How ``HessianOperator`` computes H V (``measure.curvature.hvp``).
HVP_METHODS = ("forward_over_reverse", "forward_over_reverse_compiled", "double_backward")
#: Default bound on the memory of one HVP pass (``hvp_chunking``).
HVP_BYTES = 1 << 30
#: Copies of a point's activations a forward-over-reverse pass holds per probe: primal and
#: tangent, each saved for the backward pass and met by its cotangent (an estimate).
ACTIVATION_COPIES = 4
#: Parameter-sized vectors a pass holds per probe, whatever its points: the chunk's H v, its
#: running sum over the point chunks, and the gradient's tangent before it is flattened (an
#: estimate; bench/measure_memory.py measures the whole rise).
PARAMETER_COPIES = 3


class HessianOperator:
    """v -> H v for the loss of ``model`` on ``(x, targets)``, parameters flattened.

    ``loss``: a ``flatrep.losses.Loss`` (default 1/2-MSE; ``targets`` as its ``targets`` makes
    them: float (n, K) for MSE, int labels (n,) for cross-entropy).

    ``method`` (``HVP_METHODS``): ``"forward_over_reverse"`` (``jvp`` of ``grad``, batched by
    ``vmap``); ``"forward_over_reverse_compiled"``, the same through ``torch.compile``
    (TorchInductor's kernels: the same H V to rounding, faster per chunk once compiled, a
    compilation per distinct chunk shape in each process; bench/hvp_compile.py says when it
    pays); or ``"double_backward"`` (one ``autograd.grad`` of the gradient per vector).
    At most ``probe_chunk`` vectors are pushed through at once, over ``point_chunk`` points
    at a time (``hvp_chunking`` fits both in ``max_bytes``: fewer probes where their
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
                 point_chunk: int | None = None, max_bytes: int = HVP_BYTES):
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
        with torch.no_grad():
            self.output_values = self.outputs(self.theta)
        self.probe_chunk, fitted_points = hvp_chunking(model, x, self.dim, probe_chunk,
                                                       max_bytes)
        self.point_chunk = point_chunk or fitted_points

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

    def parts(self):
        """(x, targets) of consecutive chunks of ``point_chunk`` points."""
        return zip(self.x.split(self.point_chunk), self.targets.split(self.point_chunk))

    def __call__(self, vectors: torch.Tensor) -> torch.Tensor:
        """H V for V of shape (m, P) -> (m, P): sum over the point chunks c of H_c V, H_c the
        Hessian of (1/n) sum_{i in c} l_i, ``probe_chunk`` rows of V at a time."""
        return torch.cat([sum(self._apply(chunk, x, targets) for x, targets in self.parts())
                          for chunk in vectors.split(self.probe_chunk)])

    def _apply(self, vectors: torch.Tensor, x: torch.Tensor,
               targets: torch.Tensor) -> torch.Tensor:
        if self.method == "forward_over_reverse":
            return self._forward_over_reverse(vectors, x, targets)
        if self.method == "forward_over_reverse_compiled":
            return _compiled_forward_over_reverse()(self, vectors, x, targets)
        theta = self.theta.clone().requires_grad_(True)
        (g,) = torch.autograd.grad(self._part_loss(theta, x, targets), theta, create_graph=True)
        rows = [torch.autograd.grad(g, theta, v, retain_graph=True)[0] for v in vectors]
        return torch.stack(rows).detach()

    def _forward_over_reverse(self, vectors: torch.Tensor, x: torch.Tensor,
                              targets: torch.Tensor) -> torch.Tensor:
        gradient = grad(self._part_loss)
        return vmap(lambda v: jvp(lambda t: gradient(t, x, targets), (self.theta,), (v,))[1])(
            vectors)


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
                 max_bytes: int = HVP_BYTES) -> tuple[int, int]:
    """(probes, points) of one HVP pass over ``dim`` parameters within ``max_bytes``.

    A pass holds about PARAMETER_COPIES * dim floats a probe, whatever its points, and
    ACTIVATION_COPIES * A floats a probe and point (A = ``activation_floats``). Probes:
    ``probe_chunk``, fewer where even one point each would pass ``max_bytes`` (at least one);
    points: all of ``x``, fewer where their activations would pass what the probes' vectors
    leave (at least one).
    """
    itemsize = x.element_size()
    probe_bytes = PARAMETER_COPIES * dim * itemsize
    point_bytes = ACTIVATION_COPIES * activation_floats(model, x) * itemsize
    probes = max(1, min(probe_chunk, max_bytes // max(probe_bytes + point_bytes, 1)))
    points = (max_bytes - probes * probe_bytes) // max(probes * point_bytes, 1)
    return probes, max(1, min(len(x), points))


@functools.cache
def _compiled_forward_over_reverse():
    """``HessianOperator._forward_over_reverse`` through ``torch.compile``, one for every
    operator of the process (made on first use): TorchDynamo keys its graphs on the code and
    guards on the shapes, so the operators of later checkpoints reuse the first one's graphs."""
    return torch.compile(HessianOperator._forward_over_reverse)


def rademacher(m: int, dim: int, generator: torch.Generator, dtype=torch.float64,
               device: torch.device | None = None) -> torch.Tensor:
    """m Rademacher vectors (entries +-1 with probability 1/2), shape (m, dim), on ``device``.

    The bits are drawn on the CPU from the CPU ``generator`` (the same vectors on every
    device), then moved.
    """
    bits = torch.randint(0, 2, (m, dim), generator=generator)
    return (2 * bits - 1).to(device=device, dtype=dtype)


@dataclass(frozen=True)
class Estimate:
    value: float
    standard_error: float


def mean_and_se(samples: torch.Tensor) -> Estimate:
    """Sample mean and its standard error std/sqrt(m) (unbiased std).

    The standard error of a single sample (m = 1) is undefined and returned as NaN.
    """
    m = samples.numel()
    se = samples.std(unbiased=True).item() / math.sqrt(m) if m > 1 else math.nan
    return Estimate(samples.mean().item(), se)


def hutchinson(operator, probes: int, generator: torch.Generator) -> dict:
    """Tr H and ||H||_F with standard errors, and the effective rank, from ``probes`` HVPs.

    ``fro`` is sqrt of the mean of ||H v||^2, with SE by the delta method (SE / (2 ||H||_F)).
    ``effective_rank`` is Tr(H)^2 / ||H||_F^2 from the same probes.
    Degenerate case: when every product H v is 0 (e.g. H = 0), the samples ||H v||^2 are all
    0, and ``fro`` = 0 with SE 0 (no spread among the probes; the delta method's 0/0 is not
    used) and ``effective_rank`` = 0 (the rank of the zero matrix; the trace estimate is then
    0 too).
    The probes and their products are returned too (``vectors``, ``products``) for reuse.
    """
    v = rademacher(probes, operator.dim, generator, operator.dtype, operator.device)
    hv = operator(v)
    trace = mean_and_se((v * hv).sum(1))
    squares = squared_frobenius(hv)
    fro = frobenius(squares)
    rank = trace.value ** 2 / squares.value if fro.value > 0 else 0.0
    return {"trace": trace, "fro": fro, "effective_rank": rank, "vectors": v, "products": hv}


def squared_frobenius(products: torch.Tensor) -> Estimate:
    """||A||_F^2 = E ||A v||^2, estimated by the mean of ||A v||^2 over the products A V of
    Rademacher probes V (rows), with its standard error."""
    return mean_and_se(products.pow(2).sum(1))


def frobenius(squares: Estimate) -> Estimate:
    """||A||_F = sqrt(||A||_F^2) from ``squared_frobenius``'s estimate, SE by the delta method,
    SE(||A v||^2 mean) / (2 ||A||_F); 0 with SE 0 when every product is 0 (no spread; the
    delta method's 0/0 is not used)."""
    fro = math.sqrt(max(squares.value, 0.0))
    return Estimate(fro, squares.standard_error / (2 * fro) if fro > 0 else 0.0)


def per_sample_quadratic(operator: HessianOperator, vectors: torch.Tensor) -> torch.Tensor:
    """v^T G_i v = (J_i v)^T M_i (J_i v) per probe row v and sample i, shape (m, n): one
    forward-mode JVP of the outputs per probe (M_i = I for 1/2-MSE)."""
    def quadratic(v, x, values):
        tangent = jvp(lambda theta: operator.outputs(theta, x), (operator.theta,), (v,))[1]
        return operator.loss_fn.output_quadratic(values, tangent)

    parts = list(zip(operator.x.split(operator.point_chunk),
                     operator.output_values.split(operator.point_chunk)))
    return torch.cat([torch.cat([vmap(quadratic, in_dims=(0, None, None))(chunk, x, values)
                                 for x, values in parts], dim=1)
                      for chunk in vectors.split(operator.probe_chunk)])


def gauss_newton_quadratic(operator: HessianOperator, vectors: torch.Tensor) -> torch.Tensor:
    """v^T G v = (1/n) sum_i (J_i v)^T M_i (J_i v) for each row v."""
    return per_sample_quadratic(operator, vectors).mean(1)


def _gauss_newton_part(operator: HessianOperator, x: torch.Tensor, values: torch.Tensor):
    """V -> G_c V for the point chunk c (inputs ``x``, outputs ``values``),
    G_c = (1/n) sum_{i in c} J_i^T M_i J_i: a forward-mode JVP of the outputs (J v, batched
    over the rows of V by ``vmap``), the loss's output Hessians M_i at the outputs, and one
    reverse-mode VJP (J^T) whose pullback is built once for every V the part is applied to."""
    def outputs(theta):
        return operator.outputs(theta, x)

    _, pullback = vjp(outputs, operator.theta)
    output_hessians = operator.loss_fn.output_hessian(values)

    def apply(vectors: torch.Tensor) -> torch.Tensor:
        tangents = vmap(lambda v: jvp(outputs, (operator.theta,), (v,))[1])(vectors)
        weighted = torch.einsum("nkl,mnl->mnk", output_hessians, tangents)
        return vmap(lambda w: pullback(w)[0])(weighted) / len(operator.x)

    return apply


def gauss_newton_products(operator: HessianOperator, vectors: torch.Tensor) -> torch.Tensor:
    """G V for V of shape (m, P): G v = (1/n) sum_i J_i^T M_i (J_i v) = sum_c G_c v over the
    point chunks c (``_gauss_newton_part``), ``probe_chunk`` rows of V at a time."""
    products = torch.zeros_like(vectors)
    for x, values in zip(operator.x.split(operator.point_chunk),
                         operator.output_values.split(operator.point_chunk)):
        part = _gauss_newton_part(operator, x, values)
        for start in range(0, len(vectors), operator.probe_chunk):
            rows = slice(start, start + operator.probe_chunk)
            products[rows] += part(vectors[rows])
    return products


def residual_frobenius(hessian_products: torch.Tensor,
                       gauss_newton_products: torch.Tensor) -> Estimate:
    """||H - G||_F by Hutchinson on (H - G)^2 over Rademacher probes V from their products
    H V and G V: sqrt(mean_v ||H v - G v||^2), SE by the delta method (``frobenius``)."""
    return frobenius(squared_frobenius(hessian_products - gauss_newton_products))


def control_variate_trace(operator: HessianOperator, gauss_newton_trace: float,
                          vectors: torch.Tensor, products: torch.Tensor | None = None,
                          gauss_newton_products: torch.Tensor | None = None) -> Estimate:
    """Tr H = Tr G (exact, given) + Hutchinson on H - G over the Rademacher probes ``vectors``.

    ``products`` (H V), when given, are reused instead of recomputed (e.g. from ``hutchinson``);
    ``gauss_newton_products`` (G V), when given, give v^T G v = v . (G v) without the JVPs of
    ``gauss_newton_quadratic``.
    """
    products = operator(vectors) if products is None else products
    quadratic = (gauss_newton_quadratic(operator, vectors) if gauss_newton_products is None
                 else (vectors * gauss_newton_products).sum(1))
    rest = mean_and_se((vectors * products).sum(1) - quadratic)
    return Estimate(gauss_newton_trace + rest.value, rest.standard_error)


def hutch_plus_plus(operator, matvecs: int, generator: torch.Generator) -> Estimate:
    """Hutch++ trace with ``matvecs`` HVPs (a third each for sketch, projection, residual).

    Tr H = Tr(Q^T H Q) + Tr((I - QQ^T) H (I - QQ^T)) with Q an orthonormal basis of H S; the
    second term by Hutchinson on projected Rademacher vectors, whose SE is returned. With
    ``matvecs`` < 6 that term has a single probe and its SE is NaN (``mean_and_se``).
    """
    k = max(matvecs // 3, 1)
    dtype, device = operator.dtype, operator.device
    sketch = rademacher(k, operator.dim, generator, dtype, device)
    q, _ = torch.linalg.qr(operator(sketch).T)           # (P, k)
    exact = (q * operator(q.T).T).sum()
    g = rademacher(k, operator.dim, generator, dtype, device)
    g = g - (g @ q) @ q.T                                 # project out range(Q)
    residual = (g * operator(g)).sum(1)
    rest = mean_and_se(residual)
    return Estimate(exact.item() + rest.value, rest.standard_error)
