"""The stage table rendered for each tool: Snakemake rule fields, and dvc.yaml.

Commands are written once in neutral syntax (:meth:`Stage.full_command`) and rendered:

============  =====================  ===================================
placeholder   Snakemake shell        dvc.yaml
============  =====================  ===================================
``{scale}``   ``{wildcards.scale}``  ``${run.name}``
              (the active scale for
              stages without it)
``{N}``       ``{wildcards.N}``      ``${item.N}`` (matrix)
``{input.x}`` ``{input.x}``          input x's path, rendered
============  =====================  ===================================

``dsm sync dvc-yaml`` writes :func:`dvc_yaml_text` to ``dvc.yaml``; a test fails when
the committed file differs from it.
"""

from __future__ import annotations

from dsm.pipeline.stages import (MODEL_WILDCARDS, PARAMS_FILE, REPORT_CATEGORIES, REPORT_DIR,
                                 SPLITS, STAGES, WILDCARD_VALUES, Each, Stage, _PLACEHOLDER,
                                 plot_template)

# --- Snakemake ------------------------------------------------------------------------


def _fill(text: str, mapping) -> str:
    return _PLACEHOLDER.sub(lambda m: mapping(m.group(1)), text)


def smk_pattern(stage: Stage, pattern: str, active: str) -> str:
    """A path pattern for a rule: ``{scale}`` stays a wildcard where the stage has it,
    else it is the active scale."""
    return _fill(pattern, lambda k: active if k == "scale" and "scale" not in stage.wildcards
                 else "{" + k + "}")


def smk_shell(stage: Stage, active: str) -> str:
    """The rule's ``shell:`` (stderr to the rule's log)."""
    def sub(key: str) -> str:
        if key in ("scale", *MODEL_WILDCARDS):
            return f"{{wildcards.{key}}}" if key in stage.wildcards else active
        return "{" + key + "}"

    cmd = _fill(stage.full_command(), sub)
    return f"{'exec ' if stage.exec_ else ''}{cmd} 2> {{log}}"


def smk_inputs(stage: Stage, scales: dict, active: str, root=".") -> dict:
    """Named inputs: fixed patterns, functions of the wildcards for :class:`Each`, and
    ``code`` (the computed code dependencies)."""
    out = {}
    for name, p in stage.inputs.items():
        if isinstance(p, Each):
            out[name] = _each(stage, p.pattern, scales, active)
        else:
            out[name] = smk_pattern(stage, p, active)
    out["code"] = stage.code(root)
    return out


def wildcard_values(cfg: dict, key: str) -> list:
    """The values a model wildcard takes in a scale section (seeds, split.N, A/B)."""
    where = WILDCARD_VALUES[key]
    if where is None:
        return list(SPLITS)
    node = cfg
    for part in where.split("."):
        node = node[part]
    return list(node)


def _each(stage: Stage, pattern: str, scales: dict, active: str):
    def files(wildcards):
        import itertools

        scale = wildcards.scale if "scale" in stage.wildcards else active
        cfg = scales[scale]
        keys = [k for k in MODEL_WILDCARDS if "{" + k + "}" in pattern]
        combos = itertools.product(*(wildcard_values(cfg, k) for k in keys))
        return [pattern.format(scale=scale, **dict(zip(keys, c))) for c in combos]

    return files


def smk_outputs(stage: Stage, active: str, directory, report=None, root=".") -> dict:
    """Named outputs; directories flagged ``directory()``, and the outputs of the stage's
    :class:`Report` entries flagged ``report()`` (caption, category, subcategory)."""
    from pathlib import Path

    shown = {r.output: r for r in stage.report} if report is not None else {}
    out = {}
    for name, p in stage.outputs.items():
        path = smk_pattern(stage, p, active)
        if name in stage.directories:
            path = directory(path)
        if name in shown:
            r = shown[name]
            path = report(path, caption=str(Path(root).resolve() / REPORT_DIR / r.caption),
                          category=REPORT_CATEGORIES[r.category], subcategory=r.subcategory,
                          patterns=list(r.patterns))
        out[name] = path
    return out


def smk_params(stage: Stage, scale_of, get):
    """``params: reads=...``: the resolved values of the keys the stage reads."""
    def params(wildcards):
        cfg = scale_of(wildcards)
        return {key: get(cfg, key) for key in stage.reads}

    return params


