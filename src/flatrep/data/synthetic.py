"""Random images written as torchvision's raw files, for rehearsals and benchmarks without the
real datasets.

``write_raw_files(name, root, num_train, num_test)`` writes the files ``flatrep.data.datasets``
reads for ``name`` (its registry ``datasets.RAW_IMAGES``, so that the folder and file names have
one source: the same names and formats that torchvision's download leaves), so a study
pointed at ``root`` with ``data.download: false`` runs every stage unchanged: the same
sample shapes and class count, hence the same cost, but no learnable signal.
Labels cycle through the classes (``i mod K``), so every prefix of ``num_train`` rows and every
class subset of at least one class per ``K`` rows is populated.
"""

from __future__ import annotations

import pickle
import struct
from functools import partial
from pathlib import Path
from typing import Callable

import numpy as np

from flatrep import atomic
from flatrep.data import datasets

#: Sample shape (C, H, W) of each torchvision dataset.
IMAGE_SHAPES = {"mnist": (1, 28, 28), "fashion_mnist": (1, 28, 28),
                "cifar10": (3, 32, 32), "cifar100": (3, 32, 32)}


def _idx(array: np.ndarray) -> bytes:
    """A uint8 array as an IDX file: 0, 0, type 0x08, ndim, big-endian uint32 sizes, values."""
    return bytes([0, 0, 8, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape) + \
        array.tobytes()


def _write_idx_split(paths: list[Path], images: np.ndarray, labels: np.ndarray) -> None:
    """An MNIST-like split: images ``(N, H, W)`` and labels ``(N,)``, one IDX file each."""
    atomic.write_bytes(paths[0], _idx(images[:, 0]))
    atomic.write_bytes(paths[1], _idx(labels.astype(np.uint8)))


def _write_cifar_split(paths: list[Path], images: np.ndarray, labels: np.ndarray,
                       label_key: bytes) -> None:
    """A CIFAR split as consecutive pickled batches, one per path, each a dict with ``b"data"``
    (rows of 3072 bytes: the red, green and blue planes) and the labels under ``label_key``."""
    bounds = np.linspace(0, len(labels), len(paths) + 1).astype(int)
    for path, start, stop in zip(paths, bounds[:-1], bounds[1:]):
        batch = {b"data": images[start:stop].reshape(stop - start, -1),
                 label_key: labels[start:stop].tolist(),
                 b"filenames": [f"random_{i}.png".encode() for i in range(start, stop)]}
        atomic.write_bytes(path, pickle.dumps(batch))


_WRITERS: dict[str, Callable[[list[Path], np.ndarray, np.ndarray], None]] = {
    "mnist": _write_idx_split,
    "fashion_mnist": _write_idx_split,
    "cifar10": partial(_write_cifar_split, label_key=b"labels"),
    "cifar100": partial(_write_cifar_split, label_key=b"fine_labels"),
}


def write_raw_files(name: str, root: str | Path, num_train: int, num_test: int,
                    seed: int = 0) -> list[Path]:
    """Write uniform random uint8 images with labels ``i mod K`` for both splits of ``name``
    into ``<root>/<folder of the dataset>``; return the files written."""
    if name not in _WRITERS:
        raise datasets.DataError(f"no raw-file writer for dataset {name!r}; "
                                 f"known: {sorted(_WRITERS)}")
    raw = datasets.RAW_IMAGES[name]
    num_classes = datasets.spec(name).num_classes
    rng = np.random.default_rng(seed)
    written = []
    for split, count in (("train", num_train), ("test", num_test)):
        paths = [Path(root) / raw.folder / file for file in raw.files[split]]
        images = rng.integers(0, 256, (count, *IMAGE_SHAPES[name]), dtype=np.uint8)
        _WRITERS[name](paths, images, np.arange(count) % num_classes)
        written += paths
    return written
