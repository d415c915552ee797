"""`dsm sync dvc` adopts into dvc.lock only what the pipeline's commands wrote.

A small pipeline working copy (git, DVC, Snakemake; a Snakefile and a dvc.yaml of the same
two stages: `dsm gumbel` on a per-image table, and a `cp` of its details, like
``publish_fig1``): run by Snakemake, then

* a final output edited by hand (Snakemake sees nothing to do: no input is newer) is
  refused, the file named, dvc.lock untouched; after `dvc checkout --force` (or a rerun)
  the sync goes through;
* the edit even with the file's old modification time restored is refused (the check is
  of content, not of times);
* a deleted intermediate: one line naming it, not DVC's bare "failed (exit 1):".
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from test_pipeline_util import dvc, run, snakemake, tool

# DVC as the second tool: the second tier (`make test-all`).
pytestmark = pytest.mark.tier2

SNAKEFILE = """\
rule all:
    input: "copy.json"

rule gumbel:
    input: "t.parquet"
    output: directory("g"), "g-details.json"
    shell: "dsm gumbel {input} --out {output[0]} --details {output[1]} --set gumbel.bootstrap=20"

rule copy:
    input: "g-details.json"
    output: "copy.json"
    shell: "cp {input} {output}"
"""

DVC_YAML = """\
stages:
  gumbel:
    cmd: dsm gumbel t.parquet --out g --details g-details.json --set gumbel.bootstrap=20
    deps: [t.parquet]
    outs: [g, g-details.json]
  copy:
    cmd: cp g-details.json copy.json
    deps: [g-details.json]
    outs: [copy.json]
"""


@pytest.fixture
def project(tmp_path):
    """The working copy after `snakemake all` (nothing adopted yet)."""
    root = tmp_path / "p"
    root.mkdir()
    x = np.random.default_rng(0).gumbel(-10.0, 0.5, 200)
    pd.DataFrame({"logp_db_per_dim": x, "d": 64}).to_parquet(root / "t.parquet")
    (root / "Snakefile").write_text(SNAKEFILE)
    (root / "dvc.yaml").write_text(DVC_YAML)
    (root / ".gitignore").write_text("/.dsm/\n/.snakemake/\n")
    subprocess.run(["git", "init", "-q"], cwd=root, check=True)
    dvc(["init", "-q"], root)
    subprocess.run(["git", "add", "-A"], cwd=root, check=True)
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "init"],
                   cwd=root, check=True)
    snakemake(["--cores", "1", "all"], root)
    return root


def sync(root) -> subprocess.CompletedProcess:
    return run([tool("dsm"), "sync", "dvc"], root, check=False)


def error_line(res) -> str:
    lines = [line for line in res.stderr.splitlines() if "error:" in line]
    assert res.returncode == 2 and len(lines) == 1, res.stderr
    assert lines[0].startswith("dsm sync: error: ") and "Traceback" not in res.stderr, res.stderr
    return lines[0]


def _edit(path: Path, keep_time: bool) -> None:
    st = path.stat()
    loc = json.loads(path.read_text())
    key = sorted(loc)[0]
    loc[key] = 99.0
    path.write_text(json.dumps(loc, indent=2, sort_keys=True) + "\n")
    if keep_time:
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


@pytest.mark.parametrize("keep_time", [False, True])
def test_a_hand_edited_final_output_is_not_adopted(project, keep_time):
    loc = project / "g/loc_db_per_dim.json"
    _edit(loc, keep_time)
    assert "Nothing to be done" in snakemake(["--dry-run", "all"], project).stdout  # Snakemake is fooled
    edited = loc.read_bytes()
    line = error_line(sync(project))
    assert "g/loc_db_per_dim.json was changed after the command wrote it" in line and "not adopted" in line
    assert not (project / "dvc.lock").exists() and loc.read_bytes() == edited
    # the remedy it names: a rerun of the stage, then the sync adopts
    snakemake(["--cores", "1", "--forcerun", "gumbel", "--", "all"], project)
    res = sync(project)
    assert res.returncode == 0, res.stderr
    lock = (project / "dvc.lock").read_text()
    assert "g-details.json" in lock and "copy.json" in lock
    assert json.loads(dvc(["status", "--json"], project).stdout or "{}") == {}
    assert json.loads(loc.read_text())[sorted(json.loads(loc.read_text()))[0]] != 99.0


def test_an_edit_after_adoption_is_refused_until_restored(project):
    assert sync(project).returncode == 0
    lock = (project / "dvc.lock").read_text()
    details = project / "g-details.json"
    report = json.loads(details.read_text())
    report["gumbel_r"]["loc"] = 1.0                      # the intermediate: copy.json is now older
    details.write_text(json.dumps(report))
    line = error_line(sync(project))
    assert "Snakemake would still run" in line or "g-details.json" in line, line
    assert (project / "dvc.lock").read_text() == lock
    (project / "copy.json").write_text("{}\n")           # a final output, no newer input
    line = error_line(sync(project))
    assert (project / "dvc.lock").read_text() == lock
    dvc(["checkout", "--force"], project)                 # restores both
    res = sync(project)
    assert res.returncode == 0, res.stderr


def test_a_deleted_intermediate_is_named(project):
    assert sync(project).returncode == 0
    (project / "g-details.json").unlink()
    line = error_line(sync(project))
    assert "g-details.json: missing, an output of stage gumbel" in line
    assert "stage copy depends on it" in line


def test_a_tools_failure_is_one_line_with_its_message():
    from dsm.pipeline.sync import failure_summary

    out = "Verifying data sources\n\nERROR: failed to commit copy - dependency 'x' does not exist\n"
    assert failure_summary(out) == "ERROR: failed to commit copy - dependency 'x' does not exist"
    assert failure_summary("") == "(no message)"
    assert failure_summary("a\nlast line\n") == "last line"
