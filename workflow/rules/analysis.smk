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
