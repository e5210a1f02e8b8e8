# The study cube, the bound tests and the statistics.


rule cube:
    input:
        runs=run_measure_files,
        code=code_of("flatrep.cube.netcdf"),
    output:
        "results/{study}/cube.nc",
    params:
        study=cube_sections_json,
    conda:
        "../envs/flatrep.yaml"
    log:
        "logs/{study}/cube.log",
    resources:
        mem_mb=by_attempt(4000),
        runtime=by_attempt(30),
    shell:
        "flatrep cube --study {wildcards.study} --study-json {params.study:q} {input.runs} "
        "--out {output} > {log} 2>&1"


rule bounds:
    input:
        cube=rules.cube.output[0],
        code=code_of("flatrep.analysis.bounds", "flatrep.cube.netcdf"),
    output:
        "results/{study}/bounds.nc",
    conda:
        "../envs/flatrep.yaml"
    log:
        "logs/{study}/bounds.log",
    resources:
        mem_mb=by_attempt(4000),
        runtime=by_attempt(30),
    shell:
        "flatrep bounds {input.cube} --out {output} > {log} 2>&1"


rule stats:
    input:
        cube=rules.cube.output[0],
        bounds=rules.bounds.output[0],
        code=code_of(
            "flatrep.analysis.stats",
            "flatrep.analysis.claims",
            "flatrep.analysis.markdown",
            "flatrep.analysis.trajectory_files",
            "flatrep.cube.netcdf",
        ),
    output:
        stats="results/{study}/stats.nc",
        summary="results/{study}/summary.json",
        markdown="results/{study}/summary.md",
        trajectories=expand(
            "results/{{study}}/trajectory/{name}.csv", name=TRAJECTORY_PLOTS
        ),
    params:
        stats=section_json("stats"),
        figures=section_json("figures"),
    conda:
        "../envs/flatrep.yaml"
    log:
        "logs/{study}/stats.log",
    benchmark:
        "benchmarks/{study}/stats.tsv"
    resources:
        mem_mb=by_attempt(4000),
        runtime=by_attempt(120),
    shell:
        "flatrep stats {input.cube} {input.bounds} --stats-json {params.stats:q} "
        "--figures-json {params.figures:q} --out {output.stats} --summary {output.summary} "
        "--markdown {output.markdown} --trajectory-dir results/{wildcards.study}/trajectory "
        "> {log} 2>&1"
