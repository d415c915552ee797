# Data: prepare the image store of a scale, then the nested disjoint A/B splits.


rule prepare:
    input:
        code=code("prepare"),
    output:
        directory("data/{scale}/images"),
    params:
        reads=reads("prepare"),
    conda:
        CONDA_ENV
    log:
        "logs/{scale}/prepare.log",
    benchmark:
        "benchmarks/{scale}/prepare.tsv"
    threads: res("data", "threads")
    resources:
        mem_mb=res("data", "mem_mb"),
        runtime=res("data", "runtime"),
    shell:
        "dsm prepare --params params.yaml --scale {wildcards.scale} --out {output} 2> {log}"


rule split:
    input:
        data="data/{scale}/images",
        code=code("split"),
    output:
        "data/{scale}/splits.parquet",
    params:
        reads=reads("split"),
    conda:
        CONDA_ENV
    log:
        "logs/{scale}/split.log",
    threads: 1
    resources:
        mem_mb=res("light", "mem_mb"),
        runtime=res("light", "runtime"),
    shell:
        "dsm split --params params.yaml --scale {wildcards.scale}"
        " --data {input.data} --out {output} 2> {log}"
