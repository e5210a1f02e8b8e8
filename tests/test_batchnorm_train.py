"""The BatchNorm-train-mode Hessian (``flatrep.measures.batchnorm_train``) against a dense
Hessian of the same loss written out independently with ``torch.func.hessian``, float64."""

import copy
import math

import pytest
import torch
from torch import nn

from flatrep import losses
from flatrep.measures import batchnorm_train, curvature, krylov, suite, trace_estimators


def network() -> nn.Sequential:
    """Linear(3, 4) - BatchNorm1d(4) - tanh - Dropout - Linear(4, 2) in eval mode, with
    non-trivial BatchNorm parameters and running statistics."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Tanh(), nn.Dropout(0.5),
                          nn.Linear(4, 2)).double()
    with torch.no_grad():
        model[1].weight.uniform_(0.5, 1.5)
        model[1].bias.uniform_(-0.5, 0.5)
        model[1].running_mean.uniform_(-1, 1)
        model[1].running_var.uniform_(0.5, 2)
    return model.eval()


def batch_loss(flat: torch.Tensor, x: torch.Tensor, y: torch.Tensor, batch_size: int,
               shapes: list[torch.Size], eps: float) -> torch.Tensor:
    """sum_b (|b|/n) mean_{i in b} 1/2 ||f_b(x_i) - y_i||^2, f_b normalising by batch b's
    own mean and (biased) variance, written out without any nn.Module."""
    w1, b1, gamma, beta, w2, b2 = torch.split(flat, [math.prod(s) for s in shapes])
    w1, w2 = w1.reshape(shapes[0]), w2.reshape(shapes[4])
    total = 0.0
    for start in range(0, len(x), batch_size):
        h = x[start:start + batch_size] @ w1.T + b1
        mean, var = h.mean(0), h.var(0, unbiased=False)
        out = torch.tanh((h - mean) / torch.sqrt(var + eps) * gamma + beta) @ w2.T + b2
        total = total + 0.5 * (out - y[start:start + batch_size]).pow(2).sum() / len(x)
    return total


@pytest.mark.parametrize("batch_size", [4, 3])
def test_train_mode_hessian_is_the_dense_hessian_of_the_batched_loss(batch_size):
    """H_bn V equals the dense Hessian times V, in batches of 4 and of 3 (a last batch of 2),
    its Lanczos run over all P directions finds the dense extreme eigenvalues, it differs
    from the eval-mode Hessian, and the model's running statistics and mode are untouched."""
    model = network()
    before = copy.deepcopy(model.state_dict())
    torch.manual_seed(1)
    x, y = torch.randn(8, 3, dtype=torch.float64), torch.randn(8, 2, dtype=torch.float64)
    shapes = [p.shape for p in model.parameters()]
    flat = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    dense = torch.func.hessian(batch_loss)(flat, x, y, batch_size, shapes, model[1].eps)
    op = batchnorm_train.operator(model, x, y, losses.get("mse"), batch_size)
    vectors = torch.randn(5, op.dim, dtype=torch.float64)
    torch.testing.assert_close(op.apply(vectors), vectors @ dense, rtol=1e-10, atol=1e-12)
    ritz = krylov.lanczos(op, op.dim, torch.Generator().manual_seed(0))
    eigenvalues = torch.linalg.eigvalsh(dense)
    assert ritz.lambda_max == pytest.approx(eigenvalues[-1].item(), rel=1e-8)
    assert ritz.lambda_min == pytest.approx(eigenvalues[0].item(), rel=1e-8, abs=1e-10)
    eval_mode = curvature.HessianOperator(model, x, y)
    assert not torch.allclose(eval_mode.apply(vectors), op.apply(vectors), rtol=1e-3)
    assert not model.training
    for name, value in model.state_dict().items():
        assert torch.equal(value, before[name]), name


def test_without_batchnorm_the_train_mode_hessian_is_the_eval_one():
    """An MLP with Dropout and no BatchNorm: H_bn = H (Dropout is off in both)."""
    torch.manual_seed(2)
    model = nn.Sequential(nn.Linear(3, 5), nn.Tanh(), nn.Dropout(0.3), nn.Linear(5, 2)).double()
    x, y = torch.randn(6, 3, dtype=torch.float64), torch.randn(6, 2, dtype=torch.float64)
    vectors = torch.randn(3, sum(p.numel() for p in model.parameters()), dtype=torch.float64)
    train_mode = batchnorm_train.operator(model.eval(), x, y, losses.get("mse"), 4)
    torch.testing.assert_close(train_mode.apply(vectors),
                               curvature.HessianOperator(model, x, y).apply(vectors),
                               rtol=1e-12, atol=1e-14)


def test_the_suite_family_pairs_its_trace_with_the_core_probes():
    """``batchnorm_train`` in the curvature suite: the trace is the mean of v^T H_bn v over the
    core's Hutchinson probes, lambda_max the dense top eigenvalue (steps = P)."""
    model = network()
    torch.manual_seed(3)
    x, y = torch.randn(8, 3, dtype=torch.float64), torch.randn(8, 2, dtype=torch.float64)
    shapes = [p.shape for p in model.parameters()]
    flat = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    dense = torch.func.hessian(batch_loss)(flat, x, y, 4, shapes, model[1].eps)
    cfg = {"enabled": True, "probes": 6, "batchnorm_train": {"batch_size": 4,
                                                             "steps": len(flat)}}
    values = suite.measure(model, x, y, losses.get("mse"), cfg, seed=5)
    probes = trace_estimators.rademacher(6, len(flat), torch.Generator().manual_seed(5))
    quadratic = ((probes @ dense) * probes).sum(1)
    assert values["hessian_bn_train_trace"] == pytest.approx(quadratic.mean().item(), rel=1e-10)
    assert values["hessian_bn_train_trace_se"] == pytest.approx(
        quadratic.std().item() / 6 ** 0.5, rel=1e-8)
    assert values["hessian_bn_train_lambda_max"] == pytest.approx(
        torch.linalg.eigvalsh(dense)[-1].item(), rel=1e-8)
