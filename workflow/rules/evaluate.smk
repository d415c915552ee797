# Evaluation: the normalization constant of each model (held-out images at t_max),
# then its per-image log p on its own, the other set's and test images (Parquet).


rule normalize:
    input:
        **inputs("normalize"),
    output:
        **outputs("normalize"),
    params:
        reads=reads("normalize"),
    conda:
        CONDA_ENV
    log:
        log_of("normalize"),
    benchmark:
        benchmark_of("normalize")
    threads: res("normalize", "threads")
    resources:
        **resources_of("normalize"),
    shell:
        shell_of("normalize")


rule evaluate:
    input:
        **inputs("evaluate"),
    output:
        **outputs("evaluate"),
    params:
        reads=reads("evaluate"),
    conda:
        CONDA_ENV
    log:
        log_of("evaluate"),
    benchmark:
        benchmark_of("evaluate")
    threads: res("evaluate", "threads")
    resources:
        **resources_of("evaluate"),
    shell:
        shell_of("evaluate")
