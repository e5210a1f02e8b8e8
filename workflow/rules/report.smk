# Figures, registered in the Snakemake HTML report (`snakemake --report report.html`).


rule figures:
    input:
        cube=rules.cube.output[0],
        bounds=rules.bounds.output[0],
        stats=rules.stats.output.stats,
        code=code_of("flatrep.analysis.figures", "flatrep.cube.netcdf"),
    output:
        trajectories=report(
            "results/{study}/figures/trajectories.png",
            caption="../report/trajectories.rst",
            category="{study}",
            subcategory="Trajectories",
        ),
        bounds=report(
            "results/{study}/figures/bounds.png",
            caption="../report/bounds.rst",
            category="{study}",
            subcategory="Bounds",
        ),
        correlations=report(
            "results/{study}/figures/correlations.png",
            caption="../report/correlations.rst",
            category="{study}",
            subcategory="Correlations",
        ),
        tightness=report(
            "results/{study}/figures/tightness.png",
            caption="../report/tightness.rst",
            category="{study}",
            subcategory="Bounds",
        ),
        claims=report(
            "results/{study}/figures/claims.png",
            caption="../report/claims.rst",
            category="{study}",
            subcategory="Claims",
        ),
        robust_cdf=report(
            "results/{study}/figures/robust_cdf.png",
            caption="../report/robust_cdf.rst",
            category="{study}",
            subcategory="Claims",
        ),
    params:
        figures=section_json("figures"),
    conda:
        "../envs/flatrep.yaml"
    log:
        "logs/{study}/figures.log",
    resources:
        mem_mb=by_attempt(4000),
        runtime=by_attempt(30),
    shell:
        "flatrep figures {input.cube} {input.bounds} {input.stats} "
        "--figures-json {params.figures:q} --trajectories {output.trajectories} "
        "--bound-plot {output.bounds} --correlations {output.correlations} "
        "--tightness {output.tightness} --claims-table {output.claims} "
        "--robust-cdf {output.robust_cdf} > {log} 2>&1"
