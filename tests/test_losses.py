"""Cross-entropy and MSE Hessians against closed forms and dense autograd, in float64.

Independent references: the softmax-regression Hessian (1/n) sum_i M_i (x) x~_i x~_i^T, and
the dense H and Gauss-Newton matrix of ``dense_reference``.
"""

import dense_reference
import pytest
import torch
from torch import nn
from torch.func import hessian

from flatrep import losses, models
from flatrep.measures import curvature, jacobian, krylov, trace_estimators

pytestmark = pytest.mark.usefixtures("float64_default")

CE = losses.get("cross_entropy")
MSE = losses.get("mse")


def softmax_regression(n=40, d=5, k=4, seed=0):
    torch.manual_seed(seed)
    model = nn.Linear(d, k)
    x, labels = torch.randn(n, d), torch.randint(0, k, (n,))
    return model, x, labels


def test_softmax_regression_hessian_is_the_kronecker_closed_form():
    """f = W x + b is linear in theta, so H = (1/n) sum_i M_i (x) x~_i x~_i^T exactly."""
    model, x, labels = softmax_regression()
    operator = curvature.HessianOperator(model, x, labels, loss=CE)
    p = torch.softmax(model(x), 1).detach()
    m = torch.diag_embed(p) - p[:, :, None] * p[:, None, :]
    n, (k, d) = len(x), model.weight.shape
    # theta = [vec(W) row-major, b]: W_ja at j*d + a, b_j at k*d + j.
    blocks = torch.einsum("njl,na,nb->jalb", m, x, x).reshape(k * d, k * d) / n
    cross = torch.einsum("njl,na->jal", m, x).reshape(k * d, k) / n
    expected = torch.cat([torch.cat([blocks, cross], 1),
                          torch.cat([cross.T, m.mean(0)], 1)], 0)
    h = dense_reference.loss_hessian(model, x, labels, CE)
    assert torch.allclose(h, expected, atol=1e-14)
    eig = torch.linalg.eigvalsh(expected)
    # Each M_i has null vector 1, so rank H <= (K-1)(d+1) (here n > d + 1).
    assert int((eig.abs() > 1e-10 * eig.abs().max()).sum()) == (k - 1) * (d + 1)
    gram = jacobian.per_sample_jacobians(model, x)["param_gram"]
    trace = CE.gauss_newton_trace(operator.output_values, gram)
    assert trace == pytest.approx(torch.trace(expected).item(), rel=1e-12)
    ritz = krylov.lanczos(operator, operator.dim, torch.Generator().manual_seed(0))
    assert ritz.lambda_max == pytest.approx(eig[-1].item(), rel=1e-10)
    est = trace_estimators.hutchinson(operator, 2000, torch.Generator().manual_seed(1))
    assert abs(est.frobenius.value - expected.norm().item()) < 4 * est.frobenius.standard_error


def test_linear_regression_mse_hessian_closed_form():
    """1/2-MSE of f = W x + b: H = I_K (x) (1/n) X~^T X~ (theta ordered W row-major, then b)."""
    torch.manual_seed(1)
    model = nn.Linear(3, 2)
    x, y = torch.randn(30, 3), torch.randn(30, 2)
    operator = curvature.HessianOperator(model, x, y)
    xt = torch.cat([x, torch.ones(30, 1)], 1)
    gram = xt.T @ xt / 30
    expected = torch.zeros(8, 8)
    for j in range(2):
        expected[3 * j:3 * j + 3, 3 * j:3 * j + 3] = gram[:3, :3]
        expected[3 * j:3 * j + 3, 6 + j] = gram[:3, 3]
        expected[6 + j, 3 * j:3 * j + 3] = gram[3, :3]
        expected[6 + j, 6 + j] = 1.0
    assert torch.allclose(dense_reference.loss_hessian(model, x, y), expected, atol=1e-14)
    assert torch.allclose(operator.apply(torch.eye(8)), expected, atol=1e-14)
    eig = torch.linalg.eigvalsh(expected)
    assert torch.allclose(eig, torch.linalg.eigvalsh(gram).repeat_interleave(2), atol=1e-12)


