"""The datasets a study trains and measures on.

``datasets`` (MNIST-1D generated offline, the torchvision image sets from their raw files;
class subsets and scalings), ``augment`` (training-time augmentation) and ``synthetic``
(random images in torchvision's raw formats, for rehearsals and tests).
``flatrep.data.load(name, split, ...)`` returns the exact tensors a study uses.
"""

from flatrep.data.datasets import DataError, load

__all__ = ["DataError", "load"]
