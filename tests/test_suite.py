"""The curvature suite: family switches, and no measurement touches model state (BatchNorm)."""

import copy

import dense_reference
import numpy as np
import pytest
import torch
from torch import nn

from flatrep import checkpoint, losses, models
from flatrep.cube import measuring
from flatrep.data import datasets
from flatrep.measures import suite
from flatrep.params import studies

pytestmark = pytest.mark.usefixtures("float64_default")

ALL_FAMILIES = {"probes": 6, "hutch_plus_plus": True, "xtrace": True,
                "deflated_frobenius": True, "lanczos": {"steps": 5}, "relative_flatness": True,
                "adaptive_sharpness": {"pairs": 4},
                "spectral_density": {"probes": 2, "steps": 4, "bins": 20, "smoothing": 0.1},
                "rank": {"points": 4, "dense_max_params": 10_000}, "stability": {"steps": 4},
                "output_curvature": {"steps": 3, "point_chunk": 5}}
CORE = {"hessian_trace", "hessian_trace_se", "hessian_trace_exact", "hessian_gauss_newton_trace",
        "hessian_trace_hutchinson", "hessian_trace_hutchinson_se", "hessian_fro",
        "hessian_fro_se", "hessian_residual_fro", "hessian_residual_fro_se",
        "hessian_effective_rank", "loss_weighted_jacobian_sq"}


def test_family_switches_absent_false_true_and_mapping():
    enabled = studies.curvature_families({"lanczos": False, "rank": True,
                                         "adaptive_sharpness": {"rho": 0.5}})
    assert set(enabled) == {"rank", "adaptive_sharpness"}
    assert enabled["rank"] == studies.CURVATURE_FAMILIES["rank"]
    assert enabled["adaptive_sharpness"] == {"rho": 0.5, "pairs": 64}
    assert suite.coords({"enabled": False, "rank": True}) == {}
    assert set(suite.coords({"enabled": True, **ALL_FAMILIES})) == {
        "spectrum_bin", "slq_probe", "slq_node", "rank_tolerance", "rank_bound"}


def test_an_unresolved_spectral_density_grid_is_rejected_before_any_work():
    study = studies.load_params("tests/params_tiny.yaml")["studies"]["tiny"]
    study["measure"]["curvature"]["spectral_density"] = {"bins": 50, "smoothing": 0.01}
    with pytest.raises(studies.ConfigError, match=r"spectral_density.bins = 50 .* bins >= 107"):
        studies.check_study("tiny", study)
    study["measure"]["curvature"]["spectral_density"] = {"bins": 107, "smoothing": 0.01}
    studies.check_study("tiny", study)


def small_problem(seed=0):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(5, 8), nn.ReLU(), nn.Linear(8, 3))
    x = torch.randn(12, 5)
    return model, x, losses.get("mse").targets(torch.randint(0, 3, (12,)), 3, x.dtype)


def test_only_the_enabled_families_are_computed():
    model, x, targets = small_problem()
    core = suite.measure(model, x, targets, losses.get("mse"), {"probes": 4}, seed=0)
    assert set(core) == CORE
    with_lanczos = suite.measure(model, x, targets, losses.get("mse"),
                                 {"probes": 4, "lanczos": {"steps": 6}}, seed=0)
    assert set(with_lanczos) - CORE == {"hessian_lambda_max", "hessian_lambda_max_residual",
                                        "hessian_lambda_min", "hessian_lambda_min_residual",
                                        "hessian_lambda_max_scaled"}
    theta_sq = sum(p.detach().pow(2).sum() for p in model.parameters()).item()
    assert with_lanczos["hessian_lambda_max_scaled"] == pytest.approx(
        with_lanczos["hessian_lambda_max"] * theta_sq, rel=1e-12)
    assert with_lanczos["hessian_trace"] == core["hessian_trace"]   # same probes
    with_xtrace = suite.measure(model, x, targets, losses.get("mse"),
                                {"probes": 4, "xtrace": True}, seed=0)
    assert set(with_xtrace) - CORE == {"hessian_trace_xtrace", "hessian_trace_xtrace_se",
                                       "hessian_trace_by_xtrace",
                                       "hessian_trace_control_variate",
                                       "hessian_trace_control_variate_se"}
    # XTrace draws its own probe stream: the control variate is the core's
    assert with_xtrace["hessian_trace_control_variate"] == core["hessian_trace"]


