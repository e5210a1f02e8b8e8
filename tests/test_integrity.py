"""Files are written atomically and checked when read: cubes carry the sha256 of their
content, a truncated or altered file fails with an error naming it and how to rebuild it,
and a write that fails leaves neither a partial file nor a temporary one."""

import os

import netCDF4
import numpy as np
import pytest
import xarray as xr

from flatrep import atomic
from flatrep.cube import netcdf


def _dataset():
    return xr.Dataset({"sharpness": (("run", "step"), np.arange(6.0).reshape(2, 3)),
                       "optimizer": ("run", np.array(["sgd", "adamw"], dtype=object))},
                      coords={"run": ["a", "b"], "step": [0, 10, 20]}, attrs={"study": "s"})


def test_cube_round_trip_keeps_content_and_checks_its_digest(tmp_path):
    path = tmp_path / "cube.nc"
    netcdf.write(_dataset(), path)
    with netCDF4.Dataset(path) as handle:
        assert len(handle.getncattr(netcdf.DIGEST_ATTR)) == 64
    back = netcdf.read(path)
    xr.testing.assert_identical(back, _dataset())
    assert list(tmp_path.iterdir()) == [path]


def test_a_cube_altered_in_place_fails_its_digest(tmp_path):
    path = tmp_path / "cube.nc"
    netcdf.write(_dataset(), path)
    with netCDF4.Dataset(path, "a") as handle:
        handle["sharpness"][1, 2] = 99.0
    with pytest.raises(netcdf.CubeError, match="content_sha256") as caught:
        netcdf.read(path)
    assert str(path) in str(caught.value) and "snakemake --cores all" in str(caught.value)


def test_a_truncated_cube_fails_cleanly(tmp_path):
    path = tmp_path / "cube.nc"
    netcdf.write(_dataset(), path)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(netcdf.CubeError, match="truncated or corrupt") as caught:
        netcdf.read(path)
    assert str(path) in str(caught.value)


def test_a_failed_write_leaves_no_file(tmp_path):
    path = tmp_path / "summary.json"
    with pytest.raises(RuntimeError, match="disk full"):
        with atomic.destination(path) as tmp:
            tmp.write_text("{\"half\": ")
            raise RuntimeError("disk full")
    assert list(tmp_path.iterdir()) == []
    atomic.write_text(path, "{}\n")
    atomic.write_text(path, "{\"a\": 1}\n")
    assert path.read_text() == "{\"a\": 1}\n" and list(tmp_path.iterdir()) == [path]
    mask = os.umask(0o022)
    os.umask(mask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~mask   # not mkstemp's owner-only 0600


def test_an_unwritable_folder_is_named(tmp_path, monkeypatch):
    """The error names the folder and the fix (permissions are simulated: tests may run as
    root, whom a read-only folder does not stop)."""
    def refuse(**kwargs):
        raise PermissionError(13, "Permission denied", kwargs["dir"])

    monkeypatch.setattr(atomic.tempfile, "mkstemp", refuse)
    with pytest.raises(PermissionError, match="folder .*locked is not writable") as caught:
        atomic.write_text(tmp_path / "locked" / "x.json", "{}")
    assert "choose another results folder" in str(caught.value)


def test_the_command_line_reports_a_damaged_cube_in_one_line(tmp_path, capsys):
    from flatrep import cli

    path = tmp_path / "cube.nc"
    netcdf.write(_dataset(), path)
    path.write_bytes(path.read_bytes()[:200])
    assert cli.main(["bounds", str(path), "--out", str(tmp_path / "bounds.nc")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("flatrep bounds: error: ") and str(path) in err
    assert "Traceback" not in err and not (tmp_path / "bounds.nc").exists()


def test_a_checkpoint_whose_weights_do_not_fit_its_model_is_one_line(measured_tiny_run, data_root,
                                                                     tmp_path, capsys):
    """A checkpoint holding another model's weights (here: its config says 7-unit layers)
    fails to load with the file named, in the library and on the command line."""
    from flatrep import checkpoint, cli

    _, paths = measured_tiny_run
    model, meta = checkpoint.load(paths[-1])
    other = {**meta, "config": {**meta["config"],
                                "model": {**meta["config"]["model"], "hidden": [7, 7]}}}
    foreign = tmp_path / "step_300.pt"
    checkpoint.save(foreign, model, other)
    with pytest.raises(checkpoint.CheckpointError, match="does not fit the model"):
        checkpoint.load(foreign)
    measure_json = '{"points": 4, "point_seed": 0, "chunk_size": 4}'
    assert cli.main(["measure", "--checkpoints", str(foreign), "--measure-json", measure_json,
                     "--data-root", str(data_root), "--out", str(tmp_path / "measures.nc")]) == 2
    err = capsys.readouterr().err
    message = err.replace("\r", "\n").strip().splitlines()[-1]   # after tqdm's progress bar
    assert message.startswith("flatrep measure: error: checkpoint ") and str(foreign) in message
    assert "Traceback" not in err and not (tmp_path / "measures.nc").exists()
