"""Where does a model's log p bias come from? A budget against an exact density.

For a source with an exact density at every noise level (``field``, docs/theory.md#the-exact-likelihood-benchmark-field) the
mean error of the one-shot log p splits exactly into three parts. Notation: U the exact
energy (-log p(y | t), nats), U_θ the model's, c its normalization constant (docs/theory.md#normalization-constant),
e(y, t) = U_θ(y, t) + c - U(y, t) the error of the normalized energy, d pixels,
y_t = x + √t z with x a clean image and z ~ N(0, I) held fixed along the path, T = t_max.
Then for every x, with E over z,

    E e(y_T, T) - e(x, 0) = ∫_0^T d/dt E e(y_t, t) dt
                          = ∫ E[ t ∂_t e + ½ √t <∇_y e, z> ] d ln t        (ln t from -∞ to ln T)

(the chain rule along y_t). log p = -(U + c), so the model's log p error on clean images
(model - exact, nats/dim; positive = the model's log p is too HIGH) is

    E[-e(x, 0)]/d = -E[e(y_T, T)]/d                                   normalization
                    + ∫ (t/d) E[∂_t U_θ - ∂_t U] d ln t                  time score
                    + ∫ (√t/(2d)) E[<∇_y U_θ - ∇_y U, z>] d ln t         space score

* normalization: -(H_approx(T) - H_exact(T))/d from the Gaussian entropy assumed at T
  (:func:`normalization_error`), plus the Monte-Carlo error of the mean of U_θ(y, T) over
  the held-out images (the normalize stage's ``c_sem_nats``).
* time score: a model whose time score is too large (U_θ falls too fast as t decreases
  towards 0) ends with U_θ(x, 0) too low, i.e. log p too high: positive error. The
  running integral from T down to t is the offset the time score has accumulated by t.
* space score: by Stein's lemma E<g(y), z>√t = t E[div g], so this is ½ ∫ t E[Δ(U_θ - U)]
  d ln t / d: the part of the diffusion (heat-equation) term that comes from the score
  error. Equivalently √t <∇_y e, z> = <x̂ - x̂_θ, z>/√t with x̂ = y - t ∇_y U the
  denoisers (exact and model). Zero for the exact score.

:func:`bias_budget` evaluates both integrands on a grid of t (trapezoid rule in ln t, the
grid's smallest t standing in for 0), with their Monte-Carlo standard errors, the running
integrals from T down to each t (nats/dim and dB/dim of log p), and the denoising errors:
the excess MSE of the model's denoiser over the exact (MMSE) denoiser, per dim,
E||x̂_θ - x̂||²/d (= E||x̂_θ - x||²/d - E||x̂ - x||²/d), and the excess of the DSM and TSM
losses over their minimum, (t/d) E||∇_y U_θ - ∇_y U||² and E[((t/d)(∂_t U_θ - ∂_t U))²].
Given the normalization constant c it also measures the realized normalization error and
the direct error at t = 0, so the three terms can be checked to add up.

Models: anything with ``energy_and_scores(y, t) -> (U, ∇_y U, ∂_t U)`` (dsm.nets
EnergyModel) or with ``energy(y, t)`` (differentiated here); the exact density: anything
with ``energy``, ``score``, ``time_score`` (and ``entropy`` for the normalization), e.g.
dsm.data.field.FieldDensity. :class:`ExactModel` wraps an exact density as a "model" (the
budget of the exact density against itself is zero: tests/test_bias.py).

Imports: numpy, torch, pandas and dsm.units / dsm.errors / dsm.normalization only (no pipeline
machinery). The Gaussian entropy forms live in :mod:`dsm.normalization`.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import torch

from dsm.errors import DsmError
from dsm.normalization import (ENTROPIES as NORM_FORMS, assumed_entropy, covariance_eigenvalues,
                               mean_pixel_variance)
from dsm.units import LN10

DB = 10.0 / LN10          # log p in nats/dim -> dB/dim


# --- the normalization's own error ------------------------------------------------------

def normalization_error(exact, t_max: float, *, d: int | None = None, images=None,
                        v_bar: float | None = None, cov_eigvals=None, forms=NORM_FORMS,
                        n: int = 30_000, seed: int = 0) -> pd.DataFrame:
    """Error of each Gaussian-entropy form at t_max against ``exact.entropy(t_max)``.

    v̄ for 'data_variance' is ``v_bar`` if given, else estimated from ``images``; the
    covariance for 'data_covariance' is ``cov_eigvals`` if given, else from ``images``.
    One row per form: approx and exact entropy (nats) and the exact value's SE,
    entropy_err_nats = H_approx - H_exact, and the resulting log p error
    logp_err_nats_per_dim = -(H_approx - H_exact)/d and logp_err_db_per_dim (positive:
    the normalized log p is too high).
    """
    d = int(d if d is not None else exact.d)
    if v_bar is None and "data_variance" in forms:
        if images is None:
            raise DsmError("normalization_error: 'data_variance' needs images or v_bar")
        v_bar = mean_pixel_variance(images)
    if cov_eigvals is None and "data_covariance" in forms:
        if images is None:
            raise DsmError("normalization_error: 'data_covariance' needs images or cov_eigvals")
        cov_eigvals = covariance_eigenvalues(images)
    h = exact.entropy(float(t_max), n=n, seed=seed)
    h_exact, h_se = (float(h[0]), float(h[1])) if isinstance(h, tuple) else (float(h), 0.0)
    rows = []
    for form in forms:
        h_approx = assumed_entropy(d, t_max, form, v_bar or 0.0, cov_eigvals)
        err = h_approx - h_exact
        rows.append({"form": form, "t_max": float(t_max), "d": d,
                     "v_bar": float(v_bar) if form == "data_variance" else 0.0,
                     "approx_entropy_nats": h_approx, "exact_entropy_nats": h_exact,
                     "exact_entropy_se_nats": h_se, "entropy_err_nats": err,
                     "logp_err_nats_per_dim": -err / d, "logp_err_db_per_dim": -DB * err / d})
    return pd.DataFrame(rows)


# --- adapters ---------------------------------------------------------------------------

class ExactModel:
    """An exact density (energy, score, time_score) seen through the model API."""

    def __init__(self, exact):
        self.exact = exact

    def energy(self, y, t):
        return self.exact.energy(y, t)

    def energy_and_scores(self, y, t, create_graph: bool = False):
        return self.exact.energy(y, t), self.exact.score(y, t), self.exact.time_score(y, t)


def _model_device_dtype(model):
    params = getattr(model, "parameters", None)
    p = next(iter(params()), None) if callable(params) else None
    return (p.device, p.dtype) if p is not None else (torch.device("cpu"), torch.float64)


def model_terms(model, y: torch.Tensor, t: torch.Tensor):
    """(U, ∇_y U, ∂_t U) of a model at (y, t), float64 on the CPU, detached."""
    dev, dt = _model_device_dtype(model)
    yy, tt = y.to(dev, dt), t.to(dev, dt)
    if hasattr(model, "energy_and_scores"):
        u, gy, gt = model.energy_and_scores(yy, tt)
    elif hasattr(model, "energy"):
        with torch.enable_grad():
            yy = yy.detach().requires_grad_(True)
            tt = tt.detach().requires_grad_(True)
            u = model.energy(yy, tt)
            gy, gt = torch.autograd.grad(u.sum(), (yy, tt))
    else:
        raise DsmError(f"{type(model).__name__}: needs energy_and_scores(y, t) or energy(y, t)")
    return tuple(torch.as_tensor(v).detach().to("cpu", torch.float64) for v in (u, gy, gt))


def _exact_terms(exact, y: torch.Tensor, t: torch.Tensor):
    return tuple(torch.as_tensor(f(y, t)).detach().to("cpu", torch.float64)
                 for f in (exact.energy, exact.score, exact.time_score))


# --- the budget --------------------------------------------------------------------------

def _cum_from_top(vals: np.ndarray, ln_t: np.ndarray) -> np.ndarray:
    """Per sample, ∫_{ln t_i}^{ln t_max} f d ln t by the trapezoid rule: (n, n_t)."""
    seg = 0.5 * (vals[:, 1:] + vals[:, :-1]) * np.diff(ln_t)[None, :]
    out = np.zeros_like(vals)
    out[:, :-1] = np.cumsum(seg[:, ::-1], axis=1)[:, ::-1]
    return out


def _se(a: np.ndarray) -> np.ndarray:
    return a.std(axis=0, ddof=1) / math.sqrt(a.shape[0]) if a.shape[0] > 1 else np.full(a.shape[1:], np.nan)


def bias_budget(model, exact, x, t_grid, *, seed: int = 0, n_noise: int = 1, c_nats: float | None = None,
                batch_size: int = 250) -> pd.DataFrame:
    """Per-t error budget of ``model`` against ``exact`` on clean images ``x`` (B, C, H, W).

    t_grid: noise variances (sorted here); its largest value is t_max = T of the
    integrals, its smallest stands in for 0. n_noise draws of z per image (seeded by
    ``seed``), the same z at every t. Returns one row per t (ascending) with columns

      t, ln_t
      ts_err, ts_err_se            (t/d) E[∂_t U_θ - ∂_t U] (unitless per dim) and its SE
      ss_err, ss_err_se            (√t/(2d)) E[<∇U_θ - ∇U, z>]
      cum_time_nats, cum_time_db   ∫_{ln t}^{ln T} ts_err d ln t: log p error (model - exact,
                                   nats/dim, dB/dim) the time score accumulates from T down to t
      cum_space_nats, cum_space_db the same for ss_err
      cum_total_db, cum_total_se_db  time + space, and its SE (per image-draw, so the
                                   correlations between grid points are accounted for)
      excess_mse_per_dim           E||x̂_θ - x̂||²/d (pixel units²; excess over the MMSE denoiser)
      mmse_per_dim                 E||x̂ - x||²/d of the exact denoiser
      dsm_excess, tsm_excess       (t/d)E||∇U_θ - ∇U||² and E[((t/d)(∂_tU_θ - ∂_tU))²]
      err_mean_nats                E[U_θ + c - U]/d at (y_t, t) (only with c_nats): the
                                   realized normalized-energy error; at T it is the
                                   normalization's error (its negative is the log p error)

    df.attrs holds the totals (see :func:`summarize`).
    """
    t_grid = np.unique(np.asarray(t_grid, dtype=np.float64))
    if len(t_grid) < 2 or not t_grid[0] > 0:
        raise DsmError("bias_budget: t_grid needs at least 2 positive values")
    x = torch.as_tensor(np.asarray(x, dtype=np.float64)) if not isinstance(x, torch.Tensor) else x.double()
    n_img = x.shape[0]
    d = int(x[0].numel())
    gen = torch.Generator().manual_seed(int(seed))
    z = torch.randn((n_noise, *x.shape), generator=gen, dtype=torch.float64).reshape(n_noise * n_img, *x.shape[1:])
    xs = x.repeat(n_noise, *([1] * (x.dim() - 1)))
    n = xs.shape[0]
    keys = ("ts", "ss", "mse", "mmse", "dsm", "err")
    per = {k: np.zeros((n, len(t_grid))) for k in keys}
    flat = lambda a: a.reshape(a.shape[0], -1)  # noqa: E731
    for j, t in enumerate(t_grid):
        for a in range(0, n, batch_size):
            b = min(n, a + batch_size)
            y = xs[a:b] + math.sqrt(t) * z[a:b]
            tv = torch.full((b - a,), float(t), dtype=torch.float64)
            u_m, gy_m, gt_m = model_terms(model, y, tv)
            u_e, gy_e, gt_e = _exact_terms(exact, y, tv)
            dg = flat(gy_m - gy_e)
            per["ts"][a:b, j] = (t / d * (gt_m - gt_e)).numpy()
            per["ss"][a:b, j] = (math.sqrt(t) / (2 * d) * (dg * flat(z[a:b])).sum(1)).numpy()
            per["mse"][a:b, j] = (t ** 2 / d * (dg ** 2).sum(1)).numpy()
            xhat = flat(y - t * gy_e)
            per["mmse"][a:b, j] = (((xhat - flat(xs[a:b])) ** 2).sum(1) / d).numpy()
            per["dsm"][a:b, j] = (t / d * (dg ** 2).sum(1)).numpy()
            if c_nats is not None:
                per["err"][a:b, j] = ((u_m + float(c_nats) - u_e) / d).numpy()
    ln_t = np.log(t_grid)
    cum_t, cum_s = _cum_from_top(per["ts"], ln_t), _cum_from_top(per["ss"], ln_t)
    df = pd.DataFrame({
        "t": t_grid, "ln_t": ln_t,
        "ts_err": per["ts"].mean(0), "ts_err_se": _se(per["ts"]),
        "ss_err": per["ss"].mean(0), "ss_err_se": _se(per["ss"]),
        "cum_time_nats": cum_t.mean(0), "cum_time_db": DB * cum_t.mean(0),
        "cum_space_nats": cum_s.mean(0), "cum_space_db": DB * cum_s.mean(0),
        "cum_total_db": DB * (cum_t + cum_s).mean(0), "cum_total_se_db": DB * _se(cum_t + cum_s),
        "excess_mse_per_dim": per["mse"].mean(0), "mmse_per_dim": per["mmse"].mean(0),
        "dsm_excess": per["dsm"].mean(0), "tsm_excess": (per["ts"] ** 2).mean(0),
        "err_mean_nats": per["err"].mean(0) if c_nats is not None else np.nan,
    })
    attrs = {"d": d, "n_images": n_img, "n_noise": int(n_noise), "t_max": float(t_grid[-1]),
             "t_low": float(t_grid[0]),
             "time_total_db": float(df["cum_time_db"].iloc[0]),
             "time_total_se_db": float(DB * _se(cum_t)[0]),
             "space_total_db": float(df["cum_space_db"].iloc[0]),
             "space_total_se_db": float(DB * _se(cum_s)[0]),
             "score_total_db": float(df["cum_total_db"].iloc[0]),
             "score_total_se_db": float(df["cum_total_se_db"].iloc[0])}
    if c_nats is not None:
        # log p error = -(normalized energy error)
        attrs["norm_err_db"] = float(-DB * df["err_mean_nats"].iloc[-1])
        attrs["norm_err_se_db"] = float(DB * _se(per["err"][:, -1:])[0])
        with torch.no_grad():
            u0 = torch.cat([model_terms_energy(model, x[a:a + batch_size]) for a in range(0, n_img, batch_size)])
        u0_e = torch.cat([torch.as_tensor(exact.energy(x[a:a + batch_size], 0.0)).double()
                          for a in range(0, n_img, batch_size)])
        direct = -DB * ((u0 + float(c_nats) - u0_e) / d).numpy()
        attrs["direct_err_db"] = float(direct.mean())
        attrs["direct_err_se_db"] = float(direct.std(ddof=1) / math.sqrt(len(direct))) if len(direct) > 1 else float("nan")
        attrs["predicted_err_db"] = attrs["norm_err_db"] + attrs["score_total_db"]
        # per image-draw: -(normalized energy error at T) + the score terms' integral (paired)
        predicted = DB * (-per["err"][:, -1] + (cum_t + cum_s)[:, 0])
        attrs["predicted_err_se_db"] = float(_se(predicted[:, None])[0])
    df.attrs.update(attrs)
    return df


def model_terms_energy(model, y: torch.Tensor) -> torch.Tensor:
    """U_θ(y, 0) (B,), float64 CPU, without autograd (the one-shot log p evaluation)."""
    dev, dt = _model_device_dtype(model)
    t = torch.zeros(y.shape[0], device=dev, dtype=dt)
    with torch.no_grad():
        u = model.energy(y.to(dev, dt), t)
    return torch.as_tensor(u).detach().to("cpu", torch.float64)


def summarize(df: pd.DataFrame) -> dict:
    """The totals of a :func:`bias_budget` table (dB/dim of log p, model - exact), each with
    its standard error over the image-draws (``*_se_db``): time_total_db, space_total_db,
    score_total_db (their sum), and with c_nats: norm_err_db, predicted_err_db = norm +
    score, and direct_err_db, measured at t = 0 on the same clean images."""
    return dict(df.attrs)


# --- the pipeline stage -------------------------------------------------------------------

HEADLINE_ROWS = {   # headline term -> (total, its standard error) in the totals
    "norm": ("norm_err_db", "norm_err_se_db"),
    "time": ("time_total_db", "time_total_se_db"),
    "space": ("space_total_db", "space_total_se_db"),
    "score": ("score_total_db", "score_total_se_db"),
    "predicted": ("predicted_err_db", "predicted_err_se_db"),
    "direct": ("direct_err_db", "direct_err_se_db"),
}


def headline(totals: dict) -> dict:
    """The headline numbers of the budget, one file per term: ``<term>_err_db_per_dim`` for
    norm, time, space, score (time + space), predicted (norm + score) and direct (measured
    at t = 0), each a :class:`dsm.headline.Metric` (log p error, model - exact, dB/dim, and
    its standard error); null where the source has no exact density. With the κ check,
    ``kappa_min_ratio`` and ``kappa_max_ratio``: κ's range over the checked noise levels (``n``)."""
    from dsm.headline import Metric

    out = {f"{row}_err_db_per_dim": Metric(totals.get(v), se=totals.get(se))
           for row, (v, se) in HEADLINE_ROWS.items()}
    check = totals.get("kappa_check")
    if check:           # the share of the entropy change the time score carries, check_from <= t <= T
        out["kappa_min_ratio"] = Metric(check.get("min"), n=check.get("n_levels"))
        out["kappa_max_ratio"] = Metric(check.get("max"), n=check.get("n_levels"))
    return out