@pytest.mark.parametrize("at_interpolation", [True, False])
def test_hessian_trace_takes_the_cheaper_of_the_control_variate_and_xtrace(at_interpolation):
    """A tanh MLP with 43 parameters and 24 probes. At an MSE interpolation (targets = the
    outputs) H = G, the control variate is exact (SE at rounding) and is taken; far from it
    (targets 5 N(0, 1)) H - G carries trace, XTrace's 12 test vectors resolve the top of the
    spectrum, its SE at 24 matvecs is below the control variate's at 48, and XTrace is
    taken. The value taken is always one of the two, with its own SE."""
    torch.manual_seed(0)
    model = models.mlp(4, 3, [5], activation="tanh").double()
    x = torch.randn(20, 4)
    targets = model(x).detach() if at_interpolation else 5 * torch.randn(20, 3)
    values = suite.measure(model, x, targets, losses.get("mse"), {"probes": 24, "xtrace": True},
                           seed=0)
    taken = "hessian_trace_control_variate" if at_interpolation else "hessian_trace_xtrace"
    assert values["hessian_trace_by_xtrace"] == (0.0 if at_interpolation else 1.0)
    assert (values["hessian_trace"], values["hessian_trace_se"]) == (values[taken],
                                                                     values[taken + "_se"])
    left = "hessian_trace_xtrace" if at_interpolation else "hessian_trace_control_variate"
    assert values[taken + "_se"] < values[left + "_se"]
    if at_interpolation:
        exact = torch.trace(dense_reference.loss_hessian(model, x, targets)).item()
        assert values["hessian_trace"] == pytest.approx(exact, rel=1e-12)
        assert values["hessian_trace_se"] < 1e-12 * exact


@pytest.mark.parametrize("points", [None, 5])
def test_loss_weighted_norms_against_dense_jacobians_and_output_hessians(points):
    """(1/n) sum_i l_i ||J_i||_2^2 and (1/n) sum_i l_i max_c ||grad^2 f_c(x_i)||_2 for
    cross-entropy, from dense per-sample Jacobians and Hessians (torch.func, float64); the
    second on the first ``points`` of the 12 points when set."""
    model, x, _ = small_problem(3)
    labels = torch.randint(0, 3, (12,), generator=torch.Generator().manual_seed(0))
    ce = losses.get("cross_entropy")
    params = dict(model.named_parameters())
    names = list(params)
    theta = torch.cat([p.detach().reshape(-1) for p in params.values()])

    def output(flat, x_i):
        chunks = torch.split(flat, [params[n].numel() for n in names])
        values = {n: c.reshape(params[n].shape) for n, c in zip(names, chunks)}
        return torch.func.functional_call(model, values, (x_i[None],))[0]

    per_sample = ce.per_sample(model(x), labels).detach()
    jac_sq = torch.stack([torch.linalg.matrix_norm(torch.func.jacrev(output)(theta, x_i), 2) ** 2
                          for x_i in x])
    hess = torch.stack([torch.stack([torch.linalg.matrix_norm(torch.func.hessian(
        lambda t, c=c, x_i=x_i: output(t, x_i)[c])(theta), 2) for c in range(3)]).max()
        for x_i in x])
    values = suite.measure(model, x, labels, ce,
                           {"probes": 4, "output_curvature": {"steps": 200, "point_chunk": 5,
                                                              "points": points}},
                           seed=0)
    assert values["loss_weighted_jacobian_sq"] == pytest.approx(
        (per_sample * jac_sq).mean().item(), rel=1e-10)
    first = slice(None, points)
    assert values["loss_weighted_output_curvature"] == pytest.approx(
        (per_sample[first] * hess[first]).mean().item(), rel=1e-8)
    assert values["output_curvature_residual_max"] < 1e-8


