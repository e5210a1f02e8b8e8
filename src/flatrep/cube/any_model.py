"""The measures of any ``nn.Module``: ``flatrep.measure`` for networks flatrep did not train.

``measure(model, inputs, targets)`` returns what one checkpoint of a cube holds: the same
variables, dims, coordinates and attributes (``flatrep.cube.variables``), computed by the
pipeline's own code (``flatrep.cube.measuring.measure_checkpoint``) on the same seeded
choice of points (``measuring.measurement_points``). So for a flatrep checkpoint's weights it
gives that checkpoint's values of ``results/<study>/cube.nc``, ``cube.isel(run=r, step=k)``.

The Dataset has no ``run`` or ``step`` dim and no ``diverged``/``diverged_at`` (they record a
training run). Its ``subset`` dim holds what was given: ``train`` (``inputs``, ``targets``),
and with ``test_inputs``/``test_targets`` also ``test`` and ``test_misclassified``, which
brings ``test_loss``, ``test_acc``, ``misclassified_index`` and the generalisation gaps.
``sample_index`` gives each point's row in ``inputs`` (``test_inputs``).

The measures run in float64 on the device of the model's parameters, on a copy of the model
in eval mode (the caller's model is left as it is). The Jacobians use ``torch.func``: the
model must be a function of its input batch made of ``torch`` operations, mapping (n, ...)
float inputs to (n, K) outputs. The network-wide measures (``nmls``, ``layer_*``, the weight
norms) run over its ``nn.Linear``/``nn.Conv1d``/``nn.Conv2d`` layers
(``flatrep.measures.layers``). Bit-for-bit reproducibility, as in the pipeline, needs
``flatrep.determinism.configure(strict=True)`` first (the CLI's ``flatrep measure-model``
does it; ``measure`` leaves torch's global settings alone).

``model_from_files`` builds the module for the CLI: a factory function, then the weights of
a state_dict or flatrep checkpoint file read with ``torch.load(weights_only=True)``, so
nothing read from disk can run code.
"""

from __future__ import annotations

import copy
import importlib
import numbers
import pickle
from collections.abc import Iterable, Mapping
from importlib import metadata
from pathlib import Path

import torch
import xarray as xr
from torch import nn

import flatrep
from flatrep import checkpoint, losses
from flatrep.cube import measuring, netcdf
from flatrep.measures import curvature, layers, suite
from flatrep.params import studies

#: The training record a cube has per checkpoint and per run, absent from ``measure``'s result.
TRAINING_RECORD = ("diverged", "diverged_at")


class MeasureError(ValueError):
    """Bad input to ``measure`` or ``model_from_files``; the message names it and the fix."""


