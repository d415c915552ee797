"""What a run costs: wall and CPU time per stage, from Snakemake's benchmark files.

Every rule writes ``benchmarks/<scale>/<stage>[/seed<seed>/N<N>-<split>].tsv`` (the stage
table's :meth:`~dsm.pipeline.stages.Stage.benchmark_file`), Snakemake's TSV: a header

    s  h:m:s  max_rss  max_vms  max_uss  max_pss  io_in  io_out  mean_load  cpu_time

(tab-separated; ``s``: wall seconds of the job, ``cpu_time``: user + system CPU seconds of
its processes, ``max_rss``: MB; ``NA`` where a job ended before it was sampled) and one row
per run of the job (one unless the rule repeats it; the mean is the job's cost). ``dsm cost``
sums them per stage and lists the slowest jobs: the cost of the outputs now on disk, whichever
runs made them. Snakemake samples a job's CPU time (every 0.5 s, later every 30 s), so the
last interval of each job is missing: a lower bound, within 30 s of the truth.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path

from dsm.errors import DsmError

BENCHMARKS = "benchmarks"


@dataclass(frozen=True)
class Job:
    """One benchmarked job: its stage, its model wildcards (``seed0/N10-A``, or ``""``),
    wall and CPU seconds, peak resident memory (MB; NaN where not sampled)."""

    stage: str
    wildcards: str
    wall_s: float
    cpu_s: float
    max_rss_mb: float
    finished: float = math.nan      # when its file was written (seconds since the epoch)


def _number(text: str, path: Path, column: str) -> float:
    if text.strip() in ("NA", "-", ""):
        return math.nan
    try:
        return float(text)
    except ValueError:
        raise DsmError(f"{path}: column {column!r}: not a number: {text!r}") from None


def read_benchmark(path, stage: str, wildcards: str = "") -> Job:
    """One Snakemake benchmark TSV as a :class:`Job` (the mean over its rows)."""
    path = Path(path)
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    if not rows:
        raise DsmError(f"{path}: no benchmark rows (not a Snakemake benchmark file?)")
    missing = [c for c in ("s", "cpu_time", "max_rss") if c not in rows[0]]
    if missing:
        raise DsmError(f"{path}: columns {missing} missing (not a Snakemake benchmark file?)")

    def mean(column):
        values = [_number(r[column], path, column) for r in rows]
        return sum(values) / len(values)

    return Job(stage, wildcards, mean("s"), mean("cpu_time"), mean("max_rss"), path.stat().st_mtime)


def read_jobs(root=".", scale: str = "default") -> list[Job]:
    """Every job benchmarked under ``root/benchmarks/<scale>/``: the stage is the first path
    part, the rest (without ``.tsv``) its wildcards."""
    base = Path(root) / BENCHMARKS / scale
    files = sorted(base.rglob("*.tsv")) if base.is_dir() else []
    if not files:
        raise DsmError(f"{base}: no benchmark files (run the pipeline of scale {scale!r} first)")
    jobs = []
    for f in files:
        parts = f.relative_to(base).with_suffix("").parts
        jobs.append(read_benchmark(f, parts[0], "/".join(parts[1:])))
    return jobs


@dataclass(frozen=True)
class StageCost:
    stage: str
    jobs: int
    wall_s: float           # summed over the jobs
    cpu_s: float            # summed (NaN jobs count 0; `unsampled` says how many)
    max_rss_mb: float       # the largest
    unsampled: int          # jobs too short for Snakemake to sample their CPU time


def by_stage(jobs: list[Job]) -> list[StageCost]:
    """Per stage, most CPU time first (wall time breaking ties)."""
    groups: dict[str, list[Job]] = {}
    for j in jobs:
        groups.setdefault(j.stage, []).append(j)
    out = []
    for stage, js in groups.items():
        cpu = [j.cpu_s for j in js if not math.isnan(j.cpu_s)]
        rss = [j.max_rss_mb for j in js if not math.isnan(j.max_rss_mb)]
        out.append(StageCost(stage, len(js), sum(j.wall_s for j in js if not math.isnan(j.wall_s)),
                             sum(cpu), max(rss) if rss else math.nan, len(js) - len(cpu)))
    return sorted(out, key=lambda c: (-c.cpu_s, -c.wall_s, c.stage))


def _fmt(x: float, width: int, decimals: int) -> str:
    return ("-" if math.isnan(x) else f"{x:.{decimals}f}").rjust(width)


def cost_table(jobs: list[Job], scale: str, top: int = 5, since: float | None = None,
               now: float | None = None, cores: int | None = None) -> str:
    """The text ``dsm cost`` prints: per stage jobs, wall and CPU seconds (sums) and peak
    memory; the totals; the ``top`` slowest jobs; and, for a run that started at ``since``
    and ended at ``now`` (epoch seconds), its wall time, the jobs it ran (benchmark files
    written since) and how busy its ``cores`` were: their CPU time / (cores x wall)."""
    stages = by_stage(jobs)
    width = max(len("stage"), *(len(c.stage) for c in stages))
    lines = [f"Cost of the {scale} scale: {len(jobs)} jobs (benchmarks/{scale}/, Snakemake's "
             "benchmark files)",
             f"{'stage':<{width}}  {'jobs':>4}  {'wall s':>9}  {'CPU s':>9}  {'max RSS MB':>10}"]
    for c in stages:
        note = f"  ({c.unsampled} too short to sample)" if c.unsampled else ""
        lines.append(f"{c.stage:<{width}}  {c.jobs:>4}  {_fmt(c.wall_s, 9, 1)}  {_fmt(c.cpu_s, 9, 1)}  "
                     f"{_fmt(c.max_rss_mb, 10, 0)}{note}")
    total_wall, total_cpu = sum(c.wall_s for c in stages), sum(c.cpu_s for c in stages)
    lines.append(f"{'total':<{width}}  {len(jobs):>4}  {total_wall:9.1f}  {total_cpu:9.1f}  "
                 f"({total_cpu / 60:.1f} CPU minutes; wall summed over jobs, as on one core)")
    slow = sorted((j for j in jobs if not math.isnan(j.wall_s)), key=lambda j: -j.wall_s)[:top]
    if slow:
        lines.append("slowest jobs: " + ", ".join(
            f"{j.stage}{' ' + j.wildcards if j.wildcards else ''} {j.wall_s:.0f} s" for j in slow))
    if since is not None:
        lines.append(this_run(jobs, since, now, cores))
    return "\n".join(lines)


def this_run(jobs: list[Job], since: float, now: float | None = None, cores: int | None = None) -> str:
    """One line on the run that started at ``since``: its wall time, its jobs and their CPU
    time, and the share of ``cores`` x wall they kept busy."""
    import time

    now = time.time() if now is None else now
    wall = max(now - since, 0.0)
    ran = [j for j in jobs if j.finished >= since]
    cpu = sum(j.cpu_s for j in ran if not math.isnan(j.cpu_s))
    line = f"this run: {wall:.0f} s wall, {len(ran)} jobs, {cpu:.0f} CPU s"
    if cores and wall > 0 and ran:
        line += f"; cores busy {cpu / (cores * wall):.0%} of {cores} x wall"
    return line
