"""``measure.device`` (issue "Measures on GPU batch over points and probes"): the device the
per-checkpoint measures run on. ``flatrep.cube.measuring.measure_checkpoints`` picks it (``auto``:
CUDA when present) and records it as the ``measure_device`` attribute, which the study cube keeps;
the random probes are drawn on the CPU, so a GPU gives the CPU values up to rounding. Also: the
compiled HVP method gives the eager values up to rounding."""

import copy
import json

import numpy as np
import pytest
import torch
import xarray as xr
import yaml
from conftest import TINY_PARAMS

from flatrep.cube import measuring, netcdf
from flatrep.params import studies, validation
from flatrep.training import single


@pytest.fixture(scope="module")
def short_run(tmp_path_factory, tiny_study, data_root):
    """(checkpoint paths, measure section) of the tiny run trained for 20 steps, checkpointed
    once; its measure section has curvature on with every family of params_tiny.yaml."""
    study = copy.deepcopy(tiny_study)
    study["train"].update(iterations=20, checkpoints=[20])
    run = studies.expand_runs(study)[0]
    paths = single.train_run("tiny", study, run, tmp_path_factory.mktemp("short"), data_root,
                             threads=1)
    return paths, study["measure"]


@pytest.fixture(scope="module")
def measured_on_cpu(short_run, data_root):
    """The run's measures file content with ``measure.device: cpu``."""
    paths, measure_cfg = short_run
    return measuring.measures_file(paths, {**measure_cfg, "device": "cpu"}, data_root, threads=1)


def without_attrs(ds: xr.Dataset) -> xr.Dataset:
    """``ds`` without its global attributes (the variables keep theirs)."""
    ds = ds.copy()
    ds.attrs = {}
    return ds


def test_cpu_gives_the_default_values_and_is_recorded(short_run, data_root, measured_on_cpu,
                                                      monkeypatch):
    """Without CUDA, the default (no ``device`` key: ``auto``) is the CPU: ``cpu`` gives
    bit-identical values, and the file records the device and the setting."""
    paths, measure_cfg = short_run
    assert "device" not in measure_cfg
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)   # auto = CPU anywhere
    default = measuring.measures_file(paths, measure_cfg, data_root, threads=1)
    xr.testing.assert_identical(without_attrs(measured_on_cpu), without_attrs(default))
    for ds in (measured_on_cpu, default):
        assert ds.attrs["measure_device"].startswith("cpu")
    assert json.loads(measured_on_cpu.attrs["config"])["measure"]["device"] == "cpu"


def test_the_cube_keeps_the_measure_device_of_its_runs(measured_on_cpu, tmp_path):
    """A common value is kept as it is; runs measured on different devices give the JSON list
    of their devices (not a dropped attribute), as the code revision does."""
    gpu = "cuda:0 (NVIDIA H100 80GB HBM3)"
    files = []
    for run_id, device in (("a", "cpu"), ("b", "cpu"), ("c", gpu)):
        path = tmp_path / f"{run_id}.nc"
        netcdf.write(measured_on_cpu.assign_coords(run=[run_id]).assign_attrs(
            measure_device=device), path)
        files.append(path)
    same = netcdf.combine(files[:2])
    assert same.attrs["measure_device"] == "cpu" and same.attrs["device"] == "cpu"
    mixed = netcdf.combine(files)
    assert json.loads(mixed.attrs["measure_device"]) == ["cpu", gpu]
    assert mixed.attrs["device"] == "cpu"


@pytest.mark.parametrize("value", ["auto", "cpu", "cuda", "cuda:1"])
def test_the_allowed_devices_pass_validation(value):
    params = yaml.safe_load(TINY_PARAMS.read_text())
    params["studies"]["tiny"]["measure"]["device"] = value
    validation.check_params(params)


def test_an_unknown_device_is_one_line_naming_the_allowed_values():
    params = yaml.safe_load(TINY_PARAMS.read_text())
    params["studies"]["tiny"]["measure"]["device"] = "gpu"
    with pytest.raises(studies.ConfigError) as raised:
        validation.check_params(params)
    message = str(raised.value)
    assert "\n" not in message
    assert message == ("studies.tiny.measure.device = 'gpu': must be a string matching "
                       "^(auto|cpu|cuda(:[0-9]+)?)$")


def assert_agree(actual: np.ndarray, expected: np.ndarray, name: str) -> None:
    """Equal NaN (and infinity) patterns; the rest to rtol 1e-8, with an absolute floor of
    1e-8 times the variable's largest finite magnitude for entries at round-off level
    (near-zero Ritz values and densities), whose relative error means nothing."""
    np.testing.assert_array_equal(np.isnan(actual), np.isnan(expected), err_msg=name)
    finite = np.abs(expected[np.isfinite(expected)])
    floor = 1e-8 * finite.max() if finite.size else 0.0
    np.testing.assert_allclose(actual, expected, rtol=1e-8, atol=floor, err_msg=name)


@pytest.mark.gpu
def test_cuda_gives_the_cpu_values_up_to_rounding(short_run, data_root, measured_on_cpu):
    """Every variable (curvature on, every family of params_tiny.yaml) agrees between
    ``cuda`` and ``cpu`` in float64: the same points, the same probes (drawn on the CPU)."""
    paths, measure_cfg = short_run
    on_cuda = measuring.measures_file(paths, {**measure_cfg, "device": "cuda"}, data_root,
                                      threads=1)
    assert on_cuda.attrs["measure_device"].startswith("cuda")
    assert set(on_cuda.data_vars) == set(measured_on_cpu.data_vars)
    for name, var in measured_on_cpu.data_vars.items():
        assert_agree(on_cuda[name].values, var.values, name)


def test_compiled_hvps_give_the_eager_values_up_to_rounding(short_run, data_root,
                                                            measured_on_cpu):
    """``measure.curvature.hvp: forward_over_reverse_compiled`` (TorchInductor kernels for
    every HVP chunk, of the whole parameter vector and of the layer and rank subsets) gives
    every variable of the eager forward-over-reverse measure, to rounding."""
    paths, measure_cfg = short_run
    cfg = copy.deepcopy({**measure_cfg, "device": "cpu"})
    cfg["curvature"]["hvp"] = "forward_over_reverse_compiled"
    compiled = measuring.measures_file(paths, cfg, data_root, threads=1)
    assert set(compiled.data_vars) == set(measured_on_cpu.data_vars)
    for name, var in measured_on_cpu.data_vars.items():
        assert_agree(compiled[name].values, var.values, name)
