# Figures of the active scale (params.yaml `run`, or --config scale=NAME).


rule fig2:
    input:
        tables=logp_tables,
        metrics=f"results/{SCALE}/fig2_metrics.json",
        code=code("fig2"),
    output:
        "figures/fig2.pdf",
    params:
        reads=reads("fig2"),
    conda:
        CONDA_ENV
    log:
        "logs/fig2.log",
    threads: 1
    resources:
        mem_mb=res("light", "mem_mb"),
        runtime=res("light", "runtime"),
    shell:
        f"dsm fig2 --params params.yaml --scale {SCALE}"
        f" --logp results/{SCALE}/logp"
        " --metrics {input.metrics} --out {output} 2> {log}"


rule fig1:
    input:
        code=code("fig1"),
    output:
        pdf="results/{scale}/fig1/fig1.pdf",
        metrics="results/{scale}/fig1/metrics.json",
    params:
        reads=reads("fig1"),
    conda:
        CONDA_ENV
    log:
        "logs/{scale}/fig1.log",
    benchmark:
        "benchmarks/{scale}/fig1.tsv"
    threads: res("train", "threads")
    resources:
        mem_mb=res("train", "mem_mb"),
        runtime=res("train", "runtime"),
        gpu=res("train", "gpu", 0),
    shell:
        # exec: SIGTERM reaches `dsm fig1`, whose training runs checkpoint (see train.smk)
        "exec dsm fig1 --params params.yaml --scale {wildcards.scale}"
        " --out results/{wildcards.scale}/fig1 2> {log}"


rule publish_fig1:
    input:
        f"results/{SCALE}/fig1/fig1.pdf",
    output:
        "figures/fig1.pdf",
    conda:
        CONDA_ENV
    log:
        "logs/publish_fig1.log",
    threads: 1
    shell:
        "cp {input} {output} 2> {log}"
