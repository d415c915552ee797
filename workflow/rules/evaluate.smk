# Evaluation: the normalization constant of each model (held-out images at t_max),
# then its per-image log p on its own, the other set's and test images (Parquet); the
# full model's on every test image.


rule normalize:
    input:
        **inputs("normalize"),
    output:
        **outputs("normalize"),
    params:
        **params_of("normalize"),
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
        **params_of("evaluate"),
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


rule normalize_full:
    input:
        **inputs("normalize_full"),
    output:
        **outputs("normalize_full"),
    params:
        **params_of("normalize_full"),
    conda:
        CONDA_ENV
    log:
        log_of("normalize_full"),
    benchmark:
        benchmark_of("normalize_full")
    threads: res("normalize_full", "threads")
    resources:
        **resources_of("normalize_full"),
    shell:
        shell_of("normalize_full")


rule evaluate_full:
    input:
        **inputs("evaluate_full"),
    output:
        **outputs("evaluate_full"),
    params:
        **params_of("evaluate_full"),
    conda:
        CONDA_ENV
    log:
        log_of("evaluate_full"),
    benchmark:
        benchmark_of("evaluate_full")
    threads: res("evaluate_full", "threads")
    resources:
        **resources_of("evaluate_full"),
    shell:
        shell_of("evaluate_full")


rule probes:
    input:
        **inputs("probes"),
    output:
        **outputs("probes"),
    params:
        **params_of("probes"),
    conda:
        CONDA_ENV
    log:
        log_of("probes"),
    threads: res("probes", "threads")
    resources:
        **resources_of("probes"),
    shell:
        shell_of("probes")
