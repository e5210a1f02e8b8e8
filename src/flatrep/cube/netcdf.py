"""NetCDF files: per-run measure files, the study cube, provenance attributes, atomic writes.

Files are written with the netcdf4 engine after loading into memory, to a temporary name and
then renamed (``flatrep.atomic``), so a killed job leaves no half-written file, and identical
data give identical content (no wall-clock values are stored). Each file carries the sha256 of
its content; ``read`` checks it, so a file altered or damaged after writing is detected.
"""

from __future__ import annotations

import hashlib
import json
import math
import subprocess
from importlib import metadata
from pathlib import Path

import netCDF4
import numpy as np
import xarray as xr

import flatrep
from flatrep import atomic, losses
from flatrep.params import studies

#: Global attribute holding ``content_digest`` of the file's content.
DIGEST_ATTR = "content_sha256"
#: Global attributes that may differ between the runs of a study: the code revision, the
#: training device (``provenance``) and the measure device
#: (``flatrep.cube.measuring.measure_checkpoints``). ``combine`` keeps the one value, or the JSON
#: list of the distinct values.
RUN_ATTRS = ("git_revision", "device", "measure_device")


class CubeError(RuntimeError):
    """A NetCDF file of the pipeline is truncated, corrupt or fails its digest."""


def git_revision() -> str:
    """``git describe --always --dirty`` of the working directory, or ``unknown``."""
    try:
        out = subprocess.run(["git", "describe", "--always", "--dirty", "--abbrev=12"],
                             capture_output=True, text=True, check=True, timeout=10)
        return out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def provenance(study_name: str, study: dict, device: str, determinism: str) -> dict:
    """Global attributes: the resolved config and the software that produced the numbers."""
    return {"Conventions": "CF-1.8", "title": f"flatrep study {study_name}",
            "study": study_name, "config": json.dumps(study, sort_keys=True),
            "flatrep_version": flatrep.__version__, "git_revision": git_revision(),
            "torch_version": metadata.version("torch"), "device": device,
            "determinism": determinism}


def with_run_dim(ds: xr.Dataset, run: studies.Run) -> xr.Dataset:
    """Add a length-1 ``run`` dim whose coordinates are the run's hyperparameters."""
    ds = ds.expand_dims(run=[run.run_id])
    return ds.assign_coords({key: ("run", [value]) for key, value in run.hparams.items()})


def measurement_attrs(num_outputs: int, input_shape: list[int], measure_cfg: dict,
                      loss_name: str = "mse") -> dict:
    """Conventions of the measures and the shapes they depend on, stored with every cube."""
    loss = losses.get(loss_name)
    conventions = {
        "mse": "measures use L = (1/2n) sum_i ||f(x_i) - y_i||^2 (H = (1/n) sum_i J_i^T J_i at "
               "interpolation); training used torch MSELoss (mean over n and K)",
        "cross_entropy": "measures and training use L = (1/n) sum_i CE(f(x_i), y_i); "
                         "Gauss-Newton G = (1/n) sum_i J_i^T (diag p_i - p_i p_i^T) J_i"}
    return {"num_outputs": int(num_outputs), "input_shape": json.dumps(list(input_shape)),
            "input_dim": int(math.prod(input_shape)),
            "loss": loss_name, "loss_convention": conventions[loss_name],
            "hessian_factor": loss.hessian_factor(num_outputs),
            "hessian_factor_definition": "Hessian of the training loss = hessian_factor * "
                                         "Hessian in the measure convention (2/K for mse)",
            "measure_points_per_subset": int(measure_cfg["points"]),
            "curvature": json.dumps(measure_cfg.get("curvature", {"enabled": False}),
                                    sort_keys=True),
            "curvature_definition": "hessian_* variables: loss over `points` training rows "
                                    "(all rows if null) drawn by flatrep.cube.measuring."
                                    "measurement_indices with the 'curvature' sub-seed of "
                                    "measure.point_seed; model in eval mode",
            "measure_dtype": "float64"}


def content_digest(ds: xr.Dataset) -> str:
    """sha256 over every variable's name, dims, dtype and values (strings as JSON), in name
    order: what a reader gets out of the file, independent of compression and layout."""
    digest = hashlib.sha256()
    for name in sorted(ds.variables):
        var = ds.variables[name]
        values = np.asarray(var.values)
        digest.update(json.dumps([name, list(var.dims), str(values.dtype)]).encode())
        digest.update(json.dumps(values.tolist()).encode() if values.dtype.kind in "OUS"
                      else np.ascontiguousarray(values).tobytes())
    return digest.hexdigest()


def write(ds: xr.Dataset, path: str | Path) -> None:
    """Write ``ds`` atomically as NETCDF4 (netcdf4 engine, zlib level 4), with the digest of
    its content as read back (``content_digest``) in the global attribute ``content_sha256``."""
    ds = ds.load()
    encoding = {name: {"zlib": True, "complevel": 4}
                for name, var in ds.data_vars.items() if var.dtype.kind in "fiu"}
    with atomic.destination(path, suffix=".nc.tmp") as tmp:
        ds.to_netcdf(tmp, engine="netcdf4", format="NETCDF4", encoding=encoding)
        digest = content_digest(xr.load_dataset(tmp, engine="netcdf4"))
        with netCDF4.Dataset(tmp, "a") as handle:
            handle.setncattr(DIGEST_ATTR, digest)


def read(path: str | Path) -> xr.Dataset:
    """Load a NetCDF file fully into memory (the file is closed afterwards), checking that it
    opens and that its content matches its ``content_sha256``; one clear error otherwise."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist; build it with "
                                f"`snakemake --cores all {path}`")
    fix = f"delete it and rebuild it with `snakemake --cores all {path}`"
    try:
        ds = xr.load_dataset(path, engine="netcdf4")
    except Exception as err:  # netCDF4/HDF5 raise OSError, RuntimeError, ... on damaged files
        raise CubeError(f"{path} is truncated or corrupt ({err}); {fix}") from err
    stored = ds.attrs.pop(DIGEST_ATTR, None)
    if stored is not None and stored != content_digest(ds):
        raise CubeError(f"{path} fails its content_sha256 check (altered or damaged after "
                        f"writing); {fix}")
    return ds


def combine(run_files: list[str | Path]) -> xr.Dataset:
    """Concatenate per-run measure files along ``run`` into the study cube.

    Attributes that disagree between runs are dropped, except ``RUN_ATTRS``: each is the
    runs' common value, or the sorted JSON list of their values (``unknown`` for a file
    without it).
    """
    runs = [read(path) for path in run_files]
    cube = xr.concat(runs, dim="run", data_vars="all", coords="different", compat="equals",
                     combine_attrs="drop_conflicts")
    # the first file's encoding (e.g. a <U3 width for optimizer='sgd') would truncate longer
    # strings of later runs ('adamw' -> 'ada') on write
    cube = cube.drop_encoding()
    for name in RUN_ATTRS:
        values = sorted({ds.attrs.get(name, "unknown") for ds in runs})
        cube.attrs[name] = values[0] if len(values) == 1 else json.dumps(values)
    return cube

