"""flatrep: does a flatter loss minimum force a more compressed representation?

A reproducible pipeline around Chen, Recanatesi & Shea-Brown (arXiv 2310.01770),
Granziol's *Flatness is a False Friend* (arXiv 2006.09091) and Ma & Ying (arXiv 2105.13462).

``flatrep.measure(model, inputs, targets, ...)`` gives the cube's measures of any
``nn.Module`` (``flatrep.cube.any_model.measure``); it is imported on first use, so
``import flatrep`` stays light.
"""

import importlib

__version__ = "0.1.0"


def __getattr__(name: str):
    """``flatrep.measure``, imported when first asked for (PEP 562)."""
    if name == "measure":
        return importlib.import_module("flatrep.cube.any_model").measure
    raise AttributeError(f"module 'flatrep' has no attribute {name!r}")
