# Every stage of the stage table (dsm/pipeline/stages.py) is one rule of the same name,
# every field rendered from its table entry by the helpers of common.smk. A new stage
# needs nothing in this file; its entry in the table is enough.
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


# One stage's rule, made by a function rather than in the loop's body because Snakemake
# evaluates the shell directive's expression again when a job runs: in a function it sees
# this stage's name, in a loop it would see the last one.
def stage_rule(name):
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
