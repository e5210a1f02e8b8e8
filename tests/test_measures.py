"""Measures against closed forms and independent dense computations, in float64."""

import math

import dense_reference
import pytest
import torch
from torch import nn
from torch.func import functional_call

from flatrep import models
from flatrep.measures import jacobian, layers

pytestmark = pytest.mark.usefixtures("float64_default")


def linear_net(*weights):
    """A deep linear network with the given weights (no bias): f(x) = W_L ... W_1 x."""
    net = nn.Sequential(*[nn.Linear(w.shape[1], w.shape[0], bias=False) for w in weights])
    with torch.no_grad():
        for module, w in zip(net, weights):
            module.weight.copy_(w)
    return net


def test_single_linear_layer_closed_forms():
    torch.manual_seed(0)
    w = torch.randn(4, 6)
    x = torch.randn(7, 6)
    jac = jacobian.per_sample_jacobians(linear_net(w), x, chunk_size=3)
    s = torch.linalg.svdvals(w)
    measures = jacobian.input_jacobian_measures(jac["input"])
    assert torch.allclose(jac["input"], w.expand(7, 4, 6))
    assert torch.allclose(measures["mls"], s[0].expand(7))
    assert torch.allclose(measures["log_lvr"], torch.log(s).sum().expand(7))
    assert torch.allclose(measures["log_lvr_top3"], torch.log(s[:3]).sum().expand(7))
    assert torch.allclose(measures["jacobian_fro_sq"], (w ** 2).sum().expand(7))
    pr = (s ** 2).sum() ** 2 / (s ** 4).sum()
    assert torch.allclose(measures["local_dim"], pr.expand(7))
    # f = W x: d f_c / d W = e_c x^T, so ||grad_W f||_F^2 = K ||x||^2 and S_i = K ||x_i||^2.
    expected = 4 * (x ** 2).sum(1)
    assert torch.allclose(jac["param_sq"], expected)
    assert torch.allclose(jac["weight_grad_norm"][:, 0], expected.sqrt())
    assert torch.allclose(jac["layer_input_norm"][:, 0], x.norm(dim=1))


def test_deep_linear_layer_sensitivities():
    torch.manual_seed(1)
    w1, w2 = torch.randn(5, 3), torch.randn(2, 5)
    x = torch.randn(4, 3)
    jac = jacobian.per_sample_jacobians(linear_net(w1, w2), x)
    sens = jacobian.layer_measures(jac["layer"])["layer_mls"]
    assert torch.allclose(jac["input"], (w2 @ w1).expand(4, 2, 3))
    assert torch.allclose(sens[:, 0], torch.linalg.matrix_norm(w2 @ w1, ord=2).expand(4))
    assert torch.allclose(sens[:, 1], torch.linalg.matrix_norm(w2, ord=2).expand(4))
    assert torch.allclose(jac["layer_input_norm"][:, 1], (x @ w1.T).norm(dim=1))


def test_local_dim_of_known_spectra():
    s = torch.tensor([[3.0, 1.0, 1.0], [2.0, 2.0, 2.0], [0.0, 0.0, 0.0]])
    assert torch.allclose(jacobian.local_dim(s), torch.tensor([121 / 83, 3.0, 0.0]))
    rank = jacobian.numerical_rank(s, (3, 3))
    assert rank.tolist() == [3, 3, 0]
    assert jacobian.log_volume(s, rank)[2] == -math.inf
    assert jacobian.log_pseudo_volume(s, rank)[2] == -math.inf


def test_linear_regression_sharpness_is_trace_of_xtx_over_n():
    """For f(x) = w.x and L = (1/2n) sum (f - y)^2, H = X^T X / n exactly (any w)."""
    torch.manual_seed(2)
    x = torch.randn(11, 5)
    net = linear_net(torch.randn(1, 5))
    jac = jacobian.per_sample_jacobians(net, x)
    assert torch.allclose(jac["param_sq"].mean(), torch.trace(x.T @ x) / len(x))


