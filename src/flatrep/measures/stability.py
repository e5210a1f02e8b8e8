"""Linear-stability ingredients of SGD at a minimum, from per-sample Gauss-Newton matrices.

With G_i = J_i^T M_i J_i the per-sample (generalised) Gauss-Newton matrix and
G = (1/n) sum_i G_i (the Hessian at an interpolating minimum):

* Non-uniformity (Wu, Ma & E 2018; Ma & Ying 2021, their ``diagnose.py``):
  sqrt(lambda_max((1/n) sum_i G_i^2 - G^2)). The matrix is (1/n) sum_i (G_i - G)^2, PSD.
  G_i^2 v = J_i^T (M_i (J_i J_i^T) M_i) J_i v, so one JVP, the per-sample K x K Gram matrices
  J_i J_i^T and one VJP apply the first term; Lanczos finds the top eigenvalue.
* (1/n) sum_i ||G_i||_F^2 = (1/n) sum_i Tr((M_i J_i J_i^T)^2), exact.
* Rayleigh spread (1/n) sum_i (v^T G_i v - lambda)^2 at the top eigenpair (lambda, v) of H.

The last two enter the cheap necessary conditions for mean-square stability of SGD with
batch B out of n (Mulayoff & Michaeli 2023, restating Ma & Ying's Thm. 1), p = (n-B)/(B(n-1)):
eta <= 2 lambda / (lambda^2 + p * spread) and eta <= 2 Tr H / ((1-p) ||H||_F^2 +
p (1/n) sum_i ||H_i||_F^2); the bounds themselves belong to ``flatrep.analysis.bounds``.
"""

from __future__ import annotations

import math

import torch
from torch.func import jvp, vjp, vmap

from flatrep.measures import curvature, krylov


class NonUniformityOperator:
    """v -> (1/n) sum_i G_i^2 v - G^2 v on the curvature points of a ``HessianOperator``.

    ``grams``: the per-sample J_i J_i^T, shape (n, K, K) (``per_sample_jacobians``). The
    points are taken in the operator's chunks of ``point_chunk`` (``HessianOperator.parts``),
    so a pass holds one chunk's activations per probe; (1/n) sum_i J_i^T u_i is summed over
    the chunks' pullbacks.
    """

    def __init__(self, operator: curvature.HessianOperator, grams: torch.Tensor):
        self.operator = operator
        self.dim, self.dtype, self.probe_chunk = operator.dim, operator.dtype, operator.probe_chunk
        self.device = operator.device
        self.output_hessian = operator.loss_fn.output_hessian(operator.output_values)
        self.squared = self.output_hessian @ grams @ self.output_hessian
        self._chunks = [x for x, _ in operator.parts()]
        self._pullbacks = [vjp(lambda theta, x=x: operator.outputs(theta, x), operator.theta)[1]
                           for x in self._chunks]

    def _tangent(self, v: torch.Tensor) -> torch.Tensor:
        """J v, shape (n, K), chunk by chunk."""
        return torch.cat([jvp(lambda theta, x=x: self.operator.outputs(theta, x),
                              (self.operator.theta,), (v,))[1] for x in self._chunks])

    def _mean_pullback(self, u: torch.Tensor) -> torch.Tensor:
        """(1/n) sum_i J_i^T u_i."""
        parts = u.split(self.operator.point_chunk)
        return sum(pullback(part)[0] for pullback, part in zip(self._pullbacks, parts)) / len(u)

    def _gauss_newton(self, v: torch.Tensor) -> torch.Tensor:
        return self._mean_pullback(torch.einsum("nkl,nl->nk", self.output_hessian,
                                                self._tangent(v)))

    def _product(self, v: torch.Tensor) -> torch.Tensor:
        second_moment = self._mean_pullback(torch.einsum("nkl,nl->nk", self.squared,
                                                         self._tangent(v)))
        return second_moment - self._gauss_newton(self._gauss_newton(v))

    def apply(self, vectors: torch.Tensor) -> torch.Tensor:
        """The products of the rows of ``vectors``, ``probe_chunk`` rows at a time."""
        return torch.cat([vmap(self._product)(chunk)
                          for chunk in vectors.split(self.probe_chunk)])


def nonuniformity(operator: curvature.HessianOperator, grams: torch.Tensor, steps: int,
                  generator: torch.Generator) -> float:
    """sqrt(lambda_max((1/n) sum_i G_i^2 - G^2)) by Lanczos with ``steps`` products."""
    ritz = krylov.lanczos(NonUniformityOperator(operator, grams), steps, generator)
    return math.sqrt(max(ritz.lambda_max, 0.0))


def per_sample_fro_sq(output_hessian: torch.Tensor, grams: torch.Tensor) -> float:
    """(1/n) sum_i ||G_i||_F^2 = (1/n) sum_i Tr((M_i J_i J_i^T)^2)."""
    product = output_hessian @ grams
    return (product * product.transpose(1, 2)).sum((1, 2)).mean().item()


def rayleigh_spread(gauss_newton: curvature.GaussNewtonOperator, vector: torch.Tensor,
                    eigenvalue: float) -> float:
    """(1/n) sum_i (v^T G_i v - lambda)^2 for a unit vector v."""
    quadratic = gauss_newton.per_sample_quadratic(vector[None])[0]
    return (quadratic - eigenvalue).pow(2).mean().item()
