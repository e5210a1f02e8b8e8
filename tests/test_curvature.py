"""Curvature estimators against closed forms and dense Hessians, in float64."""

import functools
import math

import dense_reference
import pytest
import torch
from conftest import MatrixOperator
from torch import nn

from flatrep import losses, models
from flatrep.measures import (batchnorm_train, conv, curvature, jacobian, krylov, memory, operators,
                              stability, trace_estimators)

pytestmark = pytest.mark.usefixtures("float64_default")


def linear_regression(n=50, d=6, k=1, seed=0):
    torch.manual_seed(seed)
    x = torch.randn(n, d) * torch.linspace(0.5, 2.0, d)
    model = nn.Linear(d, k, bias=False)
    return model, x, torch.randn(n, k)


def test_hvp_of_linear_regression_is_xtx_over_n():
    """L = (1/2n)||Xw - y||^2 has H = X^T X / n for any w (K = 1)."""
    model, x, y = linear_regression()
    operator = curvature.HessianOperator(model, x, y)
    v = torch.randn(3, 6)
    assert torch.allclose(operator.apply(v), v @ (x.T @ x / len(x)))


@pytest.mark.parametrize("method", curvature.HVP_METHODS)
@pytest.mark.parametrize("loss_name, point_chunk, chunk_sizes", [
    ("mse", None, [7]),
    ("cross_entropy", 3, [3, 3, 1]),     # H V summed over chunks, the last one shorter
])
def test_hvp_matches_dense_hessian_of_a_tanh_mlp(method, loss_name, point_chunk, chunk_sizes):
    torch.manual_seed(1)
    model = models.mlp(4, 3, [5], activation="tanh").double()
    x = torch.randn(7, 4)
    y = torch.randn(7, 3) if loss_name == "mse" else torch.randint(0, 3, (7,))
    operator = curvature.HessianOperator(model, x, y, method=method, probe_chunk=3,
                                         loss=losses.LOSSES[loss_name], point_chunk=point_chunk)
    assert [len(part_x) for part_x, _ in operator.parts()] == chunk_sizes
    v = torch.randn(5, operator.dim)
    h = dense_reference.loss_hessian(model, x, y, losses.LOSSES[loss_name])
    assert torch.allclose(operator.apply(v), v @ h.T, atol=1e-12)


@pytest.mark.parametrize("method", curvature.HVP_METHODS)
def test_every_engine_matches_the_dense_hessian_of_a_conv_net(method):
    """A tanh 1-D conv net, cross-entropy: 3 vectors in probe chunks of 2 (a batched chunk
    and a single row) give H V of the dense Hessian."""
    torch.manual_seed(4)
    model = models.cnn((12,), 3, channels=(2,), kernel_size=3, activation="tanh").double()
    x, y = torch.randn(6, 12), torch.randint(0, 3, (6,))
    loss = losses.LOSSES["cross_entropy"]
    operator = curvature.HessianOperator(model, x, y, method=method, probe_chunk=2, loss=loss)
    v = torch.randn(3, operator.dim)
    h = dense_reference.loss_hessian(model, x, y, loss)
    assert torch.allclose(operator.apply(v), v @ h.T, atol=1e-12)


def test_auto_takes_double_backward_for_mlps_and_single_vectors():
    mlp = models.mlp(4, 3, [5])
    cnn = models.cnn((12,), 3, channels=(2,), kernel_size=3)
    assert curvature.auto_engine(mlp, 8) == curvature.auto_engine(mlp, 1) == "double_backward"
    assert curvature.auto_engine(cnn, 1) == "double_backward"
    assert curvature.auto_engine(cnn, 8) == "forward_over_reverse"


def test_an_operator_asks_auto_once_per_number_of_vectors(monkeypatch):
    """The model does not change during an operator's life, so ``engine`` keeps auto's choice:
    repeated calls with 1 and 8 vectors inspect the model once each."""
    cnn = models.cnn((12,), 3, channels=(2,), kernel_size=3).double()
    operator = curvature.HessianOperator(cnn, torch.randn(4, 12), torch.randn(4, 3), "auto")
    inspected = []
    monkeypatch.setattr(jacobian, "only_linear_parameters",
                        lambda model: inspected.append(model) or False)
    engines = [operator.engine(probes) for probes in (8, 1, 8, 1, 8)]
    assert engines == ["forward_over_reverse", "double_backward"] * 2 + ["forward_over_reverse"]
    assert inspected == [cnn]


