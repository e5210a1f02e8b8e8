"""Reparametrization-invariant measures (Chen et al. M7-M8, B6).

* Relative flatness (Petzka et al. 2021), trace form, of a Linear layer with weight W
  (rows w_s): kappa_Tr(W) = sum_{s,s'} <w_s, w_s'> Tr(H_{s,s'}) = Tr((W W^T (x) I) H_W), with
  H_W the Hessian of the training loss with respect to W. Estimated by Hutchinson:
  E[v^T (W W^T (x) I) H_W v] over Rademacher v, i.e. <V, W W^T (H_W V)> with V shaped like W.
* For the last layer f is linear in W_L, so H_{W_L} = (1/n) sum_i M_i (x) h_i h_i^T exactly
  (M_i the output Hessian of the loss) and kappa_Tr(W_L) = (1/n) sum_i ||h_i||^2 <W W^T, M_i>;
  for 1/2-MSE (M_i = I) this is ||W_L||_F^2 (1/n) sum_i ||h_L(x_i)||^2, at any theta.
* Elementwise adaptive sharpness (Kwon et al. 2021; Andriushchenko et al. 2023; Chen et al.
  App. E): with D = diag|theta|, S_ad = Tr(D H D) = sum_p theta_p^2 H_pp. Estimated as the
  exact Tr(D G D) (per-sample J_i D^2 J_i^T) plus Hutchinson on D (H - G) D with probes D v,
  and, independently, by antithetic Monte Carlo of the average-case definition:
  E_z[L(theta + delta) + L(theta - delta)]/2 - L(theta) = (rho^2/2) Tr(D H D) + O(rho^4) for
  delta = rho |theta| * z, z ~ N(0, I); the odd (first- and third-order) terms cancel in each
  pair, which plain Monte Carlo at small rho cannot afford. Both are invariant to the
  rescalings that leave a ReLU network unchanged; plain sharpness is not.
* IIMLS(x) = ||J_x(x) x||^2 / d (input-invariant MLS; the reference code's eval_iimls, here
  without its sigmoid since our nets are trained on MSE) and normalised MLS ||x||^2 MLS(x)^2.
  Both are invariant to x -> D x, W_1 -> W_1 D^{-1}.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.func import vmap

from flatrep import losses
from flatrep.measures import curvature, layers, trace_estimators


def relative_flatness(model: nn.Module, x: torch.Tensor, targets: torch.Tensor, layer: str,
                      probes: int, generator: torch.Generator,
                      method: str = "forward_over_reverse",
                      loss: losses.Loss = losses.LOSSES["mse"]) -> trace_estimators.Estimate:
    """kappa_Tr of the layer named ``layer``, Hutchinson with ``probes`` HVPs.

    A conv kernel is read as the matrix (C_out x C_in k) of its rows, each output channel's
    filter being one w_s (Petzka et al. define kappa for dense layers; this is the natural
    extension, not theirs).
    """
    weight = dict(model.named_modules())[layer].weight.detach()
    operator = curvature.HessianOperator(model, x, targets, method, wrt=[f"{layer}.weight"],
                                         loss=loss)
    matrix = weight.reshape(len(weight), -1)
    v = trace_estimators.rademacher(probes, operator.dim, generator, weight.dtype,
                                    operator.device)
    hv = operator.apply(v).reshape(probes, *matrix.shape)
    samples = (v.reshape(probes, *matrix.shape) * (matrix @ matrix.T @ hv)).sum((1, 2))
    return trace_estimators.mean_and_se(samples)


def last_layer_relative_flatness(model: nn.Module, x: torch.Tensor,
                                 loss: losses.Loss = losses.LOSSES["mse"]) -> float:
    """kappa_Tr(W_L) = (1/n) sum_i ||h_L(x_i)||^2 <W_L W_L^T, M_i> (exact for the output layer;
    ||W_L||_F^2 * (1/n) sum_i ||h_L(x_i)||^2 for 1/2-MSE)."""
    _, module = layers.measured_layers(model)[-1]
    h = layers.layer_inputs(model, x)[-1].reshape(len(x), -1)
    weight = module.weight.detach()
    with torch.no_grad():
        output_hessian = loss.output_hessian(model(x))
    return (h.pow(2).sum(1) * (output_hessian * (weight @ weight.T)).sum((1, 2))).mean().item()


def adaptive_sharpness(gauss_newton: curvature.GaussNewtonOperator, gauss_newton_part: float,
                       vectors: torch.Tensor) -> trace_estimators.Estimate:
    """Tr(D H D) = Tr(D G D) (exact, given) + Hutchinson on D (H - G) D with probes D v.

    ``vectors``: Rademacher probes v; costs one HVP (of ``gauss_newton.hessian``) and one JVP
    per probe.
    """
    hessian = gauss_newton.hessian
    scaled = vectors * hessian.theta.abs()
    return trace_estimators.control_variate_trace(gauss_newton_part, scaled,
                                                  hessian.apply(scaled),
                                                  gauss_newton.quadratic(scaled))


def adaptive_sharpness_monte_carlo(operator: curvature.HessianOperator, rho: float, pairs: int,
                                   generator: torch.Generator) -> trace_estimators.Estimate:
    """(2 / rho^2) * mean over antithetic pairs of (L(theta + d) + L(theta - d))/2 - L(theta),
    d = rho |theta| * z with z ~ N(0, I): an estimate of Tr(D H D) with bias O(rho^2).

    Costs 2 * ``pairs`` loss evaluations (forward passes over the curvature points, in the
    operator's point chunks), batched.
    z is drawn on the CPU from ``generator`` (the same on every device), then moved to theta's.
    """
    theta = operator.theta
    z = torch.randn(pairs, operator.dim, generator=generator, dtype=theta.dtype).to(theta.device)
    deltas = rho * theta.abs() * z
    batched_loss = vmap(operator.loss)
    with torch.no_grad():
        base = operator.loss(theta)
        values = torch.cat([0.5 * (batched_loss(theta + d) + batched_loss(theta - d)) - base
                            for d in deltas.split(operator.probe_chunk)])
    return trace_estimators.mean_and_se(values * (2.0 / rho ** 2))


def iimls(input_jacobians: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """||J_x(x) x||^2 / d per sample, J of shape (n, K, d)."""
    flat = x.reshape(len(x), -1)
    return (input_jacobians @ flat[:, :, None]).squeeze(-1).pow(2).sum(1) / flat.shape[1]


def normalized_mls(mls: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """||x||^2 MLS(x)^2 per sample."""
    return x.reshape(len(x), -1).pow(2).sum(1) * mls.pow(2)
