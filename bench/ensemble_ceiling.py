"""Benchmark: the most a vmapped ensemble of MLPs can gain on this machine, from its products.

One training step of an M-member ensemble of MLPs must at least do the M members' matrix
products: per Linear layer W (out x in) with input h (B x in) and output gradient g (B x out),
the forward ``h W^T``, the weight gradient ``g^T h`` and (all but the first layer) the input
gradient ``g W``, as batched products over the members. If everything else in the step
(elementwise work, the optimizer, Python and dispatch overhead) cost nothing, the ensemble's
speed-up over M single runs would be

    ceiling = M * t(one single-run step) / t(the M members' batched products of one step).

Both are timed here with torch on random data of the real shapes and memory layouts (weights
stored out x in, as nn.Linear does, so the forward product reads a transposed view), best of
``--repeats`` timings of ``--steps`` steps each. A single step is flatrep's single-run update
(forward, torch MSE loss, backward, ``torch.optim.SGD``), as in
``flatrep.training.single.train_run``.

    python bench/ensemble_ceiling.py --widths 40 256 256 10 --members 15
"""

from __future__ import annotations

import argparse
import time

import torch
from torch import nn


def best_seconds(fn, steps: int, repeats: int) -> float:
    """The best of ``repeats`` mean times of ``fn`` over ``steps`` calls (after a warm-up)."""
    for _ in range(max(steps // 10, 1)):
        fn()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(steps):
            fn()
        best = min(best, (time.perf_counter() - start) / steps)
    return best


def single_step(widths: list[int], batch: int):
    """One single-run SGD step of the MLP ``widths`` (ReLU) on a fixed minibatch."""
    layers = []
    for i, (fan_in, fan_out) in enumerate(zip(widths[:-1], widths[1:])):
        layers.append(nn.Linear(fan_in, fan_out))
        if i < len(widths) - 2:
            layers.append(nn.ReLU())
    model = nn.Sequential(*layers)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    x, y = torch.randn(batch, widths[0]), torch.randn(batch, widths[-1])

    def step():
        optimizer.zero_grad(set_to_none=True)
        loss = nn.functional.mse_loss(model(x), y)
        torch.isfinite(loss)
        loss.backward()
        optimizer.step()
    return step


def batched_products(widths: list[int], batch: int, members: int):
    """The matrix products of one ensemble step: per layer the forward, the weight gradient
    and (but for the first layer) the input gradient, batched over the members."""
    shapes = list(zip(widths[:-1], widths[1:]))
    weights = [torch.randn(members, fan_out, fan_in) for fan_in, fan_out in shapes]
    inputs = [torch.randn(members, batch, fan_in) for fan_in, _ in shapes]
    grads = [torch.randn(members, batch, fan_out) for _, fan_out in shapes]

    def products():
        for i, (weight, h, g) in enumerate(zip(weights, inputs, grads)):
            torch.bmm(h, weight.transpose(1, 2))
            torch.bmm(g.transpose(1, 2), h)
            if i > 0:
                torch.bmm(g, weight)
    return products


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--widths", type=int, nargs="+", default=[40, 256, 256, 10])
    parser.add_argument("--members", type=int, default=15)
    parser.add_argument("--batch", type=int, default=20)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    single = best_seconds(single_step(args.widths, args.batch), args.steps, args.repeats)
    products = best_seconds(batched_products(args.widths, args.batch, args.members),
                            max(args.steps // args.members, 10), args.repeats)
    flops = 2 * args.batch * args.members * sum(
        fan_in * fan_out * (2 if i == 0 else 3)
        for i, (fan_in, fan_out) in enumerate(zip(args.widths[:-1], args.widths[1:])))
    print(f"MLP {'-'.join(map(str, args.widths))}, batch {args.batch}, {args.members} members, "
          f"{args.threads} thread(s), torch {torch.__version__}, float32")
    print("| quantity | ms | note |")
    print("|---|---|---|")
    print(f"| one single-run SGD step (whole step) | {single * 1e3:.3f} | |")
    print(f"| the {args.members} members' batched products of one step | {products * 1e3:.3f} | "
          f"{flops / products / 1e9:.0f} GFLOP/s |")
    print(f"| **ceiling of the ensemble speed-up** | **{args.members * single / products:.1f}x** "
          "| if nothing but the products took time |")


if __name__ == "__main__":
    main()
