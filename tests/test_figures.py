"""Figures survive what real studies produce: a bound never evaluated (all NaN)."""

import numpy as np

from flatrep import bounds, report


def test_bound_figures_with_a_bound_that_was_never_evaluated(measured_run, tmp_path):
    ds, _ = measured_run
    evaluated = bounds.evaluate(ds)
    for name in ("lhs", "rhs", "holds", "tightness"):
        evaluated[name].loc[{"bound": "rank_hessian_layers"}] = np.nan
    report.bound_panels(evaluated, tmp_path / "bounds.png")
    report.tightness_distributions(evaluated, tmp_path / "tightness.png")
    for png in ("bounds.png", "tightness.png"):
        assert (tmp_path / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
