"""The vmapped ensemble trainer against single runs (``flatrep.training.single.train_run``), on the
CPU and, where one is present, on a CUDA device (the ``gpu`` cases).

Each ensemble member must follow the trajectory of the same run trained alone: the same
minibatches (identical generator states), the same optimizer arithmetic, the same checkpoints.
Batched products may sum in another order than the single run's, so weights and optimizer
states are compared to rounding (after tens of steps: rtol 1e-5 in float32, 1e-10 in float64),
not bit for bit; the data-order and augmentation generator states must be identical.
"""

import copy

import pytest
import torch
from test_data_torchvision import fake_cifar

from flatrep import checkpoint
from flatrep.data import datasets
from flatrep.params import schedules, studies
from flatrep.training import ensemble, single

#: (rtol, atol) by dtype
TOLERANCE = {torch.float32: (1e-5, 1e-6), torch.float64: (1e-10, 1e-12)}
#: train.device values: the CPU always, CUDA where present (both sides of a comparison run there)
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)]


def _assert_close(actual, expected, **kwargs):
    rtol, atol = TOLERANCE[expected.dtype]
    torch.testing.assert_close(actual, expected, rtol=rtol, atol=atol, **kwargs)


def _study(tiny_study, **train_options):
    study = copy.deepcopy(tiny_study)
    study["model"] = {"name": "mlp", "hidden": [8, 8], "activation": "tanh"}
    study["train"].update(iterations=30, checkpoints=[0, 10, 25, 30], **train_options)
    return study


def _runs(grid: list[dict]) -> list[studies.Run]:
    return [studies.Run(studies.run_id(hp), hp) for hp in grid]


def assert_same_checkpoints(single: list, member: list):
    """Same files, metadata, generator states, weights and optimizer state. A diverged run's
    numbers are not compared: a learning rate large enough to diverge amplifies rounding
    differences without bound (its freezing is tested on its own)."""
    assert [p.name for p in single] == [p.name for p in member]
    for path_single, path_member in zip(single, member):
        a, b = checkpoint.read(path_single), checkpoint.read(path_member)
        assert a["meta"]["diverged_at"] == b["meta"]["diverged_at"]
        assert a["meta"]["averaged_iterates"] == b["meta"]["averaged_iterates"]
        if a["meta"]["diverged_at"] is not None:
            continue
        for stream in ("data_order", "augment"):
            assert torch.equal(a["rng"][stream], b["rng"][stream]), stream
        for part in ("model", "training_model"):
            assert (a[part] is None) == (b[part] is None)
            for name, value in (a[part] or {}).items():
                if value.is_floating_point():
                    _assert_close(b[part][name], value, msg=f"{path_member} {part}.{name}")
                else:
                    assert torch.equal(b[part][name], value), name
        state_a, state_b = a["optimizer"]["state"], b["optimizer"]["state"]
        assert state_a.keys() == state_b.keys()
        for index in state_a:
            for key, value in state_a[index].items():
                if value is None:
                    assert state_b[index][key] is None
                else:
                    _assert_close(state_b[index][key], value)


def _train_both(study, runs, data_root, tmp_path):
    members = ensemble.train_ensemble("tiny", study, runs, tmp_path / "ensemble", data_root, 1)
    by_run = {run.run_id: [p for p in members if p.parent.name == run.run_id] for run in runs}
    for run in runs:
        alone = single.train_run("tiny", study, run, tmp_path / "single" / run.run_id,
                                 data_root, 1)
        assert_same_checkpoints(alone, by_run[run.run_id])
    return by_run


@pytest.mark.parametrize("optimizer,grid", [
    ("sgd", [{"lr": 0.1, "momentum": 0.0, "weight_decay": 0.0, "seed": 0},
             {"lr": 0.2, "momentum": 0.9, "weight_decay": 5e-4, "seed": 1},
             {"lr": 0.05, "momentum": 0.5, "weight_decay": 0.0, "seed": 2}]),
    ("adam", [{"lr": 1e-3, "weight_decay": 0.0, "seed": 0},
              {"lr": 3e-3, "weight_decay": 5e-4, "seed": 1}]),
    ("adamw", [{"lr": 1e-3, "weight_decay": 5e-4, "seed": 0},
               {"lr": 2e-3, "weight_decay": 1e-2, "seed": 3}]),
])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("device", DEVICES)
def test_every_member_follows_its_single_run(tiny_study, data_root, tmp_path, optimizer, grid,
                                             dtype, device):
    """Members with their own seed, lr, momentum and weight decay match their single runs."""
    study = _study(tiny_study, optimizer=optimizer, batch_size=20, dtype=dtype, device=device)
    _train_both(study, _runs(grid), data_root, tmp_path)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_compiled_members_follow_their_single_runs(tiny_study, data_root, tmp_path, dtype,
                                                   monkeypatch):
    """``train.compile``: TorchInductor's kernels for the batched gradient keep every member
    on its eager single run."""
    study = _study(tiny_study, optimizer="sgd", batch_size=20, dtype=dtype, compile=True)
    grid = [{"lr": 0.1, "momentum": 0.9, "weight_decay": 5e-4, "seed": 0},
            {"lr": 0.2, "momentum": 0.0, "weight_decay": 0.0, "seed": 1},
            {"lr": 0.05, "momentum": 0.5, "weight_decay": 0.0, "seed": 2}]
    compiled = []
    monkeypatch.setattr(torch, "compile", lambda fn, real=torch.compile: compiled.append(fn)
                        or real(fn))
    _train_both(study, _runs(grid), data_root, tmp_path)
    assert len(compiled) == 1


