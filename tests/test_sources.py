"""Code inputs of the workflow jobs: the import closure of the module each job runs."""

from pathlib import Path

import pytest
import yaml

from flatrep.pipeline import sources


def test_measure_closure_has_every_measure_module_and_no_training_code():
    files = sources.closure("flatrep.cube.measuring")
    measures = {str(p) for p in Path("src/flatrep/measures").glob("*.py")}
    assert measures <= set(files)            # including measures/__init__.py
    assert "src/flatrep/losses.py" in files
    assert "src/flatrep/training/single.py" not in files


def test_closure_follows_imports_transitively(tmp_path):
    package = tmp_path / "flatrep"
    (package / "sub").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "sub" / "__init__.py").write_text("")
    (package / "a.py").write_text("from flatrep.sub import b\nimport math\n")
    (package / "sub" / "b.py").write_text("from flatrep import c\n")
    (package / "c.py").write_text("import flatrep\n")
    (package / "d.py").write_text("")
    assert sources.closure("flatrep.a", root=tmp_path) == sorted(
        str(package / name) for name in ("__init__.py", "a.py", "sub/__init__.py", "sub/b.py",
                                         "c.py"))
    with pytest.raises(ValueError, match="flatrep.missing"):
        sources.closure("flatrep.missing", root=tmp_path)


def test_dvc_analysis_stage_depends_on_the_code_it_runs():
    stage = yaml.safe_load(Path("dvc.yaml").read_text())["stages"]["analysis"]["do"]
    needed = sources.closure("flatrep.analysis.bounds", "flatrep.analysis.claims",
                             "flatrep.analysis.markdown", "flatrep.analysis.stats",
                             "flatrep.analysis.trajectory_files", "flatrep.analysis.figures",
                             "flatrep.cube.netcdf")
    assert set(needed) <= set(stage["deps"])


def test_dvc_data_stage_depends_on_the_code_it_runs():
    stage = yaml.safe_load(Path("dvc.yaml").read_text())["stages"]["data"]
    assert set(sources.closure("flatrep.data.datasets")) <= set(stage["deps"])
