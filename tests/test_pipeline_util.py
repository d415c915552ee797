"""Helpers of the pipeline tests (copies of the working tree, running snakemake/dvc).

The pipeline tests never touch the checkout they run from: each works in a copy of
the working tree (tracked and untracked-but-not-ignored files, as `git ls-files`
lists them, so uncommitted work is tested and outputs are not copied).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def tool(name: str) -> str:
    exe = BIN / name
    if exe.is_file():
        return str(exe)
    found = shutil.which(name)
    if not found:
        pytest.skip(f"{name} not installed (pip install -e '.[pipeline]')")
    return found


def env() -> dict:
    """The environment of pipeline commands: the venv's `dsm` first on PATH."""
    e = dict(os.environ)
    e["PATH"] = f"{BIN}{os.pathsep}{e.get('PATH', '')}"
    e.setdefault("OMP_NUM_THREADS", "1")
    e["DVC_NO_ANALYTICS"] = "1"
    e["PYTHONDONTWRITEBYTECODE"] = "1"  # no __pycache__ in the copies' code dependencies
    return e


def run(cmd, cwd, check=True, timeout=600, extra_env=None) -> subprocess.CompletedProcess:
    res = subprocess.run(cmd, cwd=cwd, env={**env(), **(extra_env or {})}, capture_output=True,
                         text=True, timeout=timeout)
    if check and res.returncode != 0:
        raise AssertionError(f"{' '.join(map(str, cmd))} failed ({res.returncode}):\n"
                             f"{res.stdout[-4000:]}\n{res.stderr[-4000:]}")
    return res


def snakemake(args, cwd, check=True, timeout=600) -> subprocess.CompletedProcess:
    return run([tool("snakemake"), *args], cwd, check=check, timeout=timeout)


def dvc(args, cwd, check=True, timeout=600, extra_env=None) -> subprocess.CompletedProcess:
    return run([tool("dvc"), *args], cwd, check=check, timeout=timeout, extra_env=extra_env)


def working_tree_files() -> list[str]:
    res = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
                         cwd=REPO, capture_output=True, text=True, check=True)
    return [f for f in res.stdout.split("\0") if f and (REPO / f).is_file()]


def copy_repo(dest: Path, scale: str | None = None, git: bool = False) -> Path:
    """Copy the working tree into ``dest``; optionally switch ``run`` and `git init` + commit."""
    dest.mkdir(parents=True, exist_ok=True)
    for f in working_tree_files():
        target = dest / f
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / f, target)
    if scale is not None:
        set_run(dest, scale)
    if git:
        git_commit(dest, "copy of the working tree", init=True)
    return dest


def git_commit(repo: Path, message: str, init: bool = False) -> None:
    cmds = []
    if init:
        cmds += [["git", "init", "-q", "-b", "main"],
                 ["git", "config", "user.email", "test@example.org"],
                 ["git", "config", "user.name", "test"]]
    cmds += [["git", "add", "-A"], ["git", "commit", "-q", "--allow-empty", "-m", message]]
    for c in cmds:
        subprocess.run(c, cwd=repo, check=True, capture_output=True)


def set_run(repo: Path, scale: str) -> None:
    """Point the switch `run: *<scale>` at another scale (a text edit keeps the anchors)."""
    p = repo / "params.yaml"
    text, n = re.subn(r"(?m)^run: \*\S+", f"run: *{anchor_of(p.read_text(), scale)}", p.read_text())
    assert n == 1, "params.yaml: no `run: *<scale>` line"
    p.write_text(text)


def anchor_of(text: str, scale: str) -> str:
    m = re.search(rf"(?m)^  {re.escape(scale)}: &(\S+)", text)
    assert m, f"params.yaml: scales.{scale} has no anchor"
    return m.group(1)


def edit_param(repo: Path, scale: str, section: str, key: str, value: str) -> None:
    """Set ``key: value`` in the first ``section:`` block of ``scales.<scale>`` (text edit)."""
    p = repo / "params.yaml"
    lines = p.read_text().splitlines(keepends=True)
    start = next(i for i, line in enumerate(lines) if re.match(rf"  {re.escape(scale)}:", line))
    end = next((i for i in range(start + 1, len(lines)) if re.match(r"\S|  \S", lines[i])), len(lines))
    sec = next((i for i in range(start + 1, end) if lines[i].startswith(f"    {section}:")), None)
    assert sec is not None, f"scales.{scale}.{section}: not written out in params.yaml"
    for i in range(sec + 1, end):
        m = re.match(rf"(\s+){re.escape(key)}:", lines[i])
        if m:
            comment = lines[i].split("#", 1)[1] if "#" in lines[i] else None
            lines[i] = f"{m.group(1)}{key}: {value}" + (f"  # {comment}" if comment else "\n")
            break
    else:
        raise AssertionError(f"scales.{scale}.{section}.{key} not found")
    p.write_text("".join(lines))


