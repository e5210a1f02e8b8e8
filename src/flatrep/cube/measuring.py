"""Measure every checkpoint of one run into an xarray Dataset (dims step, subset, sample, layer,
moment).

Measures are computed in float64 on a fixed, seeded set of training and test points that is
the same for every run of a study (so ``sample_index`` has no run dimension). The subset
``test_misclassified`` holds, at each checkpoint, up to ``measure.points`` test points that
checkpoint misclassifies: the first ones in a seeded permutation of the whole test split (Chen
et al.'s ``--hard_sample``), their rows in ``misclassified_index`` (NaN past their number).

They run on the device ``measure_checkpoints`` picks from ``measure.device`` (``auto``: CUDA when
present, as ``train.device``), recorded in the ``measure_device`` attribute. Random probes are
drawn on the CPU from seeded CPU generators and moved to that device, so a GPU gives the CPU
values up to floating-point rounding.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import xarray as xr
from torch import nn
from tqdm import tqdm

from flatrep import checkpoint, determinism, losses
from flatrep.cube import netcdf, variables
from flatrep.data import datasets
from flatrep.measures import invariant, jacobian, layers, suite
from flatrep.params import studies

SUBSETS = ("train", "test", "test_misclassified")
SUBSET_ATTRS = {"long_name": "set of measurement points",
                "definition": "train, test: the measure.points rows of that split "
                              "(sample_index); test_misclassified: up to measure.points test "
                              "rows the checkpoint misclassifies, the first in a seeded "
                              "permutation of the test split (misclassified_index; sample_index "
                              "-1), NaN past their number"}
#: Default orders k of Ma & Ying's moments g_x(k), g_W(k) (``measure.moments``).
MOMENTS = (1, 2)


def curvature_config(measure_cfg: dict) -> dict:
    """The ``measure.curvature`` section; curvature is off when the section is absent."""
    return measure_cfg.get("curvature", {"enabled": False})


def measurement_indices(n_available: int, n_points: int, seed: int,
                        key: str = "measure.points") -> np.ndarray:
    """The rows measured: the first ``n_points`` of a seeded permutation, in ascending order;
    more than ``n_available`` is an error naming the params ``key``."""
    if n_points > n_available:
        raise ValueError(f"{key} = {n_points} exceeds the {n_available} samples of the split")
    rng = np.random.default_rng(seed)
    return np.sort(rng.permutation(n_available)[:n_points])


def measured_subsets(points: dict) -> tuple[str, ...]:
    """The subsets measured: all of ``SUBSETS`` when ``points`` has test rows, else ``train``
    alone (``flatrep.measure`` given no test split)."""
    return SUBSETS if "test" in points else SUBSETS[:1]


def measurement_points(sizes: dict[str, int], measure_cfg: dict) -> dict[str, np.ndarray]:
    """The rows measured in splits of ``sizes`` ({split: rows}, ``train`` and optionally
    ``test``): ``measure.points`` seeded rows of each split (``measurement_indices``, seed
    ``sub_seed(point_seed, "measure_points") + i`` for the i-th split), ``test_order`` (the
    seeded permutation of the test rows the misclassified points are taken from) and, with
    curvature on, the ``curvature`` training rows (all rows when ``curvature.points`` is null)."""
    seed = measure_cfg["point_seed"]
    points = {split: measurement_indices(sizes[split], measure_cfg["points"],
                                         determinism.sub_seed(seed, "measure_points") + i)
              for i, split in enumerate(("train", "test")) if split in sizes}
    if "test" in sizes:
        points["test_order"] = np.random.default_rng(
            determinism.sub_seed(seed, "misclassified_points")).permutation(sizes["test"])
    curvature_cfg = curvature_config(measure_cfg)
    if curvature_cfg["enabled"]:
        n_train = sizes["train"]
        points["curvature"] = measurement_indices(
            n_train, curvature_cfg.get("points") or n_train,
            determinism.sub_seed(seed, "curvature"), "measure.curvature.points")
    return points


def loss_targets(loss: losses.Loss, y: torch.Tensor, num_outputs: int,
                 dtype: torch.dtype) -> torch.Tensor:
    """What ``loss`` takes for the targets y of a split: class labels (n,) through
    ``loss.targets`` (one-hot for mse), float targets (n, K) (one-hot, soft labels) as they
    are, in ``dtype``."""
    return y.to(dtype) if y.is_floating_point() else loss.targets(y, num_outputs, dtype)


def labels(y: torch.Tensor) -> torch.Tensor:
    """The class of each sample: the labels themselves, or argmax_k y_k of float targets."""
    return y.argmax(1) if y.is_floating_point() else y


@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, num_outputs: int,
             loss: losses.Loss):
    """(training loss in the training convention, accuracy, boolean mask of the samples
    misclassified) on a full split, eval mode; y labels or float targets (``loss_targets``),
    a sample misclassified where argmax_k f_k(x) is not its class (``labels``)."""
    out = model(x)
    value = loss.training(out, loss_targets(loss, y, num_outputs, out.dtype))
    right = out.argmax(1) == labels(y)
    return value.item(), right.double().mean().item(), (~right).cpu().numpy()


def misclassified_rows(wrong: np.ndarray, order: np.ndarray, n_points: int) -> np.ndarray:
    """The first ``n_points`` rows of the permutation ``order`` where ``wrong`` is true (all of
    them if fewer), ascending."""
    return np.sort(order[wrong[order]][:n_points])


def _padded(value: np.ndarray, n_points: int) -> np.ndarray:
    """Per-sample values of fewer than ``n_points`` samples, NaN-padded along the sample axis
    (the first)."""
    return np.concatenate([value, np.full((n_points - len(value),) + value.shape[1:], np.nan)])


def point_measures(model: nn.Module, x: torch.Tensor, chunk_size: int,
                   moments: tuple[int, ...],
                   max_bytes: int = studies.MEASURE_MEMORY_MB << 20) -> dict[str, np.ndarray]:
    """All per-sample measures at points x (float64 model and inputs). The input and layer
    Jacobians of a piece of the points and the parameter Jacobian of one of its chunks
    (``jacobian.per_sample_jacobians``) are held at once, so each gets half of ``max_bytes``:
    pieces of at most (max_bytes / 2) // ``jacobian.input_jacobian_bytes`` points (and
    ``chunk_size``), at least one, since every measure is a sample's own (VGG-16-BN's 100
    points on CIFAR-100 would hold 14 GiB).

    log NVR = log sum_l LVR_l = logsumexp_l log LVR_l, -inf where every layer's is -inf (each
    layer's is -inf at a deficient numerical rank, ``jacobian.log_volume``); its pseudo form
    sums the layers' pseudo-volumes (``jacobian.log_pseudo_volume``).
    """
    pieces = [_piece_measures(model, part, chunk_size, moments, max_bytes // 2)
              for part in x.split(points_per_piece(model, x, chunk_size, max_bytes))]
    return {key: np.concatenate([values[key] for values in pieces]) for key in pieces[0]}


def points_per_piece(model: nn.Module, x: torch.Tensor, chunk_size: int, max_bytes: int) -> int:
    """Points of one piece of ``point_measures``: their input and layer Jacobians within half
    of ``max_bytes``, at most ``chunk_size``, at least one."""
    return max(1, min(chunk_size, max_bytes // 2 // jacobian.input_jacobian_bytes(model, x)))


def _piece_measures(model: nn.Module, x: torch.Tensor, chunk_size: int,
                    moments: tuple[int, ...], max_bytes: int) -> dict[str, np.ndarray]:
    """``point_measures`` of the points x, all Jacobians at once."""
    jac = jacobian.per_sample_jacobians(model, x, chunk_size, moments=moments,
                                        max_bytes=max_bytes, grams=())
    result = jacobian.input_jacobian_measures(jac["input"])
    result.update(jacobian.layer_measures(jac["layer"]))
    result["nmls"] = result["layer_mls"].sum(1)
    result["log_nvr"] = torch.logsumexp(result["layer_log_lvr"], dim=1)
    result["log_nvr_pseudo"] = torch.logsumexp(result["layer_log_lvr_pseudo"], dim=1)
    result["input_grad_moment"] = jacobian.moments_of(jac["input"], moments)
    result["param_grad_moment"] = jac["param_moments"]
    result["sample_sharpness"] = jac["param_sq"]
    result["weight_grad_norm"] = jac["weight_grad_norm"]
    result["layer_input_norm"] = jac["layer_input_norm"]
    result["input_norm"] = x.reshape(len(x), -1).norm(dim=1)
    result["iimls"] = invariant.iimls(jac["input"], x)
    result["normalized_mls"] = invariant.normalized_mls(result["mls"], x)
    return {key: value.cpu().numpy() for key, value in result.items()}


def measure_checkpoint(model: nn.Module, splits: dict, points: dict, num_outputs: int,
                       measure_cfg: dict, loss: losses.Loss) -> dict[str, np.ndarray]:
    """Every measure of one checkpoint, as arrays shaped like the catalogue's dims.

    Computed on the device of ``splits`` (float64 tensors; the model is moved there in
    float64); ``points`` are numpy row indices of the splits (``train``, ``test``,
    ``curvature``) and ``test_order``, the permutation of the test rows that the misclassified
    points are taken from in order (``measurement_points``). Without a ``test`` split only
    the ``train`` subset is measured (``measured_subsets``), and the test and gap variables
    are absent.
    """
    chunk_size = measure_cfg["chunk_size"]
    moments = tuple(measure_cfg.get("moments", MOMENTS))
    max_bytes = studies.measure_memory_bytes(measure_cfg)
    device = splits["train"][0].device
    model = model.double().to(device)
    rows = {key: torch.as_tensor(points[key], device=device)
            for key in ("train", "test", "curvature") if key in points}
    values: dict[str, np.ndarray] = {}
    wrong = {}
    for split, (x, y) in splits.items():
        values[f"{split}_loss"], values[f"{split}_acc"], wrong[split] = evaluate(
            model, x, y, num_outputs, loss)
    per_subset = {subset: point_measures(model, splits[subset][0][rows[subset]], chunk_size,
                                         moments, max_bytes)
                  for subset in ("train", "test") if subset in splits}
    if "test" in splits:
        n_points = len(points["test"])
        hard = misclassified_rows(wrong["test"], points["test_order"], n_points)
        measured = (point_measures(model,
                                   splits["test"][0][torch.as_tensor(hard, device=device)],
                                   chunk_size, moments, max_bytes) if len(hard)
                    else {key: value[:0] for key, value in per_subset["test"].items()})
        per_subset["test_misclassified"] = {key: _padded(value, n_points)
                                            for key, value in measured.items()}
        values["misclassified_index"] = _padded(hard.astype(np.float64), n_points)
        values["generalization_gap"] = values["train_acc"] - values["test_acc"]
        values["generalization_loss_gap"] = values["test_loss"] - values["train_loss"]
    for key in per_subset["train"]:
        values[key] = np.stack([per_subset[subset][key] for subset in measured_subsets(points)])
    values["sharpness"] = per_subset["train"]["sample_sharpness"].mean()
    values["param_norm"] = torch.cat([p.detach().reshape(-1)
                                      for p in model.parameters()]).norm().item()
    curvature_cfg = curvature_config(measure_cfg)
    if curvature_cfg["enabled"]:
        x, y = splits["train"][0][rows["curvature"]], splits["train"][1][rows["curvature"]]
        seed = determinism.sub_seed(measure_cfg["point_seed"], "curvature")
        values.update(suite.measure(model, x, loss_targets(loss, y, num_outputs, x.dtype), loss,
                                    curvature_cfg, seed, max_bytes))
    norms = layers.weight_norms(model, splits["train"][0][:1])
    values["weight_spectral_norm"] = norms["spectral"].cpu().numpy()
    values["weight_fro_norm"] = norms["frobenius"].cpu().numpy()
    values["weight_norm_reference"] = norms["reference"].cpu().numpy()
    return values


def nan_like(values: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The same shapes filled with NaN (a diverged checkpoint is recorded, not measured)."""
    return {key: np.full(np.shape(value), np.nan) for key, value in values.items()}


