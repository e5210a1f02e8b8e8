"""Per-sample Jacobians by ``torch.func`` and the measures built from their spectra.

For each input x_i one reverse-mode Jacobian (``vmap`` over samples of ``jacrev``, chunked)
gives, at once,

* J_x(x_i) = df/dx in R^{K x d} (Chen et al. §2, M1-M3);
* df/dh_l for the input h_l of every Linear/Conv layer (M4, NMLS);
* df/dtheta for every parameter, reduced to ||grad_theta f(x_i)||_F^2 (sharpness, §1) and
  ||grad_{W_l} f(x_i)||_F per layer (the bound factors of B0, B4, B5).
"""

from __future__ import annotations

import functools
import math

import torch
from torch import nn
from torch.func import functional_call, jacrev, jvp, vjp, vmap

from flatrep.measures import layers
from flatrep.measures.memory import activation_floats

#: The most bytes the parameter Jacobian of one chunk, chunk x K x P values, may take in the
#: ``generic`` method; a larger one is never formed (``_blocked_generic_jacobians``).
PARAM_JACOBIAN_BYTES = 1 << 30
#: The per-sample K x K Gram matrices ``per_sample_jacobians`` can return.
GRAMS = ("param_gram", "param_gram_adaptive")


def per_sample_jacobians(model: nn.Module, x: torch.Tensor, chunk_size: int = 32,
                         method: str = "auto", moments: tuple[int, ...] = (1, 2),
                         max_bytes: int = PARAM_JACOBIAN_BYTES,
                         grams: tuple[str, ...] = GRAMS, input_jacobians: bool = True) -> dict:
    """Exact per-sample Jacobians of the model output, reduced to what the measures need.

    Returns a dict of tensors with leading dim n = len(x):
    ``input`` (n, K, d); ``layer`` list over layers of (n, K, d_l) = df/dh_l;
    ``layer_input_norm`` (n, L) = ||h_l(x_i)||; ``param_gram`` (n, K, K) = J_i J_i^T with
    J_i = df(x_i)/dtheta over all parameters; ``param_gram_adaptive`` (n, K, K) =
    J_i D^2 J_i^T with D = diag|theta| (elementwise adaptive sharpness); ``param_sq`` (n,) =
    ||grad_theta f(x_i)||_F^2 = Tr(J_i J_i^T); ``weight_grad_norm`` (n, L) =
    ||grad_{W_l} f(x_i)||_F; ``param_moments`` (n, len(moments)) =
    sum_c sum_p (df_c/dtheta_p)^{2k} for each k in ``moments`` (Ma & Ying's g_W(k)^{2k};
    ``moments=()`` skips them). Only the Grams named in ``grams`` are computed: each costs
    K^2 P products a sample on the dense generic way and K JVPs on the blocked one below, and
    ``param_sq`` needs neither.
    ``input_jacobians=False`` leaves out ``input`` and ``layer``: no chunk method keeps them
    (the dense generic one does not form them; the blocked one's would otherwise stay until
    its chunk ends, 4.6 GB for 32 samples of VGG-16-BN). The curvature suite needs only the
    Grams, and over its 1024 points the K (d + sum_l d_l) floats a sample
    (``input_jacobian_bytes``) would take 14 GiB for the CIFAR-100 CNN and 145 GiB for
    VGG-16-BN in float64.

    ``chunk_size``: samples a chunk at most (the vmapped passes' fixed cost is paid per chunk:
    the curvature core passes all its points), fewer where memory says so
    (``linear_chunking``, ``generic_chunking``).
    ``method="linear"`` (chosen by ``auto`` when every parameter belongs to a measured
    ``nn.Linear``) never forms a parameter Jacobian: with z_l = W_l h_l + b_l and
    g_c = df_c/dz_l, df_c/dW_ja = g_cj h_a, so ||grad_{W_l} f||_F^2 = ||df/dz_l||_F^2 ||h_l||^2,
    ||grad_{b_l} f||^2 = ||df/dz_l||_F^2, the Gram entries are
    sum_l g_c . g_c' (||h_l||^2 + 1), the adaptive ones sum_j g_cj g_c'j ((W_l^2) h_l^2 + b_l^2)_j,
    and sum_{j,a} (g_cj h_a)^{2k} = (sum_j g_cj^{2k}) (sum_a h_a^{2k}).
    ``method="generic"`` differentiates with respect to every parameter and every layer input
    (any architecture). Where one chunk's parameter Jacobian would take more than ``max_bytes``
    it takes fewer samples a chunk, down to one; where even one sample's would (K = 100
    outputs of VGG-16-BN's 15M parameters: 12 GB in float64), it switches to
    ``_blocked_generic_jacobians``, which never holds more than ``max_bytes`` of it.
    """
    unknown = set(grams) - set(GRAMS)
    if unknown:
        raise ValueError(f"unknown Gram matrices {sorted(unknown)}; choose from {GRAMS}")
    if method == "auto":
        method = "linear" if only_linear_parameters(model) else "generic"
    compute = {"linear": _linear_jacobians, "generic": _generic_jacobians}[method]
    if method == "linear":
        chunk_size = min(chunk_size, linear_chunking(model, x, max_bytes))
    if method == "generic":
        with torch.no_grad():
            num_outputs = model(x[:1]).shape[1]
        chunk_size, rows = generic_chunking(num_outputs, row_bytes(model, x), chunk_size,
                                            max_bytes)
        if rows is not None:
            compute = functools.partial(_blocked_generic_jacobians, rows=rows)
    inputs = layers.layer_inputs(model, x)
    chunks = [compute(model, x[start:start + chunk_size],
                      [h[start:start + chunk_size] for h in inputs], moments, grams,
                      input_jacobians)
              for start in range(0, len(x), chunk_size)]
    jacobians = {"input": torch.cat([c["input"] for c in chunks]),
                 "layer": [torch.cat([c["layer"][l] for c in chunks])
                           for l in range(len(inputs))]} if input_jacobians else {}
    return {
        **jacobians,
        **{key: torch.cat([c[key] for c in chunks]) for key in grams},
        "param_sq": torch.cat([c["param_sq"] for c in chunks]),
        "weight_grad_norm": torch.cat([c["weight_grad_norm"] for c in chunks]),
        "param_moments": torch.cat([c["param_moments"] for c in chunks]),
        "layer_input_norm": torch.stack([h.reshape(len(x), -1).norm(dim=1) for h in inputs], 1),
    }


