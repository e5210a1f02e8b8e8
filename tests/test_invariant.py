"""Relative flatness, IIMLS and normalised MLS: dense block sums and rescaling invariances."""

import copy

import dense_reference
import pytest
import torch

from flatrep import losses, models
from flatrep.measures import curvature, invariant, jacobian, trace_estimators

pytestmark = pytest.mark.usefixtures("float64_default")


def problem(activation="relu", seed=0):
    torch.manual_seed(seed)
    model = models.mlp(4, 3, [6, 5], activation=activation).double()
    return model, torch.randn(25, 4), torch.randn(25, 3)


def dense_relative_flatness(model, x, y, layer):
    """sum_{s,s'} <w_s, w_s'> Tr(H_{s,s'}) with H the dense Hessian over the layer's weight."""
    weight = dict(model.named_modules())[layer].weight.detach()
    m, d = weight.shape
    h = dense_reference.loss_hessian(model, x, y, wrt=[f"{layer}.weight"]).reshape(m, d, m, d)
    return sum(torch.dot(weight[s], weight[t]) * torch.trace(h[s, :, t, :])
               for s in range(m) for t in range(m)).item()


def test_hutchinson_relative_flatness_matches_the_dense_block_sum():
    model, x, y = problem("tanh")
    exact = dense_relative_flatness(model, x, y, "1")
    est = invariant.relative_flatness(model, x, y, "1", 400, torch.Generator().manual_seed(0))
    assert abs(est.value - exact) < 4 * est.standard_error
    assert est.standard_error < 0.2 * abs(exact)


def test_last_layer_identity_holds_off_interpolation():
    """f is linear in W_L, so kappa_Tr(W_L) = ||W_L||_F^2 mean ||h_L||^2 at any theta."""
    model, x, y = problem("tanh", seed=1)
    exact = dense_relative_flatness(model, x, y, "5")
    assert invariant.last_layer_relative_flatness(model, x) == pytest.approx(exact, rel=1e-10)


def rescaled(model, alpha):
    """W_1, b_1 -> alpha W_1, alpha b_1 and W_2 -> W_2 / alpha: the same ReLU network."""
    other = copy.deepcopy(model)
    with torch.no_grad():
        other[1].weight.mul_(alpha)
        other[1].bias.mul_(alpha)
        other[3].weight.div_(alpha)
    return other


def test_invariance_under_relu_layer_rescaling_and_sharpness_is_not_invariant():
    model, x, y = problem("relu", seed=2)
    other = rescaled(model, 3.0)
    assert torch.allclose(model(x), other(x))
    a, b = (jacobian.per_sample_jacobians(m, x) for m in (model, other))
    mls_a = jacobian.input_jacobian_measures(a["input"])["mls"]
    mls_b = jacobian.input_jacobian_measures(b["input"])["mls"]
    assert torch.allclose(mls_a, mls_b)
    assert torch.allclose(invariant.iimls(a["input"], x), invariant.iimls(b["input"], x))
    for layer in ("1", "3", "5"):
        assert dense_relative_flatness(model, x, y, layer) == pytest.approx(
            dense_relative_flatness(other, x, y, layer), rel=1e-9), layer
    assert invariant.last_layer_relative_flatness(model, x) == pytest.approx(
        invariant.last_layer_relative_flatness(other, x), rel=1e-12)
    assert not torch.allclose(a["param_sq"].mean(), b["param_sq"].mean(), rtol=1e-3)


def test_iimls_invariant_to_input_scaling_compensated_in_the_first_layer():
    """x -> D x, W_1 -> W_1 D^-1 (diagonal D): f unchanged, J x unchanged."""
    model, x, _ = problem("relu", seed=3)
    scale = torch.tensor([0.5, 2.0, 3.0, 0.25])
    other = copy.deepcopy(model)
    with torch.no_grad():
        other[1].weight.div_(scale)
    a = jacobian.per_sample_jacobians(model, x)["input"]
    b = jacobian.per_sample_jacobians(other, x * scale)["input"]
    assert torch.allclose(invariant.iimls(a, x), invariant.iimls(b, x * scale))


def test_normalized_mls_invariant_to_a_scalar_input_scaling():
    model, x, _ = problem("relu", seed=4)
    other = copy.deepcopy(model)
    with torch.no_grad():
        other[1].weight.div_(5.0)
    mls_a = jacobian.input_jacobian_measures(
        jacobian.per_sample_jacobians(model, x)["input"])["mls"]
    mls_b = jacobian.input_jacobian_measures(
        jacobian.per_sample_jacobians(other, 5.0 * x)["input"])["mls"]
    assert torch.allclose(invariant.normalized_mls(mls_a, x),
                          invariant.normalized_mls(mls_b, 5 * x))