@pytest.mark.parametrize("point_chunk, forwards_per_call", [(None, 0), (3, 3)])
def test_double_backward_keeps_its_gradient_graph_when_one_chunk_holds_every_point(
        point_chunk, forwards_per_call):
    """One chunk of all 7 points: the first call builds the gradient graph, later calls only
    back-propagate through it (no forward pass); chunks of 3 (3, 3, 1) rebuild each chunk's
    graph every call. The products stay those of the dense Hessian."""
    torch.manual_seed(5)
    model = models.mlp(4, 3, [5], activation="tanh").double()
    x, y = torch.randn(7, 4), torch.randn(7, 3)
    operator = curvature.HessianOperator(model, x, y, method="double_backward", probe_chunk=2,
                                         point_chunk=point_chunk)
    assert operator.single_point_chunk == (point_chunk or 7)   # sized before the count
    h = dense_reference.loss_hessian(model, x, y)
    forwards = []
    model.register_forward_hook(lambda *_: forwards.append(1))
    first = operator.apply(torch.eye(operator.dim)[:5])
    calls_before = len(forwards)
    second = operator.apply(torch.eye(operator.dim)[5:6])
    assert len(forwards) - calls_before == forwards_per_call
    torch.testing.assert_close(torch.cat([first, second]), h[:6], rtol=0, atol=1e-12)


def test_a_single_vector_keeps_its_graph_where_a_batch_of_probes_needs_point_chunks():
    """auto on a conv net: batches of 4 probes forward-over-reverse, single vectors double
    backward. A budget that holds one vector's pass and graph over all 6 points but not 4
    probes' forward-over-reverse pass: the batch runs in point chunks, the single vectors
    (a Lanczos run) keep one graph, a batch in between drops it, and every product is the
    dense Hessian's."""
    torch.manual_seed(6)
    model = models.cnn((12,), 3, channels=(2,), kernel_size=3, activation="tanh").double()
    x, y = torch.randn(6, 12), torch.randint(0, 3, (6,))
    loss = losses.LOSSES["cross_entropy"]
    dim = sum(p.numel() for p in model.parameters())
    floats = memory.activation_floats(model, x)
    budget = 8 * (memory.REVERSE_PARAMETER_COPIES * dim
                  + (memory.ACTIVATION_COPIES + memory.GRAPH_COPIES) * floats * 6)
    operator = curvature.HessianOperator(model, x, y, "auto", probe_chunk=4, loss=loss,
                                         max_bytes=budget)
    assert operator.single_point_chunk == 6 and operator.point_chunk < 6
    h = dense_reference.loss_hessian(model, x, y, loss)
    forwards = []
    model.register_forward_hook(lambda *_: forwards.append(1))
    eye = torch.eye(dim)
    singles = [operator.apply(eye[i:i + 1]) for i in range(3)]
    assert len(forwards) == 1                        # one graph for the three
    batch = operator.apply(eye[3:7])
    assert operator._kept_graph is None
    again = operator.apply(eye[7:8])
    torch.testing.assert_close(torch.cat([*singles, batch, again]), h[:8], rtol=0, atol=1e-12)


def test_hutchinson_within_standard_errors_of_the_dense_values():
    torch.manual_seed(2)
    model = models.mlp(4, 3, [6], activation="tanh").double()
    x, y = torch.randn(30, 4), torch.randn(30, 3)
    operator = curvature.HessianOperator(model, x, y)
    h = dense_reference.loss_hessian(model, x, y)
    est = trace_estimators.hutchinson(operator, 400, torch.Generator().manual_seed(0))
    assert abs(est.trace.value - torch.trace(h).item()) < 4 * est.trace.standard_error
    assert abs(est.frobenius.value - h.norm().item()) < 4 * est.frobenius.standard_error
    assert est.trace.standard_error > 0
    rank = torch.trace(h).item() ** 2 / h.norm().item() ** 2
    assert est.effective_rank == pytest.approx(rank, rel=0.2)