def test_sharpness_equals_dense_hessian_trace_at_interpolation():
    """At an interpolating point the 1/2-MSE Hessian is the Gauss-Newton matrix."""
    torch.manual_seed(3)
    model = models.mlp(4, 3, [6, 5], activation="tanh").double()
    x = torch.randn(9, 4)
    y = model(x).detach()  # targets the model fits exactly: residuals are zero
    dense = dense_reference.loss_hessian(model, x, y)
    sharpness = jacobian.per_sample_jacobians(model, x, chunk_size=4)["param_sq"].mean()
    assert torch.allclose(sharpness, torch.trace(dense), rtol=1e-10)


def test_sharpness_differs_from_hessian_trace_off_interpolation():
    """Away from interpolation the residual term makes them differ (tanh net: f'' != 0)."""
    torch.manual_seed(4)
    model = models.mlp(4, 3, [6], activation="tanh").double()
    x = torch.randn(9, 4)
    y = model(x).detach() + torch.randn(9, 3)
    dense = dense_reference.loss_hessian(model, x, y)
    sharpness = jacobian.per_sample_jacobians(model, x)["param_sq"].mean()
    assert not torch.allclose(sharpness, torch.trace(dense), rtol=1e-3)


def test_per_sample_jacobians_match_autograd_on_relu_mlp():
    torch.manual_seed(5)
    model = models.mlp(5, 3, [7, 6]).double()
    x = torch.randn(6, 5)
    jac = jacobian.per_sample_jacobians(model, x, chunk_size=4)
    for i in range(len(x)):
        expected = torch.autograd.functional.jacobian(lambda v: model(v[None])[0], x[i])
        assert torch.allclose(jac["input"][i], expected)
        params = dict(model.named_parameters())
        grads = torch.autograd.functional.jacobian(
            lambda *p: functional_call(model, dict(zip(params, p)), (x[i:i + 1],))[0],
            tuple(p.detach() for p in params.values()))
        assert torch.allclose(jac["param_sq"][i], sum(g.pow(2).sum() for g in grads))
        assert torch.allclose(jac["weight_grad_norm"][i, 1], grads[2].norm())


def test_weight_norms_and_layer_discovery():
    torch.manual_seed(6)
    model = models.mlp(5, 3, [7])
    names = [name for name, _ in layers.measured_layers(model)]
    assert names == ["1", "3"]
    norms = layers.weight_norms(model, torch.randn(2, 5))
    assert torch.allclose(norms["spectral"][0], torch.linalg.svdvals(model[1].weight)[0])
    assert torch.allclose(norms["frobenius"][1], model[3].weight.norm())


@pytest.mark.parametrize("chunk_size", [1, 2, 50])
def test_chunking_does_not_change_results(chunk_size):
    torch.manual_seed(7)
    model = models.mlp(5, 3, [4]).double()
    x = torch.randn(5, 5)
    reference = jacobian.per_sample_jacobians(model, x, chunk_size=5)
    chunked = jacobian.per_sample_jacobians(model, x, chunk_size=chunk_size)
    assert torch.allclose(reference["param_sq"], chunked["param_sq"])
    assert torch.allclose(reference["input"], chunked["input"])


