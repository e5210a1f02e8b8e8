"""``train.determinism``: ``strict`` (deterministic algorithms and cuDNN kernels, no TF32) and
``fast`` (TF32 for matmul and cuDNN, cuDNN benchmark), as ``flatrep.determinism.configure``
sets them, and the mode a study selects as recorded in its checkpoints and measured cube.

Every test here restores torch's global flags, thread count and ``CUBLAS_WORKSPACE_CONFIG``.
"""

import copy
import os
import subprocess
import sys

import pytest
import torch
import torch._inductor.config as inductor_config

from flatrep import checkpoint, determinism
from flatrep.cube import measuring
from flatrep.params import studies
from flatrep.training import ensemble, preparation, single

CUBLAS = "CUBLAS_WORKSPACE_CONFIG"
INDUCTOR = "TORCHINDUCTOR_DETERMINISTIC"

STRICT = {"deterministic_algorithms": True, "cudnn_deterministic": True,
          "cudnn_benchmark": False, "matmul_tf32": False, "cudnn_tf32": False}
FAST = {"deterministic_algorithms": False, "cudnn_deterministic": False,
        "cudnn_benchmark": True, "matmul_tf32": True, "cudnn_tf32": True}
MODES = {"strict": STRICT, "fast": FAST}


def flags() -> dict:
    """Torch's global determinism and TF32 flags."""
    return {"deterministic_algorithms": torch.are_deterministic_algorithms_enabled(),
            "cudnn_deterministic": torch.backends.cudnn.deterministic,
            "cudnn_benchmark": torch.backends.cudnn.benchmark,
            "matmul_tf32": torch.backends.cuda.matmul.allow_tf32,
            "cudnn_tf32": torch.backends.cudnn.allow_tf32}


def set_flags(values: dict) -> None:
    """Put the flags of ``flags`` into the state ``values`` without ``configure``."""
    torch.use_deterministic_algorithms(values["deterministic_algorithms"])
    torch.backends.cudnn.deterministic = values["cudnn_deterministic"]
    torch.backends.cudnn.benchmark = values["cudnn_benchmark"]
    torch.backends.cuda.matmul.allow_tf32 = values["matmul_tf32"]
    torch.backends.cudnn.allow_tf32 = values["cudnn_tf32"]


@pytest.fixture(autouse=True)
def restore_torch_state():
    """Run every test with ``CUBLAS_WORKSPACE_CONFIG`` unset, and give it back the global
    flags, thread count and environment it found."""
    saved = flags()
    saved_warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    threads = torch.get_num_threads()
    inductor_deterministic = inductor_config.deterministic
    environment = {name: os.environ.pop(name, None) for name in (CUBLAS, INDUCTOR)}
    yield
    for name, value in environment.items():
        os.environ.pop(name, None)
        if value is not None:
            os.environ[name] = value
    inductor_config.deterministic = inductor_deterministic
    set_flags(saved)
    torch.use_deterministic_algorithms(saved["deterministic_algorithms"],
                                       warn_only=saved_warn_only)
    torch.set_num_threads(threads)


@pytest.mark.parametrize("mode", ["strict", "fast"])
def test_configure_sets_every_flag_of_the_mode(mode):
    """Starting from the other mode's flags, ``configure`` sets all of its own and says which
    mode it set."""
    other = FAST if mode == "strict" else STRICT
    set_flags(other)
    assert determinism.configure(strict=mode == "strict")["mode"] == mode
    assert flags() == MODES[mode]


def test_switching_modes_leaves_no_stale_flag():
    """strict -> fast -> strict -> fast: each call leaves exactly its mode's flags."""
    for mode in ("strict", "fast", "strict", "fast"):
        determinism.configure(strict=mode == "strict")
        assert flags() == MODES[mode], mode


