"""The curvature measures of one checkpoint, family by family, each switchable per study.

``measure.curvature`` in params.yaml turns the whole suite on (``enabled``) and each family
of ``FAMILIES`` on or off: a family key that is absent or ``false`` is skipped, ``true`` runs
it with its defaults (``flatrep.params.studies.CURVATURE_FAMILIES``), a mapping overrides them.
``COSTS`` says what each family computes and what it costs per checkpoint (the docs' measures
page is generated from it), each HVP costing about two passes (forward and backward) over
``points`` rows.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from flatrep import losses
from flatrep.measures import (batchnorm_train, curvature, invariant, jacobian, krylov, layers,
                              output_curvature, spectrum)
from flatrep.measures import stability as stability_measures
from flatrep.measures import trace_estimators, xtrace
from flatrep.params import studies

#: What each family computes and its cost per checkpoint (``core`` runs whenever curvature is
#: enabled).
COSTS = {
    "core": "probes HVPs + 2 probes JVPs + probes VJPs + one per-sample Jacobian pass: exact "
            "Gauss-Newton trace, control-variate Hessian trace, Hutchinson trace, Frobenius "
            "norm and effective rank from the same probes, the Frobenius norm of H - G on "
            "them, and the loss-weighted Jacobian norm of the False-Friend loss bound",
    "hutch_plus_plus": "probes HVPs: Hutch++ trace with SE",
    "xtrace": "at most probes HVPs (probes // 2 on the test vectors, at most as many on the "
              "basis of their products): XTrace trace with its leave-one-out error estimate; "
              "hessian_trace then takes whichever of it and the control variate is cheaper to "
              "the same accuracy",
    "deflated_frobenius": "probes HVPs: ||H||_F by Hutch++ on H^2 (a third of them on the "
                          "sketch, a third on its basis, a third on the residual) with SE",
    "lanczos": "steps HVPs: lambda_max, lambda_min with residual bounds; lambda_max ||theta||^2",
    "relative_flatness": "probes HVPs restricted to W_1: kappa_Tr(W_1); kappa_Tr(W_L) exact",
    "adaptive_sharpness": "probes HVPs + JVPs, and 2 pairs loss evaluations: Tr(D H D) "
                          "(control variate) and its antithetic Monte-Carlo estimate at "
                          "radius rho",
    "spectral_density": "steps batched products of probes HVPs (the probes' Lanczos runs "
                        "carried together): stochastic Lanczos quadrature density on a grid "
                        "of bins points, its raw nodes and weights, and the SLQ trace",
    "rank": "dense Hessian (P HVPs in passes of spectrum.DENSE_PROBE_CHUNK, and a P x P "
            "eigendecomposition, only when P <= dense_max_params), the Gauss-Newton rank from "
            "the (points K)^2 Gram matrix (a points x K x P Jacobian in memory), and the "
            "False-Friend rank-bound values",
    "stability": "steps products (3 JVPs + 3 VJPs each) for the non-uniformity, and the top "
                 "Ritz pair of H (shared with lanczos when on, else steps more HVPs): the "
                 "linear-stability ingredients of SGD",
    "output_curvature": "steps single-point HVPs per point and output (about steps x K "
                        "full-batch HVPs on points of the curvature points, default all), "
                        "batched over point_chunk points: the spectral norms of the "
                        "per-sample output Hessians for the False-Friend spectral loss bound",
    "batchnorm_train": "steps + probes HVPs over batches of batch_size points with BatchNorm "
                       "in train mode (Granziol's protocol): lambda_max, lambda_min and the "
                       "Hutchinson trace of that Hessian, on the core's probes",
}


def coords(cfg: dict) -> dict[str, tuple[str, list]]:
    """The extra cube coordinates the enabled families need (dim -> (dim, values))."""
    enabled = studies.curvature_families(cfg) if cfg.get("enabled") else {}
    result = {}
    if "spectral_density" in enabled:
        options = enabled["spectral_density"]
        result["spectrum_bin"] = ("spectrum_bin", list(range(options["bins"])))
        result["slq_probe"] = ("slq_probe", list(range(options["probes"])))
        result["slq_node"] = ("slq_node", list(range(options["steps"])))
    if "rank" in enabled:
        result["rank_tolerance"] = ("rank_tolerance", [float(t) for t in
                                                       enabled["rank"]["tolerances"]])
        result["rank_bound"] = ("rank_bound", list(spectrum.RANK_BOUNDS))
    return result


@dataclass
class Context:
    """What every family may use: the operators H and G, the loss, the Jacobian pass and the
    core's Hutchinson probes."""
    model: nn.Module
    x: torch.Tensor
    targets: torch.Tensor
    loss: losses.Loss
    operator: curvature.HessianOperator
    gauss_newton: curvature.GaussNewtonOperator
    jacobians: dict
    probes: trace_estimators.HutchinsonResult
    cfg: dict
    seed: int
    max_bytes: int

    lanczos_runs: dict = field(default_factory=dict)

    def generator(self, offset: int = 0) -> torch.Generator:
        """A fresh CPU generator, the same at every checkpoint and run (no probe noise
        between); probes are drawn from it on the CPU whatever the operator's device."""
        return torch.Generator().manual_seed(self.seed + offset)

    def lanczos(self, steps: int) -> krylov.LanczosResult:
        """Lanczos on H with ``steps`` products, run once per step count and shared."""
        if steps not in self.lanczos_runs:
            self.lanczos_runs[steps] = krylov.lanczos(self.operator, steps, self.generator())
        return self.lanczos_runs[steps]


