"""Benchmark: Hessian curvature estimates of flatrep against the peer libraries curvlinops and
PyHessian, run side by side in one process on the same network, points and loss (float64).

Libraries (``pip install -e .[bench]``; flatrep never imports them):

* flatrep: ``curvature.HessianOperator`` (HVP engine ``--hvp``, any name of
  ``curvature.HVP_METHODS``; default ``auto``, the measure jobs' default: double backward
  through a kept gradient graph on the MLPs and for single vectors, forward-over-reverse
  vmapped over ``--probe-chunk`` probes on the VGG), with ``trace_estimators`` (Hutchinson,
  Hutch++, the Gauss-Newton control variate, ``deflated_frobenius``), ``xtrace``,
  ``krylov.lanczos`` and ``spectrum.slq``; on a network linear in each single parameter
  (``curvature.piecewise_linear``: the ReLU MLPs and the VGG) also Tr G alone, which is then
  Tr H exactly and what the curvature core reports as ``hessian_trace``.
* curvlinops 3.x: ``HessianLinearOperator(model, loss_func, params, [(x, y)])`` (jvp of jacrev,
  vmapped over the columns of a matrix), ``hutchinson_trace``, ``hutchpp_trace``, ``xtrace``,
  ``hutchinson_squared_fro``, ``scipy.sparse.linalg.eigsh`` on ``.to_scipy()`` and
  ``lanczos_approximate_spectrum``.
* PyHessian 0.1: ``hessian(model, criterion, data=(x, y), cuda=False)`` (double backward
  through a gradient graph built once, one vector at a time), ``trace``, ``eigenvalues``
  (power iteration) and ``density`` (SLQ).

Each library differentiates the loss of flatrep's convention, L = (1/n) sum_i l(f(x_i), y_i)
with l = (1/2)||f - y||^2 (``mse``, K/2 times torch's ``MSELoss``) or torch's cross-entropy:
the peers get ``HalfSquaredError`` or ``nn.CrossEntropyLoss``, and one Hessian-vector product
of the three must agree to 1e-10 (relative) before anything is timed.

Networks (``--case``, default all): ``quick_mlp``, the quick study's trained MLP (checkpoint;
MSE); ``tanh_mlp``, a 40-64-64-10 tanh MLP trained a few thousand SGD steps, away from
interpolation (MSE); ``vgg_small``, the small VGG at its seeded init on random CIFAR-shaped
inputs with random binary labels (cross-entropy); ``ce_mlp``, the False-Friend MLP
40-32-10 (checkpoint; cross-entropy). The MLPs use the studies' own curvature rows. A missing
checkpoint (no DVC cache) is replaced by a short training with flatrep's training code.

References: the dense Hessian where P <= ``--dense-max-params`` (its trace, Frobenius norm,
eigenvalues); for the VGG, Tr G from the per-sample Jacobians (exact: a ReLU/max-pool network
is affine in each single parameter, so diag(H - G) = 0, checked on sampled coordinates),
lambda_max from a long Lanczos run (residual bound printed) and ||H||_F from a large
Hutchinson estimate (SE printed).

Accuracy rules, per library and estimator (each a row):

* Tr H and ||H||_F: the matvec budget is doubled until the RMS relative error over
  ``--repeats`` seeds is <= ``--target`` (1 %); seconds are the best of the seeds for one
  estimate at that budget, operator construction (and the control variate's Jacobian pass)
  included.
* lambda_max: RMS relative error over ``--timing-repeats`` seeds <= ``--lambda-target``
  (1e-3): flatrep Lanczos one step (one matvec) more at a time up to 12 steps, then in wider
  strides, as PyHessian's power iteration and eigsh stop at the iteration their tolerance is
  met; eigsh and the power iteration with smaller tolerances.
* A row stops when its next budget would take it past ``--cap`` seconds in all: "not reached",
  with the error at the last budget.
* The VGG has its own ``--vgg-target`` (25 %), ``--vgg-repeats``, ``--vgg-timing-repeats``
  and ``--vgg-cap``: at its init the Hessian is indefinite with ||H||_F about Tr H, so a
  Hutchinson probe's relative spread is about 2 and 1 % would take about 4 x 10^4 HVPs (an
  hour on a CPU core) per estimate.
* SLQ density: the same probes and steps for every library (the quick study's 4 x 20, and
  ``--slq-large`` where a dense reference exists); accuracy is the L1 distance between each
  Gaussian-smoothed density and the dense eigenvalues smoothed with the same sigma on the same
  grid (``spectrum.density_grid`` over the exact spectrum, the quick study's bins and
  smoothing); seconds best of ``--timing-repeats``.
* ratio: peer seconds / flatrep seconds (>= 1: flatrep ahead). A flatrep row is set against
  the fastest peer row of its quantity, a peer row against flatrep's fastest row. The summary
  table sets each side's fastest row of every network and quantity against the other's.
* The budgets double, so two implementations of one estimator (Hutchinson, Hutch++, XTrace in
  two libraries) can land a factor 2 apart by their seeds alone: the "ms / matvec" column
  compares their engines at equal work.

Peer conventions that could not be matched, and how they are bridged here: PyHessian draws its
power-iteration start and Lanczos workspace with ``torch.randn`` / ``torch.zeros`` in the
default dtype (float32), so its calls run with the default dtype set to float64; its
``density`` calls ``torch.eig``, removed from torch, so that call gets a symmetric stand-in
(``torch.linalg.eigh``; its tridiagonal matrix is symmetric); its ``trace`` stops early once
|change of the running mean| / (mean + 1e-6) < tol, which a negative running mean meets for
any tol >= 0, so it runs with tol = -inf and the budget as ``maxIter``; its ``normalization``
divides by ||v|| + 1e-6 (a relative bias of 1e-6 / ||v||, below the targets here). PyHessian
has no Frobenius-norm estimator, and takes the parameters from ``model.parameters()`` (those
with ``requires_grad``), the order of flatrep's and curvlinops' flattened vectors.
curvlinops' estimators take fewer matvecs than P only (so do all ladders here), multiply all
of an estimate's vectors in one vmapped pass (memory grows with the budget; flatrep's pass
``--probe-chunk`` at a time), and its density helper takes the reference's extreme
eigenvalues as ``boundaries`` (so it runs no eigsh) with ``margin`` and ``kappa`` set to give
the shared grid and sigma. curvlinops' operator skips its determinism check
(``check_deterministic=False``: two extra passes at construction). HVPs are counted
by wrapping PyHessian's ``hessian_vector_product`` and the scipy operator's matvec. scipy's
ARPACK does its vector work in OpenBLAS (set OPENBLAS_NUM_THREADS with ``--threads``; it is
negligible beside the HVPs).

Run from the repository root (the checkpoints' and params.yaml's paths are relative to it);
all four cases take about 12 minutes on one thread of the 2-core VM, a third of it the quick
MLP's untimed dense reference (eigvalsh of 11 594 x 11 594; ``--reference-threads``, default
all cores):

    python bench/curvature_peers.py [--case quick_mlp ...] [--hvp NAME] [--json rows.json]
    python bench/curvature_peers.py --quick          # smoke run, under a minute
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import importlib
import json
import math
import os
import tempfile
import time
from pathlib import Path
from typing import Callable
from unittest import mock

import numpy as np
import scipy.sparse.linalg
import torch
from torch import nn

import hessian_trace
from flatrep import checkpoint, determinism, losses, models
from flatrep.cube import measuring
from flatrep.data import datasets
from flatrep.measures import curvature, jacobian, krylov, spectrum, trace_estimators, xtrace
from flatrep.params import studies

try:
    import curvlinops
    import pyhessian
    from curvlinops.papyan2020traces.spectrum import lanczos_approximate_spectrum
    from pyhessian.utils import hessian_vector_product
except ImportError as err:
    raise SystemExit(f"{err}: the peers are the [bench] extra: pip install -e '.[bench]'")

PYHESSIAN_HESSIAN = importlib.import_module("pyhessian.hessian")
DTYPE = torch.float64
TRACE, FRO, LAMBDA = "Tr H", "‖H‖_F", "λ_max"
FLATREP = "flatrep"


class HalfSquaredError(nn.Module):
    """flatrep's 1/2-MSE for the peers: (1/2n) sum_i ||f(x_i) - y_i||^2 (K/2 times
    ``nn.MSELoss()``). ``reduction = "mean"`` tells curvlinops the loss is a batch mean (with
    one batch of all n points its normalisation factor is 1)."""

    reduction = "mean"

    def forward(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return 0.5 * (outputs - targets).pow(2).sum(1).mean()


#: flatrep loss name -> the peers' criterion with the same Hessian.
PEER_CRITERIA = {"mse": HalfSquaredError, "cross_entropy": nn.CrossEntropyLoss}


@dataclasses.dataclass(frozen=True)
class Rules:
    target: float                   # RMS relative error Tr H and ||H||_F must reach
    repeats: int                    # seeds of the Tr H and ||H||_F rows
    timing_repeats: int             # seeds of the lambda_max and density rows
    cap: float                      # seconds a row may take in all

    @classmethod
    def mlp(cls, args) -> Rules:
        return cls(args.target, args.repeats, args.timing_repeats, args.cap)

    @classmethod
    def vgg(cls, args) -> Rules:
        return cls(args.vgg_target, args.vgg_repeats, args.vgg_timing_repeats, args.vgg_cap)


@dataclasses.dataclass
class Problem:
    name: str
    description: str
    origin: str
    model: nn.Module                # float64, eval mode
    x: torch.Tensor
    targets: torch.Tensor           # flatrep's form: one-hot float (mse) or labels
    loss: losses.Loss
    rules: Rules

    @property
    def criterion(self) -> nn.Module:
        return PEER_CRITERIA[self.loss.name]()

    @property
    def dim(self) -> int:
        return sum(p.numel() for p in self.model.parameters())

    def train_loss(self) -> float:
        """The loss in its training convention (torch MSE or cross-entropy) on the rows."""
        with torch.no_grad():
            return self.loss.training(self.model(self.x), self.targets).item()


@dataclasses.dataclass
class Reference:
    how: str
    trace: float
    fro: float
    lambda_max: float
    lambda_min: float
    eigenvalues: torch.Tensor | None = None


@dataclasses.dataclass
class Row:
    case: str
    quantity: str
    library: str
    estimator: str
    budget: str = ""
    matvecs: float | None = None
    accuracy: float = math.nan      # RMS relative error, or L1 distance of densities
    seconds: float = math.nan       # best of the seeds at the budget reached
    reached: bool = False
    note: str = ""
    ratio: float = math.nan


# ---------------------------------------------------------------- the three libraries' operators

def flatrep_operator(problem: Problem, args, probe_chunk: int | None = None):
    return curvature.HessianOperator(problem.model, problem.x, problem.targets, args.hvp,
                                     probe_chunk or args.probe_chunk, loss=problem.loss)


def curvlinops_operator(problem: Problem):
    return curvlinops.HessianLinearOperator(
        problem.model, problem.criterion, list(problem.model.parameters()),
        [(problem.x, problem.targets)], check_deterministic=False, num_data=len(problem.x))


def symmetric_eig(matrix: torch.Tensor, eigenvectors: bool = False):
    """The removed ``torch.eig`` for the symmetric matrices PyHessian's ``density`` passes:
    eigenvalues as (real, imaginary) columns, and the eigenvectors."""
    values, vectors = torch.linalg.eigh(matrix)
    return torch.stack([values, torch.zeros_like(values)], 1), vectors


@contextlib.contextmanager
def pyhessian_session(problem: Problem):
    """(PyHessian ``hessian`` object, count of its HVPs so far), float64 default dtype, the
    ``torch.eig`` stand-in; the parameters' .grad (its gradient graph) cleared before and
    after, since its backward would add to a stale one."""
    problem.model.zero_grad(set_to_none=True)
    previous = torch.get_default_dtype()
    count = [0]
    original = PYHESSIAN_HESSIAN.hessian_vector_product

    def counted(*args, **kwargs):
        count[0] += 1
        return original(*args, **kwargs)

    torch.set_default_dtype(DTYPE)
    try:
        with mock.patch.object(torch, "eig", symmetric_eig), \
                mock.patch.object(PYHESSIAN_HESSIAN, "hessian_vector_product", counted):
            yield pyhessian.hessian(problem.model, problem.criterion,
                                    data=(problem.x, problem.targets), cuda=False), count
    finally:
        torch.set_default_dtype(previous)
        problem.model.zero_grad(set_to_none=True)


def pyhessian_product(problem: Problem, vector: torch.Tensor) -> torch.Tensor:
    """H v by PyHessian's ``hessian_vector_product`` on its gradient graph."""
    with pyhessian_session(problem) as (session, _):
        pieces = vector.split([p.numel() for p in session.params])
        parts = [piece.view_as(p) for piece, p in zip(pieces, session.params)]
        products = hessian_vector_product(session.gradsH, session.params, parts)
        return torch.cat([product.reshape(-1) for product in products]).detach()


