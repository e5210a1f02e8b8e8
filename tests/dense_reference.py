"""The dense float64 reference for the curvature tests: H, J_i, M_i and G, written
independently of ``flatrep.measures``' operators.

The loss is L(theta) = (1/n) sum_i l(f(x_i; theta), y_i), l = ``loss.per_sample`` (the measure
convention of ``flatrep.losses``), over the parameters named ``wrt`` (default all, in
``named_parameters`` order) flattened into theta, the other parameters and the buffers fixed.

* H = ``torch.func.hessian`` of L at theta.
* J_i = d f(x_i) / d theta by ``torch.func.jacrev``, M_i = d^2 l / d f^2 at f(x_i) by
  ``torch.func.hessian`` of the per-sample loss in its outputs, and the per-sample
  Gauss-Newton matrices G_i = J_i^T M_i J_i, G = (1/n) sum_i G_i.
"""

import math

import torch
from torch.func import functional_call, hessian, jacrev

from flatrep import losses


def _function(model, wrt=None):
    """(theta, f): the flat parameters ``wrt`` and theta, x -> f(x; theta)."""
    params = {name: p.detach() for name, p in model.named_parameters()}
    names = list(wrt) if wrt is not None else list(params)
    shapes = [params[name].shape for name in names]
    fixed = {name: p for name, p in params.items() if name not in names}
    fixed.update({name: b.detach() for name, b in model.named_buffers()})
    theta = torch.cat([params[name].reshape(-1) for name in names])

    def f(flat, x):
        pieces = torch.split(flat, [math.prod(shape) for shape in shapes])
        unflat = {name: piece.reshape(shape) for name, piece, shape in zip(names, pieces, shapes)}
        return functional_call(model, {**fixed, **unflat}, (x,))

    return theta, f


def loss_hessian(model, x, targets, loss=losses.LOSSES["mse"], wrt=None) -> torch.Tensor:
    """H = grad^2 L(theta), (P, P)."""
    theta, f = _function(model, wrt)
    return hessian(lambda flat: loss.per_sample(f(flat, x), targets).mean())(theta)


def jacobians(model, x, wrt=None) -> torch.Tensor:
    """J_i = d f(x_i) / d theta for every point, (n, K, P)."""
    theta, f = _function(model, wrt)
    return jacrev(lambda flat: f(flat, x))(theta)


def output_hessians(model, x, targets, loss=losses.LOSSES["mse"]) -> torch.Tensor:
    """M_i = d^2 l(f, y_i) / d f^2 at f = f(x_i), (n, K, K)."""
    with torch.no_grad():
        outputs = model(x)
    return torch.stack([hessian(lambda z: loss.per_sample(z[None], target[None]).sum())(output)
                        for output, target in zip(outputs, targets)])


def per_sample_gauss_newton(model, x, targets, loss=losses.LOSSES["mse"],
                            wrt=None) -> torch.Tensor:
    """G_i = J_i^T M_i J_i, (n, P, P)."""
    jac = jacobians(model, x, wrt)
    return torch.einsum("nkp,nkl,nlq->npq", jac, output_hessians(model, x, targets, loss), jac)


def gauss_newton(model, x, targets, loss=losses.LOSSES["mse"], wrt=None) -> torch.Tensor:
    """G = (1/n) sum_i J_i^T M_i J_i, (P, P)."""
    return per_sample_gauss_newton(model, x, targets, loss, wrt).mean(0)
