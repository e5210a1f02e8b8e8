"""Datasets: preparation on disk and ``load(name, split, **options)``.

``prepare`` writes one ``.npz`` file per dataset and generation options under ``root``
(a pure function of the options, so the Snakemake rule knows it up front); ``load`` returns
the exact tensors a study trains and measures on, after class subsetting and scaling, so a
``sample_index`` stored in a cube is a row of ``load(...)``.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch


class DataError(ValueError):
    """A dataset is unknown, missing on disk, or asked for with bad options."""


@dataclass(frozen=True)
class DatasetSpec:
    """How to generate one dataset and what it looks like."""

    generate: Callable[[dict], dict]   # options -> {"x_train", "y_train", "x_test", "y_test"}
    generation_keys: tuple[str, ...]   # the options that change the generated arrays
    num_classes: int
    description: str


def _generate_mnist1d(options: dict) -> dict:
    """MNIST-1D (Greydanus 2020), generated offline by the ``mnist1d`` package.

    The package centres the whole dataset and scales it to unit standard deviation.
    """
    from mnist1d.data import get_dataset_args, make_dataset

    args = get_dataset_args()
    for key in DATASETS["mnist1d"].generation_keys:
        if key in options:
            setattr(args, key, options[key])
    raw = make_dataset(args)
    return {"x_train": raw["x"], "y_train": raw["y"],
            "x_test": raw["x_test"], "y_test": raw["y_test"]}


DATASETS: dict[str, DatasetSpec] = {
    "mnist1d": DatasetSpec(
        generate=_generate_mnist1d,
        generation_keys=("num_samples", "train_split", "seed"),
        num_classes=10,
        description="MNIST-1D: 40-sample 1-D signals, 10 classes, generated offline",
    ),
}

#: Input scalings selectable with ``data.scale``; statistics always come from the train split.
SCALINGS = ("none", "standardize", "unit_interval")


def spec(name: str) -> DatasetSpec:
    """The spec of a dataset, with a clear error naming the known ones."""
    if name not in DATASETS:
        raise DataError(f"unknown dataset {name!r}; known datasets: {sorted(DATASETS)}")
    return DATASETS[name]


def generation_options(name: str, options: dict) -> dict:
    """The subset of ``options`` that changes the generated file."""
    keys = spec(name).generation_keys
    return {key: options[key] for key in keys if key in options}


def prepared_path(name: str, root: str | Path = "data", **options) -> Path:
    """Where ``prepare`` writes the dataset: ``<root>/<name>-<digest of generation options>.npz``."""
    canonical = json.dumps(generation_options(name, options), sort_keys=True)
    digest = hashlib.sha256(canonical.encode()).hexdigest()[:10]
    return Path(root) / f"{name}-{digest}.npz"


def prepare(name: str, root: str | Path = "data", **options) -> Path:
    """Generate the dataset and write it atomically to ``prepared_path``; return that path."""
    arrays = spec(name).generate(generation_options(name, options))
    path = prepared_path(name, root, **options)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=path.parent, suffix=".npz", delete=False) as handle:
        np.savez(handle, **{key: np.asarray(value) for key, value in arrays.items()})
    os.replace(handle.name, path)
    return path


def load(name: str, split: str, root: str | Path = "data", classes=None, scale: str = "none",
         **options) -> tuple[torch.Tensor, torch.Tensor]:
    """The tensors ``(x, y)`` of one split after class subsetting and scaling.

    ``x`` is float32 with the dataset's sample shape, ``y`` holds int64 labels in the dataset's
    original numbering (a 2-class subset keeps labels 0 and 1 out of 10, as the paper does).
    """
    if split not in ("train", "test"):
        raise DataError(f"unknown split {split!r}; use 'train' or 'test'")
    if scale not in SCALINGS:
        raise DataError(f"unknown data.scale {scale!r}; allowed: {list(SCALINGS)}")
    path = prepared_path(name, root, **options)
    if not path.is_file():
        raise DataError(f"data file {path} is missing; create it with "
                        f"`snakemake --cores 1 {path}` or `flatrep prepare-data {name}`")
    with np.load(path) as arrays:
        x_train, y_train = arrays["x_train"], arrays["y_train"]
        x, y = arrays[f"x_{split}"], arrays[f"y_{split}"]
    if classes is not None:
        keep_train, keep = np.isin(y_train, classes), np.isin(y, classes)
        x_train, x, y = x_train[keep_train], x[keep], y[keep]
    x = _scale(x, x_train, scale)
    return torch.as_tensor(x, dtype=torch.float32), torch.as_tensor(y, dtype=torch.int64)


def _scale(x: np.ndarray, x_train: np.ndarray, scale: str) -> np.ndarray:
    """Apply a scaling whose statistics come from the training split."""
    if scale == "standardize":
        return (x - x_train.mean()) / x_train.std()
    if scale == "unit_interval":
        low, high = x_train.min(), x_train.max()
        return (x - low) / (high - low)
    return x


def load_study_split(data_cfg: dict, split: str, root: str | Path = "data"):
    """``load`` with a study's ``data`` section (``name`` plus options)."""
    options = {key: value for key, value in data_cfg.items() if key != "name"}
    return load(data_cfg["name"], split, root=root, **options)
