"""Optimisers, iterate averaging and BatchNorm re-estimation, against independent computations."""

import copy

import pytest
import torch
from torch import nn

from flatrep import checkpoint
from flatrep.params import studies
from flatrep.training import averaging, optimizers, single


def _study(tiny_study, **train_options):
    study = copy.deepcopy(tiny_study)
    study["model"] = {"name": "mlp", "hidden": [8], "activation": "tanh"}
    study["train"].update(iterations=12, checkpoints=list(range(13)), **train_options)
    return study


def _weights(path):
    return checkpoint.read(path)["model"]


@pytest.mark.parametrize("optimizer,lr,every", [("sgd", 0.1, 1), ("adamw", 1e-3, 1),
                                                ("sgd", 0.1, 4)])
def test_averaged_checkpoint_is_the_mean_of_the_raw_iterates(tiny_study, data_root, tmp_path,
                                                             optimizer, lr, every):
    """Averaging from t0 = 6 of 12 steps, every ``every`` steps: the checkpoint at step t
    holds the mean of the raw iterates 6, 6 + every, ... <= t of the same run trained without
    averaging (same seed, same batches), and the raw iterate beside it whenever the two
    differ (at step 7 with every = 4 the mean is theta_6 alone); averaging never changes the
    trajectory."""
    hparams = {"lr": lr, "batch_size": 20, "seed": 0, "optimizer": optimizer,
               "weight_decay": 5e-4}
    raw_paths = single.train_run("t", _study(tiny_study), studies.Run("raw", hparams),
                                 tmp_path / "raw", data_root, threads=1)
    averaged_paths = single.train_run(
        "t", _study(tiny_study, averaging_every=every),
        studies.Run("ia", {**hparams, "averaging_start": 0.5}), tmp_path / "ia", data_root,
        threads=1)
    raw = [_weights(p) for p in raw_paths]
    for step in (5, 6, 7, 9, 12):
        payload = checkpoint.read(averaged_paths[step])
        averaged = range(6, step + 1, every)
        assert payload["meta"]["averaged_iterates"] == len(averaged)
        for name, value in payload["model"].items():
            expected = (torch.stack([raw[s][name].double() for s in averaged]).mean(0)
                        if averaged else raw[step][name].double())
            torch.testing.assert_close(value.double(), expected, rtol=0, atol=1e-6)
        if list(averaged) in ([], [step]):
            assert payload["training_model"] is None
        else:
            for name, value in payload["training_model"].items():
                assert torch.equal(value, raw[step][name])
    assert checkpoint.load(averaged_paths[-1])[1]["averaged_iterates"] == len(range(6, 13, every))


def test_adam_and_adamw_differ_only_by_how_decay_enters():
    """Without decay Adam and AdamW take identical steps; with decay they differ (coupled vs
    decoupled), and AdamW's step equals Adam's minus lr * wd * theta."""
    torch.manual_seed(0)
    base = nn.Linear(3, 2).double()
    x, y = torch.randn(5, 3, dtype=torch.float64), torch.randn(5, 2, dtype=torch.float64)

    def one_step(name, decay):
        model = copy.deepcopy(base)
        optimizer = optimizers.make_optimizer(name, model.parameters(), 0.01, 0.0, decay)
        nn.functional.mse_loss(model(x), y).backward()
        optimizer.step()
        return torch.cat([p.detach().reshape(-1) for p in model.parameters()])

    theta = torch.cat([p.detach().reshape(-1) for p in base.parameters()])
    torch.testing.assert_close(one_step("adam", 0.0), one_step("adamw", 0.0))
    torch.testing.assert_close(one_step("adamw", 0.1), one_step("adam", 0.0) - 0.01 * 0.1 * theta)
    assert not torch.allclose(one_step("adam", 0.1), one_step("adamw", 0.1))
    with pytest.raises(studies.ConfigError, match="train.optimizer 'lbfgs'"):
        optimizers.make_optimizer("lbfgs", base.parameters(), 0.1, 0.0, 0.0)


def test_batchnorm_statistics_are_recomputed_for_the_averaged_weights():
    """After re-estimation the running mean is the mean of the batch means (= the data mean
    for equal batches) and the running variance the mean of the unbiased batch variances."""
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.ReLU()).double().eval()
    x = torch.randn(12, 3, dtype=torch.float64)
    model[1].running_mean.fill_(7.0)
    averaging.recompute_batchnorm(model, x, batch_size=4)
    h = model[0](x).detach()
    torch.testing.assert_close(model[1].running_mean, h.mean(0))
    batch_vars = torch.stack([h[i:i + 4].var(0, unbiased=True) for i in range(0, 12, 4)])
    torch.testing.assert_close(model[1].running_var, batch_vars.mean(0))
    assert model[1].momentum == 0.1 and not model.training


def test_averaging_start_outside_the_unit_interval_is_rejected():
    assert averaging.start_step(1.0, 50) == 50 and averaging.start_step(0.5, 5) == 2
    with pytest.raises(ValueError, match="averaging_start"):
        averaging.start_step(1.5, 10)


def test_string_hyperparameters_survive_the_study_cube(measured_tiny_run, tmp_path):
    """Runs with optimizer 'sgd' then 'adamw': the combined cube keeps the full strings."""
    from flatrep.cube import netcdf

    ds, _ = measured_tiny_run
    paths = []
    for name, optimizer in (("a", "sgd"), ("b", "adamw")):
        one = ds.assign_coords(run=[name], optimizer=("run", [optimizer]))
        netcdf.write(one, tmp_path / f"{name}.nc")
        paths.append(tmp_path / f"{name}.nc")
    netcdf.write(netcdf.combine(paths), tmp_path / "cube.nc")
    assert list(netcdf.read(tmp_path / "cube.nc")["optimizer"].values) == ["sgd", "adamw"]
