# Evaluation: the normalization constant of each model (held-out images at t_max),
# then its per-image log p on its own, the other set's, and test images (Parquet).


rule normalize:
    input:
        model="models/{scale}/N{N}-{split}/model.pt",
        data="data/{scale}/images",
        code=code("normalize"),
    output:
        "results/{scale}/norm/N{N}-{split}.json",
    params:
        reads=reads("normalize"),
    conda:
        CONDA_ENV
    log:
        "logs/{scale}/normalize/N{N}-{split}.log",
    benchmark:
        "benchmarks/{scale}/normalize/N{N}-{split}.tsv"
    threads: res("evaluate", "threads")
    resources:
        mem_mb=res("evaluate", "mem_mb"),
        runtime=res("evaluate", "runtime"),
        gpu=res("evaluate", "gpu", 0),
    shell:
        "dsm normalize --params params.yaml --scale {wildcards.scale}"
        " --model {input.model} --data {input.data} --out {output} 2> {log}"


rule evaluate:
    input:
        model="models/{scale}/N{N}-{split}/model.pt",
        norm="results/{scale}/norm/N{N}-{split}.json",
        data="data/{scale}/images",
        splits="data/{scale}/splits.parquet",
        code=code("evaluate"),
    output:
        "results/{scale}/logp/N{N}-{split}.parquet",
    params:
        reads=reads("evaluate"),
    conda:
        CONDA_ENV
    log:
        "logs/{scale}/evaluate/N{N}-{split}.log",
    benchmark:
        "benchmarks/{scale}/evaluate/N{N}-{split}.tsv"
    threads: res("evaluate", "threads")
    resources:
        mem_mb=res("evaluate", "mem_mb"),
        runtime=res("evaluate", "runtime"),
        gpu=res("evaluate", "gpu", 0),
    shell:
        "dsm evaluate --params params.yaml --scale {wildcards.scale}"
        " --model {input.model} --norm {input.norm} --data {input.data}"
        " --splits {input.splits} --N {wildcards.N} --split {wildcards.split}"
        " --out {output} 2> {log}"
