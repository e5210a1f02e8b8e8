"""Benchmark: which Hessian-vector-product engine pays for the measures?

The engines of ``measure.curvature.hvp`` (``curvature.HVP_METHODS``): forward-over-reverse
(``vmap(jvp(grad))``), the same through ``torch.compile``, double backward (the gradient's
graph built once per point chunk and kept, probes batched through one backward pass), and
``auto`` (``curvature.auto_engine``: double backward for MLPs and single vectors).

Trains one short run of the ``quick`` study (its MLP on MNIST-1D, 4 checkpoints), then:

1. measures its last checkpoint in-process with the ``quick`` study's own ``measure`` section
   (its ``hvp``), counting and timing every ``HessianOperator.apply`` call: how many calls
   one checkpoint makes, of which sizes, and what share of its measurement they take;
   the operator of the first call is kept, and one call of the most frequent size and one of
   a single vector (a Lanczos step) are timed by every engine side by side (best of
   ``--repeats`` interleaved rounds of ``--calls`` calls; the first call, which builds the
   kept graph or compiles, timed apart), their products compared;
2. runs whole measure jobs as Snakemake does (``flatrep measure``, a fresh process each) with
   each of ``--methods`` on 1 and 4 checkpoints, and fits ``t(k) = fixed + k *
   per_checkpoint``: a compiled job's fixed part holds its compilation. TorchInductor keeps
   compiled kernels in an on-disk cache (a fresh one for the jobs, apart from the one of the
   in-process timings of 1.): the first compiled job compiles cold (timed apart), later ones
   find the kernels there and only trace.

    python bench/hvp_engines.py [--threads 2] [--device cpu] [--methods auto double_backward]
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import yaml

from flatrep import determinism
from flatrep.cube import measuring
from flatrep.data import datasets
from flatrep.measures import curvature
from flatrep.params import studies
from flatrep.training import single

CHECKPOINTS = (1, 4)
BASELINE = "forward_over_reverse"


def quick_study(device: str) -> dict:
    params = yaml.safe_load((Path(__file__).parents[1] / "params.yaml").read_text())
    study = params["studies"]["quick"]
    study["train"].update(iterations=200, checkpoints=[50, 100, 150, 200], device=device,
                          ensemble="none", compile=False,
                          grid=[{"lr": [0.1], "batch_size": [20]}], seeds=[0])
    study["measure"]["device"] = device
    return study


def synchronized(fn):
    """``fn`` followed by a device synchronisation, so that timings include the GPU work."""
    def call(*args):
        out = fn(*args)
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        return out
    return call


def per_call_seconds(fn, vectors: torch.Tensor, calls: int) -> float:
    start = time.perf_counter()
    for _ in range(calls):
        fn(vectors)
    return (time.perf_counter() - start) / calls


def hvp_calls(paths: list[Path], study: dict, root: Path, threads: int):
    """(seconds of the measure, [(shape, seconds)] of its ``apply`` calls, the first
    operator)."""
    calls, operators = [], []
    apply = curvature.HessianOperator.apply

    def counted(operator, vectors):
        start = time.perf_counter()
        out = synchronized(apply)(operator, vectors)
        calls.append((tuple(vectors.shape), time.perf_counter() - start))
        if not operators:
            operators.append(operator)
        return out

    curvature.HessianOperator.apply = counted
    try:
        start = time.perf_counter()
        measuring.measure_checkpoints(paths[-1:], study["measure"], root, threads)
        return time.perf_counter() - start, calls, operators[0]
    finally:
        curvature.HessianOperator.apply = apply


def engine_table(operator, shape: tuple, calls: int, repeats: int) -> list[str]:
    """Every engine on ``operator`` for vectors of ``shape``, side by side."""
    vectors = torch.randn(shape, dtype=operator.dtype,
                          generator=torch.Generator().manual_seed(0)).to(operator.device)
    engines, first, products = {}, {}, {}
    for method in curvature.HVP_METHODS:
        engine = curvature.HessianOperator(operator.model, operator.x, operator.targets,
                                           method, operator.probe_chunk, loss=operator.loss_fn,
                                           point_chunk=operator.point_chunk)
        engines[method] = synchronized(engine.apply)
        start = time.perf_counter()
        products[method] = engines[method](vectors)
        first[method] = time.perf_counter() - start
    timings = {method: [] for method in engines}
    for _ in range(repeats):
        for method, apply in engines.items():
            timings[method].append(per_call_seconds(apply, vectors, calls))
    best = {method: min(values) for method, values in timings.items()}
    expected = products[BASELINE]
    lines = [f"| HVP call {shape} | first call, s | ms per call (best of {repeats} x {calls}) "
             "| speed-up per call | max rel. difference |", "|---|---|---|---|---|"]
    for method in engines:
        difference = ((products[method] - expected).abs().max() / expected.abs().max()).item()
        lines.append(f"| {method} | {first[method]:.2f} | {best[method] * 1e3:.1f} | "
                     f"{best[BASELINE] / best[method]:.2f} | {difference:.1e} |")
    return lines


def job_seconds(paths: list[Path], measure_cfg: dict, threads: int, data_root: Path,
                env: dict) -> float:
    """Wall time of one ``flatrep measure`` process, as a Snakemake measure job runs it (its
    measures.nc in the run's folder, each job overwriting the last)."""
    command = [sys.executable, "-m", "flatrep.cli", "measure", "--measure-json",
               json.dumps(measure_cfg), "--checkpoints", *map(str, paths),
               "--out", str(paths[0].parent / "measures.nc"),
               "--threads", str(threads), "--data-root", str(data_root)]
    start = time.perf_counter()
    subprocess.run(command, check=True, env=env, capture_output=True)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--calls", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--methods", nargs="+", choices=curvature.HVP_METHODS,
                        default=[BASELINE, "double_backward", "auto"],
                        help="the engines of the whole measure jobs (the per-call table has all)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    study = quick_study(args.device)
    methods = [BASELINE] + [method for method in args.methods if method != BASELINE]

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(tmp / "inductor_in_process")
        env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": str(tmp / "inductor_jobs")}
        root = tmp / "data"
        datasets.prepare(study["data"]["name"], root,
                         **{k: v for k, v in study["data"].items() if k != "name"})
        run = studies.expand_runs(study)[0]
        paths = single.train_run("quick", study, run, tmp / "run", root, args.threads)
        measure_seconds, calls, operator = hvp_calls(paths, study, root, args.threads)
        sizes = collections.Counter(shape for shape, _ in calls)
        shapes = [sizes.most_common(1)[0][0], (1, operator.dim)]
        tables = [engine_table(operator, shape, args.calls, args.repeats)
                  for shape in dict.fromkeys(shapes)]

        def job_config(method: str) -> dict:
            cfg = json.loads(json.dumps(study["measure"]))
            cfg["curvature"]["hvp"] = method
            return cfg

        cold = {method: job_seconds(paths[-1:], job_config(method), args.threads, root, env)
                for method in methods if method.endswith("compiled")}
        jobs = {method: [job_seconds(paths[-k:], job_config(method), args.threads, root, env)
                         for k in CHECKPOINTS]
                for method in methods}

    device = determinism.pick_device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"MLP 40-{'-'.join(map(str, study['model']['hidden']))}-10 ({operator.dim} "
          f"parameters), {operator.x.shape[0]} curvature points, float64, device {name}, "
          f"{args.threads} thread(s), torch {torch.__version__}")
    hvp_seconds = sum(seconds for _, seconds in calls)
    print(f"one checkpoint of the quick study's measure (hvp: "
          f"{study['measure']['curvature'].get('hvp', 'auto')}): {measure_seconds:.1f} s, of "
          f"which {len(calls)} HVP calls take {hvp_seconds:.1f} s "
          f"({100 * hvp_seconds / measure_seconds:.0f} %); calls by size: "
          + ", ".join(f"{count} x {shape[0]} vectors" for shape, count in sizes.most_common()))
    for table in tables:
        print("\n" + "\n".join(table))
    print("\nmeasure jobs (`flatrep measure`, a process each)"
          + "".join(f"; cold compile of the first {method} job (1 checkpoint): {seconds:.1f} s"
                    for method, seconds in cold.items()) + "\n")
    print(f"| hvp | job of {CHECKPOINTS[0]} checkpoint, s | job of {CHECKPOINTS[1]}, s | "
          "fixed, s | per checkpoint, s | speed-up per checkpoint |")
    print("|---|---|---|---|---|---|")
    fits = {}
    for method, seconds in jobs.items():
        per = (seconds[1] - seconds[0]) / (CHECKPOINTS[1] - CHECKPOINTS[0])
        fits[method] = (seconds[0] - per * CHECKPOINTS[0], per)
    for method, seconds in jobs.items():
        fixed, per = fits[method]
        print(f"| {method} | {seconds[0]:.1f} | {seconds[1]:.1f} | {fixed:.1f} | {per:.2f} | "
              f"{fits[BASELINE][1] / per:.2f} |")


if __name__ == "__main__":
    main()
