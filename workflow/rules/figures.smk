# Figures: fig2 of the active scale (params.yaml `run`, or --config scale=NAME); fig1
# trains its two small models per scale and is published for the active one.


rule fig2:
    input:
        **inputs("fig2"),
    output:
        **outputs("fig2"),
    params:
        **params_of("fig2"),
    conda:
        CONDA_ENV
    log:
        log_of("fig2"),
    threads: res("fig2", "threads")
    resources:
        **resources_of("fig2"),
    shell:
        shell_of("fig2")


rule fig1:
    input:
        **inputs("fig1"),
    output:
        **outputs("fig1"),
    params:
        **params_of("fig1"),
    conda:
        CONDA_ENV
    log:
        log_of("fig1"),
    benchmark:
        benchmark_of("fig1")
    threads: res("fig1", "threads")
    resources:
        **resources_of("fig1"),
    shell:
        shell_of("fig1")


rule publish_fig1:
    input:
        **inputs("publish_fig1"),
    output:
        **outputs("publish_fig1"),
    params:
        **params_of("publish_fig1"),
    conda:
        CONDA_ENV
    log:
        log_of("publish_fig1"),
    threads: 1
    shell:
        shell_of("publish_fig1")
