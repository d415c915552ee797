# Training: one job per A/B model (seed, N, split), and the full models (every training
# image): the energy model and the score-only baseline. The run directory also holds checkpoints/,
# metrics.jsonl and config.json, which are not outputs: a killed or preempted job
# that is rerun resumes from its latest checkpoint. The command is `exec`ed, so a
# SIGTERM from SLURM (preemption, --signal before the time limit) reaches the trainer,
# which checkpoints and exits non-zero for the retry to resume.


rule train:
    input:
        **inputs("train"),
    output:
        **outputs("train"),
    params:
        **params_of("train"),
    conda:
        CONDA_ENV
    log:
        log_of("train"),
    benchmark:
        benchmark_of("train")
    threads: res("train", "threads")
    resources:
        **resources_of("train"),
    shell:
        shell_of("train")


rule train_full:
    input:
        **inputs("train_full"),
    output:
        **outputs("train_full"),
    params:
        **params_of("train_full"),
    conda:
        CONDA_ENV
    log:
        log_of("train_full"),
    benchmark:
        benchmark_of("train_full")
    threads: res("train_full", "threads")
    resources:
        **resources_of("train_full"),
    shell:
        shell_of("train_full")


rule train_score:
    input:
        **inputs("train_score"),
    output:
        **outputs("train_score"),
    params:
        **params_of("train_score"),
    conda:
        CONDA_ENV
    log:
        log_of("train_score"),
    benchmark:
        benchmark_of("train_score")
    threads: res("train_score", "threads")
    resources:
        **resources_of("train_score"),
    shell:
        shell_of("train_score")