def measure(model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor, loss: str = "mse",
            *, test_inputs: torch.Tensor | None = None, test_targets: torch.Tensor | None = None,
            families: Iterable[str] | Mapping[str, bool | dict] = (), curvature: bool = True,
            points: int | None = None, point_seed: int = 0, curvature_points: int | None = None,
            probes: int = 24, hvp: str = curvature.DEFAULT_HVP, chunk_size: int = 50,
            moments: tuple[int, ...] = measuring.MOMENTS,
            memory_mb: int = studies.MEASURE_MEMORY_MB) -> xr.Dataset:
    """The cube's measures of ``model`` as an ``xarray.Dataset`` (one checkpoint's slice).

    Args:
        model: any ``nn.Module`` mapping float inputs (n, ...) to outputs (n, K).
        inputs: the training inputs (n, ...): ``train_loss``/``train_acc`` on all rows, the
            per-sample measures on ``points`` of them, the Hessian on ``curvature_points``.
        targets: class labels (n,) (int, 0..K-1) or float targets (n, K) (one-hot, soft
            labels), used as given; the accuracy counts argmax_k f_k(x) == label (argmax_k
            y_k of float targets).
        loss: ``"mse"`` (L = (1/2n) sum_i ||f(x_i) - y_i||^2, one-hot y for labels) or
            ``"cross_entropy"`` (``flatrep.losses``): the loss whose Hessian ``hessian_*``
            measure (``train_loss``/``test_loss`` are in torch's reduction, as in the cube).
        test_inputs, test_targets: an optional test split, the same kinds as ``inputs`` and
            ``targets``: adds the subsets ``test`` and ``test_misclassified``.
        families: the curvature families run beside the core (``hessian_trace``,
            ``hessian_fro``, ...): names of ``flatrep.params.studies.CURVATURE_FAMILIES``
            with their default options, or a mapping {name: true | options} as in
            params.yaml's ``measure.curvature``; costs in ``flatrep.measures.suite.COSTS``.
        curvature: false skips the Hessian measures altogether (core and families).
        points: measurement points per subset, the first of a permutation seeded by
            ``point_seed`` as in the pipeline (``measure.points``); default every row of the
            smaller split.
        curvature_points: training rows of the Hessian measures (``measure.curvature.points``,
            seeded likewise); default all.
        probes, hvp, chunk_size, moments, memory_mb: as ``measure.curvature.probes``,
            ``measure.curvature.hvp``, ``measure.chunk_size``, ``measure.moments`` and
            ``measure.memory_mb`` in params.yaml.

    Returns:
        dims ``subset`` (``train``, or ``train``, ``test``, ``test_misclassified``),
        ``sample`` (``points``), ``layer`` (the Linear/Conv layers, named by ``layer_name``),
        ``moment`` and the dims of the enabled families; every variable with the
        catalogue's ``long_name``, ``units`` and ``definition``; global attributes as a
        cube's measurement attributes (``num_outputs``, ``input_shape``, ``loss``,
        ``hessian_factor``, ``curvature``, ...) plus ``model`` (its class), ``train_size``,
        ``measure_device``, ``flatrep_version`` and ``torch_version``.

    Raises:
        MeasureError: naming the bad argument and the fix, before any measure is computed.
    """
    loss_fn = _loss(loss)
    device = _device(model)
    splits = {"train": _split(inputs, targets, "inputs", "targets", device)}
    if (test_inputs is None) != (test_targets is None):
        raise MeasureError("give test_inputs and test_targets together (or neither)")
    if test_inputs is not None:
        splits["test"] = _split(test_inputs, test_targets, "test_inputs", "test_targets",
                                device)
    sizes = {split: len(y) for split, (_, y) in splits.items()}
    smaller = min(sizes.values())
    if curvature_points is not None:
        curvature_points = _count("curvature_points", curvature_points, 1, sizes["train"],
                                  "training rows")
    measure_cfg = {"points": _count("points", smaller if points is None else points, 1,
                                    smaller, "rows of the smaller split"),
                   "point_seed": _count("point_seed", point_seed, 0),
                   "chunk_size": _count("chunk_size", chunk_size, 1),
                   "memory_mb": _count("memory_mb", memory_mb, 1),
                   "moments": [_count("moments", k, 1, 8, "orders supported") for k in moments],
                   "curvature": _curvature_section(families, curvature, curvature_points,
                                                   probes, hvp)}
    work = copy.deepcopy(model).eval().double()
    num_outputs = _num_outputs(work, splits)
    chosen = measuring.measurement_points(sizes, measure_cfg)
    values = measuring.measure_checkpoint(work, splits, chosen, num_outputs, measure_cfg,
                                          loss_fn)
    ds = measuring.run_dataset([{"step": 0, "diverged_at": None}], [values], chosen,
                               layers.measured_layers(work), tuple(measure_cfg["moments"]),
                               suite.coords(measure_cfg["curvature"]))
    ds = ds.isel(step=0, drop=True).drop_vars(TRAINING_RECORD)
    ds.attrs.update(netcdf.measurement_attrs(num_outputs, list(splits["train"][0].shape[1:]),
                                             measure_cfg, loss))
    ds.attrs.update({"title": f"flatrep.measure of {type(model).__qualname__}",
                     "model": f"{type(model).__module__}.{type(model).__qualname__}",
                     "train_size": sizes["train"],
                     "measure_device": measuring.device_label(device),
                     "flatrep_version": flatrep.__version__,
                     "torch_version": metadata.version("torch")})
    return ds


