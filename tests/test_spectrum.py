"""SLQ, dense and Gauss-Newton ranks against closed forms and dense matrices, in float64."""

import math

import dense_reference
import pytest
import torch
from conftest import MatrixOperator
from torch import nn
from torch.func import hessian

from flatrep import models
from flatrep.measures import curvature, spectrum

pytestmark = pytest.mark.usefixtures("float64_default")

TOLERANCES = (1e-4, 1e-6, 1e-8)


def with_eigenvalues(values, seed=0):
    """Q diag(values) Q^T with Q a random orthogonal matrix."""
    torch.manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(len(values), len(values)))
    return q @ torch.diag(values) @ q.T


def start_vectors(seed, probes, dim):
    """The unit start vectors slq's Lanczos runs draw from a generator seeded with ``seed``."""
    generator = torch.Generator().manual_seed(seed)
    q = torch.stack([torch.randn(dim, generator=generator) for _ in range(probes)])
    return q / q.norm(dim=1, keepdim=True)


def trapezoid(values, grid):
    return torch.trapezoid(values, grid).item()


def test_slq_quadrature_is_exact_below_degree_2m_and_underestimates_degree_2m():
    """sum_j w_j theta_j^k = q^T H^k q for k < 2m; for x^{2m} the Gauss error is > 0."""
    a, steps = with_eigenvalues(torch.linspace(-1.0, 3.0, 10)), 4
    result = spectrum.slq(MatrixOperator(a), 1, steps, torch.Generator().manual_seed(3))
    (q,) = start_vectors(3, 1, 10)
    for k in range(2 * steps):
        exact = (q @ torch.linalg.matrix_power(a, k) @ q).item()
        assert result.moment(k) == pytest.approx(exact, rel=1e-10, abs=1e-12)
    exact = (q @ torch.linalg.matrix_power(a, 2 * steps) @ q).item()
    assert result.moment(2 * steps) < exact * (1 - 1e-6)


def test_full_slq_nodes_are_the_eigenvalues():
    torch.manual_seed(1)
    a = torch.randn(30, 30)
    a = (a + a.T) / 2
    eig = torch.linalg.eigvalsh(a)
    result = spectrum.slq(MatrixOperator(a), 3, 30, torch.Generator().manual_seed(0))
    for nodes in result.nodes:
        assert torch.allclose(nodes, eig, atol=1e-9 * eig.abs().max().item())


def test_slq_trace_and_density_moments():
    """P moment(1) is unbiased for Tr H; the smoothed density has mass 1, mean moment(1),
    second moment moment(2) + sigma^2."""
    a = with_eigenvalues(torch.linspace(-1.0, 1.0, 40) ** 3 + 0.5, seed=2)
    result = spectrum.slq(MatrixOperator(a), 300, 8, torch.Generator().manual_seed(1))
    estimate, exact = result.trace(), torch.trace(a).item()
    assert estimate.value == pytest.approx(40 * result.moment(1), rel=1e-12)
    assert 0 < estimate.standard_error
    assert abs(estimate.value - exact) < 4 * estimate.standard_error
    grid, sigma = spectrum.density_grid(result, 4000, 0.01)
    rho = result.density(grid, sigma)
    assert trapezoid(rho, grid) == pytest.approx(1.0, abs=1e-3)
    assert trapezoid(grid * rho, grid) == pytest.approx(result.moment(1), abs=1e-3)
    assert trapezoid(grid ** 2 * rho, grid) == \
        pytest.approx(result.moment(2) + sigma ** 2, rel=1e-3)


def test_density_grid_when_every_node_is_equal():
    """H = 2 I: Lanczos stops after one step; the other entries are padding."""
    result = spectrum.slq(MatrixOperator(2 * torch.eye(6)), 4, 6, torch.Generator())
    assert torch.allclose(result.nodes[:, 0], torch.full((4,), 2.0), rtol=1e-14)
    assert result.nodes[:, 1:].isnan().all() and (result.weights[:, 1:] == 0).all()
    grid, sigma = spectrum.density_grid(result, 501, 0.1)
    assert sigma == pytest.approx(0.2)
    assert grid[0].item() == pytest.approx(1.4) and grid[-1].item() == pytest.approx(2.6)
    inside = math.erf(3 / math.sqrt(2))   # a single node keeps its mass within +-3 sigma
    assert trapezoid(result.density(grid, sigma), grid) == pytest.approx(inside, rel=1e-6)


