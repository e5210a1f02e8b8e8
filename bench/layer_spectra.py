"""Benchmark: singular values of per-sample layer Jacobians df/dh_l (K x d_l), by SVD of J
(flatrep since issue 27) against eigenvalues of the smaller Gram matrix (before).

The Gram way is cheaper but squares the condition number: its eigenvalues carry absolute error
~ eps s_1^2, so it resolves s_k / s_1 only down to ~sqrt(eps) (1e-8 in float64), and the
numerical-rank rule s_k > s_1 max(K, d_l) eps cannot be applied to it. The SVD resolves every
value above that tolerance. For each shape (points n, outputs K, layer width d_l) the table
gives both times (median of --repeats, one thread, float64) and the SVD's cost as a multiple
of the Gram's, and checks the two agree on the well-conditioned s_1.

    python bench/layer_spectra.py [--repeats 5] [--threads 1]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from flatrep.measures import jacobian

#: (points, K, d_l): the quick MLP's layers (K = 10; d = 40, 256), a CIFAR conv input of
#: K = 10, the LeNet-5 head against K = 100, and wide VGG-16 layers against K = 100.
SHAPES = ((32, 10, 40), (32, 10, 256), (8, 10, 3072), (4, 100, 84), (4, 100, 16384),
          (2, 100, 65536))


def gram_singular_values(j: torch.Tensor) -> torch.Tensor:
    """The former way: sqrt of the eigenvalues of J J^T or J^T J, whichever is smaller."""
    gram = j @ j.transpose(1, 2) if j.shape[1] <= j.shape[2] else j.transpose(1, 2) @ j
    return torch.linalg.eigvalsh(gram).clamp_min(0).flip(-1).sqrt()


def seconds(function, j: torch.Tensor, repeats: int) -> float:
    function(j)                                   # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function(j)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    generator = torch.Generator().manual_seed(0)
    print("| n | K | d_l | Gram + eigvalsh (s) | SVD (s) | SVD / Gram | max rel. diff s_1 |")
    print("|---|---|---|---|---|---|---|")
    for n, k, d in SHAPES:
        j = torch.randn(n, k, d, generator=generator, dtype=torch.float64)
        gram, svd = (seconds(f, j, args.repeats) for f in (gram_singular_values,
                                                           jacobian.spectrum))
        top = jacobian.spectrum(j)[:, 0]
        diff = ((gram_singular_values(j)[:, 0] - top).abs() / top).max().item()
        print(f"| {n} | {k} | {d} | {gram:.2e} | {svd:.2e} | {svd / gram:.1f} | {diff:.1e} |")


if __name__ == "__main__":
    main()
