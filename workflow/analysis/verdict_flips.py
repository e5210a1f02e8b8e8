"""Compare the claims of two runs of one study that differ only in floating-point rounding.

    python workflow/analysis/verdict_flips.py results/quick/summary.json other/quick/summary.json

Two runs of the same study whose training rounds differently (eager against ``train.compile``,
two CPUs, float32 against float64) should reach the same verdicts. This prints every claim
whose verdict differs, with both runs' estimates and Holm-adjusted p-values, and the count of
flips among the claims either run tested. Exits 1 when a verdict flips.
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
    if changed:
        print(f"\n| claim | {args.first} | {args.second} |\n|---|---|---|")
        for name in changed:
            print(f"| {name} | {_cell(first[name])} | {_cell(second[name])} |")
    sys.exit(1 if changed else 0)


if __name__ == "__main__":
    main()