def test_linear_chunks_fit_their_cotangents_in_the_memory_budget(monkeypatch):
    """MLP 4-8-3 (K = 3): a sample's forward pass and cotangents are (K + 1)(d + sum_l (d_l +
    m_l)) = 4 (4 + 4 + 8 + 8 + 3) = 108 floats, 864 bytes; a budget of 3 samples' bytes splits
    10 points asked in one chunk into chunks of 3, 3, 3, 1 with the one-chunk values."""
    torch.manual_seed(9)
    model = models.mlp(4, 3, [8]).double()
    x = torch.randn(10, 4)
    budgets = (1, 3 * 864 - 1, 3 * 864, 10 ** 9)
    assert [jacobian.linear_chunking(model, x, budget) for budget in budgets] == \
        [1, 2, 3, 10 ** 9 // 864]
    whole = jacobian.per_sample_jacobians(model, x, chunk_size=10)
    sizes = []
    chunk = jacobian._linear_jacobians
    monkeypatch.setattr(jacobian, "_linear_jacobians",
                        lambda model, x, *rest: sizes.append(len(x)) or chunk(model, x, *rest))
    budgeted = jacobian.per_sample_jacobians(model, x, chunk_size=10, max_bytes=3 * 864)
    assert sizes == [3, 3, 3, 1]
    for key in ("input", "param_gram", "param_sq", "weight_grad_norm", "param_moments"):
        assert torch.allclose(whole[key], budgeted[key], rtol=1e-14, atol=0), key


@pytest.mark.parametrize("activation,bias", [("relu", True), ("tanh", False)])
def test_linear_closed_forms_match_generic_parameter_jacobians(activation, bias):
    """The Linear fast path (no parameter Jacobian) against full reverse-mode Jacobians."""
    torch.manual_seed(8)
    model = models.mlp(6, 4, [9, 7], activation=activation, bias=bias).double()
    x = torch.randn(10, 6)
    fast = jacobian.per_sample_jacobians(model, x, chunk_size=4, method="linear")
    generic = jacobian.per_sample_jacobians(model, x, chunk_size=4, method="generic")
    for key in ("input", "param_sq", "param_gram", "param_gram_adaptive", "weight_grad_norm",
                "layer_input_norm", "param_moments"):
        assert torch.allclose(fast[key], generic[key], rtol=1e-12, atol=1e-14), key
    for fast_layer, generic_layer in zip(fast["layer"], generic["layer"]):
        assert torch.allclose(fast_layer, generic_layer, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("spec,shape,rows", [
    ({"name": "cnn2d", "channels": [3, 4], "hidden": [6]}, (2, 8, 8), 3),
    ({"name": "vgg16_bn", "width": 1 / 32}, (3, 32, 32), 1),
])
def test_a_parameter_jacobian_over_budget_is_built_in_row_blocks_with_the_same_results(
        spec, shape, rows, monkeypatch):
    """Over ``max_bytes`` the generic method never forms J_i: rows by VJPs, Gram columns by
    JVPs (``rows`` rows at a time, blocks not dividing K = 10), against the dense jacrev."""
    torch.manual_seed(10)
    model = models.build(spec, shape, 10).double().eval()
    x = torch.randn(5, *shape)
    row_bytes = jacobian.row_bytes(model, x)
    dense = jacobian.per_sample_jacobians(model, x, chunk_size=2, method="generic")
    calls = []
    blocked_way = jacobian._blocked_generic_jacobians
    monkeypatch.setattr(jacobian, "_blocked_generic_jacobians",
                        lambda *args, **kw: calls.append(kw["rows"]) or blocked_way(*args, **kw))
    blocked = jacobian.per_sample_jacobians(model, x, chunk_size=2, method="generic",
                                            max_bytes=rows * row_bytes)
    assert calls == [rows] * 3   # chunks of 2, 2 and 1 samples
    for key in ("input", "param_sq", "param_gram", "param_gram_adaptive", "weight_grad_norm",
                "layer_input_norm", "param_moments"):
        assert torch.allclose(dense[key], blocked[key], rtol=1e-10, atol=1e-13), key
    assert all(torch.allclose(d, b, rtol=1e-10, atol=1e-13)
               for d, b in zip(dense["layer"], blocked["layer"]))
    assert torch.equal(blocked["param_gram"], blocked["param_gram"].transpose(1, 2))
    assert dense["param_moments"].shape == (5, 2) and dense["param_sq"].min() > 0
    none = jacobian.per_sample_jacobians(model, x[:2], method="generic", moments=(),
                                         max_bytes=rows * row_bytes)
    assert none["param_moments"].shape == (2, 0)
    jvps = []
    real_jvp = jacobian.jvp
    monkeypatch.setattr(jacobian, "jvp", lambda *a, **kw: jvps.append(1) or real_jvp(*a, **kw))
    lean = jacobian.per_sample_jacobians(model, x, chunk_size=2, method="generic",
                                         max_bytes=rows * row_bytes, grams=())
    assert not jvps and not set(jacobian.GRAMS) & set(lean)   # no Gram, no JVP
    for key in ("param_sq", "weight_grad_norm", "param_moments", "input"):
        assert torch.allclose(dense[key], lean[key], rtol=1e-10, atol=1e-13), key
    plain = jacobian.per_sample_jacobians(model, x[:2], method="generic",
                                          max_bytes=rows * row_bytes, grams=("param_gram",))
    assert "param_gram_adaptive" not in plain
    assert torch.allclose(dense["param_gram"][:2], plain["param_gram"], rtol=1e-10, atol=1e-13)


def test_a_chunk_over_budget_takes_fewer_samples_when_one_sample_fits(monkeypatch):
    """2.5 samples' parameter Jacobians of budget: the dense jacrev in chunks of 2, 2 and 1
    samples instead of the row blocks, with the values of one unbudgeted chunk."""
    torch.manual_seed(11)
    model = models.build({"name": "cnn2d", "channels": [3, 4], "hidden": [6]}, (2, 8, 8),
                         10).double().eval()
    x = torch.randn(5, 2, 8, 8)
    sample_bytes = 10 * jacobian.row_bytes(model, x)
    whole = jacobian.per_sample_jacobians(model, x, chunk_size=5, method="generic")
    chunks = []
    dense_way = jacobian._generic_jacobians
    monkeypatch.setattr(jacobian, "_generic_jacobians",
                        lambda model, x, *rest: chunks.append(len(x)) or dense_way(model, x, *rest))
    monkeypatch.setattr(jacobian, "_blocked_generic_jacobians", None)   # must not be called
    budgeted = jacobian.per_sample_jacobians(model, x, chunk_size=5, method="generic",
                                             max_bytes=int(2.5 * sample_bytes))
    assert chunks == [2, 2, 1]
    for key in ("param_sq", "param_gram", "param_gram_adaptive", "param_moments", "input"):
        assert torch.allclose(whole[key], budgeted[key], rtol=1e-12, atol=1e-14), key


def test_the_dense_way_forms_only_the_grams_asked_for(monkeypatch):
    """The dense generic way spends its K^2 P products a sample only on the Grams named in
    ``grams``; ||J_i||_F^2 (equal to Tr J_i J_i^T), the weight norms and the moments come from
    the Jacobian itself and do not change with them."""
    torch.manual_seed(13)
    model = models.build({"name": "cnn2d", "channels": [3, 4], "hidden": [6]}, (2, 8, 8),
                         10).double().eval()
    x = torch.randn(4, 2, 8, 8)
    full = jacobian.per_sample_jacobians(model, x, chunk_size=2, method="generic")
    assert torch.allclose(full["param_sq"], full["param_gram"].diagonal(dim1=1, dim2=2).sum(-1),
                          rtol=1e-12, atol=0)
    products = []
    real_gram = jacobian._gram
    monkeypatch.setattr(jacobian, "_gram",
                        lambda j, n: products.append(j.shape) or real_gram(j, n))
    tensors_a_chunk = len(list(model.parameters()))
    for grams in ((), ("param_gram",), ("param_gram_adaptive",)):
        products.clear()
        lean = jacobian.per_sample_jacobians(model, x, chunk_size=2, method="generic",
                                             grams=grams)
        assert len(products) == 2 * tensors_a_chunk * len(grams)   # two chunks of 2 samples
        assert set(jacobian.GRAMS) & set(lean) == set(grams)
        for key in ("param_sq", "weight_grad_norm", "param_moments", "input", *grams):
            assert torch.allclose(full[key], lean[key], rtol=1e-12, atol=1e-14), key


@pytest.mark.parametrize("method, rows", [("linear", None), ("generic", None),
                                          ("generic", 2)])
def test_the_grams_alone_leave_out_the_input_and_layer_jacobians(method, rows):
    """``input_jacobians=False`` (the curvature suite) returns no df/dx and df/dh_l, and the
    Grams and the rest equal those of the full call: on the Linear closed forms, the dense
    generic way, and in row blocks of 2 of the K = 3 rows (a budget of two parameter rows)."""
    torch.manual_seed(12)
    model = models.mlp(6, 3, [5, 4], activation="tanh").eval().double()
    x = torch.randn(7, 6, dtype=torch.float64)
    row_bytes = jacobian.row_bytes(model, x)
    budget = {} if rows is None else {"max_bytes": rows * row_bytes}
    if rows is not None:
        assert jacobian.generic_chunking(3, row_bytes, 3, rows * row_bytes) == (3, rows)
    full = jacobian.per_sample_jacobians(model, x, chunk_size=3, method=method, **budget)
    grams = jacobian.per_sample_jacobians(model, x, chunk_size=3, method=method,
                                          input_jacobians=False, **budget)
    assert "input" not in grams and "layer" not in grams
    assert set(full) - set(grams) == {"input", "layer"}
    for key in grams:
        assert torch.allclose(full[key], grams[key], rtol=1e-13, atol=1e-15), key


def test_row_bytes_count_the_parameters_and_the_activations_a_vjp_pulls_back_through():
    """MLP 6-5-4-3: P = 35 + 24 + 15 = 74 parameters, and one sample's forward allocates
    the Linear and tanh outputs 5 + 5 + 4 + 4 + 3 = 21 floats: (74 + 21) float64s a row."""
    mlp = models.mlp(6, 3, [5, 4], activation="tanh").eval()
    assert sum(p.numel() for p in mlp.parameters()) == 74
    assert jacobian.row_bytes(mlp, torch.randn(2, 6)) == (74 + 21) * 8


def test_input_jacobian_bytes_count_the_input_and_every_measured_layer_input():
    """K (d + sum_l d_l) float64s a sample. MLP 6-5-4-3: x has 6 floats and the layers'
    inputs 6, 5 and 4. The conv net on 2 x 8 x 8: x (128), the first conv's input (x, 128),
    the second's (3 channels pooled to 4 x 4: 48), the hidden Linear's (4 x 2 x 2: 16) and the
    head's (6)."""
    mlp = models.mlp(6, 3, [5, 4]).eval()
    assert jacobian.input_jacobian_bytes(mlp, torch.randn(2, 6)) == 3 * (6 + 6 + 5 + 4) * 8
    cnn = models.build({"name": "cnn2d", "channels": [3, 4], "hidden": [6]}, (2, 8, 8),
                       10).eval()
    assert (jacobian.input_jacobian_bytes(cnn, torch.randn(2, 2, 8, 8))
            == 10 * (128 + 128 + 48 + 16 + 6) * 8)


def test_an_unknown_gram_is_refused_by_name():
    with pytest.raises(ValueError, match="'hessian'.*param_gram"):
        jacobian.per_sample_jacobians(models.mlp(3, 2, [4]).double(), torch.randn(2, 3),
                                      grams=("hessian",))


def test_auto_picks_generic_when_a_parameter_is_outside_linear_layers():
    model = nn.Sequential(nn.Linear(3, 4), nn.LayerNorm(4), nn.Linear(4, 2)).double()
    assert not jacobian.only_linear_parameters(model)
    assert jacobian.only_linear_parameters(models.mlp(3, 2, [4]))
    x = torch.randn(3, 3)
    auto = jacobian.per_sample_jacobians(model, x)
    generic = jacobian.per_sample_jacobians(model, x, method="generic")
    assert torch.equal(auto["param_sq"], generic["param_sq"])


def test_layer_measures_give_top_singular_value_and_log_volume_for_wide_and_tall_jacobians():
    torch.manual_seed(9)
    for shape in ((5, 3, 40), (5, 40, 3)):
        j = torch.randn(*shape, dtype=torch.float64)
        s = torch.linalg.svdvals(j)
        measured = jacobian.layer_measures([j])
        torch.testing.assert_close(measured["layer_mls"][:, 0], s[:, 0], rtol=1e-13, atol=0)
        torch.testing.assert_close(measured["layer_log_lvr"][:, 0], torch.log(s).sum(1),
                                   rtol=1e-13, atol=0)
        torch.testing.assert_close(measured["layer_log_lvr_pseudo"][:, 0], torch.log(s).sum(1),
                                   rtol=1e-13, atol=0)
        assert measured["layer_jacobian_rank"][:, 0].tolist() == [3.0] * 5


@pytest.mark.parametrize("method, rows", [("linear", None), ("generic", None),
                                          ("generic", 2)])
def test_ma_ying_moments_of_a_single_linear_layer(method, rows):
    """f = W x: df_c/dW_ja = delta_cj x_a, so sum (.)^{2k} = K sum_a x_a^{2k}; g_x uses W.
    On the Linear closed forms, the dense generic way and in row blocks of 2 of the K = 3
    rows, with the moments asked in an order where k = 1 is not first."""
    torch.manual_seed(10)
    w, x = torch.randn(3, 5, dtype=torch.float64), torch.randn(4, 5, dtype=torch.float64)
    model = linear_net(w).double()
    max_bytes = (jacobian.PARAM_JACOBIAN_BYTES if rows is None
                 else rows * jacobian.row_bytes(model, x))
    orders = (2, 1, 3)
    jac = jacobian.per_sample_jacobians(model, x, moments=orders, method=method,
                                        max_bytes=max_bytes)
    for column, k in enumerate(orders):
        assert torch.allclose(jac["param_moments"][:, column], 3 * x.pow(2 * k).sum(1),
                              rtol=1e-12, atol=0), k
        assert torch.allclose(jacobian.moments_of(jac["input"], (k,))[:, 0],
                              w.pow(2 * k).sum().expand(4), rtol=1e-12, atol=0)
    assert torch.allclose(jac["param_moments"][:, 1], jac["param_sq"], rtol=1e-12, atol=0)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_numerical_rank_is_lapacks_rule_as_numpy_applies_it(dtype):
    """Products A B of random m x r and r x n factors have rank r exactly; their SVD leaves
    rounding noise in the other singular values. numerical_rank counts the values above
    s_1 max(m, n) eps, as numpy.linalg.matrix_rank does (an independent implementation)."""
    import numpy as np
    generator = torch.Generator().manual_seed(4)
    for m, n, r in ((10, 128, 2), (10, 40, 10), (6, 4, 3), (8, 8, 0)):
        a = torch.randn(5, m, r, generator=generator, dtype=torch.float64)
        b = torch.randn(5, r, n, generator=generator, dtype=torch.float64)
        product = (a @ b).to(dtype)
        s = jacobian.spectrum(product)
        rank = jacobian.numerical_rank(s, (m, n))
        assert rank.tolist() == [r] * 5
        assert rank.tolist() == [int(np.linalg.matrix_rank(p)) for p in product.numpy()]


def bottleneck_net(inner: int = 2, dead: int = 0) -> nn.Sequential:
    """6 -> 8 -> ReLU -> inner (linear bottleneck) -> 4, float64. With ``dead``, the last
    ``dead`` of the 8 ReLU units have bias -1e3 and the others +1e3: on N(0, 1) inputs the
    former never fire and the latter always do."""
    torch.manual_seed(11)
    net = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, inner, bias=False),
                        nn.Linear(inner, 4))
    with torch.no_grad():
        if dead:
            net[0].bias.copy_(torch.tensor([1e3] * (8 - dead) + [-1e3] * dead))
    return net.eval()


