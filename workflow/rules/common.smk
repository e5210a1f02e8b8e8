# Shared helpers: validate params.yaml, expand studies into runs, derive every path from params.
import json
import re
import sys

from flatrep.analysis.trajectory_files import TRAJECTORY_PLOTS
from flatrep.data import datasets
from flatrep.params import studies, validation
from flatrep.pipeline import sources
from snakemake.utils import update_config


# `--config` overrides arrive with every nested scalar a string: read them as params.yaml is read
update_config(config, studies.typed_overrides(dict(workflow.config_settings.config)))
try:
    validation.check_workflow(config, workflow.configfiles)
except (studies.ConfigError, OSError) as err:
    sys.exit(f"flatrep: error: {err}")  # one line; a raised error would print a traceback
SELECTED = studies.selected_studies(config)

wildcard_constraints:
    study="[A-Za-z][A-Za-z0-9_]*",
    run="[A-Za-z0-9_.+-]+",


def code_of(*modules):
    """Source files of the flatrep modules a job runs and of all they import, declared as
    inputs so that a code edit reruns exactly the jobs whose code changed. `local`: with a
    remote default storage (the Kubernetes profile) they are read where Snakemake runs, not
    looked up in the bucket (the pods get the git-tracked sources from Snakemake)."""
    return [local(path) for path in sources.closure(*modules)]


def study(name):
    return config["studies"][name]


def gpus(name, section="train"):
    """GPUs a job of study `name` requests from a cluster: 0 when the `device` of its section
    (`train` for training jobs, `measure` for measuring) is `cpu`, else 1 (`auto` means CUDA
    when present, so a cluster job should get one)."""
    return 0 if study(name)[section].get("device", "auto") == "cpu" else 1


def by_attempt(base):
    """A resource growing with the attempt (base, 2*base, ...), so a retried job asks for more
    memory / time after an out-of-memory or time-limit kill."""

    def get(wildcards, attempt):
        return base * attempt

    return get


def attempt_number(wildcards, attempt):
    """Snakemake's attempt number as a resource, so that a job's command can pass it on
    (`flatrep --attempt {resources.attempt}`: a deterministic failure is not run again,
    flatrep.pipeline.attempts)."""
    return attempt


def run_ids(name):
    return [run.run_id for run in studies.expand_runs(study(name))]


def data_file(name):
    """The prepared dataset a study trains on (a pure function of its data options)."""
    cfg = study(name)["data"]
    options = {key: value for key, value in cfg.items() if key != "name"}
    return str(datasets.prepared_path(cfg["name"], "data", **options))


def training_config(name):
    """The sections that determine a run's checkpoints (grid and seed list excluded, so
    adding a run does not retrain the others); passed to `flatrep train` as JSON."""
    cfg = study(name)
    train = {key: value for key, value in cfg["train"].items() if key not in ("grid", "seeds")}
    return json.dumps({"data": cfg["data"], "model": cfg["model"], "train": train},
                      sort_keys=True)


def checkpoint_files(name, run):
    steps = studies.checkpoint_steps(study(name)["train"])
    return [f"results/{name}/runs/{run}/step_{step}.pt" for step in steps]


def section_json(section):
    """Input function: one section of the wildcard study as JSON."""

    def get(wildcards):
        return json.dumps(study(wildcards.study)[section], sort_keys=True)

    return get


def cube_sections_json(wildcards):
    """The sections of the wildcard study that determine its cube
    (flatrep.params.studies.cube_sections): a stats or figures edit must not rewrite cube.nc, an
    output of the DVC stage `runs`, whose params are these sections."""
    return studies.cube_sections(study(wildcards.study))


def study_targets(names):
    """The targets built for each selected study: every documented output, so that a plain
    `snakemake` rebuilds a deleted cube.nc or bounds.nc, not only the files made from them."""
    return [
        path
        for name in names
        for path in (
            f"results/{name}/cube.nc",
            f"results/{name}/bounds.nc",
            f"results/{name}/stats.nc",
            f"results/{name}/summary.md",
            f"results/{name}/summary.json",
            f"results/{name}/figures/trajectories.png",
            f"results/{name}/figures/bounds.png",
            f"results/{name}/figures/correlations.png",
            f"results/{name}/figures/tightness.png",
            f"results/{name}/figures/claims.png",
            f"results/{name}/figures/robust_cdf.png",
            *(f"results/{name}/trajectory/{plot}.csv" for plot in TRAJECTORY_PLOTS),
        )
    ]


DATA_CONFIGS = {data_file(name): study(name)["data"] for name in config["studies"]}


def dataset_name(wildcards):
    return DATA_CONFIGS[f"data/{wildcards.dataset}.npz"]["name"]


def dataset_options(wildcards):
    cfg = DATA_CONFIGS[f"data/{wildcards.dataset}.npz"]
    return json.dumps({key: value for key, value in cfg.items() if key != "name"}, sort_keys=True)


def run_hparams(name):
    runs = {run.run_id: run.hparams for run in studies.expand_runs(study(name))}

    def get(wildcards):
        return json.dumps(runs[wildcards.run], sort_keys=True)

    return get


def run_checkpoints(wildcards):
    return checkpoint_files(wildcards.study, wildcards.run)


def run_measure_files(wildcards):
    return [f"results/{wildcards.study}/runs/{run}/measures.nc" for run in run_ids(wildcards.study)]


TRAIN_CODE = code_of("flatrep.training.single")
ENSEMBLE_CODE = code_of("flatrep.training.ensemble")


def ensemble_mode(name):
    return study(name)["train"].get("ensemble", "none")


def ensemble_groups(name):
    """{group id: runs} trained together (flatrep.params.studies.ensemble_groups)."""
    return studies.ensemble_groups(study(name))


def measured_per_run(name):
    """Whether study `name` gets one measure job per run (`measure.jobs: run`, or runs trained
    one by one) rather than one per training group."""
    return study(name)["measure"].get("jobs", "run") == "run" or ensemble_mode(name) == "none"


MEASURE_CODE = code_of("flatrep.cube.measuring", "flatrep.cube.netcdf")
MEASURE_SHELL = (
    "flatrep --attempt {resources.attempt} measure --measure-json {params.measure:q} "
    "--checkpoints {input.checkpoints} --out {output} --threads {threads} > {log} 2>&1"
)


def rule_name(*parts):
    """A rule name from study and group ids (characters other than [A-Za-z0-9_] become _)."""
    return re.sub(r"[^A-Za-z0-9_]", "_", "_".join(parts))
