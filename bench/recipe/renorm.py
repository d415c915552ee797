"""Re-normalize a trained model at other noise levels T (docs/theory.md#normalization-constant, at T instead of train.t_max),
isotropic and data-variance entropy, and report its mean log p error against the exact log p.

    python bench/recipe/renorm.py results/recipe/TAG/N100000-A-s1.parquet MODEL.pt --T 0.1 0.3 1
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

DATA = ROOT / "data/default/images"


def renorm(table, model_path, Ts, n_norm=1000, seed=0) -> list[dict]:
    import pandas as pd
    import torch

    from budget import load
    from dsm.normalization import assumed_entropy as gaussian_entropy, covariance_eigenvalues, mean_pixel_variance
    from dsm.data.store import open_store
    from dsm.evaluate import normalization_constant

    torch.set_num_threads(1)
    model, _ = load(model_path)
    st = open_store(DATA / "test")
    x = st.images(np.arange(n_norm))
    vbar = mean_pixel_variance(x)
    ev = covariance_eigenvalues(x)
    df = pd.read_parquet(table)
    u = df["energy_nats"] - df["norm_const_nats"]                  # unnormalized model energy
    d = int(df["d"].iloc[0])
    out = []
    for T in Ts:
        r = normalization_constant(model, x, T, seed, batch_size=250)
        for form in ("isotropic", "data_variance", "data_covariance"):
            c = r["c_nats"] - gaussian_entropy(d, T, "isotropic") + gaussian_entropy(d, T, form, vbar, ev)
            err = -10 / math.log(10) * (u + c) / d - df["exact_logp_db_per_dim"]
            own = df["image_set"] == df["model_split"]
            out.append({"T": T, "form": form, "c_nats": c, "c_sem_db": 10 / math.log(10) * r["c_sem_nats"] / d,
                        "err_own_db": float(err[own].mean()),
                        "err_test_db": float(err[df["image_set"] == "test"].mean())})
    return out


def main(argv=None):
    p = argparse.ArgumentParser()
    p.add_argument("table")
    p.add_argument("model")
    p.add_argument("--T", type=float, nargs="+", default=[0.1, 0.3, 1.0])
    a = p.parse_args(argv)
    for r in renorm(a.table, a.model, a.T):
        print(f"T {r['T']:6g} {r['form']:13s} err own {r['err_own_db']:+.3f}  test {r['err_test_db']:+.3f} dB/dim")


if __name__ == "__main__":
    main()