def test_a_bottleneck_gives_the_constructed_rank_and_minus_infinite_volume():
    """Through a width-2 bottleneck J_x = W_4 W_3 D W_1 (D the ReLU mask) has rank 2 < min(K,
    d) = 4, so log LVR = -inf. The pseudo-volume is the product of the two nonzero singular
    values: for J = A B with A (4 x 2) and B (2 x n) of full rank 2, the nonzero eigenvalues
    of J^T J are those of (A^T A)(B B^T), so sum_k log s_k = (log det A^T A + log det B B^T) / 2.
    Layers: h_1 = x; h_2, the ReLU output, df/dh_2 = W_4 W_3 of rank 2 < 4 (-inf too); h_3, the
    bottleneck, df/dh_3 = W_4 of full rank 2 = min(K, d_3): log NVR is its log volume."""
    import numpy as np

    from flatrep.cube import measuring
    net = bottleneck_net()
    x = torch.randn(5, 6)
    values = measuring.point_measures(net, x, chunk_size=5, moments=(1,))
    w1, w3, w4 = net[0].weight, net[2].weight, net[3].weight

    def pseudo(b: torch.Tensor) -> float:
        return 0.5 * (torch.logdet(w4.T @ w4) + torch.logdet(b @ b.T)).item()

    assert values["jacobian_rank"].tolist() == [2.0] * 5
    assert (values["log_lvr"] == -math.inf).all()
    assert (values["log_lvr_top3"] == -math.inf).all()          # rank 2 < 3
    masks = [torch.diag((net[0](x[i]) > 0).double()) for i in range(5)]
    np.testing.assert_allclose(values["log_lvr_pseudo"], [pseudo(w3 @ m @ w1) for m in masks],
                               rtol=1e-12)
    assert values["layer_jacobian_rank"].tolist() == [[2.0, 2.0, 2.0]] * 5
    np.testing.assert_array_equal(values["layer_log_lvr"][:, :2], -np.inf)
    last = 0.5 * torch.logdet(w4.T @ w4).item()
    np.testing.assert_allclose(values["layer_log_lvr"][:, 2], last, rtol=1e-12)
    np.testing.assert_allclose(values["log_nvr"], last, rtol=1e-12)
    np.testing.assert_allclose(values["layer_log_lvr_pseudo"][:, 1], pseudo(w3), rtol=1e-12)
    np.testing.assert_allclose(values["log_nvr_pseudo"], np.logaddexp(
        np.logaddexp(values["log_lvr_pseudo"], pseudo(w3)), last), rtol=1e-12)


