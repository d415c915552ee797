"""The Snakemake DAG without running it: lint, dry runs of every scale, rerun triggers.

Rerun behaviour is checked on a "finished" default-scale run faked with empty outputs
and `snakemake --touch` (no training needed): a second run plans nothing, a figure-only
parameter reruns only the figure, the learning rate reruns the 12 training jobs and
everything downstream, nothing upstream.
"""

from __future__ import annotations

import re

import pytest

from test_pipeline_util import (REPO, copy_repo, edit_param, fake_complete, load_params,
                                planned_jobs, snakemake)

DOWNSTREAM_OF_TRAIN = {"normalize", "evaluate", "compare", "fig2", "all"}


def test_lint_is_clean():
    res = snakemake(["--lint"], REPO, check=False)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "Congratulations" in res.stdout + res.stderr, res.stdout + res.stderr


@pytest.mark.parametrize("scale", ["paper", "default", "fashion-mnist", "smoke"])
def test_dry_run_plans_the_complete_dag(scale, tmp_path):
    repo = copy_repo(tmp_path / "r")
    n_models = 2 * len(load_params(repo)["scales"][scale]["split"]["N"])
    res = snakemake(["all", "--dry-run", "--config", f"scale={scale}"], repo)
    jobs = planned_jobs(res)
    assert jobs == {"prepare": 1, "split": 1, "train": n_models, "normalize": n_models,
                    "evaluate": n_models, "compare": 1, "fig2": 1, "fig1": 1,
                    "publish_fig1": 1, "all": 1}
    if scale == "paper":
        assert n_models == 12
        out = res.stdout + res.stderr
        # every training job asks for a GPU at the paper scale (the SLURM profile relies on it)
        blocks = re.split(r"\n\[\w{3} \w{3} +\d+ [\d:]+ \d{4}\]\n", out)
        train_blocks = [b for b in blocks if b.lstrip().startswith("rule train:")]
        assert len(train_blocks) == 12
        assert all("gpu=1" in b for b in train_blocks)
        assert all(f"models/paper/N{n}-{s}/model.pt" in out
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
    assert set(jobs) == DOWNSTREAM_OF_TRAIN
    assert jobs["normalize"] == jobs["evaluate"] == 12


def test_figure_param_change_reruns_only_the_figure(finished_default, tmp_path):
    jobs = _rerun_plan(finished_default, "figures", "point_size", "3.5", tmp_path)
    assert jobs == {"fig2": 1, "all": 1}


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