@pytest.mark.parametrize("every, averaged, averaged_final", [(1, 16, None), (4, 4, 0.4)])
def test_members_with_averaging_and_a_decaying_rate_follow_their_single_runs(
        tiny_study, data_root, tmp_path, monkeypatch, every, averaged, averaged_final):
    """Steps 15..30 averaged, or 15..27 by 4; the rate decays to 0.1 by step 24, or to 0.4
    by the averaging start, step 15 (the schedule every update of both trainers used)."""
    used = []
    factor = schedules.factor
    monkeypatch.setattr(schedules, "factor",
                        lambda spec, *args: used.append((spec["end"], spec["final"]))
                        or factor(spec, *args))
    study = _study(tiny_study, optimizer="adamw", batch_size=20, averaging_start=0.5,
                   averaging_every=every,
                   lr_schedule={"name": "linear_decay", "hold": 0.3, "end": 0.8, "final": 0.1,
                                "averaged_final": averaged_final})
    by_run = _train_both(study, _runs([{"lr": 2e-3, "seed": 0, "weight_decay": 5e-4},
                                       {"lr": 1e-3, "seed": 1, "weight_decay": 0.0}]),
                         data_root, tmp_path)
    last = checkpoint.read(by_run["lr0.001_wd0.0_seed1"][-1])
    assert last["meta"]["averaged_iterates"] == averaged
    assert set(used) == ({(0.5, 0.4)} if averaged_final else {(0.8, 0.1)})
    assert len(used) == 30 * 3            # the ensemble's updates and both single runs'


def test_a_diverging_member_is_frozen_and_recorded_while_the_others_go_on(
        tiny_study, data_root, tmp_path):
    """lr 1e4 makes one member's loss overflow; it stops where its single run stops, and the
    other member is unaffected."""
    study = _study(tiny_study, optimizer="sgd", batch_size=20)
    study["model"]["activation"] = "relu"
    by_run = _train_both(study, _runs([{"lr": 0.1, "seed": 0}, {"lr": 1.0e4, "seed": 1}]),
                         data_root, tmp_path)
    diverged = checkpoint.read(by_run["lr10000.0_seed1"][-1])["meta"]["diverged_at"]
    healthy = checkpoint.read(by_run["lr0.1_seed0"][-1])["meta"]["diverged_at"]
    assert diverged is not None and 0 < diverged < 10 and healthy is None
    frozen = [checkpoint.read(path)["model"] for path in by_run["lr10000.0_seed1"][1:]]
    for weights in frozen[1:]:          # steps 10, 25, 30: the weights of the diverging step
        for name, value in weights.items():
            assert torch.equal(value, frozen[0][name]) and torch.isfinite(value).all()


def test_members_must_share_the_batch_size(tiny_study, data_root, tmp_path):
    study = _study(tiny_study)
    runs = _runs([{"lr": 0.1, "batch_size": 20, "seed": 0},
                  {"lr": 0.1, "batch_size": 8, "seed": 0}])
    with pytest.raises(ensemble.EnsembleError, match="batch_size"):
        ensemble.train_ensemble("tiny", study, runs, tmp_path, data_root, 1)


def test_ensemble_groups_follow_the_mode(tiny_study):
    """Grid {lr 0.1, 0.2} x bs 20 plus lr 0.1 x bs 8, seeds {0, 1} (params_tiny.yaml)."""
    study = copy.deepcopy(tiny_study)
    sizes = {}
    for mode in studies.ENSEMBLE_MODES:
        study["train"]["ensemble"] = mode
        groups = studies.ensemble_groups(study)
        assert sorted(r.run_id for g in groups.values() for r in g) == sorted(
            r.run_id for r in studies.expand_runs(study))
        sizes[mode] = {key: len(runs) for key, runs in groups.items()}
    assert set(sizes["none"].values()) == {1} and len(sizes["none"]) == 6
    assert sizes["seeds"] == {"lr0.1_bs20": 2, "lr0.2_bs20": 2, "lr0.1_bs8": 2}
    assert sizes["configs"] == {"bs20_optsgd_ia1.0": 4, "bs8_optsgd_ia1.0": 2}
    study["train"]["ensemble"] = "all"
    with pytest.raises(studies.ConfigError, match="train.ensemble"):
        studies.ensemble_groups(study)


