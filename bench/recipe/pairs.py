"""Summarise results/recipe/runs.jsonl: per model the mean error vs exact, per (tag, N) the
A/B agreement of independently seeded pairs (k-th A run with the k-th B run, in seed order).

    python bench/recipe/pairs.py [--tags base,floor] [--markdown]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))


def main(argv=None):
    import pandas as pd

    from dsm.analysis.generalization import agreement, pair_tables

    p = argparse.ArgumentParser()
    p.add_argument("--tags", default=None)
    p.add_argument("--T", type=float, default=None, help="use the renormalization at this T (run.py --norm-t)")
    p.add_argument("--form", default="data_covariance")
    a = p.parse_args(argv)
    recs = [json.loads(x) for x in (ROOT / "results/recipe/runs.jsonl").read_text().splitlines() if x.strip()]
    if a.tags:
        recs = [r for r in recs if r["tag"] in a.tags.split(",")]
    print("| tag | N | split | seed | train CPU s | load | err own (iso) | err own (dv) | err test (dv) | test corr | final TSM | budget: time / space / norm (dB) | renorm T=0.03 data_cov own / test |")
    print("|---|---:|---|---:|---:|---|---:|---:|---:|---:|---:|---|---|")
    for r in recs:
        b = r.get("bias", {})
        bud = (f"{b['time_total_db']:+.2f} / {b['space_total_db']:+.2f} / {b['norm_err_db']:+.3f}" if b else "")
        rn = [x for x in r.get("renorm", []) if x["T"] == 0.03 and x["form"] == "data_covariance"]
        rn = f"{rn[0]['err_own_db']:+.2f} / {rn[0]['err_test_db']:+.2f}" if rn else ""
        print(f"| {r['tag']} | {r['N']} | {r['split']} | {r['seed']} | {r['train_cpu_s']:.0f} | "
              f"{r['load_start'][0]:.1f} | {r['err_own_db']:+.2f} | {r['err_own_dv_db']:+.2f} | "
              f"{r['err_test_dv_db']:+.2f} | {r['corr_test_exact']:.3f} | {r['final_tsm']:.4f} | {bud} | {rn} |")
    print()
    print(f"A/B pairs; normalization: {'train t_max, isotropic' if a.T is None else f'T = {a.T}, {a.form}'}")
    print("| tag | N | A seed | B seed | r | RMS A−B | mean A−B | test RMS A−B |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    groups = {}
    for r in recs:
        groups.setdefault((r["tag"], r["N"]), {"A": [], "B": []})[r["split"]].append(r)
    for (tag, n), g in groups.items():
        for ra, rb in zip(sorted(g["A"], key=lambda r: r["seed"]), sorted(g["B"], key=lambda r: r["seed"])):
            ta, tb = pd.read_parquet(ROOT / ra["table"]), pd.read_parquet(ROOT / rb["table"])
            if a.T is not None:
                ok = True
                for rec, tab in ((ra, ta), (rb, tb)):
                    rn = [x for x in rec.get("renorm", []) if x["T"] == a.T and x["form"] == a.form]
                    if not rn:
                        ok = False
                        break
                    d = int(tab["d"].iloc[0])
                    tab["logp_db_per_dim"] -= 10 / np.log(10) * (rn[0]["c_nats"] - tab["norm_const_nats"]) / d
                if not ok:
                    continue
            pr = pair_tables(ta, tb)
            ag = agreement(pr["logp_a"], pr["logp_b"])
            te = pair_tables(ta, tb, sets=("test",))
            tg = agreement(te["logp_a"], te["logp_b"])
            r_ = f"{ag['pearson_r']:.4f}" if ag["pearson_r"] is not None else "–"
            print(f"| {tag} | {n} | {ra['seed']} | {rb['seed']} | {r_} | {ag['rms_db']:.2f} | "
                  f"{ag['mean_db']:+.2f} | {tg['rms_db']:.2f} |")


if __name__ == "__main__":
    main()
