"""The docs: generated reference pages cover every catalogue entry, the README stays a short
front door whose claims block is the default study's, and the generated package layout
says what every module does.

The site itself is built in strict mode by ``make docs`` (part of ``make test``)."""

import importlib.util
import json
import re
from pathlib import Path

import pytest
import yaml

from flatrep.analysis import bounds, claims
from flatrep.cube import variables
from flatrep.measures import suite
from flatrep.params import studies
from flatrep.pipeline import reference_pages

ROOT = Path(__file__).resolve().parents[1]


def rows(page: str) -> set[str]:
    """The names in the first column (set in code) of the page's tables."""
    return set(re.findall(r"^\| `([^`]+)` \|", page, flags=re.M))


def front_door():
    spec = importlib.util.spec_from_file_location("front_door", ROOT / "docs" / "front_door.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def pages():
    return reference_pages.pages()


def test_every_variable_and_family_has_its_row(pages):
    page = rows(pages["reference/measures.md"])
    assert set(variables.CATALOG) | set(variables.PER_RUN) <= page
    assert set(suite.FAMILIES) | {"core"} == set(suite.COSTS)
    assert set(studies.CURVATURE_FAMILIES) <= set(suite.COSTS) <= page


def test_every_bound_and_assumption_has_its_row(pages):
    page = rows(pages["reference/bounds.md"])
    assert set(bounds.REGISTRY) | set(bounds.SAMPLE_REGISTRY) | set(bounds.ASSUMPTIONS) <= page


def test_every_claim_and_verdict_option_has_its_row(pages):
    page = rows(pages["reference/claims.md"])
    assert {claim.name for claim in claims.CLAIMS} <= page
    shipped = yaml.safe_load((ROOT / "params.yaml").read_text())["studies"]["quick"]
    assert {f"stats.claims.{key}" for key in shipped["stats"]["claims"]} <= page


def key_paths(mapping: dict, prefix: str):
    """Every key path of a nested mapping; a list of mappings (``train.grid``) is not
    descended into, since its entries are sweeps, not keys of the schema."""
    for key, value in mapping.items():
        path = f"{prefix}.{key}"
        yield path
        if isinstance(value, dict):
            yield from key_paths(value, path)


def test_every_key_the_shipped_studies_use_has_its_row(pages):
    """Each key path of every study of params.yaml (a study's name written <study>) is a row
    of the params reference, independently of how the page walks the schema."""
    page = rows(pages["reference/params.md"])
    studies = yaml.safe_load((ROOT / "params.yaml").read_text())["studies"]
    used = {path for study in studies.values() for path in key_paths(study, "studies.<study>")}
    assert len(used) > 50
    assert used <= page, sorted(used - page)


def test_a_cell_keeps_pipes_and_markup_inside_it():
    """A statement such as ||theta||_2 <= x * y stays one cell of a three-column table."""
    text = reference_pages.table(("a", "b", "c"), [("name", "||theta||_2 <= x * y", "<b>")])
    row = text.splitlines()[2]
    assert len(re.findall(r"(?<!\\)\|", row)) == 4
    assert "&lt;b&gt;" in row and "x \\* y" in row


def test_digest_lists_tested_claims_in_catalogue_order():
    first, second, third, fourth = claims.CLAIMS[:4]
    summary = {third.name: {"verdict": "supported", "estimate": 0.5, "ci_low": 0.25,
                            "ci_high": 0.75, "p_holm": 0.01, "fragile": True,
                            "only_without_measurement_error": False},
               first.name: {"verdict": "inconclusive", "estimate": None, "ci_low": None,
                            "ci_high": None, "p_holm": None, "fragile": False,
                            "only_without_measurement_error": False},
               second.name: {"verdict": "not tested", "estimate": None, "ci_low": None,
                             "ci_high": None, "p_holm": None, "fragile": False,
                             "only_without_measurement_error": False},
               fourth.name: {"verdict": "supported", "estimate": 0.4, "ci_low": 0.1,
                             "ci_high": 0.6, "p_holm": 0.02, "fragile": False,
                             "only_without_measurement_error": True}}
    lines = claims.digest(summary).splitlines()
    assert lines[2] == f"| {first.statement} | — | **inconclusive** |"
    assert lines[3] == f"| {third.statement} | 0.5 [0.25, 0.75] | **supported** (fragile) |"
    assert lines[4] == (f"| {fourth.statement} | 0.4 [0.1, 0.6] | **supported** (only without "
                        "measurement error) |")
    assert len(lines) == 5


def test_splice_replaces_the_block_and_names_a_missing_marker():
    splice = front_door().splice
    text = "top\n<!-- claims:quick -->\nold\n<!-- /claims:quick -->\nbottom\n"
    assert splice(text, "claims:quick", "new\n") == (
        "top\n<!-- claims:quick -->\nnew\n<!-- /claims:quick -->\nbottom\n")
    with pytest.raises(ValueError, match="claims:quick"):
        splice("no markers\n", "claims:quick", "new\n")


def test_the_readme_is_a_short_front_door():
    readme = (ROOT / "README.md").read_text()
    assert len(readme.encode()) <= 8192
    assert (ROOT / front_door().FIGURE.relative_to(ROOT)).is_file()


def test_the_readme_claims_are_the_default_studys_last_run():
    summary = ROOT / "results" / "quick" / "summary.json"
    if not summary.is_file():
        pytest.skip("results/quick/summary.json is not here (a clone without `dvc pull`)")
    module = front_door()
    readme = (ROOT / "README.md").read_text()
    assert module.splice(readme, "claims:quick", module.readme_block()) == readme
    assert json.loads(summary.read_text())["claims"]


def test_every_room_and_module_says_what_it_does(pages):
    """The generated package layout has a row for every module with its docstring's first
    paragraph, and a section with a docstring for every subpackage."""
    page = pages["reference/package.md"]
    source = ROOT / "src" / "flatrep"
    modules = [path for path in source.rglob("*.py") if path.name != "__init__.py"]
    assert len(modules) > 40
    for path in modules:
        first = reference_pages.summary(reference_pages.docstring(path))
        assert len(first) > 20, path
        assert f"| `{path.stem}` | {reference_pages.cell(first)} |" in page, path
    for package in source.glob("*/__init__.py"):
        assert f"## flatrep.{package.parent.name}\n\n" in page
        assert len(reference_pages.docstring(package)) > 40, package