def loss_weighted_jacobian_sq(ctx: Context) -> float:
    """(1/n) sum_i l_i ||J_i||_2^2, ||J_i||_2^2 = lambda_max(J_i J_i^T) (K x K Gram)."""
    per_sample = ctx.loss.per_sample(ctx.operator.output_values, ctx.targets)
    top = torch.linalg.eigvalsh(ctx.jacobians["param_gram"])[:, -1]
    return (per_sample * top).mean().item()


def core(ctx: Context) -> dict:
    """Tr H by the Gauss-Newton control variate and ||H - G||_F, both from the core's probes V,
    their products H V and one pass of G V (v^T G v = v . G v; ||H - G||_F by Hutchinson on
    (H - G)^2, sqrt(mean ||H v - G v||^2)), beside the plain Hutchinson estimates of Tr H and
    ||H||_F and the effective rank from the same probes. On a network linear in each single
    parameter (``curvature.piecewise_linear``) Tr H = Tr G exactly, with SE 0."""
    outputs = ctx.operator.output_values
    vectors, products = ctx.probes.vectors, ctx.probes.products
    gauss_newton = ctx.loss.gauss_newton_trace(outputs, ctx.jacobians["param_gram"])
    gauss_newton_products = ctx.gauss_newton.apply(vectors)
    exact = curvature.piecewise_linear(ctx.model)
    controlled = trace_estimators.Estimate(gauss_newton, 0.0) if exact else \
        trace_estimators.control_variate_trace(gauss_newton, vectors, products,
                                               (vectors * gauss_newton_products).sum(1))
    residual = trace_estimators.residual_frobenius(products, gauss_newton_products)
    return {"hessian_trace": controlled.value, "hessian_trace_se": controlled.standard_error,
            "hessian_trace_exact": float(exact),
            "hessian_gauss_newton_trace": gauss_newton,
            "hessian_trace_hutchinson": ctx.probes.trace.value,
            "hessian_trace_hutchinson_se": ctx.probes.trace.standard_error,
            "hessian_fro": ctx.probes.frobenius.value,
            "hessian_fro_se": ctx.probes.frobenius.standard_error,
            "hessian_residual_fro": residual.value,
            "hessian_residual_fro_se": residual.standard_error,
            "hessian_effective_rank": ctx.probes.effective_rank,
            "loss_weighted_jacobian_sq": loss_weighted_jacobian_sq(ctx)}


