"""Bad input (issue 6): a bad params file, an augmentation the data cannot take, an unwritable
folder, missing dataset files. Each is reported before any job starts, as one line naming the
key path (or the folder, or the files) and what is allowed, by `flatrep validate`, by the
Snakefile and by the `flatrep` subcommands; never as a traceback."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import TINY_PARAMS, make_project

from flatrep import cli
from flatrep.data import datasets
from flatrep.params import studies, validation

BIN = Path(sys.executable).parent


def tiny_params() -> dict:
    """A fresh copy of tests/params_tiny.yaml (valid)."""
    return yaml.safe_load(TINY_PARAMS.read_text())


def error_of(params: dict) -> str:
    """The message of the ConfigError that ``validation.check_params`` raises."""
    with pytest.raises(studies.ConfigError) as raised:
        validation.check_params(params)
    message = str(raised.value)
    assert "\n" not in message
    return message


def run(cmd: list, cwd: Path) -> subprocess.CompletedProcess:
    """Run a command of the test environment; the caller checks the status."""
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    return subprocess.run([str(part) for part in cmd], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300)


def unprivileged(cmd: list) -> list:
    """``cmd`` run so that file permissions apply: as it is for a normal user; for root (who
    ignores them) under ``setpriv`` without capabilities; the test is skipped if neither."""
    if os.geteuid() != 0:
        return cmd
    setpriv = [shutil.which("setpriv") or "setpriv", "--bounding-set=-all", "--inh-caps=-all"]
    if subprocess.run([*setpriv, "true"], capture_output=True).returncode != 0:
        pytest.skip("running as root, which ignores file permissions, and setpriv cannot drop "
                    "its capabilities")
    return [*setpriv, *cmd]


def read_only_folder(path: Path) -> Path:
    """``path`` created without write permission."""
    path.mkdir(parents=True)
    path.chmod(0o555)
    return path


def test_the_shipped_params_pass():
    validation.check_params(studies.load_params("params.yaml"))
    validation.check_params(tiny_params())


def set_key(params: dict, key_path: str, value) -> None:
    """Set ``params['studies']['tiny']`` at a dotted path of keys and list indices."""
    *parents, last = [int(part) if part.isdigit() else part for part in key_path.split(".")]
    node = params["studies"]["tiny"]
    for part in parents:
        node = node[part]
    node[last] = value


@pytest.mark.parametrize("key_path,value,message", [
    ("train.lrr", 0.1, "studies.tiny.train.lrr: unknown key (did you mean 'lr'?); allowed: "
     "['augment', 'averaging_every', 'averaging_start', 'batch_size', "),
    ("train.grid.0.lr.1", "0.2x", "studies.tiny.train.grid[0].lr[1] = '0.2x': must be a number "
     "> 0"),
    ("train.grid.0.lr.1", -0.2, "studies.tiny.train.grid[0].lr[1] = -0.2: must be a number > 0"),
    ("train.lr", 0, "studies.tiny.train.lr = 0: must be a number > 0"),
    ("train.grid.0.lr.0", "1e-3", "studies.tiny.train.grid[0].lr[0] = '1e-3': must be a number "
     "> 0 (YAML reads 1e-3 without a decimal point as text: write 0.001 or 1.0e-3)"),
    ("train.iterations", "2e2", "studies.tiny.train.iterations = '2e2': must be an integer >= "
     "1 (YAML reads 2e2 as text: write 200)"),
    ("train.grid.1.batch_size.0", 0, "studies.tiny.train.grid[1].batch_size[0] = 0: must be an "
     "integer >= 1"),
    ("train.batch_size", -8, "studies.tiny.train.batch_size = -8: must be an integer >= 1"),
    ("train.iterations", 300.5, "studies.tiny.train.iterations = 300.5: must be an integer >= 1"),
    ("data.name", "cifar7", "studies.tiny.data.name = 'cifar7': unknown value (did you mean "
     "'cifar10'?); allowed: ['mnist1d', 'mnist', 'fashion_mnist', 'cifar10', 'cifar100']"),
    ("model.name", "mpl", "studies.tiny.model.name = 'mpl': unknown value (did you mean 'mlp'?)"),
    ("measure.curvature.lanczoss", True, "studies.tiny.measure.curvature.lanczoss: unknown key "
     "(did you mean 'lanczos'?)"),
    ("measure.curvature.lanczos", "yes", "studies.tiny.measure.curvature.lanczos = 'yes': must "
     "be either (true or false) or (a mapping of keys from ['steps'])"),
    ("train.grid", [], "studies.tiny.train.grid = []: must be a list of 1+ entries, each a "
     "mapping of 1+ keys from ['averaging_start', 'batch_size', "),
    ("train.grid.0", {}, "studies.tiny.train.grid[0] = {}: must be a mapping of 1+ keys from"),
    ("data.classes", "0,1", "studies.tiny.data.classes = '0,1': must be either (null) or (a "
     "list of 2+ unique entries, each an integer >= 0)"),
    ("data.outputs", "clases", "studies.tiny.data.outputs = 'clases': unknown value (did you "
     "mean 'classes'?); allowed: ['all', 'classes']"),
    ("data.root", "raw", "studies.tiny.data.root: not allowed here (root, download and "
     "num_train are options of the torchvision datasets, not of mnist1d)"),
    ("train.device", "gpu", "studies.tiny.train.device = 'gpu': must be a string matching "
     "^(auto|cpu|cuda(:[0-9]+)?)$"),
    ("stats.ci_level", float("nan"), "studies.tiny.stats.ci_level = nan: must be a finite number"),
    ("stats.claims.ratio_band", [10], "studies.tiny.stats.claims.ratio_band = [10]: must be a "
     "list of 2 entries, each a number > 0"),
])
def test_schema_errors_are_one_line_with_key_path_and_allowed_values(key_path, value, message):
    params = tiny_params()
    set_key(params, key_path, value)
    assert error_of(params).startswith(message)


def test_a_missing_key_and_a_long_value_are_named_on_one_line():
    params = tiny_params()
    del params["studies"]["tiny"]["train"]["iterations"]
    assert error_of(params) == ("studies.tiny.train.iterations: required key missing; must be "
                                "an integer >= 1")
    params = tiny_params()
    params["studies"]["tiny"]["measure"] = "line\n" * 100
    assert error_of(params).startswith("studies.tiny.measure = 'line\\nline")


def test_semantic_errors_name_the_entry_and_the_allowed_range():
    params = tiny_params()
    params["studies"]["tiny"]["train"]["checkpoints"] = [10, 5000]
    assert error_of(params) == ("studies.tiny.train.checkpoints[1] = 5000: beyond the training "
                                "length studies.tiny.train.iterations = 300; allowed: 0..300")
    params = tiny_params()
    params["studies"]["tiny"]["data"]["classes"] = [0, 12]
    assert error_of(params) == ("studies.tiny.data.classes[1] = 12: not a class of the dataset; "
                                "allowed: 0..9")
    params = tiny_params()
    params["studies"]["tiny"]["data"]["outputs"] = "classes"
    assert error_of(params) == ("studies.tiny: data.outputs 'classes' needs a data.classes "
                                "subset to number the outputs by; set data.classes or use "
                                "outputs 'all'")
    params["studies"]["tiny"]["data"]["classes"] = [0, 1]
    validation.check_params(params)
    params = tiny_params()
    params["studies"]["tiny"]["train"].update(
        lr_schedule={"name": "linear_decay", "hold": 0.5, "averaged_final": 0.5},
        grid=[{"lr": [0.1], "averaging_start": [1.0, 0.4]}])
    assert error_of(params) == ("studies.tiny: train.averaging_start = 0.4 must come after "
                                "train.lr_schedule.hold = 0.5: a run with "
                                "lr_schedule.averaged_final decays to it by averaging_start")
    params["studies"]["tiny"]["train"]["grid"] = [{"lr": [0.1], "averaging_start": [1.0, 0.6]}]
    assert error_of(params) == ("studies.tiny: run lr0.1_ia1.0_seed0 has no batch_size; set "
                                "train.batch_size or sweep it in train.grid")
    params["studies"]["tiny"]["train"]["batch_size"] = 20
    validation.check_params(params)
    params = tiny_params()
    params["studies"]["tiny"]["stats"]["claims"]["ratio_band"] = [90, 10]
    assert error_of(params) == ("studies.tiny.stats.claims.ratio_band = [90, 10]: the low end "
                                "must be below the high end, e.g. [10, 90]")
    params = tiny_params()
    params["run_studies"] = ["tiyn"]
    assert error_of(params) == ("run_studies[0]: unknown study 'tiyn' (did you mean 'tiny'?); "
                                "studies in params: ['tiny']")


TINY_DATA = ("dataset mnist1d {'num_samples': 400, 'train_split': 0.75, 'seed': 3, "
             "'classes': None, 'scale': 'none'}: train 300, test 100")


@pytest.mark.parametrize("change, message", [
    (lambda s: s["measure"].update(points=101),
     f"studies.tiny.measure.points = 101: more than the 100 samples of the test split "
     f"({TINY_DATA}); allowed: 1..100"),
    (lambda s: s["measure"]["curvature"].update(points=301),
     f"studies.tiny.measure.curvature.points = 301: more than the 300 samples of the train "
     f"split ({TINY_DATA}); allowed: 1..300"),
    (lambda s: s["train"]["grid"][1].update(batch_size=[301]),
     f"studies.tiny: run lr0.1_bs301_seed0's batch_size = 301: more than the 300 samples of "
     f"the train split ({TINY_DATA}); allowed: 1..300"),
    (lambda s: s["train"].update(checkpoints={"count": 302, "spacing": "linear"}),
     "studies.tiny.train.checkpoints.count = 302: linear spacing over 300 iterations gives "
     "only 301 distinct steps; use a smaller count (at most iterations + 1) or list the steps"),
    (lambda s: s["train"].update(checkpoints={"count": 40, "spacing": "log"}),
     "studies.tiny.train.checkpoints.count = 40: log spacing over 300 iterations gives only 34 "
     "distinct steps; use a smaller count (at most iterations + 1) or list the steps"),
])
def test_values_that_cannot_fit_the_data_are_refused_before_any_job(change, message):
    """Each of these passed validation and failed in a job, after its retries (or was
    silently clamped, or gave fewer checkpoints than asked)."""
    params = tiny_params()
    change(params["studies"]["tiny"])
    assert error_of(params) == message


def test_the_largest_values_that_fit_the_data_pass():
    params = tiny_params()
    study = params["studies"]["tiny"]
    study["measure"].update(points=100)
    study["measure"]["curvature"].update(points=300)
    study["train"]["grid"][1].update(batch_size=[300])
    study["train"].update(checkpoints={"count": 301, "spacing": "linear"})
    validation.check_params(params)


def test_split_sizes_from_the_options_equal_the_prepared_data(data_root, tiny_study, tmp_path):
    """Before the file exists the sizes come from MNIST-1D's generation options, after from
    its labels; both are the loaded splits' lengths. A class subset of MNIST-1D is known only
    from the file."""
    cfg = tiny_study["data"]
    loaded = {split: len(datasets.load_study_split(cfg, split, data_root)[1])
              for split in ("train", "test")}
    assert datasets.split_sizes(cfg, tmp_path / "nothing") == loaded == {"train": 300, "test": 100}
    assert datasets.split_sizes(cfg, data_root) == loaded
    subset = {**cfg, "classes": [0, 3]}
    assert datasets.split_sizes(subset, tmp_path / "nothing") is None
    assert datasets.split_sizes(subset, data_root) == {
        split: len(datasets.load_study_split(subset, split, data_root)[1])
        for split in ("train", "test")}


def test_a_job_names_the_key_of_a_value_validation_could_not_check():
    """A class subset of MNIST-1D has split sizes only the prepared file knows: a curvature
    point count above the training rows then stops the measure job naming its key (it was
    clamped silently, while the cube recorded the number asked for)."""
    from flatrep.cube import measuring

    with pytest.raises(ValueError, match=r"^measure.curvature.points = 100 exceeds the 95 "):
        measuring.measurement_indices(95, 100, 0, "measure.curvature.points")
    assert len(measuring.measurement_indices(95, 95, 0, "measure.curvature.points")) == 95


@pytest.mark.parametrize("name, train, test", [("mnist", 60000, 10000),
                                               ("fashion_mnist", 60000, 10000),
                                               ("cifar10", 50000, 10000),
                                               ("cifar100", 50000, 10000)])
def test_torchvision_split_sizes_add_up_to_the_releases(tmp_path, name, train, test):
    """The per-class counts sum to each release's split sizes (as its description states);
    a class subset and ``num_train`` cut them."""
    assert f"{train} train / {test} test" in datasets.spec(name).description
    assert datasets.split_sizes({"name": name}, tmp_path) == {"train": train, "test": test}
    counts = datasets.CLASS_COUNTS[name]
    assert datasets.split_sizes({"name": name, "classes": [0, 1]}, tmp_path) == {
        split: counts[split][0] + counts[split][1] for split in ("train", "test")}
    assert datasets.split_sizes({"name": name, "num_train": 1000}, tmp_path)["train"] == 1000


def test_crop_augmentation_of_one_dimensional_data_is_rejected_up_front():
    params = tiny_params()
    params["studies"]["tiny"]["train"]["augment"] = "crop"
    assert error_of(params) == ("studies.tiny.train.augment = 'crop': augmentation 'crop' needs "
                                "image samples (C, H, W), not samples of shape (40,) (dataset "
                                "'mnist1d'); allowed: ['none']")
    params = tiny_params()
    params["studies"]["tiny"]["data"] = {"name": "cifar10", "classes": [3, 5]}
    params["studies"]["tiny"]["train"]["augment"] = "crop_flip"
    validation.check_params(params)


def test_an_ensemble_of_dropout_models_is_rejected_up_front():
    params = tiny_params()
    params["studies"]["tiny"]["data"] = {"name": "cifar10", "classes": [0, 1]}
    params["studies"]["tiny"]["model"] = {"name": "vgg16_bn", "dropout": 0.5}
    validation.check_params(params)                 # one run per process: fine
    params["studies"]["tiny"]["train"]["ensemble"] = "seeds"
    assert error_of(params) == (
        "studies.tiny.train.ensemble = 'seeds' with model.dropout = 0.5: ensemble members "
        "cannot draw their own single runs' dropout masks; set train.ensemble: none (or "
        "model.dropout: 0)")


def test_compiling_needs_an_ensemble():
    params = tiny_params()
    params["studies"]["tiny"]["train"].update(compile=True, ensemble="none")
    assert error_of(params) == (
        "studies.tiny.train.compile = true with train.ensemble = 'none': compiling applies to "
        "ensembles; set train.ensemble: seeds or configs (or compile: false)")
    params["studies"]["tiny"]["train"]["ensemble"] = "seeds"
    validation.check_params(params)


def test_sample_shapes_cover_every_dataset_and_match_the_data(data_root, tiny_study):
    assert set(validation.SAMPLE_SHAPES) == set(datasets.DATASETS)
    options = {k: v for k, v in tiny_study["data"].items() if k not in ("name", "classes")}
    x, _ = datasets.load("mnist1d", "train", data_root, **options)
    assert tuple(x.shape[1:]) == validation.SAMPLE_SHAPES["mnist1d"]


DUPLICATE_STUDY = """\
run_studies: [tiny]
studies:
  tiny: {}
  other: {}
  tiny: {}
