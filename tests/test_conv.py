"""Conv layers: exact operator norms, the reference surrogate, weight norms and the CNN builder."""

import math

import pytest
import torch
from torch import nn
from torch.func import jacrev

from flatrep import models
from flatrep.measures import conv, jacobian, layers

pytestmark = pytest.mark.usefixtures("float64_default")

# (layer, unbatched input shape); odd sizes where stride 2 leaves trailing input rows unread,
# so conv_transpose needs output_padding to give back the input shape.
CASES = {
    "1d": (lambda: nn.Conv1d(3, 4, 3), (3, 11)),
    "1d-stride2-pad1": (lambda: nn.Conv1d(3, 4, 3, stride=2, padding=1), (3, 12)),
    "1d-even-kernel": (lambda: nn.Conv1d(2, 3, 4, stride=2, padding=2), (2, 9)),
    "1d-dilation-groups": (lambda: nn.Conv1d(4, 6, 3, stride=2, padding=2, dilation=2, groups=2),
                           (4, 14)),
    "2d-pad1": (lambda: nn.Conv2d(3, 4, 3, padding=1), (3, 6, 7)),
    "2d-stride2": (lambda: nn.Conv2d(2, 4, 3, stride=2), (2, 8, 9)),
    "2d-dilation-groups": (lambda: nn.Conv2d(4, 4, (3, 2), stride=(2, 1), padding=(2, 1),
                                             dilation=2, groups=2), (4, 7, 6)),
    "2d-mixed": (lambda: nn.Conv2d(2, 3, 3, stride=2, padding=1, dilation=(1, 2)), (2, 9, 10)),
}


@pytest.fixture(params=list(CASES))
def case(request):
    """(layer with a random kernel and bias, input shape)."""
    torch.manual_seed(sorted(CASES).index(request.param))
    make, input_shape = CASES[request.param]
    return make(), input_shape


