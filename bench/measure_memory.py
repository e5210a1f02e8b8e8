"""Benchmark: peak memory of a measure job's batched passes against ``measure.memory_mb``.

``measure.memory_mb`` (the budget B) sizes the batches of a measure job's largest
intermediates. This runs each batched pass once, on the shipped studies' networks in float64
(random initialisation, inputs and labels; the study's K, probes, steps and point counts),
and reports how far the process's memory rises during it, beside the part B bounds:

* ``hvp``: one pass, by the study's HVP engine (``measure.curvature.hvp``, ``auto`` by
  default, as a measure job resolves it for a batch of probes), of the probes and points
  ``memory.hvp_chunking`` picks for the study's ``probe_chunk`` and curvature points; bounded
  part probes * (PARAMETER_COPIES * P + ACTIVATION_COPIES * A * points) floats (A: the floats
  one sample's forward pass allocates, ``memory.activation_floats``); for double backward
  REVERSE_PARAMETER_COPIES in place of PARAMETER_COPIES, plus GRAPH_COPIES * A * points for
  its kept gradient graph.
* ``grams``: the curvature core's per-sample Jacobians (J_i J_i^T only, ``input_jacobians``
  off) of ``--jacobian-points`` points; bounded part one chunk's K rows a sample (dense) or one
  row block, each row P floats and A for its VJP's cotangents (``jacobian.row_bytes``,
  ``jacobian.generic_chunking``); nothing else grows with the points but the K x K
  Grams.
* ``grams_with_input``: the same call keeping df/dx and df/dh_l, as the suite did before,
  which hold K (d + sum_l d_l) floats a point (``jacobian.input_jacobian_bytes``) for every
  point at once, outside the budget.
* ``points``: ``measuring.point_measures`` on the study's ``measure.points`` (capped by
  ``--jacobian-points``); bounded part one piece's input and layer Jacobians and one of its
  chunks' parameter Jacobian (dense) or row block, each within half the budget.
* ``lanczos``: one batch of output-curvature Lanczos runs (``memory.batch_rows``
  rows); bounded part (steps + ROW_VECTORS) * P floats a row.

Each pass runs in a fresh process after the same pass on one point (lazy initialisation,
kernel caches), then ``malloc_trim``; its rise is the peak resident memory (Linux VmHWM,
reset through /proc/self/clear_refs) minus the resident memory before it, or on CUDA
``max_memory_allocated`` minus ``memory_allocated``. Prints a Markdown table.

    python bench/measure_memory.py [--studies quick ff_cifar100_cnn_l2 ...]
        [--passes hvp grams ...] [--budget-mb 256] [--jacobian-points 16] [--threads 2]
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import math
import subprocess
import sys
from pathlib import Path

import torch

from flatrep import losses, models
from flatrep.cube import measuring
from flatrep.data import datasets
from flatrep.measures import curvature, jacobian, memory, output_curvature, trace_estimators
from flatrep.params import studies

#: Sample shapes of the datasets the shipped studies use.
SAMPLE_SHAPES = {"mnist1d": (40,), "mnist": (1, 28, 28), "fashion_mnist": (1, 28, 28),
                 "cifar10": (3, 32, 32), "cifar100": (3, 32, 32)}
PASSES = ("hvp", "grams", "grams_with_input", "points", "lanczos")
DEFAULT_STUDIES = ("quick", "chen_fmnist_mlp_trajectory", "chen_cifar2_vgg_trajectory",
                   "chen_cifar2_vit_trajectory", "ff_cifar100_cnn_l2")
MIB = 1 << 20


def study_setup(name: str) -> dict:
    """The shipped study's network and the sizes its measure job uses."""
    study = studies.load_params(Path(__file__).parents[1] / "params.yaml")["studies"][name]
    data_cfg, measure_cfg = study["data"], study["measure"]
    curvature_cfg = measure_cfg.get("curvature", {})
    lanczos = {**studies.CURVATURE_FAMILIES["output_curvature"],
               **(curvature_cfg.get("output_curvature") or {})}
    return {"model": study["model"], "shape": SAMPLE_SHAPES[data_cfg["name"]],
            "outputs": datasets.num_outputs(data_cfg),
            "loss": study["train"]["loss"], "points": measure_cfg["points"],
            "chunk_size": measure_cfg["chunk_size"],
            "curvature_points": curvature_cfg.get("points", 256),
            "probe_chunk": curvature_cfg.get("probe_chunk", 16),
            "hvp": curvature_cfg.get("hvp", curvature.DEFAULT_HVP),
            "lanczos_steps": lanczos["steps"], "lanczos_point_chunk": lanczos["point_chunk"]}


