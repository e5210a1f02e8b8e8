"""Benchmark: does ``torch.compile`` pay for the measures' Hessian-vector products?

Trains one short run of the ``quick`` study (MLP 40-256-256-10 on MNIST-1D, 4 checkpoints),
then:

1. measures its last checkpoint in-process with the ``quick`` study's own ``measure`` section,
   counting and timing every call of ``HessianOperator._part_products`` (a chunk of ``probe_chunk``
   HVPs): how many calls one checkpoint makes and what share of its measurement they take;
   the operator of the first call is kept and one chunk timed eager (``vmap(jvp(grad))``) and
   through ``torch.compile`` side by side (best of ``--repeats`` interleaved rounds of
   ``--calls`` calls; the first compiled call, holding the compilation, timed apart);
2. runs whole measure jobs as Snakemake does (``flatrep measure``, a fresh process each) with
   ``measure.curvature.hvp`` eager and compiled, on 1 and 4 checkpoints, and fits
   ``t(k) = fixed + k * per_checkpoint`` for each: the compiled job's fixed part holds its
   compilation. TorchInductor keeps compiled kernels in an on-disk cache (a fresh one for the
   jobs, apart from the one of the in-process timings of 1.): the first compiled job of a study
   compiles cold (timed apart), later ones find the kernels there and only trace. Compiling
   pays for a job of k checkpoints when ``fixed_c + k per_c < fixed_e + k per_e``.

    python bench/hvp_compile.py [--threads 2] [--device cpu]
"""

from __future__ import annotations

import argparse
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


def quick_study(device: str) -> dict:
    params = yaml.safe_load((Path(__file__).parents[1] / "params.yaml").read_text())
    study = params["studies"]["quick"]
    study["train"].update(iterations=200, checkpoints=[50, 100, 150, 200], device=device,
                          ensemble="none", grid=[{"lr": [0.1], "batch_size": [20]}], seeds=[0])
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
    """(seconds of the measure, [(shape, seconds)] of its HVP chunks, the first operator)."""
    calls, operators = [], []
    apply = curvature.HessianOperator._part_products

    def counted(operator, vectors, x, targets):
        start = time.perf_counter()
        out = synchronized(apply)(operator, vectors, x, targets)
        calls.append((tuple(vectors.shape), time.perf_counter() - start))
        if not operators:
            operators.append(operator)
        return out

    curvature.HessianOperator._part_products = counted
    try:
        start = time.perf_counter()
        measuring.measure_checkpoints(paths[-1:], study["measure"], root, threads)
        return time.perf_counter() - start, calls, operators[0]
    finally:
        curvature.HessianOperator._part_products = apply


def chunk_table(operator, shape: tuple, calls: int, repeats: int) -> list[str]:
    vectors = torch.randn(shape, dtype=operator.dtype,
                          generator=torch.Generator().manual_seed(0)).to(operator.device)
    points = operator.x, operator.targets
    forward_over_reverse = torch.compile(operator._forward_over_reverse)
    eager = synchronized(lambda v: operator._part_products(v, *points))
    compiled = synchronized(lambda v: forward_over_reverse(v, *points))
    start = time.perf_counter()
    first = compiled(vectors)
    compile_seconds = time.perf_counter() - start
    expected = eager(vectors)
    difference = ((first - expected).abs().max() / expected.abs().max()).item()
    timings = {"eager": [], "compiled": []}
    for _ in range(repeats):
        timings["eager"].append(per_call_seconds(eager, vectors, calls))
        timings["compiled"].append(per_call_seconds(compiled, vectors, calls))
    best = {name: min(values) for name, values in timings.items()}
    return [f"| HVP chunk {shape} | first call, s | ms per call (best of {repeats} x {calls}) "
            "| speed-up per call | max rel. difference |", "|---|---|---|---|---|",
            f"| eager | – | {best['eager'] * 1e3:.1f} | 1.0 | – |",
            f"| torch.compile | {compile_seconds:.1f} | {best['compiled'] * 1e3:.1f} | "
            f"{best['eager'] / best['compiled']:.2f} | {difference:.1e} |"]


def job_seconds(paths: list[Path], measure_cfg: dict, threads: int, data_root: Path,
                out: Path, env: dict) -> float:
    """Wall time of one ``flatrep measure`` process, as a Snakemake measure job runs it."""
    command = [sys.executable, "-m", "flatrep.cli", "measure", "--measure-json",
               json.dumps(measure_cfg), "--checkpoints", *map(str, paths), "--out", str(out),
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
    args = parser.parse_args()
    study = quick_study(args.device)

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
        table = chunk_table(operator, calls[0][0], args.calls, args.repeats)

        def job_config(method: str) -> dict:
            cfg = json.loads(json.dumps(study["measure"]))
            cfg["curvature"]["hvp"] = method
            return cfg

        cold = job_seconds(paths[:1], job_config("forward_over_reverse_compiled"), args.threads,
                           root, tmp / "cold.nc", env)
        jobs = {method: [job_seconds(paths[:k], job_config(method), args.threads, root,
                                     tmp / f"{method}_{k}.nc", env) for k in CHECKPOINTS]
                for method in ("forward_over_reverse", "forward_over_reverse_compiled")}

    device = determinism.pick_device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"MLP 40-{'-'.join(map(str, study['model']['hidden']))}-10 ({operator.dim} "
          f"parameters), {operator.x.shape[0]} curvature points, float64, device {name}, "
          f"{args.threads} thread(s), torch {torch.__version__}")
    hvp_seconds = sum(seconds for _, seconds in calls)
    print(f"one checkpoint of the quick study's measure: {measure_seconds:.1f} s, of which "
          f"{len(calls)} HVP calls take {hvp_seconds:.1f} s "
          f"({100 * hvp_seconds / measure_seconds:.0f} %)\n")
    print("\n".join(table))
    print(f"\nmeasure jobs (`flatrep measure`, a process each); cold compile of the first "
          f"compiled job (1 checkpoint): {cold:.1f} s\n")
    print(f"| hvp | job of {CHECKPOINTS[0]} checkpoint, s | job of {CHECKPOINTS[1]}, s | "
          "fixed, s | per checkpoint, s | speed-up per checkpoint |")
    print("|---|---|---|---|---|---|")
    fits = {}
    for method, seconds in jobs.items():
        per = (seconds[1] - seconds[0]) / (CHECKPOINTS[1] - CHECKPOINTS[0])
        fits[method] = (seconds[0] - per * CHECKPOINTS[0], per)
    base = fits["forward_over_reverse"][1]
    for method, seconds in jobs.items():
        fixed, per = fits[method]
        print(f"| {method} | {seconds[0]:.1f} | {seconds[1]:.1f} | {fixed:.1f} | {per:.2f} | "
              f"{base / per:.2f} |")
    (fixed_e, per_e), (fixed_c, per_c) = fits.values()
    if per_c < per_e:
        print(f"\ncompiling pays for jobs of more than {(fixed_c - fixed_e) / (per_e - per_c):.1f}"
              " checkpoints (the quick study measures 16 per run)")
    else:
        print("\ncompiled checkpoints are no faster: compiling never pays here")


if __name__ == "__main__":
    main()
