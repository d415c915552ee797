# Analysis: do the A and B models agree? Per-N metrics (DVC metrics and plots).


rule compare:
    input:
        tables=logp_tables,
        code=code("compare"),
    output:
        metrics="results/{scale}/fig2_metrics.json",
        by_n="results/{scale}/fig2_by_N.csv",
    params:
        reads=reads("compare"),
    conda:
        CONDA_ENV
    log:
        "logs/{scale}/compare.log",
    threads: 1
    resources:
        mem_mb=res("light", "mem_mb"),
        runtime=res("light", "runtime"),
    shell:
        "dsm compare --params params.yaml --scale {wildcards.scale}"
        " --logp results/{wildcards.scale}/logp"
        " --out {output.metrics} --by-n {output.by_n} 2> {log}"
