"""Output-Hessian norms against dense per-(i, c) Hessians, and the False-Friend A2 bound."""

import dense_reference
import pytest
import torch
from torch import nn
from torch.func import hessian

from flatrep import losses, models
from flatrep.measures import curvature, memory, output_curvature

pytestmark = pytest.mark.usefixtures("float64_default")
CE = losses.LOSSES["cross_entropy"]


def operator_for(model, n=5, d=3, k=2, seed=0):
    torch.manual_seed(seed)
    x = torch.randn(n, d)
    labels = torch.randint(0, k, (n,))
    return curvature.HessianOperator(model, x, labels, loss=CE)


def dense_output_hessians(operator):
    """grad^2_theta f_c(x_i), shape (n, K, P, P)."""
    return hessian(operator.outputs)(operator.theta)


def spectral(matrices):
    return torch.linalg.eigvalsh(matrices).abs().amax(-1)


@pytest.mark.parametrize("activation", ["tanh", "relu"])
def test_norms_equal_dense_spectral_norms_with_an_exact_krylov_space(activation):
    torch.manual_seed(3)
    model = models.mlp(3, 2, [4, 3], activation=activation).double()
    operator = operator_for(model)
    assert operator.dim == 16 + 15 + 8
    result = output_curvature.output_hessian_norms(operator, operator.dim + 5,
                                                   torch.Generator().manual_seed(0))
    expected = spectral(dense_output_hessians(operator))
    assert result.norms.shape == result.residuals.shape == (5, 2)
    assert expected.min() > 1e-3
    torch.testing.assert_close(result.norms, expected, rtol=1e-8, atol=0.0)
    assert (result.residuals <= 1e-8 * expected).all()


def test_norms_are_single_dense_hessian_when_called_per_output():
    """Each (i, c) is its own operator: a (i, c) Hessian computed alone gives the same norm."""
    torch.manual_seed(4)
    model = models.mlp(3, 2, [4], activation="tanh").double()
    operator = operator_for(model, n=3)
    result = output_curvature.output_hessian_norms(operator, operator.dim,
                                                   torch.Generator().manual_seed(1))
    h = hessian(lambda theta: operator.outputs(theta)[2, 1])(operator.theta)
    assert result.norms[2, 1].item() == pytest.approx(spectral(h).item(), rel=1e-8)


def test_a_linear_model_has_zero_output_hessians():
    torch.manual_seed(5)
    operator = operator_for(nn.Linear(3, 2))
    result = output_curvature.output_hessian_norms(operator, 10, torch.Generator().manual_seed(0))
    assert torch.equal(result.norms, torch.zeros(5, 2))
    assert torch.equal(result.residuals, torch.zeros(5, 2))


def test_point_chunks_do_not_change_the_result():
    torch.manual_seed(6)
    model = models.mlp(3, 2, [4, 3], activation="tanh").double()
    operator = operator_for(model)
    results = [output_curvature.output_hessian_norms(operator, 6, torch.Generator().manual_seed(2),
                                                     point_chunk=chunk) for chunk in (1, 2, 5)]
    for other in results[1:]:
        torch.testing.assert_close(other.norms, results[0].norms, rtol=0.0, atol=1e-10)
        torch.testing.assert_close(other.residuals, results[0].residuals, rtol=0.0, atol=1e-10)


def test_a_byte_budget_splits_points_without_changing_the_result(lanczos_batches):
    """Budgets of 1 and 3 rows (K = 2, so batches split points' outputs) give the unbatched
    norms, and no batch holds more rows than the budget allows."""
    torch.manual_seed(6)
    model = models.mlp(3, 2, [4, 3], activation="tanh").double()
    operator = operator_for(model)
    steps, row_bytes = 6, (6 + memory.ROW_VECTORS) * operator.dim * 8
    whole = output_curvature.output_hessian_norms(operator, steps,
                                                  torch.Generator().manual_seed(2), point_chunk=5)
    for rows in (1, 3):
        lanczos_batches.clear()
        split = output_curvature.output_hessian_norms(
            operator, steps, torch.Generator().manual_seed(2), point_chunk=5,
            max_bytes=rows * row_bytes + row_bytes // 2)
        assert lanczos_batches == [rows] * (10 // rows) + ([10 % rows] if 10 % rows else [])
        torch.testing.assert_close(split.norms, whole.norms, rtol=0.0, atol=1e-10)
        torch.testing.assert_close(split.residuals, whole.residuals, rtol=0.0, atol=1e-10)


def test_few_steps_give_inner_estimates_with_residuals():
    """Ritz values lie inside the spectrum: norms <= dense norms, within their residuals."""
    torch.manual_seed(7)
    model = models.mlp(3, 2, [4, 3], activation="tanh").double()
    operator = operator_for(model)
    result = output_curvature.output_hessian_norms(operator, 3, torch.Generator().manual_seed(0))
    expected = spectral(dense_output_hessians(operator))
    assert (result.norms <= expected + 1e-12).all()
    assert (result.residuals > 0).all()


def test_loss_weighted_output_curvature_by_hand():
    norms = torch.tensor([[3.0, 1.0, 0.0], [0.5, 4.0, 2.0]])
    value = output_curvature.loss_weighted_output_curvature(torch.tensor([1.0, 2.0]), norms)
    assert value == pytest.approx((1.0 * 3.0 + 2.0 * 4.0) / 2)


def test_false_friend_spectral_bound_on_a_random_tanh_network():
    torch.manual_seed(8)
    n, k = 6, 3
    model = models.mlp(4, k, [5], activation="tanh").double()
    x, labels = torch.randn(n, 4) * 2, torch.randint(0, k, (n,))
    operator = curvature.HessianOperator(model, x, labels, loss=CE)
    f = operator.output_values
    p, y = torch.softmax(f, -1), nn.functional.one_hot(labels, k).double()
    per_sample = CE.per_sample(f, labels)

    h = dense_reference.loss_hessian(model, x, labels, CE)
    jacobians = dense_reference.jacobians(model, x)                      # (n, K, P)
    output_hessians = dense_output_hessians(operator)                    # (n, K, P, P)
    g = dense_reference.gauss_newton(model, x, labels, CE)
    r = torch.einsum("nk,nkpq->pq", p - y, output_hessians) / n
    torch.testing.assert_close(h, g + r, rtol=0.0, atol=1e-12)

    result = output_curvature.output_hessian_norms(operator, operator.dim,
                                                   torch.Generator().manual_seed(0))
    torch.testing.assert_close(result.norms, spectral(output_hessians), rtol=1e-8, atol=0.0)
    jacobian_sq = torch.linalg.matrix_norm(jacobians, ord=2).pow(2)       # ||J_i||_2^2
    gauss_newton_term = (2 / n) * (per_sample * jacobian_sq).sum().item()
    curvature_term = 2 * output_curvature.loss_weighted_output_curvature(per_sample, result.norms)
    lhs = spectral(h).item()
    rhs = gauss_newton_term + curvature_term
    assert spectral(g).item() <= gauss_newton_term
    assert spectral(r).item() <= curvature_term
    assert lhs <= rhs
    assert 0 < lhs and 0 < curvature_term and rhs < float("inf")
    assert rhs < 50 * lhs
