"""Benchmark: prepare 2·10^5 16×16 `field` images and their A/B splits on 2 cores.

Prints wall time and peak RSS per stage, at two image counts (default 2·10^4 and
2·10^5), each in a fresh process, to show that memory does not grow with the count
(pixels are streamed; what does grow is the split's O(max N) hash table).
Target: ≤ 10 s for 2·10^5 images (prepare + split). Not a timed test.

    .venv/bin/python bench/prepare_field.py [--counts 20000 200000] [--cores 2]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

CHILD = r"""
import json, os, resource, sys, time
t0 = time.perf_counter()
from dsm.data.prepare import prepare
from dsm.data.splits import make_splits
import numpy, torch, pyarrow.parquet  # noqa: F401  (count imports in the baseline)
rss = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
def cpu():
    u = resource.getrusage(resource.RUSAGE_SELF)
    return u.ru_utime + u.ru_stime
out, n, Ns = sys.argv[1], int(sys.argv[2]), json.loads(sys.argv[3])
r = {"import_s": time.perf_counter() - t0, "rss_after_import_mb": rss()}
t, c = time.perf_counter(), cpu()
prepare({"source": "field", "image_size": 16, "channels": 1, "n_train": n, "n_test": 1000},
        out + "/store", progress=False)
r["prepare_s"], r["rss_after_prepare_mb"] = time.perf_counter() - t, rss()
r["prepare_cpu_s"] = cpu() - c
t, c = time.perf_counter(), cpu()
make_splits(out + "/store", {"N": Ns}, out + "/splits.parquet", progress=False)
r["split_s"], r["rss_after_split_mb"] = time.perf_counter() - t, rss()
r["split_cpu_s"] = cpu() - c
r["total_s"] = time.perf_counter() - t0
print(json.dumps(r))
"""


def run(n: int, cores: int) -> dict:
    Ns = [N for N in (1, 10, 100, 1000, 10000, 100000) if 2 * N <= n]
    env = dict(os.environ, OMP_NUM_THREADS=str(cores), MKL_NUM_THREADS=str(cores),
               OPENBLAS_NUM_THREADS=str(cores))
    env["PYTHONPATH"] = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    cpus = sorted(os.sched_getaffinity(0))[:cores]
    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        p = subprocess.run([sys.executable, "-c", CHILD, tmp, str(n), json.dumps(Ns)], env=env,
                           capture_output=True, text=True, preexec_fn=lambda: os.sched_setaffinity(0, cpus))
        wall = time.perf_counter() - t
    if p.returncode:
        sys.exit(p.stderr)
    r = json.loads(p.stdout.strip().splitlines()[-1])
    r.update(n=n, N=Ns, process_wall_s=wall, cores=len(cpus))
    return r


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--counts", type=int, nargs="+", default=[20_000, 200_000])
    ap.add_argument("--cores", type=int, default=2)
    args = ap.parse_args()
    print(f"load average before: {os.getloadavg()[0]:.1f} (other processes share the cores; "
          f"CPU seconds do not depend on it, wall seconds do)")
    print(f"{'n':>8} {'import s':>9} {'prepare s':>10} {'(cpu s)':>8} {'split s':>8} {'(cpu s)':>8} "
          f"{'process s':>10} {'RSS import MB':>14} {'RSS prepare MB':>15} {'RSS split MB':>13}")
    for n in args.counts:
        r = run(n, args.cores)
        print(f"{n:>8} {r['import_s']:>9.2f} {r['prepare_s']:>10.2f} {r['prepare_cpu_s']:>8.2f} "
              f"{r['split_s']:>8.2f} {r['split_cpu_s']:>8.2f} "
              f"{r['process_wall_s']:>10.2f} {r['rss_after_import_mb']:>14.0f} "
              f"{r['rss_after_prepare_mb']:>15.0f} {r['rss_after_split_mb']:>13.0f}")
    print(f"(cores {r['cores']}; RSS = peak resident set size of the process so far; "
          f"pixels alone are {args.counts[-1] * 1024 / 2**20:.0f} MB at n = {args.counts[-1]})")


if __name__ == "__main__":
    main()