def test_hutch_plus_plus_is_exact_when_the_sketch_spans_a_low_rank_hessian():
    """Linear regression with d = 6 parameters: 3 x 9 matvecs sketch the whole space."""
    model, x, y = linear_regression()
    operator = curvature.HessianOperator(model, x, y)
    est = trace_estimators.hutch_plus_plus(operator, 27, torch.Generator().manual_seed(0))
    assert est.value == pytest.approx(torch.trace(x.T @ x / len(x)).item(), rel=1e-10)


def test_hutch_plus_plus_beats_hutchinson_on_a_decaying_spectrum():
    torch.manual_seed(3)
    model = models.mlp(5, 2, [8], activation="tanh").double()
    x, y = torch.randn(40, 5), torch.randn(40, 2)
    operator = curvature.HessianOperator(model, x, y)
    exact = torch.trace(dense_reference.loss_hessian(model, x, y)).item()
    errors = {"hutch": [], "hpp": []}
    for seed in range(20):
        gen = torch.Generator().manual_seed(seed)
        errors["hutch"].append(abs(trace_estimators.hutchinson(operator, 30, gen).trace.value
                                   - exact))
        gen = torch.Generator().manual_seed(seed)
        errors["hpp"].append(abs(trace_estimators.hutch_plus_plus(operator, 30, gen).value
                                 - exact))
    assert sum(errors["hpp"]) < sum(errors["hutch"])


def indefinite_matrix(eigenvalues: torch.Tensor, seed: int) -> torch.Tensor:
    """U diag(eigenvalues) U^T for a random orthogonal U (float64)."""
    u, _ = torch.linalg.qr(torch.randn(len(eigenvalues), len(eigenvalues),
                                       generator=torch.Generator().manual_seed(seed)))
    return u @ torch.diag(eigenvalues) @ u.T


def test_deflated_frobenius_is_exact_when_the_sketch_spans_a_low_rank_matrix():
    """Rank 5 of 40, eigenvalues of both signs: 18 matvecs sketch 6 columns, which span the
    range, so ||A Q||_F = ||A||_F and the residual probes give A (I - QQ^T) g = 0."""
    a = indefinite_matrix(torch.tensor([4.0, -3.0, 2.0, -1.0, 0.5] + [0.0] * 35), 0)
    estimate = trace_estimators.deflated_frobenius(MatrixOperator(a), 18,
                                                   torch.Generator().manual_seed(1))
    assert estimate.value == pytest.approx(a.norm().item(), rel=1e-12)
    assert estimate.standard_error < 1e-12


def test_deflated_frobenius_is_unbiased_and_beats_hutchinson_on_a_decaying_spectrum():
    """P = 60, eigenvalues +-i^-1 (indefinite, sum lambda^2 spread over the top tens): over
    200 seeds the mean of the squared estimates is ||A||_F^2 within 4 standard errors of that
    mean, and at 24 matvecs the RMS error is below half plain Hutchinson's."""
    dim = 60
    signs = torch.tensor([(-1.0) ** i for i in range(dim)])
    a = indefinite_matrix(signs / torch.arange(1.0, dim + 1), 2)
    exact = a.norm().item()
    squares, errors = [], {"deflated": [], "hutchinson": []}
    for seed in range(200):
        deflated = trace_estimators.deflated_frobenius(MatrixOperator(a), 24,
                                                       torch.Generator().manual_seed(seed))
        plain = trace_estimators.hutchinson(MatrixOperator(a), 24,
                                            torch.Generator().manual_seed(seed)).frobenius
        squares.append(deflated.value ** 2)
        errors["deflated"].append(deflated.value - exact)
        errors["hutchinson"].append(plain.value - exact)
    squares = torch.tensor(squares)
    assert abs(squares.mean().item() - exact ** 2) < 4 * squares.std().item() / math.sqrt(200)
    rms = {name: torch.tensor(e).pow(2).mean().sqrt().item() for name, e in errors.items()}
    assert rms["deflated"] < 0.5 * rms["hutchinson"]


def test_deflated_frobenius_standard_error_needs_two_residual_probes():
    """matvecs // 3 sketch columns and as many basis products leave matvecs - 2 (matvecs // 3)
    residual probes: one below 4 matvecs (SE NaN, as documented), two from 4 on."""
    a = indefinite_matrix(torch.arange(1.0, 9.0), 3)
    for matvecs, se_defined in ((3, False), (4, True), (5, True)):
        estimate = trace_estimators.deflated_frobenius(MatrixOperator(a), matvecs,
                                                       torch.Generator().manual_seed(0))
        assert math.isfinite(estimate.value)
        assert math.isfinite(estimate.standard_error) == se_defined, matvecs


