# Every stage of the stage table (dsm/pipeline/stages.py) is one rule of the same name,
# every field rendered from its table entry by the helpers of common.smk. A new stage
# needs no rule here: its entry in the table is enough.
#
#   data:        prepare (the image store of a scale), split (nested disjoint A/B sets)
#   training:    train (one job per A/B model: seed, N, split), train_full, train_score;
#                `exec`ed, so SLURM's SIGTERM reaches the trainer, which checkpoints and
#                exits non-zero; the rerun resumes from its latest checkpoint
#   evaluation:  normalize, evaluate (per A/B model), normalize_full, evaluate_full
#   analyses:    compare (Figure 2's metrics), examples, gumbel, probes, bias, table1,
#                dimensionality, contrast, estimators
#   figures:     fig1 (trains its two small models), fig2 ... fig678 and the tables, under
#                figures/<scale>/ and results/<scale>/; publish_<figure> copies the
#                active scale's figures to figures/ (local jobs)


def stage_rule(name):
    """The rule of one stage. A function, not the loop's body: Snakemake evaluates the
    `shell:` expression again when the job runs, and in a function it sees this stage's
    name, not the loop's last one."""

    rule:
        name:
            name
        input:
            **inputs(name),
        output:
            **outputs(name),
        params:
            **params_of(name),
        conda:
            CONDA_ENV
        log:
            log_of(name),
        benchmark:
            benchmark_of(name)
        priority: STAGES[name].priority
        localrule: STAGES[name].local
        threads: res(name, "threads")
        resources:
            **resources_of(name),
        shell:
            shell_of(name)


for name in STAGES:
    stage_rule(name)
