"""Grid expansion, schedules, semantic checks, data files and checkpoints."""

import copy

import jsonschema
import numpy as np
import pytest
import torch
import yaml

from flatrep import checkpoint
from flatrep.data import datasets
from flatrep.params import studies, validation


def test_paper_cross_expands_to_five_configs_times_seeds():
    params = studies.load_params("params.yaml")
    runs = studies.expand_runs(params["studies"]["quick"])
    configs = {(r.hparams["lr"], r.hparams["batch_size"]) for r in runs}
    assert configs == {(0.05, 20), (0.1, 20), (0.2, 20), (0.1, 8), (0.1, 32)}
    assert len(runs) == 5 * len(params["studies"]["quick"]["train"]["seeds"])
    assert "lr0.1_bs20_seed0" in {r.run_id for r in runs}
    assert len({r.run_id for r in runs}) == len(runs)


def test_checkpoint_schedule_includes_start_and_end():
    assert studies.checkpoint_steps({"iterations": 100, "checkpoints": {"count": 5}}) == [
        0, 25, 50, 75, 100]
    log = studies.checkpoint_steps({"iterations": 1000,
                                   "checkpoints": {"count": 4, "spacing": "log"}})
    assert log == [0, 1, 10, 100, 1000]
    assert studies.checkpoint_steps({"iterations": 50, "checkpoints": [10, 20]}) == [0, 10, 20, 50]


def test_semantic_errors_name_the_key(tiny_study):
    study = copy.deepcopy(tiny_study)
    study["train"]["checkpoints"] = [10, 5000]
    with pytest.raises(studies.ConfigError, match=r"studies\.tiny\.train\.checkpoints.*5000"):
        studies.check_study("tiny", study)
    study = copy.deepcopy(tiny_study)
    study["data"]["classes"] = [0, 12]
    with pytest.raises(studies.ConfigError, match=r"studies\.tiny\.data\.classes.*12"):
        studies.check_study("tiny", study, dataset_classes=10)


def test_float_formatting_in_run_ids():
    assert studies.run_id({"lr": 0.1, "batch_size": 20, "seed": 0}) == "lr0.1_bs20_seed0"
    assert studies.run_id({"seed": 2, "lr": 1e-05}) == "lr1e-05_seed2"
    assert studies.run_id({"lr": 0.1, "weight_decay": 0.0005, "seed": 1}) == "lr0.1_wd0.0005_seed1"


def test_data_load_subsets_classes_and_scales(data_root, tiny_study):
    options = {k: v for k, v in tiny_study["data"].items() if k not in ("name", "classes",
                                                                        "scale")}
    x, y = datasets.load("mnist1d", "train", data_root, **options)
    assert x.shape == (300, 40) and x.dtype == torch.float32 and y.dtype == torch.int64
    x2, y2 = datasets.load("mnist1d", "train", data_root, classes=[0, 1], scale="unit_interval",
                           **options)
    assert set(y2.tolist()) == {0, 1} and len(y2) == int(((y == 0) | (y == 1)).sum())
    assert x2.min() >= 0 and x2.max() <= 1


def test_missing_data_and_unknown_dataset_errors(tmp_path):
    with pytest.raises(datasets.DataError, match="missing.*prepare-data"):
        datasets.load("mnist1d", "train", tmp_path, num_samples=100)
    with pytest.raises(datasets.DataError, match="unknown dataset 'cifar7'"):
        datasets.load("cifar7", "train", tmp_path)


def test_checkpoint_round_trip_and_corruption(measured_tiny_run, tmp_path):
    _, paths = measured_tiny_run
    model, meta = checkpoint.load(paths[-1])
    assert not model.training
    assert {"study", "run", "step", "config", "hparams"} <= set(meta)
    assert meta["step"] == max(studies.checkpoint_steps(meta["config"]["train"]))
    corrupt = tmp_path / "step_9.pt"
    corrupt.write_bytes(paths[-1].read_bytes()[:100])
    with pytest.raises(checkpoint.CheckpointError, match="corrupt or truncated"):
        checkpoint.load(corrupt)
    with pytest.raises(checkpoint.CheckpointError, match="does not exist"):
        checkpoint.load(tmp_path / "nope.pt")


