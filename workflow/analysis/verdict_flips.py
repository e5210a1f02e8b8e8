"""Compare the claims of two runs of one study that differ only in floating-point rounding.

    python workflow/analysis/verdict_flips.py results/quick/summary.json other/quick/summary.json

Two runs of the same study whose training rounds differently (eager against ``train.compile``,
two CPUs, float32 against float64) should reach the same verdicts. This prints every claim
whose verdict differs, with both runs' estimates and Holm-adjusted p-values, and the count of
flips among the claims both runs tested; then how far rounding moved the claims: the largest
change of an estimate or CI end, and the largest ratio of Holm p-values, over the association
claims both tested. Those two numbers are what ``stats.claims.rounding`` takes, to mark the
verdicts within rounding of their thresholds as fragile (``flatrep.analysis.claims.fragile``).
Exits 1 when a verdict flips.
"""

import argparse
import json
import sys
from pathlib import Path


def flips(first: dict, second: dict) -> tuple[list[str], int]:
    """(claims whose verdicts differ, number of claims tested by either run)."""
    tested = [name for name in first if name in second and "not tested" not in
              (first[name]["verdict"], second[name]["verdict"])]
    return [name for name in tested if first[name]["verdict"] != second[name]["verdict"]], \
        len(tested)


def rounding(first: dict, second: dict) -> dict:
    """{estimate: largest |change| of an estimate or CI end, p_factor: largest ratio of the
    Holm p-values} over the claims both runs tested with a p-value (association claims); the
    ratio only where both p-values are below 1, since Holm's adjustment caps p at 1 and a
    capped value says nothing of how far rounding moved it."""
    names = [name for name in first if name in second
             and None not in (first[name]["p_holm"], second[name]["p_holm"])]
    moved = [abs(first[name][key] - second[name][key]) for name in names
             for key in ("estimate", "ci_low", "ci_high")]
    ratios = [max(a, b) / min(a, b) for a, b in ((first[n]["p_holm"], second[n]["p_holm"])
                                                 for n in names) if 0 < min(a, b) <= max(a, b) < 1]
    return {"estimate": max(moved, default=0.0), "p_factor": max(ratios, default=1.0)}


def _cell(claim: dict) -> str:
    def number(value) -> str:
        return "—" if value is None else f"{value:.3g}"
    return f"{claim['verdict']} (τ {number(claim['estimate'])}, p {number(claim['p_holm'])})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("first", type=Path, help="summary.json of one run of the study")
    parser.add_argument("second", type=Path, help="summary.json of the other")
    args = parser.parse_args()
    first, second = (json.loads(path.read_text())["claims"] for path in (args.first,
                                                                         args.second))
    changed, tested = flips(first, second)
    print(f"{len(changed)} of {tested} tested verdicts differ")
    band = rounding(first, second)
    print(f"rounding moved estimates and CI ends by up to {band['estimate']:.3g} and Holm "
          f"p-values by a factor of up to {band['p_factor']:.3g} "
          f"(stats.claims.rounding: {{estimate: {band['estimate']:.3g}, "
          f"p_factor: {band['p_factor']:.3g}}})")
    if changed:
        print(f"\n| claim | {args.first} | {args.second} |\n|---|---|---|")
        for name in changed:
            print(f"| {name} | {_cell(first[name])} | {_cell(second[name])} |")
    sys.exit(1 if changed else 0)


if __name__ == "__main__":
    main()
