#!/usr/bin/env python
"""Fault-injection sweep: ``kill -9`` every pipeline stage at random moments, rerun it.

For each stage of the stage table (``dsm/pipeline/stages.py``, so new stages are swept
automatically), at the smoke scale, in a scratch directory:

1. a **reference**: every job of the DAG run once, uninterrupted, in order; the bytes
   of every declared output are recorded, and each job's wall time;
2. for each stage, one of its jobs (drawn at random), ``--kills`` times: start the job,
   send SIGKILL at a moment drawn uniformly in [0, its reference time], then check
   * **intact**: every output of the job is absent or identical to the reference, and
     identical (so present) when it existed before the run ("existing" mode: the
     previous good outputs survive a failed run); the job starts from absent outputs
     ("fresh" mode, its run directory removed too for training stages) or from the
     reference's outputs, alternately;
   * **rerun**: the same command, uninterrupted, exits 0 and its outputs are
     byte-identical to the reference (model files: bytes, else ``torch.equal`` of every
     tensor, reported as such; JSON with timing fields: compared without them);
   * **clean**: no temporary file of ours is left anywhere in the directory;
   and after each stage, every output of every job is still the reference's.

Jobs run in forked children of this process (which has imported the library once), so a
kill costs no interpreter start-up; ``cp`` stages run as shell commands.

    python scripts/fault_sweep.py                      # 3 kills per stage, seed 0
    python scripts/fault_sweep.py --kills 10 --seed 1  # the README's run
    python scripts/fault_sweep.py --stages train,fig2 --keep DIR

Exit status 0 when every check passed; a summary table and (``--json``) the counts.
tests/test_fault_sweep.py runs a small version in CI.
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import os
import random
import re
import shlex
import shutil
import signal
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
os.environ.setdefault("MPLBACKEND", "Agg")
os.environ.setdefault("OMP_NUM_THREADS", "1")

# Fields of JSON outputs that hold timings (not reproducible by nature): compared without
# (and every key ending in "_seconds": the peers' fit and evaluation times).
TIMING_KEYS = ("train_seconds", "seconds", "images_per_s")
# Text tables with a column of CPU seconds ("fit / eval", Table 2's costs): compared with it masked.
TIMED_TEXT = ("table2.md", "table2.tex")
_CPU_CELL = re.compile(r"(?:[0-9][0-9.e+-]*|n/a) / (?:[0-9][0-9.e+-]*|n/a)")
# Columns of tables (CSV, Parquet) that hold timings: the estimators' costs.
TIMING_COLUMN_PARTS = ("seconds", "speedup", "images_per_second")
# Outputs that draw timings (the estimators' figure plots seconds per image): compared as
# valid PDFs only; the table they are drawn from is compared without its timing columns.
TIMED_FIGURES = ("estimators.pdf",)       # figures/estimators.pdf, figures/<scale>/estimators.pdf


@dataclass
class Job:
    stage: str
    wildcards: dict
    command: str                    # the shell command
    outputs: list                   # declared output paths (relative)
    directories: list               # which of them are directories
    run_dirs: list                  # removed too in "fresh" mode (training run directories)
    ref_seconds: float = 0.0

    @property
    def label(self) -> str:
        w = "".join(f" {k}={v}" for k, v in self.wildcards.items() if k != "scale")
        return f"{self.stage}{w}"


@dataclass
class Tally:
    kills: int = 0                  # kills sent
    landed: int = 0                 # ... while the job was still running
    identical: int = 0              # reruns whose outputs equal the reference
    tensor_equal: int = 0           # ... model files with equal tensors but other bytes
    masked: int = 0                 # ... JSON equal once its timing fields are left out
    left_temps: int = 0             # kills that left a temporary (which the rerun removed)
    failures: list = field(default_factory=list)


# --- the jobs of the DAG, from the stage table -------------------------------------------

def jobs_of(scale: str = "smoke") -> list[Job]:
    from dsm.config import load_scale
    from dsm.pipeline.render import wildcard_values
    from dsm.pipeline.stages import MODEL_WILDCARDS, STAGES, Each, _PLACEHOLDER

    cfg = load_scale(REPO / "params.yaml", scale)
    jobs = []
    for s in STAGES.values():
        keys = [k for k in MODEL_WILDCARDS if k in s.wildcards]
        for combo in itertools.product(*(wildcard_values(cfg, k) for k in keys)):
            w = {"scale": scale, **dict(zip(keys, (str(c) for c in combo)))}

            def fill(text, w=w):
                def sub(m):
                    key = m.group(1)
                    kind, _, name = key.partition(".")
                    if kind in ("input", "output"):
                        p = (s.inputs if kind == "input" else s.outputs)[name]
                        return fill(p.dvc_dir if isinstance(p, Each) else p)
                    return w.get(key, scale)
                return _PLACEHOLDER.sub(sub, text)

            outs = [fill(p) for p in s.outputs.values()]
            dirs = [fill(p) for n, p in s.outputs.items() if n in s.directories]
            run_dirs = sorted({str(Path(o).parent) for o in outs}) if s.exec_ else []
            jobs.append(Job(s.name, w, fill(s.full_command()), outs, dirs, run_dirs))
    return jobs


# --- running a job: a forked child (dsm) or a shell command --------------------------------

def start(job: Job, cwd: Path, log: Path) -> int:
    """Start ``job`` in ``cwd``; its stderr and stdout go to ``log``. Returns the PID."""
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:                                           # the child
        code = 1
        try:
            os.chdir(cwd)
            fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
            os.dup2(fd, 1)
            os.dup2(fd, 2)
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            argv = shlex.split(job.command)
            if argv[0] == "dsm" and not set(argv) & {"&&", "||", ";", "|"}:
                from dsm.cli import main

                try:
                    code = main(argv[1:])
                except SystemExit as e:
                    code = e.code if isinstance(e.code, int) else 1
            else:
                # a shell command (exec: the kill reaches it, as it does Snakemake's jobs)
                os.execv("/bin/sh", ["/bin/sh", "-c", job.command])
        except BaseException:                              # noqa: BLE001
            import traceback

            traceback.print_exc()
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code if isinstance(code, int) else 1)
    return pid


def run(job: Job, cwd: Path, log: Path, kill_after: float | None = None) -> tuple[int | None, bool]:
    """Run ``job``; with ``kill_after``, SIGKILL it after that many seconds.
    Returns (exit status or None if killed, whether the kill landed)."""
    pid = start(job, cwd, log)
    if kill_after is None:
        _, status = os.waitpid(pid, 0)
        return os.waitstatus_to_exitcode(status), False
    deadline = time.monotonic() + kill_after
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status), False
        time.sleep(min(0.005, max(0.0, deadline - time.monotonic())))
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    _, status = os.waitpid(pid, 0)
    code = os.waitstatus_to_exitcode(status)
    return (None, True) if code == -signal.SIGKILL else (code, False)


# --- comparing outputs ----------------------------------------------------------------------

def _files(path: Path) -> list[Path]:
    if path.is_dir():
        return sorted(p for p in path.rglob("*") if p.is_file())
    return [path] if path.is_file() else []


def digest(root: Path, rel: str) -> dict | None:
    """{relative file: sha256} of an output (a file or a directory), None if absent."""
    path = root / rel
    if not (path.exists() or path.is_symlink()):
        return None
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in _files(path)}


def _masked_json(path: Path):
    def mask(o):
        if isinstance(o, dict):
            return {k: ("<timing>" if k in TIMING_KEYS or k.endswith("_seconds") else mask(v))
                    for k, v in o.items()}
        if isinstance(o, list):
            return [mask(v) for v in o]
        return o

    return mask(json.loads(path.read_text()))


def _untimed_table(path: Path):
    import pandas as pd

    df = pd.read_parquet(path) if path.suffix == ".parquet" else pd.read_csv(path)
    return df[[c for c in df.columns if not any(part in c for part in TIMING_COLUMN_PARTS)]]


def _same_untimed_table(a: Path, b: Path) -> bool:
    try:
        ta, tb = _untimed_table(a), _untimed_table(b)
    except Exception:            # unreadable: not equal
        return False
    return ta.equals(tb)


def same_output(ref_root: Path, root: Path, rel: str, ref: dict | None) -> tuple[bool, str]:
    """(equal, how) of output ``rel`` under ``root`` and its reference digest ``ref``."""
    now = digest(root, rel)
    if now == ref:
        return True, "bytes"
    if now is None or ref is None or set(now) != set(ref):
        return False, f"{rel}: {'absent' if now is None else 'present'} (reference: " \
                      f"{'absent' if ref is None else 'present'})"
    for f in sorted(set(ref)):
        if now[f] == ref[f]:
            continue
        a, b = ref_root / f, root / f
        if f.endswith(".pt"):
            import torch

            pa = torch.load(a, weights_only=True, map_location="cpu")
            pb = torch.load(b, weights_only=True, map_location="cpu")
            ta, tb = pa.get("model", {}), pb.get("model", {})
            if set(ta) == set(tb) and all(torch.equal(ta[k], tb[k]) for k in ta):
                return True, "tensors"
            return False, f"{f}: model tensors differ"
        if f.endswith(".json"):
            try:
                if _masked_json(a) == _masked_json(b):
                    continue
            except ValueError:
                pass
        if f.endswith((".csv", ".parquet")) and _same_untimed_table(a, b):
            continue
        if f.startswith("figures/") and f.endswith(TIMED_FIGURES) and b.read_bytes()[:5] == b"%PDF-":
            continue
        if Path(f).name in TIMED_TEXT and \
                _CPU_CELL.sub("<timing>", a.read_text()) == _CPU_CELL.sub("<timing>", b.read_text()):
            continue
        return False, f"{f}: bytes differ"
    return True, "bytes (timings masked)"



def temps_in(root: Path) -> list[str]:
    """Temporaries anywhere under ``root``: dsm.io's naming, and ``*.part`` (the shell
    stages' copies)."""
    from dsm.io import _TEMP

    return sorted(str(p.relative_to(root)) for p in root.rglob("*")
                  if _TEMP.match(p.name) or p.name.endswith(".part"))