def check_products(problem: Problem, args) -> dict[str, float]:
    """Relative error of each peer's H v against flatrep's for one Gaussian v; asserts
    <= 1e-10."""
    operator = flatrep_operator(problem, args)
    vector = torch.randn(operator.dim, generator=torch.Generator().manual_seed(12345),
                         dtype=DTYPE)
    ours = operator.apply(vector[None])[0]
    theirs = {"curvlinops": curvlinops_operator(problem) @ vector,
              "PyHessian": pyhessian_product(problem, vector)}
    errors = {name: ((value - ours).norm() / ours.norm()).item()
              for name, value in theirs.items()}
    assert all(error <= 1e-10 for error in errors.values()), \
        f"{problem.name}: the libraries' Hessian-vector products differ: {errors}"
    return errors


# ---------------------------------------------------------------- networks

def study_split(data_cfg: dict, root: str):
    """(x, labels) of a study's train split: from ``root`` when prepared there, else generated
    into a temporary folder."""
    options = {key: value for key, value in data_cfg.items() if key != "name"}
    if datasets.prepared_path(data_cfg["name"], root, **options).is_file():
        return datasets.load_study_split(data_cfg, "train", root)
    with tempfile.TemporaryDirectory() as folder:
        datasets.prepare(data_cfg["name"], folder, **options)
        return datasets.load_study_split(data_cfg, "train", folder)