class Memory:
    """Resident memory of this process (CPU) or allocated memory (CUDA), in bytes."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"

    def settle(self) -> int:
        """Free what can be freed, restart the peak; the current use."""
        gc.collect()
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            return torch.cuda.memory_allocated()
        ctypes.CDLL("libc.so.6").malloc_trim(0)
        Path("/proc/self/clear_refs").write_text("5")
        return self._status("VmRSS")

    def peak(self) -> int:
        if self.cuda:
            torch.cuda.synchronize()
            return torch.cuda.max_memory_allocated()
        return self._status("VmHWM")

    @staticmethod
    def _status(field: str) -> int:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
        raise RuntimeError(f"no {field} in /proc/self/status")


def parameter_jacobian_block(model, x: torch.Tensor, k: int, chunk_size: int, points: int,
                             budget: int) -> tuple[str, int]:
    """(path, bytes) of the largest parameter-Jacobian block ``per_sample_jacobians`` holds
    for ``points`` points: none on the Linear closed forms, one chunk's K rows a sample on the
    dense way, or one row block (``jacobian.generic_chunking``)."""
    if jacobian.only_linear_parameters(model):
        return "linear closed forms", 0
    row_bytes = jacobian.row_bytes(model, x)
    samples, rows = jacobian.generic_chunking(k, row_bytes, chunk_size, budget)
    if rows is None:
        return f"dense, {samples} sample(s) a chunk", min(samples, points) * k * row_bytes
    return f"row blocks of {rows}", rows * row_bytes


def prepare(setup: dict, what: str, budget: int, jacobian_points: int, device):
    """(run(points), points, chunking, bounded bytes) of one pass: ``run`` does the pass on
    the first ``points`` points."""
    torch.manual_seed(0)
    k = setup["outputs"]
    model = models.build(setup["model"], setup["shape"], k).double().eval().to(device)
    loss = losses.get(setup["loss"])
    n = max(setup["curvature_points"], setup["points"])
    x = torch.randn(n, *setup["shape"], dtype=torch.float64, device=device)
    targets = loss.targets(torch.randint(0, k, (n,), device=device), k, x.dtype)
    num_params = sum(p.numel() for p in model.parameters())
    itemsize = x.element_size()
    if what == "hvp":
        points = setup["curvature_points"]
        job = curvature.HessianOperator(model, x[:points], targets[:points], setup["hvp"],
                                        setup["probe_chunk"], loss=loss, max_bytes=budget)
        engine = job.engine(setup["probe_chunk"])    # the engine and chunks of a measure job
        reverse = engine == "double_backward"
        probes, chunk = job.probe_chunk, job.point_chunk
        del job
        floats = memory.activation_floats(model, x)
        copies = memory.REVERSE_PARAMETER_COPIES if reverse else memory.PARAMETER_COPIES
        bounded = (probes * (copies * num_params + memory.ACTIVATION_COPIES * floats * chunk)
                   + (memory.GRAPH_COPIES if reverse else 0) * floats * chunk) * itemsize
        vectors = trace_estimators.rademacher(probes, num_params,
                                              torch.Generator().manual_seed(0), device=device)

        def run(points):
            operator = curvature.HessianOperator(model, x[:points], targets[:points], engine,
                                                 probe_chunk=probes, loss=loss, max_bytes=budget,
                                                 point_chunk=points)
            return operator.apply(vectors)
        return run, chunk, f"{engine}: {chunk} points x {probes} probes", bounded
    if what in ("grams", "grams_with_input"):
        chunking, bounded = parameter_jacobian_block(model, x, k, 32, jacobian_points, budget)

        def run(points):
            return jacobian.per_sample_jacobians(model, x[:points], moments=(),
                                                 max_bytes=budget, grams=("param_gram",),
                                                 input_jacobians=what == "grams_with_input")
        return run, jacobian_points, chunking, bounded
    if what == "points":
        piece = measuring.points_per_piece(model, x, setup["chunk_size"], budget)
        points = min(setup["points"], jacobian_points)
        _, block = parameter_jacobian_block(model, x, k, setup["chunk_size"],
                                            min(piece, points), budget // 2)

        def run(count):
            return measuring.point_measures(model, x[:count], setup["chunk_size"], (1, 2), budget)
        return (run, points, f"pieces of {piece}",
                min(piece, points) * jacobian.input_jacobian_bytes(model, x) + block)
    steps = min(setup["lanczos_steps"], num_params)
    rows = memory.batch_rows(num_params, steps, itemsize, setup["lanczos_point_chunk"] * k,
                             budget)
    points = math.ceil(rows / k)

    def run(count):
        operator = curvature.HessianOperator(model, x[:count], targets[:count], loss=loss,
                                             point_chunk=count)
        return output_curvature.output_hessian_norms(
            operator, steps, torch.Generator().manual_seed(0),
            setup["lanczos_point_chunk"], budget)
    return (run, points, f"{rows} rows x {steps} steps",
            rows * (steps + memory.ROW_VECTORS) * num_params * itemsize)


def one_pass(args) -> dict:
    """Measure one pass in this process; the row for the table."""
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    setup = study_setup(args.one[0])
    run, points, chunking, bounded = prepare(setup, args.one[1], args.budget_mb * MIB,
                                             args.jacobian_points, device)
    memory = Memory(device)
    run(1)
    before = memory.settle()
    result = run(points)
    rise = memory.peak() - before
    del result
    model = models.build(setup["model"], setup["shape"], setup["outputs"])
    return {"study": args.one[0], "pass": args.one[1], "points": points,
            "params": sum(p.numel() for p in model.parameters()), "chunking": chunking,
            "bounded_mib": bounded / MIB, "rise_mib": rise / MIB}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--studies", nargs="+", default=list(DEFAULT_STUDIES))
    parser.add_argument("--passes", nargs="+", choices=PASSES, default=list(PASSES))
    parser.add_argument("--budget-mb", type=int, default=256)
    parser.add_argument("--jacobian-points", type=int, default=16,
                        help="points of the grams passes, and at most of the points pass")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--one", nargs=2, metavar=("STUDY", "PASS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(one_pass(args)))
        return
    print(f"measure.memory_mb = {args.budget_mb}, float64, device {args.device}, "
          f"{args.threads} thread(s), torch {torch.__version__}\n")
    print("| study | P | pass | points | chunking | bounded part, MiB | rise, MiB "
          "| rise / budget |\n|---|---|---|---|---|---|---|---|")
    for study in args.studies:
        for what in args.passes:
            command = [sys.executable, __file__, "--one", study, what,
                       "--budget-mb", str(args.budget_mb), "--threads", str(args.threads),
                       "--jacobian-points", str(args.jacobian_points), "--device", args.device]
            done = subprocess.run(command, capture_output=True, text=True)
            if done.returncode:
                print(f"| {study} | | {what} | failed: {done.stderr.strip().splitlines()[-1]} "
                      "| | | | |", flush=True)
                continue
            row = json.loads(done.stdout.splitlines()[-1])
            print(f"| {study} | {row['params']} | {what} | {row['points']} | {row['chunking']} "
                  f"| {row['bounded_mib']:.0f} | {row['rise_mib']:.0f} "
                  f"| {row['rise_mib'] / args.budget_mb:.2f} |", flush=True)


if __name__ == "__main__":
    main()
