# Measurement: every checkpoint of a run, every measure, into one NetCDF file per run.
# `measure.jobs: run` (default): one job (one process) per run. `group`, in a study trained as
# ensembles: one job per training group measures its runs one after another in one process,
# which saves each run the process's start-up (imports, about 6 s on a CPU: bench/RESULTS.md)
# at the price of the runs' parallelism on a cluster; a group retrains as a whole anyway.


PER_RUN_MEASURED = [name for name in config["studies"] if measured_per_run(name)]

if PER_RUN_MEASURED:

    rule measure:
        input:
            checkpoints=run_checkpoints,
            code=MEASURE_CODE,
        output:
            "results/{study}/runs/{run}/measures.nc",
        wildcard_constraints:
            study="|".join(re.escape(name) for name in PER_RUN_MEASURED),
        params:
            measure=section_json("measure"),
        conda:
            "../envs/flatrep.yaml"
        log:
            "logs/{study}/measure/{run}.log",
        benchmark:
            "benchmarks/{study}/measure/{run}.tsv"
        threads: 1
        retries: 2
        resources:
            mem_mb=by_attempt(4000),
            runtime=by_attempt(60),
            gpu=lambda wildcards: gpus(wildcards.study, "measure"),
            attempt=attempt_number,
        shell:
            MEASURE_SHELL


for _name in config["studies"]:
    if measured_per_run(_name):
        continue
    for _group, _runs in ensemble_groups(_name).items():

        rule:
            name:
                rule_name("measure", _name, _group)
            input:
                checkpoints=[path for _run in _runs
                             for path in checkpoint_files(_name, _run.run_id)],
                code=MEASURE_CODE,
            output:
                [f"results/{_name}/runs/{_run.run_id}/measures.nc" for _run in _runs],
            params:
                measure=json.dumps(study(_name)["measure"], sort_keys=True),
            conda:
                "../envs/flatrep.yaml"
            log:
                f"logs/{_name}/measure/group_{_group}.log",
            benchmark:
                f"benchmarks/{_name}/measure/group_{_group}.tsv"
            threads: 1
            retries: 2
            resources:
                mem_mb=by_attempt(4000),
                runtime=by_attempt(60 * len(_runs)),
                gpu=gpus(_name, "measure"),
                attempt=attempt_number,
            shell:
                MEASURE_SHELL