def curvature_rows(study: dict, n_train: int, points: int) -> np.ndarray:
    """The training rows a study's curvature measures take (``measuring.measurement_points``)."""
    seed = determinism.sub_seed(study["measure"]["point_seed"], "curvature")
    return measuring.measurement_indices(n_train, points, seed, "--points")


def short_training(study: dict, lr: float, batch_size: int, steps: int):
    """(model, x, labels): the study's model trained ``steps`` SGD steps by
    flatrep.training.single, and the study's train split."""
    short = {"data": study["data"], "model": study["model"],
             "train": {"iterations": steps, "checkpoints": [steps], "optimizer": "sgd",
                       "lr": lr, "batch_size": batch_size, "device": "cpu",
                       "loss": study["train"].get("loss", "mse")}}
    return hessian_trace.train_study(short)


def study_problem(name: str, study_name: str, path: str, lr: float, batch_size: int,
                  args, params: dict) -> Problem:
    """A study's network from its checkpoint ``path`` (or a short training of lr, batch_size
    when it is missing) on the study's curvature rows of its train split."""
    study = studies.study_config(params, study_name)
    if Path(path).is_file():
        model, meta = checkpoint.load(path)
        data_cfg, origin = meta["config"]["data"], f"checkpoint {path}"
        x, labels = study_split(data_cfg, args.data_root)
    else:
        model, x, labels = short_training(study, lr, batch_size, args.fallback_steps)
        data_cfg = study["data"]
        origin = (f"checkpoint {path} MISSING (no DVC cache): trained {args.fallback_steps} SGD "
                  f"steps (lr {lr}, batch {batch_size}) with flatrep.training.single instead")
        torch.set_num_threads(args.threads)
    rows = torch.as_tensor(curvature_rows(study, len(x), args.points))
    loss = losses.get(study["train"].get("loss", "mse"))
    targets = loss.targets(labels[rows], datasets.num_outputs(data_cfg), DTYPE)
    widths = [x.shape[1], *study["model"]["hidden"], datasets.num_outputs(data_cfg)]
    description = (f"MLP {'-'.join(map(str, widths))} {study['model']['activation']} "
                   f"(study {study_name})")
    return Problem(name, description, origin, model.double().eval(), x[rows].to(DTYPE), targets,
                   loss, Rules.mlp(args))