@pytest.mark.parametrize("loss", [MSE, CE], ids=["mse", "cross_entropy"])
def test_gauss_newton_trace_from_per_sample_grams_matches_autograd(loss):
    torch.manual_seed(2)
    model = models.mlp((4,), 3, [6], activation="tanh").double()
    x, labels = torch.randn(15, 4), torch.randint(0, 3, (15,))
    targets = loss.targets(labels, 3, x.dtype)
    operator = curvature.HessianOperator(model, x, targets, loss=loss)
    gram = jacobian.per_sample_jacobians(model, x, chunk_size=4)["param_gram"]
    gauss_newton = dense_reference.gauss_newton(model, x, targets, loss)
    expected = torch.trace(gauss_newton).item()
    assert loss.gauss_newton_trace(operator.output_values, gram) == pytest.approx(expected,
                                                                                  rel=1e-12)
    probes = trace_estimators.rademacher(6, operator.dim, torch.Generator().manual_seed(0))
    quadratic = curvature.GaussNewtonOperator(operator).quadratic(probes)
    assert torch.allclose(quadratic, torch.einsum("mp,pq,mq->m", probes,
                                                  gauss_newton, probes))


@pytest.mark.parametrize("loss", [MSE, CE], ids=["mse", "cross_entropy"])
def test_relu_net_hessian_trace_equals_gauss_newton_trace_off_interpolation(loss):
    """A ReLU net is linear in each single weight, so the residual term (1/n) sum_i sum_c
    dl/df_c grad^2 f_c has a zero diagonal: Tr H = Tr G at any theta (not H = G)."""
    torch.manual_seed(3)
    model = models.mlp((4,), 3, [7, 5], activation="relu").double()
    x, labels = torch.randn(20, 4), torch.randint(0, 3, (20,))
    targets = loss.targets(labels, 3, x.dtype)
    operator = curvature.HessianOperator(model, x, targets, loss=loss)
    h = dense_reference.loss_hessian(model, x, targets, loss)
    g = dense_reference.gauss_newton(model, x, targets, loss)
    assert (h - g).norm() > 1e-3 * h.norm()          # off interpolation: H != G
    assert torch.trace(h).item() == pytest.approx(torch.trace(g).item(), rel=1e-11)
    gram = jacobian.per_sample_jacobians(model, x)["param_gram"]
    assert loss.gauss_newton_trace(operator.output_values, gram) == pytest.approx(
        torch.trace(h).item(), rel=1e-11)


def test_control_variate_trace_of_cross_entropy_within_standard_errors():
    torch.manual_seed(4)
    model = models.mlp((4,), 3, [6], activation="tanh").double()
    x, labels = torch.randn(30, 4), torch.randint(0, 3, (30,))
    operator = curvature.HessianOperator(model, x, labels, loss=CE)
    gram = jacobian.per_sample_jacobians(model, x)["param_gram"]
    probes = trace_estimators.rademacher(200, operator.dim, torch.Generator().manual_seed(0))
    est = trace_estimators.control_variate_trace(
        CE.gauss_newton_trace(operator.output_values, gram), probes, operator.apply(probes),
        curvature.GaussNewtonOperator(operator).quadratic(probes))
    exact = torch.trace(dense_reference.loss_hessian(model, x, labels, CE)).item()
    assert abs(est.value - exact) < 4 * est.standard_error
    assert est.standard_error > 0


def test_training_conventions():
    """mse: torch MSELoss = (2/K) * mean 1/2||f - y||^2; cross-entropy: the same in both."""
    f, labels = torch.randn(8, 5), torch.randint(0, 5, (8,))
    y = MSE.targets(labels, 5, f.dtype)
    assert MSE.training(f, y).item() == pytest.approx(
        MSE.hessian_factor(5) * MSE.per_sample(f, y).mean().item(), rel=1e-12)
    assert CE.training(f, labels).item() == pytest.approx(CE.per_sample(f, labels).mean().item())
    with pytest.raises(ValueError, match="allowed"):
        losses.get("hinge")


def test_output_hessian_of_cross_entropy_matches_autograd():
    f, labels = torch.randn(3, 4), torch.tensor([0, 2, 3])
    for i in range(3):
        expected = hessian(lambda z: nn.functional.cross_entropy(z[None], labels[i:i + 1]))(f[i])
        assert torch.allclose(CE.output_hessian(f)[i], expected, atol=1e-14)
