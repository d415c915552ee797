"""The software environments: pyproject.toml (venv, CI), environment.yml (a conda
environment for people) and workflow/envs/dsm.yaml (the rules' environment under
`snakemake --software-deployment-method conda`), with its post-deploy script that gives
the environment a `dsm` command running the job's checkout.

conda itself cannot run on this machine (no conda channel is reachable: docs/cluster.md),
so these tests check what can be checked without it: the three dependency lists agree, and
the launcher the post-deploy script writes runs the checkout of the working directory with
the environment's Python.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tomllib

import yaml

from test_pipeline_util import REPO, copy_repo

CONDA_NAME = {"torch": "pytorch"}  # PyPI name -> conda-forge name, where they differ
JOB_ENV = REPO / "workflow/envs/dsm.yaml"
SPEC = re.compile(r"^([A-Za-z0-9_.\-]+)\s*(.*)$")


def _specs(lines) -> dict[str, str]:
    """{name: lower bound} of requirement strings like 'numpy>=1.24' or 'torch>=2.4,<2.14'."""
    out = {}
    for line in lines:
        name, rest = SPEC.match(line.replace(" ", "")).groups()
        lower = re.search(r">=([0-9.]+)", rest)
        out[name.lower()] = lower.group(1) if lower else rest
    return out


def _pyproject():
    return tomllib.loads((REPO / "pyproject.toml").read_text())["project"]


def _conda(path) -> tuple[dict[str, str], list]:
    deps = yaml.safe_load(path.read_text())["dependencies"]
    return _specs(d for d in deps if isinstance(d, str)), [d for d in deps if isinstance(d, dict)]


def test_rule_environment_has_exactly_the_runtime_dependencies():
    runtime = {CONDA_NAME.get(k, k): v for k, v in _specs(_pyproject()["dependencies"]).items()}
    conda, pip = _conda(JOB_ENV)
    assert conda.pop("python") == "=3.11"
    assert conda == runtime  # same packages, same lower bounds
    assert not pip  # nothing from pip: no `-e .` (Snakemake copies the file elsewhere)
    assert yaml.safe_load(JOB_ENV.read_text())["channels"] == ["conda-forge"]
    assert 'CONDA_ENV = "../envs/dsm.yaml"' in (REPO / "workflow/rules/common.smk").read_text()
    # Snakemake runs <env>.post-deploy.sh beside the environment file after creating it
    assert (REPO / "workflow/envs/dsm.post-deploy.sh").is_file()


def test_conda_environment_for_people_has_runtime_and_pipeline_dependencies():
    project = _pyproject()
    wanted = {CONDA_NAME.get(k, k): v for k, v in _specs(project["dependencies"]).items()}
    wanted |= _specs(project["optional-dependencies"]["pipeline"])
    wanted |= _specs(project["optional-dependencies"]["test"])
    conda, pip = _conda(REPO / "environment.yml")
    conda.pop("python"), conda.pop("pip")
    assert conda == wanted
    # `-e .` is resolved by conda against the directory of environment.yml: the repository
    assert pip == [{"pip": ["--no-deps", "-e ."]}]


def test_post_deploy_launcher_runs_the_checkout_of_the_working_directory(tmp_path):
    prefix = tmp_path / "env"
    (prefix / "bin").mkdir(parents=True)
    os.symlink(sys.executable, prefix / "bin" / "python")
    env = {**os.environ, "CONDA_PREFIX": str(prefix)}
    subprocess.run(["bash", str(REPO / "workflow/envs/dsm.post-deploy.sh")], env=env, check=True,
                   cwd=tmp_path)
    launcher = prefix / "bin" / "dsm"
    assert launcher.read_text().splitlines()[0] == f"#!{prefix}/bin/python"
    assert os.access(launcher, os.X_OK)

    # a checkout whose library says where it was imported from; PYTHONPATH points elsewhere
    repo = copy_repo(tmp_path / "checkout")
    with open(repo / "dsm" / "__init__.py", "a") as f:
        f.write('\nimport sys as _sys\nprint("dsm imported from", __file__, file=_sys.stderr)\n')
    env["PYTHONPATH"] = str(REPO)
    res = subprocess.run([str(launcher), "sync", "dvc-yaml"], cwd=repo, env=env, capture_output=True,
                         text=True)
    assert res.returncode == 0, res.stderr
    assert f"dsm imported from {repo}/dsm/__init__.py" in res.stderr
    assert "dvc.yaml is up to date" in res.stderr

    res = subprocess.run([str(launcher), "--help"], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert res.returncode == 1 and "run from the repository root" in res.stderr
