"""The reference pages of the docs site, rendered from the code's own catalogues.

Each page is a function of a catalogue, so the docs cannot drift from the code:

* ``params.md``: every key of ``workflow/schemas/params.schema.yaml`` with what it allows and
  its description;
* ``measures.md``: the curvature families (``flatrep.measures.suite.COSTS``, defaults from
  ``flatrep.params.studies.CURVATURE_FAMILIES``) and every variable of ``flatrep.cube.variables``;
* ``bounds.md``: the assumptions and bounds of ``flatrep.analysis.bounds``;
* ``claims.md``: the claims of ``flatrep.analysis.claims.CLAIMS`` and the verdict options of
  ``stats.claims``;
* ``package.md``: the package's rooms (subpackages) and every module in them, from their
  docstrings.

``docs/gen_reference.py`` writes them into the site at build time (mkdocs-gen-files);
``tests/test_docs.py`` checks that every catalogue entry has its row.
"""

from __future__ import annotations

import ast
import json
from collections.abc import Iterator
from pathlib import Path

import yaml

from flatrep.analysis import bounds, claims
from flatrep.cube import variables
from flatrep.measures import suite
from flatrep.params import studies, validation


def cell(text: str) -> str:
    """``text`` safe inside a Markdown table cell: pipes, asterisks and backslashes escaped,
    angle brackets as entities, line breaks as spaces."""
    for raw, safe in (("\\", "\\\\"), ("|", "\\|"), ("*", "\\*"), ("<", "&lt;"), (">", "&gt;"),
                      ("\n", " ")):
        text = text.replace(raw, safe)
    return text