def test_rank_from_the_slq_mass_at_zero():
    """Rank 12 in P = 60. Full Lanczos stops after 13 steps with the 12 nonzero eigenvalues
    and 0 as nodes (round-off in the null space may cost one more step, splitting the node
    at 0 in two within eps); the weight at 0 is ||P_0 q||^2 (P_0 the null-space projector),
    so P (1 - mass) is exact per probe as a function of q, and unbiased for 12 over q."""
    torch.manual_seed(4)
    basis, _ = torch.linalg.qr(torch.randn(60, 60))
    kept, null = basis[:, :12], basis[:, 12:]
    a = kept @ torch.diag(torch.linspace(1.0, 5.0, 12)) @ kept.T
    result = spectrum.slq(MatrixOperator(a), 400, 60, torch.Generator().manual_seed(5))
    eps = 1e-8 * 5.0
    padding = result.nodes.isnan()
    assert set(padding.logical_not().sum(1).tolist()) <= {13, 14}
    assert (result.weights[padding] == 0).all()
    nonzero = result.nodes.abs() > eps
    assert nonzero.sum(1).tolist() == [12] * 400
    eig = torch.linspace(1.0, 5.0, 12)
    assert torch.allclose(result.nodes[nonzero].reshape(400, 12), eig.expand(400, 12),
                          atol=1e-9)
    assert torch.allclose(result.weights.sum(1), torch.ones(400))
    null_mass = (start_vectors(5, 400, 60) @ null).pow(2).sum(1).mean().item()
    assert result.mass_near_zero(eps) == pytest.approx(null_mass, rel=1e-10)
    estimate = result.rank_estimate(eps)
    assert estimate.value == pytest.approx(60 * (1 - null_mass), rel=1e-10)
    assert 0 < estimate.standard_error < 0.5
    assert abs(estimate.value - 12) < 4 * estimate.standard_error


def test_dense_hessian_of_a_tanh_mlp_matches_autograd():
    torch.manual_seed(6)
    model = models.mlp(4, 3, [5], activation="tanh")
    x, y = torch.randn(9, 4), torch.randn(9, 3)
    operator = curvature.HessianOperator(model, x, y)
    h = spectrum.dense_hessian(operator, chunk=7)
    assert torch.equal(h, h.T)
    assert torch.allclose(h, dense_reference.loss_hessian(model, x, y), atol=1e-12)


def test_numerical_rank_counts_magnitudes_above_each_relative_tolerance():
    eigenvalues = torch.tensor([-4.0, 2.0, 1e-5, -1e-7, 1e-9, 0.0])
    assert spectrum.numerical_rank(eigenvalues, TOLERANCES) == [2, 3, 4]
    assert spectrum.numerical_rank(torch.zeros(5), TOLERANCES) == [0, 0, 0]


def test_linear_regression_hessian_rank_and_gram():
    """1/2-MSE of f = W x + b, K = 3 outputs, n = 5 < d + 1 = 9 points: H = I_K (x) S with
    S = X~^T X~ / n, X~ = [X, 1], in the ordering (output k, input j, bias last); the
    operator orders all of W (row-major) before b. rank H = K rank X~ = n K = 15."""
    n, d, k = 5, 8, 3
    torch.manual_seed(7)
    operator = curvature.HessianOperator(nn.Linear(d, k), torch.randn(n, d), torch.randn(n, k))
    x_tilde = torch.cat([operator.x, torch.ones(n, 1)], 1)
    kron = torch.kron(torch.eye(k), x_tilde.T @ x_tilde / n)
    order = [c * (d + 1) + j for c in range(k) for j in range(d)] + \
        [c * (d + 1) + d for c in range(k)]
    h = spectrum.dense_hessian(operator)
    assert torch.allclose(h, kron[order][:, order], atol=1e-12)
    eig = torch.linalg.eigvalsh(h)
    rank = k * torch.linalg.matrix_rank(x_tilde).item()
    assert rank == spectrum.rank_bounds([d], k, n)["gauss_newton_c"] == 15
    assert spectrum.numerical_rank(eig, TOLERANCES) == [rank] * 3
    gram = spectrum.gauss_newton_gram(operator, chunk=4)
    assert gram.shape == (n * k, n * k)
    assert torch.allclose(torch.linalg.eigvalsh(gram), eig[-rank:], atol=1e-12)


def softmax_regression(n, d, classes, seed):
    torch.manual_seed(seed)
    return nn.Linear(d, classes), torch.randn(n, d), torch.randint(classes, (n,))


