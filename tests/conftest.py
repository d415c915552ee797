"""Fixtures shared by test modules.

``smoke_all``: one `snakemake all` at the smoke scale in a git copy of the working tree,
shared by every end-to-end module (the pipeline, the distribution of log p, the
estimators, `dsm summary`), so each tier trains and evaluates the smoke models once. Tests
that use it must not change it, except the Snakemake <-> DVC round trip of test_pipeline_e2e
(second tier), which adopts it into DVC (dvc.lock, a local remote, a git commit) without
changing any output, and a test that edits a file to ask for a dry run must restore its
content and its modification time.

Parallel runs (``make test`` and ``make test-all`` pass ``-n 2`` to pytest-xdist): the
scheduler below sends each test module whole to one worker, so a module's fixtures are
built once, and the modules that use ``smoke_all`` (SMOKE_MODULES) together to one worker,
so the shared build is made once and its users run one after another, as in a serial run.
"""

from __future__ import annotations

import pytest

SMOKE_GROUP = "smoke"
# the modules that use smoke_all (checked at collection)
SMOKE_MODULES = frozenset({"test_distribution_e2e.py", "test_estimators.py", "test_pipeline_e2e.py",
                           "test_summary.py"})


def pytest_itemcollected(item):
    """A test that uses ``smoke_all`` must be in one of SMOKE_MODULES (one worker)."""
    if "smoke_all" in getattr(item, "fixturenames", ()) and item.path.name not in SMOKE_MODULES:
        raise pytest.UsageError(f"{item.nodeid} uses smoke_all: add {item.path.name} to "
                                "SMOKE_MODULES in tests/conftest.py")


def pytest_collection_modifyitems(config, items):
    """The smoke group, the longest, first; file order otherwise."""
    items.sort(key=lambda item: item.path.name not in SMOKE_MODULES)


def _group(nodeid: str) -> str:
    module = nodeid.split("::", 1)[0]
    return SMOKE_GROUP if module.rsplit("/", 1)[-1] in SMOKE_MODULES else module


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
    """Under pytest-xdist: one test module per worker at a time; SMOKE_MODULES as one."""
    from xdist.scheduler import LoadScopeScheduling

    class ModuleGroups(LoadScopeScheduling):
        def _split_scope(self, nodeid):
            return _group(nodeid)

    return ModuleGroups(config, log)


@pytest.fixture(scope="session")
def smoke_all(tmp_path_factory):
    from test_pipeline_util import copy_repo, snakemake

    repo = copy_repo(tmp_path_factory.mktemp("smk") / "repo", scale="smoke", git=True)
    snakemake(["all", "--cores", "2"], repo, timeout=1200)
    return repo