def linear_chunking(model: nn.Module, x: torch.Tensor, max_bytes: int) -> int:
    """Samples one chunk of the ``linear`` method holds within ``max_bytes``: its forward pass
    and the K cotangents of x and of every measured layer's input h_l and output z_l,
    (K + 1) (d + sum_l (d_l + m_l)) floats a sample in x's dtype; at least one."""
    inputs = layers.layer_inputs(model, x[:1])
    with torch.no_grad():
        num_outputs = model(x[:1]).shape[1]
    outputs = sum(module.out_features for _, module in layers.measured_layers(model))
    floats = x[0].numel() + sum(h[0].numel() for h in inputs) + outputs
    return max(1, max_bytes // ((num_outputs + 1) * floats * x.element_size()))


def input_jacobian_bytes(model: nn.Module, x: torch.Tensor) -> int:
    """Bytes of one sample's df/dx and df/dh_l over the measured layers (the ``input`` and
    ``layer`` entries of ``per_sample_jacobians``): K (d + sum_l d_l) floats of x's dtype."""
    inputs = layers.layer_inputs(model, x[:1])
    with torch.no_grad():
        num_outputs = model(x[:1]).shape[1]
    floats = x[0].numel() + sum(h[0].numel() for h in inputs)
    return num_outputs * floats * x.element_size()


def row_bytes(model: nn.Module, x: torch.Tensor) -> int:
    """Bytes one row of a sample's parameter Jacobian costs the generic method: the row,
    P floats, and the cotangents of the activations its VJP pulls back through, A floats
    (``memory.activation_floats``; they outweigh P for the transformer), in x's dtype."""
    num_params = sum(p.numel() for p in model.parameters())
    return (num_params + activation_floats(model, x)) * x.element_size()


def generic_chunking(num_outputs: int, bytes_a_row: int, chunk_size: int,
                     max_bytes: int) -> tuple[int, int | None]:
    """(samples a chunk, rows a block) of the generic method within ``max_bytes``, for K =
    ``num_outputs`` and one parameter-Jacobian row costing ``bytes_a_row`` (``row_bytes``):
    the dense way on at most max_bytes // (K bytes_a_row) samples (rows None) while one
    sample's K rows fit, else one sample at a time in blocks of
    max(1, max_bytes // bytes_a_row) rows."""
    sample_bytes = num_outputs * bytes_a_row
    if sample_bytes <= max_bytes:
        return min(chunk_size, max_bytes // sample_bytes), None
    return chunk_size, max(1, max_bytes // bytes_a_row)


def only_linear_parameters(model: nn.Module) -> bool:
    """True when every parameter is the weight or bias of a measured nn.Linear layer."""
    linear = {id(p) for _, module in layers.measured_layers(model)
              if isinstance(module, nn.Linear) for p in module.parameters()}
    return all(id(p) in linear for p in model.parameters())


def _columns(columns: list[torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """Per-sample columns stacked to (n, len(columns)); (n, 0) when there are none."""
    return torch.stack(columns, dim=1) if columns else x.new_zeros(len(x), 0)


def _frozen(model: nn.Module) -> dict:
    return {name: t.detach() for name, t in [*model.named_parameters(), *model.named_buffers()]}


def _linear_jacobians(model: nn.Module, x: torch.Tensor, inputs: list[torch.Tensor],
                      moments: tuple[int, ...], grams: tuple[str, ...] = GRAMS,
                      input_jacobians: bool = True) -> dict:
    """One chunk: df/dx and df/dz_l by reverse mode, the rest by the Linear closed forms
    (df/dx and df/dh_l returned only with ``input_jacobians``).

    One forward pass over the chunk and K vector-Jacobian products (basis vectors e_c batched
    by vmap) with respect to x and to zero perturbations of every layer input h_l and output
    z_l: row i of each pulled-back gradient is sample i's, because samples do not interact in
    an eval-mode forward pass. ``inputs`` are the layer inputs h_l of the chunk's samples.
    """
    state, into, out_of = _frozen(model), {}, {}
    measured = [module for _, module in layers.measured_layers(model)]
    n = len(x)
    zero_in = tuple(torch.zeros_like(h) for h in inputs)
    zero_out = tuple(torch.zeros(n, module.out_features, dtype=x.dtype, device=x.device)
                     for module in measured)

    def output(x_batch, deltas_in, deltas_out):
        into["deltas"], out_of["deltas"] = deltas_in, deltas_out
        return functional_call(model, state, (x_batch,))

    with layers.perturbed_inputs(model, into), layers.perturbed_outputs(model, out_of):
        out, pullback = vjp(output, x, zero_in, zero_out)
        k = out.shape[1]
        basis = torch.eye(k, dtype=out.dtype, device=out.device)[:, None, :].expand(k, n, k)
        d_input, d_layers, d_outputs = vmap(pullback)(basis)  # leading dim: output c
    d_outputs = [dz.transpose(0, 1) for dz in d_outputs]      # (n, K, m_l)
    h_sq = torch.stack([h.reshape(n, -1).pow(2).sum(1) for h in inputs], 1)
    dz_sq = torch.stack([dz.pow(2).sum((1, 2)) for dz in d_outputs], 1)
    has_bias = torch.tensor([float(module.bias is not None) for module in measured],
                            dtype=x.dtype, device=x.device)
    gram = sum(torch.einsum("nkj,nlj->nkl", dz, dz) * (h_sq[:, l] + has_bias[l])[:, None, None]
               for l, dz in enumerate(d_outputs))
    adaptive = ({"param_gram_adaptive": sum(
        torch.einsum("nkj,nlj,nj->nkl", dz, dz, _adaptive_weights(module, h))
        for module, dz, h in zip(measured, d_outputs, inputs))}
        if "param_gram_adaptive" in grams else {})
    param_moments = _columns([
        sum((dz.pow(2 * p).sum(2) * (h.reshape(n, -1).pow(2 * p).sum(1, keepdim=True) + bias))
            .sum(1) for dz, h, bias in zip(d_outputs, inputs, has_bias))
        for p in moments], x)
    jacobians = {"input": d_input.transpose(0, 1).reshape(n, k, -1),
                 "layer": [dh.transpose(0, 1).reshape(n, k, -1) for dh in d_layers]}
    return {**(jacobians if input_jacobians else {}),
            "param_moments": param_moments,
            "param_gram": gram, **adaptive,
            "param_sq": gram.diagonal(dim1=1, dim2=2).sum(-1),
            "weight_grad_norm": (dz_sq * h_sq).sqrt()}


def _adaptive_weights(module: nn.Linear, h: torch.Tensor) -> torch.Tensor:
    """sum_a W_ja^2 h_a^2 + b_j^2 per sample and output unit j of a Linear layer, (n, m)."""
    weights = h.reshape(len(h), -1).pow(2) @ module.weight.detach().pow(2).T
    return weights if module.bias is None else weights + module.bias.detach().pow(2)


def _single_sample_output(model: nn.Module, inputs: list[torch.Tensor]):
    """What the generic methods differentiate: the detached parameters, the names of the
    measured layers' weights, zero perturbations of one sample's layer inputs, the holder that
    ``layers.perturbed_inputs`` reads them from, and ``output(params, x_i, deltas)`` = f(x_i)
    with delta_l added to the input of layer l (inside that context)."""
    params = {name: p.detach() for name, p in model.named_parameters()}
    buffers = {name: b.detach() for name, b in model.named_buffers()}
    weight_names = [f"{name}.weight" if name else "weight"
                    for name, _ in layers.measured_layers(model)]
    zero = tuple(torch.zeros_like(h[0]) for h in inputs)
    holder: dict = {}

    def output(params_, x_single, deltas):
        holder["deltas"] = tuple(d.unsqueeze(0) for d in deltas)
        return functional_call(model, (params_, buffers), (x_single.unsqueeze(0),)).squeeze(0)

    return params, weight_names, zero, holder, output


def _generic_jacobians(model: nn.Module, x: torch.Tensor, inputs: list[torch.Tensor],
                       moments: tuple[int, ...], grams: tuple[str, ...] = GRAMS,
                       input_jacobians: bool = True) -> dict:
    """One chunk: reverse-mode Jacobians with respect to the parameters, and with
    ``input_jacobians`` to x and every layer input."""
    params, weight_names, zero, holder, output = _single_sample_output(model, inputs)
    argnums = (0, 1, 2) if input_jacobians else (0,)
    with layers.perturbed_inputs(model, holder):
        d_params, *d_inputs = vmap(jacrev(output, argnums=argnums),
                                   in_dims=(None, 0, None))(params, x, zero)
    n = len(x)
    jacobians = {"input": d_inputs[0].reshape(n, d_inputs[0].shape[1], -1),
                 "layer": [j.reshape(n, j.shape[1], -1) for j in d_inputs[1]]
                 } if input_jacobians else {}

    def gram(key: str) -> torch.Tensor:
        """J_i J_i^T, or J_i D^2 J_i^T with D = diag|theta|: K^2 P products a sample."""
        if key == "param_gram":
            return sum(_gram(j, n) for j in d_params.values())
        return sum(_gram(j * params[name].abs(), n) for name, j in d_params.items())

    sums = _power_sums(d_params, weight_names, moments, leading=1)
    return {**jacobians, **{key: gram(key) for key in grams},
            "param_sq": sums["param_sq"], "param_moments": sums["moments"],
            "weight_grad_norm": sums["weight_sq"].sqrt()}


def _blocked_generic_jacobians(model: nn.Module, x: torch.Tensor, inputs: list[torch.Tensor],
                               moments: tuple[int, ...], grams: tuple[str, ...] = GRAMS,
                               input_jacobians: bool = True, *, rows: int) -> dict:
    """``_generic_jacobians`` without the parameter Jacobian J_i = df(x_i)/dtheta in memory:
    per sample, ``rows`` of its rows at a time.

    Rows: J_i^T e_c for a block of output basis vectors e_c, one vector-Jacobian product each
    (batched by vmap), which also give the rows of df/dx and df/dh_l (kept only with
    ``input_jacobians``); they add up to ||grad_{W_l} f||_F^2, ||J_i||_F^2 (``param_sq``) and
    the moments sum_c sum_p (J_i)_cp^{2k} (``_row_block``, one block in memory at a time).
    Gram columns, only for the Grams named in ``grams``: J_i J_i^T e_c = J_i (J_i^T e_c) and
    J_i D^2 J_i^T e_c, one Jacobian-vector product each with the rows as tangents. The Grams are
    symmetrised, (G + G^T) / 2, since the two products round differently. Cost: K VJPs and
    K JVPs per Gram per sample, against K VJPs for the dense way.
    """
    params, weight_names, zero, holder, output = _single_sample_output(model, inputs)
    samples = []
    with layers.perturbed_inputs(model, holder):
        for x_single in x:
            out, pullback = vjp(output, params, x_single, zero)

            def push(tangent, x_single=x_single):
                """J_i t for a parameter tangent t (a JVP)."""
                return jvp(lambda p_: output(p_, x_single, zero), (params,), (tangent,))[1]

            eye = torch.eye(out.shape[0], dtype=out.dtype, device=out.device)
            blocks = [_row_block(pullback, push, basis, params, weight_names, moments, grams,
                                 input_jacobians) for basis in eye.split(rows)]
            jacobians = {"input": torch.cat([b["input"] for b in blocks]),
                         "layer": [torch.cat(layer_rows)
                                   for layer_rows in zip(*(b["layer"] for b in blocks))]
                         } if input_jacobians else {}
            columns = {key: torch.cat([b[key] for b in blocks]) for key in grams}
            samples.append({
                **jacobians,
                **{key: (gram + gram.T) / 2 for key, gram in columns.items()},
                "param_sq": sum(b["param_sq"] for b in blocks),
                "param_moments": sum(b["moments"] for b in blocks),
                "weight_grad_norm": sum(b["weight_sq"] for b in blocks).sqrt()})
    return {key: ([torch.stack(block) for block in zip(*(s[key] for s in samples))]
                  if key == "layer" else torch.stack([s[key] for s in samples]))
            for key in samples[0]}


def _row_block(pullback, push, basis: torch.Tensor, params: dict, weight_names: list[str],
               moments: tuple[int, ...], grams: tuple[str, ...], input_jacobians: bool) -> dict:
    """One block of rows J_i^T e_c (c in ``basis``, a VJP each) reduced to what is kept: the
    rows of df/dx and df/dh_l (with ``input_jacobians``), the squared norms of the measured
    weights' rows and of all rows, the moment sums, and for each Gram in ``grams`` its
    columns J_i J_i^T e_c or J_i D^2 J_i^T e_c (``push``, a JVP each). The block dies on
    return, before the next one is pulled back, so one block is in memory at a time."""
    d_params, d_input, d_layers = vmap(pullback)(basis)
    jacobians = {"input": d_input.reshape(len(basis), -1),
                 "layer": [d.reshape(len(basis), -1) for d in d_layers]} if input_jacobians else {}
    columns = {key: vmap(push)(d_params if key == "param_gram" else
                               {name: d * params[name].pow(2) for name, d in d_params.items()})
               for key in grams}
    return {**jacobians, **columns,
            **_power_sums(d_params, weight_names, moments, leading=0)}


def _power_sums(d_params: dict, weight_names: list[str], moments: tuple[int, ...],
                leading: int) -> dict:
    """The power sums of parameter-Jacobian rows that the measures keep, over every dim of
    each tensor in ``d_params`` but its first ``leading`` ones (1: one value a sample of a
    (n, K, *shape) Jacobian; 0: one value for a (rows, *shape) block of rows):
    ``weight_sq`` (..., L) = ||d f/d W_l||_F^2 of each measured weight in ``weight_names``,
    ``param_sq`` = ||J||_F^2 = sum_c sum_p J_cp^2, and ``moments`` (..., len(moments)) =
    sum_c sum_p J_cp^{2k} for each k (Ma & Ying's g_W(k)^{2k}); k = 1 is ``param_sq``.

    Each is one reduction a parameter that makes no copy (t.pow(power), or a reshape of the
    strided rows vmap returns, would double a K x P row block): ||t||_power^power by
    ``torch.linalg.vector_norm``, ``power`` even."""
    def power_sum(t: torch.Tensor, power: int) -> torch.Tensor:
        return torch.linalg.vector_norm(t, ord=power, dim=tuple(range(leading, t.dim()))) ** power

    squares = {name: power_sum(d, 2) for name, d in d_params.items()}
    param_sq = sum(squares.values())
    moment_sums = [param_sq if k == 1 else sum(power_sum(d, 2 * k) for d in d_params.values())
                   for k in moments]
    return {"weight_sq": torch.stack([squares[w] for w in weight_names], dim=-1),
            "param_sq": param_sq,
            "moments": (torch.stack(moment_sums, dim=-1) if moment_sums
                        else param_sq.new_zeros(*param_sq.shape, 0))}


def _gram(jacobian: torch.Tensor, n: int) -> torch.Tensor:
    """J J^T per sample for a Jacobian block of shape (n, K, *parameter shape)."""
    flat = jacobian.reshape(n, jacobian.shape[1], -1)
    return flat @ flat.transpose(1, 2)


def mls(singular_values: torch.Tensor) -> torch.Tensor:
    """Maximum local sensitivity MLS(x) = s_1(J) = ||J||_2 (Chen et al. M2)."""
    return singular_values[..., 0]


def numerical_rank(singular_values: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
    """Numerical rank of each m x n matrix from its singular values (descending, last dim):
    r = #{k : s_k > s_1 max(m, n) eps}, eps the machine epsilon of the singular values' dtype,
    which is the dtype the Jacobian was computed and decomposed in (LAPACK's rule, numpy's
    ``matrix_rank`` default).

    A singular value at or below that tolerance is indistinguishable from the rounding of an
    exactly rank-deficient matrix: its value depends on the BLAS kernel, not on the network.
    r = 0 where s_1 = 0 (J = 0). Returns an integer tensor of the leading shape.
    """
    tolerance = singular_values[..., :1] * max(shape) * torch.finfo(singular_values.dtype).eps
    return (singular_values > tolerance).sum(-1)


def log_volume(singular_values: torch.Tensor, rank: torch.Tensor,
               top: int | None = None) -> torch.Tensor:
    """log LVR(x) = sum_{k=1}^{m} log s_k(J) over the m = min(K, d) singular values (Chen et
    al. M1, LVR = prod_k s_k), or over the first m = min(top, K, d) with ``top``; ``top=3``
    gives the reference code's plotted "log volume" (top three singular values only).

    -inf where the numerical rank (``numerical_rank``) is below m: the exact volume is 0, and
    the trailing "singular values" are rounding noise whose logs would otherwise dominate the
    sum (a finite number that changes with the BLAS kernel).
    """
    count = singular_values.shape[-1] if top is None else min(top, singular_values.shape[-1])
    full = torch.log(singular_values[..., :count]).sum(-1)
    return torch.where(rank >= count, full, -math.inf)


def log_pseudo_volume(singular_values: torch.Tensor, rank: torch.Tensor) -> torch.Tensor:
    """log of the pseudo-volume prod_{k=1}^{r} s_k(J) over the r = ``rank`` numerically
    nonzero singular values: the log volume of J restricted to its row space, finite where
    ``log_volume`` is -inf because the rank is deficient; equal to it where the rank is full.
    -inf where r = 0 (J = 0: no direction is kept)."""
    kept = torch.arange(singular_values.shape[-1], device=singular_values.device) < rank[..., None]
    total = torch.where(kept, torch.log(singular_values), 0.0).sum(-1)
    return torch.where(rank > 0, total, -math.inf)


def local_dim(singular_values: torch.Tensor) -> torch.Tensor:
    """Participation ratio LD(x) = (sum_k s_k^2)^2 / sum_k s_k^4 of C = J J^T (Chen et al. M3).

    LD is invariant to J -> c J, so it is computed from r_k = s_k / s_1 (descending s, r_1 = 1):
    LD = (sum_k r_k^2)^2 / sum_k r_k^4, which neither underflows nor overflows for any finite
    s_1 > 0 (s_k^4 alone does beyond s_1 ~ 1e-77 or 1e77), and 1 <= LD <= min(K, d).
    Defined as 0 where J = 0 (s_1 = 0: no direction is expanded).
    Well-conditioned at a deficient rank: a rounding-noise value s_k <= s_1 max(K, d) eps enters
    as r_k^2 <= (max(K, d) eps)^2, below the rounding of the sums, so no rank cut is needed.
    """
    top = singular_values[..., :1]
    power = (singular_values / torch.where(top > 0, top, 1.0)).pow(2)
    # sum_k r_k^4 >= r_1^4 = 1 where s_1 > 0; the clamp only keeps the J = 0 branch free of 0/0
    quartic = power.pow(2).sum(-1).clamp_min(1.0)
    return torch.where(top[..., 0] > 0, power.sum(-1).pow(2) / quartic, 0.0)


def spectrum(jacobians: torch.Tensor) -> torch.Tensor:
    """Singular values (descending) of each Jacobian in a batch (n, K, d) -> (n, min(K, d)),
    by SVD of J itself: absolute error ~ eps s_1, so every value above ``numerical_rank``'s
    tolerance is resolved (eigenvalues of J J^T would resolve only s_k / s_1 >> sqrt(eps))."""
    return torch.linalg.svdvals(jacobians)


def volume_measures(jacobians: torch.Tensor) -> dict[str, torch.Tensor]:
    """The spectrum of each Jacobian (n, K, d) and what the volume measures need of it:
    ``singular_values`` (n, min(K, d)), ``rank`` (``numerical_rank``), ``log_volume``
    (``log_volume``, -inf at a deficient rank) and ``log_pseudo_volume``."""
    s = spectrum(jacobians)
    rank = numerical_rank(s, tuple(jacobians.shape[1:]))
    return {"singular_values": s, "rank": rank, "log_volume": log_volume(s, rank),
            "log_pseudo_volume": log_pseudo_volume(s, rank)}


def input_jacobian_measures(jacobians: torch.Tensor) -> dict[str, torch.Tensor]:
    """MLS, log LVR (all, top-3 and over the nonzero singular values), the numerical rank,
    local dimensionality and ||J||_F^2 per sample."""
    volumes = volume_measures(jacobians)
    s, rank = volumes["singular_values"], volumes["rank"]
    return {"mls": mls(s), "log_lvr": volumes["log_volume"],
            "log_lvr_top3": log_volume(s, rank, top=3),
            "log_lvr_pseudo": volumes["log_pseudo_volume"],
            "jacobian_rank": rank.to(s.dtype),
            "local_dim": local_dim(s), "jacobian_fro_sq": s.pow(2).sum(-1)}


def layer_measures(layer_jacobians: list[torch.Tensor]) -> dict[str, torch.Tensor]:
    """Per sample and measured layer l, shape (n, L), from the spectrum of df/dh_l (K x d_l):
    ``layer_mls`` s_1(df/dh_l) (NMLS is its sum over l, M4), ``layer_log_lvr`` log LVR_l =
    sum_k log s_k(df/dh_l) over all min(K, d_l) values (M5; -inf at a deficient rank, e.g.
    behind a dead ReLU layer), ``layer_log_lvr_pseudo`` over the nonzero ones and
    ``layer_jacobian_rank``."""
    per_layer = [volume_measures(j) for j in layer_jacobians]

    def stacked(key: str) -> torch.Tensor:
        return torch.stack([v[key] for v in per_layer], dim=1)

    return {"layer_mls": torch.stack([v["singular_values"][:, 0] for v in per_layer], dim=1),
            "layer_log_lvr": stacked("log_volume"),
            "layer_log_lvr_pseudo": stacked("log_pseudo_volume"),
            "layer_jacobian_rank": stacked("rank").to(per_layer[0]["singular_values"].dtype)}


def moments_of(jacobians: torch.Tensor, moments: tuple[int, ...]) -> torch.Tensor:
    """sum_c sum_d J_cd^{2k} per sample for each k, shape (n, len(moments)) (g_x(k)^{2k})."""
    flat = jacobians.reshape(len(jacobians), -1)
    return _columns([flat.pow(2 * p).sum(1) for p in moments], flat)
