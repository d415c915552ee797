# Training: one job per (N, split). The run directory also holds checkpoints/,
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
        reads=reads("train"),
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
