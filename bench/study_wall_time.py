"""Benchmark: the wall time of a whole study on this machine, extrapolated from short runs.

A study's cost is its training (one process per ``train.ensemble`` group, run one after the
other on one device) plus measuring every run's checkpoints. Training every group for its full
``train.iterations`` takes hours, so each group is trained for a few steps with the study's own
config: once at a quarter of ``--steps`` (the job's first call: library start-up, data to the
device, cuDNN autotuning for the group's batch shape, compilation, first-use costs), then at a
quarter of ``--steps`` and at ``--steps`` again, fitted as ``t(n) = fixed + n * per_step``. A
job's start-up is the first call less its steps at ``per_step``, and the group's full time is
``start-up + iterations * per_step`` (writing the study's other checkpoints is not counted).
Measuring is timed on ``--measure-runs`` runs' checkpoints of the short training and scaled by
the study's runs x checkpoints (every checkpoint of a study is measured alike).

Without the dataset's real files, studies of the torchvision datasets (MNIST, Fashion-MNIST,
CIFAR-10, CIFAR-100) train on random images written in that dataset's on-disk format at its real
split sizes (``FULL_SPLITS``): the same shapes and sample counts, hence the same cost, but no
meaningful accuracy.

    python bench/study_wall_time.py --study chen_cifar2_vgg_correlation --steps 400
"""

from __future__ import annotations

import argparse
import copy
import tempfile
from pathlib import Path

import torch
from ensemble_training import fit_line, timed

from flatrep import determinism
from flatrep.cube import measuring
from flatrep.data import datasets, synthetic
from flatrep.params import studies
from flatrep.training import ensemble, single

#: (train, test) images of each torchvision dataset, for the random stand-in files.
FULL_SPLITS = {"mnist": (60000, 10000), "fashion_mnist": (60000, 10000),
               "cifar10": (50000, 10000), "cifar100": (50000, 10000)}


def short_study(study: dict, steps: int, raw_root: str | None) -> dict:
    """The study trained for ``steps`` iterations with checkpoints at 0 and ``steps``."""
    short = copy.deepcopy(study)
    short["train"].update(iterations=steps, checkpoints=[0, steps])
    if raw_root is not None:
        short["data"].update(root=raw_root, download=False)
    return short


def train_group(name: str, study: dict, runs: list[studies.Run], out: Path, data_root: Path,
                threads: int) -> float:
    """Seconds to train one ensemble group (or one run, for ``train.ensemble: none``)."""
    if study["train"].get("ensemble", "none") == "none":
        return timed(lambda: single.train_run(name, study, runs[0], out / runs[0].run_id,
                                              data_root, threads))
    return timed(lambda: ensemble.train_ensemble(name, study, runs, out, data_root, threads))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--study", default="chen_cifar2_vgg_correlation")
    parser.add_argument("--steps", type=int, default=400,
                        help="iterations of the longer short run (the other is a quarter)")
    parser.add_argument("--measure-runs", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--device", default=None,
                        help="train.device and measure.device for the timing (default: the "
                             "study's own, auto = CUDA when present)")
    parser.add_argument("--raw-root", default=None,
                        help="torchvision root with the real files (default: random images "
                             "in the dataset's format)")
    args = parser.parse_args()

    study = studies.study_config(studies.load_params(args.params), args.study)
    if args.device is not None:
        study["train"]["device"] = study["measure"]["device"] = args.device
    full_steps = studies.checkpoint_steps(study["train"])
    groups = studies.ensemble_groups(study)
    n_runs = sum(len(runs) for runs in groups.values())
    lengths = (max(args.steps // 4, 1), args.steps)
    device = determinism.pick_device(study["train"].get("device", "auto"))
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    # Rows are printed as they are timed, so a run stopped by a time limit keeps them.
    print(f"study {args.study}: {n_runs} runs x {full_steps[-1]} iterations, "
          f"{len(full_steps)} checkpoints each; device {name}, torch {torch.__version__}; "
          f"fitted on {lengths[0]} and {lengths[1]} steps", flush=True)
    print("| group | members | start-up, s | seconds/step | member-steps/s | "
          "hours (full length) |")
    print("|---|---|---|---|---|---|", flush=True)
    train_hours = 0.0
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        raw_root = args.raw_root
        dataset = study["data"]["name"]
        if dataset in FULL_SPLITS and raw_root is None:
            raw_root = str(tmp / "raw")
            num_train, num_test = FULL_SPLITS[dataset]
            synthetic.write_raw_files(dataset, raw_root, num_train, num_test)
        options = {k: v for k, v in short_study(study, 1, raw_root)["data"].items()
                   if k != "name"}
        datasets.prepare(dataset, tmp / "data", **options)
        for group, runs in groups.items():
            # The first call of the shorter length runs every code path once (library start-up,
            # cuDNN autotuning for this group's batch shape, compilation) and is timed apart.
            seconds = [train_group(args.study, short_study(study, n, raw_root), runs,
                                   tmp / f"runs_{i}_{n}", tmp / "data", args.threads)
                       for i, n in enumerate((lengths[0],) + lengths)]
            per_step = fit_line(lengths, seconds[1:])[1]
            start_up = max(seconds[0] - lengths[0] * per_step, 0.0)   # a job's one-off cost
            hours = (start_up + per_step * full_steps[-1]) / 3600
            train_hours += hours
            print(f"| {group} | {len(runs)} | {start_up:.1f} | {per_step:.4f} | "
                  f"{len(runs) / per_step:.0f} | {hours:.2f} |", flush=True)
        measured = [run for runs in groups.values() for run in runs][:args.measure_runs]
        checkpoint_paths = [[tmp / f"runs_2_{lengths[1]}" / run.run_id / f"step_{k}.pt"
                             for k in (0, lengths[1])] for run in measured]
        measure_seconds = timed(lambda: [measuring.measures_file(paths, study["measure"],
                                                                 tmp / "data", args.threads)
                                         for paths in checkpoint_paths])
    per_checkpoint = measure_seconds / (2 * len(measured))
    measure_hours = per_checkpoint * n_runs * len(full_steps) / 3600
    print(f"| measures | {n_runs} runs x {len(full_steps)} checkpoints | | "
          f"{per_checkpoint:.1f} s/checkpoint | | {measure_hours:.2f} |")
    print(f"| **whole study** | | | | | **{train_hours + measure_hours:.2f}** |")


if __name__ == "__main__":
    main()
