# Config validation, scale selection, and the helpers every rule file uses.
#
# Every rule is one stage of the stage table (dsm/pipeline/stages.py), which also
# generates dvc.yaml: the rule takes its inputs, outputs, command, parameters, code
# dependencies and resources from there, so Snakemake and DVC cannot disagree.
# The parameters of each job are its `params` (never inputs), so Snakemake's params
# rerun trigger reruns exactly the jobs whose parameters changed; the library files a
# stage runs (its entry module's import closure) are inputs, so a code change reruns
# exactly the stages that can change.

import mimetypes
import re
import sys
from pathlib import Path

# The workflow's own checkout of the library, whatever `dsm` is installed.
sys.path.insert(0, str(Path(workflow.basedir)))

from snakemake.utils import validate

import dsm.config
import dsm.errors
from dsm.pipeline import render
from dsm.pipeline.stages import STAGES, targets

ROOT = str(Path(workflow.basedir))
# The report offers the per-image tables as downloads of their own type (not text/plain).
mimetypes.add_type("application/vnd.apache.parquet", ".parquet")

# Fail at parse time, before any job starts, with the dotted key in the message
# (schema, then the cross-key checks of dsm.config.check_params); the same checks run
# again in every `dsm` command, so `dvc repro` fails on its first stage the same way.
# The jobs read params.yaml, as DVC's do: a --config/--configfile value other than
# scale=NAME would not reach them, so it is refused (docs/pipeline.md).
try:
    dsm.config.check_workflow_config(config, render.PARAMS_FILE)
except dsm.errors.DsmError as e:
    raise WorkflowError(str(e)) from None
try:
    dsm.config.validate_params(config, render.PARAMS_FILE)
except dsm.errors.DsmError as e:
    raise WorkflowError(f"invalid parameters: {e}") from None
# Fill the schema's defaults into config (so rule params see the resolved values).
validate(config, schema="../schemas/params.schema.yaml")

SCALES = config["scales"]
if "scale" in config:
    if config["scale"] not in SCALES:
        raise WorkflowError(
            f"--config scale={config['scale']}: unknown scale (known: {', '.join(SCALES)})"
        )
    RUN = SCALES[config["scale"]]
else:
    RUN = config["run"]
SCALE = RUN["name"]
# the paper's figures and tables; the bias budget only for a source with an exact density
ALL_TARGETS = [t.replace("{scale}", SCALE) for t in targets(RUN["data"]["source"], RUN.get("all_skip") or ())]

# The software of the jobs under `--software-deployment-method conda` (clusters): their
# dependencies, and a `dsm` command that runs this checkout (envs/dsm.post-deploy.sh).
# Locally the jobs run the `dsm` of the environment snakemake runs in. The path is relative
# to workflow/rules/; docs/cluster.md says how it was checked.
CONDA_ENV = "../envs/dsm.yaml"


def scale_of(wildcards):
    """The scale section a job belongs to: its {scale} wildcard, else the active one."""
    return SCALES[wildcards.scale] if "scale" in wildcards.keys() else RUN


def inputs(name):
    return render.smk_inputs(STAGES[name], SCALES, SCALE, ROOT)


def outputs(name):
    """Named outputs; those of the stage's `report` entries flagged for `snakemake --report`."""
    return render.smk_outputs(STAGES[name], SCALE, directory, report, ROOT)


def reads(name):
    return render.smk_params(STAGES[name], scale_of, dsm.config.get)


def params_of(name):
    """The rule's params: `reads` (the values of the keys the stage reads: the params
    rerun trigger) and, for a stage with `report` entries, `report` (the numbers its
    captions quote; derived from the job's files, so never a rerun trigger)."""
    out = {"reads": reads(name)} if STAGES[name].reads else {}
    if STAGES[name].report:
        out["report"] = render.smk_report_params(STAGES[name], scale_of, ROOT)
    return out


def shell_of(name):
    return render.smk_shell(STAGES[name], SCALE)


def log_of(name):
    return render.smk_pattern(STAGES[name], STAGES[name].log(), SCALE)


def benchmark_of(name):
    return render.smk_pattern(STAGES[name], STAGES[name].benchmark_file(), SCALE)


def res(name, key, default=None):
    """A resource of the stage's group in the job's scale (threads, mem_mb, runtime, gpu)."""
    group = STAGES[name].resources

    def get(wildcards):
        return scale_of(wildcards)["resources"][group].get(key, default)

    return get


def resources_of(name):
    r = {"mem_mb": res(name, "mem_mb"), "runtime": res(name, "runtime")}
    if STAGES[name].resources in ("train", "evaluate"):
        r["gpu"] = res(name, "gpu", 0)
    return r
