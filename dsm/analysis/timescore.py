"""Does the time score carry the y-independent part of log p? The κ(t) diagnostic.

Write S(y, t) = U(y, t) - ½⟨y, ∇_y U(y, t)⟩. For an energy that is homogeneous of degree 2
in y (½⟨y, f(y, t)⟩ with f homogeneous of degree 1 and conservative: Euler's identity) S is
0; for U = ½⟨y, f⟩ + c(t) it is c(t). For data of mean μ and covariance Σ, the exact noisy
energy is nearly Gaussian at large t and E_y[S] ≈ ½ log det 2π(Σ + t I): the part of
-log p(y | t) that does not depend on y, whose change with t the time score ∂_t U must
carry for the normalization constant read at a large t to hold at t = 0.

    slope(t) = d E_{y ~ p_t}[S(y, t)] / d ln t        (nats per unit ln t)
    κ(t)     = slope_model(t) / slope_exact(t)

κ = 1: the model carries that part as the exact density does; κ = 0: it does not at all
(an exactly homogeneous energy). The slope is a central difference in ln t, t e^{±h}, with
the same images x and noise draws z at both ends (y = x + √t z), so most of the Monte
Carlo noise cancels; its standard error is over images (draws averaged per image).

Beside κ, the time-score error per unit ln t, (t/d) E[∂_t U_θ - ∂_t U] (nats/dim), is the
integrand of the bias budget's time-score term (dsm.analysis.bias): what the time score
adds to the error of log p(x) per unit of ln t as the constant is carried from T to 0.

Models: anything with ``energy(y, t)`` and ``score``/``energy_and_scores`` (EnergyModel), or
an exact density with ``energy``, ``score`` and ``time_score`` (FieldDensity).
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import torch

from dsm.errors import DsmError

STEP_LN_T = 0.05   # h: the slope's central difference spans ln t ± h


def _device_dtype(model):
    p = next(iter(model.parameters()), None) if hasattr(model, "parameters") else None
    return (p.device, p.dtype) if p is not None else (torch.device("cpu"), torch.float64)


def _scores(model, y: torch.Tensor, t: torch.Tensor):
    """(U (B,), ∇_y U (B, ...), ∂_t U (B,)), detached, float64."""
    if hasattr(model, "energy_and_scores"):
        u, gy, gt = model.energy_and_scores(y, t)
    else:
        u, gy, gt = model.energy(y, t), model.score(y, t), model.time_score(y, t)
    return u.detach().double(), gy.detach().double(), gt.detach().double()


def homogeneity_defect(model, y: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """S(y, t) = U - ½⟨y, ∇_y U⟩, (B,) nats, float64 (0 for a degree-2 homogeneous energy)."""
    u, gy, _ = _scores(model, y, t)
    return u - 0.5 * (y.double() * gy).flatten(1).sum(1)


def _per_image(model, x: np.ndarray, z: np.ndarray, t: float, h: float) -> dict:
    """Per-row values at y = x + √t z for one batch: slope of S by central difference,
    and t ∂_t U at t (nats)."""
    dev, dtype = _device_dtype(model)
    xt, zt = torch.from_numpy(x).to(dev, dtype), torch.from_numpy(z).to(dev, dtype)
    out = {}
    s = []
    for tt in (t * math.exp(h), t * math.exp(-h)):
        tv = torch.full((len(x),), tt, device=dev, dtype=dtype)
        s.append(homogeneity_defect(model, xt + math.sqrt(tt) * zt, tv))
    out["slope"] = ((s[0] - s[1]) / (2 * h)).cpu().numpy()
    tv = torch.full((len(x),), t, device=dev, dtype=dtype)
    out["t_dt_u"] = (t * _scores(model, xt + math.sqrt(t) * zt, tv)[2]).cpu().numpy()
    return out


def _mean_se(a: np.ndarray) -> tuple[float, float]:
    return float(a.mean()), float(a.std(ddof=1) / math.sqrt(len(a))) if len(a) > 1 else float("nan")


def kappa_curve(model, exact, images: np.ndarray, t_grid, *, seed: int = 0, n_noise: int = 1,
                h: float = STEP_LN_T, batch_size: int = 256) -> pd.DataFrame:
    """κ(t) and the time-score error on ``t_grid`` (variances), one row per t.

    images: (n, C, H, W) clean images (held-out or test). ``exact``: an exact density, or
    None (then only the model's slope is reported; κ and the error are NaN). Columns: t,
    slope_model, slope_model_se, slope_exact, slope_exact_se (nats per unit ln t), kappa,
    kappa_se (delta method, over images), time_err_nats_per_dim, time_err_se (the model's
    (t/d) E[∂_t U_θ - ∂_t U]), offset_slope (the model's d c / d ln t, when it has an
    explicit y-independent term), d, n_images, n_noise.
    """
    images = np.asarray(images, np.float32)
    if images.ndim < 2 or len(images) < 2:
        raise DsmError(f"kappa: need at least 2 images, got shape {images.shape}")
    d = int(np.prod(images.shape[1:]))
    rows = []
    for t in np.asarray(t_grid, np.float64):
        if not t > 0:
            raise DsmError(f"kappa: noise levels must be > 0, got {t}")
        per = {"model": [], "exact": [], "err": []}
        for k in range(n_noise):
            rng = np.random.default_rng([int(seed), k])
            z = rng.standard_normal(images.shape).astype(np.float32)
            for i in range(0, len(images), batch_size):
                xb, zb = images[i:i + batch_size], z[i:i + batch_size]
                m = _per_image(model, xb, zb, float(t), h)
                per["model"].append(m["slope"])
                if exact is not None:
                    e = _per_image(exact, xb, zb, float(t), h)
                    per["exact"].append(e["slope"])
                    per["err"].append((m["t_dt_u"] - e["t_dt_u"]) / d)
        sm = np.concatenate(per["model"]).reshape(n_noise, -1).mean(0)
        row = {"t": float(t), "d": d, "n_images": len(images), "n_noise": int(n_noise)}
        row["slope_model"], row["slope_model_se"] = _mean_se(sm)
        row["offset_slope"] = _offset_slope(model, float(t), d, h)
        if exact is not None:
            se_ = np.concatenate(per["exact"]).reshape(n_noise, -1).mean(0)
            err = np.concatenate(per["err"]).reshape(n_noise, -1).mean(0)
            row["slope_exact"], row["slope_exact_se"] = _mean_se(se_)
            k = row["slope_model"] / row["slope_exact"]
            # delta method for a ratio of paired means
            resid = (sm - k * se_) / row["slope_exact"]
            row["kappa"], row["kappa_se"] = k, float(resid.std(ddof=1) / math.sqrt(len(resid)))
            row["time_err_nats_per_dim"], row["time_err_se"] = _mean_se(err)
        else:
            row.update(slope_exact=np.nan, slope_exact_se=np.nan, kappa=np.nan, kappa_se=np.nan,
                       time_err_nats_per_dim=np.nan, time_err_se=np.nan)
        rows.append(row)
    return pd.DataFrame(rows)


def _offset_slope(model, t: float, d: int, h: float) -> float:
    """d c / d ln t of the model's explicit y-independent term (0 without one)."""
    if not hasattr(model, "offset_energy"):
        return float("nan")
    dev, dtype = _device_dtype(model)
    tv = torch.tensor([t * math.exp(h), t * math.exp(-h)], device=dev, dtype=dtype)
    with torch.no_grad():
        c = model.offset_energy(tv, d).double()
    return float((c[0] - c[1]) / (2 * h))