def test_iimls_closed_form_for_a_linear_map():
    w = torch.randn(3, 4)
    x = torch.randn(6, 4)
    expected = (x @ w.T).pow(2).sum(1) / 4
    assert torch.allclose(invariant.iimls(w.expand(6, 3, 4), x), expected)


def dense_adaptive_sharpness(model, x, y):
    """Tr(D H D) = sum_p theta_p^2 H_pp from the dense Hessian."""
    theta = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    h = dense_reference.loss_hessian(model, x, y)
    return (theta.pow(2) * torch.diagonal(h)).sum().item()


def test_adaptive_sharpness_estimators_agree_with_the_dense_weighted_trace():
    model, x, y = problem("tanh", seed=5)
    operator = curvature.HessianOperator(model, x, y)
    exact = dense_adaptive_sharpness(model, x, y)
    jac = dense_reference.jacobians(model, x)                             # (n, K, P)
    gauss_newton_diagonal = jac.pow(2).sum((0, 1)) / len(x)
    gauss_newton_part = (operator.theta.pow(2) * gauss_newton_diagonal).sum().item()
    grams = jacobian.per_sample_jacobians(model, x)["param_gram_adaptive"]
    assert grams.diagonal(dim1=1, dim2=2).sum(-1).mean().item() == pytest.approx(
        gauss_newton_part, rel=1e-12)
    probes = trace_estimators.rademacher(300, operator.dim, torch.Generator().manual_seed(0))
    controlled = invariant.adaptive_sharpness(curvature.GaussNewtonOperator(operator),
                                              gauss_newton_part, probes)
    assert abs(controlled.value - exact) < 4 * controlled.standard_error
    sampled = invariant.adaptive_sharpness_monte_carlo(operator, 0.01, 2000,
                                                       torch.Generator().manual_seed(1))
    assert sampled.standard_error < 0.05 * abs(exact)
    assert abs(sampled.value - exact) < 4 * sampled.standard_error


def test_monte_carlo_adaptive_sharpness_over_point_chunks_is_the_same_estimate():
    model, x, y = problem("tanh", seed=5)
    whole, chunked = (invariant.adaptive_sharpness_monte_carlo(
        curvature.HessianOperator(model, x, y, point_chunk=chunk), 0.01, 50,
        torch.Generator().manual_seed(1)) for chunk in (None, 3))
    assert chunked.value == pytest.approx(whole.value, rel=1e-9)
    assert chunked.standard_error == pytest.approx(whole.standard_error, rel=1e-9)


def test_antithetic_monte_carlo_bias_vanishes_as_rho_shrinks():
    """Same draws z at every rho: the error is the O(rho^2) bias plus O(rho^2)-scaled noise of
    the fourth-order term, so it must fall with rho."""
    model, x, y = problem("tanh", seed=6)
    operator = curvature.HessianOperator(model, x, y)
    exact = dense_adaptive_sharpness(model, x, y)
    errors = [abs(invariant.adaptive_sharpness_monte_carlo(
        operator, rho, 4000, torch.Generator().manual_seed(2)).value - exact)
        for rho in (1.0, 0.3)]
    assert errors[1] < errors[0]


def test_adaptive_sharpness_is_invariant_under_relu_rescaling():
    model, x, y = problem("relu", seed=7)
    other = rescaled(model, 4.0)
    assert dense_adaptive_sharpness(model, x, y) == pytest.approx(
        dense_adaptive_sharpness(other, x, y), rel=1e-9)
    a, b = (jacobian.per_sample_jacobians(m, x)["param_gram_adaptive"] for m in (model, other))
    assert torch.allclose(a, b, rtol=1e-10)
    sharp_a, sharp_b = (jacobian.per_sample_jacobians(m, x)["param_sq"].mean()
                        for m in (model, other))
    assert not torch.allclose(sharp_a, sharp_b, rtol=1e-3)


def test_last_layer_identity_for_cross_entropy():
    """kappa_Tr(W_L) = (1/n) sum_i ||h_i||^2 <W W^T, M_i> against the dense block sum."""
    model, x, _ = problem("tanh", seed=8)
    labels = torch.randint(0, 3, (len(x),))
    loss = losses.get("cross_entropy")
    weight = model[5].weight.detach()
    m, d = weight.shape
    h = dense_reference.loss_hessian(model, x, labels, loss, wrt=["5.weight"]).reshape(m, d, m, d)
    exact = sum(torch.dot(weight[s], weight[t]) * torch.trace(h[s, :, t, :])
                for s in range(m) for t in range(m)).item()
    assert invariant.last_layer_relative_flatness(model, x, loss) == pytest.approx(exact,
                                                                                   rel=1e-10)