def quick_mlp(args, params) -> Problem:
    return study_problem("quick_mlp", "quick", args.quick_checkpoint, 0.1, 8, args, params)


def ce_mlp(args, params) -> Problem:
    return study_problem("ce_mlp", "false_friend_l2", args.ce_checkpoint, 0.1, 32, args, params)


def tanh_mlp(args, _params) -> Problem:
    model, x, targets = hessian_trace.trained_problem(args.tanh_hidden, args.points,
                                                      args.tanh_steps)
    torch.set_num_threads(args.threads)
    return Problem("tanh_mlp", f"MLP 40-{'-'.join(map(str, args.tanh_hidden))}-10 tanh",
                   f"trained {args.tanh_steps} SGD steps (lr 0.1, batch 20) on MNIST-1D by "
                   "bench/hessian_trace.py's trained_problem; its first rows",
                   model.eval(), x, targets, losses.LOSSES["mse"], Rules.mlp(args))


def vgg_small(args, _params) -> Problem:
    torch.manual_seed(0)
    model = models.vgg_small((3, 32, 32), 2).to(DTYPE).eval()
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(args.vgg_points, 3, 32, 32, generator=generator, dtype=DTYPE)
    labels = torch.randint(0, 2, (args.vgg_points,), generator=generator)
    return Problem("vgg_small", "models.vgg_small((3, 32, 32), 2), ReLU and max-pool",
                   "seeded init (torch.manual_seed(0)); N(0, 1) inputs, random binary labels",
                   model, x, labels, losses.LOSSES["cross_entropy"], Rules.vgg(args))


CASES = {"quick_mlp": quick_mlp, "tanh_mlp": tanh_mlp, "vgg_small": vgg_small, "ce_mlp": ce_mlp}


# ---------------------------------------------------------------- references

def gauss_newton_trace(operator) -> float:
    """Tr G exact from the per-sample Jacobian Grams, as the curvature core computes it."""
    grams = jacobian.per_sample_jacobians(operator.model, operator.x, len(operator.x),
                                          moments=(), grams=("param_gram",),
                                          input_jacobians=False)
    return operator.loss_fn.gauss_newton_trace(operator.output_values, grams["param_gram"])


def dense_reference(problem: Problem, args) -> Reference:
    with threads(args.reference_threads):
        operator = flatrep_operator(problem, args, spectrum.DENSE_PROBE_CHUNK)
        hessian = spectrum.dense_hessian(operator)
        eigenvalues = torch.linalg.eigvalsh(hessian)
    trace, gauss_newton = hessian.trace().item(), gauss_newton_trace(operator)
    how = (f"dense Hessian ({operator.dim} HVPs, eigvalsh); Tr G = {gauss_newton:.6g}, "
           f"Tr(H - G) / Tr H = {(trace - gauss_newton) / trace:.2e}")
    return Reference(how, trace, hessian.norm().item(), eigenvalues[-1].item(),
                     eigenvalues[0].item(), eigenvalues)


def diagonal_residual(operator, coordinates: int) -> float:
    """max |e_p^T (H - G) e_p| / max |e_p^T H e_p| over seeded coordinates p."""
    picks = torch.randperm(operator.dim, generator=torch.Generator().manual_seed(7))
    units = torch.zeros(coordinates, operator.dim, dtype=DTYPE)
    units[torch.arange(coordinates), picks[:coordinates]] = 1.0
    hessian = (units * operator.apply(units)).sum(1)
    gauss_newton = curvature.GaussNewtonOperator(operator).quadratic(units)
    return ((hessian - gauss_newton).abs().max() / hessian.abs().max()).item()


def estimated_reference(problem: Problem, args) -> Reference:
    """Tr G (= Tr H for piecewise-linear networks, checked on the diagonal), Lanczos extremes
    and a large Hutchinson ||H||_F, for networks too large for the dense Hessian."""
    with threads(args.reference_threads):
        operator = flatrep_operator(problem, args)
        residual = diagonal_residual(operator, 16)
        assert residual <= 1e-10, f"diag(H - G) is not 0 ({residual:.2e}): Tr G is not Tr H"
        ritz = krylov.lanczos(operator, args.reference_steps, torch.Generator().manual_seed(99))
        fro = trace_estimators.hutchinson(operator, args.reference_probes,
                                          torch.Generator().manual_seed(98)).frobenius
        trace = gauss_newton_trace(operator)
    how = (f"Tr H = Tr G exact (diag(H - G) = 0: max |e^T (H - G) e| / max |e^T H e| = "
           f"{residual:.1e} on 16 coordinates); lambda_max, lambda_min from Lanczos "
           f"{args.reference_steps} steps (residual bounds {ritz.residuals[-1].item():.1e}, "
           f"{ritz.residuals[0].item():.1e}); ||H||_F by Hutchinson over "
           f"{args.reference_probes} probes (SE {fro.standard_error / fro.value:.2%})")
    return Reference(how, trace, fro.value, ritz.lambda_max, ritz.lambda_min)


@contextlib.contextmanager
def threads(count: int):
    previous = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


# ---------------------------------------------------------------- accuracy ladders

Estimator = Callable[[object, int], tuple[float, float]]   # (budget, seed) -> (value, matvecs)


@dataclasses.dataclass
class Outcome:
    budget: object
    matvecs: float
    error: float
    seconds: float
    reached: bool
    stop: str = ""      # why an unreached row stopped


def timed(estimate: Estimator, budget, seed: int) -> tuple[float, float, float]:
    start = time.perf_counter()
    value, matvecs = estimate(budget, seed)
    return value, matvecs, time.perf_counter() - start


