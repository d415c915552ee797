# Config validation, scale selection, and the input functions every rule file uses.
#
# The parameters of each job are passed as its `params` (never as inputs), so
# Snakemake's params rerun trigger reruns exactly the jobs whose parameters changed.
# READS is the single list of those keys; dvc.yaml lists the same keys under each
# stage's `params:` (tests/test_pipeline_consistency.py checks that they agree).

import re
from pathlib import Path

from snakemake.utils import validate

import dsm.config
import dsm.errors

PARAMS = "params.yaml"

# Fail at parse time, before any job starts, with the dotted key in the message
# (schema, then the cross-key checks of dsm.config.check_params); the same checks run
# again in every `dsm` command, so `dvc repro` fails on its first stage the same way.
try:
    dsm.config.validate_params(config, PARAMS)
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

# Software of every rule for `--software-deployment-method conda` (clusters); locally the
# rules run the `dsm` of the environment snakemake runs in. Relative to workflow/rules/.
CONDA_ENV = "../../environment.yml"

# Keys of a scale section each rule reads (`a.b` = key b of section a).
READS = {
    "prepare": ["data"],
    "split": ["split"],
    "train": ["model", "train"],
    "normalize": ["evaluate.n_norm", "evaluate.batch_size", "evaluate.noise_seed"],
    "evaluate": ["evaluate.max_per_set", "evaluate.batch_size"],
    "compare": ["split"],
    "fig2": ["figures.fig2"],
    "fig1": ["fig1"],
}

# Library code each job runs, as inputs, so that a code change reruns it (a directory means its *.py).
CODE = {
    "prepare": ["dsm/data"],
    "split": ["dsm/data/splits.py"],
    "train": ["dsm/train.py", "dsm/objectives.py", "dsm/nets"],
    "normalize": ["dsm/evaluate.py", "dsm/nets"],
    "evaluate": ["dsm/evaluate.py", "dsm/nets"],
    "compare": ["dsm/analysis/generalization.py"],
    "fig2": ["dsm/figures/fig2.py"],
    "fig1": ["dsm/figures/fig1.py"],
}


def scale_of(wildcards):
    """The scale section a job belongs to: its {scale} wildcard, else the active one."""
    return SCALES[wildcards.scale] if "scale" in wildcards.keys() else RUN


def reads(rule_name):
    """Rule params: the resolved sections the rule reads, keyed by dotted name."""

    def params(wildcards):
        cfg = scale_of(wildcards)
        return {key: dsm.config.get(cfg, key) for key in READS[rule_name]}

    return params


def code(rule_name):
    """The library files a rule runs, as inputs (sorted; directories expanded)."""
    files = []
    for path in CODE[rule_name]:
        p = Path(path)
        files += sorted(str(f) for f in p.rglob("*.py")) if p.is_dir() else [path]
    return files


def res(group, key, default=None):
    """A resource of `resources.<group>` of the job's scale (threads, mem_mb, runtime, gpu)."""

    def get(wildcards):
        return scale_of(wildcards)["resources"][group].get(key, default)

    return get


def models_of(scale):
    return expand(
        "models/{scale}/N{N}-{split}/model.pt",
        scale=scale, N=SCALES[scale]["split"]["N"], split=["A", "B"],
    )


def logp_tables(wildcards):
    """Every per-image log p table of a scale (one per N and split)."""
    scale = scale_of(wildcards)["name"]
    return expand(
        "results/{scale}/logp/N{N}-{split}.parquet",
        scale=scale, N=SCALES[scale]["split"]["N"], split=["A", "B"],
    )
