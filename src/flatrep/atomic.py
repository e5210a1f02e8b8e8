"""Atomic file writes: write to a temporary file in the target's folder, then rename.

``os.replace`` within one folder is atomic on POSIX file systems, so a reader (or Snakemake,
checking its outputs) sees either the old complete file or the new complete one, never a
half-written file under the final name; a killed writer leaves at most a ``*.tmp`` file.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Iterator


def _umask() -> int:
    """The process's file-creation mask (read by setting it and restoring it)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def destination(path: str | Path, suffix: str = ".tmp") -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success rename it to ``path``, on error
    remove it. The parent folder is created; an unwritable one raises PermissionError
    naming it."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=suffix)
    except PermissionError as err:
        raise PermissionError(f"cannot write {path}: folder {path.parent} is not writable "
                              "(fix its permissions or choose another results folder)") from err
    os.close(handle)
    os.chmod(tmp, 0o666 & ~_umask())   # mkstemp makes it owner-only; keep the usual mode
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def write_text(path: str | Path, text: str) -> None:
    """``Path(path).write_text(text)``, atomically."""
    with destination(path) as tmp:
        tmp.write_text(text)


def write_bytes(path: str | Path, data: bytes) -> None:
    """``Path(path).write_bytes(data)``, atomically."""
    with destination(path) as tmp:
        tmp.write_bytes(data)