def climb(estimate: Estimator, reference: float, budgets: list, seeds: int, target: float,
          cap: float) -> Outcome:
    """The first of ``budgets`` whose RMS relative error over ``seeds`` seeds is <= target,
    with the mean matvecs and the best seconds of one estimate; unreached (error at the last
    budget) when the next budget would take the row past ``cap`` seconds, or none is left."""
    spent = 0.0
    for index, budget in enumerate(budgets):
        runs = [timed(estimate, budget, seed) for seed in range(seeds)]
        errors = [(value - reference) / reference for value, _, _ in runs]
        error = math.sqrt(sum(e * e for e in errors) / seeds)
        cost = sum(seconds for _, _, seconds in runs)
        spent += cost
        outcome = Outcome(budget, float(np.mean([m for _, m, _ in runs])), error,
                          min(seconds for _, _, seconds in runs), error <= target)
        if outcome.reached:
            return outcome
        if index == len(budgets) - 1:
            return dataclasses.replace(outcome, stop="at the last budget")
        if spent + cost * growth(budget, budgets[index + 1]) > cap:
            return dataclasses.replace(outcome, stop="at cap")
    raise ValueError("no budgets")


def growth(budget, following) -> float:
    """Expected cost ratio of the next budget: the matvec ratio, or 2 for a tolerance."""
    return following / budget if isinstance(budget, int) else 2.0


def doubling(start: int, dim: int) -> list[int]:
    """start, 2 start, 4 start, ... below dim (the peers take fewer matvecs than P)."""
    return [start << k for k in range(32) if start << k < dim]


def ladder_row(problem: Problem, quantity: str, library: str, estimator: str,
               estimate: Estimator, reference: float, budgets: list, rules: Rules) -> Row:
    outcome = climb(estimate, reference, budgets, rules.repeats, rules.target, rules.cap)
    error_format = ".1e" if quantity == LAMBDA else ".2%"
    note = "" if outcome.reached else \
        f"not reached (error {outcome.error:{error_format}} {outcome.stop})"
    return Row(problem.name, quantity, library, estimator, str(outcome.budget), outcome.matvecs,
               outcome.error, outcome.seconds if outcome.reached else math.nan,
               outcome.reached, note)


# ---------------------------------------------------------------- estimators (budget, seed)

def generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def flatrep_traces(problem: Problem, args) -> dict[str, tuple[Estimator, int]]:
    """flatrep's trace estimators: name -> (estimate, first budget)."""
    def control(m, seed):
        operator = flatrep_operator(problem, args)
        value = hessian_trace.control_variate(operator, gauss_newton_trace(operator), m,
                                              generator(seed)).value
        return value, m

    def x_trace(m, seed):
        return xtrace.xtrace(flatrep_operator(problem, args), m, generator(seed)).value, m

    def hutch_pp(m, seed):
        return trace_estimators.hutch_plus_plus(flatrep_operator(problem, args), m,
                                                generator(seed)).value, m

    def hutchinson(m, seed):
        return trace_estimators.hutchinson(flatrep_operator(problem, args), m,
                                           generator(seed)).trace.value, m

    def exact(_m, _seed):
        return gauss_newton_trace(flatrep_operator(problem, args)), 0

    estimators = {"control variate (Tr G exact + Hutchinson on H − G)": (control, 3),
                  "XTrace": (x_trace, 12), "Hutch++": (hutch_pp, 12),
                  "Hutchinson": (hutchinson, 12)}
    if curvature.piecewise_linear(problem.model):      # what the curvature core then takes
        estimators["Tr G exact (piecewise linear: diag(H − G) = 0)"] = (exact, 1)
    return estimators


def curvlinops_traces(problem: Problem) -> dict[str, tuple[Estimator, int]]:
    def wrap(function):
        def estimate(m, seed):
            torch.manual_seed(seed)
            return function(curvlinops_operator(problem), m).item(), m
        return estimate

    return {"hutchinson_trace": (wrap(curvlinops.hutchinson_trace), 12),
            "hutchpp_trace": (wrap(curvlinops.hutchpp_trace), 12),
            "xtrace": (wrap(curvlinops.xtrace), 12)}


def pyhessian_trace(problem: Problem) -> Estimator:
    def estimate(m, seed):
        torch.manual_seed(seed)
        with pyhessian_session(problem) as (session, count):
            samples = session.trace(maxIter=m, tol=-math.inf)
        return float(np.mean(samples)), count[0]
    return estimate


def trace_rows(problem: Problem, reference: Reference, args) -> list[Row]:
    candidates = [(FLATREP, name, estimate, start)
                  for name, (estimate, start) in flatrep_traces(problem, args).items()]
    candidates += [("curvlinops", name, estimate, start)
                   for name, (estimate, start) in curvlinops_traces(problem).items()]
    candidates.append(("PyHessian", "hessian.trace (Hutchinson)", pyhessian_trace(problem), 12))
    return [ladder_row(problem, TRACE, library, name, estimate, reference.trace,
                       doubling(start, problem.dim), problem.rules)
            for library, name, estimate, start in candidates]


def frobenius_rows(problem: Problem, reference: Reference, args) -> list[Row]:
    def ours(m, seed):
        return trace_estimators.hutchinson(flatrep_operator(problem, args), m,
                                           generator(seed)).frobenius.value, m

    def deflated(m, seed):
        return trace_estimators.deflated_frobenius(flatrep_operator(problem, args), m,
                                                   generator(seed)).value, m

    def theirs(m, seed):
        torch.manual_seed(seed)
        return curvlinops.hutchinson_squared_fro(curvlinops_operator(problem), m).sqrt().item(), m

    rows = [ladder_row(problem, FRO, library, name, estimate, reference.fro,
                       doubling(12, problem.dim), problem.rules)
            for library, name, estimate in [(FLATREP, "Hutchinson ‖H v‖²", ours),
                                            (FLATREP, "Hutch++ on H² (deflated_frobenius)",
                                             deflated),
                                            ("curvlinops", "hutchinson_squared_fro", theirs)]]
    return rows + [Row(problem.name, FRO, "PyHessian", "—", note="no Frobenius-norm estimator")]


