"""Scan: which MNIST-1D designs reach the late phase (Chen et al. §5) on this machine?

Each design is a variant of the study ``--base`` of params.yaml (dotted overrides below,
``DESIGNS``), trained with flatrep's own vmapped ensemble (``flatrep.training.ensemble``, the runs
of one batch size together, as ``train.ensemble: configs``). At log-spaced checkpoints (in memory,
nothing written) every member is read out and measured:
  * train accuracy and train loss over the whole training split (the study's loss, as the
    cube's ``train_acc`` / ``train_loss``);
  * the sharpness S = (1/n) sum_i ||d f(x_i) / d theta||_F^2 over the first ``--points`` training
    rows, exactly (the cube's ``sharpness``: Chen et al. eq. 3, the Gauss-Newton trace of the
    1/2-MSE loss).
Per design it reports (a) the training wall time (measurements excluded), (b) the step at which
each run first has train accuracy 1 and train loss < ``stats.interpolation_loss``, (c) per run
the peak S, the final S and final / peak (``flatrep.analysis.late_phase.fall``), and how many runs
show the late-phase fall: peak at or after interpolation and final <= ``--fraction`` x peak (the
default study's target is 80 % of runs at 0.8).

    .venv/bin/python bench/regime_scan.py --design quick --design n1000_w32x2_1m
    .venv/bin/python bench/regime_scan.py --list
"""

from __future__ import annotations

import argparse
import copy
import json
import time

import numpy as np
import torch

from flatrep.analysis import late_phase
from flatrep.cube.measuring import evaluate
from flatrep.data import datasets
from flatrep.measures import jacobian
from flatrep.params import studies
from flatrep.training import loop, preparation
from flatrep.training.ensemble import Ensemble

#: Candidate designs: dotted overrides of the base study, whose grid, loss and optimizer each
#: keeps (for ``quick``: the paper's lr x batch cross, lr {0.05, 0.1, 0.2} at batch 20 and
#: batch {8, 32} at lr 0.1, with MSE and plain SGD). Each names its data split in full, so that
#: it stays the design of its name when the base study changes.
_ROWS_1000 = {"data.num_samples": 1250, "data.train_split": 0.8}
_ROWS_500 = {"data.num_samples": 625, "data.train_split": 0.8}
DESIGNS = {
    "quick": {},
    "quick_former": {"data.num_samples": 5000, "data.train_split": 0.8,
                     "model.hidden": [256, 256], "train.iterations": 50_000},
    "n1000_w64x2_400k": {**_ROWS_1000, "model.hidden": [64, 64], "train.iterations": 400_000},
    "n1000_w32x2_1m": {**_ROWS_1000, "model.hidden": [32, 32], "train.iterations": 1_000_000},
    "n500_w64x3_400k": {**_ROWS_500, "model.hidden": [64, 64, 64],
                        "train.iterations": 400_000},
    "n1000_w128x3_200k": {**_ROWS_1000, "model.hidden": [128, 128, 128],
                          "train.iterations": 200_000},
    "n4000_w512x2_100k": {"data.num_samples": 5000, "data.train_split": 0.8,
                          "model.hidden": [512, 512], "train.iterations": 100_000},
    "n1000_w64x2_tanh_400k": {**_ROWS_1000, "model.hidden": [64, 64],
                              "model.activation": "tanh", "train.iterations": 400_000},
    # False-Friend designs (use with --base false_friend_l2 / false_friend_adam): cross-entropy
    # runs that must end at a minimum (train accuracy >= 99 %)
    "ff_former": {"data.num_samples": 5000, "data.train_split": 0.8,
                  "train.iterations": 20_000},
    "ff_n500_20k": {**_ROWS_500, "train.iterations": 20_000},
    "ff_n1000_40k": {**_ROWS_1000, "train.iterations": 40_000},
    "ff_n1000_w64_40k": {**_ROWS_1000, "model.hidden": [64], "train.iterations": 40_000},
}


def design_study(base: dict, overrides: dict, checkpoints: int, seeds: list[int],
                 compile_ensemble: bool) -> dict:
    """The base study with the design's overrides, log-spaced checkpoints and the scan's seeds,
    the runs of one batch size in one ensemble."""
    study = copy.deepcopy(base)
    for dotted, value in overrides.items():
        *parents, leaf = dotted.split(".")
        node = study
        for key in parents:
            node = node[key]
        node[leaf] = value
    study["train"].update(checkpoints={"count": checkpoints, "spacing": "log"}, seeds=seeds,
                          ensemble="configs", compile=compile_ensemble)
    return study


def measure_member(model: torch.nn.Module, setup: preparation.Setup, labels: torch.Tensor,
                   points: int) -> dict:
    """Train accuracy and loss over the training split as the measure job computes them
    (``flatrep.cube.measuring.evaluate``), and S over its first ``points`` rows."""
    loss, acc, _ = evaluate(model, setup.x, labels, setup.num_outputs, setup.loss)
    sharpness = jacobian.per_sample_jacobians(model, setup.x[:points], grams=(), moments=(),
                                              input_jacobians=False)["param_sq"].mean()
    return {"train_acc": acc, "train_loss": loss, "sharpness": float(sharpness)}