@pytest.mark.parametrize("strict", [True, False])
def test_a_compiler_loaded_before_or_after_configure_compiles_in_the_mode(strict):
    """``configure`` sets TorchInductor's ``deterministic`` as torch.use_deterministic_algorithms
    does, without importing TorchInductor: on the loaded module in this process, and in a
    fresh process, where TorchInductor stays unloaded until imported afterwards."""
    inductor_config.deterministic = not strict
    determinism.configure(strict=strict)
    assert inductor_config.deterministic is strict
    script = ("import sys\n"
              "from flatrep import determinism\n"
              f"determinism.configure(strict={strict})\n"
              "loaded = 'torch._inductor' in sys.modules\n"
              "import torch, torch._inductor.config as c\n"
              "print(loaded, c.deterministic, torch.are_deterministic_algorithms_enabled())\n")
    environment = {name: value for name, value in os.environ.items() if name != INDUCTOR}
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            env=environment, check=True)
    assert result.stdout.split() == ["False", str(strict), str(strict)]


@pytest.mark.parametrize("strict", [True, False])
def test_both_modes_set_the_cublas_workspace_unless_already_set(monkeypatch, strict):
    """Deterministic cuBLAS needs ``CUBLAS_WORKSPACE_CONFIG``: ``configure`` sets ``:4096:8``
    where it is unset, and leaves a value the user set."""
    determinism.configure(strict=strict)
    assert os.environ[CUBLAS] == ":4096:8"
    monkeypatch.setenv(CUBLAS, ":16:8")
    determinism.configure(strict=strict)
    assert os.environ[CUBLAS] == ":16:8"


@pytest.mark.parametrize("strict", [True, False])
def test_configure_sets_and_reports_the_thread_count(strict):
    """``threads`` sets torch's intra-op thread count in either mode; the return value has
    the mode and the count."""
    threads = 1 if torch.get_num_threads() != 1 else 2
    assert determinism.configure(strict=strict, threads=threads) == {
        "mode": "strict" if strict else "fast", "threads": threads}
    assert torch.get_num_threads() == threads


def _study(tiny_study, mode: str | None) -> dict:
    """The tiny study cut to 10 steps of a small MLP, in ``mode`` (key absent for None)."""
    study = copy.deepcopy(tiny_study)
    study["model"] = {"name": "mlp", "hidden": [8], "activation": "tanh"}
    study["train"].update(iterations=10, checkpoints=[0, 5, 10])
    study["train"].pop("determinism")
    if mode is not None:
        study["train"]["determinism"] = mode
    study["measure"] = {key: value for key, value in study["measure"].items()
                        if key != "curvature"}
    return study


@pytest.mark.parametrize("mode, expected", [("strict", "strict"), ("fast", "fast"),
                                            (None, "strict")])
def test_prepare_configures_the_mode_the_study_selects(tiny_study, data_root, mode, expected):
    """``preparation.prepare`` sets the flags of ``train.determinism`` (strict when absent) and
    keeps the mode for the checkpoints."""
    set_flags(FAST if expected == "strict" else STRICT)
    setup = preparation.prepare(_study(tiny_study, mode), data_root, threads=1)
    assert setup.mode == expected
    assert flags() == MODES[expected]


@pytest.mark.parametrize("mode", ["strict", "fast"])
def test_checkpoints_and_cube_record_the_mode_training_ran_in(tmp_path, tiny_study, data_root,
                                                              mode):
    """Every checkpoint of a run carries the study's mode, and so does the measured cube's
    ``determinism`` attribute, although measuring always runs strict."""
    study = _study(tiny_study, mode)
    run = studies.expand_runs(study)[0]
    paths = single.train_run("tiny", study, run, tmp_path / "run", data_root, threads=1)
    assert len(paths) == 3
    assert [checkpoint.read(path)["meta"]["determinism"] for path in paths] == [mode] * 3
    cube = measuring.measures_file(paths, study["measure"], data_root, threads=1)
    assert cube.attrs["determinism"] == mode
    assert flags() == STRICT


@pytest.mark.parametrize("mode", ["strict", "fast"])
def test_ensemble_checkpoints_record_the_mode(tmp_path, tiny_study, data_root, mode):
    """The vmapped ensemble trainer records each member's mode as a single run does."""
    study = _study(tiny_study, mode)
    runs = studies.expand_runs(study)[:2]
    paths = ensemble.train_ensemble("tiny", study, runs, tmp_path / "ensemble", data_root, 1)
    assert len(paths) == 6
    assert {checkpoint.read(path)["meta"]["determinism"] for path in paths} == {mode}