def test_a_tiny_memory_budget_blocks_every_large_intermediate_with_the_same_values():
    """max_bytes of 1 byte: one point per HVP pass, one (i, c) row per output-curvature
    Lanczos batch, and the parameter Jacobian in one-row blocks; the values are those of the
    default budget, under which nothing is split."""
    model = batchnorm_model()
    x, labels = torch.randn(12, 5), torch.randint(0, 3, (12,))
    loss = losses.get("cross_entropy")
    default = suite.measure(model, x, labels, loss, ALL_FAMILIES, seed=0)
    tiny = suite.measure(model, x, labels, loss, ALL_FAMILIES, seed=0, max_bytes=1)
    assert set(tiny) == set(default)
    for name, value in default.items():
        np.testing.assert_allclose(tiny[name], value, rtol=1e-9, atol=1e-12, err_msg=name)


def batchnorm_model(seed=1):
    """An MLP with BatchNorm whose running statistics are non-trivial, in eval mode."""
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Flatten(), nn.Linear(5, 8), nn.BatchNorm1d(8), nn.ReLU(),
                          nn.Linear(8, 3))
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(torch.randn(16, 5) * 2 + 1)
    return model.eval()


def test_no_measurement_changes_batchnorm_buffers():
    model = batchnorm_model()
    before = copy.deepcopy(dict(model.named_buffers()))
    x = torch.randn(12, 5)
    labels = torch.randint(0, 3, (12,))
    loss = losses.get("cross_entropy")
    points = measuring.point_measures(model, x, chunk_size=5, moments=(1, 2))
    values = suite.measure(model, x, labels, loss, ALL_FAMILIES, seed=0)
    measuring.evaluate(model, x, labels, 3, loss)
    after = dict(model.named_buffers())
    assert before["2.num_batches_tracked"].item() == 3
    for name, buffer in before.items():
        assert torch.equal(buffer, after[name]), name
    assert not model.training
    # log volumes are -inf where a dead ReLU makes a Jacobian singular (documented); no NaN.
    assert not any(np.isnan(v).any() for v in points.values())
    padded = {"slq_nodes"}   # NaN after an early Lanczos stop (documented)
    assert all(np.isfinite(np.asarray(v)).all() for k, v in values.items() if k not in padded)


def test_point_measures_in_pieces_within_the_budget_equal_one_pass(monkeypatch):
    """A budget of 5 samples' input and layer Jacobians, half of it theirs: the conv net's 7
    points go through in pieces of 2, 2, 2 and 1, and every per-sample measure equals the
    one-pass values, in float64 to a tolerance that no BLAS kernel's rounding reaches. The
    hidden width 6 < K = 10 makes the input Jacobian rank-deficient: the ranks are equal and
    the log volumes exactly -inf in both (their finite values were sums of logs of rounding
    noise, which differed between kernels)."""
    from flatrep import models
    from flatrep.measures import jacobian

    torch.manual_seed(3)
    model = models.build({"name": "cnn2d", "channels": [3, 4], "hidden": [6]}, (2, 8, 8),
                         10).double().eval()
    x = torch.randn(7, 2, 8, 8, dtype=torch.float64)
    whole = measuring.point_measures(model, x, chunk_size=7, moments=(1, 2))
    pieces = []
    full = jacobian.per_sample_jacobians
    monkeypatch.setattr(jacobian, "per_sample_jacobians",
                        lambda model, x, *a, **kw: pieces.append(len(x))
                        or full(model, x, *a, **kw))
    budget = 5 * jacobian.input_jacobian_bytes(model, x)
    budgeted = measuring.point_measures(model, x, chunk_size=7, moments=(1, 2), max_bytes=budget)
    assert pieces == [2, 2, 2, 1]
    assert set(budgeted) == set(whole)
    assert (whole["jacobian_rank"] <= 6).all() and (whole["log_lvr"] == -np.inf).all()
    for key, value in whole.items():
        np.testing.assert_allclose(budgeted[key], value, rtol=1e-10, atol=1e-14, err_msg=key)


def test_conv_net_goes_through_every_measure():
    """The CNN (Conv1d layers, generic Jacobian path) through point measures, every curvature
    family and the layer norms; conv layers get the true operator norm and the surrogate."""
    from flatrep import models
    from flatrep.measures import layers

    torch.manual_seed(2)
    model = models.cnn((20,), 3, channels=[3, 4], kernel_size=3).eval()
    x, labels = torch.randn(10, 20), torch.randint(0, 3, (10,))
    points = measuring.point_measures(model, x, chunk_size=4, moments=(1,))
    assert points["layer_mls"].shape == (10, 3)                 # two Conv1d and the head
    values = suite.measure(model, x, losses.get("mse").targets(labels, 3, x.dtype),
                           losses.get("mse"), ALL_FAMILIES, seed=0)
    assert values["hessian_rank"][-1] <= values["num_params"]
    norms = layers.weight_norms(model, x)
    assert torch.all(norms["reference"][:2] > norms["spectral"][:2])
    assert norms["reference"][2] == norms["frobenius"][2]


