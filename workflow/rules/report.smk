# Figures, registered in the Snakemake HTML report (`snakemake --report report.html`).


rule figures:
    input:
        cube="results/{study}/cube.nc",
        bounds="results/{study}/bounds.nc",
        code=code_of("flatrep.report", "flatrep.stats"),
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
    params:
        figures=section_json("figures"),
    conda:
        "../envs/flatrep.yaml"
    log:
        "logs/{study}/figures.log",
    shell:
        "flatrep figures {input.cube} {input.bounds} --figures-json {params.figures:q} "
        "--trajectories {output.trajectories} --bound-plot {output.bounds} > {log} 2>&1"
