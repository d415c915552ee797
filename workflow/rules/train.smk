# Training: one job per (N, split). The run directory also holds checkpoints/,
# metrics.jsonl and config.json, which are not outputs: a killed or preempted job
# that is rerun resumes from its latest checkpoint.


rule train:
    input:
        data="data/{scale}/images",
        splits="data/{scale}/splits.parquet",
        code=code("train"),
    output:
        "models/{scale}/N{N}-{split}/model.pt",
    params:
        reads=reads("train"),
    conda:
        CONDA_ENV
    log:
        "logs/{scale}/train/N{N}-{split}.log",
    benchmark:
        "benchmarks/{scale}/train/N{N}-{split}.tsv"
    threads: res("train", "threads")
    resources:
        mem_mb=res("train", "mem_mb"),
        runtime=res("train", "runtime"),
        gpu=res("train", "gpu", 0),
    # `exec`: the shell is replaced by `dsm train`, so a SIGTERM from SLURM (preemption,
    # --signal before the time limit) reaches the trainer, which checkpoints and exits
    # non-zero for the retry to resume; a wrapping bash would die at once instead.
    shell:
        "exec dsm train --params params.yaml --scale {wildcards.scale}"
        " --data {input.data} --splits {input.splits}"
        " --N {wildcards.N} --split {wildcards.split}"
        " --out models/{wildcards.scale}/N{wildcards.N}-{wildcards.split} 2> {log}"
