"""Seeds and determinism: one seed per run, sub-seeds from ``numpy.random.SeedSequence``."""

from __future__ import annotations

import os
import sys

import numpy as np
import torch

#: Named sub-streams of a run's seed, in a fixed order (never reorder: it changes every run;
#: appending is safe, child i of SeedSequence.spawn does not depend on how many are spawned).
STREAMS = ("init", "data_order", "measure_points", "curvature", "augment", "dropout",
           "misclassified_points")


def sub_seed(seed: int, stream: str) -> int:
    """A 63-bit seed for one named stream, derived from the run seed by SeedSequence.spawn."""
    child = np.random.SeedSequence(seed).spawn(len(STREAMS))[STREAMS.index(stream)]
    return int(child.generate_state(1, dtype=np.uint64)[0] >> np.uint64(1))


def configure(strict: bool = True, threads: int | None = None) -> dict:
    """Set deterministic algorithms (strict) or allow fast kernels; return what was set."""
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    if threads:
        torch.set_num_threads(threads)
    _deterministic_algorithms(strict)
    torch.backends.cudnn.benchmark = not strict
    torch.backends.cudnn.deterministic = strict
    torch.backends.cuda.matmul.allow_tf32 = not strict
    torch.backends.cudnn.allow_tf32 = not strict
    return {"mode": "strict" if strict else "fast", "threads": torch.get_num_threads()}


def _deterministic_algorithms(strict: bool) -> None:
    """``torch.use_deterministic_algorithms(strict)`` without importing TorchInductor.

    The torch function imports ``torch._inductor`` (2.8 s of every measure job's start on the
    2-core VM, bench/RESULTS.md) only to set its ``deterministic`` option. That option is read
    from TORCHINDUCTOR_DETERMINISTIC when TorchInductor is first imported, so the variable is
    set here and the option only where TorchInductor is already loaded; a later
    ``torch.compile`` (``train.compile``, the compiled HVP) then compiles as it would have.
    """
    os.environ["TORCHINDUCTOR_DETERMINISTIC"] = "1" if strict else "0"
    inductor_config = sys.modules.get("torch._inductor.config")
    if inductor_config is not None:
        inductor_config.deterministic = strict
    torch._C._set_deterministic_algorithms(strict, warn_only=False)


def pick_device(requested: str = "auto") -> torch.device:
    """``auto`` picks CUDA when present, else the CPU."""
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(requested)
