# Dataset preparation: one file per dataset and generation options.
rule prepare_data:
    input:
        code=code_of("flatrep.data.datasets"),
    output:
        "data/{dataset}.npz",
    params:
        name=dataset_name,
        options=dataset_options,
    conda:
        "../envs/flatrep.yaml"
    log:
        "logs/prepare_data/{dataset}.log",
    resources:
        mem_mb=by_attempt(4000),
        runtime=by_attempt(60),
    shell:
        "flatrep prepare-data {params.name} --root data --options {params.options:q} > {log} 2>&1"


rule prepare_all_data:
    input:
        sorted({data_file(name) for name in SELECTED}),
