# Data: prepare the image store of a scale, then the nested disjoint A/B splits.
# Each rule is one stage of dsm/pipeline/stages.py (see common.smk).


rule prepare:
    input:
        **inputs("prepare"),
    output:
        **outputs("prepare"),
    params:
        **params_of("prepare"),
    conda:
        CONDA_ENV
    log:
        log_of("prepare"),
    benchmark:
        benchmark_of("prepare")
    threads: res("prepare", "threads")
    resources:
        **resources_of("prepare"),
    shell:
        shell_of("prepare")


rule split:
    input:
        **inputs("split"),
    output:
        **outputs("split"),
    params:
        **params_of("split"),
    conda:
        CONDA_ENV
    log:
        log_of("split"),
    threads: res("split", "threads")
    resources:
        **resources_of("split"),
    shell:
        shell_of("split")
