"""The contrast prior of the `field` source and the histogram of exact log p.

For a contrast grid s_j with u_j = -10 log10 s_j (dB/dim: log p per dim moves by -ln s
nats when the contrast is s) equally spaced by `du` and weights w_j ∝ gumbel_r.pdf(u_j;
loc, beta) truncated to the Gumbel quantiles [qlo, qhi] (loc chosen so that the largest
contrast is `smax`), the log p of an image of contrast s is ≈ const + u (dB/dim) plus a
within-contrast spread of ≈ 10/ln10 · sqrt(1/(2d)) dB/dim, so log p is a smooth
Gumbel-like (right-skewed) bump when du is below that spread.

    python bench/recipe/field_hist.py                 # compare old vs candidates, write the figure
    python bench/recipe/field_hist.py --yaml          # print the chosen scales/weights as YAML
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import numpy as np
from scipy import stats

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from dsm.data.field import FieldDensity  # noqa: E402
from dsm.units import logp_db_per_dim  # noqa: E402

OLD = dict(scales=[0.5, 1.0, 2.0], weights=[0.25, 0.5, 0.25])


def gumbel_prior(beta=1.5, smax=2.0, qlo=0.001, qhi=0.995, du=0.2, digits=4):
    """(scales, weights) lists: u = -10 log10 s on a grid of step du from -10 log10 smax
    (the Gumbel quantile qlo) up to the quantile qhi of gumbel_r(loc, beta); weights ∝
    pdf (sum 1), rounded to `digits` significant digits."""
    lo = -10 * math.log10(smax)
    loc = lo - stats.gumbel_r.ppf(qlo, 0.0, beta)
    hi = stats.gumbel_r.ppf(qhi, loc, beta)
    u = lo + du * np.arange(int(math.floor((hi - lo) / du)) + 1)
    w = stats.gumbel_r.pdf(u, loc, beta)
    w = w / w.sum()
    s = 10 ** (-u / 10)
    r = lambda a: [float(f"{v:.{digits}g}") for v in a]  # noqa: E731
    return r(s), r(w)


def describe(dens: FieldDensity, n: int = 20000, seed: int = 0, part: int = 1):
    x = dens.sample(n, seed=seed, part=part)
    logp = logp_db_per_dim(dens.energy(x.astype(np.float64), 0.0), dens.d)
    s2 = dens.weights @ dens.scales ** 2
    return {
        "K": dens.K, "n": n, "mean_db": float(logp.mean()), "std_db": float(logp.std()),
        "skew": float(stats.skew(logp)), "range_1_99": float(np.ptp(np.percentile(logp, [1, 99]))),
        "gumbel_fit": tuple(float(v) for v in stats.gumbel_r.fit(logp)),
        "mean_pixel_var": float(dens.std ** 2 * s2),
        "max_pixel_var": float(dens.std ** 2 * dens.scales.max() ** 2),
        "max_coef_var": float(dens.scales.max() ** 2 * dens.lam.max()),
        "min_coef_var": float(dens.scales.min() ** 2 * dens.lam.min()),
        "s_range": (float(dens.scales.min()), float(dens.scales.max())),
    }, logp


def main(argv=None):
    p = argparse.ArgumentParser()
    p.add_argument("--size", type=int, default=16)
    p.add_argument("--beta", type=float, default=1.5, help="Gumbel scale, dB/dim of log p")
    p.add_argument("--smax", type=float, default=2.0, help="largest contrast")
    p.add_argument("--qlo", type=float, default=0.001)
    p.add_argument("--qhi", type=float, default=0.995)
    p.add_argument("--du", type=float, default=0.2)
    p.add_argument("--n", type=int, default=20000)
    p.add_argument("--yaml", action="store_true")
    p.add_argument("--fig", default=None)
    a = p.parse_args(argv)
    s, w = gumbel_prior(a.beta, a.smax, a.qlo, a.qhi, a.du)
    if a.yaml:
        print(f"scales: {s}\nweights: {w}")
        return
    rows = []
    for name, kw in (("old [0.5,1,2]", OLD), (f"Gumbel prior beta={a.beta} smax={a.smax}", dict(scales=s, weights=w))):
        dens = FieldDensity(a.size, **kw)
        info, logp = describe(dens, a.n)
        test_info, test_logp = describe(dens, 1000)   # the 1000 test images themselves
        info["test_skew"] = test_info["skew"]
        rows.append((name, info, logp, test_logp))
        print(name, {k: (round(v, 5) if isinstance(v, float) else v) for k, v in info.items()})
    if a.fig:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        fig, axes = plt.subplots(1, 2, figsize=(9, 3.2))
        for ax, (name, info, logp, test_logp) in zip(axes, rows):
            bins = np.linspace(logp.min(), logp.max(), 120)
            ax.hist(logp, bins=bins, density=True, color="0.7", label=f"{len(logp)} samples")
            ax.hist(test_logp, bins=bins, density=True, histtype="step", color="k",
                    label="1000 test images")
            loc, scale = info["gumbel_fit"]
            ax.plot(bins, stats.gumbel_r.pdf(bins, loc, scale), "r-", lw=1,
                    label=f"Gumbel fit ({loc:.2f}, {scale:.2f})")
            ax.set_title(f"{name}: K={info['K']}, skew {info['skew']:.2f}", fontsize=9)
            ax.set_xlabel("exact log p (dB/dim)")
            ax.legend(fontsize=7)
        axes[0].set_ylabel("density")
        fig.suptitle(f"field {a.size}x{a.size}: histogram of exact log p", fontsize=10)
        fig.tight_layout()
        fig.savefig(a.fig, dpi=120)
        print("wrote", a.fig)


if __name__ == "__main__":
    main()
