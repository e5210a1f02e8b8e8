"""Datasets: preparation on disk and ``load(name, split, **options)``.

``prepare`` writes one ``.npz`` file per dataset and generation options under ``prepared_dir``
(a pure function of the options, so the Snakemake rule knows it up front); ``load`` returns
the exact tensors a study trains and measures on, after class subsetting and scaling, so a
``sample_index`` stored in a cube is a row of ``load(...)``.

``mnist1d`` is generated offline. ``mnist``, ``fashion_mnist``, ``cifar10`` and ``cifar100`` are
read from torchvision's raw files under the ``root`` option (default ``data/torchvision``),
which torchvision downloads first when some are missing and the ``download`` option is true
(the default), one process at a time (``_download_lock``). Their prepared files hold uint8
images ``(N, C, H, W)`` and int64 labels; ``load`` converts to float32 only after class
subsetting.
"""

from __future__ import annotations

import fcntl
import gzip
import hashlib
import json
import math
import pickle
import struct
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from flatrep import atomic


class DataError(ValueError):
    """A dataset is unknown, missing on disk, or asked for with bad options."""


@dataclass(frozen=True)
class DatasetSpec:
    """How to generate one dataset and what it looks like."""

    # options -> {"x_train", "y_train", "x_test", "y_test"}; reads its generation keys and the
    # options that only say where inputs come from (``root``, ``download``)
    generate: Callable[[dict], dict]
    generation_keys: tuple[str, ...]   # the options that change the generated arrays
    num_classes: int
    description: str


#: Where the raw files of the torchvision datasets are looked for (the ``root`` data option).
DEFAULT_RAW_ROOT = "data/torchvision"


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


@dataclass(frozen=True)
class RawImages:
    """The raw files of a torchvision dataset in torchvision's layout, ``<root>/<folder>/<file>``.

    Any file may also be present gzipped, as ``<file>.gz``.
    """

    torchvision_class: str              # ``torchvision.datasets.<class>`` downloads them
    folder: str
    files: dict[str, tuple[str, ...]]   # split -> its files, in reading order
    read: Callable[[list[Path]], tuple[np.ndarray, np.ndarray]]  # -> uint8 (N,C,H,W), labels


def _open(path: Path):
    """A raw file opened for binary reading, through gzip when its name ends in ``.gz``."""
    return gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")


def _read_idx(path: Path) -> np.ndarray:
    """An unsigned-byte IDX array (the MNIST format).

    Header: two zero bytes, the type code 0x08 (unsigned byte), the number of dimensions d, then
    d big-endian uint32 sizes; the values follow in C order.
    """
    with _open(path) as handle:
        raw = handle.read()
    ndim = raw[3] if len(raw) > 3 else 0
    header = 4 + 4 * ndim
    shape = struct.unpack(f">{ndim}I", raw[4:header]) if len(raw) >= header else None
    if raw[:3] != b"\x00\x00\x08" or shape is None or len(raw) != header + math.prod(shape):
        raise DataError(f"{path} is not an unsigned-byte IDX file")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape)


def _read_idx_split(paths: list[Path]) -> tuple[np.ndarray, np.ndarray]:
    """An MNIST-like split: an IDX images file ``(N, H, W)`` and an IDX labels file ``(N,)``."""
    images, labels = (_read_idx(path) for path in paths)
    if images.ndim != 3 or labels.shape != images.shape[:1]:
        raise DataError(f"{paths[0]} and {paths[1]} do not hold N images and their N labels")
    return images[:, None], labels.astype(np.int64)