class ScannedEnsemble(Ensemble):
    """An ensemble group trained from scratch whose scheduled checkpoints are measured in
    memory (``measure_member``) instead of written; ``seconds`` is its training time alone."""

    def __init__(self, study: dict, runs, setup: preparation.Setup, labels: torch.Tensor,
                 points: int):
        super().__init__("scan", study, runs, setup, out_root=".")
        self.labels, self.points = labels, points
        self.records = {run.run_id: [] for run in runs}
        self.seconds, self.clock = 0.0, time.perf_counter()

    def resume_point(self) -> None:
        return None

    def save(self, step: int) -> None:
        self.seconds += time.perf_counter() - self.clock
        for m, run in enumerate(self.runs):
            self.records[run.run_id].append({"step": step, **measure_member(
                self.member(m), self.setup, self.labels, self.points)})
        self.clock = time.perf_counter()


def scan_design(study: dict, data_root: str, threads: int, points: int) -> dict:
    """Train every ensemble group of ``study``; the trajectories of its runs and the time."""
    datasets.prepare(study["data"]["name"], data_root,
                     **{k: v for k, v in study["data"].items() if k != "name"})
    trajectories, seconds = {}, 0.0
    for runs in studies.ensemble_groups(study).values():
        setup = preparation.prepare(study, data_root, threads)
        labels = datasets.load_study_split(study["data"], "train", data_root)[1].to(setup.device)
        scan = ScannedEnsemble(study, runs, setup, labels, points)
        loop.train(scan, setup.checkpoint_steps, f"{len(runs)} runs")
        seconds += scan.seconds + time.perf_counter() - scan.clock
        trajectories.update(scan.records)
    return {"seconds": seconds, "runs": trajectories,
            "train_rows": datasets.split_sizes(study["data"], data_root)["train"]}


def summarise(result: dict, threshold: float, fraction: float) -> list[dict]:
    """Per run: interpolation step, peak, final, ratio and whether it shows the fall."""
    rows = []
    for run_id, records in result["runs"].items():
        column = {key: np.array([r[key] for r in records])
                  for key in ("step", "train_acc", "train_loss", "sharpness")}
        fall = late_phase.fall(column["step"], column["sharpness"], column["train_acc"],
                               column["train_loss"], threshold)
        rows.append({"run": run_id, "interpolation_step": fall.interpolation_step,
                     "peak": fall.peak, "peak_step": fall.peak_step, "final": fall.final,
                     "ratio": fall.ratio, "falls": fall.falls(fraction),
                     "final_train_acc": float(column["train_acc"][-1]),
                     "final_train_loss": float(column["train_loss"][-1])})
    return rows


def markdown(name: str, study: dict, result: dict, rows: list[dict], fraction: float) -> str:
    """One design's header line and per-run table."""
    seconds = result["seconds"]
    member_steps = len(rows) * study["train"]["iterations"]
    falls = sum(row["falls"] for row in rows)
    widths = "-".join(map(str, study["model"]["hidden"]))
    lines = [f"### {name}: n = {result['train_rows']} train rows, MLP 40-{widths}-10 "
             f"{study['model']['activation']}, {study['train']['iterations']:,} iterations",
             "",
             f"training {seconds:.0f} s ({member_steps / seconds:,.0f} member-steps/s); "
             f"**{falls} of {len(rows)} runs** end at S <= {fraction} x a peak that comes "
             "after interpolation", "",
             "| run | interpolates at step | peak S (step) | final S | final / peak | "
             "final train acc | final train loss |", "|---|---|---|---|---|---|---|"]
    for row in rows:
        at = "never" if row["interpolation_step"] is None else f"{row['interpolation_step']:,}"
        lines.append(f"| {row['run']} | {at} | {row['peak']:.4g} ({row['peak_step']:,}) | "
                     f"{row['final']:.4g} | {row['ratio']:.3f} | {row['final_train_acc']:.4f} "
                     f"| {row['final_train_loss']:.2e} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--design", action="append", choices=sorted(DESIGNS),
                        help="a design to scan (repeatable; default: all)")
    parser.add_argument("--list", action="store_true", help="print the designs and exit")
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--base", default="quick", help="the study the designs vary")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--checkpoints", type=int, default=40, help="log-spaced checkpoints")
    parser.add_argument("--points", type=int, default=100, help="training rows for S")
    parser.add_argument("--fraction", type=float, default=0.8,
                        help="a run falls when final S <= fraction x its peak")
    parser.add_argument("--iterations", type=int, help="override every design's length")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--compile", action="store_true", help="train.compile for the ensemble")
    parser.add_argument("--data-root", default="data")
    parser.add_argument("--json", help="also write the trajectories here")
    args = parser.parse_args()
    if args.list:
        for name, overrides in DESIGNS.items():
            print(f"{name}: {overrides}")
        return
    base = studies.study_config(studies.load_params(args.params), args.base)
    threshold = base["stats"]["interpolation_loss"]
    results = {}
    for name in args.design or list(DESIGNS):
        study = design_study(base, DESIGNS[name], args.checkpoints, args.seeds, args.compile)
        if args.iterations:
            study["train"]["iterations"] = args.iterations
        result = scan_design(study, args.data_root, args.threads, args.points)
        rows = summarise(result, threshold, args.fraction)
        print(markdown(name, study, result, rows, args.fraction), flush=True)
        results[name] = {"overrides": DESIGNS[name], **result, "summary": rows}
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(results, handle, indent=1)


if __name__ == "__main__":
    main()
