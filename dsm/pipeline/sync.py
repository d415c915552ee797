"""Keep Snakemake's and DVC's views of one working copy in agreement (`dsm sync`).

Both tools run the same commands (the stage table, dsm/pipeline/stages.py), but each
keeps its own record of what is up to date: Snakemake its metadata in ``.snakemake/``
plus file times, DVC the hashes in ``dvc.lock``. After one tool ran the pipeline, the
other has to adopt the result (measured facts in docs/pipeline.md). Either command
leaves **both** tools up to date (``snakemake -n`` plans nothing, ``dvc status`` is
clean) and changes no output's content:

* ``dsm sync dvc`` after a Snakemake run: checks that Snakemake has nothing left to do
  for the outputs of DVC's stages, ``dvc commit -f`` records them in dvc.lock (``dvc
  status`` clean, ``dvc repro`` a no-op, ``dvc push`` uploads them). DVC rewrites the
  files from its cache, giving them new modification times, which would make Snakemake
  rerun everything; so it then re-marks Snakemake's record as below.
* ``dsm sync snakemake`` after ``dvc pull`` / ``dvc checkout`` / ``dvc repro``:
  checks that ``dvc status`` is clean, then ``snakemake --touch --forceall`` on the
  outputs touches them in DAG order and writes Snakemake's metadata, so that
  ``snakemake -n`` plans nothing and later parameter changes are detected again.

Stages whose outputs are not all present are left alone (and listed).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from dsm.errors import DsmError

NOTHING_TO_DO = "Nothing to be done"


def _tool(name: str) -> str:
    """The executable of ``name`` beside this Python (the venv), else on PATH."""
    here = Path(sys.executable).parent / name
    if here.is_file() and os.access(here, os.X_OK):
        return str(here)
    found = shutil.which(name)
    if not found:
        raise DsmError(f"{name}: not found on PATH (install the 'pipeline' extra)")
    return found


def _run(cmd: list[str], root, check: bool = True) -> subprocess.CompletedProcess:
    print("+ " + " ".join(cmd if len(cmd) < 12 else cmd[:11] + [f"... ({len(cmd) - 11} more)"]),
          file=sys.stderr)
    res = subprocess.run(cmd, cwd=root, capture_output=True, text=True)
    if check and res.returncode != 0:
        tail = "\n".join((res.stdout + res.stderr).strip().splitlines()[-15:])
        raise DsmError(f"{Path(cmd[0]).name} failed (exit {res.returncode}):\n{tail}")
    return res


def dvc_stages(root=".") -> dict[str, list[str]]:
    """{stage address (e.g. ``train@10-A``): its output paths} of dvc.yaml, in order."""
    from dvc.repo import Repo

    with Repo(str(root)) as repo:
        return {s.name: [str(o.def_path) for o in s.outs] for s in repo.index.stages}


def _complete(root, stages: dict) -> tuple[dict, list[str]]:
    root = Path(root)
    done = {k: v for k, v in stages.items() if v and all((root / o).exists() for o in v)}
    return done, [k for k in stages if k not in done]


def snakemake_pending(root, targets: list[str], extra=()) -> list[str]:
    """Lines of the jobs a Snakemake dry run plans for ``targets`` (empty: up to date)."""
    res = _run([_tool("snakemake"), "--dry-run", *targets, *extra], root)
    out = res.stdout + res.stderr
    if NOTHING_TO_DO in out:
        return []
    return [line for line in out.splitlines() if line.strip()]


def sync_dvc(root=".", extra=()) -> list[str]:
    """Adopt a finished Snakemake run into dvc.lock; returns the committed stages."""
    stages = dvc_stages(root)
    done, missing = _complete(root, stages)
    if not done:
        raise DsmError("no DVC stage has all its outputs; run the pipeline first")
    outs = sorted({o for v in done.values() for o in v})
    pending = snakemake_pending(root, outs, extra)
    if pending:
        raise DsmError("Snakemake would still run jobs for these outputs; run it first "
                       "(`snakemake --cores N all`):\n" + "\n".join(pending[:20]))
    _run([_tool("dvc"), "commit", "--force", "--quiet", *done], root)
    _mark_snakemake(root, outs, list(done), extra)
    if missing:
        print(f"dsm sync dvc: not adopted (outputs missing): {', '.join(missing)}", file=sys.stderr)
    print(f"dsm sync dvc: {len(done)} stages recorded in dvc.lock; Snakemake's record "
          f"re-marked", file=sys.stderr)
    return list(done)


def _mark_snakemake(root, outs: list[str], stages: list[str], extra=(), cores: int = 1) -> None:
    """Touch ``outs`` in DAG order and record them in Snakemake's metadata; then check that
    both tools agree nothing is to be done for them (DVC re-hashes the touched files)."""
    _run([_tool("snakemake"), "--cores", str(cores), "--touch", "--forceall", *outs, *extra], root)
    pending = snakemake_pending(root, outs, extra)
    if pending:
        raise DsmError("after touching, Snakemake still plans jobs:\n" + "\n".join(pending[:20]))
    status = dvc_status(root, stages)
    if status:
        raise DsmError(f"dvc status is not clean after the sync: {', '.join(sorted(status)[:10])}")


def dvc_status(root=".", targets=()) -> dict:
    from dvc.repo import Repo

    with Repo(str(root)) as repo:
        return repo.status(targets=list(targets) or None)


def sync_snakemake(root=".", cores: int = 1, extra=()) -> list[str]:
    """Make Snakemake accept the outputs DVC restored; returns the touched outputs."""
    stages = dvc_stages(root)
    done, missing = _complete(root, stages)
    if not done:
        raise DsmError("no DVC stage has its outputs in the workspace; `dvc pull` first")
    status = dvc_status(root, list(done))
    if status:
        raise DsmError("dvc status is not clean for "
                       f"{', '.join(sorted(status)[:10])}: run `dvc pull` / `dvc repro` first")
    outs = sorted({o for v in done.values() for o in v})
    _mark_snakemake(root, outs, list(done), extra, cores)
    if missing:
        print(f"dsm sync snakemake: left alone (outputs missing): {', '.join(missing)}",
              file=sys.stderr)
    print(f"dsm sync snakemake: {len(outs)} outputs marked up to date for Snakemake", file=sys.stderr)
    return outs