def test_lanczos_extreme_eigenvalues_match_eigvalsh():
    torch.manual_seed(4)
    model = models.mlp(4, 3, [6], activation="tanh").double()
    x, y = torch.randn(30, 4), torch.randn(30, 3)
    operator = curvature.HessianOperator(model, x, y)
    eig = torch.linalg.eigvalsh(dense_reference.loss_hessian(model, x, y))
    result = krylov.lanczos(operator, operator.dim, torch.Generator().manual_seed(0))
    assert result.lambda_max == pytest.approx(eig[-1].item(), rel=1e-9)
    assert result.lambda_min == pytest.approx(eig[0].item(), abs=1e-9 * eig.abs().max().item())
    assert result.residuals[-1] < 1e-6


def test_lanczos_residual_bounds_the_error_of_few_steps():
    """With fewer steps than dimensions the true eigenvalue lies within the residual bound."""
    model, x, y = linear_regression(d=12)
    operator = curvature.HessianOperator(model, x, y)
    top = torch.linalg.eigvalsh(x.T @ x / len(x))[-1].item()
    result = krylov.lanczos(operator, 5, torch.Generator().manual_seed(1))
    assert abs(result.lambda_max - top) <= result.residuals[-1].item() + 1e-12
    assert result.lambda_max <= top + 1e-12   # Ritz values interlace from inside


def test_softmax_free_linear_regression_with_k_outputs_has_block_diagonal_trace():
    """K outputs, W in R^{K x d}: H = I_K (x) X^T X / n, so Tr H = K Tr(X^T X)/n."""
    model, x, y = linear_regression(k=3)
    operator = curvature.HessianOperator(model, x, y)
    est = trace_estimators.hutch_plus_plus(operator, 3 * 18, torch.Generator().manual_seed(2))
    assert est.value == pytest.approx(3 * torch.trace(x.T @ x).item() / len(x), rel=1e-10)
    assert math.isfinite(est.standard_error)


def test_pipeline_curvature_on_a_trained_checkpoint_matches_the_dense_hessian(measured_tiny_run,
                                                                              tiny_study,
                                                                              data_root):
    from flatrep import checkpoint, losses
    from flatrep.data import datasets
    from flatrep.measures import suite

    ds, paths = measured_tiny_run
    assert all(ds[name].notnull().all() for name in ("hessian_trace", "hessian_lambda_max"))
    model, _ = checkpoint.load(paths[-1])
    model = model.double()
    x, y = datasets.load_study_split(tiny_study["data"], "train", data_root)
    x, targets = x[:60].double(), nn.functional.one_hot(y[:60], 10).double()
    cfg = {"probes": 60, "lanczos": {"steps": 40}}
    values = suite.measure(model, x, targets, losses.get("mse"), cfg, seed=0)
    h = dense_reference.loss_hessian(model, x, targets)
    eig = torch.linalg.eigvalsh(h)
    # a ReLU MLP: Tr H = Tr G exactly (piecewise_linear), with SE 0
    assert values["hessian_trace_exact"] == 1.0 and values["hessian_trace_se"] == 0.0
    assert values["hessian_trace"] == pytest.approx(torch.trace(h).item(), rel=1e-12)
    assert abs(values["hessian_trace_hutchinson"] - torch.trace(h).item()) < \
        4 * values["hessian_trace_hutchinson_se"]
    assert values["hessian_lambda_max"] <= eig[-1].item() + 1e-9
    assert eig[-1].item() - values["hessian_lambda_max"] <= \
        values["hessian_lambda_max_residual"] + 1e-9
    assert values["hessian_lambda_min"] >= eig[0].item() - 1e-9


def test_point_chunks_leave_the_per_sample_quadratic_forms_unchanged():
    torch.manual_seed(3)
    model = models.mlp(4, 3, [5], activation="tanh").double()
    x, y = torch.randn(7, 4), torch.randn(7, 3)
    v = torch.randn(4, 43)
    whole, chunked = (curvature.GaussNewtonOperator(curvature.HessianOperator(
        model, x, y, probe_chunk=3, point_chunk=chunk)).per_sample_quadratic(v)
        for chunk in (None, 2))
    assert chunked.shape == (4, 7)
    torch.testing.assert_close(chunked, whole, rtol=1e-13, atol=0.0)