@pytest.mark.parametrize("n, d", [(5, 8), (20, 3)])
def test_cross_entropy_hessian_of_softmax_regression_through_the_gram(n, d):
    """f = W x + b is linear in theta, so the CE Hessian is the GGN with M_i = diag(p_i) -
    p_i p_i^T, whose range is exactly 1^perp (p_i > 0). Hence range H = 1^perp (x) span(x~_i)
    and rank H = (C-1) rank X~ = min(N (C-1), (C-1)(d+1)) for points in general position."""
    classes = 4
    model, x, labels = softmax_regression(n, d, classes, seed=8)
    weight, bias = model.weight.detach(), model.bias.detach()

    def cross_entropy(theta):
        w, b = theta[:classes * d].reshape(classes, d), theta[classes * d:]
        return nn.functional.cross_entropy(x @ w.T + b, labels)

    h = hessian(cross_entropy)(torch.cat([weight.reshape(-1), bias]))
    p = torch.softmax(x @ weight.T + bias, dim=1)
    output_hessian = torch.diag_embed(p) - p[:, :, None] * p[:, None, :]
    operator = curvature.HessianOperator(model, x, nn.functional.one_hot(labels, classes))
    gram = spectrum.gauss_newton_gram(operator, output_hessian, chunk=3)
    x_tilde = torch.cat([x, torch.ones(n, 1)], 1)
    rank = (classes - 1) * torch.linalg.matrix_rank(x_tilde).item()
    bounds = spectrum.rank_bounds([d], classes, n)
    assert rank == min(bounds["gauss_newton_c_minus_1"], bounds["layers_c_minus_1_bias"])
    eig_h, eig_gram = torch.linalg.eigvalsh(h), torch.linalg.eigvalsh(gram)
    assert spectrum.numerical_rank(eig_h, TOLERANCES) == [rank] * 3
    assert spectrum.numerical_rank(eig_gram, TOLERANCES) == [rank] * 3
    assert torch.allclose(eig_gram[-rank:], eig_h[-rank:], atol=1e-12)


def test_gauss_newton_gram_of_a_tanh_mlp_matches_the_dense_gauss_newton_matrix():
    """G = (1/n) sum_i J_i^T M_i J_i from the reference's Jacobians, M_i = B_i B_i^T of
    rank 2."""
    n, k = 7, 3
    torch.manual_seed(9)
    model = models.mlp(4, k, [5], activation="tanh")
    x = torch.randn(n, 4)
    operator = curvature.HessianOperator(model, x, torch.randn(n, k))
    factors = torch.randn(n, k, 2)
    output_hessian = factors @ factors.mT
    jac = dense_reference.jacobians(model, x)                                    # (n, K, P)
    g = torch.einsum("iap,iab,ibq->pq", jac, output_hessian, jac) / n
    gram = spectrum.gauss_newton_gram(operator, output_hessian, chunk=5)
    eig_g, eig_gram = torch.linalg.eigvalsh(g), torch.linalg.eigvalsh(gram)
    assert spectrum.numerical_rank(eig_gram, TOLERANCES) == \
        spectrum.numerical_rank(eig_g, TOLERANCES)
    assert spectrum.numerical_rank(eig_gram, (1e-8,)) == [2 * n]   # rank M_i = 2, n points
    assert torch.allclose(eig_gram[-2 * n:], eig_g[-2 * n:], atol=1e-12)
    with pytest.raises(ValueError, match="output_hessian"):
        spectrum.gauss_newton_gram(operator, output_hessian[:, :2, :2])


def test_rank_bounds_and_fan_ins_by_hand():
    model = models.mlp(4, 3, [5])
    fans = [spectrum.fan_in(m) for m in model if isinstance(m, nn.Linear)]
    assert fans == [4, 5]
    assert spectrum.rank_bounds(fans, 3, 10) == {
        "layers_c_minus_1": 2 * 9, "layers_c": 3 * 9,
        "layers_c_minus_1_bias": 2 * 11, "layers_c_bias": 3 * 11,
        "gauss_newton_c_minus_1": 10 * 2, "gauss_newton_c": 10 * 3,
    }
    assert spectrum.fan_in(nn.Conv2d(4, 6, 3, groups=2)) == 2 * 9
    assert spectrum.fan_in(nn.Conv1d(3, 4, 5)) == 15
    with pytest.raises(TypeError):
        spectrum.fan_in(nn.Tanh())