def kappa_table(model, exact, test, p: dict, t_train: float, big_t: float) -> dict:
    """κ(t) (dsm.analysis.timescore) of the model on ``bias.kappa`` settings: noise levels
    10^log10_t log-spaced (``points``), capped at the model's training t_max, on the first
    ``n_images`` test images; and its range over the checked levels, ``check_from`` <= t
    <= T (the normalization level). Returns ``{"kappa": [rows], "kappa_check": {...}}``."""
    from dsm.analysis.timescore import kappa_curve

    k = p.get("kappa") or {}
    lo, hi = (float(v) for v in k.get("log10_t", (-4.0, 2.0)))
    grid = np.logspace(lo, hi, int(k.get("points", 13)))
    grid = grid[grid <= t_train * (1 + 1e-9)]
    n = min(int(k.get("n_images", 256)), len(test))
    df = kappa_curve(model, exact, test.images(np.arange(n)), grid, seed=int(p["seed"]))
    lo_check = float(k.get("check_from", 0.1))
    sel = df[(df["t"] >= lo_check * (1 - 1e-9)) & (df["t"] <= big_t * (1 + 1e-9))]
    check = {"from_t": lo_check, "to_t": big_t, "n_levels": int(len(sel)),
             "min": float(sel["kappa"].min()) if len(sel) else None,
             "max": float(sel["kappa"].max()) if len(sel) else None}
    return {"kappa": df.to_dict("records"), "kappa_check": check}