def test_hvp_chunking_fits_probes_then_points_in_the_budget():
    """mlp(4, 3, [5]) has P = 43 parameters; one sample's forward allocates Linear 5 + Tanh 5
    + Linear 3 = 13 floats (x and its flattening are not new). A probe holds about 3 * 43
    float64s (1032 bytes) whatever its points, and 4 * 13 float64s (416 bytes) a point."""
    model = models.mlp(4, 3, [5], activation="tanh").double().train()
    x = torch.randn(50, 4)
    assert memory.activation_floats(model, x) == 13 and model.training
    probe_bytes = memory.PARAMETER_COPIES * 43 * 8
    point_bytes = memory.ACTIVATION_COPIES * 13 * 8
    assert (probe_bytes, point_bytes) == (1032, 416)
    chunking = functools.partial(memory.hvp_chunking, model, x, 43, 8)
    assert chunking(max_bytes=10**9) == (8, 50)
    assert chunking(max_bytes=8 * (probe_bytes + 12 * point_bytes) + 1) == (8, 12)
    assert chunking(max_bytes=8 * (probe_bytes + point_bytes)) == (8, 1)
    assert chunking(max_bytes=5 * (probe_bytes + point_bytes) + 100) == (5, 1)
    assert chunking(max_bytes=probe_bytes // 2) == (1, 1)
    # double backward: one more parameter-sized vector a probe, and a gradient graph of
    # GRAPH_COPIES = ACTIVATION_COPIES floats a point (one more point_bytes a point)
    reverse_probe_bytes = memory.REVERSE_PARAMETER_COPIES * 43 * 8
    assert chunking(max_bytes=8 * reverse_probe_bytes + 9 * 12 * point_bytes,
                    reverse=True) == (8, 12)
    operator = curvature.HessianOperator(model.eval(), x, torch.randn(50, 3), probe_chunk=8,
                                         max_bytes=8 * (probe_bytes + 12 * point_bytes))
    assert (operator.probe_chunk, operator.point_chunk) == (8, 12)


def test_activation_floats_count_what_runs_outside_modules():
    """Attention written with plain tensor operations inside one module, on T = 6 tokens of
    width 4: the scores Q K^T (T x T), their scaled copy (T x T), the softmax (T x T) and the
    weighted values (T x 4), 3 * 36 + 24 = 132 floats; module hooks saw only the output."""

    class Attention(nn.Module):
        def forward(self, tokens):
            scores = tokens @ tokens.transpose(-2, -1)
            return (scores / 2.0).softmax(-1) @ tokens

    assert memory.activation_floats(Attention(), torch.randn(3, 6, 4)) == 3 * 36 + 24


def test_fewer_probes_a_pass_give_the_same_hessian_vector_products():
    """A budget of two probes' parameter-sized vectors and one point's activations each
    splits 5 probes 2 + 2 + 1 over one point at a time: the same H V as one pass of all probes
    and points."""
    torch.manual_seed(3)
    model = models.mlp(4, 3, [5], activation="tanh").eval()
    x, y = torch.randn(9, 4), torch.randn(9, 3)
    v = torch.randn(5, 43)
    probe_bytes = memory.PARAMETER_COPIES * 43 * 8 + memory.ACTIVATION_COPIES * 13 * 8
    split = curvature.HessianOperator(model, x, y, probe_chunk=8, max_bytes=2 * probe_bytes)
    assert (split.probe_chunk, split.point_chunk) == (2, 1)
    whole = curvature.HessianOperator(model, x, y, probe_chunk=8)
    assert (whole.probe_chunk, whole.point_chunk) == (8, 9)
    torch.testing.assert_close(split.apply(v), whole.apply(v), rtol=1e-12, atol=1e-14)


def test_gauss_newton_quadratic_form_matches_the_jacobians():
    """v^T G v = (1/n) sum_i ||J_i v||^2 with J_i from the dense reference (jacrev)."""
    torch.manual_seed(5)
    model = models.mlp(4, 3, [5], activation="tanh").double()
    x, y = torch.randn(7, 4), torch.randn(7, 3)
    operator = curvature.HessianOperator(model, x, y)
    v = torch.randn(4, operator.dim)
    jac = dense_reference.jacobians(model, x).reshape(7 * 3, -1)
    expected = (v @ jac.T).pow(2).sum(1) / 7
    assert torch.allclose(curvature.GaussNewtonOperator(operator).quadratic(v), expected)


@pytest.mark.parametrize("loss_name, point_chunk", [("mse", None), ("cross_entropy", 3)])
def test_gauss_newton_products_match_the_dense_gauss_newton_matrix(loss_name, point_chunk):
    """G V against the dense G = (1/n) sum_i J_i^T M_i J_i of the reference (J_i by jacrev,
    M_i the Hessian of the per-sample loss in the outputs: identity for 1/2-MSE,
    diag(p) - p p^T for cross-entropy), over all points and over chunks 3, 3, 1, four probes
    two at a time."""
    torch.manual_seed(10)
    model = models.mlp(4, 3, [5], activation="tanh").double()
    x = torch.randn(7, 4)
    y = torch.randn(7, 3) if loss_name == "mse" else torch.randint(0, 3, (7,))
    operator = curvature.HessianOperator(model, x, y, probe_chunk=2,
                                         loss=losses.LOSSES[loss_name], point_chunk=point_chunk)
    gauss_newton = dense_reference.gauss_newton(model, x, y, losses.LOSSES[loss_name])
    v = torch.randn(4, operator.dim)
    torch.testing.assert_close(curvature.GaussNewtonOperator(operator).apply(v),
                               v @ gauss_newton, rtol=1e-10, atol=1e-13)


def test_residual_frobenius_within_standard_errors_and_zero_for_a_linear_model():
    """||H - G||_F against the dense H - G of a tanh MLP off interpolation (Hutchinson, 400
    probes, within 4 SE); for a linear model under 1/2-MSE H = G, so it is 0 to rounding."""
    torch.manual_seed(11)
    model = models.mlp(4, 3, [6], activation="tanh").double()
    x, y = torch.randn(30, 4), torch.randn(30, 3)
    operator = curvature.HessianOperator(model, x, y)
    h = dense_reference.loss_hessian(model, x, y)
    residual = h - dense_reference.gauss_newton(model, x, y)
    probes = trace_estimators.hutchinson(operator, 400, torch.Generator().manual_seed(0))
    est = trace_estimators.residual_frobenius(
        probes.products, curvature.GaussNewtonOperator(operator).apply(probes.vectors))
    assert residual.norm().item() > 0.1 * h.norm().item()    # far from G
    assert abs(est.value - residual.norm().item()) < 4 * est.standard_error
    linear, x_lin, y_lin = linear_regression(k=2)
    operator = curvature.HessianOperator(linear, x_lin, y_lin)
    probes = trace_estimators.hutchinson(operator, 8, torch.Generator().manual_seed(0))
    est = trace_estimators.residual_frobenius(
        probes.products, curvature.GaussNewtonOperator(operator).apply(probes.vectors))
    assert est.value < 1e-12 * probes.frobenius.value and est.standard_error < 1e-12


def test_control_variate_trace_within_standard_errors_and_far_tighter_than_hutchinson():
    """Tr H = Tr G + Hutchinson on H - G within 4 SE of the dense trace near interpolation,
    its SE under a tenth of plain Hutchinson's; v^T G v taken from G V (the core's way) gives
    the same estimate as from the JVP quadratic forms."""
    torch.manual_seed(6)
    model = models.mlp(4, 3, [6], activation="tanh").double()
    x = torch.randn(30, 4)
    y = model(x).detach() + 0.05 * torch.randn(30, 3)   # near interpolation
    operator = curvature.HessianOperator(model, x, y)
    exact = torch.trace(dense_reference.loss_hessian(model, x, y)).item()
    gauss_newton = jacobian.per_sample_jacobians(model, x)["param_sq"].mean().item()
    probes = trace_estimators.rademacher(50, operator.dim, torch.Generator().manual_seed(0))
    gauss_newton_operator = curvature.GaussNewtonOperator(operator)
    products = operator.apply(probes)
    est = trace_estimators.control_variate_trace(gauss_newton, probes, products,
                                                 gauss_newton_operator.quadratic(probes))
    plain = trace_estimators.hutchinson(operator, 50, torch.Generator().manual_seed(0)).trace
    assert abs(est.value - exact) < 4 * est.standard_error
    assert est.standard_error < 0.1 * plain.standard_error
    from_products = trace_estimators.control_variate_trace(
        gauss_newton, probes, products,
        (probes * gauss_newton_operator.apply(probes)).sum(1))
    assert from_products.value == pytest.approx(est.value, rel=1e-12)
    assert from_products.standard_error == pytest.approx(est.standard_error, rel=1e-9)


def test_control_variate_trace_is_exact_at_interpolation():
    torch.manual_seed(7)
    model = models.mlp(4, 3, [6], activation="tanh").double()
    x = torch.randn(20, 4)
    y = model(x).detach()
    operator = curvature.HessianOperator(model, x, y)
    gauss_newton = jacobian.per_sample_jacobians(model, x)["param_sq"].mean().item()
    probes = trace_estimators.rademacher(4, operator.dim, torch.Generator().manual_seed(0))
    est = trace_estimators.control_variate_trace(
        gauss_newton, probes, operator.apply(probes),
        curvature.GaussNewtonOperator(operator).quadratic(probes))
    exact = torch.trace(dense_reference.loss_hessian(model, x, y)).item()
    assert est.value == pytest.approx(exact, rel=1e-12)
    assert est.standard_error < 1e-12


@pytest.mark.parametrize("point_chunk", [None, 5])
def test_stability_ingredients_match_dense_per_sample_gauss_newton_matrices(point_chunk):
    """Non-uniformity, mean ||G_i||_F^2 and the Rayleigh spread from G_i = J_i^T M_i J_i built
    densely with autograd, for MSE and cross-entropy, over all 12 points at once and in
    chunks of 5, 5, 2."""
    torch.manual_seed(9)
    model = models.mlp(4, 3, [5], activation="tanh").double()
    x, labels = torch.randn(12, 4), torch.randint(0, 3, (12,))
    for loss in (losses.get("mse"), losses.get("cross_entropy")):
        targets = loss.targets(labels, 3, x.dtype)
        operator = curvature.HessianOperator(model, x, targets, loss=loss,
                                             point_chunk=point_chunk)
        per_sample = dense_reference.per_sample_gauss_newton(model, x, targets, loss)
        m = dense_reference.output_hessians(model, x, targets, loss)
        g = per_sample.mean(0)
        spread_matrix = (per_sample @ per_sample).mean(0) - g @ g
        grams = jacobian.per_sample_jacobians(model, x)["param_gram"]
        value = stability.nonuniformity(operator, grams, operator.dim,
                                        torch.Generator().manual_seed(0))
        assert value == pytest.approx(torch.linalg.eigvalsh(spread_matrix)[-1].sqrt().item(),
                                      rel=1e-8)
        assert stability.per_sample_fro_sq(m, grams) == pytest.approx(
            per_sample.pow(2).sum((1, 2)).mean().item(), rel=1e-12)
        eigenvalues, vectors = torch.linalg.eigh(dense_reference.loss_hessian(model, x, targets,
                                                                              loss))
        top = vectors[:, -1]
        expected = (torch.einsum("p,npq,q->n", top, per_sample, top) - eigenvalues[-1]).pow(2)
        assert stability.rayleigh_spread(curvature.GaussNewtonOperator(operator), top,
                                         eigenvalues[-1].item()) == \
            pytest.approx(expected.mean().item(), rel=1e-10)
        ritz = krylov.lanczos(operator, operator.dim, torch.Generator().manual_seed(1))
        assert abs(torch.dot(ritz.top_vector, top).item()) == pytest.approx(1.0, abs=1e-8)


def test_every_curvature_operator_meets_the_linear_operator_contract():
    """H, G, the BatchNorm-train Hessian, the non-uniformity operator and a convolution's
    A^T A all carry ``dim``, ``dtype``, ``device`` and ``apply``, and apply to (m, dim)."""
    torch.manual_seed(12)
    model = models.mlp(4, 3, [5], activation="tanh").double()
    x, y = torch.randn(6, 4), torch.randn(6, 3)
    hessian = curvature.HessianOperator(model, x, y)
    grams = jacobian.per_sample_jacobians(model, x)["param_gram"]
    layer = nn.Conv1d(2, 3, 3, padding=1, bias=False).double()
    for operator in (hessian, curvature.GaussNewtonOperator(hessian),
                     batchnorm_train.operator(model, x, y, losses.get("mse"), 4),
                     stability.NonUniformityOperator(hessian, grams),
                     conv.NormalOperator(layer, (2, 5))):
        assert isinstance(operator, operators.LinearOperator)
        vectors = torch.randn(2, operator.dim, dtype=operator.dtype, device=operator.device)
        assert operator.apply(vectors).shape == (2, operator.dim)


def batchnorm_conv_net() -> nn.Sequential:
    """Conv2d-BatchNorm2d (eval, running statistics and affine drawn at random)-ReLU-
    MaxPool2d-Flatten-Linear on 1x8x8 inputs."""
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.ReLU(), nn.MaxPool2d(2),
                          nn.Flatten(), nn.Linear(2 * 3 * 3, 3))
    batchnorm = model[1]
    batchnorm.running_mean.uniform_(-0.5, 0.5)
    batchnorm.running_var.uniform_(0.5, 2.0)
    nn.init.uniform_(batchnorm.weight, 0.5, 1.5)
    nn.init.uniform_(batchnorm.bias, -0.5, 0.5)
    return model.eval()


