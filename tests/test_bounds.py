"""The bound registry: every bound holds on real measured networks (they are theorems for
MLPs), and a violation is reported when one is fabricated."""

import copy

import numpy as np
import pytest
import torch

from flatrep import checkpoint, determinism
from flatrep.analysis import bounds
from flatrep.cube import measuring
from flatrep.data import datasets
from flatrep.params import studies
from flatrep.training import single


def test_every_theorem_holds_on_a_trained_mlp(measured_tiny_run):
    ds, _ = measured_tiny_run
    result = bounds.evaluate(ds)
    assert set(result["bound"].values) == set(bounds.REGISTRY)
    assert result["holds"].dims == ("bound", "run", "step")
    cross_entropy_only = ["loss_trace", "loss_spectral"]
    assert result["holds"].sel(bound=cross_entropy_only).isnull().all()   # an mse study
    result = result.drop_sel(bound=cross_entropy_only)
    theorems = result.where(result["kind"] == bounds.THEOREM, drop=True)
    assert theorems.sizes["bound"] >= 11
    assert (theorems["holds"] == 1).all()
    assert ((theorems["tightness"] >= 0) & (theorems["tightness"] <= 1 + bounds.RTOL)).all()
    # The tiny MLP's 16-unit ReLU layers leave fewer than K = 10 units active at some points:
    # a numerically rank-deficient J_x, volume exactly 0. Only a volume's LHS may vanish.
    np.testing.assert_array_equal(theorems["tightness"] == 0, theorems["lhs"] == 0)
    volumes = ["lvr_sum_min", "lvr_geometric", "nvr"]
    assert (theorems["lhs"].drop_sel(bound=volumes) > 0).all()
    geometric = theorems["lhs"].sel(bound="lvr_geometric")
    deficient = np.isneginf(measured_tiny_run[0]["log_lvr"].sel(subset="train")).any("sample")
    np.testing.assert_array_equal(geometric == 0, deficient)
    conditional = result.where(result["kind"] == bounds.CONDITIONAL, drop=True)
    assert conditional["holds"].notnull().all()     # evaluated, whatever the verdict


def test_lvr_and_nvr_right_hand_sides_by_hand(measured_tiny_run):
    ds, _ = measured_tiny_run
    r = bounds.evaluate(ds).isel(run=0, step=-1)
    final = ds.isel(run=0, step=-1)
    train = final.sel(subset="train")
    n_sv = min(10, 40)                                     # K = 10 outputs, d = 40 inputs
    w1, sharp = float(final["weight_spectral_norm"][0]), float(final["sharpness"])
    x_sq = train["input_norm"].values ** 2
    geometric = (w1 ** 2 * sharp / (n_sv * np.exp(np.log(x_sq).mean()))) ** (n_sv / 2)
    assert float(r["rhs"].sel(bound="lvr_geometric")) == pytest.approx(geometric, rel=1e-10)
    assert float(r["lhs"].sel(bound="lvr_geometric")) == pytest.approx(
        np.exp(train["log_lvr"].values.mean()), rel=1e-10)
    sum_min = (w1 ** 2 * len(x_sq) * sharp / (n_sv * x_sq.min())) ** n_sv
    assert float(r["rhs"].sel(bound="lvr_sum_min")) == pytest.approx(sum_min, rel=1e-10)
    ratios = [float(final["weight_spectral_norm"][l]) ** 2
              / (10 * train["layer_input_norm"].values[:, l] ** 2) for l in range(3)]
    nvr = max(r.max() for r in ratios) ** 10 * (len(x_sq) * sharp) ** 10
    assert float(r["rhs"].sel(bound="nvr")) == pytest.approx(nvr, rel=1e-10)


def test_linear_stability_and_rank_bounds_by_hand(measured_tiny_run):
    ds, _ = measured_tiny_run
    r = bounds.evaluate(ds).isel(step=-1)
    final = ds.isel(step=-1)
    expected_lhs = 0.2 * final["hessian_lambda_max"]       # torch MSELoss Hessian: 2/K = 0.2
    np.testing.assert_allclose(r["lhs"].sel(bound="linear_stability"), expected_lhs)
    np.testing.assert_allclose(r["rhs"].sel(bound="linear_stability"), 2 / final["lr"])
    # 10 rank points x K = 10 outputs bound the Gauss-Newton rank of the 1/2-MSE loss
    assert (r["rhs"].sel(bound="rank_gauss_newton") == 100).all()
    # (K - 1) sum_l n_in,l = 9 (40 + 16 + 16) for the 40-16-16-10 MLP
    assert (r["rhs"].sel(bound="rank_hessian_layers") == 9 * 72).all()