def lambda_rows(problem: Problem, reference: Reference, args) -> list[Row]:
    def lanczos(steps, seed):
        return krylov.lanczos(flatrep_operator(problem, args), steps,
                              generator(seed)).lambda_max, steps

    candidates = [(FLATREP, "krylov.lanczos (steps)", lanczos,
                   [s for s in (*range(4, 13), 15, 20, 30, 40, 60, 80, 120, 160)
                    if s < problem.dim]),
                  ("curvlinops", "eigsh(to_scipy(), k=1, 'LA') (tol)", eigsh_estimate(problem),
                   [1e-1, 1e-2, 1e-3, 1e-4, 1e-6, 1e-8]),
                  ("PyHessian", f"hessian.eigenvalues (tol, maxIter {args.power_iterations})",
                   power_estimate(problem, args.power_iterations),
                   [1e-3, 1e-4, 1e-5, 1e-6, 1e-7, 1e-8])]
    return [ladder_row(problem, LAMBDA, library, name, estimate, reference.lambda_max, budgets,
                       dataclasses.replace(problem.rules, repeats=problem.rules.timing_repeats,
                                           target=args.lambda_target))
            for library, name, estimate, budgets in candidates]


def eigsh_estimate(problem: Problem) -> Estimator:
    def estimate(tol, seed):
        operator = curvlinops_operator(problem).to_scipy()
        count = [0]

        def matvec(vector):
            count[0] += 1
            return operator.matvec(vector)

        counted = scipy.sparse.linalg.LinearOperator(operator.shape, matvec=matvec,
                                                     dtype=operator.dtype)
        start = np.random.default_rng(seed).standard_normal(operator.shape[0])
        try:
            (value,) = scipy.sparse.linalg.eigsh(counted, k=1, which="LA", tol=tol, v0=start,
                                                 return_eigenvectors=False)
        except scipy.sparse.linalg.ArpackNoConvergence:
            value = math.nan
        return float(value), count[0]
    return estimate


def power_estimate(problem: Problem, max_iterations: int) -> Estimator:
    def estimate(tol, seed):
        torch.manual_seed(seed)
        with pyhessian_session(problem) as (session, count):
            values, _ = session.eigenvalues(maxIter=max_iterations, tol=tol, top_n=1)
        return values[0], count[0]
    return estimate


# ---------------------------------------------------------------- spectral density

@dataclasses.dataclass
class DensityGrid:
    grid: torch.Tensor
    sigma: float
    exact: torch.Tensor | None      # the dense eigenvalues smoothed alike, where known

    def l1(self, density: torch.Tensor) -> float:
        if self.exact is None:
            return math.nan
        return torch.trapezoid((density - self.exact).abs(), self.grid).item()


def density_grid(reference: Reference, bins: int, smoothing: float) -> DensityGrid:
    """``spectrum.density_grid`` over the exact spectrum (or the reference's extremes), and
    the exact eigenvalues smoothed there."""
    if reference.eigenvalues is None:
        nodes = torch.tensor([[reference.lambda_min, reference.lambda_max]], dtype=DTYPE)
        grid, sigma = spectrum.density_grid(spectrum.SLQResult(nodes, nodes * 0, 2), bins,
                                            smoothing)
        return DensityGrid(grid, sigma, None)
    dim = len(reference.eigenvalues)
    exact = spectrum.SLQResult(reference.eigenvalues[None],
                               torch.full((1, dim), 1 / dim, dtype=DTYPE), dim)
    grid, sigma = spectrum.density_grid(exact, bins, smoothing)
    return DensityGrid(grid, sigma, exact.density(grid, sigma))


def density_estimators(problem: Problem, args, shared: DensityGrid):
    """(library, estimator, ((probes, steps), seed) -> (density on the shared grid, matvecs))."""
    def ours(size, seed):
        probes, steps = size
        result = spectrum.slq(flatrep_operator(problem, args), probes, steps, generator(seed))
        return result.density(shared.grid, shared.sigma), probes * steps

    def pyhessian_density(size, seed):
        probes, steps = size
        torch.manual_seed(seed)
        with pyhessian_session(problem) as (session, count):
            nodes, weights = session.density(iter=steps, n_v=probes)
        result = spectrum.SLQResult(torch.tensor(np.array(nodes), dtype=DTYPE),
                                    torch.tensor(np.array(weights), dtype=DTYPE), problem.dim)
        return result.density(shared.grid, shared.sigma), count[0]

    def curvlinops_density(size, seed):
        probes, steps = size
        torch.manual_seed(seed)
        low, high = shared.grid[0].item(), shared.grid[-1].item()
        margin = 3 * shared.sigma
        width = (high - low) / 2
        kappa = math.exp((2 * width / ((steps - 1) * shared.sigma)) ** 2 / 8)
        grid, density = lanczos_approximate_spectrum(
            curvlinops_operator(problem), steps, num_points=len(shared.grid),
            num_repeats=probes, kappa=kappa, boundaries=(low + margin, high - margin),
            margin=margin / (high - low - 2 * margin))
        assert torch.allclose(grid, shared.grid), "curvlinops' grid is not the shared one"
        return density, probes * steps

    return [(FLATREP, "spectrum.slq + SLQResult.density", ours),
            ("PyHessian", "hessian.density (SLQ), smoothed alike", pyhessian_density),
            ("curvlinops", "lanczos_approximate_spectrum (kappa, margin matched)",
             curvlinops_density)]


