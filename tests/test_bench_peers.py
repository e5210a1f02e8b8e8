"""bench/curvature_peers.py's smoke run (``--quick``) on the cross-entropy MLP: the three
libraries' Hessian-vector products agree, and every quantity gets a row from each library.
Runs only where the ``[bench]`` extra (curvlinops, PyHessian) is installed."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("curvlinops")
pytest.importorskip("pyhessian")

ROOT = Path(__file__).resolve().parents[1]
LIBRARIES = {"flatrep", "curvlinops", "PyHessian"}


def test_quick_run_agrees_and_fills_every_row(tmp_path):
    saved = tmp_path / "rows.json"
    subprocess.run([sys.executable, str(ROOT / "bench" / "curvature_peers.py"), "--quick",
                    "--case", "ce_mlp", "--data-root", str(tmp_path), "--json", str(saved)],
                   cwd=ROOT, check=True, capture_output=True, text=True, timeout=300)
    result = json.loads(saved.read_text())
    (case,) = result["cases"]
    assert set(case["hvp_agreement"]) == LIBRARIES - {"flatrep"}
    assert all(error <= 1e-10 for error in case["hvp_agreement"].values())
    rows = result["rows"]
    quantities = {row["quantity"] for row in rows}
    assert quantities == {"Tr H", "‖H‖_F", "λ_max", "SLQ density 4×20"}
    for quantity in quantities:
        assert {row["library"] for row in rows if row["quantity"] == quantity} == LIBRARIES
    target = case["rules"]["target"]
    for row in rows:
        if row["quantity"] in ("Tr H", "‖H‖_F") and row["reached"]:
            assert row["accuracy"] <= target and row["seconds"] > 0
        if row["quantity"].startswith("SLQ"):
            assert math.isfinite(row["accuracy"]) and row["accuracy"] < 1
    assert [entry["quantity"] for entry in result["summary"]] == [
        "Tr H", "‖H‖_F", "λ_max", "SLQ density 4×20"]
