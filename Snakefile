# flatrep: params.yaml -> data -> training -> measures -> cube -> bounds/stats -> figures.
# Run `snakemake --cores all`; `snakemake --report report.html` afterwards for the HTML report.
from snakemake.utils import min_version

min_version("9.0")


configfile: "params.yaml"


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/measure.smk"
include: "workflow/rules/stats.smk"
include: "workflow/rules/report.smk"


rule all:
    default_target: True
    input:
        study_targets(SELECTED),