PIECEWISE_LINEAR_NETWORKS = {
    "relu_mlp": (lambda: models.mlp(4, 3, [6, 5]), (9, 4)),
    "relu_conv_pool": (lambda: models.cnn2d((1, 8, 8), 3, channels=(2,), hidden=(4,)),
                       (6, 1, 8, 8)),
    "batchnorm_eval_conv": (batchnorm_conv_net, (6, 1, 8, 8)),
}


@pytest.mark.parametrize("loss_name", ["mse", "cross_entropy"])
@pytest.mark.parametrize("network", list(PIECEWISE_LINEAR_NETWORKS))
def test_a_piecewise_linear_network_has_diag_h_equal_to_diag_g(network, loss_name):
    """For ReLU/max-pool networks with eval-mode BatchNorm each output is linear in each single
    parameter, so diag(H - G) = 0 and Tr H = Tr G, far from interpolation and for either loss
    (dense H and G by torch.func, float64), while H - G itself is far from 0."""
    build, shape = PIECEWISE_LINEAR_NETWORKS[network]
    torch.manual_seed(6)
    model = build().double()
    x = torch.randn(*shape)
    loss = losses.LOSSES[loss_name]
    targets = 3 * torch.randn(shape[0], 3) if loss_name == "mse" else torch.arange(shape[0]) % 3
    assert curvature.piecewise_linear(model)
    h = dense_reference.loss_hessian(model, x, targets, loss)
    g = dense_reference.gauss_newton(model, x, targets, loss)
    assert torch.allclose(torch.diagonal(h), torch.diagonal(g), rtol=0, atol=1e-13)
    assert (h - g).norm() > 1e-2 * h.norm()


