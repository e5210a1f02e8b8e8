# Measurement: every checkpoint of a run, every measure, into one NetCDF file per run.


rule measure:
    input:
        checkpoints=run_checkpoints,
        code=code_of("flatrep.measure", "flatrep.cube"),
    output:
        "results/{study}/runs/{run}/measures.nc",
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
        "flatrep --attempt {resources.attempt} measure --measure-json {params.measure:q} "
        "--checkpoints {input.checkpoints} --out {output} --threads {threads} > {log} 2>&1"