def test_linear_decay_schedule_closed_form():
    spec = schedules.resolve({"name": "linear_decay", "hold": 0.5, "end": 0.9, "final": 0.01})
    values = [schedules.factor(spec, step, 100) for step in (0, 50, 70, 90, 99)]
    assert values == pytest.approx([1.0, 1.0, 1.0 - 0.99 * 0.2 / 0.4, 0.01, 0.01])
    assert schedules.factor(schedules.resolve(None), 7, 10) == 1.0
    with pytest.raises(schedules.ScheduleError, match="hold < end"):
        schedules.resolve({"name": "linear_decay", "hold": 0.9, "end": 0.5})


def test_averaging_runs_decay_to_their_averaged_rate_by_the_averaging_start():
    """Gadam's recipe: with averaged_final 0.5 a run averaging from 0.6 on decays linearly
    from 1 at hold 0.5 to 0.5 at 0.6 and stays there; a run without averaging keeps the
    decay to final 0.01 at end 0.9; averaging before hold is an error."""
    spec = schedules.resolve({"name": "linear_decay", "hold": 0.5, "end": 0.9, "final": 0.01,
                              "averaged_final": 0.5})
    averaged = schedules.for_run(spec, 0.6)
    values = [schedules.factor(averaged, step, 100) for step in (0, 50, 55, 60, 80, 99)]
    assert values == pytest.approx([1.0, 1.0, 0.75, 0.5, 0.5, 0.5])
    plain = schedules.for_run(spec, 1.0)
    assert [schedules.factor(plain, step, 100) for step in (50, 70, 99)] == pytest.approx(
        [1.0, 1.0 - 0.99 * 0.2 / 0.4, 0.01])
    assert schedules.for_run(schedules.resolve(None), 0.6) == {"name": "constant"}
    with pytest.raises(schedules.ScheduleError, match="averaging_start = 0.4 must come after"):
        schedules.for_run(spec, 0.4)


def _cifar_vgg_study(tmp_path) -> dict:
    """VGG-16-BN (width 1/16) on CIFAR-format images in ``tmp_path``, crop-and-flip, float64."""
    fake_cifar(tmp_path / "raw", "cifar10")
    datasets.prepare("cifar10", tmp_path / "data", root=str(tmp_path / "raw"))
    return {"data": {"name": "cifar10", "root": str(tmp_path / "raw"), "download": False,
                     "scale": "unit_interval"},
            "model": {"name": "vgg16_bn", "width": 0.0625},
            "train": {"optimizer": "sgd", "momentum": 0.9, "loss": "cross_entropy",
                      "batch_size": 4, "iterations": 6, "checkpoints": [0, 3, 6],
                      "augment": "crop_flip", "determinism": "strict", "device": "cpu",
                      "dtype": "float64", "grid": [], "seeds": []}}


@pytest.mark.parametrize("device", DEVICES)
def test_batchnorm_members_with_augmentation_follow_their_single_runs(tmp_path, device):
    """VGG-16-BN: the BatchNorm running statistics update inside vmap per member, and each
    member's augmentation stream is its single run's."""
    study = _cifar_vgg_study(tmp_path)
    study["train"]["device"] = device
    runs = _runs([{"lr": 0.05, "seed": 0}, {"lr": 0.02, "seed": 1}])
    members = ensemble.train_ensemble("tiny", study, runs, tmp_path / "ensemble",
                                      tmp_path / "data", 1)
    for run in runs:
        alone = single.train_run("tiny", study, run, tmp_path / "single" / run.run_id,
                                 tmp_path / "data", 1)
        assert_same_checkpoints(alone, [p for p in members if p.parent.name == run.run_id])
        final = checkpoint.read(alone[-1])["model"]
        assert not torch.equal(final["1.running_mean"],
                               torch.zeros_like(final["1.running_mean"]))


def test_members_with_dropout_are_refused_before_training(tmp_path):
    study = _cifar_vgg_study(tmp_path)
    study["model"]["dropout"] = 0.5
    runs = _runs([{"lr": 0.05, "seed": 0}, {"lr": 0.05, "seed": 1}])
    with pytest.raises(ensemble.EnsembleError, match="Dropout"):
        ensemble.train_ensemble("tiny", study, runs, tmp_path / "ensemble", tmp_path / "data", 1)
    assert not (tmp_path / "ensemble").exists()
