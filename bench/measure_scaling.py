"""Benchmark: cost of measuring a run against the number of points and of checkpoints.

Trains one short run of the ``quick`` study's model on MNIST-1D (prepared into a temporary
directory), then times ``flatrep.cube.measuring.measure_checkpoints`` with every measure family of
the ``quick`` study switched on:

* points: one checkpoint, ``measure.points`` and ``measure.curvature.points`` scaled together
  by 1, 2, 4, 8 (the per-sample Jacobian pass and every HVP are linear in the rows);
* checkpoints: fixed points, 1, 2, 4, 8 checkpoints of the same run.

Prints a Markdown table of seconds per setting, the exponent b of a least-squares fit
seconds ~ a * size^b (b = 1 is linear; below 1 means fixed costs such as loading the data
still weigh in at the small end) and the exponent between successive sizes.

    python bench/measure_scaling.py [--base-points 50] [--threads 2] [--repeats 2]
"""

from __future__ import annotations

import argparse
import copy
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml

from flatrep.cube import measuring
from flatrep.data import datasets
from flatrep.params import studies
from flatrep.training import single

SIZES = (1, 2, 4, 8)


def quick_study() -> dict:
    params = yaml.safe_load((Path(__file__).parents[1] / "params.yaml").read_text())
    return params["studies"]["quick"]


def best_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def exponent(sizes, seconds) -> float:
    return float(np.polyfit(np.log(sizes), np.log(seconds), 1)[0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--base-points", type=int, default=50)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()

    study = quick_study()
    study["train"].update(iterations=800, checkpoints=[100 * (k + 1) for k in range(8)],
                          device="cpu")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "data"
        datasets.prepare(study["data"]["name"], root,
                         **{k: v for k, v in study["data"].items() if k != "name"})
        run = studies.expand_runs(study)[0]
        paths = single.train_run("quick", study, run, Path(tmp) / "run", root,
                                 threads=args.threads)

        def measured(points: int, checkpoints: int):
            cfg = copy.deepcopy(study["measure"])
            cfg["points"] = points
            cfg["curvature"]["points"] = 2 * points
            cfg["curvature"]["rank"]["points"] = max(points // 4, 1)
            return lambda: measuring.measure_checkpoints(paths[:checkpoints], cfg, root,
                                                         args.threads)

        rows = []
        point_sizes = [args.base_points * s for s in SIZES]
        point_times = [best_time(measured(p, 1), args.repeats) for p in point_sizes]
        rows += [("points (curvature rows = 2x)", p, t) for p, t in zip(point_sizes, point_times)]
        ckpt_times = [best_time(measured(args.base_points, k), args.repeats) for k in SIZES]
        rows += [("checkpoints", k, t) for k, t in zip(SIZES, ckpt_times)]

    print(f"MLP 40-{'-'.join(map(str, study['model']['hidden']))}-10, every measure family of "
          f"the quick study, {args.threads} threads, best of {args.repeats}\n")
    print("| axis | size | seconds |\n|---|---|---|")
    for axis, size, seconds in rows:
        print(f"| {axis} | {size} | {seconds:.2f} |")
    print(f"\ncost ~ points^{exponent(point_sizes, point_times):.2f}, "
          f"cost ~ checkpoints^{exponent(SIZES, ckpt_times):.2f} (1 = linear)")
    local = [exponent(point_sizes[i:i + 2], point_times[i:i + 2]) for i in range(len(SIZES) - 1)]
    print(f"exponent between successive point sizes: {', '.join(f'{b:.2f}' for b in local)}")
    marginal = np.diff(ckpt_times) / np.diff(SIZES)
    print(f"marginal seconds per extra checkpoint: {', '.join(f'{m:.2f}' for m in marginal)}")


if __name__ == "__main__":
    main()