def density_rows(problem: Problem, reference: Reference, args, settings) -> list[Row]:
    shared = density_grid(reference, settings["bins"], settings["smoothing"])
    rows = []
    for probes, steps in settings["sizes"]:
        quantity = f"SLQ density {probes}×{steps}"
        for library, name, estimate in density_estimators(problem, args, shared):
            runs = [timed(estimate, (probes, steps), seed)
                    for seed in range(problem.rules.timing_repeats)]
            error = float(np.mean([shared.l1(density) for density, _, _ in runs]))
            rows.append(Row(problem.name, quantity, library, name, f"{probes} probes × {steps}",
                            float(np.mean([m for _, m, _ in runs])), error,
                            min(seconds for _, _, seconds in runs), True,
                            "" if shared.exact is not None else "no dense spectrum"))
    return rows


# ---------------------------------------------------------------- ratios, tables

def fastest(rows: list[Row]) -> Row | None:
    timed_rows = [row for row in rows if row.reached]
    return min(timed_rows, key=lambda row: row.seconds) if timed_rows else None


def add_ratios(rows: list[Row]) -> None:
    """ratio = peer seconds / flatrep seconds: a flatrep row against the fastest peer of its
    quantity, a peer row against flatrep's fastest (>= 1: flatrep ahead)."""
    for quantity in dict.fromkeys(row.quantity for row in rows):
        group = [row for row in rows if row.quantity == quantity]
        ours = fastest([row for row in group if row.library == FLATREP])
        peer = fastest([row for row in group if row.library != FLATREP])
        for row in group:
            if not row.reached:
                continue
            if row.library == FLATREP:
                row.ratio = peer.seconds / row.seconds if peer else math.inf
            else:
                row.ratio = row.seconds / ours.seconds if ours else 0.0


def summary_rows(rows: list[Row]) -> list[dict]:
    summary = []
    for case, quantity in dict.fromkeys((row.case, row.quantity) for row in rows):
        group = [row for row in rows if (row.case, row.quantity) == (case, quantity)]
        ours = fastest([row for row in group if row.library == FLATREP])
        peer = fastest([row for row in group if row.library != FLATREP])
        ratio = (peer.seconds / ours.seconds if ours and peer else math.inf if ours
                 else 0.0 if peer else math.nan)
        summary.append({"case": case, "quantity": quantity,
                        "flatrep": dataclasses.asdict(ours) if ours else None,
                        "peer": dataclasses.asdict(peer) if peer else None, "ratio": ratio})
    return summary


