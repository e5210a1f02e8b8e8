"""Benchmark: what ||H - G||_F adds to the curvature core of one checkpoint.

The core (``flatrep.measures.suite.core``) pushes its ``probes`` Rademacher vectors through
three operators over the same curvature points: H V (``HessianOperator``: the Hutchinson
trace, ||H||_F, effective rank), v^T G v (``curvature.gauss_newton_quadratic``: the control
variate) and, since 2026-12-06, G V (``curvature.gauss_newton_products``: ||H - G||_F, Ma &
Ying's B1). This times the three side by side, interleaved, best of ``--repeats`` rounds, in
float64 as the measures run, at the paper studies' core settings (256 points, 24 probes) on
the quick study's MLP 40-256-256-10 (MNIST-1D shape) and the reference code's small VGG-11
(CIFAR shape, 10 outputs), both at initialisation with random inputs and MSE targets; and
prints the cost of G V relative to H V and to the core's probe passes without it (H V +
v^T G v; the core's per-sample Jacobian pass, unchanged, is not timed).

    python bench/residual_frobenius.py [--threads 2] [--repeats 3] [--device cpu]
"""

from __future__ import annotations

import argparse
import time

import torch

from flatrep import losses, models
from flatrep.measures import curvature

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
    vectors = curvature.rademacher(probes, operator.dim, torch.Generator().manual_seed(0),
                                   device=device)
    pieces = {"H V": operator,
              "v^T G v": lambda v: curvature.gauss_newton_quadratic(operator, v),
              "G V": lambda v: curvature.gauss_newton_products(operator, v)}
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
    print("| net | P | H V (s) | v^T G v (s) | G V (s) | G V / H V | (H V + v^T G v + G V) / (H V + v^T G v) |")
    print("|---|---|---|---|---|---|---|")
    for name in NETS:
        t = time_core(name, args.points, args.probes, args.repeats, args.device)
        without = t["H V"] + t["v^T G v"]
        print(f"| {name} | {t['params']} | {t['H V']:.3f} | {t['v^T G v']:.3f} | "
              f"{t['G V']:.3f} | {t['G V'] / t['H V']:.2f} | "
              f"{(without + t['G V']) / without:.2f} |")


if __name__ == "__main__":
    main()
