"""Benchmark: the two curvature families that dominated a default measure job, old way and new.

The cProfile of ``flatrep measure`` (bench/RESULTS.md) put most of a checkpoint of the default
studies in two places:

* ``spectral_density`` of ``quick`` (MLP 40-64-64-64-10, torch-MSE, P = 11 594): SLQ's
  ``probes`` Lanczos runs of ``steps``, each step one Hessian-vector product of one vector.
  Baseline: the runs one after another (``krylov.lanczos`` per probe, the former ``slq``);
  new: the runs carried together (``spectrum.slq``: one batched product per step).
* ``rank`` of ``false_friend_l2`` (MLP 40-32-10, cross-entropy, P = 1 642): the dense Hessian,
  P products in passes of the operator's probe chunk. Baseline: the probes' chunk (16);
  new: ``spectrum.DENSE_PROBE_CHUNK`` rows a pass.

Both sides use the same starts and give the same values to rounding (checked here). The
networks are freshly initialised at the studies' shapes on 256 standard-normal rows (the
curvature points of a study): the cost of these products does not depend on the weights.

    python bench/measure_families.py [--threads 1] [--repeats 5]
"""

from __future__ import annotations

import argparse
import time

import torch

from flatrep import losses, models
from flatrep.measures import curvature, krylov, spectrum

POINTS = 256


def best_of(repeats: int, work) -> tuple[float, object]:
    """Smallest wall time of ``repeats`` calls of ``work`` and its last result."""
    times, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = work()
        times.append(time.perf_counter() - start)
    return min(times), result


def slq_case(repeats: int, probes: int = 4, steps: int = 20) -> dict:
    torch.manual_seed(0)
    model = models.mlp(40, 10, [64, 64, 64], activation="relu").double()
    x = torch.randn(POINTS, 40, dtype=torch.float64)
    operator = curvature.HessianOperator(model, x, torch.randn(POINTS, 10, dtype=torch.float64))

    def one_at_a_time():
        generator = torch.Generator().manual_seed(2)
        return torch.stack([krylov.lanczos(operator, steps, generator).ritz_values
                            for _ in range(probes)])

    def together():
        return spectrum.slq(operator, probes, steps, torch.Generator().manual_seed(2)).nodes

    old, old_nodes = best_of(repeats, one_at_a_time)
    new, new_nodes = best_of(repeats, together)
    return {"case": f"SLQ, {probes} probes x {steps} steps, quick MLP (P = {operator.dim})",
            "baseline": "runs one after another", "new": "runs carried together",
            "old": old, "new_s": new,
            "max_diff": (old_nodes - new_nodes).abs().max().item() / old_nodes.abs().max().item()}


def dense_case(repeats: int) -> dict:
    torch.manual_seed(0)
    model = models.mlp(40, 10, [32], activation="relu").double()
    x = torch.randn(POINTS, 40, dtype=torch.float64)
    y = torch.randint(0, 10, (POINTS,))
    loss = losses.LOSSES["cross_entropy"]
    narrow = curvature.HessianOperator(model, x, y, probe_chunk=16, loss=loss)
    wide = curvature.HessianOperator(model, x, y, probe_chunk=spectrum.DENSE_PROBE_CHUNK,
                                     loss=loss)
    old, old_h = best_of(repeats, lambda: spectrum.dense_hessian(narrow))
    new, new_h = best_of(repeats, lambda: spectrum.dense_hessian(wide))
    return {"case": f"dense Hessian, False-Friend MLP (P = {narrow.dim})",
            "baseline": "16 rows a pass", "new": f"{wide.probe_chunk} rows a pass",
            "old": old, "new_s": new,
            "max_diff": (old_h - new_h).abs().max().item() / old_h.abs().max().item()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"{args.threads} thread(s), float64, best of {args.repeats}\n")
    print("| case | baseline | new | baseline (s) | new (s) | speed-up | max rel. diff. |")
    print("|---|---|---|---|---|---|---|")
    for row in (slq_case(args.repeats), dense_case(args.repeats)):
        print(f"| {row['case']} | {row['baseline']} | {row['new']} | {row['old']:.3f} | "
              f"{row['new_s']:.3f} | {row['old'] / row['new_s']:.2f}x | {row['max_diff']:.1e} |")


if __name__ == "__main__":
    main()
