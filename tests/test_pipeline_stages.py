"""The stage table (dsm/pipeline/stages.py): dvc.yaml is generated from it, code
dependencies are computed from the imports, and both tools rerun exactly the stages a
changed library file can change.

The staleness tests work on a "finished" smoke-scale run faked with empty outputs:
Snakemake's record by `snakemake --touch`, DVC's by `dvc commit`. Appending a comment to
a module then makes `snakemake -n` plan the stages whose import closure holds it (and
their dependents) and `dvc status` report those stages; a module outside every closure
plans nothing. The last test shows by construction that the check can fail: with the
module left out of one stage's computed list, neither tool reports that stage. They are
of the second tier (`make test-all`: marker ``tier2``); the closures themselves are
checked here in the first.
"""

from __future__ import annotations

import json
import os
import textwrap
from pathlib import Path

import pytest
import yaml

from dsm.pipeline.codedeps import code_files, import_closure
from dsm.pipeline.render import dvc_yaml_text
from dsm.pipeline.stages import STAGES, TARGETS, Each, check_table
from test_pipeline_util import REPO, copy_repo, dvc, fake_complete, load_params, planned_jobs, snakemake

SCALE = "smoke"


# --- the table and the generated dvc.yaml -----------------------------------------------

def test_committed_dvc_yaml_is_generated_from_the_table():
    committed = (REPO / "dvc.yaml").read_text()
    assert committed == dvc_yaml_text(REPO), (
        "dvc.yaml differs from the stage table: run `dsm sync dvc-yaml` and commit it")


def test_table_is_consistent():
    check_table(REPO)
    assert set(TARGETS) <= {p for s in STAGES.values() for p in s.outputs.values()}


def test_every_stage_reads_keys_that_exist_in_every_shipped_scale():
    """DVC tracks the keys as written in params.yaml: each key a stage reads must be
    written out (not left to a schema default) in every scale."""
    params = load_params(REPO)
    for scale, cfg in params["scales"].items():
        for s in STAGES.values():
            for key in s.reads:
                node = cfg
                for part in key.split("."):
                    assert isinstance(node, dict) and part in node, f"scales.{scale}: {key} ({s.name})"
                    node = node[part]


def test_shipped_params_write_out_every_default():
    """The schema's defaults never silently decide a shipped scale's results: every key
    with a default is written in params.yaml (so DVC, which reads the file, sees it)."""
    from dsm.config import fill_defaults

    params = load_params(REPO)
    for scale, cfg in params["scales"].items():
        filled = fill_defaults(cfg)
        assert filled == cfg, f"scales.{scale}: keys only in the schema: {_diff(filled, cfg)}"


def _diff(a, b, prefix=""):
    out = []
    for k in a:
        if k not in b:
            out.append(prefix + k)
        elif isinstance(a[k], dict) and isinstance(b[k], dict):
            out += _diff(a[k], b[k], f"{prefix}{k}.")
    return out


def test_each_inputs_dvc_directory_holds_exactly_those_files():
    for s in STAGES.values():
        for p in s.inputs.values():
            if isinstance(p, Each):
                # the files may sit in per-wildcard folders (seed{seed}/...) under dvc_dir
                assert p.pattern.startswith(p.dvc_dir + "/")
                others = [q for t in STAGES.values() for q in t.outputs.values()
                          if (q + "/").startswith(p.dvc_dir + "/") and q != p.pattern]
                assert not others, f"{p.dvc_dir} also holds {others}"


# --- computed code dependencies ----------------------------------------------------------

def test_closure_follows_every_kind_of_import(tmp_path):
    pkg = tmp_path / "dsm"
    (pkg / "sub").mkdir(parents=True)
    files = {
        "__init__.py": "",
        "entry.py": "import dsm.a\nfrom dsm import b\n\ndef f():\n    from dsm.sub import c\n",
        "a.py": "from dsm.sub.d import X\n",
        "b.py": "import os\n",
        "sub/__init__.py": "",
        "sub/c.py": "from . import e\n",
        "sub/d.py": "X = 1\n",
        "sub/e.py": "",
        "unused.py": "import dsm.entry\n",
    }
    for name, text in files.items():
        (pkg / name).write_text(text)
    closure = import_closure("dsm.entry", tmp_path)
    assert closure == ["dsm", "dsm.a", "dsm.b", "dsm.entry", "dsm.sub", "dsm.sub.c",
                       "dsm.sub.d", "dsm.sub.e"]
    assert "dsm/unused.py" not in code_files("dsm.entry", tmp_path)
    assert "dsm/sub/__init__.py" in code_files("dsm.entry", tmp_path)
    assert "dsm.sub.d" not in import_closure("dsm.entry", tmp_path, skip={"dsm.a"})


def test_known_dependencies_of_the_shipped_stages():
    code = {name: set(s.code(REPO)) for name, s in STAGES.items()}
    # the examples that had drifted from the hand-kept lists
    assert {"dsm/objectives.py", "dsm/fit.py", "dsm/nets/gsm_mlp.py", "dsm/data/gsm.py",
            "dsm/units.py"} <= code["fig1"]
    for name in ("evaluate", "normalize"):
        assert {"dsm/units.py", "dsm/data/field.py", "dsm/modelfile.py"} <= code[name]
        # evaluation does not depend on training
        assert not {"dsm/train.py", "dsm/fit.py", "dsm/objectives.py"} & code[name]
    assert "dsm/analysis/generalization.py" in code["fig2"]
    assert "dsm/cli.py" not in set().union(*code.values())


