"""Snakemake rules and DVC stages (both rendered from dsm/pipeline/stages.py): the same
outputs, from the same commands, reading the same parameters and the same code, checked
on what each tool actually resolves.

Snakemake's side comes from `snakemake all -n -p --forceall` (every job with its rule,
inputs, outputs and shell command); DVC's from its Python API on the resolved dvc.yaml.
Commands are compared after removing Snakemake's log redirection and normalising
whitespace.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from dsm.pipeline.stages import STAGES
from test_pipeline_util import copy_repo, dry_run_jobs


def normalise(cmd: str) -> str:
    cmd = re.sub(r"\s+2>\s*\S+\s*$", "", cmd.strip())  # Snakemake: `2> {log}`
    cmd = re.sub(r"^exec\s+", "", cmd)  # Snakemake: `exec` so signals reach the job
    return " ".join(cmd.split())


def expand_deps(repo: Path, paths, all_outs: set[str]) -> set[str]:
    """Dependencies as Snakemake lists them: a code directory means its *.py files, and a
    directory of other stages' outputs (DVC: `results/<scale>/logp`) means those outputs."""
    out = set()
    for p in paths:
        full = repo / p
        inside = {o for o in all_outs if o.startswith(p.rstrip("/") + "/")}
        if full.is_dir() and p.startswith("dsm"):
            out |= {str(f.relative_to(repo)) for f in full.rglob("*.py")}
        elif inside:
            out |= inside
        else:
            out.add(p)
    return out


def dvc_view(repo: Path) -> dict:
    from dvc.dependency.param import ParamsDependency
    from dvc.repo import Repo

    stages = {}
    with Repo(str(repo)) as r:
        for s in r.index.stages:
            params, deps = set(), []
            for d in s.deps:
                if isinstance(d, ParamsDependency):
                    params |= set(d.params)
                else:
                    deps.append(str(d.def_path))
            stages[s.name] = {"cmd": normalise(s.cmd), "outs": {str(o.def_path) for o in s.outs},
                                    "deps": deps, "params": params}
    return stages


def snakemake_view(repo: Path) -> dict:
    """{output: {rule, cmd, inputs}} of every job of `all`."""
    view = {}
    for job in dry_run_jobs(repo):
        if job["rule"] == "all":
            continue
        for out in job["output"]:
            view[out] = {"rule": job["rule"], "cmd": normalise(job["shell"]), "inputs": set(job["input"])}
    return view


@pytest.fixture(scope="module", params=["default", "smoke"])
def views(request, tmp_path_factory):
    repo = copy_repo(tmp_path_factory.mktemp(request.param) / "r", scale=request.param, git=True)
    return repo, snakemake_view(repo), dvc_view(repo)


def test_same_outputs(views):
    _, smk, dvc = views
    dvc_outs = set().union(*(s["outs"] for s in dvc.values()))
    assert dvc_outs == set(smk)


def test_same_commands_and_outputs_per_stage(views):
    _, smk, dvc = views
    for name, stage in dvc.items():
        jobs = {smk[o]["cmd"] for o in stage["outs"]}
        assert jobs == {stage["cmd"]}, name
        rule = {smk[o]["rule"] for o in stage["outs"]}
        assert rule == {name.split("@")[0]}, name
        # a Snakemake job has no output that the DVC stage lacks
        assert {o for o, j in smk.items() if j["cmd"] == stage["cmd"]} == stage["outs"], name


def test_same_dependencies(views):
    repo, smk, dvc = views
    all_outs = set().union(*(s["outs"] for s in dvc.values()))
    for name, stage in dvc.items():
        inputs = smk[sorted(stage["outs"])[0]]["inputs"]
        assert expand_deps(repo, stage["deps"], all_outs) == inputs, name


def test_same_parameters(views):
    """dvc.yaml `params:` are `run.<key>` for exactly the keys the stage (and so the
    Snakemake rule's `params:`) reads."""
    _, _, dvc = views
    for name, stage in dvc.items():
        rule = name.split("@")[0]
        assert stage["params"] == {f"run.{k}" for k in STAGES[rule].reads}, name