def _device(model: nn.Module) -> torch.device:
    """The device of the model's parameters; MeasureError for a model the measures cannot
    take (not a Module, no parameters, no Linear/Conv layer)."""
    if not isinstance(model, nn.Module):
        raise MeasureError(f"model is a {type(model).__name__}, not a torch.nn.Module")
    parameters = list(model.parameters())
    if not parameters:
        raise MeasureError(f"model {type(model).__name__} has no parameters: the measures "
                           "differentiate with respect to them")
    if not layers.measured_layers(model):
        raise MeasureError(f"model {type(model).__name__} has no nn.Linear, nn.Conv1d or "
                           "nn.Conv2d layer, over which the network-wide measures run")
    return parameters[0].device


def _loss(name: str) -> losses.Loss:
    """The loss called ``name``; MeasureError naming the allowed ones otherwise."""
    if name not in losses.LOSSES:
        raise MeasureError(f"loss = {name!r}: unknown{studies.did_you_mean(name, losses.LOSSES)}"
                           f"; allowed: {sorted(losses.LOSSES)}")
    return losses.LOSSES[name]


def _count(name: str, value, low: int, high: int | None = None, what: str = "") -> int:
    """``value`` as an int if it is an integer in low..high (>= low without ``high``, the
    number of ``what``); MeasureError naming ``name`` otherwise."""
    if isinstance(value, numbers.Integral) and not isinstance(value, bool) and low <= value \
            and (high is None or value <= high):
        return int(value)
    allowed = f">= {low}" if high is None else f"in {low}..{high} ({high}: the {what})"
    raise MeasureError(f"{name} = {value!r}: must be an integer {allowed}")


def _curvature_section(families, enabled: bool, curvature_points: int | None, probes: int,
                       hvp: str) -> dict:
    """The ``measure.curvature`` section of the arguments; MeasureError for an unknown family
    or option, or families asked for with curvature off."""
    chosen = ({families: True} if isinstance(families, str)
              else dict(families) if isinstance(families, Mapping)
              else {name: True for name in families})
    for name, setting in chosen.items():
        if name not in studies.CURVATURE_FAMILIES:
            raise MeasureError(
                f"families: unknown curvature family {name!r}"
                f"{studies.did_you_mean(name, studies.CURVATURE_FAMILIES)}; allowed: "
                f"{sorted(studies.CURVATURE_FAMILIES)} (the core always runs)")
        options = setting if isinstance(setting, Mapping) else {}
        unknown = sorted(set(options) - set(studies.CURVATURE_FAMILIES[name]))
        if unknown or not isinstance(setting, (bool, Mapping)):
            raise MeasureError(f"families[{name!r}] = {setting!r}: give true or a mapping of "
                               f"its options {sorted(studies.CURVATURE_FAMILIES[name])}")
    if not enabled:
        if any(chosen.values()):
            raise MeasureError(f"families {sorted(chosen)} given with curvature=False; drop "
                               "them, or set curvature=True")
        return {"enabled": False}
    if hvp not in curvature.HVP_METHODS:
        raise MeasureError(f"hvp = {hvp!r}: unknown; allowed: {list(curvature.HVP_METHODS)}")
    return {"enabled": True, "points": curvature_points, "probes": _count("probes", probes, 3),
            "hvp": hvp, **chosen}


def _split(x, y, x_name: str, y_name: str, device: torch.device) -> tuple:
    """(inputs, targets) on ``device``, inputs and float targets in float64, labels int64;
    MeasureError for inputs that are not floating point, targets neither labels (n,) nor
    float (n, K), or row counts that differ."""
    x, y = torch.as_tensor(x), torch.as_tensor(y)
    if not x.is_floating_point() or x.ndim < 2 or not len(x):
        raise MeasureError(f"{x_name}: need a float tensor (n, ...) with n >= 1, got "
                           f"{x.dtype} of shape {tuple(x.shape)}")
    if y.is_floating_point() and y.ndim == 2:
        y = y.double()
    elif not y.is_floating_point() and not y.is_complex() and y.dtype != torch.bool \
            and y.ndim == 1:
        y = y.long()
    else:
        raise MeasureError(f"{y_name}: {y.dtype} of shape {tuple(y.shape)}; give class labels "
                           "(n,) as integers or float targets (n, K), e.g. one-hot")
    if len(y) != len(x):
        raise MeasureError(f"{y_name} has {len(y)} rows but {x_name} has {len(x)}: give one "
                           "target per input")
    return x.double().to(device), y.to(device)


