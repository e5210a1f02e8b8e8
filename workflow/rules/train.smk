# Training. `train.ensemble: none` (default): one job per run. `seeds` / `configs`: one job per
# group of runs trained together as a vmapped ensemble (flatrep.training.ensemble); its outputs are
# the checkpoint files of every member, so the measure rules below do not change.
# Resources (for cluster profiles, profiles/): memory in MB and runtime in minutes grow
# with the attempt (`retries: 2`); one GPU unless the study's `train.device` is `cpu`.
# One thread a job, ensembles included: a second thread sped the compiled `quick` ensemble up
# by only 7 % on the 2-core VM (bench/RESULTS.md), so two jobs side by side use the cores
# better (`snakemake --set-threads` gives a rule more). Training jobs go first (`priority`), so
# that the long measure jobs of groups trained early overlap the training still to do instead of
# holding it back to the end of the run.


for _name in config["studies"]:
    if ensemble_mode(_name) == "none":

        rule:
            name:
                f"train_{_name}"
            input:
                data=data_file(_name),
                code=TRAIN_CODE,
            output:
                checkpoint_files(_name, "{run}"),
            params:
                study=_name,
                config=training_config(_name),
                hparams=run_hparams(_name),
            conda:
                "../envs/flatrep.yaml"
            log:
                f"logs/{_name}/train/{{run}}.log",
            benchmark:
                f"benchmarks/{_name}/train/{{run}}.tsv"
            threads: 1
            priority: 1
            retries: 2
            resources:
                mem_mb=by_attempt(2000),
                runtime=by_attempt(60),
                gpu=gpus(_name),
                attempt=attempt_number,
            shell:
                "flatrep --attempt {resources.attempt} train --study {params.study} "
                "--study-json {params.config:q} --run {wildcards.run} "
                "--hparams-json {params.hparams:q} "
                "--out-dir results/{params.study}/runs/{wildcards.run} --threads {threads} "
                "> {log} 2>&1"

        continue

    for _group, _runs in ensemble_groups(_name).items():

        rule:
            name:
                rule_name("train", _name, _group)
            input:
                data=data_file(_name),
                code=ENSEMBLE_CODE,
            output:
                [path for _run in _runs for path in checkpoint_files(_name, _run.run_id)],
            params:
                study=_name,
                config=training_config(_name),
                runs=json.dumps({_run.run_id: _run.hparams for _run in _runs}, sort_keys=True),
            conda:
                "../envs/flatrep.yaml"
            log:
                f"logs/{_name}/train/ensemble_{_group}.log",
            benchmark:
                f"benchmarks/{_name}/train/ensemble_{_group}.tsv"
            threads: 1
            priority: 1
            retries: 2
            resources:
                mem_mb=by_attempt(4000),
                runtime=by_attempt(120),
                gpu=gpus(_name),
                attempt=attempt_number,
            shell:
                "flatrep --attempt {resources.attempt} train-ensemble --study {params.study} "
                "--study-json {params.config:q} --runs-json {params.runs:q} "
                "--out-root results/{params.study}/runs --threads {threads} > {log} 2>&1"
