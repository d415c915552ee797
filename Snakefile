# The paper's pipeline (see README and docs/pipeline.md). Thin: parameters come from
# params.yaml (validated against workflow/schemas/params.schema.yaml); every rule is
# one stage of the stage table dsm/pipeline/stages.py, from which dvc.yaml is generated
# (`dsm sync dvc-yaml`), so both tools run the same `dsm` commands.
#
#   snakemake --cores 8 figures/fig2.pdf          # Figure 2 of the active scale
#   snakemake -n all --config scale=paper        # plan another scale (targets before --config)
#   snakemake --report report.html               # after a run: the browsable report


from snakemake.utils import min_version

min_version("9.0")


configfile: "params.yaml"


# `snakemake --report report.html` after a run: every figure and table with its caption
# (workflow/report/, declared in the stage table), grouped by the paper's sections.
report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"


wildcard_constraints:
    scale="|".join(re.escape(s) for s in SCALES),
    N=r"\d+",
    seed=r"\d+",
    split="A|B",


include: "workflow/rules/data.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/analysis.smk"
include: "workflow/rules/figures.smk"


localrules:
    all,


rule all:
    input:
        ALL_TARGETS,
    default_target: True