def hutch_plus_plus(ctx: Context, _options: dict) -> dict:
    plus = trace_estimators.hutch_plus_plus(ctx.operator, ctx.cfg["probes"], ctx.generator())
    return {"hessian_trace_hutchpp": plus.value, "hessian_trace_hutchpp_se": plus.standard_error}


def xtrace_family(ctx: Context, _options: dict) -> dict:
    """XTrace with the core's ``probes`` as its matvec budget, on its own probe stream."""
    estimate = xtrace.xtrace(ctx.operator, ctx.cfg["probes"], ctx.generator(5))
    return {"hessian_trace_xtrace": estimate.value,
            "hessian_trace_xtrace_se": estimate.standard_error}


def deflated_frobenius(ctx: Context, _options: dict) -> dict:
    """||H||_F by Hutch++ on H^2 with the core's ``probes`` as its matvec budget, on its own
    probe stream (``trace_estimators.deflated_frobenius``)."""
    estimate = trace_estimators.deflated_frobenius(ctx.operator, ctx.cfg["probes"],
                                                   ctx.generator(6))
    return {"hessian_fro_deflated": estimate.value,
            "hessian_fro_deflated_se": estimate.standard_error}


def cheapest_trace(values: dict, probes: int) -> dict:
    """``hessian_trace`` (with its SE) from the cheaper of the core's control variate and
    XTrace, and which one it is (``hessian_trace_by_xtrace``: 1 for XTrace, 0 for the control
    variate, whose estimate stays in ``hessian_trace_control_variate``).

    Cheaper: fewer HVP-equivalents to reach the smaller of the two measured SEs
    (``trace_estimators.cheapest_to_reach``, SE ~ matvecs^-1/2): the control variate costs
    2 probes (probes HVPs and as many Gauss-Newton products, a JVP and a VJP each), XTrace at
    most probes. The choice reads the SEs of the same draws it reports, so where the two are
    close the SE reported is the smaller of two noisy estimates (slightly optimistic); where
    H - G carries no trace at an MSE interpolation the control variate's SE is orders of
    magnitude below XTrace's and the choice is not close (bench/RESULTS.md)."""
    candidates = {
        "control_variate": (trace_estimators.Estimate(values["hessian_trace"],
                                                      values["hessian_trace_se"]), 2 * probes),
        "xtrace": (trace_estimators.Estimate(values["hessian_trace_xtrace"],
                                             values["hessian_trace_xtrace_se"]), probes)}
    target = min((estimate.standard_error for estimate, _ in candidates.values()
                  if not math.isnan(estimate.standard_error)), default=math.nan)
    name, _ = trace_estimators.cheapest_to_reach(candidates, target)
    chosen, _ = candidates[name]
    return {"hessian_trace": chosen.value, "hessian_trace_se": chosen.standard_error,
            "hessian_trace_by_xtrace": float(name == "xtrace"),
            "hessian_trace_control_variate": values["hessian_trace"],
            "hessian_trace_control_variate_se": values["hessian_trace_se"]}


def lanczos(ctx: Context, options: dict) -> dict:
    ritz = ctx.lanczos(options["steps"])
    param_norm_sq = ctx.operator.theta.pow(2).sum().item()
    return {"hessian_lambda_max": ritz.lambda_max,
            "hessian_lambda_max_residual": ritz.residuals[-1].item(),
            "hessian_lambda_min": ritz.lambda_min,
            "hessian_lambda_min_residual": ritz.residuals[0].item(),
            "hessian_lambda_max_scaled": ritz.lambda_max * param_norm_sq}


def relative_flatness(ctx: Context, _options: dict) -> dict:
    first_layer = layers.measured_layers(ctx.model)[0][0]
    kappa = invariant.relative_flatness(ctx.model, ctx.x, ctx.targets, first_layer,
                                        ctx.cfg["probes"], ctx.generator(),
                                        ctx.operator.method, ctx.loss)
    return {"relative_flatness_first": kappa.value,
            "relative_flatness_first_se": kappa.standard_error,
            "relative_flatness_last": invariant.last_layer_relative_flatness(ctx.model, ctx.x,
                                                                             ctx.loss)}


