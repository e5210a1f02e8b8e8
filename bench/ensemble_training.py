"""Benchmark: training steps per second, vmapped ensemble vs one run at a time.

Both sides train the same M runs (seeds x learning rates of one batch size) for the same number
of steps with flatrep's own code: the baseline calls ``flatrep.training.single.train_run`` once per
run (what ``train.ensemble: none`` does, minus process start-up), the ensemble calls
``flatrep.training.ensemble.train_ensemble`` once. Checkpoints are written at step 0 and the last
step only. Throughput = M * steps / seconds. Each side is timed at ``--steps`` and at a quarter of
it and fitted as ``t(n) = fixed + n * per_step``: the per-step speed-up is what a long study
(hundreds of thousands of iterations) gains, where start-up and compilation no longer count.
A first call of each side at the shorter length (device start-up, cuDNN autotuning,
``torch.compile``, first-use costs of later steps) is timed and reported apart. The final
weights of every member are compared with its single run (they agree to rounding; see
tests/test_ensemble). With ``--processes N`` a second baseline runs the M single runs N at a
time in processes of their own (one torch thread each, a fresh process per run): what
``snakemake --cores N`` does with ``train.ensemble: none``, process start-up included.

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
import multiprocessing
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import torch

from flatrep import checkpoint, determinism
from flatrep.data import datasets, synthetic
from flatrep.params import studies
from flatrep.training import ensemble, single

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


def study_for(case: str, steps: int, device: str, mode: str, raw_root: str,
              dtype: str = "float32", compile_ensemble: bool = False) -> dict:
    study = {key: dict(value) for key, value in CASES[case].items()}
    if case == "cifar2_vgg":
        study["data"]["root"] = raw_root
    study["train"] = {"optimizer": "sgd", "loss": "mse", "batch_size": 20, "iterations": steps,
                      "checkpoints": [0, steps], "determinism": mode, "device": device,
                      "dtype": dtype, "compile": compile_ensemble, "grid": [], "seeds": []}
    return study


def member_runs(members: int) -> list[studies.Run]:
    """Seeds x the paper's learning rates {0.05, 0.1, 0.2}, ``members`` runs in all."""
    lrs = (0.05, 0.1, 0.2)
    runs = []
    for k in range(members):
        hp = {"lr": lrs[k % 3], "seed": k // 3}
        runs.append(studies.Run(studies.run_id(hp), hp))
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


def fit_line(lengths: tuple[int, int], seconds: tuple[float, float]) -> tuple[float, float]:
    """(fixed, per_step) of t(n) = fixed + n * per_step through two timings; the fixed part
    (start-up, compilation, checkpoints) is clipped at 0 against timing noise. Timings too
    short for the per-step time to stand out of the noise are refused."""
    if seconds[1] <= seconds[0]:
        raise ValueError(f"{lengths[1]} steps took {seconds[1]:.3f} s, no longer than "
                         f"{lengths[0]} steps ({seconds[0]:.3f} s): too short to tell the "
                         "per-step time from start-up; increase --steps")
    per_step = (seconds[1] - seconds[0]) / (lengths[1] - lengths[0])
    return max(seconds[0] - per_step * lengths[0], 0.0), per_step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--case", choices=sorted(CASES), default="mnist1d_mlp")
    parser.add_argument("--members", type=int, default=15)
    parser.add_argument("--steps", type=int, default=2000,
                        help="steps of the longer timing (the other is a quarter of it)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--mode", choices=("strict", "fast"), default="strict")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--dtype", choices=("float32", "float64"), default="float32",
                        help="float64 shows the members agree with their single runs to "
                             "rounding where float32 trajectories have drifted apart")
    parser.add_argument("--hidden", type=int, nargs="+", default=None,
                        help="MLP widths instead of the case's (mnist1d_mlp only)")
    parser.add_argument("--compile", choices=("no", "yes", "both"), default="no",
                        help="train.compile for the ensemble: without, with, or both side by "
                             "side against one baseline (the single runs stay eager)")
    parser.add_argument("--processes", type=int, default=0,
                        help="also time the single runs N at a time in parallel processes of "
                             "one thread each (snakemake --cores N without ensembles)")
    parser.add_argument("--raw-root", default=None,
                        help="torchvision data root holding CIFAR-10 (default: random images)")
    args = parser.parse_args()
    lengths = (max(args.steps // 4, 1), args.steps)
    variants = {"no": (False,), "yes": (True,), "both": (False, True)}[args.compile]

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        raw_root = args.raw_root
        if args.case == "cifar2_vgg" and raw_root is None:
            raw_root = str(tmp / "raw")
            synthetic.write_raw_files("cifar10", raw_root, num_train=50000, num_test=2000)

        def study(steps: int, compiled: bool = False) -> dict:
            built = study_for(args.case, steps, args.device, args.mode, raw_root, args.dtype,
                              compiled)
            if args.hidden:
                built["model"]["hidden"] = args.hidden
            return built

        options = {k: v for k, v in study(1)["data"].items() if k != "name"}
        datasets.prepare(study(1)["data"]["name"], tmp / "data", **options)
        runs = member_runs(args.members)

        def one_at_a_time(steps: int, members: list[studies.Run]) -> float:
            root = tmp / f"single_{steps}"
            return timed(lambda: [single.train_run("bench", study(steps), run, root / run.run_id,
                                                   tmp / "data", args.threads)
                                  for run in members])

        def in_processes(steps: int, members: list[studies.Run]) -> float:
            root = tmp / f"processes_{steps}"
            with ProcessPoolExecutor(args.processes, multiprocessing.get_context("spawn"),
                                     max_tasks_per_child=1) as pool:
                return timed(lambda: [job.result() for job in [
                    pool.submit(single.train_run, "bench", study(steps), run,
                                root / run.run_id, tmp / "data", 1) for run in members]])

        def together(steps: int, compiled: bool) -> float:
            return timed(lambda: ensemble.train_ensemble(
                "bench", study(steps, compiled), runs, tmp / f"ensemble_{compiled}_{steps}",
                tmp / "data", args.threads))

        # First calls (of the shorter length, so every code path has run once), timed apart:
        # library and device start-up, cuDNN autotuning, compilation.
        rows = [("one run at a time (single.train_run)", one_at_a_time(lengths[0], runs[:1]),
                 tuple(one_at_a_time(steps, runs) for steps in lengths), None)]
        if args.processes:
            rows.append((f"{args.processes} runs at a time, a process of 1 thread each",
                         in_processes(lengths[0], runs[:args.processes]),
                         tuple(in_processes(steps, runs) for steps in lengths),
                         max_relative_difference(runs, args.steps, tmp / f"single_{args.steps}",
                                                 tmp / f"processes_{args.steps}")))
        for compiled in variants:
            first = together(lengths[0], compiled)
            label = "vmapped ensemble (ensemble.train_ensemble" + \
                (", train.compile)" if compiled else ")")
            rows.append((label, first, tuple(together(steps, compiled) for steps in lengths),
                         max_relative_difference(runs, args.steps, tmp / f"single_{args.steps}",
                                                 tmp / f"ensemble_{compiled}_{args.steps}")))

    device = determinism.pick_device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"case {args.case}, model {study(1)['model']}, {args.members} members x "
          f"{args.steps} steps (fit on {lengths[0]} and {lengths[1]}), device {name}, mode "
          f"{args.mode}, {args.dtype}, {args.threads} thread(s), torch {torch.__version__}")
    print(f"| method | first call ({lengths[0]} steps), s | seconds | member-steps/s | "
          "speed-up | fixed, s | ms per step of all members | speed-up per step | max rel. "
          "difference of the final weights |")
    print("|---|---|---|---|---|---|---|---|---|")
    work = args.members * args.steps
    base_seconds = rows[0][2]
    base = fit_line(lengths, base_seconds)
    for label, first_call, seconds, difference in rows:
        fixed, per_step = fit_line(lengths, seconds)
        print(f"| {label} | {first_call:.2f} | {seconds[1]:.2f} | {work / seconds[1]:.0f} | "
              f"{base_seconds[1] / seconds[1]:.1f} | {fixed:.2f} | {per_step * 1e3:.2f} | "
              f"{base[1] / per_step:.1f} | "
              f"{'–' if difference is None else f'{difference:.1e}'} |")


if __name__ == "__main__":
    main()