def remove(root: Path, rel: str) -> None:
    p = root / rel
    if p.is_dir() and not p.is_symlink():
        shutil.rmtree(p)
    elif p.exists() or p.is_symlink():
        p.unlink()


# --- the sweep ------------------------------------------------------------------------------

def setup_dir(path: Path, scale: str) -> None:
    path.mkdir(parents=True, exist_ok=True)
    shutil.copy2(REPO / "params.yaml", path / "params.yaml")


def reference(jobs: list[Job], root: Path, say) -> dict:
    """Run every job once, uninterrupted; {output: digest}."""
    digests = {}
    for job in jobs:
        t0 = time.monotonic()
        code, _ = run(job, root, root / "reference.log")
        job.ref_seconds = time.monotonic() - t0
        if code != 0:
            raise SystemExit(f"reference run: {job.label} failed ({code}); see {root / 'reference.log'}")
        for o in job.outputs:
            digests[o] = digest(root, o)
        say(f"  reference {job.label:<28} {job.ref_seconds:6.2f} s")
    return digests


def sweep(kills: int = 3, seed: int = 0, stages=None, scale: str = "smoke", keep=None,
          say=print) -> dict:
    """Run the sweep; returns {stage: Tally} plus totals (see the module docstring)."""
    # import what the jobs need once, here, so that forked children start at once
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot  # noqa: F401
    import pandas  # noqa: F401
    import pyarrow.parquet  # noqa: F401
    import torch  # noqa: F401

    import dsm.cli  # noqa: F401
    from dsm.io import code_version

    code_version()      # read once: every job records this version, whatever happens to the checkout

    rng = random.Random(seed)
    base = Path(keep) if keep else Path(tempfile.mkdtemp(prefix="dsm-fault-sweep-"))
    ref_root, root = base / "reference", base / "trials"
    for d in (ref_root, root):
        if d.exists():
            shutil.rmtree(d)
    setup_dir(ref_root, scale)
    jobs = jobs_of(scale)
    t_start = time.monotonic()
    say(f"fault sweep: {len(jobs)} jobs of {len({j.stage for j in jobs})} stages at scale {scale}, "
        f"{kills} kill(s) per stage, seed {seed}, in {base}")
    ref = reference(jobs, ref_root, say)
    t_ref = time.monotonic() - t_start
    shutil.copytree(ref_root, root, symlinks=True)
    names = [s for s in dict.fromkeys(j.stage for j in jobs) if not stages or s in stages]
    tallies = {}
    for name in names:
        tally = tallies[name] = Tally()
        candidates = [j for j in jobs if j.stage == name]
        for k in range(kills):
            job = rng.choice(candidates)
            mode = "fresh" if k % 2 == 0 else "existing"
            if mode == "fresh":
                for rel in job.outputs + job.run_dirs:
                    remove(root, rel)
            before = {o: digest(root, o) for o in job.outputs}
            at = rng.uniform(0.0, job.ref_seconds)
            log = root / "logs-sweep" / f"{name}-{k}.log"
            log.parent.mkdir(exist_ok=True)
            code, landed = run(job, root, log, kill_after=at)
            tally.kills += 1
            tally.landed += landed
            where = f"{job.label} kill {k} ({mode}, at {at:.2f} s{'' if landed else ', after it ended'})"
            if code not in (None, 0):
                tally.failures.append(f"{where}: exited {code} before the kill; see {log}")
            for o in job.outputs:                          # intact after the kill
                ok, how = same_output(ref_root, root, o, ref[o])
                if not ok and not (mode == "fresh" and digest(root, o) is None):
                    tally.failures.append(f"{where}: after the kill, {how}")
                if before[o] is not None and digest(root, o) is None:
                    tally.failures.append(f"{where}: the previous output {o} is gone after the kill")
            tally.left_temps += bool(temps_in(root))
            code, _ = run(job, root, log)                  # rerun, uninterrupted
            if code != 0:
                tally.failures.append(f"{where}: the rerun exited {code}; see {log}")
                continue
            results = [same_output(ref_root, root, o, ref[o]) for o in job.outputs]
            bad = [how for ok, how in results if not ok]
            if bad:
                tally.failures.append(f"{where}: after the rerun, {'; '.join(bad)}")
            else:
                tally.identical += 1
                tally.tensor_equal += any(how == "tensors" for _, how in results)
                tally.masked += any("masked" in how for _, how in results)
            left = temps_in(root)
            if left:
                tally.failures.append(f"{where}: temporaries left after the rerun: {left}")
                for t in left:
                    remove(root, t)
        for j in jobs:                                     # nothing else was touched
            for o in j.outputs:
                ok, how = same_output(ref_root, root, o, ref[o])
                if not ok:
                    tally.failures.append(f"after the {name} trials: {how}")
        say(f"  {name:<16} kills {tally.kills} (landed {tally.landed}, left temporaries "
            f"{tally.left_temps}), identical reruns "
            f"{tally.identical}{f' ({tally.tensor_equal} by torch.equal)' if tally.tensor_equal else ''}"
            f"{f' ({tally.masked} without timing fields)' if tally.masked else ''}"
            f", failures {len(tally.failures)}")
        for f in tally.failures:
            say(f"      FAIL {f}")
    total = {"stages": len(tallies), "kills": sum(t.kills for t in tallies.values()),
             "landed": sum(t.landed for t in tallies.values()),
             "left_temps": sum(t.left_temps for t in tallies.values()),
             "identical": sum(t.identical for t in tallies.values()),
             "tensor_equal": sum(t.tensor_equal for t in tallies.values()),
             "timings_masked": sum(t.masked for t in tallies.values()),
             "failures": sum(len(t.failures) for t in tallies.values()),
             "reference_seconds": round(t_ref, 1), "seconds": round(time.monotonic() - t_start, 1),
             "seed": seed, "kills_per_stage": kills, "scale": scale}
    say(f"fault sweep: {total['kills']} kills over {total['stages']} stages ({total['landed']} while "
        f"running, {total['left_temps']} left temporaries), {total['identical']} reruns identical to the uninterrupted run, "
        f"{total['failures']} failure(s); {total['seconds']} s (reference {total['reference_seconds']} s)")
    if not keep:
        shutil.rmtree(base, ignore_errors=True)
    return {"total": total, "stages": {n: {"kills": t.kills, "landed": t.landed,
                                           "left_temps": t.left_temps, "identical": t.identical,
                                           "tensor_equal": t.tensor_equal, "timings_masked": t.masked,
                                           "failures": t.failures}
                                       for n, t in tallies.items()}}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--kills", type=int, default=3, help="kills per stage (default 3)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the kill moments and jobs")
    ap.add_argument("--stages", default=None, help="comma-separated stage names (default: all)")
    ap.add_argument("--scale", default="smoke")
    ap.add_argument("--keep", default=None, help="work in this directory and keep it")
    ap.add_argument("--json", default=None, help="write the counts to this JSON file")
    args = ap.parse_args(argv)
    result = sweep(args.kills, args.seed, args.stages.split(",") if args.stages else None,
                   args.scale, args.keep)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0 if result["total"]["failures"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
