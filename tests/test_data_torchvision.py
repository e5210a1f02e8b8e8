"""The torchvision datasets, read from tiny fake raw files in torchvision's real on-disk formats
(IDX files, plain and gzipped; CIFAR pickles), and the training-time augmentations."""

import gzip
import json
import pickle
import struct
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision.datasets

from flatrep import cli
from flatrep.data import augment, datasets

MNIST_FOLDERS = {"mnist": "MNIST", "fashion_mnist": "FashionMNIST"}
CIFAR = {"cifar10": ("CIFAR10", b"labels"), "cifar100": ("CIFAR100", b"fine_labels")}


def write(path: Path, content: bytes) -> None:
    """Write ``content`` to ``path``, gzipped if its name ends in .gz."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with (gzip.open if path.suffix == ".gz" else open)(path, "wb") as handle:
        handle.write(content)


def idx(array: np.ndarray) -> bytes:
    """``array`` (uint8) in the IDX format: 0, 0, type 0x08, ndim, big-endian sizes, values."""
    return bytes([0, 0, 8, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape) + \
        array.tobytes()


def fake_mnist(root: Path, name: str) -> dict:
    """7 train images as plain IDX files and 5 test images gzipped; the arrays written."""
    rng = np.random.default_rng(1)
    raw = root / MNIST_FOLDERS[name] / "raw"
    arrays = {"train": (rng.integers(0, 256, (7, 28, 28), dtype=np.uint8),
                        np.array([0, 1, 2, 1, 0, 9, 1], dtype=np.uint8)),
              "test": (rng.integers(0, 256, (5, 28, 28), dtype=np.uint8),
                       np.array([1, 0, 3, 1, 2], dtype=np.uint8))}
    for split, prefix, suffix in (("train", "train", ""), ("test", "t10k", ".gz")):
        images, labels = arrays[split]
        write(raw / f"{prefix}-images-idx3-ubyte{suffix}", idx(images))
        write(raw / f"{prefix}-labels-idx1-ubyte{suffix}", idx(labels))
    return arrays


def fake_cifar(root: Path, name: str) -> dict:
    """CIFAR pickles with 2 images per training batch (10 in all) and 3 test images; the
    concatenated rows (N x 3072) and labels of each split."""
    rng = np.random.default_rng(2)
    label_key = CIFAR[name][1]
    if name == "cifar10":
        folder, files = "cifar-10-batches-py", {f"data_batch_{i}": 2 for i in range(1, 6)}
        files["test_batch"] = 3
    else:
        folder, files = "cifar-100-python", {"train": 10, "test": 3}
    labels = iter([0, 1, 2, 1, 0, 3, 1, 0, 2, 1] + [1, 2, 0])
    batches = {}
    for file, count in files.items():
        rows = rng.integers(0, 256, (count, 3072), dtype=np.uint8)
        batches[file] = (rows, [next(labels) for _ in range(count)])
        content = {b"data": rows, label_key: batches[file][1], b"filenames": [b"x.png"] * count}
        write(root / folder / file, pickle.dumps(content))
    split_files = {"train": list(files)[:-1], "test": list(files)[-1:]}
    return {split: (np.concatenate([batches[file][0] for file in names]),
                    np.concatenate([batches[file][1] for file in names]))
            for split, names in split_files.items()}


def prepare_and_load(tmp_path: Path, data_cfg: dict) -> dict:
    """Both splits of a study's data section, prepared by ``flatrep prepare-data`` with the
    options the workflow passes (the section less ``name``) and loaded as training does."""
    options = {key: value for key, value in data_cfg.items() if key != "name"}
    prepared = tmp_path / "data"
    argv = ["prepare-data", data_cfg["name"], "--root", str(prepared), "--options",
            json.dumps(options, sort_keys=True)]
    assert cli.main(argv) == 0
    return {split: datasets.load_study_split(data_cfg, split, prepared) for split in ("train", "test")}


@pytest.mark.parametrize("name", sorted(MNIST_FOLDERS))
def test_mnist_like_raw_files_load_as_images_divided_by_255(tmp_path, name):
    arrays = fake_mnist(tmp_path / "raw", name)
    cfg = {"name": name, "root": str(tmp_path / "raw"), "download": False, "classes": None,
           "scale": "unit_interval"}
    loaded = prepare_and_load(tmp_path, cfg)
    for split, (images, labels) in arrays.items():
        x, y = loaded[split]
        assert x.shape == (len(labels), 1, 28, 28) and x.dtype == torch.float32
        assert torch.equal(x, torch.from_numpy(images)[:, None].float() / 255)
        assert torch.equal(y, torch.from_numpy(labels).long())
    path = datasets.prepared_path(name, tmp_path / "data", root=cfg["root"])
    with np.load(path) as stored:
        assert stored["x_train"].dtype == np.uint8 and stored["x_train"].shape == (7, 1, 28, 28)
        assert stored["y_test"].dtype == np.int64


@pytest.mark.parametrize("scale, divisor", [("none", 1), ("unit_interval", 255)])
@pytest.mark.parametrize("name", sorted(CIFAR))
def test_cifar_layout_num_train_and_class_subset(tmp_path, name, scale, divisor):
    arrays = fake_cifar(tmp_path / "raw", name)
    cfg = {"name": name, "root": str(tmp_path / "raw"), "download": False, "num_train": 7,
           "classes": [0, 1], "scale": scale}
    loaded = prepare_and_load(tmp_path, cfg)
    for split, (rows, labels) in arrays.items():
        rows, labels = (rows[:7], labels[:7]) if split == "train" else (rows, labels)
        keep = np.isin(labels, [0, 1])
        x, y = loaded[split]
        assert x.shape == (keep.sum(), 3, 32, 32)
        assert y.tolist() == labels[keep].tolist()
        for n, c, h, w in ((0, 0, 0, 0), (1, 2, 31, 0), (1, 1, 5, 17)):
            assert x[n, c, h, w] == torch.tensor(rows[keep][n, c * 1024 + h * 32 + w] / divisor,
                                                 dtype=torch.float32)
        assert torch.equal(x, torch.from_numpy(rows[keep]).float().reshape(-1, 3, 32, 32) / divisor)


@pytest.mark.parametrize("scale, axes", [("standardize", (0, 1, 2, 3)),
                                         ("channel_standardize", (0, 2, 3))])
def test_standardizing_uses_the_train_statistics_of_the_class_subset(tmp_path, scale, axes):
    arrays = fake_cifar(tmp_path / "raw", "cifar10")
    cfg = {"name": "cifar10", "root": str(tmp_path / "raw"), "download": False,
           "classes": [0, 1], "scale": scale}
    loaded = prepare_and_load(tmp_path, cfg)
    x_train = loaded["train"][0].double()
    assert torch.allclose(x_train.mean(axes), torch.tensor(0.0, dtype=torch.float64), atol=1e-6)
    assert torch.allclose(x_train.std(axes, unbiased=False), torch.tensor(1.0).double(),
                          atol=1e-6)
    train = {split: arrays[split][0][np.isin(arrays[split][1], [0, 1])].reshape(-1, 3, 32, 32)
             for split in ("train", "test")}
    mean = train["train"].mean(axis=axes, keepdims=True)
    std = train["train"].std(axis=axes, keepdims=True)
    expected = torch.from_numpy((train["test"] - mean) / std).float()
    assert torch.allclose(loaded["test"][0], expected, atol=1e-6)


def test_outputs_classes_renumbers_the_labels_by_their_place_in_the_subset(tmp_path):
    """``outputs: classes`` with the subset [2, 0, 1] of the fake MNIST: the same images, the
    labels 2, 0 and 1 become 0, 1 and 2, and the network gets 3 outputs (10 without it)."""
    arrays = fake_mnist(tmp_path / "raw", "mnist")
    cfg = {"name": "mnist", "root": str(tmp_path / "raw"), "download": False,
           "classes": [2, 0, 1], "scale": "unit_interval"}
    kept = prepare_and_load(tmp_path, cfg)
    renumbered = prepare_and_load(tmp_path, {**cfg, "outputs": "classes"})
    for split, (_, labels) in arrays.items():
        original = labels[np.isin(labels, [2, 0, 1])]
        assert torch.equal(renumbered[split][0], kept[split][0])
        assert kept[split][1].tolist() == original.tolist()
        assert renumbered[split][1].tolist() == [[2, 0, 1].index(c) for c in original]
    assert renumbered["train"][1].tolist() == [1, 2, 0, 2, 1, 2]
    assert datasets.num_outputs({**cfg, "outputs": "classes"}) == 3
    assert datasets.num_outputs(cfg) == datasets.num_outputs({**cfg, "outputs": "all"}) == 10
    assert datasets.prepared_path("mnist", "data", outputs="classes") == datasets.prepared_path("mnist")


def test_prepared_file_depends_on_num_train_only():
    base = datasets.prepared_path("cifar10", "data")
    assert datasets.prepared_path("cifar10", "data", root="elsewhere", download=False,
                                  classes=[0, 1], scale="channel_standardize") == base
    assert datasets.prepared_path("cifar10", "data", num_train=100) != base


def test_mnist1d_prepared_file_name_is_unchanged():
    options = {"num_samples": 400, "train_split": 0.75, "seed": 3, "classes": None,
               "scale": "none"}
    assert datasets.prepared_path("mnist1d", "data", **options) == Path("data/mnist1d-51c138e4ab.npz")


def test_missing_raw_files_without_download_are_named(tmp_path):
    raw = tmp_path / "raw"
    fake_cifar(raw, "cifar10")
    (raw / "cifar-10-batches-py" / "data_batch_3").unlink()
    with pytest.raises(datasets.DataError) as caught:
        datasets.prepare("cifar10", tmp_path / "data", root=str(raw), download=False)
    message = str(caught.value)
    assert "'cifar10'" in message and "data.download is false" in message
    assert f"\n  {raw / 'cifar-10-batches-py' / 'data_batch_3'}\n" in message
    assert "data_batch_1" not in message and torchvision.datasets.CIFAR10.url in message
    assert not (tmp_path / "data").exists()


def test_missing_mnist_files_list_every_path_and_url(tmp_path):
    with pytest.raises(datasets.DataError) as caught:
        datasets.prepare("fashion_mnist", tmp_path / "data", root=str(tmp_path), download=False)
    message = str(caught.value)
    for file in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
                 "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        assert str(tmp_path / "FashionMNIST" / "raw" / file) in message
        assert f"{torchvision.datasets.FashionMNIST.mirrors[0]}{file}.gz" in message


@pytest.mark.parametrize("name, error", [
    ("cifar100", urllib.error.URLError("[Errno -3] Temporary failure in name resolution")),
    ("mnist", RuntimeError("Error downloading train-images-idx3-ubyte.gz")),
])
def test_a_failed_download_is_one_clear_error(tmp_path, monkeypatch, capsys, name, error):
    class_name = CIFAR[name][0] if name in CIFAR else "MNIST"
    calls = []

    class Offline(getattr(torchvision.datasets, class_name)):
        def __init__(self, root, train, download):
            calls.append((root, download))
            raise error

    monkeypatch.setattr(torchvision.datasets, class_name, Offline)
    options = json.dumps({"root": str(tmp_path / "raw")})
    assert cli.main(["prepare-data", name, "--root", str(tmp_path), "--options", options]) == 2
    stderr = capsys.readouterr().err
    assert calls == [(str(tmp_path / "raw"), True)]
    assert "Traceback" not in stderr and f"dataset {name!r}: raw files missing" in stderr
    assert type(error).__name__ in stderr and str(tmp_path / "raw") in stderr
    with pytest.raises(datasets.DataError) as caught:
        datasets.prepare(name, tmp_path, root=str(tmp_path / "raw"))
    assert caught.value.__cause__ is None and caught.value.__suppress_context__


def test_download_fetches_the_missing_files(tmp_path, monkeypatch):
    written = {}

    class Download(torchvision.datasets.CIFAR10):
        def __init__(self, root, train, download):
            written.update(fake_cifar(Path(root), "cifar10"))

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", Download)
    cfg = {"name": "cifar10", "root": str(tmp_path / "raw"), "scale": "none"}
    x, y = prepare_and_load(tmp_path, cfg)["test"]
    assert torch.equal(x.flatten(1), torch.from_numpy(written["test"][0]).float())


def test_bad_options_are_data_errors(tmp_path, data_root, tiny_study):
    with pytest.raises(datasets.DataError, match=r"\[10\] not class indices of dataset 'cifar10'"):
        datasets.load("cifar10", "train", tmp_path, classes=[0, 10])
    fake_mnist(tmp_path / "raw", "mnist")
    for num_train, match in ((8, "has only 7 training images"), (0, "positive integer")):
        with pytest.raises(datasets.DataError, match=match):
            datasets.prepare("mnist", tmp_path, root=str(tmp_path / "raw"), num_train=num_train)
    options = {k: v for k, v in tiny_study["data"].items() if k not in ("name", "scale")}
    with pytest.raises(datasets.DataError, match="channel_standardize needs samples with a channel"):
        datasets.load("mnist1d", "train", data_root, scale="channel_standardize", **options)
    with pytest.raises(datasets.DataError, match="outputs 'classes' needs a data.classes subset"):
        datasets.load("mnist1d", "train", data_root, outputs="classes", **options)
    with pytest.raises(datasets.DataError, match=r"unknown data.outputs 'subset'; allowed: \['all'"):
        datasets.num_outputs({"name": "mnist", "classes": [0, 1], "outputs": "subset"})


def reference_augment(x: torch.Tensor, name: str, seed: int) -> torch.Tensor:
    """A per-sample loop doing what the augment docstring says, with the same draws."""
    generator = torch.Generator().manual_seed(seed)
    offsets = torch.randint(0, 9, (len(x), 2), generator=generator).tolist()
    flips = (torch.randint(0, 2, (len(x),), generator=generator).tolist()
             if name == "crop_flip" else [0] * len(x))
    h, w = x.shape[2:]
    out = []
    for image, (top, left), flip in zip(x, offsets, flips):
        window = F.pad(image, (4, 4, 4, 4))[:, top:top + h, left:left + w]
        out.append(window.flip(-1) if flip else window)
    return torch.stack(out)


@pytest.mark.parametrize("name", ["crop", "crop_flip"])
def test_augmentation_is_a_seeded_padded_crop_and_flip(name):
    x = torch.arange(1, 1 + 64 * 3 * 6 * 10, dtype=torch.float32).reshape(64, 3, 6, 10)
    out = augment.augment(x, name, torch.Generator().manual_seed(5))
    assert out.shape == x.shape and out.dtype == x.dtype
    assert torch.equal(out, reference_augment(x, name, 5))
    assert torch.equal(out, augment.augment(x, name, torch.Generator().manual_seed(5)))
    assert not torch.equal(out, augment.augment(x, name, torch.Generator().manual_seed(6)))


def test_no_augmentation_is_the_identity_and_draws_nothing():
    generator = torch.Generator().manual_seed(0)
    state = generator.get_state()
    x = torch.randn(4, 40)
    assert augment.augment(x, "none", generator) is x
    assert torch.equal(generator.get_state(), state)


@pytest.mark.gpu
def test_augmentation_on_the_gpu_matches_the_cpu():
    x = torch.rand(32, 3, 32, 32)
    on_gpu = augment.augment(x.cuda(), "crop_flip", torch.Generator().manual_seed(1))
    assert torch.equal(on_gpu.cpu(), augment.augment(x, "crop_flip",
                                                     torch.Generator().manual_seed(1)))


def test_augmentation_check_errors():
    with pytest.raises(ValueError, match="unknown augmentation 'flip'"):
        augment.check("flip", (3, 32, 32))
    with pytest.raises(ValueError, match=r"'crop' needs image samples \(C, H, W\)"):
        augment.check("crop", (40,))
    augment.check("none", (40,))
