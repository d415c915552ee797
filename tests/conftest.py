"""Fixtures shared by test modules.

``smoke_all``: one `snakemake all` at the smoke scale in a git copy of the working tree,
shared by every end-to-end module (the pipeline, the distribution of log p, the
estimators, `dsm summary`), so each tier trains and evaluates the smoke models once. Tests
that use it must not change it, except the Snakemake <-> DVC round trip of test_pipeline_e2e
(second tier), which adopts it into DVC (dvc.lock, a local remote, a git commit) without
changing any output, and a test that edits a file to ask for a dry run must restore its
content and its modification time.

Parallel runs (``make test`` and ``make test-all`` pass ``-n 2 --dist loadgroup`` to
pytest-xdist): each test module is one group, run by one worker in file order, so a
module's fixtures are built once; every module that uses ``smoke_all`` joins one group,
``smoke``, so the shared build is made once and its users run one after another, exactly
as in a serial run.
"""

from __future__ import annotations

import pytest

SMOKE_GROUP = "smoke"


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items):
    """Group the tests for ``--dist loadgroup`` (before xdist reads the groups); the
    ``smoke`` group, the longest, first (with ``--no-loadscope-reorder``)."""
    if not config.pluginmanager.hasplugin("xdist"):
        return

    def module(item):
        mod = getattr(item, "module", None)
        return mod.__name__ if mod is not None else item.nodeid.split("::")[0]

    smoke_modules = {module(item) for item in items if "smoke_all" in getattr(item, "fixturenames", ())}
    for item in items:
        if item.get_closest_marker("xdist_group") is None:
            group = SMOKE_GROUP if module(item) in smoke_modules else module(item)
            item.add_marker(pytest.mark.xdist_group(group))
    items.sort(key=lambda item: module(item) not in smoke_modules)   # stable: file order kept


@pytest.fixture(scope="session")
def smoke_all(tmp_path_factory):
    from test_pipeline_util import copy_repo, snakemake

    repo = copy_repo(tmp_path_factory.mktemp("smk") / "repo", scale="smoke", git=True)
    snakemake(["all", "--cores", "2"], repo, timeout=1200)
    return repo