"""


def test_a_key_defined_twice_is_named_with_its_lines(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text(DUPLICATE_STUDY)
    with pytest.raises(studies.ConfigError) as raised:
        studies.load_params(path)
    assert str(raised.value) == (f"{path}:5: duplicate key studies.tiny (first at line 3); YAML "
                                 "would keep only the last: rename or merge them")
    text = TINY_PARAMS.read_text().replace("      momentum: 0.0\n",
                                           "      momentum: 0.0\n      optimizer: adam\n")
    path.write_text(text)
    with pytest.raises(studies.ConfigError, match=r":\d+: duplicate key studies\.tiny\.train\."
                       r"optimizer \(first at line \d+\)"):
        studies.load_params(path)
    path.write_text("studies: {tiny: [}\n")
    with pytest.raises(studies.ConfigError, match=rf"^{path}:1: not valid YAML: [^\n]+$"):
        studies.load_params(path)


def write_params(folder: Path, params: dict) -> Path:
    """``folder/params.yaml`` holding ``params``."""
    path = folder / "params.yaml"
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    return path


def negative_lr_params() -> dict:
    """The tiny params with ``train.grid[0].lr[1]`` negative."""
    params = tiny_params()
    params["studies"]["tiny"]["train"]["grid"][0]["lr"][1] = -0.2
    return params


NEGATIVE_LR = "studies.tiny.train.grid[0].lr[1] = -0.2: must be a number > 0"


def test_flatrep_validate_prints_one_line_and_exits_2(tmp_path):
    write_params(tmp_path, negative_lr_params())
    result = run(["flatrep", "validate"], tmp_path)
    assert result.returncode == 2
    assert result.stderr == f"flatrep validate: error: {NEGATIVE_LR}\n"
    assert sorted(path.name for path in tmp_path.iterdir()) == ["params.yaml"]


def test_flatrep_validate_reports_a_duplicate_study_and_accepts_good_params(tmp_path, capsys):
    path = tmp_path / "dup.yaml"
    path.write_text(DUPLICATE_STUDY)
    assert cli.main(["validate", str(path)]) == 2
    assert capsys.readouterr().err == (f"flatrep validate: error: {path}:5: duplicate key "
                                       "studies.tiny (first at line 3); YAML would keep only the "
                                       "last: rename or merge them\n")
    assert cli.main(["validate", str(TINY_PARAMS)]) == 0
    assert capsys.readouterr().out == f"{TINY_PARAMS}: 1 studies valid\n"


@pytest.fixture
def project(tmp_path):
    """A copy of the workflow on the tiny study."""
    return make_project(tmp_path / "project")


def assert_one_line_failure(result: subprocess.CompletedProcess, line: str) -> None:
    """The command failed with ``line`` as its message and printed no traceback."""
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert line in output.splitlines(), output
    assert "Traceback" not in output and 'File "' not in output, output


@pytest.mark.parametrize("args", [["-n"], ["--cores", "1"]])
def test_snakemake_reports_bad_params_in_one_line_before_any_job(project, args):
    write_params(project, negative_lr_params())
    result = run(["snakemake", *args], project)
    assert_one_line_failure(result, f"flatrep: error: {NEGATIVE_LR}")
    assert not (project / "results").exists() and not (project / "data").exists()


def test_a_nested_config_override_is_read_as_params_yaml_is(project):
    """`--config` parses nested values as strings ('200'); they are read as YAML numbers, so
    the override validates and changes the plan (checkpoints now end at step 200); a value
    that is no number is still refused in one line."""
    result = run(["snakemake", "-n", "--config",
                  "studies={tiny: {train: {iterations: 200}}}"], project)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "step_200.pt" in result.stdout and "step_300.pt" not in result.stdout
    result = run(["snakemake", "-n", "--config", "studies={tiny: {train: {iterations: 2e2}}}"],
                 project)
    assert_one_line_failure(result, "flatrep: error: studies.tiny.train.iterations = '2e2': "
                                    "must be an integer >= 1 (YAML reads 2e2 as text: write 200)")


def test_config_overrides_become_the_scalars_yaml_reads():
    assert studies.typed_overrides({"a": {"b": "200", "c": ["0.5", "x", "true", "null"]},
                                   "d": "1e-3", "e": "[1"}) == {
        "a": {"b": 200, "c": [0.5, "x", True, None]}, "d": "1e-3", "e": "[1"}


def test_snakemake_reports_a_duplicate_study_name(project):
    params = project / "params.yaml"
    text = params.read_text()
    params.write_text(text + "  tiny:\n    data: {name: mnist1d}\n")
    line = len(text.splitlines()) + 1
    first = text.splitlines().index("  tiny:") + 1
    result = run(["snakemake", "-n"], project)
    assert_one_line_failure(result, f"flatrep: error: params.yaml:{line}: duplicate key "
                                    f"studies.tiny (first at line {first}); YAML would keep only "
                                    "the last: rename or merge them")


def test_snakemake_names_an_unwritable_results_folder(project):
    read_only_folder(project / "results")
    result = run(unprivileged(["snakemake", "-n"]), project)
    assert_one_line_failure(result, "flatrep: error: folder results/ is not writable, but the "
                                    "workflow writes into results/: fix its permissions (chmod "
                                    "u+w results) or run in a writable copy of the project")


def test_writable_folders_are_checked_without_creating_them(tmp_path):
    validation.check_writable([tmp_path / "new" / "results"])
    assert not (tmp_path / "new").exists()
    (tmp_path / "logs").write_text("")
    with pytest.raises(NotADirectoryError, match=f"{tmp_path / 'logs'} is a file, but the "
                                                 "workflow writes into the folder"):
        validation.check_writable([tmp_path / "logs" / "x"])


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores file permissions")
def test_a_read_only_parent_folder_is_named(tmp_path):
    folder = read_only_folder(tmp_path / "ro")
    with pytest.raises(PermissionError, match=f"folder {folder}/ is not writable, but the "
                                              f"workflow writes into {folder}/results/"):
        validation.check_writable([folder / "results"])


def test_a_subcommand_writing_into_a_read_only_folder_fails_in_one_line(tmp_path):
    folder = read_only_folder(tmp_path / "ro")
    result = run(unprivileged(["flatrep", "prepare-data", "mnist1d", "--root", folder,
                               "--options", '{"num_samples": 100}']), tmp_path)
    assert result.returncode == 2
    assert result.stderr.startswith("flatrep prepare-data: error: ")
    assert len(result.stderr.splitlines()) == 1 and str(folder) in result.stderr


def test_missing_dataset_files_without_download_are_a_short_message(tmp_path):
    options = '{"download": false, "root": "%s"}' % (tmp_path / "raw")
    result = run(["flatrep", "prepare-data", "cifar10", "--root", tmp_path / "prepared",
                  "--options", options], tmp_path)
    assert result.returncode == 2
    assert result.stderr.startswith("flatrep prepare-data: error: dataset 'cifar10': raw files "
                                    "missing:")
    assert str(tmp_path / "raw" / "cifar-10-batches-py" / "data_batch_1") in result.stderr
    assert "data.download is false" in result.stderr and "cifar-10-python.tar.gz" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "prepared").exists()