def test_a_diverging_run_is_recorded_not_fatal(tiny_study, data_root, tmp_path):
    from flatrep.cube import measuring
    from flatrep.training import single

    study = copy.deepcopy(tiny_study)
    run = studies.Run("lr1000.0_bs20_seed0", {"lr": 1000.0, "batch_size": 20, "seed": 0})
    paths = single.train_run("tiny", study, run, tmp_path, data_root, threads=1)
    assert [p.name for p in paths] == [f"step_{k}.pt" for k in
                                       studies.checkpoint_steps(study["train"])]
    metas = [checkpoint.read(p)["meta"] for p in paths]
    diverged_at = metas[-1]["diverged_at"]
    assert diverged_at is not None and 0 < diverged_at <= metas[-1]["step"]
    ds = measuring.measure_checkpoints(paths, study["measure"], data_root)
    flags = ds["diverged"].values
    assert flags[0] == 0 and flags[-1] == 1
    assert int(ds["diverged_at"]) == diverged_at
    assert np.isnan(ds["sharpness"].values[flags == 1]).all()
    assert np.isfinite(ds["sharpness"].values[flags == 0]).all()


SCHEMA = yaml.safe_load(open("workflow/schemas/params.schema.yaml"))


def schema_errors(params: dict) -> list[str]:
    validator = jsonschema.validators.validator_for(SCHEMA)(SCHEMA)
    return [error.message for error in validator.iter_errors(params)]


def test_schema_accepts_the_shipped_params_and_model_and_measure_variants():
    params = studies.load_params("params.yaml")
    assert schema_errors(params) == []
    assert schema_errors(studies.load_params("tests/params_tiny.yaml")) == []
    study = params["studies"]["quick"]
    study["model"] = {"name": "cnn", "channels": [8, 8], "kernel_size": 3}
    study["train"]["loss"] = "cross_entropy"
    study["measure"]["curvature"].update(lanczos=False, rank=True)
    assert schema_errors(params) == []
    study["model"] = {"name": "logreg"}
    study["train"].update(optimizer="adamw", averaging_start=0.5)
    study["train"]["grid"].append({"optimizer": ["sgd", "adamw"], "averaging_start": [1.0, 0.5]})
    assert schema_errors(params) == []


@pytest.mark.parametrize("curvature", [
    {"rank": {"point": 3}},
    {"spectral_density": {"bins": 2}},
    {"lanczos_steps": 12},
])
def test_schema_rejects_bad_measure_options(curvature):
    params = studies.load_params("params.yaml")
    params["studies"]["quick"]["measure"]["curvature"].update(curvature)
    assert schema_errors(params)


@pytest.mark.parametrize("model,message", [
    ({"name": "cnn", "hidden": [4]}, "unknown model.hidden for model.name 'cnn'"),
    ({"name": "mlp"}, "model.hidden is required for model.name 'mlp'"),
    ({"name": "mlp", "hidden": [4], "channels": [2]}, "unknown model.channels"),
    ({"name": "logreg", "hidden": [4]}, "unknown model.hidden for model.name 'logreg'"),
    ({"name": "vit", "patch": 4}, "allowed: .*'patch_size'"),
    ({"name": "resnet"}, "unknown model.name 'resnet'"),
])
def test_validation_rejects_model_options_the_builder_does_not_take(model, message):
    """The schema lists every model option; which option belongs to which model is read
    from the builder's signature (flatrep.models.check_options), before any job starts."""
    params = studies.load_params("params.yaml")
    params["studies"]["quick"]["model"] = model
    with pytest.raises(studies.ConfigError, match=f"studies.quick: .*{message}"):
        validation.check_studies(params["studies"])
