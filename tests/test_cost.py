"""`dsm cost`: wall and CPU time per stage from Snakemake's benchmark files.

The fixtures are written by Snakemake's own writer (snakemake.benchmark), so they are in
its exact TSV format (NA for a job too short to sample); the last test benchmarks a real
Snakemake job that burns a known amount of CPU.
"""

from __future__ import annotations

import math
import os
import textwrap
import time

import pytest
from snakemake.benchmark import BenchmarkRecord, write_benchmark_records

from dsm.cli import main
from dsm.errors import DsmError
from dsm.pipeline.cost import by_stage, cost_table, read_benchmark, read_jobs, this_run
from test_pipeline_util import run, tool


def record(wall, cpu=None, rss=None) -> BenchmarkRecord:
    """A record as Snakemake's timer leaves it: sampled (cpu and rss given) or not (NA)."""
    r = BenchmarkRecord(running_time=wall)
    if cpu is not None:
        r.cpu_time, r.max_rss, r.max_vms, r.max_uss, r.max_pss = cpu, rss, 2 * rss, rss, rss
        r.io_in, r.io_out, r.cpu_usage = 0.5, 0.25, cpu
        r.data_collected = True
    return r


JOBS = {   # path under benchmarks/<scale>/ -> (wall s, CPU s, max RSS MB)
    "train/seed0/N10-A.tsv": (100.0, 190.0, 300.0),
    "train/seed0/N10-B.tsv": (120.0, 230.0, 310.0),
    "fig1.tsv": (1354.0, 1350.0, 200.0),
    "compare.tsv": (3.0, 2.5, 150.0),
    "publish_fig2.tsv": (0.2, None, None),          # too short: NA
}


@pytest.fixture
def bench(tmp_path):
    for rel, (wall, cpu, rss) in JOBS.items():
        path = tmp_path / "benchmarks/default" / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        write_benchmark_records([record(wall, cpu, rss)], str(path), False)
    return tmp_path


def test_reads_snakemakes_tsv(bench):
    text = (bench / "benchmarks/default/publish_fig2.tsv").read_text()
    assert text.splitlines()[0].split("\t")[:2] == ["s", "h:m:s"] and "\tNA\t" in text
    job = read_benchmark(bench / "benchmarks/default/train/seed0/N10-A.tsv", "train", "seed0/N10-A")
    assert (job.wall_s, job.cpu_s, job.max_rss_mb) == (100.0, 190.0, 300.0)
    short = read_benchmark(bench / "benchmarks/default/publish_fig2.tsv", "publish_fig2")
    assert short.wall_s == 0.2 and math.isnan(short.cpu_s) and math.isnan(short.max_rss_mb)


def test_sums_per_stage_most_cpu_first(bench):
    jobs = read_jobs(bench, "default")
    assert {(j.stage, j.wildcards) for j in jobs} == {
        ("train", "seed0/N10-A"), ("train", "seed0/N10-B"), ("fig1", ""), ("compare", ""), ("publish_fig2", "")}
    stages = by_stage(jobs)
    assert [c.stage for c in stages] == ["fig1", "train", "compare", "publish_fig2"]
    train = stages[1]
    assert (train.jobs, train.wall_s, train.cpu_s, train.max_rss_mb) == (2, 220.0, 420.0, 310.0)
    assert stages[-1].unsampled == 1 and stages[-1].cpu_s == 0.0
    text = cost_table(jobs, "default", top=2)
    (total,) = [line.split() for line in text.splitlines() if line.startswith("total")]
    assert total[:4] == ["total", "5", "1577.2", "1772.5"]
    assert [line.split()[:5] for line in text.splitlines() if line.startswith("publish_fig2")] == [
        ["publish_fig2", "1", "0.2", "0.0", "-"]]
    assert "slowest jobs: fig1 1354 s, train seed0/N10-B 120 s" in text
    assert "(1 too short to sample)" in text


def test_repeated_rows_average_to_the_jobs_cost(tmp_path):
    path = tmp_path / "r.tsv"
    write_benchmark_records([record(10.0, 8.0, 100.0), record(12.0, 10.0, 120.0)], str(path), False)
    job = read_benchmark(path, "x")
    assert (job.wall_s, job.cpu_s, job.max_rss_mb) == (11.0, 9.0, 110.0)


def test_this_run_counts_the_jobs_written_since_it_started(bench):
    old = time.time() - 3600
    for rel in ("fig1.tsv", "compare.tsv"):
        os.utime(bench / "benchmarks/default" / rel, (old, old))
    jobs = read_jobs(bench, "default")
    start = time.time() - 300
    line = this_run(jobs, since=start, now=start + 250, cores=2)
    # the two training jobs and the copy ran: 420 CPU s in 250 s on 2 cores
    assert line == "this run: 250 s wall, 3 jobs, 420 CPU s; cores busy 84% of 2 x wall"


def test_bad_or_missing_files_are_one_line_errors(tmp_path, capsys):
    with pytest.raises(DsmError, match="no benchmark files"):
        read_jobs(tmp_path, "default")
    bad = tmp_path / "benchmarks/default/x.tsv"
    bad.parent.mkdir(parents=True)
    bad.write_text("s\th:m:s\n")
    with pytest.raises(DsmError, match="x.tsv: no benchmark rows"):
        read_jobs(tmp_path, "default")
    bad.write_text("s\th:m:s\tmax_rss\tcpu_time\nfast\t0:00:01\t1\t1\n")
    rc = main(["cost", "--root", str(tmp_path), "--scale", "default"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.startswith("dsm cost: error: ") and "x.tsv: column 's': not a number" in err


def test_cost_of_a_real_snakemake_job(tmp_path):
    """A rule that burns 2 CPU seconds: Snakemake's benchmark file, read by `dsm cost`, gives
    that CPU time (Snakemake samples it every 0.5 s at first, so up to one interval of it is
    missed) and at least that wall time."""
    (tmp_path / "Snakefile").write_text(textwrap.dedent('''
        rule burn:
            output: "out.txt"
            benchmark: "benchmarks/unit/burn.tsv"
            shell: "python -c 'import time; t = time.process_time(); exec(\\"while time.process_time() - t < 2.0: pass\\")' && touch {output}"
        '''))
    (tmp_path / "params.yaml").write_text("run:\n  name: unit\n")
    run([tool("snakemake"), "--cores", "1", "out.txt"], tmp_path)
    out = run([tool("dsm"), "cost", "--since", str(time.time() - 600), "--cores", "1"], tmp_path).stdout
    (job,) = read_jobs(tmp_path, "unit")
    assert job.stage == "burn" and 1.45 <= job.cpu_s <= 2.5 and job.wall_s >= 2.0, job
    assert "Cost of the unit scale: 1 jobs" in out and "this run:" in out and "1 jobs" in out
