"""Benchmark: Hessian trace at matched accuracy, flatrep vs PyHessian-style Hutchinson.

Baseline: Hutchinson as PyHessian implements it — Rademacher probes, one Hessian-vector
product at a time by double backward through a gradient graph built once.
flatrep: the control-variate estimator (exact Gauss-Newton trace from per-sample Jacobians
plus Hutchinson on the residual H - G, whose variance vanishes at interpolation), Hutch++, and
Hutchinson, all with forward-over-reverse HVPs batched by vmap.

For each estimator the matvec budget is doubled until the root-mean-square relative error over
``--repeats`` seeds, against the exact trace (sum of H e_p over all unit vectors), is <= 1%;
the table gives the seconds of one estimate at that budget.

Two regimes (``--regime``): ``trained`` — an MLP trained by flatrep's own training code on
MNIST-1D (one-hot MSE, SGD), measured on its training points, the pipeline's situation, with
a Hessian dominated by a few outlier eigenvalues; ``random`` — random init and random targets,
a flat spectrum where Hutch++ has nothing to exploit.

    python bench/hessian_trace.py [--regime trained] [--hidden 64 64] [--points 500]
"""

from __future__ import annotations

import argparse
import math
import tempfile
import time

import torch

from flatrep import checkpoint, models
from flatrep.data import datasets
from flatrep.measures import curvature, jacobian, trace_estimators
from flatrep.params import studies
from flatrep.training import single

TARGET = 0.01


def exact_trace(operator, chunk=256) -> float:
    eye = torch.eye(operator.dim, dtype=operator.theta.dtype)
    return sum((block * operator.apply(block)).sum().item() for block in eye.split(chunk))


def control_variate(operator, gauss_newton, m, generator):
    """Tr G (exact) + Hutchinson on H - G over ``m`` Rademacher probes, v^T G v by JVPs."""
    vectors = trace_estimators.rademacher(m, operator.dim, generator)
    return trace_estimators.control_variate_trace(
        gauss_newton, vectors, operator.apply(vectors),
        curvature.GaussNewtonOperator(operator).quadratic(vectors))


def matched(name, estimate, exact, repeats, budgets):
    """Smallest budget whose RMS relative error <= TARGET, with seconds per estimate."""
    for m in budgets:
        errors, seconds = [], []
        for seed in range(repeats):
            start = time.perf_counter()
            value = estimate(m, torch.Generator().manual_seed(seed))
            seconds.append(time.perf_counter() - start)
            errors.append((value - exact) / exact)
        rms = math.sqrt(sum(e * e for e in errors) / repeats)
        if rms <= TARGET:
            return {"name": name, "matvecs": m, "rms": rms, "seconds": min(seconds)}
    return {"name": name, "matvecs": None, "rms": rms, "seconds": float("nan")}


def train_study(study):
    """(model, x, labels): one run of ``study`` (seed 0, its ``train.lr`` and
    ``train.batch_size``) trained by flatrep.training.single in a temporary folder, its last
    checkpoint, and the study's train split (x float32, int64 labels). Also used by
    bench/curvature_peers.py."""
    with tempfile.TemporaryDirectory() as root:
        options = {k: v for k, v in study["data"].items() if k != "name"}
        datasets.prepare(study["data"]["name"], root, **options)
        hparams = {"lr": study["train"]["lr"], "batch_size": study["train"]["batch_size"],
                   "seed": 0}
        path = single.train_run("bench", study, studies.Run("bench", hparams), root, root,
                                threads=1)[-1]
        model, _ = checkpoint.load(path)
        x, y = datasets.load_study_split(study["data"], "train", root)
    return model, x, y


def trained_problem(hidden, points, steps):
    """(model, x, one-hot y): an MLP trained on MNIST-1D by flatrep.training.single, its train
    points."""
    study = {"data": {"name": "mnist1d", "num_samples": 5000, "train_split": 0.8, "seed": 42},
             "model": {"name": "mlp", "hidden": hidden, "activation": "tanh"},
             "train": {"iterations": steps, "checkpoints": [steps], "optimizer": "sgd",
                       "lr": 0.1, "batch_size": 20, "device": "cpu"}}
    model, x, y = train_study(study)
    return model.double(), x[:points].double(), \
        torch.nn.functional.one_hot(y[:points], 10).double()


def gauss_newton_trace(model, x) -> float:
    """Tr G = (1/n) sum_i ||grad_theta f(x_i)||_F^2, exact (part of every timed estimate)."""
    squares = jacobian.per_sample_jacobians(model, x, chunk_size=len(x), moments=())["param_sq"]
    return squares.mean().item()


def random_problem(hidden, points):
    torch.manual_seed(0)
    model = models.mlp(40, 10, hidden, activation="tanh").double().eval()
    x = torch.randn(points, 40, dtype=torch.float64)
    y = torch.nn.functional.one_hot(torch.randint(0, 10, (points,)), 10).double()
    return model, x, y


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hidden", type=int, nargs="+", default=[64, 64])
    parser.add_argument("--points", type=int, default=500)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--regime", choices=["trained", "random"], default="trained")
    parser.add_argument("--train-steps", type=int, default=20000)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model, x, y = (trained_problem(args.hidden, args.points, args.train_steps)
                   if args.regime == "trained" else random_problem(args.hidden, args.points))
    fast = curvature.HessianOperator(model, x, y, "forward_over_reverse", probe_chunk=64)
    exact = exact_trace(fast)
    budgets = [12 * 2 ** k for k in range(12)]

    def pyhessian(m, gen):
        slow = curvature.HessianOperator(model, x, y, "double_backward", probe_chunk=m)
        return trace_estimators.hutchinson(slow, m, gen).trace.value

    rows = [matched("Hutchinson, double backward, one probe at a time (PyHessian)", pyhessian,
                    exact, args.repeats, budgets),
            matched("Hutchinson, vmapped forward-over-reverse (flatrep)",
                    lambda m, gen: trace_estimators.hutchinson(fast, m, gen).trace.value,
                    exact, args.repeats, budgets),
            matched("Hutch++, vmapped forward-over-reverse (flatrep)",
                    lambda m, gen: trace_estimators.hutch_plus_plus(fast, m, gen).value,
                    exact, args.repeats, budgets),
            matched("exact Gauss-Newton trace + Hutchinson on H - G (flatrep)",
                    lambda m, gen: control_variate(fast, gauss_newton_trace(model, x), m,
                                                   gen).value,
                    exact, args.repeats, [3, 6] + budgets)]
    base = rows[0]["seconds"]
    print(f"{args.regime} MLP 40-{'-'.join(map(str, args.hidden))}-10 tanh, {fast.dim} parameters, "
          f"{args.points} points, float64, {torch.get_num_threads()} thread(s), "
          f"exact trace {exact:.6g}, target RMS relative error {TARGET:.0%}")
    print("| estimator | matvecs | RMS rel. error | seconds | speed-up |\n|---|---|---|---|---|")
    for row in rows:
        print(f"| {row['name']} | {row['matvecs']} | {row['rms']:.2%} | {row['seconds']:.3f} | "
              f"{base / row['seconds']:.1f} |")


if __name__ == "__main__":
    main()