class SquaredLinear(nn.Module):
    """f = (W x + b)^2: a Linear layer inside a custom forward, quadratic in each parameter."""

    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(4, 3)

    def forward(self, x):
        return self.linear(x) ** 2


def test_networks_with_curvature_in_single_parameters_are_not_piecewise_linear():
    """tanh (whose diag(H - G) is measurably nonzero), LayerNorm, BatchNorm normalising by the
    batch, a weight shared by two layers and a custom forward all keep the control variate."""
    torch.manual_seed(7)
    tanh = models.mlp(4, 3, [5], activation="tanh").double()
    x, targets = torch.randn(8, 4), 3 * torch.randn(8, 3)
    residual = torch.diagonal(dense_reference.loss_hessian(tanh, x, targets)
                              - dense_reference.gauss_newton(tanh, x, targets))
    assert residual.abs().max() > 1e-3
    shared = nn.Linear(4, 4)
    for model in (tanh, models.vit((3, 8, 8), 3, patch_size=4, dim=8, depth=1, heads=2),
                  batchnorm_conv_net().train(), nn.Sequential(shared, nn.ReLU(), shared),
                  nn.Sequential(nn.Linear(4, 3), nn.Softmax(dim=1)), SquaredLinear()):
        assert not curvature.piecewise_linear(model), model
    assert curvature.piecewise_linear(batchnorm_conv_net())
    assert curvature.piecewise_linear(models.mlp(4, 3, [5]))