def number(value, fmt: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    if isinstance(value, float) and math.isinf(value):
        return "∞"
    return format(value, fmt)


def accuracy_text(row: Row) -> str:
    if row.quantity.startswith("SLQ"):
        return f"L1 {number(row.accuracy, '.3f')}"
    return number(row.accuracy, ".2%" if row.quantity != LAMBDA else ".1e")


def print_case(problem: Problem, reference: Reference, agreement: dict, rows: list[Row],
               args) -> None:
    print(f"\n### {problem.name}: {problem.description}, P = {problem.dim}, "
          f"{len(problem.x)} points, loss {problem.loss.name}, float64, "
          f"{torch.get_num_threads()} thread(s), hvp {args.hvp}\n", flush=True)
    print(f"- network: {problem.origin}; train loss ({problem.loss.name}, training "
          f"convention) on these points: {problem.train_loss():.4g}")
    print("- HVP agreement with flatrep (relative error of H v): "
          + ", ".join(f"{name} {error:.1e}" for name, error in agreement.items()))
    print(f"- reference: {reference.how}: Tr H = {reference.trace:.6g}, "
          f"‖H‖_F = {reference.fro:.6g}, λ_max = {reference.lambda_max:.6g}, "
          f"λ_min = {reference.lambda_min:.6g}")
    rules = problem.rules
    print(f"- targets: Tr H and ‖H‖_F RMS relative error ≤ {rules.target:.0%} over "
          f"{rules.repeats} seeds; λ_max ≤ {args.lambda_target:.0e} over "
          f"{rules.timing_repeats} seed(s) (also the density rows' seeds); at most "
          f"{rules.cap:g} s a row\n")
    print("| quantity | library | estimator | budget | matvecs | accuracy | seconds | "
          "ms / matvec | ratio |")
    print("|---|---|---|---|---|---|---|---|---|")
    for row in rows:
        seconds = number(row.seconds, ".3f") if row.reached else row.note
        per_matvec = 1e3 * row.seconds / row.matvecs if row.matvecs else math.nan
        print(f"| {row.quantity} | {row.library} | {row.estimator} | {row.budget} | "
              f"{number(row.matvecs, '.0f')} | {accuracy_text(row)} | {seconds} | "
              f"{number(per_matvec, '.2f')} | {number(row.ratio, '.2f')} |", flush=True)


def print_summary(summary: list[dict]) -> None:
    print("\n### Summary: fastest row of each side at the stated accuracy\n")
    print("| network | quantity | flatrep best | seconds | fastest peer | seconds | ratio |")
    print("|---|---|---|---|---|---|---|")
    for entry in summary:
        ours, peer = entry["flatrep"], entry["peer"]
        ours_text = (ours["estimator"], number(ours["seconds"], ".3f")) if ours else \
            ("not reached", "—")
        peer_text = (f"{peer['library']}: {peer['estimator']}", number(peer["seconds"], ".3f")) \
            if peer else ("not reached", "—")
        print(f"| {entry['case']} | {entry['quantity']} | {ours_text[0]} | {ours_text[1]} | "
              f"{peer_text[0]} | {peer_text[1]} | {number(entry['ratio'], '.2f')} |")


# ---------------------------------------------------------------- main

def run_case(name: str, args, params: dict, slq: dict) -> tuple[list[Row], dict]:
    problem = CASES[name](args, params)
    agreement = check_products(problem, args)
    reference = (dense_reference(problem, args) if problem.dim <= args.dense_max_params
                 else estimated_reference(problem, args))
    sizes = slq["sizes"] if reference.eigenvalues is not None else slq["sizes"][:1]
    rows = (trace_rows(problem, reference, args) + frobenius_rows(problem, reference, args)
            + lambda_rows(problem, reference, args)
            + density_rows(problem, reference, args, {**slq, "sizes": sizes}))
    add_ratios(rows)
    print_case(problem, reference, agreement, rows, args)
    meta = {"case": name, "description": problem.description, "origin": problem.origin,
            "parameters": problem.dim, "points": len(problem.x), "loss": problem.loss.name,
            "train_loss": problem.train_loss(), "hvp_agreement": agreement,
            "reference": {key: value for key, value in dataclasses.asdict(reference).items()
                          if key != "eigenvalues"},
            "rules": dataclasses.asdict(problem.rules)}
    return rows, meta


def slq_settings(params: dict, args) -> dict:
    """The quick study's SLQ probes, steps, bins and smoothing, and ``--slq-large``."""
    quick = studies.study_config(params, "quick")["measure"]["curvature"]["spectral_density"]
    larger = [tuple(args.slq_large)] if args.slq_large and args.slq_large[0] > 0 else []
    sizes = [(quick["probes"], quick["steps"])] + larger
    return {"sizes": sizes, "bins": quick["bins"], "smoothing": quick["smoothing"]}


QUICK = {"case": ["ce_mlp", "tanh_mlp"], "points": 48, "vgg_points": 4, "repeats": 2,
         "vgg_repeats": 2, "timing_repeats": 1, "cap": 1.0, "vgg_cap": 2.0, "target": 0.1,
         "vgg_target": 0.5, "lambda_target": 1e-2, "tanh_hidden": [16, 16], "tanh_steps": 100,
         "fallback_steps": 50, "slq_large": None, "power_iterations": 50,
         "reference_steps": 20, "reference_probes": 16}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--case", nargs="+", choices=list(CASES), default=list(CASES))
    parser.add_argument("--hvp", default="auto",
                        help=f"flatrep's HVP engine (curvature.HVP_METHODS: "
                             f"{', '.join(curvature.HVP_METHODS)})")
    parser.add_argument("--probe-chunk", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--reference-threads", type=int, default=os.cpu_count(),
                        help="threads of the untimed references (dense Hessian, eigvalsh)")
    parser.add_argument("--points", type=int, default=256, help="training rows of the MLPs")
    parser.add_argument("--vgg-points", type=int, default=16)
    parser.add_argument("--target", type=float, default=0.01)
    parser.add_argument("--vgg-target", type=float, default=0.25)
    parser.add_argument("--lambda-target", type=float, default=1e-3)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--vgg-repeats", type=int, default=3)
    parser.add_argument("--vgg-timing-repeats", type=int, default=1)
    parser.add_argument("--vgg-cap", type=float, default=20.0)
    parser.add_argument("--timing-repeats", type=int, default=3)
    parser.add_argument("--cap", type=float, default=10.0, help="seconds a row may take")
    parser.add_argument("--slq-large", type=int, nargs=2, default=[8, 40],
                        metavar=("PROBES", "STEPS"), help="the larger SLQ setting (0 0: none)")
    parser.add_argument("--power-iterations", type=int, default=500)
    parser.add_argument("--dense-max-params", type=int, default=12000)
    parser.add_argument("--reference-steps", type=int, default=60)
    parser.add_argument("--reference-probes", type=int, default=256)
    parser.add_argument("--quick-checkpoint",
                        default="results/quick/runs/lr0.1_bs8_seed1/step_81818.pt")
    parser.add_argument("--ce-checkpoint",
                        default="results/false_friend_l2/runs/wd0.0_seed0/step_40000.pt")
    parser.add_argument("--fallback-steps", type=int, default=5000,
                        help="SGD steps of the training that replaces a missing checkpoint")
    parser.add_argument("--tanh-hidden", type=int, nargs="+", default=[64, 64])
    parser.add_argument("--tanh-steps", type=int, default=3000)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--data-root", default="data")
    parser.add_argument("--json", help="write the rows, cases and summary here")
    parser.add_argument("--quick", action="store_true",
                        help=f"smoke run, under a minute: {QUICK}")
    args = parser.parse_args(argv)
    if args.quick:     # the tiny sizes, where the option was left at its default
        vars(args).update({key: value for key, value in QUICK.items()
                           if getattr(args, key) == parser.get_default(key)})
    return args


def main(argv=None):
    args = parse_args(argv)
    determinism.configure(strict=True, threads=args.threads)
    params = studies.load_params(args.params)
    slq = slq_settings(params, args)
    rows, cases = [], []
    for name in args.case:
        case_rows, meta = run_case(name, args, params, slq)
        rows += case_rows
        cases.append(meta)
    summary = summary_rows(rows)
    print_summary(summary)
    if args.json:
        Path(args.json).write_text(json.dumps(
            {"args": vars(args), "cases": cases, "rows": [dataclasses.asdict(r) for r in rows],
             "summary": summary}, indent=1, default=str))


if __name__ == "__main__":
    main()
