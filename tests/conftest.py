"""Shared fixtures: a tiny prepared MNIST-1D dataset and a tiny trained + measured run."""

import copy
from pathlib import Path

import pytest
import torch
import yaml

from flatrep import config, cube, data, measure, train

TINY_PARAMS = Path(__file__).parent / "params_tiny.yaml"


@pytest.fixture
def float64_default():
    """Build tensors and modules in float64 during a test, restoring the default after."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(previous)


@pytest.fixture(scope="session")
def tiny_study():
    """The tiny study of tests/params_tiny.yaml."""
    return yaml.safe_load(TINY_PARAMS.read_text())["studies"]["tiny"]


@pytest.fixture(scope="session")
def data_root(tmp_path_factory, tiny_study):
    root = tmp_path_factory.mktemp("data")
    options = {k: v for k, v in tiny_study["data"].items() if k != "name"}
    data.prepare("mnist1d", root, **options)
    return root


@pytest.fixture(scope="session")
def measured_run(tmp_path_factory, tiny_study, data_root):
    """(run dataset, checkpoint paths) of one trained and measured tiny run."""
    study = copy.deepcopy(tiny_study)
    run = config.expand_runs(study)[0]
    out = tmp_path_factory.mktemp("run")
    paths = train.train_run("tiny", study, run, out, data_root, threads=1)
    ds = cube.with_run_dim(measure.measure_run(paths, study["measure"], data_root), run)
    return ds, paths
