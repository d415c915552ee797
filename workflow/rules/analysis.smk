# Analysis: do the A and B models agree? Per-N metrics (DVC metrics and plots).


rule compare:
    input:
        **inputs("compare"),
    output:
        **outputs("compare"),
    params:
        reads=reads("compare"),
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
        reads=reads("examples"),
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
        reads=reads("gumbel"),
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
        reads=reads("bias"),
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
