# Training: one job per run; its checkpoint files are known up front from params.yaml.


for _name in config["studies"]:

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
        resources:
            mem_mb=2000,
            runtime=60,
        shell:
            "flatrep train --study {params.study} --study-json {params.config:q} "
            "--run {wildcards.run} --hparams-json {params.hparams:q} "
            "--out-dir results/{params.study}/runs/{wildcards.run} --threads {threads} > {log} 2>&1"