def measure_checkpoints(checkpoint_paths: list[str | Path], measure_cfg: dict,
                        data_root: str | Path = "data", threads: int | None = None) -> xr.Dataset:
    """Measure every checkpoint of one run; returns the run's Dataset (no ``run`` dim yet).

    ``measure_cfg`` is the study's ``measure`` section (``points``, ``point_seed``,
    ``chunk_size``, ``device``). The device is chosen here (``determinism.pick_device`` of
    ``measure.device``, default ``auto``), the splits are moved to it in float64 and each
    checkpoint's model in ``measure_checkpoint``; the attribute ``measure_device`` records it
    (``device_label``).
    """
    determinism.configure(strict=True, threads=threads)
    device = determinism.pick_device(measure_cfg.get("device", "auto"))
    metas, rows = [], []
    first_meta = checkpoint.read(checkpoint_paths[0])["meta"]
    # The last checkpoint knows whether and when the run diverged; earlier files may not.
    diverged_at = checkpoint.read(checkpoint_paths[-1])["meta"]["diverged_at"]
    study = first_meta["config"]
    num_outputs = first_meta["num_outputs"]
    loss = losses.get(study["train"].get("loss", "mse"))
    splits = {split: tuple((t.double() if t.is_floating_point() else t).to(device)
                           for t in datasets.load_study_split(study["data"], split, data_root))
              for split in ("train", "test")}
    points = measurement_points({split: len(y) for split, (_, y) in splits.items()},
                                measure_cfg)
    template = None
    for path in tqdm(checkpoint_paths, desc="measure", mininterval=10, leave=False):
        model, meta = checkpoint.load(path)
        metas.append({**meta, "diverged_at": diverged_at})
        diverged = diverged_at is not None and diverged_at <= meta["step"]
        if template is None or not diverged:
            template = measure_checkpoint(model, splits, points, num_outputs, measure_cfg,
                                          loss)
        rows.append(nan_like(template) if diverged else template)
    dataset = run_dataset(metas, rows, points, layers.measured_layers(model),
                          tuple(measure_cfg.get("moments", MOMENTS)),
                          suite.coords(curvature_config(measure_cfg)))
    dataset.attrs["train_size"] = len(splits["train"][1])
    dataset.attrs["measure_device"] = device_label(device)
    return dataset