def test_mls_chain_is_ordered(measured_tiny_run):
    ds, _ = measured_tiny_run
    r = bounds.evaluate(ds)
    a = r["lhs"].sel(bound="mls_a_le_bprime")
    bprime, c, d = (r["rhs"].sel(bound=name) for name in ("mls_a_le_bprime", "mls_bprime_le_c",
                                                          "mls_c_le_d"))
    assert (a <= bprime).all() and (bprime <= c).all() and (c <= d * (1 + 1e-12)).all()
    np.testing.assert_allclose(r["rhs"].sel(bound="mls"), d)


def test_ma_ying_rhs_by_hand(measured_tiny_run):
    ds, _ = measured_tiny_run
    r = bounds.evaluate(ds).isel(run=0, step=-1)
    final = ds.isel(run=0, step=-1)
    w1 = float(final["weight_spectral_norm"][0])
    x_norms = final["input_norm"].sel(subset="train").values
    expected = w1 ** 2 / x_norms.min() ** 2 * float(final["sharpness"])
    assert float(r["rhs"].sel(bound="ma_ying")) == pytest.approx(expected, rel=1e-12)
    assert float(r["lhs"].sel(bound="ma_ying")) == pytest.approx(
        float(final["jacobian_fro_sq"].sel(subset="train").mean()), rel=1e-12)


def test_a_fabricated_violation_is_reported(measured_tiny_run):
    ds, _ = measured_tiny_run
    broken = ds.copy(deep=True)
    broken["mls"][:] = broken["mls"] * 1e6  # sensitivities no network of this size can have
    result = bounds.evaluate(broken)
    assert (result["holds"].sel(bound="mls") == 0).all()
    assert (result["holds"].sel(bound="ma_ying") == 1).all()  # untouched inputs still hold


def test_per_sample_bounds_hold_at_every_point_and_match_the_lemma_by_hand(measured_tiny_run):
    ds, _ = measured_tiny_run
    r = bounds.evaluate(ds)
    assert r["sample_holds"].dims == ("sample_bound", "run", "step", "sample")
    assert (r["sample_holds"] == 1).all()
    final, at = ds.isel(run=0, step=-1), r.isel(run=0, step=-1, sample=3)
    train = final.sel(subset="train").isel(sample=3)
    w1 = float(final["weight_spectral_norm"][0])
    ratio = w1 * float(train["weight_grad_norm"][0]) / float(train["input_norm"])
    assert float(at["sample_rhs"].sel(sample_bound="mls_per_sample")) == pytest.approx(
        ratio, rel=1e-12)
    assert float(at["sample_rhs"].sel(sample_bound="lvr_per_sample")) == pytest.approx(
        (ratio ** 2 / 10) ** 5, rel=1e-10)
    broken = ds.copy(deep=True)
    broken["mls"][:] = broken["mls"] * 1e6
    assert (bounds.evaluate(broken)["sample_holds"].sel(sample_bound="mls_per_sample") == 0).all()


def test_sgd_stability_conditions_by_hand_and_their_full_batch_limit(measured_tiny_run):
    """Mulayoff & Michaeli's necessary conditions in the training convention (factor 2/K),
    p = (n - B) / (B (n - 1)); at B = n (p = 0) the lambda_max form is GD's 2 / lambda."""
    ds, _ = measured_tiny_run
    n = ds.attrs["train_size"]
    assert n == 300                                        # 400 samples, train_split 0.75
    final = ds.isel(step=-1)
    r = bounds.evaluate(ds).isel(step=-1)
    batch, factor = final["batch_size"], 0.2
    p = (n - batch) / (batch * (n - 1))
    lam, spread = factor * final["hessian_lambda_max"], factor ** 2 * final[
        "stability_rayleigh_spread"]
    np.testing.assert_allclose(r["rhs"].sel(bound="sgd_stability_top"),
                               2 * lam / (lam ** 2 + p * spread), rtol=1e-12)
    trace = factor * final["hessian_gauss_newton_trace"]
    denominator = factor ** 2 * ((1 - p) * final["hessian_fro"] ** 2
                                 + p * final["per_sample_hessian_fro_sq"])
    np.testing.assert_allclose(r["rhs"].sel(bound="sgd_stability_trace"),
                               2 * trace / denominator, rtol=1e-12)
    np.testing.assert_allclose(r["lhs"].sel(bound="sgd_stability_top"), final["lr"])
    full_batch = bounds.evaluate(ds.assign_coords(batch_size=("run", [n]))).isel(step=-1)
    np.testing.assert_allclose(full_batch["rhs"].sel(bound="sgd_stability_top"),
                               2 / full_batch["lhs"].sel(bound="linear_stability"), rtol=1e-12)


