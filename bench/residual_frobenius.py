"""Benchmark: what ||H - G||_F adds to the curvature core of one checkpoint.

The core (``flatrep.measures.suite.core``) pushes its ``probes`` Rademacher vectors through
two operators over the same curvature points: H V (``HessianOperator``: the Hutchinson
trace, ||H||_F, effective rank) and G V (``curvature.GaussNewtonOperator.apply``: ||H - G||_F,
Ma & Ying's B1, and v^T G v = v . G v for the control variate). Before B1 the control
variate took v^T G v from JVPs alone (``GaussNewtonOperator.quadratic``); session 17 added
G V beside it; since session 18 G V serves both. This times the three passes side by side,
interleaved, best of ``--repeats`` rounds, in float64 as the measures run, at the paper
studies' core settings (256 points, 24 probes) on the quick study's MLP 40-256-256-10
(MNIST-1D shape) and the reference code's small VGG-11 (CIFAR shape, 10 outputs), both at
initialisation with random inputs and MSE targets; and prints the core's probe passes now
(H V + G V) and in session 17 (H V + v^T G v + G V), each relative to those before B1
(H V + v^T G v; the core's per-sample Jacobian pass, unchanged, is not timed).

    python bench/residual_frobenius.py [--threads 2] [--repeats 3] [--device cpu]
"""

from __future__ import annotations

import argparse
import time

import torch

from flatrep import losses, models
from flatrep.measures import curvature, trace_estimators

NETS = {"mlp 40-256-256-10": (lambda: models.mlp(40, 10, [256, 256]), (40,)),
        "vgg_small (CIFAR)": (lambda: models.vgg_small((3, 32, 32), 10), (3, 32, 32))}


def synchronized(fn, *args):
    """``fn(*args)``, waiting for the device, and its wall time in seconds."""
    start = time.perf_counter()
    fn(*args)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - start


def time_core(name: str, points: int, probes: int, repeats: int, device: str) -> dict:
    """Best-of-``repeats`` seconds of H V, v^T G v and G V on ``probes`` probes."""
    build, shape = NETS[name]
    torch.manual_seed(0)
    model = build().double().to(device).eval()
    x = torch.rand(points, *shape, dtype=torch.float64, device=device)
    targets = torch.randn(points, 10, dtype=torch.float64, device=device)
    operator = curvature.HessianOperator(model, x, targets, loss=losses.get("mse"))
    gauss_newton = curvature.GaussNewtonOperator(operator)
    vectors = trace_estimators.rademacher(probes, operator.dim, torch.Generator().manual_seed(0),
                                          device=device)
    pieces = {"H V": operator.apply, "v^T G v": gauss_newton.quadratic,
              "G V": gauss_newton.apply}
    for fn in pieces.values():             # warm-up, untimed
        fn(vectors[:1])
    best = {key: float("inf") for key in pieces}
    for _ in range(repeats):
        for key, fn in pieces.items():
            best[key] = min(best[key], synchronized(fn, vectors))
    return {"params": operator.dim, **best}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--points", type=int, default=256)
    parser.add_argument("--probes", type=int, default=24)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device_name = (torch.cuda.get_device_name() if args.device.startswith("cuda")
                   else f"cpu, {args.threads} threads")
    print(f"device: {device_name}; {args.points} points, {args.probes} probes, float64, "
          f"best of {args.repeats}\n")
    print("| net | P | H V (s) | v^T G v (s) | G V (s) | G V / H V "
          "| now: (H V + G V) / before B1 | session 17: (H V + v^T G v + G V) / before B1 |")
    print("|---|---|---|---|---|---|---|---|")
    for name in NETS:
        t = time_core(name, args.points, args.probes, args.repeats, args.device)
        before = t["H V"] + t["v^T G v"]
        print(f"| {name} | {t['params']} | {t['H V']:.3f} | {t['v^T G v']:.3f} | "
              f"{t['G V']:.3f} | {t['G V'] / t['H V']:.2f} | "
              f"{(t['H V'] + t['G V']) / before:.2f} | {(before + t['G V']) / before:.2f} |")


if __name__ == "__main__":
    main()