def bias_from_params(cfg: dict, model, norm, data, out_csv, out_json, out_metrics=None) -> dict:
    """`dsm bias`: the budget of the full model against the exact density of its data.

    On ``bias.n_images`` test images with ``bias.n_noise`` draws each, on ``bias.n_t``
    noise levels log-spaced from ``bias.t_low`` up to T, the level of the model's
    normalization constant (``evaluate.norm_t``, else the training t_max), so the
    normalization + time + space terms add up to the directly measured error at t = 0.
    Writes the per-t table (CSV), the totals plus the normalization forms' own errors at
    T (JSON, the details) and, if ``out_metrics`` is given, the headline numbers as a
    directory of one file per term (:func:`headline`, DVC metrics). A source without an
    exact density gets outputs that say so (``available: false``; null headline numbers).
    """
    from pathlib import Path

    from dsm.data.exact import exact_density
    from dsm.data.store import open_store
    from dsm.evaluate import read_norm
    from dsm.headline import write_metrics_dir
    from dsm.io import code_version, sha256_file, write_json, write_text
    from dsm.modelfile import load_energy_model
    from dsm.outputs import preflight
    from dsm.runtime import stage_threads

    preflight({out_csv: "text", out_json: "json"}, dirs=[out_metrics])
    stage_threads(cfg, "evaluate")
    p = cfg["bias"]
    test = open_store(Path(data) / "test")
    exact = exact_density(test.meta)
    if exact is None or not hasattr(exact, "entropy"):
        # real data: nothing to measure against; say so in the outputs (both tools run the stage)
        result = {"available": False, "reason": f"source {test.meta.get('source')!r} has no exact "
                  f"density: the bias of log p cannot be measured (only A vs B variance, Figure 2)",
                  "code_version": code_version()}
        write_text(out_csv, "t\n")
        write_json(out_json, result)
        if out_metrics is not None:
            write_metrics_dir(out_metrics, headline({}))
        return result
    net, payload, _ = load_energy_model(model, cfg.get("device", "auto"))
    norm_info = read_norm(norm, sha256_file(model))
    from dsm.io import check_finite

    big_t = check_finite(norm_info.get("t_max"), f"{norm}: t_max")   # the constant's level T
    if not 0 < float(p["t_low"]) < big_t:
        raise DsmError(f"bias.t_low: {float(p['t_low']):g} must be below the level T = {big_t:g} "
                       f"of the normalization constant ({norm}): the budget integrates from t_low to T")
    n = min(int(p["n_images"]), len(test))
    x = test.images(np.arange(n))
    grid = np.geomspace(float(p["t_low"]), big_t, int(p["n_t"]))
    df = bias_budget(net, exact, x, grid, seed=int(p["seed"]), n_noise=int(p["n_noise"]),
                     c_nats=float(norm_info["c_nats"]))
    forms = normalization_error(exact, big_t, images=x[: min(n, 1000)], n=20_000, seed=int(p["seed"]))
    totals = summarize(df)
    kappa = kappa_table(net, exact, test, p, float(payload["config"]["train"]["t_max"]), big_t)
    result = {
        "available": True,
        "units": "log p error, model - exact, dB/dim (positive: the model's log p is too high)",
        "t_norm": big_t, "norm_entropy": norm_info.get("entropy"),
        **{k: totals[k] for pair in HEADLINE_ROWS.values() for k in pair},
        "n_images": n, "n_noise": int(p["n_noise"]), "n_t": int(p["n_t"]), "t_low": float(p["t_low"]),
        "normalization_forms_at_t_norm": {r["form"]: r["logp_err_db_per_dim"]
                                          for r in forms.to_dict("records")},
        **kappa,
        "model_sha256": sha256_file(model), "code_version": code_version(),
    }
    write_text(out_csv, df.to_csv(index=False))
    write_json(out_json, result)
    if out_metrics is not None:
        write_metrics_dir(out_metrics, headline(result))
    return result
