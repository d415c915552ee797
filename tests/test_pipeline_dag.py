"""The Snakemake DAG without running it: lint, dry runs of every scale, rerun triggers.

Rerun behaviour is checked on a "finished" default-scale run faked with empty outputs
and `snakemake --touch` (no training needed): a second run plans nothing, a figure-only
parameter reruns only the figure, the learning rate reruns the 12 training jobs and
everything downstream, nothing upstream.
"""

from __future__ import annotations

import re

import pytest

from dsm.pipeline.stages import EXACT_SOURCES, STAGES
from test_pipeline_util import (REPO, copy_repo, edit_param, fake_complete, load_params,
                                planned_jobs, snakemake)


def expected_jobs(cfg: dict) -> dict:
    """{rule: jobs} of `all` for a scale section: one job per A/B model for the per-model
    stages (seeds x N x A/B), one for the others, and the rule all."""
    n_models = 2 * len(cfg["split"]["N"]) * len(cfg["seeds"])
    jobs = {name: n_models if s.per_model else 1 for name, s in STAGES.items()}
    if cfg["data"]["source"] not in EXACT_SOURCES:          # no bias budget without an exact density
        jobs = {k: v for k, v in jobs.items() if k not in ("bias", "fig_bias", "publish_bias")}
    if "fig1" in (cfg.get("all_skip") or ()):               # Figure 1 left out of `all` at this scale
        jobs = {k: v for k, v in jobs.items() if k not in ("fig1", "fig1_figure", "publish_fig1")}
    return {**jobs, "all": 1}


def test_lint_is_clean():
    res = snakemake(["--lint"], REPO, check=False)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "Congratulations" in res.stdout + res.stderr, res.stdout + res.stderr


@pytest.mark.parametrize("scale", ["paper", "paper-gray", "default", "fashion-mnist", "smoke", "natural"])
def test_dry_run_plans_the_complete_dag(scale, tmp_path):
    repo = copy_repo(tmp_path / "r")
    cfg = load_params(repo)["scales"][scale]
    n_models = 2 * len(cfg["split"]["N"]) * len(cfg["seeds"])
    res = snakemake(["all", "--dry-run", "--config", f"scale={scale}"], repo)
    jobs = planned_jobs(res)
    assert jobs == expected_jobs(cfg)
    if scale == "paper":
        assert n_models == 12
        out = res.stdout + res.stderr
        # every training job asks for a GPU at the paper scale (the SLURM profile relies on it)
        blocks = re.split(r"\n\[\w{3} \w{3} +\d+ [\d:]+ \d{4}\]\n", out)
        train_blocks = [b for b in blocks if re.match(r"\s*rule train\w*:", b)]
        assert len(train_blocks) == 12 + 2               # A/B models, full energy and score models
        assert all("gpu=1" in b for b in train_blocks)
        assert all(f"models/paper/seed0/N{n}-{s}/model.pt" in out
                   for n in (1, 10, 100, 1000, 10000, 100000) for s in "AB")


def test_target_fig2_alone(tmp_path):
    repo = copy_repo(tmp_path / "r")
    jobs = planned_jobs(snakemake(["figures/fig2.pdf", "--dry-run"], repo))
    assert jobs["train"] == 12 and "fig1" not in jobs


@pytest.fixture(scope="module")
def finished_default(tmp_path_factory):
    repo = copy_repo(tmp_path_factory.mktemp("finished") / "r")
    fake_complete(repo)
    return repo


def _rerun_plan(repo, section, key, value, tmp_path):
    """Copy a finished run, change one parameter, return the planned jobs."""
    import shutil

    copy = tmp_path / "c"
    shutil.copytree(repo, copy, symlinks=True, copy_function=shutil.copy2)
    edit_param(copy, "default", section, key, value)
    return planned_jobs(snakemake(["all", "--dry-run"], copy))


def test_second_run_does_nothing(finished_default):
    assert planned_jobs(snakemake(["all", "--dry-run"], finished_default)) == {}


def test_lr_change_reruns_training_and_downstream_only(finished_default, tmp_path):
    jobs = _rerun_plan(finished_default, "train", "lr", "1.234e-3", tmp_path)
    assert jobs.pop("train") == 12
    upstream = {"prepare", "split", "fig1", "fig1_figure", "publish_fig1", "peers"}    # peers: data only
    assert set(jobs) == set(expected_jobs(load_params(finished_default)["scales"]["default"])) - upstream - {"train"}
    assert jobs["normalize"] == jobs["evaluate"] == 12


def test_figure_param_change_reruns_only_the_figure(finished_default, tmp_path):
    jobs = _rerun_plan(finished_default, "figures", "point_size", "3.5", tmp_path)
    assert jobs == {"fig2": 1, "publish_fig2": 1, "all": 1}


def test_evaluation_param_change_keeps_the_models(finished_default, tmp_path):
    jobs = _rerun_plan(finished_default, "evaluate", "max_per_set", "500", tmp_path)
    assert "train" not in jobs and "normalize" not in jobs and jobs["evaluate"] == 12


def test_other_scale_param_change_reruns_nothing(finished_default, tmp_path):
    """Only the active scale's parameters matter to its jobs."""
    import shutil

    copy = tmp_path / "c"
    shutil.copytree(finished_default, copy, symlinks=True)
    edit_param(copy, "smoke", "train", "lr", "0.5")
    assert planned_jobs(snakemake(["all", "--dry-run"], copy)) == {}