def load_params(repo: Path) -> dict:
    return yaml.safe_load((repo / "params.yaml").read_text())


def planned_jobs(res: subprocess.CompletedProcess) -> dict[str, int]:
    """{rule: count} from the 'Job stats' table of a snakemake dry run ({} if nothing to do)."""
    out = res.stdout + res.stderr
    if "Nothing to be done" in out:
        return {}
    m = re.search(r"Job stats:\njob\s+count\n[-\s]+\n(.*?)\ntotal\s+\d+", out, re.S)
    assert m, f"no job stats in:\n{out[-3000:]}"
    return {rule: int(n) for rule, n in (line.split() for line in m.group(1).strip().splitlines())}


def detailed_summary(repo: Path, targets=("all",), config=()) -> list[dict]:
    args = [*targets, "--detailed-summary"] + (["--config", *config] if config else [])
    res = snakemake(args, repo)
    lines = [line for line in res.stdout.splitlines() if line.strip()]
    i = next(i for i, line in enumerate(lines) if line.startswith("output_file\t"))
    header = lines[i].split("\t")
    return [dict(zip(header, line.split("\t"))) for line in lines[i + 1:]]


def dry_run_jobs(repo: Path, targets=("all",), config=()) -> list[dict]:
    """Every job of the DAG of ``targets`` (forced), from `snakemake -n -p --forceall`:
    dicts with rule, input (list), output (list) and shell (the command)."""
    args = [*targets, "--dry-run", "--printshellcmds", "--forceall"]
    res = snakemake(args + (["--config", *config] if config else []), repo)
    blocks = re.split(r"\n\[\w{3} \w{3} +\d+ [\d:]+ \d{4}\]\n", res.stdout + res.stderr)
    jobs = []
    for block in blocks[1:]:
        m = re.match(r"\s*(?:local)?rule (\S+):", block)
        if not m:
            continue
        job = {"rule": m.group(1), "input": [], "output": [], "shell": None}
        for line in block.splitlines():
            for key in ("input", "output"):
                if line.startswith(f"    {key}: "):
                    job[key] = line.split(": ", 1)[1].split(", ")
            if line.startswith("Shell command: "):
                job["shell"] = line.split(": ", 1)[1]
        jobs.append(job)
    return jobs




def is_directory_output(path: str) -> bool:
    """Whether ``path`` is an output the stage table declares a directory."""
    from dsm.pipeline.stages import STAGES

    for s in STAGES.values():
        for name in s.directories:
            pattern = re.sub(r"\\\{[^}]+\\\}", "[^/]+", re.escape(s.outputs[name]))
            if re.fullmatch(pattern, path):
                return True
    return False


def fake_complete(repo: Path, targets=("all",), config=()) -> list[str]:
    """Create every output of the DAG as an empty file (directories as directories), then
    let `snakemake --touch` record them as up to date: a finished run without running."""
    rows = detailed_summary(repo, targets, config)
    outs = [r["output_file"] for r in rows]
    for out in outs:
        p = repo / out
        if is_directory_output(out):
            p.mkdir(parents=True, exist_ok=True)
            (p / "done").write_text("")
        else:
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_text("")
    snakemake([*targets, "--cores", "1", "--touch", "--forceall"] + (["--config", *config] if config else []), repo)
    return outs


def test_copy_has_no_outputs(tmp_path):
    dest = copy_repo(tmp_path / "r")
    assert (dest / "Snakefile").is_file() and (dest / "dvc.yaml").is_file()
    for d in ("data", "models", "results", "logs", ".snakemake", ".venv"):
        assert not any((dest / d).rglob("*.pt")) if (dest / d).exists() else True
    assert not (dest / ".venv").exists()


def test_set_run_and_edit_param(tmp_path):
    dest = copy_repo(tmp_path / "r", scale="smoke")
    p = load_params(dest)
    assert p["run"]["name"] == "smoke" and p["run"] == p["scales"]["smoke"]
    edit_param(dest, "smoke", "train", "lr", "0.5")
    p = load_params(dest)
    assert p["scales"]["smoke"]["train"]["lr"] == 0.5 and p["run"]["train"]["lr"] == 0.5
    assert p["scales"]["default"]["train"]["lr"] != 0.5