def smk_report_params(stage: Stage, scale_of, root="."):
    """``params: report=...``: what the captions of the stage's :class:`Report` entries
    read (``snakemake.params.report`` in the caption): ``scale`` and each ``data`` file.

    A function of ``output``: Snakemake counts it as *derived* from the job's files and
    leaves it out of the ``params`` rerun trigger, so new numbers never rerun a job. It
    is evaluated when the DAG is built; before a run the files are absent ({}), when the
    report is built they hold the numbers of the run it shows."""
    from dsm.pipeline.report import caption_data

    patterns = {k: v for r in stage.report for k, v in r.data.items()}

    def report_params(wildcards, output):
        scale = scale_of(wildcards)["name"]
        return caption_data(patterns, scale, root)

    return report_params


# --- DVC --------------------------------------------------------------------------------


def _dvc(stage: Stage, text: str) -> str:
    def sub(key: str) -> str:
        if key == "scale":
            return "${run.name}"
        if key in MODEL_WILDCARDS:
            return "${item." + key + "}"
        kind, _, name = key.partition(".")
        paths = stage.inputs if kind == "input" else stage.outputs
        p = paths[name]
        return _dvc(stage, p.dvc_dir if isinstance(p, Each) else p)

    return _fill(text, sub)


def dvc_stage(stage: Stage, root=".") -> dict:
    """The stage as a dvc.yaml entry (a plain dict, in dvc.yaml's key order)."""
    entry: dict = {}
    if stage.per_model:
        entry["matrix"] = {k: list(SPLITS) if WILDCARD_VALUES[k] is None else "${run." + WILDCARD_VALUES[k] + "}"
                           for k in MODEL_WILDCARDS}
    entry["cmd"] = _dvc(stage, stage.full_command())
    deps = [_dvc(stage, p.dvc_dir if isinstance(p, Each) else p) for p in stage.inputs.values()]
    deps += stage.code(root)
    if deps:
        entry["deps"] = deps
    if stage.reads:
        entry["params"] = [f"run.{k}" for k in stage.reads]
    entry["outs"] = [_dvc(stage, p) for p in stage.outputs.values()]
    return entry


def dvc_metrics() -> list[str]:
    """Top-level ``metrics:``: every output a stage declares in ``metrics`` (a directory
    stands for its files: ``dvc metrics show`` lists each)."""
    return [_dvc(s, s.outputs[name]) for s in STAGES.values() for name in s.metrics]


def dvc_plots() -> list[dict]:
    """Top-level ``plots:``: one entry per :class:`Plot`, by id, with template, axes and
    labels (``dvc plots show`` renders them)."""
    out = []
    for s in STAGES.values():
        for p in s.plots:
            y = list(p.y) if isinstance(p.y, tuple) else p.y
            out.append({p.id: {"template": plot_template(p), "x": p.x,
                               "y": {_dvc(s, s.outputs[p.output]): y},
                               "title": p.title, "x_label": p.x_label, "y_label": p.y_label}})
    return out


HEADER = """\
# GENERATED from the stage table (dsm/pipeline/stages.py) by `dsm sync dvc-yaml`; do
# not edit: change the table and regenerate (tests/test_pipeline_stages.py fails when
# this file differs from the table). The same stages, commands, parameters and code
# dependencies as the Snakemake rules (workflow/rules/*.smk), for the active scale
# `run` of params.yaml.
#
#   dvc repro                  # everything of the active scale, incrementally
#   dsm sync dvc               # after a Snakemake run: adopt its outputs into dvc.lock
#   dsm sync snakemake         # after dvc pull/checkout/repro: make Snakemake agree
"""


def dvc_yaml_text(root=".") -> str:
    """The whole dvc.yaml, deterministic text."""
    import yaml

    doc = {"stages": {s.name: dvc_stage(s, root) for s in STAGES.values()},
           "metrics": dvc_metrics(),
           "plots": dvc_plots()}
    body = yaml.safe_dump(doc, sort_keys=False, width=100, default_flow_style=False)
    return HEADER + "\n" + body


def write_dvc_yaml(root=".") -> bool:
    """Regenerate ``root/dvc.yaml``; True if it changed."""
    from pathlib import Path

    from dsm.io import write_text

    path = Path(root) / "dvc.yaml"
    text = dvc_yaml_text(root)
    if path.is_file() and path.read_text() == text:
        return False
    write_text(path, text, replace_tracked=True)     # the committed, generated dvc.yaml
    return True


__all__ = ["smk_shell", "smk_inputs", "smk_outputs", "smk_params", "smk_report_params", "smk_pattern",
           "dvc_stage", "dvc_metrics", "dvc_plots", "dvc_yaml_text", "write_dvc_yaml", "PARAMS_FILE"]