def test_dead_relu_units_cut_the_rank_and_leave_local_dimension_alone():
    """With 6 of the 8 ReLU units dead, J_x = W_4 W_3 D W_1 has rank 2 whatever the
    bottleneck's width (3 here, so min(K, d) = 4 and rank 2 < 3: top-3 volume -inf too); the
    participation ratio of the full spectrum equals that of the two nonzero singular values
    (rounding noise enters squared, below the sums' rounding). The dead units cut df/dx, not
    df/dh_2 = W_4 W_3 (rank 3): the Jacobian after the ReLU sees no mask."""
    from flatrep.cube import measuring
    net = bottleneck_net(inner=3, dead=6)
    x = torch.randn(4, 6)
    values = measuring.point_measures(net, x, chunk_size=4, moments=(1,))
    assert values["jacobian_rank"].tolist() == [2.0] * 4
    assert (values["log_lvr"] == -math.inf).all() and (values["log_lvr_top3"] == -math.inf).all()
    alive = net[3].weight @ net[2].weight[:, :2] @ net[0].weight[:2]
    s = torch.linalg.svdvals(alive)[:2]
    assert values["local_dim"] == pytest.approx([((s ** 2).sum() ** 2 / (s ** 4).sum()).item()]
                                                * 4, rel=1e-13)
    assert values["log_lvr_pseudo"] == pytest.approx([torch.log(s).sum().item()] * 4, rel=1e-12)
    assert (values["layer_jacobian_rank"][:, 1] == 3).all()     # df/dh_2 = W_4 W_3, rank 3
