"""Benchmark: per-sample parameter-Jacobian passes over a memory budget, by Grams requested.

Over the measure job's budget (``measure.memory_mb``, 1 GiB by default) the generic method
takes fewer samples a chunk, down to one, whose K x P Jacobian J_i = df(x_i)/dtheta it forms
with K VJPs and whose Grams are then matrix products. Where one sample's J_i does not fit, it
never forms J_i: per sample it takes K VJPs for the rows J_i^T e_c in blocks, and K JVPs for
each K x K Gram it is asked for (J_i J_i^T; J_i D^2 J_i^T for adaptive sharpness). The
per-point measures need neither Gram (||J_i||_F^2 comes from the rows), the curvature suite
needs J_i J_i^T and the adaptive one only with adaptive sharpness. This times each request at
the budgets given (by default 256 MiB, which forces the CNN's row blocks, and the default
1 GiB), on the False-Friend CIFAR-100 networks (K = 100, random initialisation and inputs)
in float64, and checks that every path gives the same values. On a GPU (``--device cuda``) one
point's pass of each request runs first, untimed (CUDA start-up, cuDNN's choice of kernels),
and every timing waits for the device.

    python bench/blocked_jacobians.py [--case cnn|vgg16_bn] [--points 4] [--threads 2]
        [--budgets-mb 256 1024] [--device cuda]
"""

from __future__ import annotations

import argparse

import torch
from ensemble_training import timed

from flatrep import models
from flatrep.measures import jacobian
from flatrep.params import studies

CASES = {"cnn": {"name": "cnn2d", "channels": [32, 64], "kernel_size": 3, "hidden": [256]},
         "vgg16_bn": {"name": "vgg16_bn"}}
REQUESTS = [("both", jacobian.GRAMS),
            ("J J^T (curvature without adaptive sharpness)", ("param_gram",)),
            ("none (per-point measures)", ())]
SHARED = ("param_sq", "weight_grad_norm", "input", "param_moments")


def path(model: torch.nn.Module, x: torch.Tensor, max_bytes: int) -> str:
    """Which way ``jacobian.per_sample_jacobians`` goes at this budget on x in one chunk
    (K = 100)."""
    samples, rows = jacobian.generic_chunking(100, jacobian.row_bytes(model, x), len(x),
                                              max_bytes)
    return f"dense, {samples} sample(s) a chunk" if rows is None else f"row blocks of {rows}"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--case", choices=sorted(CASES), default="cnn")
    parser.add_argument("--points", type=int, default=4)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--budgets-mb", type=int, nargs="+",
                        default=[256, studies.MEASURE_MEMORY_MB],
                        help="budgets to time, MiB (256: below one CNN sample's J_i)")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    device = torch.device(args.device)
    model = models.build(CASES[args.case], (3, 32, 32), 100).double().eval().to(device)
    x = torch.randn(args.points, 3, 32, 32, dtype=torch.float64).to(device)
    num_params = sum(p.numel() for p in model.parameters())
    where = (torch.cuda.get_device_name(device) if device.type == "cuda"
             else f"CPU, {torch.get_num_threads()} thread(s)")
    print(f"{args.case}: {num_params} parameters, K = 100, {args.points} points, float64, "
          f"{where}, torch {torch.__version__}")
    if device.type == "cuda":
        for _, grams in REQUESTS:
            jacobian.per_sample_jacobians(model, x[:1], chunk_size=1,
                                          max_bytes=args.budgets_mb[0] << 20, grams=grams)
    print("| budget, MiB | path | Grams computed | seconds | per point, s | speed-up |\n"
          "|---|---|---|---|---|---|")
    results, baseline = [], None
    for budget_mb in args.budgets_mb:
        for label, grams in REQUESTS:
            values = {}
            seconds = timed(lambda: values.update(jacobian.per_sample_jacobians(
                model, x, chunk_size=args.points, max_bytes=budget_mb << 20, grams=grams)))
            baseline = baseline or seconds
            results.append((grams, values))
            print(f"| {budget_mb} | {path(model, x, budget_mb << 20)} | {label} | "
                  f"{seconds:.1f} | {seconds / args.points:.2f} | {baseline / seconds:.2f} |")
    reference = results[0][1]
    worst = max(((values[key] - reference[key]).abs().max()
                 / reference[key].abs().max().clamp_min(1e-300)).item()
                for grams, values in results for key in SHARED + tuple(grams))
    print(f"max relative difference from the first row's values: {worst:.1e} "
          "(required <= 1e-10)")
    if worst > 1e-10:
        raise SystemExit("values disagree")


if __name__ == "__main__":
    main()