def test_measures_file_holds_consistent_curvature_values(measured_tiny_run):
    """The tiny run's cube: rank within its exact bounds, densities normalised, gaps as defined."""
    ds, _ = measured_tiny_run
    final = ds.isel(run=0, step=-1)
    assert float(final["generalization_loss_gap"]) == pytest.approx(
        float(final["test_loss"] - final["train_loss"]), rel=1e-12)
    bounds = final["hessian_rank_bound"]
    assert (final["gauss_newton_rank"] <= bounds.sel(rank_bound="gauss_newton_c")).all()
    assert (final["hessian_rank"] <= final["num_params"]).all()
    assert final["hessian_rank"].notnull().all()        # P = 1098 <= dense_max_params
    # ranks grow as the tolerance shrinks
    assert (final["hessian_rank"].diff("rank_tolerance") >= 0).all()
    for step in range(ds.sizes["step"]):
        at = ds.isel(run=0, step=step)
        mass = np.trapezoid(at["spectral_density"], at["spectral_density_eigenvalue"])
        assert mass == pytest.approx(1.0, abs=2e-3)
        assert at["slq_weights"].sum("slq_node").values == pytest.approx(1.0, abs=1e-10)


def test_measures_file_takes_misclassified_points_from_the_whole_test_split(measured_tiny_run,
                                                                            tiny_study,
                                                                            data_root):
    """At every checkpoint the subset test_misclassified holds min(points, wrong) test rows,
    wrong = (1 - test_acc) n_test, each misclassified by that checkpoint's network, measured
    there and NaN past them."""
    ds, paths = measured_tiny_run
    x, y = datasets.load_study_split(tiny_study["data"], "test", data_root)
    n_points = ds.sizes["sample"]
    for step, path in enumerate(paths):
        at = ds.isel(run=0, step=step)
        index = at["misclassified_index"].values
        wrong = round((1 - float(at["test_acc"])) * len(y))
        taken = index[~np.isnan(index)].astype(int)
        assert len(taken) == min(n_points, wrong) and np.all(np.diff(taken) > 0)
        model = checkpoint.load(path)[0].double().eval()
        with torch.no_grad():
            assert (model(x[taken].double()).argmax(1) != y[taken]).all()
        assert np.isnan(at["mls"].sel(subset="test_misclassified").values[len(taken):]).all()
        assert not np.isnan(at["mls"].sel(subset="test_misclassified").values[:len(taken)]).any()


@pytest.mark.parametrize("activation, exact", [("relu", True), ("tanh", False)])
def test_hessian_trace_is_the_gauss_newton_trace_on_a_piecewise_linear_network(
        activation, exact):
    """Far from interpolation (targets 5 N(0, 1)) with 4 probes: on a ReLU MLP hessian_trace
    is Tr H of the dense Hessian to rounding with SE 0, though the 4 probes' plain Hutchinson
    estimate is off; on a tanh MLP the control variate estimates Tr(H - G), with an SE."""
    torch.manual_seed(2)
    model = models.mlp(4, 3, [6], activation=activation).double()
    x, targets = torch.randn(15, 4), 5 * torch.randn(15, 3)
    values = suite.measure(model, x, targets, losses.get("mse"), {"probes": 4}, seed=0)
    trace = torch.trace(dense_reference.loss_hessian(model, x, targets)).item()
    assert values["hessian_trace_exact"] == float(exact)
    assert abs(values["hessian_trace_hutchinson"] - trace) > 1e-3 * abs(trace)
    if exact:
        assert values["hessian_trace"] == pytest.approx(trace, rel=1e-12)
        assert values["hessian_trace_se"] == 0.0
    else:
        assert values["hessian_trace_se"] > 1e-6 * abs(trace)
        assert values["hessian_trace"] != values["hessian_gauss_newton_trace"]