def table(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> str:
    """A Markdown table; the first column is a name, set in code."""
    lines = [f"| {' | '.join(header)} |", f"|{'---|' * len(header)}"]
    lines += [f"| `{row[0]}` | {' | '.join(cell(str(value)) for value in row[1:])} |"
              for row in rows]
    return "\n".join(lines) + "\n"


# --- params.md -------------------------------------------------------------------------------

def _resolve(node: dict, schema: dict) -> dict:
    """``node`` with a local ``$ref`` replaced by its target."""
    ref = node.get("$ref")
    if ref is None:
        return node
    target = schema
    for part in ref.removeprefix("#/").split("/"):
        target = target[part]
    return {**target, **{k: v for k, v in node.items() if k != "$ref"}}


def allowed(node: dict, schema: dict) -> str:
    """What a schema node accepts, in words: its enum, its type with bounds, or the
    alternatives of a ``oneOf``."""
    node = _resolve(node, schema)
    if "oneOf" in node:
        return " or ".join(allowed(option, schema) for option in node["oneOf"])
    if "enum" in node:
        return "one of " + ", ".join(json.dumps(value) for value in node["enum"])
    if "const" in node:
        return json.dumps(node["const"])
    kind = node.get("type", "any")
    if kind == "array":
        return f"list of {allowed(node.get('items', {}), schema)}"
    if kind == "object":
        return "mapping"
    limits = [f"{symbol} {node[key]}" for key, symbol in
              (("minimum", ">="), ("exclusiveMinimum", ">"), ("maximum", "<="),
               ("exclusiveMaximum", "<")) if key in node]
    return kind + (f" ({', '.join(limits)})" if limits else "")


def schema_rows(node: dict, schema: dict, path: str) -> Iterator[tuple[str, str, str]]:
    """(key path, allowed, description) of ``node``'s properties, depth first; a study's name
    is written ``<study>``, a mapping that is also a switch (``oneOf`` boolean or mapping)
    gets its own row and its options' rows."""
    node = _resolve(node, schema)
    for name, child in node.get("properties", {}).items():
        child = _resolve(child, schema)
        key = f"{path}.{name}" if path else name
        yield key, allowed(child, schema), child.get("description", "")
        for option in [child, *child.get("oneOf", [])]:
            option = _resolve(option, schema)
            if option.get("type") == "object" or "properties" in option:
                yield from schema_rows(option, schema, key)
    extra = node.get("additionalProperties")
    if isinstance(extra, dict) and path == "studies":
        yield from schema_rows(extra, schema, f"{path}.<study>")


def params_page(schema_path: Path = validation.SCHEMA) -> str:
    schema = yaml.safe_load(schema_path.read_text())
    rows = list(schema_rows(schema, schema, ""))
    return ("# params.yaml reference\n\n"
            "Generated from `workflow/schemas/params.schema.yaml`, against which `flatrep "
            "validate` and every `snakemake` run check `params.yaml` before any job starts. "
            "Checks a schema cannot express (checkpoint steps, class indices, sizes against "
            "the data, model options against the builder) are in `flatrep.params.validation`.\n\n"
            + table(("key", "allowed", "description"), rows))


# --- measures.md -----------------------------------------------------------------------------

def measures_page() -> str:
    families = [(name, suite.COSTS[name],
                 json.dumps(studies.CURVATURE_FAMILIES.get(name, {})) if name != "core" else "")
                for name in suite.COSTS]
    measured = [(name, ", ".join(("step",) + var.dims), var.long_name, var.definition)
                for name, var in variables.CATALOG.items()]
    per_run = [(name, ", ".join(("run",) + var.dims), var.long_name, var.definition)
               for name, var in variables.PER_RUN.items()]
    return ("# Measures\n\n"
            "Generated from `flatrep.measures.suite.COSTS`, "
            "`flatrep.params.studies.CURVATURE_FAMILIES` and `flatrep.cube.variables`. Every "
            "variable of a cube carries its long name and definition as NetCDF attributes.\n\n"
            "## Curvature families and their cost per checkpoint\n\n"
            "`measure.curvature.enabled` turns the suite on; a family key that is absent or "
            "`false` is off, `true` takes the defaults below, a mapping overrides them. Each "
            "HVP costs about two passes (forward and backward) over `measure.curvature.points` "
            "rows.\n\n"
            + table(("family", "cost per checkpoint", "defaults"), families)
            + "\n## Variables per checkpoint\n\nDims besides `run`.\n\n"
            + table(("variable", "dims", "name", "definition"), measured)
            + "\n## Variables per run\n\n"
            + table(("variable", "dims", "name", "definition"), per_run))


# --- bounds.md -------------------------------------------------------------------------------

def bounds_page() -> str:
    assumptions = [(a.name, a.description) for a in bounds.ASSUMPTIONS.values()]

    def rows(registry):
        return [(b.name, b.kind, b.statement, b.assumptions, b.equation,
                 ", ".join(b.requires) or "none") for b in registry.values()]
    header = ("bound", "kind", "statement", "holds when", "paper", "requires")
    return ("# Bounds\n\n"
            "Generated from `flatrep.analysis.bounds`. For every bound, `bounds.nc` holds per "
            "run and checkpoint the left and right sides, `holds` (LHS <= RHS (1 + "
            f"{bounds.RTOL:g})) and the tightness LHS / RHS. A *theorem* holds at every "
            "parameter value, so a violation is a bug; a *conditional* bound needs the "
            "assumptions it `requires`, and its violations where one fails are counted "
            "apart (`violations_without_<assumption>` in `stats.nc`).\n\n"
            "## Assumptions\n\n" + table(("assumption", "meaning"), assumptions)
            + "\n## Bounds per run and checkpoint\n\n" + table(header, rows(bounds.REGISTRY))
            + "\n## Bounds per training point (dim `sample_bound`)\n\n"
            + table(header, rows(bounds.SAMPLE_REGISTRY)))


# --- claims.md -------------------------------------------------------------------------------

def claims_page(schema_path: Path = validation.SCHEMA) -> str:
    schema = yaml.safe_load(schema_path.read_text())
    stats = _resolve(schema["$defs"]["study"], schema)["properties"]["stats"]
    options = [row for row in schema_rows(stats, schema, "stats")
               if row[0].startswith("stats.claims.")]
    rows = [(c.name, c.source, c.statement, c.statistic, c.direction) for c in claims.CLAIMS]
    return ("# Claims\n\n"
            "Generated from `flatrep.analysis.claims.CLAIMS` and the `stats.claims` options of "
            "the params schema. How a direction becomes a verdict is stated under *Verdict "
            "rules* below, from `flatrep.analysis.claims` itself.\n\n"
            + table(("claim", "paper", "statement", "statistic", "direction"), rows)
            + "\n## Options of the verdict rules (`stats.claims`)\n\n"
            + table(("key", "allowed", "description"), options)
            + "\n## Verdict rules\n\n::: flatrep.analysis.claims\n    options:\n"
              "      show_root_heading: false\n      members: false\n")


# --- package.md ------------------------------------------------------------------------------

PACKAGE_ROOT = Path(__file__).resolve().parents[1]


def docstring(path: Path) -> str:
    """The module docstring of the source file ``path``, read without importing it."""
    return ast.get_docstring(ast.parse(path.read_text())) or ""


def summary(text: str) -> str:
    """The first paragraph of a docstring, on one line."""
    return " ".join(text.split("\n\n")[0].split())


def package_page(root: Path = PACKAGE_ROOT) -> str:
    """The package's layout: the top-level modules, then each subpackage (a room with one
    job) with its docstring and a row per module."""
    def rows(folder: Path) -> list[tuple[str, str]]:
        return [(path.stem, summary(docstring(path))) for path in sorted(folder.glob("*.py"))
                if path.name != "__init__.py"]

    parts = ["# Package layout\n\n"
             "Generated from the docstrings of `src/flatrep/`: a folder is a room with one job, "
             "and a module's first paragraph says what it does.\n\n"
             "## flatrep\n\n" + docstring(root / "__init__.py") + "\n\n"
             + table(("module", "what it does"), rows(root))]
    for package in sorted(path.parent for path in root.glob("*/__init__.py")):
        parts.append(f"## flatrep.{package.name}\n\n{docstring(package / '__init__.py')}\n\n"
                     + table(("module", "what it does"), rows(package)))
    return "\n".join(parts)


PAGES = {"reference/params.md": params_page, "reference/measures.md": measures_page,
         "reference/bounds.md": bounds_page, "reference/claims.md": claims_page,
         "reference/package.md": package_page}


def pages() -> dict[str, str]:
    """Site path -> Markdown of every generated page."""
    return {path: render() for path, render in PAGES.items()}
