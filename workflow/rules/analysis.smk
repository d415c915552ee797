# Analysis: do the A and B models agree? Per-N metrics (DVC metrics and plots).


rule compare:
    input:
        **inputs("compare"),
    output:
        **outputs("compare"),
    params:
        **params_of("compare"),
    conda:
        CONDA_ENV
    log:
        log_of("compare"),
    threads: res("compare", "threads")
    resources:
        **resources_of("compare"),
    shell:
        shell_of("compare")


rule examples:
    input:
        **inputs("examples"),
    output:
        **outputs("examples"),
    params:
        **params_of("examples"),
    conda:
        CONDA_ENV
    log:
        log_of("examples"),
    threads: res("examples", "threads")
    resources:
        **resources_of("examples"),
    shell:
        shell_of("examples")


rule gumbel:
    input:
        **inputs("gumbel"),
    output:
        **outputs("gumbel"),
    params:
        **params_of("gumbel"),
    conda:
        CONDA_ENV
    log:
        log_of("gumbel"),
    threads: res("gumbel", "threads")
    resources:
        **resources_of("gumbel"),
    shell:
        shell_of("gumbel")


rule bias:
    input:
        **inputs("bias"),
    output:
        **outputs("bias"),
    params:
        **params_of("bias"),
    conda:
        CONDA_ENV
    log:
        log_of("bias"),
    benchmark:
        benchmark_of("bias")
    threads: res("bias", "threads")
    resources:
        **resources_of("bias"),
    shell:
        shell_of("bias")
# Across noise levels (README "Across noise levels"): Table 1, Figures 4 and 5's data.


rule table1:
    input:
        **inputs("table1"),
    output:
        **outputs("table1"),
    params:
        **params_of("table1"),
    conda:
        CONDA_ENV
    log:
        log_of("table1"),
    benchmark:
        benchmark_of("table1")
    threads: res("table1", "threads")
    resources:
        **resources_of("table1"),
    shell:
        shell_of("table1")


rule dimensionality:
    input:
        **inputs("dimensionality"),
    output:
        **outputs("dimensionality"),
    params:
        **params_of("dimensionality"),
    conda:
        CONDA_ENV
    log:
        log_of("dimensionality"),
    benchmark:
        benchmark_of("dimensionality")
    threads: res("dimensionality", "threads")
    resources:
        **resources_of("dimensionality"),
    shell:
        shell_of("dimensionality")


rule contrast:
    input:
        **inputs("contrast"),
    output:
        **outputs("contrast"),
    params:
        **params_of("contrast"),
    conda:
        CONDA_ENV
    log:
        log_of("contrast"),
    benchmark:
        benchmark_of("contrast")
    threads: res("contrast", "threads")
    resources:
        **resources_of("contrast"),
    shell:
        shell_of("contrast")

rule estimators:
    input:
        **inputs("estimators"),
    output:
        **outputs("estimators"),
    params:
        **params_of("estimators"),
    conda:
        CONDA_ENV
    log:
        log_of("estimators"),
    benchmark:
        benchmark_of("estimators")
    threads: res("estimators", "threads")
    resources:
        **resources_of("estimators"),
    shell:
        shell_of("estimators")


rule peers:
    input:
        **inputs("peers"),
    output:
        **outputs("peers"),
    params:
        **params_of("peers"),
    conda:
        CONDA_ENV
    log:
        log_of("peers"),
    benchmark:
        benchmark_of("peers")
    threads: res("peers", "threads")
    resources:
        **resources_of("peers"),
    shell:
        shell_of("peers")
