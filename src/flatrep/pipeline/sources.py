"""The source files a flatrep module depends on, for declaring them as workflow inputs.

A job's code inputs are the file of the module it runs and of every flatrep module that file
imports, transitively (found by parsing the ``import`` statements, without importing
anything), so an edit to any of them reruns the job and nothing else does.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = "flatrep"


def module_file(module: str, root: Path) -> Path | None:
    """``src/flatrep/a/b.py`` or ``src/flatrep/a/b/__init__.py`` for ``flatrep.a.b``."""
    base = root.joinpath(*module.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def imported_modules(path: Path, root: Path) -> set[str]:
    """The flatrep modules one source file imports (``import`` or ``from ... import``)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names
                      if alias.name.split(".")[0] == PACKAGE}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module and \
                node.module.split(".")[0] == PACKAGE:
            for alias in node.names:
                submodule = f"{node.module}.{alias.name}"
                found.add(submodule if module_file(submodule, root) else node.module)
    return found


def closure(*modules: str, root: str | Path = "src") -> list[str]:
    """Sorted source paths of ``modules`` and of every flatrep module they import, with the
    ``__init__.py`` of every package on the way."""
    root = Path(root)
    pending, seen = list(modules), set()
    while pending:
        module = pending.pop()
        if module in seen:
            continue
        path = module_file(module, root)
        if path is None:
            raise ValueError(f"no source file for module {module!r} under {root}")
        seen.add(module)
        parents = {".".join(module.split(".")[:k]) for k in range(1, module.count(".") + 1)}
        pending += sorted((imported_modules(path, root) | parents) - seen)
    return sorted(str(module_file(module, root)) for module in seen)
