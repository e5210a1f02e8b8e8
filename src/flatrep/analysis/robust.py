"""Dziugaite et al.'s robust sign-error and Jiang et al.'s conditional mutual information over
coupled pairs of runs, at the final checkpoint of the healthy runs.

**Axes.** The run coordinates of ``flatrep.cube.views.hyperparameters`` except ``seed`` that
take more than one value. Coordinates that determine each other one-to-one over the runs
(a study arm: ``optimizer``, ``lr`` and ``averaging_start`` set together) form one axis, named
by joining them with ``+``; a run's value on it joins theirs with ``/``. Values are compared as
strings (as ``correlations.cells`` does), so NaN equals NaN.

**Coupled pairs** (Dziugaite et al. 2020, "In search of robust measures of generalization",
NeurIPS, the coupled-network experiments). Two configurations (runs grouped by their
values on every axis) are coupled when they differ on exactly one axis. Their runs are paired
seed by seed: run a of one and run b of the other with seed_a = seed_b. Where the two
configurations share no seed (or the cube has no ``seed``), every run of one is paired with
every run of the other, as Dziugaite et al.'s ``create_environments.py`` pairs all repeats of
two configurations; ``shared_seed`` records which rule made each pair. Runs of one
configuration are never paired (they differ in no axis). For a value v, Δv = v_b - v_a.

**Sign-error** of a pair for a measure c and a target g (their ``sign_error``):
e = (1 - sign(Δc) sign(Δg)) / 2, 0 when the pair's order by c is its order by g, 1 when it is
reversed, 1/2 on a tie. Signs are those of the comparison (two equal infinities tie); a pair
with NaN in c or g is dropped. Targets: the generalisation gap (``generalization_gap``, or
train_acc - test_acc where the cube lacks it), the test error 1 - test_acc (so that, as for
the gap, e = 0 means "sharper, worse"), and each compression measure; on a compression target
e = 0 means "flatter, more compressed" (Chen et al.'s claim).

**Weights** (their ``hoeffding_weight`` and the (w - 1/2)_+ filter of
``create_environments.py``). A target that is a frequency over the n test rows (the gap and
the test error) is estimated with error |ĝ - g| >= t with probability <= 2 exp(-2 n t^2)
(Hoeffding); if both runs' estimates lie within |Δĝ|/2 of their truths the observed sign is
right, so with independent test-set noise

    psi(Δĝ) = max(0, 1 - 2 exp(-2 n (|Δĝ|/2)^2))^2 = max(0, 1 - 2 exp(-n Δĝ^2 / 2))^2

bounds from below the probability that the sign is right, and the pair weighs
w = (psi - 1/2)_+: a pair whose Δĝ is within test-set noise (psi <= 1/2) does not count.
n is the test split's size (``n_test_rows``). The compression targets are not test-set
frequencies: every pair weighs 1.

**Environments and the robust error.** An environment is one axis together with one value of
every other axis (seeds pooled: an environment holds the pairs along that axis at those
values, for every seed). Its sign-error is the weighted mean
E_e = sum_{k in e} w_k e_k / sum_{k in e} w_k (undefined when the weights sum to 0; their
per-environment loss), with effective sample size (sum w)^2 / sum w^2 (Dziugaite et al. drop
environments below 12; flatrep's grids are far smaller, so it is reported instead). The
robust sign-error is their robust error sup_e E_{ω ~ P^e} ℓ: max_e E_e, the worst
environment; beside it the weighted mean over all pairs, sum_k w_k e_k / sum_k w_k, and the
empirical CDF of E_e over the environments (the figure of their paper): F(E_e) =
#{e' : E_e' <= E_e} / #environments with a defined E. (The "mean" line of their figure is the
mean of E_e over environments; the pooled weighted mean here weighs each pair alike.) Ties
for the worst environment go to the first in sorted label order.

**Conditional mutual information** (Jiang et al. 2019, "Fantastic generalization measures
and where to find them", ICLR 2020, and the PGDL 2020 scoring program). Over the coupled pairs,
each counted in both orders (as both do: the reversed pair has -sign(Δc), -sign(Δg)), the
empirical frequencies of V_c = sign(Δc), V_g = sign(Δg) and U_S give

    I(V_c; V_g | U_S) = sum_u p(u) [H(V_c | u) + H(V_g | u) - H(V_c, V_g | u)],
    H(V_g | U_S) = sum_u p(u) H(V_g | u),     (bits)

U_S the pair's values of the axes in S (for an axis the pair shares, the shared value; for the
axis it varies along, the unordered pair of its two values), S any set of at most two axes
(the empty set included; ``seed`` is no axis). The score is
min_S I(V_c; V_g | U_S) / H(V_g | U_S) over the sets with H(V_g | U_S) > 0: 0 when c says
nothing of g's sign in some conditioning, 1 when it determines it in every one. Unweighted: pairs
count by their frequency, as in Jiang et al. The PGDL scoring program differs in two ways: it pairs
every two models (not only coupled ones) and conditions on the ordered values (v_a, v_b), averaging
I and H over the cells with equal weights; here cells weigh by p(u), as in the expectation that
defines I(V_c; V_g | U).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from itertools import combinations

import numpy as np
import scipy.stats
import xarray as xr

from flatrep.analysis.correlations import cells
from flatrep.cube.views import final_healthy, hyperparameters, run_level

#: The run coordinate that is held fixed within a pair rather than varied.
SEED = "seed"

#: Measures c whose sign-errors are reported: sharpness always, the others where measured.
MEASURES = ("sharpness", "hessian_trace", "hessian_lambda_max")

#: Targets g estimated as frequencies over the test rows (Hoeffding-weighted pairs).
ACCURACY_TARGETS = ("generalization_gap", "test_error")

#: Pairs whose psi is at most this weigh 0 (Dziugaite et al.'s (w - 0.5)_+).
MIN_WEIGHT = 0.5

#: Largest conditioning set of the conditional mutual information (Jiang et al.: |S| <= 2).
MAX_CONDITIONING = 2

#: Label of the empty conditioning set.
UNCONDITIONED = "none"


@dataclass(frozen=True)
class Pairs:
    """Coupled pairs of runs: indices ``a``, ``b`` into the runs, the ``axis`` each varies
    along, its ``environment`` label, whether the two runs share their seed, and per axis the
    pair's value key U (``conditioning_keys``)."""
    a: np.ndarray
    b: np.ndarray
    axis: np.ndarray
    environment: np.ndarray
    shared_seed: np.ndarray
    keys: dict[str, np.ndarray]


