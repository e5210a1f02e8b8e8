"""Benchmark: training steps per second, vmapped ensemble vs one run at a time.

Both sides train the same M runs (seeds x learning rates of one batch size) for the same number
of steps with flatrep's own code: the baseline calls ``flatrep.train.train_run`` once per run
(what ``train.ensemble: none`` does, minus process start-up), the ensemble calls
``flatrep.ensemble.train_ensemble`` once. Checkpoints are written at step 0 and the last step
only, so the timing is the training loop. Throughput = M * steps / seconds. The final weights of
every member are compared with its single run (they agree to rounding; see tests/test_ensemble).

Cases (``--case``):
  mnist1d_mlp   MNIST-1D, MLP 40-256-256-10 (the quick study), batch 20, CPU target >= 5x
                with 15 members;
  cifar2_vgg    CIFAR-10 classes {0, 1}, the small VGG-11, batch 20, GPU target >= 20x with
                20 members. Without the real CIFAR files it trains on random images written
                in the CIFAR on-disk format (same shapes, same cost).

    python bench/ensemble_training.py --case mnist1d_mlp --members 15 --steps 2000
"""

from __future__ import annotations

import argparse
import pickle
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from flatrep import checkpoint, config, data, ensemble, train

CASES = {
    "mnist1d_mlp": {
        "data": {"name": "mnist1d", "num_samples": 5000, "train_split": 0.8, "seed": 42,
                 "scale": "none"},
        "model": {"name": "mlp", "hidden": [256, 256], "activation": "relu"},
    },
    "cifar2_vgg": {
        "data": {"name": "cifar10", "classes": [0, 1], "scale": "unit_interval"},
        "model": {"name": "vgg_small"},
    },
}


def write_random_cifar(root: Path, per_class: int = 5000) -> None:
    """Random CIFAR-10 images and labels in torchvision's on-disk format (pickled batches)."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for name, count in [(f"data_batch_{i}", per_class * 10 // 5) for i in range(1, 6)] + [
            ("test_batch", 2000)]:
        batch = {b"data": rng.integers(0, 256, (count, 3072), dtype=np.uint8),
                 b"labels": rng.integers(0, 10, count).tolist()}
        (folder / name).write_bytes(pickle.dumps(batch))


def study_for(case: str, steps: int, device: str, mode: str, raw_root: str,
              dtype: str = "float32", compile_ensemble: bool = False) -> dict:
    study = {key: dict(value) for key, value in CASES[case].items()}
    if case == "cifar2_vgg":
        study["data"]["root"] = raw_root
    study["train"] = {"optimizer": "sgd", "loss": "mse", "batch_size": 20, "iterations": steps,
                      "checkpoints": [0, steps], "determinism": mode, "device": device,
                      "dtype": dtype, "compile": compile_ensemble, "grid": [], "seeds": []}
    return study


def member_runs(members: int) -> list[config.Run]:
    """Seeds x the paper's learning rates {0.05, 0.1, 0.2}, ``members`` runs in all."""
    lrs = (0.05, 0.1, 0.2)
    runs = []
    for k in range(members):
        hp = {"lr": lrs[k % 3], "seed": k // 3}
        runs.append(config.Run(config.run_id(hp), hp))
    return runs


def timed(fn) -> float:
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - start


def max_relative_difference(runs, steps, single_root: Path, ensemble_root: Path) -> float:
    worst = 0.0
    for run in runs:
        a = checkpoint.read(single_root / run.run_id / f"step_{steps}.pt")["model"]
        b = checkpoint.read(ensemble_root / run.run_id / f"step_{steps}.pt")["model"]
        for name in a:
            scale = a[name].abs().max().clamp(min=1e-12)
            worst = max(worst, ((a[name] - b[name]).abs().max() / scale).item())
    return worst


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--case", choices=sorted(CASES), default="mnist1d_mlp")
    parser.add_argument("--members", type=int, default=15)
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--mode", choices=("strict", "fast"), default="strict")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--dtype", choices=("float32", "float64"), default="float32",
                        help="float64 shows the members agree with their single runs to "
                             "rounding where float32 trajectories have drifted apart")
    parser.add_argument("--hidden", type=int, nargs="+", default=None,
                        help="MLP widths instead of the case's (mnist1d_mlp only)")
    parser.add_argument("--compile", action="store_true",
                        help="train.compile for the ensemble (the single runs stay eager)")
    parser.add_argument("--raw-root", default=None,
                        help="torchvision data root holding CIFAR-10 (default: random images)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        raw_root = args.raw_root
        if args.case == "cifar2_vgg" and raw_root is None:
            raw_root = str(tmp / "raw")
            write_random_cifar(Path(raw_root))
        study = study_for(args.case, args.steps, args.device, args.mode, raw_root, args.dtype,
                          args.compile)
        if args.hidden:
            study["model"]["hidden"] = args.hidden
        options = {k: v for k, v in study["data"].items() if k != "name"}
        data.prepare(study["data"]["name"], tmp / "data", **options)
        runs = member_runs(args.members)
        sequential = timed(lambda: [
            train.train_run("bench", study, run, tmp / "single" / run.run_id, tmp / "data",
                            args.threads) for run in runs])
        together = timed(lambda: ensemble.train_ensemble(
            "bench", study, runs, tmp / "ensemble", tmp / "data", args.threads))
        difference = max_relative_difference(runs, args.steps, tmp / "single", tmp / "ensemble")

    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available()
                          else ("cpu" if args.device == "auto" else args.device))
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    work = args.members * args.steps
    print(f"case {args.case}, model {study['model']}, {args.members} members x {args.steps} "
          f"steps, device {name}, mode {args.mode}, {args.dtype}, compile {args.compile}, "
          f"{args.threads} thread(s), "
          f"torch {torch.__version__}")
    print("| method | seconds | member-steps/s | speed-up |")
    print("|---|---|---|---|")
    print(f"| one run at a time (train.train_run) | {sequential:.2f} | {work / sequential:.0f} "
          "| 1.0 |")
    print(f"| vmapped ensemble (ensemble.train_ensemble) | {together:.2f} | "
          f"{work / together:.0f} | {sequential / together:.1f} |")
    print(f"max relative difference of the final weights: {difference:.1e}")


if __name__ == "__main__":
    main()
