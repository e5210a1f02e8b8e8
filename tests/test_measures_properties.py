"""Property-based tests of the measures (issue 6), in float64.

Hypothesis draws small MLPs and 1-D CNNs (random widths, depths, activations, with or without
bias) and input batches, including the degenerate ones: all-zero inputs, duplicated rows,
inputs scaled by 1e-8..1e8, networks with all-zero parameters, constant networks (zero
weights, random biases), one dead layer, and every parameter scaled by 1e3..1e8 or
1e-8..1e-3. Every value that goes to the cube must be finite, or non-finite only where the
catalogue (``flatrep.cube.variables``, the variable's ``definition`` attribute) says so and in the
pattern it says. The degenerate cases are then pinned against their closed forms.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pytest
import torch
from conftest import MatrixOperator
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from flatrep import losses, models
from flatrep.cube import measuring, variables
from flatrep.measures import jacobian, layers, suite, trace_estimators

FLOAT = torch.float64
#: Variables whose value is -inf where a singular value vanishes (documented in the catalogue).
LOG_VOLUMES = {"log_lvr", "log_lvr_top3", "layer_log_lvr", "log_nvr", "log_lvr_pseudo",
               "layer_log_lvr_pseudo", "log_nvr_pseudo"}
#: Every curvature family, on small settings (``probes`` and ``dense_max_params`` are drawn).
FAMILIES = {"hutch_plus_plus": True, "xtrace": True, "deflated_frobenius": True,
            "lanczos": {"steps": 4},
            "relative_flatness": True, "adaptive_sharpness": {"pairs": 3},
            "spectral_density": {"probes": 2, "steps": 3, "bins": 20, "smoothing": 0.1},
            "stability": {"steps": 3}, "output_curvature": {"steps": 3, "point_chunk": 8},
            "batchnorm_train": {"batch_size": 3, "steps": 3}}


def property_settings(examples: int) -> settings:
    """Reproducible draws (derandomized), no deadline: a suite call takes up to a second."""
    return settings(max_examples=examples, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow])


@dataclass(frozen=True)
class Spec:
    """One drawn problem: architecture, parameter and data transforms, and a seed."""
    architecture: str           # "mlp" (inputs = d) or "cnn" (inputs = sequence length)
    inputs: int
    hidden: tuple[int, ...]     # hidden widths (mlp) or conv channels (cnn)
    outputs: int
    activation: str
    bias: bool
    points: int
    weights: str                # random, zero, constant, dead_layer, scaled
    weight_scale: float
    data: str                   # random, zero, duplicated, scaled
    data_scale: float
    seed: int


def _scale(exponents):
    """10^e for e drawn from ``exponents``."""
    return exponents.map(lambda e: 10.0 ** e)


@st.composite
def specs(draw, architectures=("mlp",)) -> Spec:
    architecture = draw(st.sampled_from(architectures))
    if architecture == "mlp":
        inputs, hidden = draw(st.integers(1, 10)), draw(st.lists(st.integers(1, 8), max_size=3))
    else:
        inputs, hidden = draw(st.integers(3, 10)), draw(st.lists(st.integers(1, 3), min_size=1,
                                                                 max_size=2))
    weights = draw(st.sampled_from(["random", "zero", "constant", "dead_layer", "scaled"]))
    weight_scale = draw(_scale(st.one_of(st.floats(3, 8), st.floats(-8, -3)))
                        if weights == "scaled" else st.just(1.0))
    data = draw(st.sampled_from(["random", "zero", "duplicated", "scaled"]))
    data_scale = draw(_scale(st.floats(-8, 8)) if data == "scaled" else st.just(1.0))
    return Spec(architecture, inputs, tuple(hidden), draw(st.integers(2, 4)),
                draw(st.sampled_from(["relu", "tanh"])), draw(st.booleans()),
                draw(st.integers(1, 20)), weights, weight_scale, data, data_scale,
                draw(st.integers(0, 2**16)))


def build_model(spec: Spec) -> torch.nn.Module:
    """The drawn network in float64 and eval mode, its parameters transformed as drawn."""
    torch.manual_seed(spec.seed)
    if spec.architecture == "mlp":
        model = models.mlp(spec.inputs, spec.outputs, list(spec.hidden), spec.activation,
                           spec.bias)
    else:
        model = models.cnn((spec.inputs,), spec.outputs, list(spec.hidden), kernel_size=3,
                           activation=spec.activation, bias=spec.bias)
    model = model.to(FLOAT).eval()
    measured = [module for _, module in layers.measured_layers(model)]
    with torch.no_grad():
        for index, module in enumerate(measured):
            for name, parameter in module.named_parameters():
                if spec.weights == "zero" or (spec.weights == "constant" and name == "weight"):
                    parameter.zero_()
                elif spec.weights == "dead_layer" and index == spec.seed % len(measured):
                    parameter.zero_()
                parameter.mul_(spec.weight_scale)
    return model


def draw_inputs(spec: Spec, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """(x, labels) of ``spec.points`` rows, the inputs transformed as drawn."""
    x = torch.randn(spec.points, spec.inputs, generator=generator, dtype=FLOAT)
    if spec.data == "zero":
        x = torch.zeros_like(x)
    elif spec.data == "duplicated":
        x = x[torch.arange(spec.points) % (1 + spec.seed % 2)]
    x = x * spec.data_scale
    return x, torch.randint(0, spec.outputs, (spec.points,), generator=generator)


def assert_no_undocumented_infinity(name: str, values: np.ndarray, definition: str) -> None:
    """+inf never; -inf only in the log volumes, whose definition says so."""
    assert not np.isposinf(values).any(), name
    if np.isneginf(values).any():
        assert name in LOG_VOLUMES and "-inf" in definition, name


# --- per-sample measures ------------------------------------------------------------------

@property_settings(60)
@given(spec=specs(architectures=("mlp", "cnn")))
def test_per_sample_measures_are_finite_or_a_documented_minus_infinity(spec):
    """No NaN, no +inf, -inf only in the log volumes; and the spectral identities that hold for
    every Jacobian: 0 <= LD <= min(K, d) with LD = 0 iff MLS = 0, MLS^2 <= ||J||_F^2 <=
    min(K, d) MLS^2, log LVR <= min(K, d) log MLS, s_1(df/dh_1) = MLS (h_1 is x reshaped),
    NMLS = sum_l s_1(df/dh_l), max_l log LVR_l <= log NVR <= max_l log LVR_l + log L."""
    model = build_model(spec)
    x, _ = draw_inputs(spec, torch.Generator().manual_seed(spec.seed))
    values = measuring.point_measures(model, x, chunk_size=7, moments=(1, 2))
    for name, value in values.items():
        assert not np.isnan(value).any(), name
        assert_no_undocumented_infinity(name, value, variables.CATALOG[name].definition)
    rank = min(spec.outputs, spec.inputs)
    mls, local_dim = values["mls"], values["local_dim"]
    assert np.all((local_dim >= 0) & (local_dim <= rank * (1 + 1e-12)))
    np.testing.assert_array_equal(local_dim == 0, mls == 0)
    assert np.all(local_dim[mls > 0] >= 1 - 1e-12)
    fro_sq = values["jacobian_fro_sq"]
    assert np.all(mls ** 2 <= fro_sq * (1 + 1e-12))
    assert np.all(fro_sq <= rank * mls ** 2 * (1 + 1e-12))
    expanding = mls > 0
    np.testing.assert_array_equal(values["log_lvr"][~expanding], -np.inf)
    jacobian_rank = values["jacobian_rank"]
    assert np.all((jacobian_rank >= 0) & (jacobian_rank <= rank))
    np.testing.assert_array_equal(jacobian_rank == 0, ~expanding)
    np.testing.assert_array_equal(np.isfinite(values["log_lvr"]), jacobian_rank == rank)
    np.testing.assert_array_equal(np.isfinite(values["log_lvr_pseudo"]), expanding)
    full = jacobian_rank == rank
    np.testing.assert_array_equal(values["log_lvr_pseudo"][full], values["log_lvr"][full])
    bound = rank * np.log(mls[expanding])
    assert np.all(values["log_lvr"][expanding] <= bound + 1e-9 * (1 + np.abs(bound)))
    np.testing.assert_allclose(values["layer_mls"][:, 0], mls, rtol=1e-10, atol=0)
    np.testing.assert_allclose(values["nmls"], values["layer_mls"].sum(1), rtol=1e-12, atol=0)
    top = values["layer_log_lvr"].max(1)
    finite = np.isfinite(top)
    assert np.all(values["log_nvr"][~finite] == -np.inf)
    assert np.all(values["log_nvr"][finite] >= top[finite] - 1e-9 * np.abs(top[finite]))
    assert np.all(values["log_nvr"][finite] <= top[finite] + math.log(values["layer_mls"].shape[1])
                  + 1e-9 * np.abs(top[finite]))


@property_settings(60)
@given(spectrum=st.lists(st.one_of(st.just(0.0), st.floats(1e-6, 1)), min_size=1, max_size=6),
       exponent=st.floats(-250, 250))
def test_local_dimensionality_is_scale_invariant_over_the_float64_range(spectrum, exponent):
    """LD(c s) = LD(s) for 1e-250 <= c <= 1e250, far beyond where s_k^4 under- or overflows
    (|log10 c| > 77), in [1, #s] where s_1 > 0, and 0 for s = 0."""
    s = torch.tensor(sorted(spectrum, reverse=True), dtype=FLOAT)
    reference, scaled = jacobian.local_dim(s), jacobian.local_dim(s * 10.0 ** exponent)
    assert scaled.item() == pytest.approx(reference.item(), rel=1e-12)
    if s[0] > 0:
        assert 1 - 1e-12 <= reference.item() <= len(s) * (1 + 1e-12)
    else:
        assert reference.item() == 0


# --- the whole per-checkpoint measurement (what goes to the cube) -------------------------

def cube_of_one_checkpoint(spec: Spec, loss_name: str, curvature_cfg: dict):
    """``measure_checkpoint`` on the drawn network, assembled by ``run_dataset`` as one step.

    The test split has twice the measured points; the measured test points are its first
    half, and the misclassified ones are taken from the whole split in reversed order.
    Returns (dataset, measured values, the test rows the network misclassifies, the
    network (float64 after measuring), the test inputs).
    """
    model = build_model(spec)
    generator = torch.Generator().manual_seed(spec.seed)
    splits = {"train": draw_inputs(spec, generator),
              "test": tuple(torch.cat(pair) for pair in zip(draw_inputs(spec, generator),
                                                            draw_inputs(spec, generator)))}
    rows = np.arange(spec.points)
    points = {"train": rows, "test": rows, "curvature": rows,
              "test_order": np.arange(2 * spec.points)[::-1]}
    measure_cfg = {"chunk_size": 7, "moments": [1, 2], "point_seed": 0,
                   "curvature": curvature_cfg}
    values = measuring.measure_checkpoint(model, splits, points, spec.outputs, measure_cfg,
                                          losses.get(loss_name))
    with torch.no_grad():
        wrong = np.flatnonzero((model(splits["test"][0]).argmax(1) != splits["test"][1]).numpy())
    ds = measuring.run_dataset([{"step": 0, "diverged_at": None}], [values], points,
                               layers.measured_layers(model), (1, 2), suite.coords(curvature_cfg))
    return ds.isel(step=0), values, wrong, model, splits["test"][0]


@pytest.mark.parametrize("n_points, expected", [(3, [1, 4]), (1, [4])])
def test_misclassified_points_are_the_first_wrong_rows_in_the_order(n_points, expected):
    """A linear classifier f(x) = x (K = d = 2) on 6 test points, rows 1 and 4 labelled
    against their argmax: with the order 4, 0, 3, 1, 5, 2 the subset holds rows 1 and 4 (3
    points: NaN-padded) or row 4 alone (1 point), with point_measures' values there."""
    model = torch.nn.Linear(2, 2, bias=False).double()
    with torch.no_grad():
        model.weight.copy_(torch.eye(2))
    x = torch.tensor([[2.0, 1], [3, 1], [1, 2], [1, 3], [4, 1], [1, 5]], dtype=torch.float64)
    y = torch.tensor([0, 1, 1, 1, 1, 1])                    # argmax: 0 0 1 1 0 1
    splits = {"train": (x, y), "test": (x, y)}
    rows = np.arange(n_points)
    points = {"train": rows, "test": rows, "test_order": np.array([4, 0, 3, 1, 5, 2])}
    values = measuring.measure_checkpoint(model, splits, points, 2,
                                          {"chunk_size": 4, "point_seed": 0},
                                          losses.get("mse"))
    index = values["misclassified_index"]
    np.testing.assert_array_equal(index[:len(expected)], expected)
    assert index.shape == (n_points,) and np.isnan(index[len(expected):]).all()
    direct = measuring.point_measures(model, x[expected], 4, measuring.MOMENTS)
    subset = measuring.SUBSETS.index("test_misclassified")
    for name in direct:
        np.testing.assert_array_equal(values[name][subset][:len(expected)], direct[name])
        assert np.isnan(values[name][subset][len(expected):]).all()
    assert values["test_acc"] == pytest.approx(4 / 6)


def check_misclassified_subset(ds, wrong: np.ndarray, model, x_test) -> None:
    """test_misclassified holds the last ``points`` misclassified test rows (the reversed
    order), ascending in ``misclassified_index``, NaN-padded when fewer are misclassified,
    with the values ``point_measures`` gives at those rows (the rule the ``subset``
    coordinate documents)."""
    assert "misclassified_index" in ds["subset"].attrs["definition"]
    rows = wrong[-ds.sizes["sample"]:]
    index = ds["misclassified_index"].values
    np.testing.assert_array_equal(index[:len(rows)], rows)
    assert np.isnan(index[len(rows):]).all()
    direct = measuring.point_measures(model, x_test[rows].double(), 7, (1, 2)) if len(rows) else {}
    for name, var in ds.data_vars.items():
        if "subset" in var.dims:
            hard = var.sel(subset="test_misclassified").values
            assert np.isnan(hard[len(rows):]).all(), name
            if len(rows):
                np.testing.assert_allclose(hard[:len(rows)], direct[name], rtol=1e-10, atol=0,
                                           equal_nan=True, err_msg=name)


#: The variables that may hold NaN outside test_misclassified (when: see the test below).
NAN_BY_DESIGN = {"slq_nodes", "hessian_rank", "hessian_trace_hutchpp_se",
                 "hessian_trace_xtrace_se", "hessian_fro_deflated_se", "misclassified_index"}


def check_documented_nan(ds, name: str, nan: np.ndarray) -> None:
    """NaN only in NAN_BY_DESIGN, whose definitions say so; SLQ padding trails each probe's
    nodes and carries zero weight."""
    if not nan.any():
        return
    assert name in NAN_BY_DESIGN and "NaN" in ds[name].attrs["definition"], name
    if name == "slq_nodes":
        assert not nan[:, 0].any() and np.all(np.diff(nan.astype(int), axis=1) >= 0)
        assert np.all(ds["slq_weights"].values[nan] == 0)


@property_settings(30)
@given(spec=specs(architectures=("mlp", "mlp", "cnn")),
       loss_name=st.sampled_from(["mse", "cross_entropy"]), probes=st.integers(3, 7),
       dense_max=st.sampled_from([0, 120]))
def test_every_cube_variable_is_finite_or_non_finite_as_documented(spec, loss_name, probes,
                                                                   dense_max):
    """measure_checkpoint with every curvature family, through run_dataset: every measured value
    has a catalogue entry (none is dropped), and its non-finite values are those its
    definition documents, where it documents them; plus the invariants every checkpoint
    satisfies (non-negative norms and standard errors, ranks within their bounds, SLQ
    weights summing to 1 per probe, a non-negative density)."""
    curvature_cfg = {"enabled": True, "probes": probes, **FAMILIES,
                     "rank": {"points": 4, "dense_max_params": dense_max}}
    ds, values, wrong, model, x_test = cube_of_one_checkpoint(spec, loss_name, curvature_cfg)
    assert set(values) <= set(variables.CATALOG)
    check_misclassified_subset(ds, wrong, model, x_test)
    for name, var in ds.data_vars.items():
        if "subset" in var.dims:
            var = var.sel(subset=["train", "test"])
        assert_no_undocumented_infinity(name, var.values, var.attrs["definition"])
        check_documented_nan(ds, name, np.isnan(var.values))
    skipped = ds["num_params"].item() > dense_max       # dense rank only up to dense_max_params
    np.testing.assert_array_equal(np.isnan(ds["hessian_rank"].values), skipped)
    assert math.isnan(ds["hessian_trace_hutchpp_se"].item()) == (probes < 6)  # 1 residual probe
    xtrace_se = ds["hessian_trace_xtrace_se"].item()
    assert math.isnan(xtrace_se) if probes < 4 else xtrace_se >= 0     # 1 test vector: NaN
    deflated, deflated_se = (ds[name].item() for name in ("hessian_fro_deflated",
                                                          "hessian_fro_deflated_se"))
    if probes < 4 and deflated > 0:                                      # 1 residual probe
        assert math.isnan(deflated_se)
    else:
        assert deflated_se >= 0
    for name in ("hessian_fro", "hessian_fro_se", "hessian_trace_se", "hessian_effective_rank",
                 "hessian_trace_hutchinson_se", "relative_flatness_last",
                 "adaptive_sharpness_gauss_newton", "gauss_newton_nonuniformity",
                 "per_sample_hessian_fro_sq", "stability_rayleigh_spread",
                 "loss_weighted_jacobian_sq", "loss_weighted_output_curvature", "sharpness",
                 "hessian_gauss_newton_trace", "spectral_density_sigma"):
        assert ds[name].item() >= 0, name
    assert ds["hessian_lambda_min"].item() <= ds["hessian_lambda_max"].item()
    assert (ds["spectral_density"].values >= 0).all()
    np.testing.assert_allclose(ds["slq_weights"].values.sum(1), 1.0, rtol=1e-10)
    bound = ds["hessian_rank_bound"].sel(rank_bound="gauss_newton_c").item()
    assert (ds["gauss_newton_rank"].values <= bound).all()
    if not skipped:
        assert (ds["hessian_rank"].values <= ds["num_params"].item()).all()


# --- degenerate cases against their closed forms ------------------------------------------

#: Outputs of the closed-form networks.
K = 3


def zero_relu_network(hidden=(5, 4), inputs=3, outputs=K):
    """A ReLU MLP with every weight and bias 0: f = 0, h_l = 0 for l > 1."""
    model = models.mlp(inputs, outputs, list(hidden)).to(FLOAT).eval()
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.zero_()
    return model


def one_hot_problem(n=6, inputs=3, outputs=K, seed=0):
    """(x, labels): Gaussian inputs and the labels 0, 1, ..., K-1, 0, ... (every class)."""
    generator = torch.Generator().manual_seed(seed)
    return (torch.randn(n, inputs, generator=generator, dtype=FLOAT),
            torch.arange(n) % outputs)


def all_families(probes=6, dense_max=100_000):
    """A curvature config with every family on (FAMILIES) and the dense rank computed."""
    return {"probes": probes, **FAMILIES, "rank": {"points": 4, "dense_max_params": dense_max}}


def test_point_measures_of_the_zero_network():
    """f = 0: J_x = 0, so MLS = NMLS = LD = ||J||_F^2 = IIMLS = 0 and every log volume is -inf;
    J_theta = [0, ..., 0, I_K] (only b_L moves f), so the per-sample sharpness and every
    parameter moment sum_c sum_p (df_c/dtheta_p)^{2k} are K, and the weight gradients are 0."""
    model, (x, _) = zero_relu_network(), one_hot_problem()
    values = measuring.point_measures(model, x, chunk_size=4, moments=(1, 2))
    for name in ("mls", "nmls", "local_dim", "jacobian_fro_sq", "iimls", "normalized_mls",
                 "layer_mls", "input_grad_moment", "weight_grad_norm"):
        np.testing.assert_array_equal(values[name], 0.0, err_msg=name)
    for name in LOG_VOLUMES:
        np.testing.assert_array_equal(values[name], -np.inf, err_msg=name)
    np.testing.assert_array_equal(values["sample_sharpness"], K)
    np.testing.assert_array_equal(values["param_grad_moment"], K)
    np.testing.assert_allclose(values["layer_input_norm"][:, 0], x.norm(dim=1).numpy(),
                               rtol=1e-15)
    np.testing.assert_array_equal(values["layer_input_norm"][:, 1:], 0.0)


#: The curvature suite at the zero ReLU network with K = 3 outputs. J_i = [0, I_K] for every
#: point and relu'(0) = 0 removes every second derivative of f, so H = G = blockdiag(0, M)
#: on b_L, with M = I (mse) or M = I/K - 11^T/K^2 (cross-entropy at p = 1/K, one-hot y).
#: mse: Tr H = K, ||H||_F = sqrt(K), eff. rank K, lambda in {0, 1}, rank K, l_i = 1/2,
#: ||G_i||_F^2 = K. cross-entropy: Tr H = 1 - 1/K, lambda_max = 1/K, rank K - 1,
#: l_i = log K, ||G_i||_F^2 = Tr M^2 = (K - 1)/K^2. Every G_i is G (no spread), theta = 0
#: (adaptive sharpness and kappa vanish) and f has no curvature in theta.
ZERO_NETWORK_SUITE = {
    "mse": {"hessian_trace": K, "hessian_gauss_newton_trace": K, "hessian_trace_hutchinson": K,
            "hessian_fro": math.sqrt(K), "hessian_effective_rank": K, "hessian_lambda_max": 1.0,
            "loss_weighted_jacobian_sq": 0.5, "per_sample_hessian_fro_sq": K,
            "hessian_rank": K, "gauss_newton_rank": K},
    "cross_entropy": {"hessian_trace": 1 - 1 / K, "hessian_gauss_newton_trace": 1 - 1 / K,
                      "hessian_lambda_max": 1 / K, "loss_weighted_jacobian_sq": math.log(K),
                      "per_sample_hessian_fro_sq": (K - 1) / K ** 2, "hessian_rank": K - 1,
                      "gauss_newton_rank": K - 1},
}
ZERO_AT_ZERO_NETWORK = ("hessian_trace_se", "hessian_lambda_min", "hessian_lambda_max_scaled",
                        "relative_flatness_first", "relative_flatness_first_se",
                        "relative_flatness_last", "adaptive_sharpness", "adaptive_sharpness_se",
                        "adaptive_sharpness_gauss_newton", "adaptive_sharpness_monte_carlo",
                        "adaptive_sharpness_monte_carlo_se", "stability_rayleigh_spread",
                        "loss_weighted_output_curvature", "output_curvature_residual_max")


@pytest.mark.parametrize("loss_name", ["mse", "cross_entropy"])
def test_curvature_suite_of_the_zero_relu_network(loss_name):
    model, (x, labels) = zero_relu_network(), one_hot_problem()
    loss = losses.get(loss_name)
    values = suite.measure(model, x, loss.targets(labels, K, FLOAT), loss, all_families(), 0)
    for name, expected in ZERO_NETWORK_SUITE[loss_name].items():
        np.testing.assert_allclose(values[name], expected, rtol=1e-12, err_msg=name)
    for name in ZERO_AT_ZERO_NETWORK:
        assert values[name] == pytest.approx(0.0, abs=1e-12), name
    # sqrt(lambda_max(mean G_i^2 - G^2)) = 0 up to sqrt(round-off of ||G||^2 ~ 1e-16)
    assert values["gauss_newton_nonuniformity"] < 1e-7
    if loss_name == "mse":        # v^T H v = ||v_b||^2 = K and ||H v||^2 = K for every probe v
        for name in ("hessian_trace_hutchinson_se", "hessian_fro_se"):
            assert values[name] == pytest.approx(0.0, abs=1e-12), name


def bias_free_network(activation, hidden=(4, 3), inputs=3, outputs=2, seed=1):
    """A seeded MLP without biases: f(0) = 0, as relu(0) = tanh(0) = 0."""
    torch.manual_seed(seed)
    return models.mlp(inputs, outputs, list(hidden), activation, bias=False).to(FLOAT).eval()


@pytest.mark.parametrize("activation", ["relu", "tanh"])
def test_zero_hessian_gives_zero_norms_standard_errors_and_effective_rank(activation):
    """A bias-free net at x = 0: every h_l and df/dtheta is 0, and so is every second
    derivative (each carries a factor h_l or x), so H = 0. Then Tr H = ||H||_F = 0, and by the
    documented convention SE(||H||_F) = 0 and the effective rank Tr(H)^2/||H||_F^2 = 0 (the
    delta method and the ratio are 0/0; both were NaN); the Lanczos, SLQ and rank values are
    those of the zero matrix (density width = smoothing, as max |node| = 0 < 1)."""
    model = bias_free_network(activation)
    x, labels = torch.zeros(5, 3, dtype=FLOAT), torch.arange(5) % 2
    loss = losses.get("mse")
    values = suite.measure(model, x, loss.targets(labels, 2, FLOAT), loss, all_families(), 0)
    for name in ("hessian_trace", "hessian_trace_se", "hessian_gauss_newton_trace",
                 "hessian_trace_hutchinson", "hessian_trace_hutchinson_se", "hessian_fro",
                 "hessian_fro_se", "hessian_effective_rank", "hessian_trace_hutchpp",
                 "hessian_trace_xtrace", "hessian_trace_xtrace_se", "hessian_fro_deflated",
                 "hessian_fro_deflated_se",
                 "hessian_lambda_max", "hessian_lambda_min", "hessian_trace_slq",
                 "loss_weighted_jacobian_sq", "per_sample_hessian_fro_sq"):
        assert values[name] == 0.0, name
    np.testing.assert_array_equal(values["hessian_rank"], 0.0)
    np.testing.assert_array_equal(values["gauss_newton_rank"], 0.0)
    assert values["spectral_density_sigma"] == FAMILIES["spectral_density"]["smoothing"]


def test_hutchinson_of_the_zero_operator():
    """All products 0: trace, ||H||_F, both SEs and the effective rank are exactly 0."""
    result = trace_estimators.hutchinson(MatrixOperator(torch.zeros(7, 7, dtype=FLOAT)), 5,
                                         torch.Generator().manual_seed(0))
    assert (result.trace.value, result.trace.standard_error) == (0.0, 0.0)
    assert (result.frobenius.value, result.frobenius.standard_error) == (0.0, 0.0)
    assert result.effective_rank == 0.0


def test_hutch_plus_plus_standard_error_needs_two_residual_probes():
    """Hutch++ spends matvecs // 3 on each phase: below 6 matvecs the residual term has one
    probe and its SE is NaN, as documented (the trace itself is finite); from 6 it is finite
    (A = diag(1..6): the sketch of at most 3 columns never spans A, a residual remains)."""
    operator = MatrixOperator(torch.diag(torch.arange(1.0, 7.0, dtype=FLOAT)))
    for matvecs, se_defined in ((3, False), (5, False), (6, True), (9, True)):
        result = trace_estimators.hutch_plus_plus(operator, matvecs,
                                                  torch.Generator().manual_seed(0))
        assert math.isfinite(result.value)
        assert math.isfinite(result.standard_error) == se_defined, matvecs


@pytest.mark.parametrize("scale", [1e-150, 1e-100, 1.0, 1e100, 1e150])
def test_local_dimensionality_of_a_known_spectrum_at_extreme_scales(scale):
    """s = c (3, 1, 1): LD = 121/83 for every c (it was 0 below c ~ 1e-77 by underflow of s^4
    and NaN above c ~ 1e77 by inf/inf); s = 0 gives the documented 0."""
    s = torch.tensor([[3.0, 1.0, 1.0], [0.0, 0.0, 0.0]], dtype=FLOAT) * scale
    np.testing.assert_allclose(jacobian.local_dim(s).numpy(), [121 / 83, 0.0], rtol=1e-14)


def test_point_measures_of_a_bias_free_tanh_network_at_zero_input():
    """At x = 0 every pre-activation is 0 and tanh'(0) = 1, so the net acts as the deep linear
    map W_3 W_2 W_1: J_x = W_3 W_2 W_1 and df/dh_l = W_3 ... W_l exactly."""
    model = bias_free_network("tanh")
    weights = [module.weight.detach() for _, module in layers.measured_layers(model)]
    values = measuring.point_measures(model, torch.zeros(2, 3, dtype=FLOAT), 4, (1,))
    products = [weights[2] @ weights[1] @ weights[0], weights[2] @ weights[1], weights[2]]
    s = torch.linalg.svdvals(products[0])
    np.testing.assert_allclose(values["mls"], s[0].item(), rtol=1e-13)
    np.testing.assert_allclose(values["log_lvr"], torch.log(s).sum().item(), rtol=1e-13)
    np.testing.assert_allclose(values["local_dim"],
                               ((s ** 2).sum() ** 2 / (s ** 4).sum()).item(), rtol=1e-13)
    np.testing.assert_allclose(values["layer_mls"][0],
                               [torch.linalg.matrix_norm(p, 2).item() for p in products],
                               rtol=1e-12)
    np.testing.assert_array_equal(values["iimls"], 0.0)