def adaptive_sharpness(ctx: Context, options: dict) -> dict:
    outputs = ctx.operator.output_values
    exact_part = ctx.loss.gauss_newton_trace(outputs, ctx.jacobians["param_gram_adaptive"])
    controlled = invariant.adaptive_sharpness(ctx.gauss_newton, exact_part, ctx.probes.vectors)
    sampled = invariant.adaptive_sharpness_monte_carlo(ctx.operator, options["rho"],
                                                       options["pairs"], ctx.generator(1))
    return {"adaptive_sharpness": controlled.value,
            "adaptive_sharpness_se": controlled.standard_error,
            "adaptive_sharpness_gauss_newton": exact_part,
            "adaptive_sharpness_monte_carlo": sampled.value,
            "adaptive_sharpness_monte_carlo_se": sampled.standard_error}


def spectral_density(ctx: Context, options: dict) -> dict:
    result = spectrum.slq(ctx.operator, options["probes"], options["steps"], ctx.generator(2),
                          ctx.max_bytes)
    grid, sigma = spectrum.density_grid(result, options["bins"], options["smoothing"])
    trace = result.trace()
    return {"spectral_density": result.density(grid, sigma).cpu().numpy(),
            "spectral_density_eigenvalue": grid.cpu().numpy(),
            "spectral_density_sigma": sigma,
            "slq_nodes": result.nodes.cpu().numpy(), "slq_weights": result.weights.cpu().numpy(),
            "hessian_trace_slq": trace.value, "hessian_trace_slq_se": trace.standard_error}


def rank(ctx: Context, options: dict) -> dict:
    tolerances = [float(t) for t in options["tolerances"]]
    dense = np.full(len(tolerances), np.nan)
    if ctx.operator.dim <= options["dense_max_params"]:
        wide = curvature.HessianOperator(ctx.model, ctx.x, ctx.targets, ctx.operator.method,
                                         spectrum.DENSE_PROBE_CHUNK, loss=ctx.loss,
                                         max_bytes=ctx.max_bytes)
        eigenvalues = torch.linalg.eigvalsh(spectrum.dense_hessian(wide))
        dense = np.array(spectrum.numerical_rank(eigenvalues, tolerances), dtype=np.float64)
    n_rank = min(options["points"], len(ctx.x))
    subset = curvature.HessianOperator(ctx.model, ctx.x[:n_rank], ctx.targets[:n_rank],
                                       ctx.operator.method, ctx.operator.probe_chunk,
                                       loss=ctx.loss, max_bytes=ctx.max_bytes)
    gram = spectrum.gauss_newton_gram(subset, ctx.loss.output_hessian(subset.output_values))
    ggn = spectrum.numerical_rank(torch.linalg.eigvalsh(gram), tolerances)
    fan_ins = [spectrum.fan_in(module) for _, module in layers.measured_layers(ctx.model)]
    bounds = spectrum.rank_bounds(fan_ins, ctx.operator.output_values.shape[1], n_rank)
    return {"hessian_rank": dense, "gauss_newton_rank": np.array(ggn, dtype=np.float64),
            "hessian_rank_bound": np.array([bounds[name] for name in spectrum.RANK_BOUNDS],
                                           dtype=np.float64),
            "num_params": float(ctx.operator.dim), "rank_points": float(n_rank)}


def stability(ctx: Context, options: dict) -> dict:
    grams = ctx.jacobians["param_gram"]
    steps = studies.curvature_families(ctx.cfg).get("lanczos", options)["steps"]
    top = ctx.lanczos(steps)
    output_hessian = ctx.loss.output_hessian(ctx.operator.output_values)
    return {"gauss_newton_nonuniformity": stability_measures.nonuniformity(
                ctx.operator, grams, options["steps"], ctx.generator(3)),
            "per_sample_hessian_fro_sq": stability_measures.per_sample_fro_sq(output_hessian,
                                                                              grams),
            "stability_rayleigh_spread": stability_measures.rayleigh_spread(
                ctx.gauss_newton, top.top_vector, top.lambda_max)}


