"""``flatrep.measure`` on models defined here: closed forms of a linear model against a dense
Hessian, the pipeline's own values for a checkpoint's weights in a hand-written MLP, the
catalogue's attributes, one clear error per bad input before any measure, the
``flatrep measure-model`` command end to end (and its refusal of a crafted weights file), and
the docs page's example run as written."""

import copy
import importlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from torch.func import functional_call, hessian

import flatrep
from flatrep import checkpoint, cli
from flatrep.cube import any_model, measuring, netcdf, variables
from flatrep.data import datasets
from flatrep.params import studies

ROOT = Path(__file__).resolve().parents[1]
PAGE = ROOT / "docs" / "any_model.md"


class Affine(nn.Module):
    """f(x) = W x + b, float64."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor):
        super().__init__()
        self.map = nn.Linear(weight.shape[1], weight.shape[0], dtype=torch.float64)
        with torch.no_grad():
            self.map.weight.copy_(weight)
            self.map.bias.copy_(bias)

    def forward(self, x):
        return self.map(x)


class ReluMLP(nn.Module):
    """40-16-16-10 ReLU net written out by hand (the tiny study's MLP, other module names)."""

    def __init__(self):
        super().__init__()
        self.fc1, self.fc2, self.fc3 = nn.Linear(40, 16), nn.Linear(16, 16), nn.Linear(16, 10)

    def forward(self, x):
        return self.fc3(torch.relu(self.fc2(torch.relu(self.fc1(x.flatten(1))))))


def affine_problem(n=30, d=5, k=3, seed=0):
    generator = torch.Generator().manual_seed(seed)
    weight = torch.randn(k, d, generator=generator, dtype=torch.float64)
    bias = torch.randn(k, generator=generator, dtype=torch.float64)
    x = torch.randn(n, d, generator=generator, dtype=torch.float64)
    y = torch.randint(0, k, (n,), generator=generator)
    return Affine(weight, bias), x, y


def dense_hessian(model: nn.Module, x, targets, loss_name: str) -> torch.Tensor:
    """The Hessian of L(theta) = (1/n) sum_i l(f(x_i), y_i) by torch.func.hessian, l as
    flatrep.losses' per-sample loss (1/2 ||f - y||^2, y one-hot for labels; cross-entropy)."""
    names = [name for name, _ in model.named_parameters()]
    shapes = [p.shape for _, p in model.named_parameters()]
    flat = torch.cat([p.detach().reshape(-1) for _, p in model.named_parameters()])

    def loss(theta):
        params, start = {}, 0
        for name, shape in zip(names, shapes):
            params[name] = theta[start:start + shape.numel()].reshape(shape)
            start += shape.numel()
        out = functional_call(model, params, (x,))
        if loss_name == "mse":
            y = (targets if targets.is_floating_point()
                 else nn.functional.one_hot(targets, out.shape[1]).double())
            return 0.5 * (out - y).pow(2).sum(1).mean()
        return nn.functional.cross_entropy(out, targets)

    return hessian(loss)(flat)


def test_a_linear_model_gives_its_closed_forms():
    """J_x = W for every x: MLS = s_1(W), log LVR = sum_k log s_k(W) over min(K, d) values,
    local dim = (sum s^2)^2 / sum s^4, NMLS = s_1(W) (one layer, its input x). df_c/dW_ab =
    delta_ca x_b and df_c/db_a = delta_ca, so ||df(x)/dtheta||_F^2 = K (1 + ||x||^2) and the
    sharpness is K (1 + mean ||x_i||^2) over the measured training points. For mse,
    L = (1/2n) sum ||Wx + b - y||^2 has H = G (f linear in theta), so the control-variate
    trace is exact, and both equal the dense Hessian's trace; Lanczos finds its top
    eigenvalue."""
    model, x, y = affine_problem()
    ds = flatrep.measure(model, x, y, points=10, families={"lanczos": {"steps": 10}})
    s = torch.linalg.svdvals(model.map.weight.detach()).numpy()
    per_sample = ds.sel(subset="train")
    assert ds.sizes["sample"] == 10 and list(ds.subset.values) == ["train"]
    np.testing.assert_allclose(per_sample.mls, s[0], rtol=1e-12)
    np.testing.assert_allclose(per_sample.nmls, s[0], rtol=1e-12)
    np.testing.assert_allclose(per_sample.log_lvr, np.log(s).sum(), rtol=1e-12)
    np.testing.assert_allclose(per_sample.local_dim, (s**2).sum()**2 / (s**4).sum(), rtol=1e-12)
    rows = per_sample.sample_index.values
    norms_sq = x[rows].pow(2).sum(1).numpy()
    k = 3
    np.testing.assert_allclose(per_sample.sample_sharpness, k * (1 + norms_sq), rtol=1e-12)
    np.testing.assert_allclose(float(ds.sharpness), k * (1 + norms_sq.mean()), rtol=1e-12)
    h = dense_hessian(model, x, y, "mse")
    eigenvalues = torch.linalg.eigvalsh(h)
    np.testing.assert_allclose(float(ds.hessian_trace), h.trace().item(), rtol=1e-10)
    np.testing.assert_allclose(float(ds.hessian_trace),
                               k * (1 + x.pow(2).sum(1).mean().item()), rtol=1e-10)
    np.testing.assert_allclose(float(ds.hessian_lambda_max), eigenvalues[-1].item(), rtol=1e-8)
    one_hot = nn.functional.one_hot(y, k).double()
    out = model(x).detach()
    np.testing.assert_allclose(float(ds.train_loss), (out - one_hot).pow(2).mean().item(),
                               rtol=1e-12)
    assert float(ds.train_acc) == (out.argmax(1) == y).double().mean().item()


@pytest.mark.parametrize("soft", [False, True])
def test_cross_entropy_hessian_trace_matches_the_dense_hessian(soft):
    """Cross-entropy on a linear model: H = G = (1/n) sum J_i^T (diag p - p p^T) J_i, so the
    estimate is exact; with soft labels (float targets) the loss and H are those of the
    probabilities given."""
    model, x, y = affine_problem(n=24, d=4, k=3, seed=1)
    targets = torch.softmax(torch.randn(24, 3, dtype=torch.float64), 1) if soft else y
    ds = flatrep.measure(model, x, targets, "cross_entropy", points=5)
    h = dense_hessian(model, x, targets, "cross_entropy")
    np.testing.assert_allclose(float(ds.hessian_trace), h.trace().item(), rtol=1e-10)
    np.testing.assert_allclose(float(ds.hessian_gauss_newton_trace), h.trace().item(),
                               rtol=1e-10)
    expected = nn.functional.cross_entropy(model(x).detach(), targets).item()
    np.testing.assert_allclose(float(ds.train_loss), expected, rtol=1e-12)


def test_one_hot_targets_give_what_their_labels_give():
    model, x, y = affine_problem()
    labels = flatrep.measure(model, x, y, points=6)
    one_hot = flatrep.measure(model, x, nn.functional.one_hot(y, 3).double(), points=6)
    assert labels.identical(one_hot)


def test_a_test_split_adds_the_test_subsets_and_the_callers_model_is_left_alone():
    """With test inputs, the subsets are the cube's three; the misclassified points are test
    rows the model gets wrong, NaN-padded. The caller's float32 model in train mode stays
    float32, in train mode, with the same weights."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 4))
    before = {key: value.clone() for key, value in model.state_dict().items()}
    x, y = torch.randn(20, 6), torch.randint(0, 4, (20,))
    x_test, y_test = torch.randn(15, 6), torch.randint(0, 4, (15,))
    ds = flatrep.measure(model, x, y, test_inputs=x_test, test_targets=y_test, points=7,
                         curvature=False)
    assert list(ds.subset.values) == list(measuring.SUBSETS)
    assert "hessian_trace" not in ds and "diverged" not in ds and "step" not in ds.dims
    with torch.no_grad():
        out = copy.deepcopy(model).double()(x_test.double())
    wrong = (out.argmax(1) != y_test).numpy()
    assert float(ds.test_acc) == (~wrong).mean()
    np.testing.assert_allclose(float(ds.generalization_gap),
                               float(ds.train_acc) - float(ds.test_acc))
    hard = ds.misclassified_index.values
    found = hard[~np.isnan(hard)].astype(int)
    assert len(found) == min(7, wrong.sum()) and wrong[found].all()
    assert np.isnan(ds.mls.sel(subset="test_misclassified").values[len(found):]).all()
    np.testing.assert_array_equal(ds.sample_index.sel(subset="test_misclassified"), -1)
    assert model.training and all(p.dtype == torch.float32 for p in model.parameters())
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key])


def tiny_families(tiny_study) -> dict:
    curvature = tiny_study["measure"]["curvature"]
    return {key: value for key, value in curvature.items() if key in studies.CURVATURE_FAMILIES}


@pytest.fixture(scope="module")
def checkpoint_slice(measured_tiny_run, tiny_study, data_root):
    """(the pipeline's Dataset of the last checkpoint of a tiny run, ``flatrep.measure`` of
    its weights in ReluMLP on the same data and measure settings)."""
    cube, paths = measured_tiny_run
    pipeline_model, meta = checkpoint.load(paths[-1])
    weights = pipeline_model.state_dict()
    mlp = ReluMLP()
    mlp.load_state_dict({f"fc{i}.{kind}": weights[f"{index}.{kind}"]
                         for i, index in enumerate((1, 3, 5), 1) for kind in ("weight", "bias")})
    measure_cfg = tiny_study["measure"]
    splits = [datasets.load_study_split(tiny_study["data"], split, data_root)
              for split in ("train", "test")]
    result = flatrep.measure(mlp, *splits[0], "mse", test_inputs=splits[1][0],
                             test_targets=splits[1][1], points=measure_cfg["points"],
                             point_seed=measure_cfg["point_seed"],
                             chunk_size=measure_cfg["chunk_size"],
                             curvature_points=measure_cfg["curvature"]["points"],
                             probes=measure_cfg["curvature"]["probes"],
                             families=tiny_families(tiny_study))
    return cube.isel(run=0).sel(step=meta["step"]), result


#: The Hessian trace is exact (Tr G) on the pipeline's nn.Sequential ReLU MLP
#: (``curvature.piecewise_linear``); ReluMLP's hand-written forward is not inspected, so there
#: the control variate estimates it.
TRACE_BY_STRUCTURE = ("hessian_trace", "hessian_trace_se", "hessian_trace_exact",
                      "hessian_trace_control_variate", "hessian_trace_control_variate_se")


def test_the_api_returns_the_pipelines_checkpoint_slice(checkpoint_slice):
    """Every variable, on the same seeded points, bit for bit, but the Hessian trace, which is
    exact on the pipeline's Sequential and within 4 SE of it by the control variate on the
    hand-written net; dims and coordinates alike but the layer names, the model's own."""
    expected, result = checkpoint_slice
    assert (expected.hessian_trace_exact.item(), expected.hessian_trace_se.item()) == (1.0, 0.0)
    assert result.hessian_trace_exact.item() == 0.0
    assert abs(result.hessian_trace.item() - expected.hessian_trace.item()) <= \
        4 * result.hessian_trace_se.item()
    assert set(result.data_vars) == set(expected.data_vars) - set(any_model.TRAINING_RECORD)
    assert {"hessian_trace_hutchpp", "hessian_lambda_max", "relative_flatness_first",
            "adaptive_sharpness", "spectral_density", "hessian_rank", "gauss_newton_nonuniformity",
            "loss_weighted_output_curvature", "hessian_bn_train_trace"} <= set(result.data_vars)
    for name, var in result.data_vars.items():
        assert var.dims == expected[name].dims, name
        if name not in TRACE_BY_STRUCTURE:
            np.testing.assert_array_equal(var.values, expected[name].values, err_msg=name)
    for name in ("subset", "sample_index", "layer", "layer_type", "moment", "spectrum_bin",
                 "rank_tolerance", "rank_bound"):
        np.testing.assert_array_equal(result[name].values, expected[name].values)
    assert list(result.layer_name.values) == ["fc1", "fc2", "fc3"]
    for key in ("num_outputs", "input_shape", "loss", "hessian_factor",
                "measure_points_per_subset"):
        assert result.attrs[key] == expected.attrs[key], key
    assert json.loads(result.attrs["curvature"]) == {**json.loads(expected.attrs["curvature"]),
                                                     "hvp": "auto"}


def test_every_variable_carries_the_catalogues_attributes(checkpoint_slice):
    _, result = checkpoint_slice
    for name, var in result.data_vars.items():
        assert var.attrs == variables.attributes(name), name
        assert set(var.attrs) == {"long_name", "units", "definition"}
    assert result.subset.attrs == measuring.SUBSET_ATTRS


class ThreeDimensional(nn.Module):
    def __init__(self):
        super().__init__()
        self.map = nn.Linear(5, 3)

    def forward(self, x):
        return self.map(x)[:, :, None]


def bad_inputs():
    """(what to change in the good call, the message's expected fragment)."""
    return [
        ({"targets": torch.zeros(30, 3, 1)}, r"targets: torch.float32 of shape \(30, 3, 1\); "
         r"give class labels \(n,\)"),
        ({"targets": torch.zeros(29, dtype=torch.long)}, "targets has 29 rows but inputs has 30"),
        ({"targets": torch.zeros(30, 4)}, r"targets have 4 columns but the model 3 outputs"),
        ({"targets": torch.full((30,), 3)}, r"labels 3..3 are not all classes 0..2"),
        ({"families": ["lanczoz"]}, "unknown curvature family 'lanczoz' "
                                    r"\(did you mean 'lanczos'\?\)"),
        ({"families": {"lanczos": {"step": 3}}}, r"families\['lanczos'\] = \{'step': 3\}"),
        ({"families": ["lanczos"], "curvature": False}, "given with curvature=False"),
        ({"loss": "mae"}, r"loss = 'mae': unknown"),
        ({"points": 31}, r"points = 31: must be an integer in 1..30 \(30: the rows of the "
                         "smaller split"),
        ({"curvature_points": 0}, "curvature_points = 0"),
        ({"probes": 2}, "probes = 2: must be an integer >= 3"),
        ({"hvp": "exact"}, "hvp = 'exact'"),
        ({"model": ThreeDimensional()}, r"output for 1 input is \(1, 3, 1\), not \(1, K\)"),
        ({"model": lambda x: x}, "model is a function, not a torch.nn.Module"),
        ({"model": nn.Linear(4, 3)}, "the model fails on inputs of shape"),
        ({"inputs": torch.zeros(30, 5, dtype=torch.long)}, "inputs: need a float tensor"),
        ({"test_inputs": torch.zeros(4, 5)}, "give test_inputs and test_targets together"),
        ({"test_inputs": torch.zeros(4, 6), "test_targets": torch.zeros(4, dtype=torch.long)},
         r"test_inputs have samples of shape \(6,\)"),
    ]


@pytest.mark.parametrize("change, message", bad_inputs())
def test_bad_input_is_one_clear_error_before_any_measure(monkeypatch, change, message):
    def no_measures(*_args, **_kwargs):
        raise AssertionError("measured despite bad input")

    monkeypatch.setattr(measuring, "measure_checkpoint", no_measures)
    torch.manual_seed(0)
    call = {"model": nn.Linear(5, 3), "inputs": torch.randn(30, 5),
            "targets": torch.randint(0, 3, (30,)), **change}
    with pytest.raises(any_model.MeasureError, match=message) as raised:
        flatrep.measure(**call)
    assert "\n" not in str(raised.value)


def test_flatrep_stays_light_and_measure_is_its_attribute():
    code = ("import sys, flatrep; light = 'torch' not in sys.modules; "
            "from flatrep.cube import any_model; "
            "print(light, flatrep.measure is any_model.measure, hasattr(flatrep, 'nothing'))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.split() == ["True", "True", "False"]


FACTORY = '''from torch import nn


def build():
    return nn.Sequential(nn.Flatten(), nn.Linear(40, 12), nn.Tanh(), nn.Linear(12, 10))
'''


def write_factory(folder: Path, module: str) -> str:
    (folder / f"{module}.py").write_text(FACTORY)
    return f"{module}:build"


class _CreatesAFile:
    """Unpickling this object calls open(path, "w"): it would create ``path``."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_the_command_measures_a_factory_model_with_saved_weights(tmp_path, monkeypatch,
                                                                 tiny_study, data_root):
    """`flatrep measure-model` in a fresh process gives what flatrep.measure gives for the
    same model and dataset splits, with the run's provenance in the attributes."""
    factory = write_factory(tmp_path, "my_factory")
    monkeypatch.syspath_prepend(str(tmp_path))
    torch.manual_seed(3)
    model = importlib.import_module("my_factory").build()
    torch.save(model.state_dict(), tmp_path / "weights.pt")
    options = {key: value for key, value in tiny_study["data"].items() if key != "name"}
    out = tmp_path / "measures.nc"
    env = {**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    result = subprocess.run(
        ["flatrep", "measure-model", "--weights", str(tmp_path / "weights.pt"), "--factory",
         factory, "--dataset", "mnist1d", "--data-options", json.dumps(options),
         "--data-root", str(data_root), "--points", "6", "--curvature-points", "40",
         "--families", "lanczos", "--device", "cpu", "--out", str(out)],
        env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    written = netcdf.read(out)
    splits = [datasets.load("mnist1d", split, data_root, **options) for split in ("train", "test")]
    expected = flatrep.measure(model, *splits[0], test_inputs=splits[1][0],
                               test_targets=splits[1][1], points=6, curvature_points=40,
                               families=["lanczos"])
    assert set(written.data_vars) == set(expected.data_vars)
    assert "hessian_lambda_max" in written and written.sizes["sample"] == 6
    for name, var in expected.data_vars.items():
        np.testing.assert_allclose(written[name].values, var.values, rtol=1e-10, err_msg=name)
    assert written.attrs["factory"] == factory and written.attrs["dataset"] == "mnist1d"
    assert json.loads(written.attrs["data_options"]) == options


@pytest.fixture
def command(tmp_path, tiny_study, data_root, monkeypatch):
    """A `flatrep measure-model` call in this process with a working factory and weights:
    returns run(**replacements) -> (status, last stderr line)."""
    module = f"factory_{tmp_path.name}"
    monkeypatch.syspath_prepend(str(tmp_path))
    factory = write_factory(tmp_path, module)
    torch.save(importlib.import_module(module).build().state_dict(), tmp_path / "weights.pt")
    options = {key: value for key, value in tiny_study["data"].items() if key != "name"}
    arguments = {"--weights": str(tmp_path / "weights.pt"), "--factory": factory,
                 "--dataset": "mnist1d", "--data-options": json.dumps(options),
                 "--data-root": str(data_root), "--points": "4", "--out":
                 str(tmp_path / "out.nc")}

    def run(capsys, **replacements):
        argv = ["measure-model"]
        for key, value in {**arguments, **replacements}.items():
            argv += [key, value]
        status = cli.main(argv)
        err = capsys.readouterr().err
        assert "Traceback" not in err
        return status, err.strip().splitlines()[-1] if err.strip() else ""

    return run


def test_a_crafted_weights_file_is_refused_in_one_line_and_runs_nothing(tmp_path, command,
                                                                        capsys):
    marker = tmp_path / "created"
    torch.save({"weight": _CreatesAFile(marker)}, tmp_path / "crafted.pt")
    status, line = command(capsys, **{"--weights": str(tmp_path / "crafted.pt")})
    assert status == 2 and not marker.exists() and not (tmp_path / "out.nc").exists()
    assert line == (f"flatrep measure-model: error: weights file {tmp_path / 'crafted.pt'} "
                    "holds objects other than tensors and plain data, which flatrep refuses "
                    "to unpickle because that could run code; save the weights with "
                    "torch.save(model.state_dict(), path)")


@pytest.mark.parametrize("replace, fragment", [
    ({"--weights": "missing.pt"}, "weights file missing.pt does not exist"),
    ({"--factory": "no_such_module:build"},
     "factory 'no_such_module:build': cannot import 'no_such_module'"),
    ({"--factory": "flatrep.models:no_such_function"},
     "factory 'flatrep.models:no_such_function': module 'flatrep.models' has no"),
    ({"--factory": "flatrep.models"}, "write it as package.module:function"),
    ({"--dataset": "mnist2d"}, "unknown dataset 'mnist2d'"),
    ({"--data-options": "{num_samples: 4"}, "--data-options '{num_samples: 4' is not JSON"),
    ({"--points": "100000"}, "points = 100000: must be an integer in 1.."),
])
def test_bad_command_input_is_one_line(tmp_path, command, capsys, replace, fragment):
    status, line = command(capsys, **replace)
    assert status == 2 and line.startswith("flatrep measure-model: error: ")
    assert fragment in line and not (tmp_path / "out.nc").exists()


def test_weights_that_do_not_fit_are_one_line(tmp_path, command, capsys):
    torch.save(nn.Linear(40, 10).state_dict(), tmp_path / "other.pt")
    status, line = command(capsys, **{"--weights": str(tmp_path / "other.pt")})
    assert status == 2 and f"weights {tmp_path / 'other.pt'} do not fit the model" in line
    assert "Missing key(s) in state_dict" in line


def test_a_flatrep_checkpoint_serves_as_weights(tmp_path, monkeypatch, measured_tiny_run):
    """model_from_files reads a checkpoint's model through flatrep.checkpoint: the module the
    factory builds then holds the checkpoint's weights, in eval mode."""
    _, paths = measured_tiny_run
    (tmp_path / "tiny_factory.py").write_text(
        "from flatrep import models\n\n\ndef build():\n"
        "    return models.mlp((40,), 10, [16, 16])\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    model = any_model.model_from_files("tiny_factory:build", paths[-1])
    expected, _ = checkpoint.load(paths[-1])
    assert not model.training
    for key, value in expected.state_dict().items():
        assert torch.equal(model.state_dict()[key], value), key


def test_the_docs_example_runs_as_written(tmp_path, monkeypatch):
    """The page's Python block, unchanged, in a fresh folder: it measures and writes its file."""
    blocks = re.findall(r"^```python\n(.*?)^```", PAGE.read_text(), flags=re.M | re.S)
    assert len(blocks) == 1
    monkeypatch.chdir(tmp_path)
    namespace = {}
    exec(compile(blocks[0], str(PAGE), "exec"), namespace)
    ds = namespace["ds"]
    assert list(ds.subset.values) == list(measuring.SUBSETS) and ds.sizes["sample"] == 4
    assert np.isfinite(ds.mls.sel(subset="train")).all() and float(ds.hessian_trace) > 0
    assert netcdf.read(tmp_path / "squeezenet_measures.nc").mls.identical(ds.mls)
