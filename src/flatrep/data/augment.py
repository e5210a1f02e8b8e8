"""Training-time data augmentation of image batches ``(N, C, H, W)``, as a pure function of the
batch and a ``torch.Generator``: the same generator state gives the same augmented batch.

- ``none``: the batch itself.
- ``crop``: zero-pad each image by ``PADDING`` = 4 pixels on every side and cut out an ``H x W``
  window at a random offset, uniform over the 9 x 9 offsets; for digits, where a mirror image is
  another symbol.
- ``crop_flip``: ``crop``, then mirror each image left-right with probability 1/2; the standard
  CIFAR augmentation (He et al. 2016).

Random numbers are drawn on the CPU from the generator (a CPU generator): first the offsets,
``randint(0, 9, (N, 2))`` as (row, column) of the window's top-left corner in the padded image,
then for ``crop_flip`` the flips, ``randint(0, 2, (N,))``; they are moved to the batch's device.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

#: Augmentations selectable by name.
AUGMENTATIONS = ("none", "crop", "crop_flip")

#: Zero padding on each side of the image before the random crop, in pixels.
PADDING = 4


def check(name: str, sample_shape) -> None:
    """A ValueError unless ``name`` is known and applies to samples of ``sample_shape``."""
    if name not in AUGMENTATIONS:
        raise ValueError(f"unknown augmentation {name!r}; allowed: {list(AUGMENTATIONS)}")
    if name != "none" and len(sample_shape) != 3:
        raise ValueError(f"augmentation {name!r} needs image samples (C, H, W), not samples of "
                         f"shape {tuple(sample_shape)}")


def augment(x: torch.Tensor, name: str, generator: torch.Generator) -> torch.Tensor:
    """The batch ``x`` augmented by ``name`` (see the module docstring), without a Python loop
    over samples: one gather of rows and one of columns of the zero-padded batch."""
    check(name, x.shape[1:])
    if name == "none":
        return x
    n, c, h, w = x.shape
    offsets = torch.randint(0, 2 * PADDING + 1, (n, 2), generator=generator).to(x.device)
    rows = offsets[:, :1] + torch.arange(h, device=x.device)          # (N, H) padded rows
    columns = torch.arange(w, device=x.device).expand(n, w)
    if name == "crop_flip":
        flip = torch.randint(0, 2, (n, 1), generator=generator).to(x.device, torch.bool)
        columns = torch.where(flip, columns.flip(1), columns)
    columns = offsets[:, 1:] + columns                                  # (N, W) padded columns
    padded = F.pad(x, (PADDING,) * 4)
    cropped = padded.gather(2, rows[:, None, :, None].expand(n, c, h, w + 2 * PADDING))
    return cropped.gather(3, columns[:, None, None, :].expand(n, c, h, w))
