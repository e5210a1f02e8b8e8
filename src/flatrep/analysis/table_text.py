"""How numbers read in the tables of ``summary.md``, the README and the claims figure: an
estimate with its confidence interval, a single number (a p-value, a median), and a dash where
there is no number."""

from __future__ import annotations

import numpy as np

#: Written where a number is missing or not finite.
NO_NUMBER = "—"


def _finite(value) -> float | None:
    """``value`` as a float, None when it is None or not finite."""
    if value is None:
        return None
    value = float(value)
    return value if np.isfinite(value) else None


def interval(estimate, low, high, spec: str = ".3g") -> str:
    """'estimate [low, high]' in the format ``spec``; a dash without a finite estimate."""
    if _finite(estimate) is None:
        return NO_NUMBER
    return f"{float(estimate):{spec}} [{float(low):{spec}}, {float(high):{spec}}]"


def number(value) -> str:
    """A number to three significant digits; a dash without one."""
    value = _finite(value)
    return NO_NUMBER if value is None else f"{value:.3g}"
