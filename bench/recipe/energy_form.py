"""Train a full model of the default scale with a given recipe and measure what the
recipe must deliver against the exact `field` density.

    python bench/recipe/energy_form.py --tag learned-tmax100 --set model.offset=learned \
        --set train.t_max=100 [--score-model models/recipe/score-tmax100/model.pt]

One JSON record per run, appended to results/recipe/energy_form.jsonl and printed:

* train CPU seconds (this process, 1 thread) and the last logged losses;
* kappa(t) and the time-score error per unit ln t (dsm.analysis.timescore) on 256 test
  images, t = 0.01 ... t_max (half decades);
* the normalization constant read at T = 0.01, 0.1, 1, 10, 100 (<= t_max) from 1000
  held-out images of the field (a seed stream of their own: never trained on, never
  scored), isotropic and data-variance entropies, and for each the mean error of the
  one-shot log p against the exact log p over the 1000 test images (dB/dim, ± SE);
* denoising PSNR of the energy model (y - t grad U), the score model if given, and the
  optimal denoiser at input PSNR 45, 30, 15, 0 dB (1000 test images, one draw each);
* the largest |d_eff(eq. 11) - d_eff(eq. 12)| / d of the average curve (128 test images,
  2 draws) on t = 1e-4 ... t_max.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from dsm import units  # noqa: E402
from dsm.analysis.denoising import denoising_mse  # noqa: E402
from dsm.analysis.dimensionality import per_draw  # noqa: E402
from dsm.analysis.timescore import kappa_curve  # noqa: E402
from dsm.config import load_scale  # noqa: E402
from dsm.data import open_store  # noqa: E402
from dsm.data.exact import ExactModel, exact_density  # noqa: E402
from dsm.modelfile import load_model  # noqa: E402
from dsm.normalization import normalization_constant  # noqa: E402
from dsm.train import FULL, train_from_params  # noqa: E402

DATA = ROOT / "data/default/images"
HOLDOUT_PART = 7          # a field seed stream no store part uses


def energies(model, x: np.ndarray, t: float = 0.0, bs: int = 500) -> np.ndarray:
    out = []
    for i in range(0, len(x), bs):
        xb = torch.from_numpy(x[i:i + bs])
        with torch.inference_mode():
            out.append(model.energy(xb, torch.full((len(xb),), t)).double().numpy())
    return np.concatenate(out)


def main(argv=None):
    p = argparse.ArgumentParser()
    p.add_argument("--tag", required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--set", action="append", default=[])
    p.add_argument("--kind", default=None)
    p.add_argument("--score-model", default=None)
    p.add_argument("--eval-only", action="store_true")
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    cfg = load_scale(ROOT / "params.yaml", "default", overrides=["train.progress=false", *a.set])
    out = ROOT / "models/recipe" / a.tag
    t0 = time.process_time()
    if not a.eval_only:
        train_from_params(cfg, DATA, None, None, FULL, out, seed=a.seed, kind=a.kind)
    train_cpu = time.process_time() - t0
    rec = {"tag": a.tag, "set": a.set, "seed": a.seed, "train_cpu_s": round(train_cpu, 1)}
    last = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    rec.update({k: last.get(k) for k in ("loss", "dsm", "tsm")})
    if (a.kind or cfg["model"]["kind"]) == "score":
        print(json.dumps(rec))
        return
    model, payload = load_model(out / "model.pt")
    t_max = float(payload["config"]["train"]["t_max"])
    test = open_store(DATA / "test")
    ex = exact_density(test.meta)
    x = test.images(np.arange(1000))
    d = test.d
    hold = ex.sample(1000, seed=0, part=HOLDOUT_PART)
    db = 10 / (d * math.log(10))

    # kappa and the time-score error
    grid = [t for t in 10.0 ** np.arange(-2, 3.01, 0.5) if t <= t_max * 1.0001]
    kc = kappa_curve(model, ex, x[:256], grid, seed=a.seed)
    rec["kappa"] = {f"{t:g}": round(k, 3) for t, k in zip(kc.t, kc.kappa)}
    rec["time_err_db_per_ln_t"] = {f"{t:g}": round(-db * d * e, 4) for t, e in
                                   zip(kc.t, kc.time_err_nats_per_dim)}

    # the constant at several T, and the bias of log p at t = 0
    u0 = energies(model, x)
    exact_logp = -db * ex.energy(torch.from_numpy(x).double(), 0.0).numpy()
    rec["norm"] = []
    for T in [T for T in (0.01, 0.1, 1.0, 10.0, 100.0) if T <= t_max * 1.0001]:
        for form in ("isotropic", "data_variance", "data_covariance"):
            c = normalization_constant(model, hold, T, seed=a.seed, entropy=form)
            err = -db * (u0 + c["c_nats"]) - exact_logp
            rec["norm"].append({"T": T, "form": form, "c_db": round(db * c["c_nats"], 4),
                                "bias_db": round(float(err.mean()), 4),
                                "bias_se": round(float(err.std(ddof=1) / math.sqrt(len(err))), 4)})

    # denoising
    z = np.random.default_rng(a.seed).standard_normal(x.shape).astype(np.float32)
    models = {"energy": model, "optimal": ExactModel(ex)}
    if a.score_model:
        models["score"] = load_model(a.score_model)[0]
    rec["psnr"] = {}
    for psnr in (45, 30, 15, 0):
        t = 10 ** (-psnr / 10)
        rec["psnr"][psnr] = {k: round(float(units.psnr_db(denoising_mse(m, x, t, z).mean())), 3)
                             for k, m in models.items()}

    # Figure 5's consistency on the average curve
    gaps = {}
    xs = torch.from_numpy(x[:128])
    for t in [t for t in 10.0 ** np.arange(-4, 2.01, 0.5) if t <= t_max * 1.0001]:
        g = []
        for k in range(2):
            zk = torch.from_numpy(np.random.default_rng([a.seed, 99, k]).standard_normal(xs.shape).astype(np.float32))
            g.append(per_draw(model, xs, zk, float(t))["gap"])
        gaps[f"{t:g}"] = round(float(np.mean(g)) / d, 4)
    rec["deff_gap_over_d"] = gaps
    rec["eval_cpu_s"] = round(time.process_time() - t0 - train_cpu, 1)
    Path(ROOT / "results/recipe").mkdir(parents=True, exist_ok=True)
    with open(ROOT / "results/recipe/energy_form.jsonl", "a") as f:
        f.write(json.dumps(rec) + "\n")
    print(json.dumps(rec))


if __name__ == "__main__":
    main()