def linear_map(layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """A x for unbatched x: the layer's output minus its output at 0 (removes the bias)."""
    with torch.no_grad():
        return layer(x.unsqueeze(0))[0] - layer(torch.zeros_like(x).unsqueeze(0))[0]


def dense_matrix(layer: nn.Module, input_shape: tuple[int, ...]) -> torch.Tensor:
    """The unrolled conv map, column j = A e_j, shape (output size, input size)."""
    size = math.prod(input_shape)
    basis = torch.eye(size).reshape(size, *input_shape)
    return torch.stack([linear_map(layer, e).reshape(-1) for e in basis], dim=1)


def generator(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_operator_norm_is_largest_singular_value_of_unrolled_map(case):
    layer, input_shape = case
    expected = torch.linalg.matrix_norm(dense_matrix(layer, input_shape), ord=2)
    assert conv.operator_norm(layer, input_shape, generator=generator()).item() == \
        pytest.approx(expected.item(), rel=1e-8)


def test_conv_transpose_is_adjoint_of_conv(case):
    layer, input_shape = case
    x = torch.randn(input_shape, generator=generator(1))
    y = torch.randn(linear_map(layer, x).shape, generator=generator(2))
    adjoint = conv._adjoint(layer, y, input_shape)
    assert adjoint.shape == input_shape
    assert torch.vdot(linear_map(layer, x).reshape(-1), y.reshape(-1)).item() == \
        pytest.approx(torch.vdot(x.reshape(-1), adjoint.reshape(-1)).item(), rel=1e-12)


def test_frobenius_surrogate_bounds_operator_norm(case):
    layer, input_shape = case
    dense = dense_matrix(layer, input_shape)
    positions = dense.shape[0] // layer.out_channels
    surrogate = conv.frobenius_surrogate(layer, positions)
    assert surrogate.item() == pytest.approx(layer.weight.norm().item() * math.sqrt(positions),
                                             rel=1e-14)
    assert surrogate > torch.linalg.matrix_norm(dense, ord=2)


def test_frobenius_surrogate_attained_by_one_window_one_channel():
    """One output position and one output channel: A is the flattened kernel, ||A||_2 = ||K||_F."""
    torch.manual_seed(10)
    layer = nn.Conv2d(3, 1, (4, 5))
    input_shape = (3, 4, 5)
    expected = torch.linalg.matrix_norm(dense_matrix(layer, input_shape), ord=2)
    assert conv.frobenius_surrogate(layer, 1).item() == pytest.approx(expected.item(), rel=1e-12)
    assert conv.operator_norm(layer, input_shape, generator=generator()).item() == \
        pytest.approx(expected.item(), rel=1e-8)


@pytest.mark.parametrize("make, input_shape", [(lambda: nn.Conv1d(3, 5, 1), (3, 7)),
                                               (lambda: nn.Conv2d(4, 2, 1), (4, 3, 5))])
def test_operator_norm_of_1x1_conv_is_channel_matrix_norm(make, input_shape):
    """A 1x1 stride-1 conv applies the (C_out x C_in) matrix at every position: same 2-norm."""
    torch.manual_seed(11)
    layer = make()
    channel_matrix = layer.weight.detach().reshape(layer.out_channels, layer.in_channels)
    assert conv.operator_norm(layer, input_shape, generator=generator()).item() == \
        pytest.approx(torch.linalg.matrix_norm(channel_matrix, ord=2).item(), rel=1e-8)


def test_operator_norm_of_zero_kernel_is_zero():
    layer = nn.Conv2d(2, 3, 3, stride=2)
    nn.init.zeros_(layer.weight)
    assert conv.operator_norm(layer, (2, 7, 7), generator=generator()).item() == 0


@pytest.mark.parametrize("layer, message", [
    (nn.Conv1d(2, 3, 3, padding=1, padding_mode="circular"), "padding_mode='circular'"),
    (nn.Conv1d(2, 3, 3, padding="same"), "padding='same'")])
def test_operator_norm_rejects_non_adjointable_padding(layer, message):
    with pytest.raises(ValueError, match=message):
        conv.operator_norm(layer, (2, 8))


def test_weight_norms_of_mlp_use_matrix_spectral_norm():
    torch.manual_seed(12)
    model = models.mlp(5, 3, [7, 4])
    norms = layers.weight_norms(model, torch.randn(2, 5))
    weights = [model[i].weight.detach() for i in (1, 3, 5)]
    assert torch.allclose(norms["spectral"],
                          torch.stack([torch.linalg.svdvals(w)[0] for w in weights]),
                          rtol=1e-12, atol=0)
    assert torch.allclose(norms["frobenius"],
                          torch.stack([w.pow(2).sum().sqrt() for w in weights]),
                          rtol=1e-12, atol=0)
    assert torch.equal(norms["reference"], norms["spectral"])


def test_weight_norms_of_cnn():
    """Conv operator norms on each layer's input shape; the reference uses ||K||_F sqrt(P) for
    conv layers and the Frobenius norm for the Linear head."""
    torch.manual_seed(13)
    model = models.cnn((40,), 10, channels=[3, 4], kernel_size=5)
    x = torch.randn(6, 40)
    rng_state = torch.get_rng_state()
    norms = layers.weight_norms(model, x)
    assert torch.equal(torch.get_rng_state(), rng_state)
    convs, head = [model[2], model[4]], model[7]
    # lengths 40 -> 20 -> 10 (stride 2, padding 2, kernel 5)
    for index, (layer, input_shape, positions) in enumerate(zip(convs, [(1, 40), (3, 20)],
                                                                [20, 10])):
        dense = dense_matrix(layer, input_shape)
        assert dense.shape[0] == layer.out_channels * positions
        assert norms["spectral"][index] == conv.operator_norm(layer, input_shape,
                                                              generator=generator())
        assert norms["spectral"][index].item() == pytest.approx(
            torch.linalg.matrix_norm(dense, ord=2).item(), rel=1e-8)
        assert norms["reference"][index].item() == pytest.approx(
            layer.weight.pow(2).sum().sqrt().item() * math.sqrt(positions), rel=1e-12)
    head_weight = head.weight.detach()
    assert norms["spectral"][2].item() == pytest.approx(
        torch.linalg.svdvals(head_weight)[0].item(), rel=1e-12)
    assert norms["reference"][2].item() == pytest.approx(
        head_weight.pow(2).sum().sqrt().item(), rel=1e-12)
    assert torch.allclose(norms["frobenius"], torch.stack(
        [m.weight.pow(2).sum().sqrt() for m in (*convs, head)]), rtol=1e-12, atol=0)


def test_weight_norms_reference_counts_2d_output_positions():
    """Conv2d on (2, 9, 8), kernel 3, stride 2: H_out W_out = 4 * 3 output positions."""
    torch.manual_seed(17)
    model = nn.Sequential(nn.Conv2d(2, 3, 3, stride=2), nn.Flatten(), nn.Linear(36, 4))
    norms = layers.weight_norms(model, torch.randn(3, 2, 9, 8))
    assert norms["reference"][0].item() == pytest.approx(
        model[0].weight.pow(2).sum().sqrt().item() * math.sqrt(12), rel=1e-12)


@pytest.mark.parametrize("input_shape", [(40,), (2, 33)])
def test_cnn_layout_and_output_shape(input_shape):
    torch.manual_seed(14)
    model = models.build({"name": "cnn", "channels": [4, 5, 6], "kernel_size": 3},
                         input_shape, 7)
    names = [name for name, _ in layers.measured_layers(model)]
    assert names == ["2", "4", "6", "9"]
    length = input_shape[-1]
    for _ in range(3):
        length = (length + 2 - 3) // 2 + 1  # floor((L + 2p - k) / 2) + 1
    assert model[9].in_features == 6 * length
    assert model(torch.randn(3, *input_shape)).shape == (3, 7)


def test_cnn_layer_jacobians_match_jacrev_of_subnetwork():
    torch.manual_seed(15)
    model = models.cnn((12,), 3, channels=[2, 3], kernel_size=3, activation="tanh")
    x = torch.randn(5, 12)
    jac = jacobian.per_sample_jacobians(model, x, chunk_size=3)
    measured = [int(name) for name, _ in layers.measured_layers(model)]
    assert len(jac["layer"]) == len(measured) == 3
    for layer_jacobian, index in zip(jac["layer"], measured):
        head = model[index:]
        h = model[:index](x).detach()
        for i in range(len(x)):
            expected = jacrev(lambda h_i: head(h_i.unsqueeze(0))[0])(h[i])
            assert torch.allclose(layer_jacobian[i], expected.reshape(3, -1), rtol=0, atol=1e-10)
    for i in range(len(x)):
        expected = jacrev(lambda x_i: model(x_i.unsqueeze(0))[0])(x[i])
        assert torch.allclose(jac["input"][i], expected, rtol=0, atol=1e-10)


def test_build_mlp_matches_direct_mlp():
    """``build`` passes the input shape; the MLP's modules and initial weights are unchanged."""
    built = models.seeded_build({"name": "mlp", "hidden": [6]}, (2, 5), 3, seed=16)
    torch.manual_seed(16)
    direct = models.mlp(10, 3, [6])
    assert [type(m) for m in built] == [nn.Flatten, nn.Linear, nn.ReLU, nn.Linear]
    assert built.state_dict().keys() == direct.state_dict().keys()
    assert all(torch.equal(built.state_dict()[k], direct.state_dict()[k])
               for k in direct.state_dict())


@pytest.mark.parametrize("model_cfg, message", [
    ({"name": "cnn", "stride": 1}, r"model\.stride .*'kernel_size'"),
    ({"name": "mlp", "hidden": [3], "channels": [2]}, r"model\.channels .*'hidden'"),
    ({"name": "cnn", "activation": "gelu"}, r"model\.activation 'gelu'")])
def test_build_rejects_unknown_options(model_cfg, message):
    with pytest.raises(models.ModelError, match=message):
        models.build(model_cfg, (40,), 10)


def test_cnn_rejects_image_inputs():
    with pytest.raises(models.ModelError, match=r"\(3, 8, 8\)"):
        models.build({"name": "cnn"}, (3, 8, 8), 10)