def axes(hparams: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """{axis name: each run's value label}: the varying non-seed coordinates, those that
    determine each other one-to-one merged into one axis (names joined by ``+``)."""
    varying = {name: np.asarray(values).astype(str) for name, values in hparams.items()
               if name != SEED and len(np.unique(np.asarray(values).astype(str))) > 1}
    groups: list[list[str]] = []
    for name in varying:
        group = next((g for g in groups if _one_to_one(varying[g[0]], varying[name])), None)
        if group is None:
            groups.append([name])
        else:
            group.append(name)
    return {"+".join(group): np.array(["/".join(values) for values in
                                       zip(*(varying[name] for name in group))])
            for group in groups}


def _one_to_one(x: np.ndarray, y: np.ndarray) -> bool:
    """Whether each value of x goes with one value of y and vice versa."""
    joint = np.char.add(np.char.add(x, "\x1f"), y)
    return len(np.unique(x)) == len(np.unique(y)) == len(np.unique(joint))


def coupled_pairs(hparams: dict[str, np.ndarray]) -> Pairs:
    """The coupled pairs of runs with coordinates ``hparams`` (module docstring)."""
    labels = axes(hparams)
    names = list(labels)
    n = len(next(iter(hparams.values()))) if hparams else 0
    seeds = np.asarray(hparams[SEED]).astype(str) if SEED in hparams else None
    table = np.stack([labels[name] for name in names], axis=1) if names else np.empty((n, 0))
    config = cells([labels[name] for name in names], n)
    found = []
    for first, second in combinations(np.unique(config), 2):
        runs_a, runs_b = np.flatnonzero(config == first), np.flatnonzero(config == second)
        differ = table[runs_a[0]] != table[runs_b[0]]
        if differ.sum() != 1:
            continue
        axis = names[int(np.argmax(differ))]
        every = [(i, j) for i in runs_a for j in runs_b]
        same = [(i, j) for i, j in every if seeds is not None and seeds[i] == seeds[j]]
        found += [(i, j, axis, bool(same)) for i, j in (same or every)]
    a = np.array([pair[0] for pair in found], dtype=int)
    b = np.array([pair[1] for pair in found], dtype=int)
    axis = np.array([pair[2] for pair in found], dtype=object)
    environment = np.array([_environment(name, table[i], names) for i, name in zip(a, axis)],
                           dtype=object)
    return Pairs(a, b, axis, environment, np.array([pair[3] for pair in found], dtype=bool),
                 {name: conditioning_keys(labels[name][a], labels[name][b]) for name in names})


def _environment(axis: str, values: np.ndarray, names: list[str]) -> str:
    """'axis @ other=value, ...': the axis a pair varies along and the others' values."""
    others = ", ".join(f"{name}={value}" for name, value in zip(names, values) if name != axis)
    return f"{axis} @ {others}" if others else axis


def conditioning_keys(first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """U of each pair on one axis: the shared value, or the unordered pair 'v|w' of two."""
    ordered = first <= second
    low, high = np.where(ordered, first, second), np.where(ordered, second, first)
    return np.where(low == high, low, np.char.add(np.char.add(low, "|"), high))


def pair_signs(values: np.ndarray, pairs: Pairs) -> np.ndarray:
    """sign(v_b - v_a) per pair from the comparison (equal infinities tie), NaN where either
    value is NaN."""
    first, second = values[pairs.a], values[pairs.b]
    signs = (second > first).astype(float) - (second < first)
    return np.where(np.isnan(first) | np.isnan(second), np.nan, signs)


def sign_errors(sign_c: np.ndarray, sign_g: np.ndarray) -> np.ndarray:
    """(1 - sign(Δc) sign(Δg)) / 2 per pair."""
    return (1 - sign_c * sign_g) / 2


def hoeffding_weight(delta: np.ndarray, n: int) -> np.ndarray:
    """w = (psi - 1/2)_+, psi = max(0, 1 - 2 exp(-n Δ^2 / 2))^2 (module docstring)."""
    psi = np.maximum(0.0, 1 - 2 * np.exp(-n * np.square(delta) / 2)) ** 2
    return np.maximum(psi - MIN_WEIGHT, 0.0)


def weighted_mean(errors: np.ndarray, weights: np.ndarray) -> float:
    """sum w e / sum w; NaN when the weights sum to 0."""
    total = weights.sum()
    return float((weights * errors).sum() / total) if total > 0 else float("nan")


def environment_errors(errors: np.ndarray, weights: np.ndarray, environment: np.ndarray,
                       labels: list[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per environment of ``labels``: the weighted mean sign-error, the weight sum and the
    effective sample size (sum w)^2 / sum w^2 (NaN where the weights sum to 0)."""
    mean, total, ess = (np.full(len(labels), np.nan) for _ in range(3))
    for k, label in enumerate(labels):
        member = environment == label
        w = weights[member]
        total[k] = w.sum()
        mean[k] = weighted_mean(errors[member], w)
        if total[k] > 0:
            ess[k] = total[k] ** 2 / np.square(w).sum()
    return mean, total, ess


def empirical_cdf(values: np.ndarray) -> np.ndarray:
    """F(v_k) = #{j : v_j <= v_k} / m over the m finite values; NaN where v_k is NaN."""
    finite = values[np.isfinite(values)]
    return np.where(np.isfinite(values), (finite[None, :] <= values[:, None]).sum(1)
                    / max(len(finite), 1), np.nan)


def _entropy(codes: np.ndarray) -> float:
    """Entropy in bits of the empirical distribution of ``codes``."""
    return float(scipy.stats.entropy(np.unique(codes, return_counts=True)[1], base=2))


def conditional_mutual_information(sign_c: np.ndarray, sign_g: np.ndarray,
                                   condition: np.ndarray) -> tuple[float, float]:
    """(I(V_c; V_g | U), H(V_g | U)) in bits from the empirical frequencies of the pairs,
    each counted in both orders (module docstring); ``condition`` is each pair's U."""
    vc = np.concatenate([sign_c, -sign_c]).astype(int)
    vg = np.concatenate([sign_g, -sign_g]).astype(int)
    u = np.concatenate([condition, condition])
    information = entropy = 0.0
    for value in np.unique(u):
        member = u == value
        h_g = _entropy(vg[member])
        joint = 3 * vc[member] + vg[member]       # one code per (V_c, V_g), signs in {-1, 0, 1}
        information += member.mean() * (_entropy(vc[member]) + h_g - _entropy(joint))
        entropy += member.mean() * h_g
    return information, entropy


def conditioning_sets(names: list[str]) -> list[tuple[str, ...]]:
    """Every set of at most ``MAX_CONDITIONING`` axes, the empty set first."""
    return [subset for size in range(MAX_CONDITIONING + 1)
            for subset in combinations(names, size)]


def conditioning_label(subset: tuple[str, ...]) -> str:
    """'lr, batch_size'; ``UNCONDITIONED`` for the empty set."""
    return ", ".join(subset) or UNCONDITIONED


def _condition(pairs: Pairs, subset: tuple[str, ...], keep: np.ndarray) -> np.ndarray:
    """U_S of the kept pairs: their keys on the axes of S joined ('' for the empty set)."""
    if not subset:
        return np.full(int(keep.sum()), "")
    return np.array(["\x1f".join(values)
                     for values in zip(*(pairs.keys[name][keep] for name in subset))])


def target_values(final: xr.Dataset, name: str) -> np.ndarray | None:
    """A measure or target per run of the final checkpoint: ``generalization_gap`` (else
    train_acc - test_acc), ``test_error`` = 1 - test_acc, or the run-level variable; None
    where the cube lacks it."""
    if name == "generalization_gap" and name not in final and {"train_acc",
                                                               "test_acc"} <= set(final):
        return (final["train_acc"] - final["test_acc"]).values
    if name == "test_error":
        return (1 - final["test_acc"]).values if "test_acc" in final else None
    return run_level(final, name).values if name in final else None


def n_test_rows(cube: xr.Dataset) -> int | None:
    """Rows of the test split behind test_acc: ``flatrep.data.datasets.split_sizes`` of the
    cube's study ``data`` section (attribute ``config``); None where that cannot tell."""
    data = json.loads(cube.attrs.get("config", "{}")).get("data")
    if data is None:
        return None
    # imported here: it imports torch, which the rest of the analysis never needs
    from flatrep.data import datasets

    sizes = datasets.split_sizes(data)
    return None if sizes is None else int(sizes["test"])


def pair_weights(values_g: np.ndarray | None, target: str, pairs: Pairs,
                 n_test: int | None) -> np.ndarray:
    """Each pair's weight for ``target``: the Hoeffding weight of Δg for the accuracy
    targets (NaN without a test-set size or a target), 1 for the others."""
    if target not in ACCURACY_TARGETS:
        return np.ones(len(pairs.a))
    if values_g is None or not n_test:
        return np.full(len(pairs.a), np.nan)
    return hoeffding_weight(values_g[pairs.b] - values_g[pairs.a], n_test)


@dataclass
class Cell:
    """The statistics of one (measure, target); NaN and a reason where not tested.

    ``pair_errors`` (pairs,); ``environments`` (4, environments): the weighted mean sign-error,
    weight sum, effective sample size and CDF of each; ``cmi`` (sets, 2): I(V_c; V_g | U_S) and
    H(V_g | U_S) of each conditioning set."""
    pair_errors: np.ndarray
    environments: np.ndarray
    cmi: np.ndarray
    reason: str = ""
    cmi_reason: str = ""
    n_pairs: int = 0
    sign_error: float = np.nan
    weight_sum: float = np.nan
    worst: float = np.nan
    worst_environment: str = ""
    cmi_min: float = np.nan
    cmi_set: str = ""


def cell(values_c: np.ndarray | None, values_g: np.ndarray | None, names: tuple[str, str],
         weights: np.ndarray, pairs: Pairs, environments: list[str],
         subsets: list[tuple[str, ...]], n_test: int | None) -> Cell:
    """Sign-errors and CMI of one measure c against one target g (``names`` = (c, g)) over
    ``pairs``, with the pairs' ``weights`` for g."""
    c, g = names
    out = Cell(np.full(len(pairs.a), np.nan), np.full((4, len(environments)), np.nan),
               np.full((len(subsets), 2), np.nan))
    missing = [name for name, values in ((c, values_c), (g, values_g)) if values is None]
    if missing or not len(pairs.a):
        out.reason = out.cmi_reason = (
            f"not tested: {missing[0]} is not in the cube" if missing else
            "not tested: no two healthy runs differ in exactly one hyperparameter (seed aside)")
        return out
    sign_c, sign_g = pair_signs(values_c, pairs), pair_signs(values_g, pairs)
    keep = np.isfinite(sign_c) & np.isfinite(sign_g)
    out.n_pairs = int(keep.sum())
    if not keep.any():
        out.reason = out.cmi_reason = (f"not tested: no coupled pair has values of both {c} "
                                       f"and {g}")
        return out
    out.pair_errors = np.where(keep, sign_errors(sign_c, sign_g), np.nan)
    w = np.where(keep, weights, 0.0)
    errors = np.where(keep, out.pair_errors, 0.0)
    if np.isnan(w).any():
        out.reason = "not tested: the test-set size is unknown (no Hoeffding weights)"
    elif w.sum() == 0:
        out.reason = (f"not tested: every pair's Δ{g} is within test-set noise (weight 0 "
                      f"at n_test = {n_test})")
    else:
        out.sign_error, out.weight_sum = weighted_mean(errors, w), float(w.sum())
        mean, total, ess = environment_errors(errors, w, pairs.environment, environments)
        out.environments = np.stack([mean, total, ess, empirical_cdf(mean)])
        worst = int(np.nanargmax(mean))
        out.worst, out.worst_environment = float(mean[worst]), environments[worst]
    out.cmi = np.array([conditional_mutual_information(sign_c[keep], sign_g[keep],
                                                       _condition(pairs, subset, keep))
                        for subset in subsets])
    defined = out.cmi[:, 1] > 0
    if not defined.any():
        out.cmi_reason = f"not tested: sign(Δ{g}) is 0 for every coupled pair"
        return out
    ratio = np.where(defined, out.cmi[:, 0] / np.where(defined, out.cmi[:, 1], 1.0), np.inf)
    best = int(np.argmin(ratio))
    out.cmi_min, out.cmi_set = float(ratio[best]), conditioning_label(subsets[best])
    return out


def robust_statistics(cube: xr.Dataset, compression: tuple[str, ...],
                      n_test: int | None) -> xr.Dataset:
    """The sign-errors and CMI of every measure (``MEASURES`` present in the cube, sharpness
    always) against every target (the gap, the test error, each of ``compression``) over
    the coupled pairs of the healthy runs at the final checkpoint; ``n_test`` the test-set
    size of the Hoeffding weights (None: the accuracy targets' sign-errors are not tested).
    Variables ``robust_*`` (``ATTRIBUTES``)."""
    final = final_healthy(cube)
    pairs = coupled_pairs(hyperparameters(final))
    measures = [name for name in MEASURES if name == MEASURES[0] or name in final]
    targets = [*ACCURACY_TARGETS, *compression]
    environments = sorted(set(pairs.environment))
    subsets = conditioning_sets(list(pairs.keys))
    values = {name: target_values(final, name) for name in [*measures, *targets]}
    weights = np.stack([pair_weights(values[g], g, pairs, n_test) for g in targets])
    cells_ = [[cell(values[c], values[g], (c, g), weights[t], pairs, environments, subsets,
                    n_test) for t, g in enumerate(targets)] for c in measures]
    return _dataset(cells_, weights, pairs, final["run"].values.astype(str),
                    {"robust_measure": measures, "robust_target": targets,
                     "robust_environment": environments,
                     "robust_conditioning": [conditioning_label(s) for s in subsets]},
                    n_test)


#: long_name and definition of every variable ``robust_statistics`` writes.
ATTRIBUTES = {
    "robust_sign_error": ("weighted mean sign-error over the coupled pairs",
                          "sum_k w_k e_k / sum_k w_k, e_k = (1 - sign(Δc) sign(Δg)) / 2 "
                          "(Dziugaite et al. 2020); NaN where not tested"),
    "robust_sign_error_worst": ("robust sign-error: worst environment",
                                "max over environments of their weighted mean sign-error"),
    "robust_worst_environment": ("environment of robust_sign_error_worst",
                                 "'axis @ other=value, ...' ('' where not tested)"),
    "robust_n_pairs": ("coupled pairs with values of both c and g", "count"),
    "robust_weight_sum": ("sum of the pairs' weights", "sum_k w_k"),
    "robust_sign_error_reason": ("why the sign-error is not tested", "'' where tested"),
    "robust_environment_sign_error": ("weighted mean sign-error of each environment",
                                      "sum_{k in e} w_k e_k / sum_{k in e} w_k"),
    "robust_environment_weight": ("sum of the environment's pair weights", "sum_{k in e} w_k"),
    "robust_environment_ess": ("effective sample size of the environment",
                               "(sum w)^2 / sum w^2 over its pairs"),
    "robust_environment_cdf": ("empirical CDF of the environments' sign-errors",
                               "#{e' : E_e' <= E_e} / #environments with a defined E"),
    "robust_pair_sign_error": ("sign-error of each coupled pair",
                               "(1 - sign(Δc) sign(Δg)) / 2, Δv = v_b - v_a"),
    "robust_pair_weight": ("weight of each coupled pair",
                           "(psi - 1/2)_+, psi = max(0, 1 - 2 exp(-n Δg^2 / 2))^2 for the gap "
                           "and the test error (n = robust_test_set_size); 1 otherwise"),
    "robust_cmi": ("conditional mutual information of sign(Δc) and sign(Δg)",
                   "I(V_c; V_g | U_S) in bits over the pairs in both orders (Jiang et al. "
                   "2019)"),
    "robust_cmi_entropy": ("conditional entropy of sign(Δg)", "H(V_g | U_S) in bits"),
    "robust_cmi_min": ("normalised CMI, minimum over conditioning sets",
                       "min_S I(V_c; V_g | U_S) / H(V_g | U_S), |S| <= 2 (Jiang et al. 2019; "
                       "PGDL)"),
    "robust_cmi_set": ("conditioning set of robust_cmi_min", "axes joined by ', '"),
    "robust_cmi_reason": ("why the CMI is not tested", "'' where tested"),
    "robust_test_set_size": ("test rows behind the Hoeffding weights",
                             "size of the study's test split; NaN where unknown"),
}


def _dataset(cells_: list[list[Cell]], weights: np.ndarray, pairs: Pairs, runs: np.ndarray,
             coords: dict[str, list[str]], n_test: int | None) -> xr.Dataset:
    """The ``robust_*`` variables of ``robust_statistics``."""
    def field(name: str) -> np.ndarray:
        return np.array([[getattr(one, name) for one in row] for row in cells_])

    mt = ("robust_measure", "robust_target")
    environments, cmi = field("environments"), field("cmi")
    data = {"robust_sign_error": (mt, field("sign_error")),
            "robust_sign_error_worst": (mt, field("worst")),
            "robust_worst_environment": (mt, field("worst_environment")),
            "robust_n_pairs": (mt, field("n_pairs")),
            "robust_weight_sum": (mt, field("weight_sum")),
            "robust_sign_error_reason": (mt, field("reason")),
            "robust_pair_sign_error": (mt + ("robust_pair",), field("pair_errors")),
            "robust_pair_weight": (("robust_target", "robust_pair"), weights),
            "robust_cmi": (mt + ("robust_conditioning",), cmi[..., 0]),
            "robust_cmi_entropy": (mt + ("robust_conditioning",), cmi[..., 1]),
            "robust_cmi_min": (mt, field("cmi_min")),
            "robust_cmi_set": (mt, field("cmi_set")),
            "robust_cmi_reason": (mt, field("cmi_reason")),
            "robust_test_set_size": ((), float(n_test) if n_test else np.nan)}
    for k, name in enumerate(("sign_error", "weight", "ess", "cdf")):
        data[f"robust_environment_{name}"] = (mt + ("robust_environment",),
                                              environments[:, :, k])
    ds = xr.Dataset({name: (dims, values, dict(zip(("long_name", "definition"),
                                                   ATTRIBUTES[name])))
                     for name, (dims, values) in data.items()}, coords=coords)
    return ds.assign_coords(
        robust_pair_run_a=("robust_pair", runs[pairs.a]),
        robust_pair_run_b=("robust_pair", runs[pairs.b]),
        robust_pair_axis=("robust_pair", pairs.axis.astype(str)),
        robust_pair_environment=("robust_pair", pairs.environment.astype(str)),
        robust_pair_shared_seed=("robust_pair", pairs.shared_seed.astype(np.int8)),
        robust_environment_axis=("robust_environment",
                                 [label.split(" @ ")[0] for label in
                                  coords["robust_environment"]]))
