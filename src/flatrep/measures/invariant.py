"""Reparametrization-invariant measures (Chen et al. M7-M8, B6).

* Relative flatness (Petzka et al. 2021), trace form, of a Linear layer with weight W
  (rows w_s): kappa_Tr(W) = sum_{s,s'} <w_s, w_s'> Tr(H_{s,s'}) = Tr((W W^T (x) I) H_W), with
  H_W the Hessian of the 1/2-MSE training loss with respect to W. Estimated by Hutchinson:
  E[v^T (W W^T (x) I) H_W v] over Rademacher v, i.e. <V, W W^T (H_W V)> with V shaped like W.
* For the last layer f is linear in W_L, so H_{W_L} = I_K (x) (1/n) sum_i h_i h_i^T exactly
  and kappa_Tr(W_L) = ||W_L||_F^2 (1/n) sum_i ||h_L(x_i)||^2 at any theta.
* IIMLS(x) = ||J_x(x) x||^2 / d (input-invariant MLS; the reference code's eval_iimls, here
  without its sigmoid since our nets are trained on MSE) and normalised MLS ||x||^2 MLS(x)^2.
  Both are invariant to x -> D x, W_1 -> W_1 D^{-1}.
"""

from __future__ import annotations

import torch
from torch import nn

from flatrep.measures import curvature, layers


def relative_flatness(model: nn.Module, x: torch.Tensor, targets: torch.Tensor, layer: str,
                      probes: int, generator: torch.Generator,
                      method: str = "forward_over_reverse") -> curvature.Estimate:
    """kappa_Tr of the Linear layer named ``layer``, Hutchinson with ``probes`` HVPs."""
    weight = dict(model.named_modules())[layer].weight.detach()
    operator = curvature.HessianOperator(model, x, targets, method, wrt=[f"{layer}.weight"])
    v = curvature.rademacher(probes, operator.dim, generator, weight.dtype)
    hv = operator(v).reshape(probes, *weight.shape)
    samples = (v.reshape(probes, *weight.shape) * (weight @ weight.T @ hv)).sum((1, 2))
    return curvature.mean_and_se(samples)


def last_layer_relative_flatness(model: nn.Module, x: torch.Tensor) -> float:
    """kappa_Tr(W_L) = ||W_L||_F^2 * (1/n) sum_i ||h_L(x_i)||^2 (exact for the output layer)."""
    _, module = layers.measured_layers(model)[-1]
    h = layers.layer_inputs(model, x)[-1].reshape(len(x), -1)
    return (module.weight.detach().pow(2).sum() * h.pow(2).sum(1).mean()).item()


def iimls(input_jacobians: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """||J_x(x) x||^2 / d per sample, J of shape (n, K, d)."""
    flat = x.reshape(len(x), -1)
    return (input_jacobians @ flat[:, :, None]).squeeze(-1).pow(2).sum(1) / flat.shape[1]


def normalized_mls(mls: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """||x||^2 MLS(x)^2 per sample."""
    return x.reshape(len(x), -1).pow(2).sum(1) * mls.pow(2)
