"""Refreshes the README's front door from the default study's last run: the claims digest
between the ``<!-- claims:quick -->`` markers (``flatrep.analysis.claims.digest`` of
``results/quick/summary.json``) and the trajectory figure ``docs/images/quick_trajectories.png``.

    make front-door        # after `make run` or `dvc repro`
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from flatrep.analysis import claims

ROOT = Path(__file__).resolve().parents[1]
STUDY = "quick"
FIGURE = ROOT / "docs" / "images" / f"{STUDY}_trajectories.png"


def splice(text: str, name: str, block: str) -> str:
    """``text`` with what lies between ``<!-- name -->`` and ``<!-- /name -->`` replaced by
    ``block``; ValueError naming the marker when either is missing."""
    start, end = f"<!-- {name} -->\n", f"<!-- /{name} -->"
    if start not in text or end not in text:
        raise ValueError(f"README.md has no '{start.strip()}' ... '{end}' block: put both "
                         "markers, each on its own line, where the table belongs")
    head, rest = text.split(start, 1)
    return head + start + block + end + rest.split(end, 1)[1]


def readme_block(results: Path = ROOT / "results") -> str:
    """The claims digest of the default study's ``summary.json``."""
    summary = json.loads((results / STUDY / "summary.json").read_text())
    return claims.digest(summary["claims"])


def main() -> None:
    readme = ROOT / "README.md"
    readme.write_text(splice(readme.read_text(), f"claims:{STUDY}", readme_block()))
    shutil.copyfile(ROOT / "results" / STUDY / "figures" / "trajectories.png", FIGURE)


if __name__ == "__main__":
    main()
