"""Train, normalize and evaluate one default-scale model with the CLI; record CPU time and errors.

    python bench/recipe/run.py --tag base --N 100000 --split A --seed 1 [--set train.steps=4000 ...] [--bias]

Writes models/recipe/TAG/N{N}-{split}-s{seed}/ (model), results/recipe/TAG/ (norm JSON,
Parquet, bias CSV) and appends one JSON record to results/recipe/runs.jsonl:
train CPU seconds (user+sys of the child, 1 thread) and wall, load average, the
normalization constant and its SE, and the mean error of log p against the exact log p
(dB/dim; model - exact) on the model's own training images, the other set and the test
images, with the isotropic normalization and with the data-variance one (v̄ estimated
from the n_norm held-out images: c_dv = c_iso + (d/2) ln((v̄ + T)/T)).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

DATA, SPLITS = "data/default/images", "data/default/splits.parquet"
LN10 = math.log(10)


def sh(cmd: list[str]) -> tuple[float, float]:
    """Run a command (nice 5, 1 thread); return (CPU s of the child, wall s)."""
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    r0, t0 = resource.getrusage(resource.RUSAGE_CHILDREN), time.perf_counter()
    subprocess.run(["nice", "-n", "5", *cmd], check=True, cwd=ROOT, env=env)
    r1, t1 = resource.getrusage(resource.RUSAGE_CHILDREN), time.perf_counter()
    return (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime), t1 - t0


def v_bar_of_test(n: int) -> float:
    from dsm.normalization import mean_pixel_variance
    from dsm.data.store import open_store

    st = open_store(ROOT / DATA / "test")
    return mean_pixel_variance(st.images(np.arange(min(n, len(st)))))


def main(argv=None):
    p = argparse.ArgumentParser()
    p.add_argument("--tag", required=True)
    p.add_argument("--N", type=int, default=100000)
    p.add_argument("--split", default="A")
    p.add_argument("--seed", type=int, required=True)
    p.add_argument("--set", action="append", default=[])
    p.add_argument("--bias", action="store_true", help="also run the bias budget on 200 test images")
    p.add_argument("--norm-t", type=float, nargs="*", default=[],
                   help="also normalize at these T (isotropic, data_variance, data_covariance)")
    a = p.parse_args(argv)
    sets = [f"train.seed={a.seed}", "train.threads=1", "train.progress=false", *a.set]
    setargs = [x for s in sets for x in ("--set", s)]
    S = ["dsm", "--params", "params.yaml", "--scale", "default"]
    name = f"N{a.N}-{a.split}-s{a.seed}"
    mdir, rdir = ROOT / "models/recipe" / a.tag / name, ROOT / "results/recipe" / a.tag
    rdir.mkdir(parents=True, exist_ok=True)
    load0 = os.getloadavg()
    cpu, wall = sh([*S[:1], "train", *S[1:], "--data", DATA, "--splits", SPLITS, "--N", str(a.N),
                    "--split", a.split, "--out", str(mdir), *setargs])
    load1 = os.getloadavg()
    norm, table = rdir / f"norm-{name}.json", rdir / f"{name}.parquet"
    ecpu, _ = sh([*S[:1], "normalize", *S[1:], "--model", str(mdir / "model.pt"), "--data", DATA,
                  "--out", str(norm), *setargs])
    ecpu2, _ = sh([*S[:1], "evaluate", *S[1:], "--model", str(mdir / "model.pt"), "--norm", str(norm),
                   "--data", DATA, "--splits", SPLITS, "--N", str(a.N), "--split", a.split,
                   "--out", str(table), *setargs])
    import pandas as pd

    info = json.loads(norm.read_text())
    d, T = info["d"], info["t_max"]
    vbar = v_bar_of_test(info["n_images"])
    dc = 0.5 * d * math.log((vbar + T) / T)               # c_dv - c_iso (nats)
    df = pd.read_parquet(table)
    err = df["logp_db_per_dim"] - df["exact_logp_db_per_dim"]
    own = df["image_set"] == a.split
    test = df["image_set"] == "test"
    metrics = json.loads((mdir / "metrics.jsonl").read_text().splitlines()[-1])
    rec = {"tag": a.tag, "N": a.N, "split": a.split, "seed": a.seed, "set": a.set,
           "train_cpu_s": round(cpu, 1), "train_wall_s": round(wall, 1),
           "eval_cpu_s": round(ecpu + ecpu2, 1), "load_start": load0, "load_end": load1,
           "c_nats": info["c_nats"], "c_sem_db": 10 / LN10 * info["c_sem_nats"] / d,
           "v_bar": vbar, "dv_shift_db": -10 / LN10 * dc / d,
           "err_own_db": float(err[own].mean()), "err_test_db": float(err[test].mean()),
           "err_own_rms_db": float(np.sqrt((err[own] ** 2).mean())),
           "err_test_std_db": float(err[test].std()),
           "corr_test_exact": float(np.corrcoef(df.loc[test, "logp_db_per_dim"],
                                                df.loc[test, "exact_logp_db_per_dim"])[0, 1]),
           "final_loss": metrics.get("loss"), "final_tsm": metrics.get("tsm"), "final_dsm": metrics.get("dsm"),
           "table": str(table.relative_to(ROOT)), "model": str((mdir / "model.pt").relative_to(ROOT))}
    rec["err_own_dv_db"] = rec["err_own_db"] + rec["dv_shift_db"]
    rec["err_test_dv_db"] = rec["err_test_db"] + rec["dv_shift_db"]
    if a.norm_t:
        from renorm import renorm

        rec["renorm"] = renorm(table, mdir / "model.pt", a.norm_t)
    if a.bias:
        from budget import run_budget

        t0 = time.process_time()
        rec["bias"] = run_budget(mdir / "model.pt", norm, rdir / f"bias-{name}.csv")
        rec["bias_cpu_s"] = round(time.process_time() - t0, 1)
    with open(ROOT / "results/recipe/runs.jsonl", "a") as f:
        f.write(json.dumps(rec) + "\n")
    keys = ("tag", "N", "split", "seed", "train_cpu_s", "c_sem_db", "err_own_db", "err_test_db",
            "err_own_dv_db", "err_test_std_db", "corr_test_exact", "final_tsm", "final_dsm")
    print(json.dumps({k: (round(rec[k], 4) if isinstance(rec[k], float) else rec[k]) for k in keys}))
    if "bias" in rec:
        print(json.dumps(rec["bias"]))
    for r in rec.get("renorm", []):
        print(f"renorm T {r['T']:g} {r['form']}: own {r['err_own_db']:+.3f} test {r['err_test_db']:+.3f}")


if __name__ == "__main__":
    main()
