"""Fixtures shared by test modules.

``smoke_all``: one `snakemake all` at the smoke scale in a git copy of the working tree,
shared by every end-to-end module (the pipeline, the distribution of log p, the
estimators, `dsm summary`), so each tier trains and evaluates the smoke models once. Tests
that use it must not change it, except the Snakemake <-> DVC round trip of test_pipeline_e2e
(second tier), which adopts it into DVC (dvc.lock, a local remote, a git commit) without
changing any output, and a test that edits a file to ask for a dry run must restore its
content and its modification time.
"""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def smoke_all(tmp_path_factory):
    from test_pipeline_util import copy_repo, snakemake

    repo = copy_repo(tmp_path_factory.mktemp("smk") / "repo", scale="smoke", git=True)
    snakemake(["all", "--cores", "2"], repo, timeout=1200)
    return repo
