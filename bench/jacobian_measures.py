"""Benchmark: per-sample Jacobian measures, flatrep vs a per-sample loop of backward passes.

The baseline does what the reference code does: batch 1, one backward pass per output
coordinate, collecting df/dx, df/dh_l and df/dtheta from each. Both sides compute MLS,
log LVR, local dimensionality, NMLS and sharpness on the same model and points in float64;
the values must agree to rel. 1e-6. Prints a table of seconds and the speed-up, and fits the
exponent of flatrep's cost against the number of points (linear means ~1).

    python bench/jacobian_measures.py [--points 200] [--hidden 256 256] [--repeats 3]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from flatrep import models
from flatrep.measures import jacobian, layers


def flatrep_measures(model, x, chunk_size=50):
    jac = jacobian.per_sample_jacobians(model, x, chunk_size, moments=())  # same work as the loop
    out = jacobian.input_jacobian_measures(jac["input"])
    return {"mls": out["mls"], "log_lvr": out["log_lvr"], "local_dim": out["local_dim"],
            "nmls": jacobian.layer_measures(jac["layer"])["layer_mls"].sum(1),
            "sharpness": jac["param_sq"].mean().reshape(1)}


def loop_measures(model, x):
    """Per sample: forward with the layer inputs kept, then K backward passes."""
    params = list(model.parameters())
    rows = {key: [] for key in ("mls", "log_lvr", "local_dim", "nmls")}
    param_sq = []
    for xi in x:
        xi = xi[None].clone().requires_grad_(True)
        store = []
        hooks = [module.register_forward_pre_hook(
            lambda _m, args: store.append(args[0].requires_grad_(True)
                                          if not args[0].requires_grad else args[0]))
                 for _, module in layers.measured_layers(model)]
        out = model(xi)[0]
        for hook in hooks:
            hook.remove()
        grads_x, grads_h, sq = [], [[] for _ in store], 0.0
        for c in range(out.numel()):
            grads = torch.autograd.grad(out[c], [xi, *store, *params], retain_graph=True)
            grads_x.append(grads[0].reshape(-1))
            for l, g in enumerate(grads[1:1 + len(store)]):
                grads_h[l].append(g.reshape(-1))
            sq += sum(g.pow(2).sum() for g in grads[1 + len(store):])
        s = torch.linalg.svdvals(torch.stack(grads_x))
        rows["mls"].append(s[0])
        rows["log_lvr"].append(torch.log(s).sum())
        rows["local_dim"].append(s.pow(2).sum() ** 2 / s.pow(4).sum())
        rows["nmls"].append(sum(torch.linalg.matrix_norm(torch.stack(g), ord=2) for g in grads_h))
        param_sq.append(sq)
    result = {key: torch.stack(value) for key, value in rows.items()}
    result["sharpness"] = torch.stack(param_sq).mean().reshape(1)
    return result


def timed(fn, repeats):
    best, value = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        value = fn()
        best = min(best, time.perf_counter() - start)
    return best, value


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--points", type=int, default=200)
    parser.add_argument("--hidden", type=int, nargs="+", default=[256, 256])
    parser.add_argument("--repeats", type=int, default=5, help="best of this many timings")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = models.mlp(40, 10, args.hidden).double().eval()
    x = torch.randn(args.points, 40, dtype=torch.float64)

    fast_s, fast = timed(lambda: flatrep_measures(model, x), args.repeats)
    loop_s, loop = timed(lambda: loop_measures(model, x), args.repeats)
    worst = max(((fast[k] - loop[k]).abs() / loop[k].abs()).max().item() for k in fast)
    print(f"model 40-{'-'.join(map(str, args.hidden))}-10, {args.points} points, float64, "
          f"{torch.get_num_threads()} thread(s), torch {torch.__version__}")
    print("| method | seconds | speed-up |\n|---|---|---|")
    print(f"| per-sample loop, K backward passes | {loop_s:.3f} | 1.0 |")
    print(f"| flatrep (batched VJPs, Linear closed forms) | {fast_s:.3f} | {loop_s / fast_s:.1f} |")
    print(f"max relative difference of the values: {worst:.1e} (required <= 1e-6)")
    if worst > 1e-6:
        raise SystemExit("values disagree")

    sizes = [args.points // 4, args.points // 2, args.points, 2 * args.points]
    seconds = [timed(lambda n=n: flatrep_measures(model, x.repeat(3, 1)[:n]), args.repeats)[0]
               for n in sizes]
    slope = np.polyfit(np.log(sizes), np.log(seconds), 1)[0]
    print("\n| points | seconds |\n|---|---|")
    for n, s in zip(sizes, seconds):
        print(f"| {n} | {s:.3f} |")
    print(f"cost ~ points^{slope:.2f} (1 = linear)")


if __name__ == "__main__":
    main()
