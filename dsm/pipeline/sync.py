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
        raise DsmError(f"{Path(cmd[0]).name} failed (exit {res.returncode}): "
                       f"{failure_summary(res.stdout + res.stderr)}")
    return res


def failure_summary(output: str, most: int = 600) -> str:
    """One line from a tool's output that says why it failed: its ERROR lines (DVC,
    Snakemake), else its last line; ``(no message)`` when it printed nothing."""
    lines = [" ".join(line.split()) for line in output.splitlines() if line.strip()]
    errors = [line for line in lines if line.lower().startswith(("error", "exception"))
              or "Error" in line.split(":", 1)[0]]
    text = " | ".join(errors or lines[-1:]) or "(no message)"
    return text if len(text) <= most else text[: most - 3] + "..."


def dvc_stages(root=".") -> dict[str, list[str]]:
    """{stage address (e.g. ``train@10-A``): its output paths} of dvc.yaml, in order."""
    return {name: outs for name, (outs, _, _) in _dvc_stage_table(root).items()}


def _dvc_stage_table(root=".") -> dict[str, tuple[list[str], list[str], str]]:
    """{stage address: (output paths, dependency paths, command)} of dvc.yaml."""
    from dvc.repo import Repo

    with Repo(str(root)) as repo:
        return {s.name: ([str(o.def_path) for o in s.outs], [str(d.def_path) for d in s.deps],
                         s.cmd if isinstance(s.cmd, str) else " && ".join(s.cmd or []))
                for s in repo.index.stages}


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
        jobs = [line.strip() for line in pending if line.strip().startswith("rule ")]
        raise DsmError(f"Snakemake would still run {len(jobs) or 'some'} job(s) for these outputs "
                       f"({', '.join(sorted(set(j[5:].rstrip(':') for j in jobs))[:8]) or pending[0]}); "
                       f"run it first (`snakemake --cores N all`)")
    check_dependencies(root, done)
    check_written(root, done)
    _run([_tool("dvc"), "commit", "--force", *done], root)
    _mark_snakemake(root, outs, list(done), extra)
    if missing:
        print(f"dsm sync dvc: not adopted (outputs missing): {', '.join(missing)}", file=sys.stderr)
    print(f"dsm sync dvc: {len(done)} stages recorded in dvc.lock; Snakemake's record "
          f"re-marked", file=sys.stderr)
    return list(done)


def _changed_outputs(root, stages: dict[str, list[str]]) -> list[tuple[str, str]]:
    """(stage, output) of each output whose content differs from what dvc.lock records
    (``dvc status``: changed, new, not yet in the lock)."""
    status = dvc_status(root, list(stages))
    found = []
    for name, entries in status.items():
        outs = stages.get(name) or stages.get(str(name).rsplit(":", 1)[-1])
        for entry in entries if isinstance(entries, list) else [entries]:
            if isinstance(entry, dict) and "changed outs" in entry:
                found += [(name, o) for o in entry["changed outs"]]
            elif isinstance(entry, str) or outs is None:
                # a status without a list of outputs ("always changed", a stage without a
                # lock entry): every output of the stage is checked
                found += [(name, o) for o in (outs or [o for v in stages.values() for o in v])]
    return sorted(set(found), key=lambda so: (so[1], so[0]))


def check_dependencies(root, stages: dict[str, list[str]]) -> None:
    """Refuse to adopt a stage one of whose dependencies is missing (an intermediate output
    deleted after the run): DVC cannot record it, and its outputs can no longer be checked
    against what made them."""
    table = _dvc_stage_table(root)
    for stage in stages:
        for dep in table.get(stage, ([], [], ""))[1]:
            if not os.path.lexists(Path(root) / dep):
                makers = [s for s, (outs, _, _) in table.items() if dep in outs]
                made_by = f", an output of stage {makers[0]}" if makers else ""
                raise DsmError(f"{dep}: missing{made_by}; stage {stage} depends on it, so it cannot "
                               f"be adopted: rerun the pipeline (`snakemake --cores N all`) or "
                               f"restore it (`dvc checkout {dep}`)")


def check_written(root, stages: dict[str, list[str]]) -> None:
    """Refuse to adopt an output that no ``dsm`` command wrote as it is now.

    Snakemake judges by modification times: a final output edited by hand has no newer
    input, so Snakemake sees nothing to do, and ``dvc commit`` would record the edit as
    the pipeline's result. Every output whose content differs from dvc.lock must therefore
    hold exactly what a ``dsm`` command last wrote there (the content record of
    :func:`dsm.outputs.record_written`), or, for a stage that is not a ``dsm`` command
    (``publish_fig1``'s copy), be a byte copy of one of its dependencies that passes."""
    from dsm import outputs

    table = _dvc_stage_table(root)
    changed = _changed_outputs(root, stages)
    changed_paths = {o for _, o in changed}
    bad = []
    for stage, out in changed:
        why = outputs.verify_written(root, out)
        if why is None:
            continue
        _, deps, cmd = table.get(stage, ([], [], ""))
        if not cmd.startswith("dsm ") and _copy_of_vouched(root, out, deps, changed_paths, table):
            continue
        bad.append((stage, out, why))
    if bad:
        stage, out, why = bad[0]
        rule = str(stage).rsplit(":", 1)[-1].split("@")[0]
        more = f" (and {len(bad) - 1} more: {', '.join(o for _, o, _ in bad[1:4])}" \
               f"{' ...' if len(bad) > 4 else ''})" if len(bad) > 1 else ""
        raise DsmError(f"{out}: not adopted: {why} (edited by hand, or written by an older "
                       f"version){more}; nothing was recorded in dvc.lock: rerun its stage "
                       f"(`snakemake --forcerun {rule} ...`) or restore it (`dvc checkout --force {out}`)")


def _copy_of_vouched(root, out: str, deps: list[str], changed: set[str], table: dict,
                     depth: int = 0) -> bool:
    """Whether ``out`` is a byte copy of a dependency that dvc.lock holds, that a ``dsm``
    command wrote, or that is itself such a copy (a chain of copies: ``publish_fig1``
    copies ``fig1_figure``'s copy of Figure 1)."""
    from dsm import outputs

    now = outputs.content_digest(Path(root) / out)
    if now is None or depth > 8:
        return False
    for dep in deps:
        if outputs.content_digest(Path(root) / dep) != now:
            continue
        if dep not in changed or outputs.verify_written(root, dep) is None:
            return True
        producer = next((v for v in table.values() if dep in v[0]), None)
        if producer is not None and not producer[2].startswith("dsm ") and \
                _copy_of_vouched(root, dep, producer[1], changed, table, depth + 1):
            return True
    return False


def _mark_snakemake(root, outs: list[str], stages: list[str], extra=(), cores: int = 1) -> None:
    """Touch ``outs`` in DAG order and record them in Snakemake's metadata; then check that
    both tools agree nothing is to be done for them (DVC re-hashes the touched files)."""
    _run([_tool("snakemake"), "--cores", str(cores), "--touch", "--forceall", *outs, *extra], root)
    pending = snakemake_pending(root, outs, extra)
    if pending:
        raise DsmError(f"after touching, Snakemake still plans jobs: {failure_summary(chr(10).join(pending))}")
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