def output_curvature_family(ctx: Context, options: dict) -> dict:
    """On the first ``points`` curvature points (all when null)."""
    result = output_curvature.output_hessian_norms(ctx.operator, options["steps"],
                                                   ctx.generator(4), options["point_chunk"],
                                                   ctx.max_bytes, options["points"])
    n = len(result.norms)
    per_sample = ctx.loss.per_sample(ctx.operator.output_values[:n], ctx.targets[:n])
    return {"loss_weighted_output_curvature": output_curvature.loss_weighted_output_curvature(
                per_sample, result.norms),
            "output_curvature_residual_max": result.residuals.max().item()}


def batchnorm_train_family(ctx: Context, options: dict) -> dict:
    """H_bn's extreme Ritz values from the same start vector as ``lanczos`` and its trace
    from the same Rademacher probes as the core's Hutchinson estimate of H."""
    operator = batchnorm_train.operator(ctx.model, ctx.x, ctx.targets, ctx.loss,
                                        options["batch_size"], ctx.operator.method,
                                        ctx.operator.probe_chunk, ctx.max_bytes)
    ritz = krylov.lanczos(operator, options["steps"], ctx.generator())
    trace = trace_estimators.mean_and_se((ctx.probes.vectors
                                          * operator.apply(ctx.probes.vectors)).sum(1))
    return {"hessian_bn_train_lambda_max": ritz.lambda_max,
            "hessian_bn_train_lambda_max_residual": ritz.residuals[-1].item(),
            "hessian_bn_train_lambda_min": ritz.lambda_min,
            "hessian_bn_train_trace": trace.value,
            "hessian_bn_train_trace_se": trace.standard_error}


FAMILIES = {"hutch_plus_plus": hutch_plus_plus, "xtrace": xtrace_family,
            "deflated_frobenius": deflated_frobenius,
            "output_curvature": output_curvature_family, "lanczos": lanczos, "stability": stability,
            "relative_flatness": relative_flatness, "adaptive_sharpness": adaptive_sharpness,
            "spectral_density": spectral_density, "rank": rank,
            "batchnorm_train": batchnorm_train_family}


def measure(model: nn.Module, x: torch.Tensor, targets: torch.Tensor, loss: losses.Loss,
            cfg: dict, seed: int, max_bytes: int = studies.MEASURE_MEMORY_MB << 20) -> dict:
    """Every enabled curvature family on the training points ``x`` (float64 model).

    The same probes (seeded by ``seed``) are used at every checkpoint and run, so differences
    between checkpoints are not probe noise. Everything runs on the device of ``model``,
    ``x`` and ``targets`` (chosen by ``flatrep.cube.measuring.measure_checkpoints``); the probes
    are drawn on the CPU from seeded CPU generators and moved there, so they are the same on every
    device. ``max_bytes`` (``measure.memory_mb``) bounds the parameter Jacobian blocks, one HVP
    pass (its probes' parameter-sized vectors and activations) and one batch of
    output-curvature Lanczos bases.
    """
    operator = curvature.HessianOperator(model, x, targets, cfg.get("hvp", curvature.DEFAULT_HVP),
                                         cfg.get("probe_chunk", 16), loss=loss,
                                         max_bytes=max_bytes)
    families = studies.curvature_families(cfg)
    grams = ("param_gram",) + (("param_gram_adaptive",) if "adaptive_sharpness" in families
                               else ())
    ctx = Context(model, x, targets, loss, operator, curvature.GaussNewtonOperator(operator),
                  jacobian.per_sample_jacobians(model, x, len(x), moments=(),
                                                max_bytes=max_bytes, grams=grams,
                                                input_jacobians=False),
                  trace_estimators.hutchinson(operator, cfg["probes"],
                                              torch.Generator().manual_seed(seed)),
                  cfg, seed, max_bytes)
    values = core(ctx)
    for name, options in families.items():
        values.update(FAMILIES[name](ctx, options))
    if "xtrace" in families:
        values.update(cheapest_trace(values, cfg["probes"]))
    return values
