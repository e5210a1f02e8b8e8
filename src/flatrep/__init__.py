"""flatrep: does a flatter loss minimum force a more compressed representation?

A reproducible pipeline around Chen, Recanatesi & Shea-Brown (arXiv 2310.01770),
Granziol's *Flatness is a False Friend* (arXiv 2006.09091) and Ma & Ying (arXiv 2105.13462).
"""

__version__ = "0.1.0"