def _read_cifar(paths: list[Path], label_key: bytes) -> tuple[np.ndarray, np.ndarray]:
    """CIFAR batches, concatenated in order: pickled dicts holding ``b"data"``, N x 3072 uint8
    (the red, green and blue 32 x 32 planes, each row-major), and labels under ``label_key``."""
    images, labels = [], []
    for path in paths:
        with _open(path) as handle:
            batch = pickle.load(handle, encoding="bytes")
        images.append(np.asarray(batch[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
        labels.append(np.asarray(batch[label_key], dtype=np.int64))
    return np.concatenate(images), np.concatenate(labels)


_IDX_FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
              "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}

#: The datasets read from torchvision's raw files: their torchvision class, folder under
#: ``data.root``, file names per split and reader (``flatrep.data.synthetic`` writes the same).
RAW_IMAGES = {
    "mnist": RawImages("MNIST", "MNIST/raw", _IDX_FILES, _read_idx_split),
    "fashion_mnist": RawImages("FashionMNIST", "FashionMNIST/raw", _IDX_FILES, _read_idx_split),
    "cifar10": RawImages("CIFAR10", "cifar-10-batches-py",
                         {"train": tuple(f"data_batch_{i}" for i in range(1, 6)),
                          "test": ("test_batch",)},
                         partial(_read_cifar, label_key=b"labels")),
    "cifar100": RawImages("CIFAR100", "cifar-100-python", {"train": ("train",), "test": ("test",)},
                          partial(_read_cifar, label_key=b"fine_labels")),
}


def _existing(path: Path) -> Path | None:
    """``path``, else its gzipped ``<path>.gz``, whichever is a file; None if neither is."""
    gzipped = path.with_name(path.name + ".gz")
    return next((candidate for candidate in (path, gzipped) if candidate.is_file()), None)


def _raw_files(name: str, root: Path, download: bool) -> dict[str, list[Path]]:
    """The raw files of each split, downloaded by torchvision first if some are missing and
    ``download`` is true (checked and downloaded under ``_download_lock``); one DataError
    naming the missing files if they cannot be had."""
    if not download:
        return _find_raw_files(name, root, download)
    with _download_lock(name, root):
        return _find_raw_files(name, root, download)


@contextmanager
def _download_lock(name: str, root: Path):
    """Hold an exclusive ``fcntl.flock`` on ``<root>/.<name>.lock`` (created if missing).

    Two ``prepare`` processes of one dataset, such as the ``prepare_data`` jobs of two studies
    with different ``num_train`` that ``snakemake --cores N`` runs at once, share the raw folder,
    which no job declares as an output. Unlocked, both would find files missing and download
    them into it at the same time, and one could read a file the other is still writing; locked,
    the second waits, then finds the files complete. The lock goes with the file descriptor, so
    a killed process releases it. A root that cannot hold the lock file is one DataError.
    """
    try:
        root.mkdir(parents=True, exist_ok=True)
        handle = open(root / f".{name}.lock", "a")
    except OSError as error:
        raise DataError(f"dataset {name!r}: cannot create the download lock in {root} ({error}); "
                        "for a read-only raw folder set data.download: false") from None
    with handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def _find_raw_files(name: str, root: Path, download: bool) -> dict[str, list[Path]]:
    """``_raw_files`` without the lock."""
    raw = RAW_IMAGES[name]
    expected = {split: [root / raw.folder / file for file in files]
                for split, files in raw.files.items()}
    missing = [path for paths in expected.values() for path in paths if not _existing(path)]
    if missing and not download:
        reason = "data.download is false (true lets torchvision download them)"
        raise _missing_files_error(name, root, missing, reason)
    if missing:
        _download(name, root, missing)
    return {split: [_existing(path) for path in paths] for split, paths in expected.items()}


def _download(name: str, root: Path, missing: list[Path]) -> None:
    """Download the raw files with ``torchvision.datasets.<class>(root, download=True)`` (one
    call fetches both splits); a failure, such as no internet, becomes one DataError."""
    import torchvision.datasets

    dataset_class = getattr(torchvision.datasets, RAW_IMAGES[name].torchvision_class)
    try:
        dataset_class(str(root), train=True, download=True)
    except (OSError, RuntimeError) as error:   # URLError is an OSError
        message = " ".join(str(error).split())
        reason = f"Downloading them with torchvision failed ({type(error).__name__}: {message})"
        raise _missing_files_error(name, root, missing, reason) from None
    still_missing = [path for path in missing if not _existing(path)]
    if still_missing:
        reason = "torchvision's download did not create them"
        raise _missing_files_error(name, root, still_missing, reason)


def _missing_files_error(name: str, root: Path, missing: list[Path], reason: str) -> DataError:
    """The error for raw files that are not there: which, why, and where to get them."""
    import torchvision.datasets

    raw = RAW_IMAGES[name]
    dataset_class = getattr(torchvision.datasets, raw.torchvision_class)
    if hasattr(dataset_class, "url"):   # CIFAR: one archive holding the folder
        source = f"download {dataset_class.url} and extract it into {root}"
    else:                               # MNIST-like: one gzipped file each
        mirror = dataset_class.mirrors[0]
        urls = "".join(f"\n  {mirror}{file}" for file, _ in dataset_class.resources)
        source = f"download{urls}\ninto {root / raw.folder} (gzipped or not)"
    listing = "".join(f"\n  {path}" for path in missing)
    return DataError(f"dataset {name!r}: raw files missing:{listing}\n{reason}.\n"
                     f"Place them in torchvision's layout: {source}.")


def _generate_images(name: str, options: dict) -> dict:
    """A torchvision dataset read from its raw files (options ``root``, default
    ``data/torchvision``, and ``download``, default true) as uint8 ``(N, C, H, W)`` images and
    int64 labels, keeping only the first ``num_train`` training images if that option is set."""
    num_train, download = options.get("num_train"), options.get("download", True)
    if num_train is not None and (type(num_train) is not int or num_train < 1):
        raise DataError(f"data.num_train must be a positive integer, not {num_train!r}")
    if not isinstance(download, bool):
        raise DataError(f"data.download must be true or false, not {download!r}")
    files = _raw_files(name, Path(options.get("root", DEFAULT_RAW_ROOT)), download)
    read = RAW_IMAGES[name].read
    (x_train, y_train), (x_test, y_test) = read(files["train"]), read(files["test"])
    if num_train is not None and num_train > len(y_train):
        raise DataError(f"data.num_train = {num_train} but dataset {name!r} has only "
                        f"{len(y_train)} training images")
    return {"x_train": x_train[:num_train], "y_train": y_train[:num_train],
            "x_test": x_test, "y_test": y_test}


def _torchvision_dataset(name: str, num_classes: int, description: str) -> DatasetSpec:
    """The spec of a dataset read from torchvision's raw files ``RAW_IMAGES[name]``."""
    return DatasetSpec(partial(_generate_images, name), ("num_train",), num_classes, description)


DATASETS: dict[str, DatasetSpec] = {
    "mnist1d": DatasetSpec(
        generate=_generate_mnist1d,
        generation_keys=("num_samples", "train_split", "seed"),
        num_classes=10,
        description="MNIST-1D: 40-sample 1-D signals, 10 classes, generated offline",
    ),
    "mnist": _torchvision_dataset(
        "mnist", 10, "MNIST: 28x28 greyscale digits, 60000 train / 10000 test, 10 classes"),
    "fashion_mnist": _torchvision_dataset(
        "fashion_mnist", 10,
        "Fashion-MNIST: 28x28 greyscale clothing, 60000 train / 10000 test, 10 classes"),
    "cifar10": _torchvision_dataset(
        "cifar10", 10, "CIFAR-10: 32x32 colour images, 50000 train / 10000 test, 10 classes"),
    "cifar100": _torchvision_dataset(
        "cifar100", 100,
        "CIFAR-100: 32x32 colour images, 50000 train / 10000 test, 100 fine classes"),
}

#: Input scalings selectable with ``data.scale``; statistics come from the train split after
#: class subsetting (see ``_scale``).
SCALINGS = ("none", "standardize", "channel_standardize", "unit_interval")


def spec(name: str) -> DatasetSpec:
    """The spec of a dataset, with a clear error naming the known ones."""
    if name not in DATASETS:
        raise DataError(f"unknown dataset {name!r}; known datasets: {sorted(DATASETS)}")
    return DATASETS[name]


def generation_options(name: str, options: dict) -> dict:
    """The subset of ``options`` that changes the generated file."""
    keys = spec(name).generation_keys
    return {key: options[key] for key in keys if key in options}


def prepared_path(name: str, prepared_dir: str | Path = "data", **options) -> Path:
    """Where ``prepare`` writes the dataset:
    ``<prepared_dir>/<name>-<digest of generation options>.npz``."""
    canonical = json.dumps(generation_options(name, options), sort_keys=True)
    digest = hashlib.sha256(canonical.encode()).hexdigest()[:10]
    return Path(prepared_dir) / f"{name}-{digest}.npz"


def prepare(name: str, prepared_dir: str | Path = "data", **options) -> Path:
    """Generate the dataset and write it atomically to ``prepared_path``; return that path."""
    arrays = spec(name).generate(options)
    path = prepared_path(name, prepared_dir, **options)
    with atomic.destination(path, suffix=".npz") as tmp:
        np.savez(tmp, **{key: np.asarray(value) for key, value in arrays.items()})
    return path


def load(name: str, split: str, prepared_dir: str | Path = "data", classes=None,
         scale: str = "none", outputs: str = "all",
         **options) -> tuple[torch.Tensor, torch.Tensor]:
    """The tensors ``(x, y)`` of one split after class subsetting and scaling.

    ``x`` is float32 with the dataset's sample shape. ``y`` holds int64 labels: with
    ``outputs="all"`` in the dataset's original numbering (a 2-class subset keeps labels 0 and
    1 out of 10 outputs, as Chen et al. do); with ``outputs="classes"`` renumbered to each
    label's position in ``classes`` (0 .. len(classes) - 1, one network output per class of
    the subset, ``num_outputs``).
    """
    if split not in ("train", "test"):
        raise DataError(f"unknown split {split!r}; use 'train' or 'test'")
    if scale not in SCALINGS:
        raise DataError(f"unknown data.scale {scale!r}; allowed: {list(SCALINGS)}")
    _check_outputs(outputs, classes)
    if classes is not None:
        _check_classes(name, classes)
    path = prepared_path(name, prepared_dir, **options)
    if not path.is_file():
        raise DataError(f"data file {path} is missing; create it with "
                        f"`snakemake --cores 1 {path}` or `flatrep prepare-data {name}`")
    with np.load(path) as arrays:
        x_train, y_train = _subset(arrays["x_train"], arrays["y_train"], classes)
        x, y = ((x_train, y_train) if split == "train"
                else _subset(arrays["x_test"], arrays["y_test"], classes))
    if not len(y_train):
        raise DataError(f"dataset {name!r} has no training samples of classes {classes}")
    x = _scale(x, x_train, scale)
    if outputs == "classes":
        y = _renumbered(y, classes, spec(name).num_classes)
    return torch.as_tensor(x, dtype=torch.float32), torch.as_tensor(y, dtype=torch.int64)


#: The ``outputs`` data option: one network output per class of the dataset, or per class of
#: the ``classes`` subset.
OUTPUTS = ("all", "classes")


def num_outputs(data_cfg: dict) -> int:
    """The network's output width K for a study's ``data`` section: the dataset's class count,
    or with ``outputs: classes`` the size of its ``classes`` subset."""
    outputs, classes = data_cfg.get("outputs", "all"), data_cfg.get("classes")
    _check_outputs(outputs, classes)
    return len(classes) if outputs == "classes" else spec(data_cfg["name"]).num_classes


def _check_outputs(outputs: str, classes) -> None:
    """A DataError for an unknown ``outputs`` option or ``classes`` outputs without a subset."""
    if outputs not in OUTPUTS:
        raise DataError(f"unknown data.outputs {outputs!r}; allowed: {list(OUTPUTS)}")
    if outputs == "classes" and classes is None:
        raise DataError("data.outputs 'classes' needs a data.classes subset to number the "
                        "outputs by; set data.classes or use outputs 'all'")


def _renumbered(y: np.ndarray, classes, dataset_classes: int) -> np.ndarray:
    """Labels of a class subset mapped to their positions in ``classes``."""
    position = np.full(dataset_classes, -1, dtype=np.int64)
    position[list(classes)] = np.arange(len(classes))
    return position[y]


def _check_classes(name: str, classes) -> None:
    """A DataError unless every entry of ``classes`` is a class index of the dataset."""
    num_classes = spec(name).num_classes
    bad = [c for c in classes if isinstance(c, bool) or not isinstance(c, (int, np.integer))
           or not 0 <= c < num_classes]
    if bad:
        raise DataError(f"data.classes {list(classes)}: {bad} not class indices of dataset "
                        f"{name!r} (0 to {num_classes - 1})")


def _subset(x: np.ndarray, y: np.ndarray, classes) -> tuple[np.ndarray, np.ndarray]:
    """The samples whose label is in ``classes`` (all of them if ``classes`` is None)."""
    if classes is None:
        return x, y
    keep = np.isin(y, classes)
    return x[keep], y[keep]


def _scale(x: np.ndarray, x_train: np.ndarray, scale: str) -> np.ndarray:
    """``(x - shift) / divisor`` as a float array (float32 for uint8 images), the shift and
    divisor computed from ``x_train``, the training split after class subsetting:

    - ``none``: shift 0, divisor 1 (the stored values; 0 to 255 for images);
    - ``standardize``: the mean and standard deviation of all training values;
    - ``channel_standardize``: the mean and standard deviation of each channel (axis 1) over the
      training samples and positions, the usual CIFAR normalisation;
    - ``unit_interval``: for uint8 images shift 0 and divisor 255, so ``x / 255`` exactly (the
      papers' inputs scaled to [0, 1]) whatever the training minimum and maximum; otherwise the
      training minimum and ``maximum - minimum``.
    """
    if scale == "channel_standardize" and x.ndim < 3:
        raise DataError(f"data.scale channel_standardize needs samples with a channel axis, "
                        f"(C, ...); this dataset's samples have shape {x.shape[1:]}")
    shift, divisor = _shift_and_divisor(x_train, scale)
    x = x.astype(np.result_type(x.dtype, np.float32))
    x -= shift
    x /= divisor
    return x


def _shift_and_divisor(x_train: np.ndarray, scale: str):
    """The statistics of ``_scale``."""
    if scale == "none":
        return 0, 1
    if scale == "unit_interval":
        low, high = (0, 255) if x_train.dtype == np.uint8 else (x_train.min(), x_train.max())
        return low, high - low
    axes = tuple(range(x_train.ndim))
    if scale == "channel_standardize":
        axes = (0, *axes[2:])
    return _mean_std(x_train, axes)


#: How many values ``_mean_std`` turns into float64 at a time (32 MiB).
_CHUNK_VALUES = 1 << 22


def _mean_std(x: np.ndarray, axes: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Mean and population standard deviation of ``x`` over ``axes`` (axis 0 among them), kept
    as broadcastable float64 arrays, accumulated over chunks of samples so that a full uint8
    CIFAR split never exists in float64 (a split that fits one chunk gives numpy's values)."""
    step = max(1, _CHUNK_VALUES // max(1, math.prod(x.shape[1:])))
    chunks = [x[start:start + step] for start in range(0, len(x), step)]
    count = math.prod(x.shape[axis] for axis in axes)
    mean = sum(chunk.sum(axis=axes, keepdims=True, dtype=np.float64) for chunk in chunks) / count
    squares = sum(np.square(chunk - mean).sum(axis=axes, keepdims=True) for chunk in chunks)
    return mean, np.sqrt(squares / count)


#: Samples per class in each split of the torchvision datasets' fixed releases: with them a
#: study's split sizes, class subset included, are known before any file is read.
CLASS_COUNTS = {
    "mnist": {"train": (5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949),
              "test": (980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009)},
    "fashion_mnist": {"train": (6000,) * 10, "test": (1000,) * 10},
    "cifar10": {"train": (5000,) * 10, "test": (1000,) * 10},
    "cifar100": {"train": (500,) * 100, "test": (100,) * 100},
}


def split_sizes(data_cfg: dict, prepared_dir: str | Path = "data") -> dict[str, int] | None:
    """``{"train": n, "test": m}``: the samples of each split a study trains and measures on
    (after class subsetting), before any job runs. From the prepared file's labels when it
    exists; else from the options: MNIST-1D keeps N = (num_samples // 10) * 10 samples and
    puts int(N train_split) of them in train (the ``mnist1d`` package's split), the torchvision
    datasets have ``CLASS_COUNTS`` (train cut to ``num_train``). None where only the file can
    tell: a class subset of MNIST-1D (its shuffle decides each class's share of train) or of
    the first ``num_train`` images."""
    name = data_cfg["name"]
    options = {key: value for key, value in data_cfg.items() if key != "name"}
    classes = options.get("classes")
    path = prepared_path(name, prepared_dir, **options)
    if path.is_file():
        with np.load(path) as arrays:
            return {split: int(len(_subset(arrays[f"y_{split}"], arrays[f"y_{split}"],
                                           classes)[1])) for split in ("train", "test")}
    if name == "mnist1d":
        if classes is not None:
            return None
        from mnist1d.data import get_dataset_args

        defaults = get_dataset_args()
        total = options.get("num_samples", defaults.num_samples) // 10 * 10
        train = int(total * options.get("train_split", defaults.train_split))
        return {"train": train, "test": total - train}
    counts = CLASS_COUNTS[name]
    num_train = options.get("num_train")
    if num_train is not None and classes is not None:
        return None
    chosen = range(len(counts["train"])) if classes is None else classes
    sizes = {split: sum(counts[split][c] for c in chosen) for split in ("train", "test")}
    if num_train is not None:
        sizes["train"] = min(num_train, sizes["train"])
    return sizes


def load_study_split(data_cfg: dict, split: str, prepared_dir: str | Path = "data"):
    """``load`` with a study's ``data`` section (``name`` plus options)."""
    options = {key: value for key, value in data_cfg.items() if key != "name"}
    return load(data_cfg["name"], split, prepared_dir, **options)