# --- staleness: touching a module reruns exactly its stages, in both tools ----------------

def _downstream(stages: set[str]) -> set[str]:
    """The stages and every stage that consumes their outputs (transitively)."""
    out = set(stages)
    changed = True
    while changed:
        changed = False
        produced = {p for s in out for p in STAGES[s].outputs.values()}
        for s in STAGES.values():
            ins = {p.pattern if isinstance(p, Each) else p for p in s.inputs.values()}
            if s.name not in out and ins & produced:
                out.add(s.name)
                changed = True
    return out


def _expected(module_file: str, root=REPO) -> set[str]:
    return {s.name for s in STAGES.values() if module_file in s.code(root)}


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A git repo at the smoke scale with every output faked and recorded by both tools."""
    repo = copy_repo(tmp_path_factory.mktemp("stale") / "r", scale=SCALE, git=True)
    fake_complete(repo)
    dvc(["commit", "--force", "--quiet"], repo)
    assert planned_jobs(snakemake(["all", "--dry-run"], repo)) == {}
    assert json.loads(dvc(["status", "--json"], repo).stdout or "{}") == {}
    return repo


class touched:
    """Append a comment to a file; on exit restore its bytes and modification time."""

    def __init__(self, path: Path):
        self.path = path

    def __enter__(self):
        self.text, st = self.path.read_text(), self.path.stat()
        self.times = (st.st_atime_ns, st.st_mtime_ns)
        self.path.write_text(self.text + "\n# touched by a test\n")
        return self

    def __exit__(self, *exc):
        self.path.write_text(self.text)
        os.utime(self.path, ns=self.times)


def _stale(repo) -> tuple[set[str], set[str]]:
    """(rules Snakemake plans, stages `dvc status` reports), without the rule `all`."""
    smk = set(planned_jobs(snakemake(["all", "--dry-run"], repo))) - {"all"}
    status = json.loads(dvc(["status", "--json"], repo).stdout or "{}")
    return smk, {name.split("@")[0] for name in status}


@pytest.mark.tier2
@pytest.mark.parametrize("module", ["dsm/units.py", "dsm/objectives.py",
                                    "dsm/analysis/generalization.py", "dsm/data/splits.py"])
def test_touching_a_module_reruns_its_stages_and_their_dependents(finished, module):
    direct = _expected(module)
    assert direct, f"{module} is in no stage's closure"
    with touched(finished / module):
        smk, dvc_stale = _stale(finished)
    assert smk == _downstream(direct), module
    assert dvc_stale == direct, module


def test_units_reaches_evaluation_figures_and_fig1():
    assert {"normalize", "evaluate", "fig1"} <= _expected("dsm/units.py")
    assert {"fig1"} <= _expected("dsm/objectives.py") and "evaluate" not in _expected("dsm/objectives.py")


@pytest.mark.tier2
@pytest.mark.parametrize("module", ["dsm/cli.py", "dsm/figures/fig2.py"])
def test_touching_a_module_outside_a_closure_reruns_nothing_else(finished, module):
    direct = _expected(module)
    with touched(finished / module):
        smk, dvc_stale = _stale(finished)
    assert smk == _downstream(direct) and dvc_stale == direct
    assert "evaluate" not in smk and "train" not in smk


@pytest.mark.tier2
def test_the_check_fails_when_a_dependency_is_left_out(finished, tmp_path):
    """By construction: the same repo with dsm/objectives.py left out of the fig1 stage's
    computed list (a truncated closure, for Snakemake and for DVC). Touching
    dsm/objectives.py then reruns training but not Figure 1, in both tools, so the
    assertions of the tests above fail against the truncated list."""
    import shutil

    repo = tmp_path / "truncated"
    shutil.copytree(finished, repo, symlinks=True)
    patch = textwrap.dedent('''
        # test: leave dsm/objectives.py out of the fig1 stage's code (a truncated closure)
        _inputs = inputs
        def inputs(name):
            out = _inputs(name)
            if name == "fig1":
                out["code"] = [f for f in out["code"] if f != "dsm/objectives.py"]
            return out
        ''')
    common = repo / "workflow/rules/common.smk"
    common.write_text(common.read_text() + patch)
    doc = yaml.safe_load((repo / "dvc.yaml").read_text())
    doc["stages"]["fig1"]["deps"].remove("dsm/objectives.py")
    (repo / "dvc.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
    dvc(["commit", "--force", "--quiet", "fig1"], repo)
    snakemake(["all", "--cores", "1", "--touch"], repo)    # record fig1's new input list
    assert planned_jobs(snakemake(["all", "--dry-run"], repo)) == {}

    direct = _expected("dsm/objectives.py")
    assert "fig1" in direct
    with touched(repo / "dsm/objectives.py"):
        smk, dvc_stale = _stale(repo)
    assert "train" in smk and "train" in dvc_stale
    assert "fig1" not in smk and "fig1" not in dvc_stale
    assert smk != _downstream(direct) and dvc_stale != direct   # what the real test asserts