@torch.no_grad()
def _num_outputs(model: nn.Module, splits: dict) -> int:
    """K, from the model's output on one training input; MeasureError unless the model takes
    the inputs and gives (n, K) outputs, and unless every split's targets fit K."""
    x = splits["train"][0]
    try:
        out = model(x[:1])
    except RuntimeError as err:
        message = " ".join(str(err).split())
        raise MeasureError(f"the model fails on inputs of shape {tuple(x.shape[1:])} "
                           f"({message}); give inputs (n, ...) that it takes") from None
    if not isinstance(out, torch.Tensor) or out.ndim != 2:
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise MeasureError(f"the model's output for 1 input is {shape}, not (1, K): wrap it "
                           "in a module that returns the (n, K) outputs (logits) as a tensor")
    num_outputs = out.shape[1]
    for split, (inputs, y) in splits.items():
        prefix = "" if split == "train" else "test_"
        if inputs.shape[1:] != x.shape[1:]:
            raise MeasureError(f"{prefix}inputs have samples of shape {tuple(inputs.shape[1:])}"
                               f", the training inputs {tuple(x.shape[1:])}")
        if y.is_floating_point() and y.shape[1] != num_outputs:
            raise MeasureError(f"{prefix}targets have {y.shape[1]} columns but the model "
                               f"{num_outputs} outputs: give (n, {num_outputs}) targets")
        if not y.is_floating_point() and not bool(((y >= 0) & (y < num_outputs)).all()):
            raise MeasureError(f"{prefix}targets: labels {int(y.min())}..{int(y.max())} are "
                               f"not all classes 0..{num_outputs - 1} of the model's "
                               f"{num_outputs} outputs")
    return num_outputs


def model_from_files(factory: str, weights: str | Path) -> nn.Module:
    """The module ``factory`` builds (``package.module:function``, called with no
    arguments), with the weights of the file ``weights`` (``state_dict``), in eval mode on
    the CPU; MeasureError naming the factory or the file otherwise."""
    module_name, _, function = factory.partition(":")
    if not module_name or not function:
        raise MeasureError(f"factory {factory!r}: write it as package.module:function")
    try:
        build = getattr(importlib.import_module(module_name), function)
    except ImportError as err:
        raise MeasureError(f"factory {factory!r}: cannot import {module_name!r} ({err}); put "
                           "the folder that holds it on PYTHONPATH") from None
    except AttributeError:
        raise MeasureError(f"factory {factory!r}: module {module_name!r} has no "
                           f"{function!r}") from None
    model = build()
    if not isinstance(model, nn.Module):
        raise MeasureError(f"factory {factory!r} returned a {type(model).__name__}, not a "
                           "torch.nn.Module")
    try:
        model.load_state_dict(state_dict(weights))
    except RuntimeError as err:
        message = " ".join(str(err).split())
        raise MeasureError(f"weights {weights} do not fit the model {factory!r} builds "
                           f"({message})") from None
    return model.eval()


def state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """The state_dict in the file ``path``: a ``torch.save(model.state_dict())`` file, or a
    flatrep checkpoint (its ``model``, ``flatrep.checkpoint.read``). Read with
    ``torch.load(weights_only=True)`` only: a file holding anything but tensors and plain
    data (a pickle that could run code) is refused with a MeasureError, nothing built."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file {path} does not exist")
    try:
        content = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise MeasureError(f"weights file {path} holds objects other than tensors and plain "
                           "data, which flatrep refuses to unpickle because that could run "
                           "code; save the weights with torch.save(model.state_dict(), "
                           "path)") from None
    except Exception as err:  # torch raises several types for files it did not write
        raise MeasureError(f"weights file {path} is not a file torch.save wrote ({err}); "
                           "save the weights with torch.save(model.state_dict(), "
                           "path)") from None
    if isinstance(content, dict) and content.get("format") in checkpoint.READABLE_FORMATS:
        return checkpoint.read(path)["model"]
    if not (isinstance(content, dict)
            and all(isinstance(value, torch.Tensor) for value in content.values())):
        raise MeasureError(f"weights file {path} holds a {type(content).__name__}, not a "
                           "state_dict of tensors; save torch.save(model.state_dict(), path)")
    return content