@pytest.fixture(scope="module")
def logistic_regression_run(tiny_study, data_root, tmp_path_factory):
    """A cross-entropy logistic regression, trained briefly and measured (P = 41 x 10):
    (measured run, study, checkpoint paths)."""
    study = copy.deepcopy(tiny_study)
    study["model"] = {"name": "logreg"}
    study["train"].update(loss="cross_entropy", iterations=60, checkpoints={"count": 3})
    study["measure"]["curvature"].update(lanczos={"steps": 60}, spectral_density=False,
                                         adaptive_sharpness=False, relative_flatness=False)
    run = studies.Run("lr0.5_bs20_seed0", {"lr": 0.5, "batch_size": 20, "seed": 0})
    paths = single.train_run("ce", study, run, tmp_path_factory.mktemp("logreg"), data_root,
                             threads=1)
    return measuring.measures_file(paths, study["measure"], data_root, threads=1), study, paths


def test_false_friend_loss_bounds_for_logistic_regression_in_closed_form(
        logistic_regression_run, data_root):
    """Tr H = (1/n) sum_i (1 - ||p_i||^2) ||x~_i||^2 <= (2/n) sum_i ||x~_i||^2 l_i, x~ = (x, 1):
    the LHS against the dense Hessian of the mean cross-entropy on the curvature points and
    the RHS against the closed form; the spectral form holds with zero output curvature."""
    ds, study, paths = logistic_regression_run
    r = bounds.evaluate(ds)
    for name in ("loss_trace", "loss_spectral"):
        assert (r["holds"].sel(bound=name) == 1).all()
    assert (ds["loss_weighted_output_curvature"] == 0).all()     # f is linear in theta
    x, y = datasets.load_study_split(study["data"], "train", data_root)
    rows = measuring.measurement_indices(len(y), study["measure"]["curvature"]["points"],
                                         determinism.sub_seed(0, "curvature"))
    x, y = x[rows].double(), y[rows]
    x_tilde_sq = x.pow(2).sum(1) + 1
    for k, path in enumerate(paths):
        model = checkpoint.load(path)[0].double()
        theta = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
        shapes = [p.shape for p in model.parameters()]

        def mean_loss(flat):
            weight, bias = flat[:shapes[0].numel()].reshape(shapes[0]), flat[shapes[0].numel():]
            return torch.nn.functional.cross_entropy(x @ weight.T + bias, y)

        dense = torch.func.hessian(mean_loss)(theta)
        per_sample = torch.nn.functional.cross_entropy(model(x), y, reduction="none").detach()
        at = r.isel(run=0, step=k)
        assert float(at["lhs"].sel(bound="loss_trace")) == pytest.approx(
            torch.trace(dense).item(), rel=1e-10)
        assert float(at["rhs"].sel(bound="loss_trace")) == pytest.approx(
            2 * (x_tilde_sq * per_sample).mean().item(), rel=1e-10)
        assert float(at["lhs"].sel(bound="loss_spectral")) == pytest.approx(
            torch.linalg.matrix_norm(dense, 2).item(), rel=1e-8)


def test_the_rank_bound_bites_with_one_output_per_class_of_a_subset(tiny_study, data_root,
                                                                    tmp_path):
    """The False-Friend rank setting: logistic regression with cross-entropy on classes
    {0, 1, 2} of MNIST-1D (d = 40) and ``data.outputs: classes``, so K = C = 3 and
    P = 3 (d + 1) = 123. H = (1/n) sum_i M(p_i) (x) x~_i x~_i^T with M(p) 1 = 0, so the 41
    directions 1 (x) v are in its null space and rank H <= (C - 1)(d + 1) = 82 < P: the
    bound is not vacuous and, with all n ~ 90 > d + 1 training points (curvature.points null)
    in general position, attained."""
    study = copy.deepcopy(tiny_study)
    study["data"].update(classes=[0, 1, 2], outputs="classes")
    study["model"] = {"name": "logreg"}
    study["train"].update(loss="cross_entropy", iterations=40, checkpoints={"count": 2})
    study["measure"]["curvature"] = {"enabled": True, "points": None, "probes": 4,
                                     "lanczos": False, "rank": {"points": 10,
                                                                "dense_max_params": 200}}
    run = studies.Run("lr0.5_bs20_seed0", {"lr": 0.5, "batch_size": 20, "seed": 0})
    paths = single.train_run("rank", study, run, tmp_path, data_root, threads=1)
    model = checkpoint.load(paths[-1])[0]
    assert model(torch.zeros(1, 40)).shape == (1, 3)
    ds = measuring.measures_file(paths, study["measure"], data_root, threads=1)
    final = ds.isel(run=0, step=-1)
    assert int(ds.attrs["num_outputs"]) == 3 and float(final["num_params"]) == 123
    bound = final["hessian_rank_bound"].sel(rank_bound="layers_c_minus_1_bias")
    assert float(bound) == 82
    assert final["hessian_rank"].notnull().all()
    assert (final["hessian_rank"] <= bound).all()
    # with n ~ 90 > d + 1 points in general position the bound is attained
    assert float(final["hessian_rank"].sel(rank_tolerance=1e-8)) == 82
    _, y = datasets.load_study_split(study["data"], "train", data_root)
    assert set(y.tolist()) == {0, 1, 2}