def device_label(device: torch.device) -> str:
    """``cpu``, or ``cuda:<index> (<GPU name>)`` for a CUDA device: the ``measure_device``
    attribute (the GPU model matters, as rounding differs between GPUs)."""
    if device.type != "cuda":
        return str(device)
    index = device.index if device.index is not None else torch.cuda.current_device()
    return f"cuda:{index} ({torch.cuda.get_device_name(index)})"


def checkpoints_by_run(checkpoints: list[str | Path],
                       outs: list[str | Path]) -> dict[Path, list[Path]]:
    """{measures file: its run's checkpoints in step order}. Each of ``outs`` takes the
    checkpoints in its own folder (a run's folder, ``results/<study>/runs/<run>/``);
    ConfigError naming a checkpoint outside every such folder, or a folder without one."""
    folders = {Path(out).parent: Path(out) for out in outs}
    runs: dict[Path, list[Path]] = {out: [] for out in folders.values()}
    for path in map(Path, checkpoints):
        if path.parent not in folders:
            raise studies.ConfigError(f"checkpoint {path} is in none of the folders of the "
                                      "measures files (--out): give each run's measures.nc in "
                                      "the folder of its checkpoints")
        runs[folders[path.parent]].append(path)
    for out, paths in runs.items():
        if not paths:
            raise studies.ConfigError(f"no checkpoint given in the folder of {out}: list its "
                                      "run's checkpoints after --checkpoints")
    return {out: sorted(paths, key=lambda p: int(p.stem.split("_")[1]))
            for out, paths in runs.items()}


