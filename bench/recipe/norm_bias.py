"""Bias of the Gaussian entropy used for the normalization constant at t_max.

c = H_approx(t_max) - mean U(y, t_max), so an entropy error ΔH = H_approx - H_exact (nats)
shifts every log p by -ΔH/d nats/dim (= +10 ΔH/(d ln 10) ... in dB/dim of log p: -10 (ΔH/d)/ln 10).
Forms: isotropic (d/2) ln(2πe t_max); data_variance (d/2) ln(2πe (v̄ + t_max)), v̄ = mean
pixel variance of the data (here exact; the pipeline would estimate it from held-out images).
"""

from __future__ import annotations

import sys
from pathlib import Path


sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from dsm.analysis.bias import normalization_error  # noqa: E402
from dsm.data.field import FieldDensity  # noqa: E402
from field_hist import OLD, gumbel_prior  # noqa: E402


def main():
    s, w = gumbel_prior(1.5)
    for size in (16, 12, 8):
        for name, kw in (("old", OLD), ("gumbel1.5", dict(scales=s, weights=w))):
            dens = FieldDensity(size, **kw)
            x = dens.sample(20000, part=1)
            for t_max in (0.3, 1.0, 3.0, 10.0):
                df = normalization_error(dens, t_max, images=x, n=30000)
                for _, r in df.iterrows():
                    print(f"size {size} {name:9s} t_max {t_max:5g} {r['form']:13s} dH {r['entropy_err_nats']:+8.3f} nats "
                          f"(±{r['exact_entropy_se_nats']:.3f})  log p err {r['logp_err_db_per_dim']:+.4f} dB/dim")


if __name__ == "__main__":
    main()
