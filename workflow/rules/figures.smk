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


rule fig3:
    input:
        **inputs("fig3"),
    output:
        **outputs("fig3"),
    params:
        **params_of("fig3"),
    conda:
        CONDA_ENV
    log:
        log_of("fig3"),
    threads: res("fig3", "threads")
    resources:
        **resources_of("fig3"),
    shell:
        shell_of("fig3")


rule fig678:
    input:
        **inputs("fig678"),
    output:
        **outputs("fig678"),
    params:
        **params_of("fig678"),
    conda:
        CONDA_ENV
    log:
        log_of("fig678"),
    threads: res("fig678", "threads")
    resources:
        **resources_of("fig678"),
    shell:
        shell_of("fig678")


rule table2:
    input:
        **inputs("table2"),
    output:
        **outputs("table2"),
    params:
        **params_of("table2"),
    conda:
        CONDA_ENV
    log:
        log_of("table2"),
    threads: res("table2", "threads")
    resources:
        **resources_of("table2"),
    shell:
        shell_of("table2")


rule fig_bias:
    input:
        **inputs("fig_bias"),
    output:
        **outputs("fig_bias"),
    params:
        **params_of("fig_bias"),
    conda:
        CONDA_ENV
    log:
        log_of("fig_bias"),
    threads: res("fig_bias", "threads")
    resources:
        **resources_of("fig_bias"),
    shell:
        shell_of("fig_bias")
# Figures 4 and 5 of the active scale, from the tables of the contrast and
# dimensionality rules (analysis.smk).


rule fig4:
    input:
        **inputs("fig4"),
    output:
        **outputs("fig4"),
    params:
        **params_of("fig4"),
    conda:
        CONDA_ENV
    log:
        log_of("fig4"),
    threads: res("fig4", "threads")
    resources:
        **resources_of("fig4"),
    shell:
        shell_of("fig4")


rule fig5:
    input:
        **inputs("fig5"),
    output:
        **outputs("fig5"),
    params:
        **params_of("fig5"),
    conda:
        CONDA_ENV
    log:
        log_of("fig5"),
    threads: res("fig5", "threads")
    resources:
        **resources_of("fig5"),
    shell:
        shell_of("fig5")

rule fig_estimators:
    input:
        **inputs("fig_estimators"),
    output:
        **outputs("fig_estimators"),
    params:
        **params_of("fig_estimators"),
    conda:
        CONDA_ENV
    log:
        log_of("fig_estimators"),
    threads: res("fig_estimators", "threads")
    resources:
        **resources_of("fig_estimators"),
    shell:
        shell_of("fig_estimators")