def measures_file(checkpoint_paths: list[str | Path], measure_cfg: dict,
                  data_root: str | Path = "data", threads: int | None = None) -> xr.Dataset:
    """The content of a run's ``measures.nc``: ``measure_checkpoints`` with the run dim,
    provenance and measurement conventions attached."""
    ds = measure_checkpoints(checkpoint_paths, measure_cfg, data_root, threads)
    meta = checkpoint.read(checkpoint_paths[-1])["meta"]
    ds = netcdf.with_run_dim(ds, studies.Run(meta["run"], meta["hparams"]))
    ds.attrs.update(netcdf.provenance(meta["study"], {**meta["config"], "measure": measure_cfg},
                                      meta["device"], meta["determinism"]))
    loss = meta["config"]["train"].get("loss", "mse")
    ds.attrs.update(netcdf.measurement_attrs(meta["num_outputs"], meta["input_shape"],
                                             measure_cfg, loss))
    return ds


def run_dataset(metas: list[dict], rows: list[dict], points: dict,
                measured_layers: list[tuple[str, nn.Module]], moments: tuple[int, ...],
                extra_coords: dict | None = None) -> xr.Dataset:
    """Assemble per-checkpoint measures into one Dataset with catalogue attributes.

    ``points``: the rows measured (``measurement_points``), which fix the subsets
    (``measured_subsets``) and ``sample_index``.
    ``measured_layers``: (name, module) of the Linear/Conv layers (``layers.measured_layers``).
    ``extra_coords``: coordinates of the dims only some measures have (``suite.coords``).
    """
    steps = [meta["step"] for meta in metas]
    data_vars = {}
    for name, var in variables.CATALOG.items():
        if name == "diverged" or name not in rows[0]:
            continue
        stacked = np.stack([np.asarray(row[name], dtype=np.float64) for row in rows])
        data_vars[name] = (("step",) + var.dims, stacked, variables.attributes(name))
    diverged_at = metas[-1]["diverged_at"]
    data_vars["diverged"] = (("step",), np.array(
        [diverged_at is not None and diverged_at <= step for step in steps], dtype=np.int8),
        variables.attributes("diverged"))
    data_vars["diverged_at"] = ((), np.int64(-1 if diverged_at is None else diverged_at),
                                variables.attributes("diverged_at"))
    sample_index = np.stack([points["train"], points["test"], np.full_like(points["test"], -1)]
                            if "test" in points else [points["train"]])
    coords = {"step": ("step", np.array(steps, dtype=np.int64), {"long_name": "SGD iteration",
                                                                 "units": "1"}),
              "subset": ("subset", list(measured_subsets(points)), SUBSET_ATTRS),
              "layer": ("layer", np.arange(len(measured_layers))),
              "layer_name": ("layer", [name for name, _ in measured_layers],
                             {"long_name": "module name in the model"}),
              "layer_type": ("layer", [type(module).__name__ for _, module in measured_layers],
                             {"long_name": "torch module class (Linear, Conv1d, Conv2d)"}),
              "moment": ("moment", list(moments), {"long_name": "order k of the moment",
                                                   "units": "1"}),
              "sample_index": (("subset", "sample"), sample_index,
                               {"long_name": "row in that split of flatrep.data.load",
                                "units": "1",
                                "definition": "-1 for test_misclassified, whose rows change "
                                              "with the checkpoint: misclassified_index"}),
              **(extra_coords or {})}
    return xr.Dataset(data_vars, coords)
