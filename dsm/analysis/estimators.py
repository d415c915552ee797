"""Estimators side by side: what the one-shot log p costs, and how the integrating
estimators of the same model compare (the ``estimators`` stage; :mod:`dsm.estimators`).

On the first ``estimators.n_images`` test images, every estimator (``one-shot``,
``mse-bound``, ``ode``, ``sde``) is run ``estimators.repeats`` times (seeds ``seed + r``;
once for deterministic ones: ``one-shot`` and ``ode`` with the exact trace) on

* ``model``: the full energy model with its normalization constant c (``norm.json``);
* ``exact``: on a source with an exact density (``field``, ``gsm``), that density itself
  as the "model" (:class:`dsm.estimators.ExactEnergy`, c = 0): these rows validate the
  integrators, which must recover the exact log p within their stated error.

The prior term at t_max (``estimators.prior``): ``gaussian`` = N(m, (v + t_max) I) with m
the mean image and v the mean per-pixel variance of the first ``estimators.n_prior``
training images (the same for both densities), or ``model`` = U(y, t_max) + c. The ODE's
divergence is the exact trace on the exact density and follows ``estimators.ode.trace``
on the model (``auto``: exact for d ≤ ``exact_trace_max_d``, else Hutchinson).

Outputs:

* per-image Parquet (``results/<scale>/estimators-images.parquet``): density, estimator,
  repeat, image_index, image_id, nll_nats (-log p), se_nats (the estimator's own
  Monte-Carlo SE), logp_db_per_dim, exact_logp_db_per_dim (null without an exact density),
  one_shot_logp_db_per_dim (the one-shot value of the same density), nfe, seconds and
  cpu_seconds per image (the batch's, divided by its images);
* CSV (``results/<scale>/estimators.csv``), one row per (density, estimator), all log p
  in dB/dim (docs/theory.md#units; positive = the estimator finds the image more probable):

  ===========================  ==============================================================
  ``bias_db_per_dim``          mean over images and repeats of log p_est - log p_exact
  ``bias_se_db_per_dim``       its standard error (over images, each averaged over repeats)
  ``rms_error_db_per_dim``     RMS of log p_est - log p_exact
  ``sd_repeats_db_per_dim``    RMS over images of the standard deviation across repeats
  ``mc_se_db_per_dim``         mean of the estimator's own standard error (one run)
  ``diff_one_shot_db_per_dim`` mean of log p_est - log p_one-shot (same density)
  ``nfe_per_image``            network forward passes per image (dsm.estimators)
  ``seconds_per_image``        wall seconds per image; ``cpu_seconds_per_image`` CPU seconds
  ``images_per_second``        1 / seconds_per_image
  ``one_shot_speedup``         seconds_per_image / the one-shot's (same density): how many
                               times faster the one-shot value is (``_cpu``: in CPU time)
  ``tolerance_db_per_dim``     exact rows: the stated discretization tolerance
  ``within_tolerance``         exact rows: |bias| ≤ tolerance + 3 bias_se
  ===========================  ==============================================================

  plus ``options`` (the estimator's settings), ``prior``, ``n_images``, ``repeats``, ``d``,
  ``c_nats``, ``model_sha256``, ``params_sha256``, ``code_version``. On sources without an
  exact density there are only ``model`` rows and no bias, RMS-error or tolerance columns.
"""

from __future__ import annotations

import math
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

from dsm import units
from dsm.errors import DsmError
from dsm.estimators import ESTIMATORS, ExactEnergy, ModelEnergy, Prior, estimate

DENSITIES = ("model", "exact")
EXACT_COLUMNS = ("bias_db_per_dim", "bias_se_db_per_dim", "rms_error_db_per_dim", "tolerance_db_per_dim",
                 "within_tolerance")


def estimator_options(ecfg: dict, name: str, exact: bool) -> dict:
    """The keyword options of estimator ``name`` from the ``estimators`` params."""
    t_lo = ecfg.get("t_lo")
    if name == "one-shot":
        return {}
    if name == "mse-bound":
        m = ecfg["mse_bound"]
        return {"n_t": int(m["n_t"]), "n_noise": int(m["n_noise"]), "t_lo": t_lo}
    if name == "sde":
        s = ecfg["sde"]
        return {"n_t": int(s["n_t"]), "paths": int(s["paths"]), "t_lo": t_lo}
    o = ecfg["ode"]
    return {"method": o["method"], "rtol": float(o["rtol"]), "atol": float(o["atol"]), "t_lo": t_lo,
            "trace": "exact" if exact else o["trace"], "probes": int(o["probes"]),
            "exact_trace_max_d": int(o["exact_trace_max_d"])}


def _deterministic(name: str, opts: dict, d: int) -> bool:
    if name == "one-shot":
        return True
    if name == "ode":
        return opts["trace"] == "exact" or (opts["trace"] == "auto" and d <= opts["exact_trace_max_d"])
    return False


def gaussian_prior(store, n: int, chunk: int = 1024) -> Prior:
    """N(m, v I): m the mean image and v the mean per-pixel variance of the first ``n``
    images of ``store`` (float64, streamed)."""
    n = min(int(n), len(store))
    if n < 2:
        raise DsmError(f"estimators.n_prior: need at least 2 training images, got {n}")
    s = s2 = None
    for a in range(0, n, chunk):
        x = store.images(np.arange(a, min(n, a + chunk))).astype(np.float64)
        s = x.sum(0) if s is None else s + x.sum(0)
        s2 = (x ** 2).sum(0) if s2 is None else s2 + (x ** 2).sum(0)
    m = s / n
    v = float(np.clip(s2 / n - m ** 2, 0, None).mean()) * n / (n - 1)
    return Prior("gaussian", m, v)


def run_estimators(fields: dict, x: np.ndarray, ids, idx, ecfg: dict, prior: Prior,
                   exact_nll=None, progress=True) -> pd.DataFrame:
    """Per-image rows of every (density, estimator, repeat) (module docstring).

    fields: {density: EnergyField}; x (n, C, H, W) float32; ids/idx: image ids and indices;
    exact_nll: exact -log p (n,) nats or None.
    """
    from tqdm import tqdm

    d = int(np.prod(x.shape[1:]))
    bs = int(ecfg["batch_size"])
    repeats, seed = int(ecfg["repeats"]), int(ecfg["seed"])
    jobs = []
    for density, fld in fields.items():
        for name in ESTIMATORS:
            opts = estimator_options(ecfg, name, density == "exact")
            for r in range(1 if _deterministic(name, opts, d) else repeats):
                jobs.append((density, fld, name, opts, r))
    for fld in fields.values():                       # untimed warm-up: first calls allocate
        fld.energy(x[:bs], 0.0)
        fld.scores(x[:bs], fld.t_max)
    rows = []
    bar = tqdm(jobs, desc="estimators", unit="run", file=sys.stderr, disable=None if progress else True,
               leave=False)
    for density, fld, name, opts, r in bar:
        bar.set_postfix_str(f"{density} {name}")
        for a in range(0, len(x), bs):
            xb = x[a:a + bs]
            c0 = time.process_time()
            est = estimate(name, fld, xb, keys=idx[a:a + bs], seed=seed + r, prior=prior, **opts)
            cpu = time.process_time() - c0
            b = len(xb)
            rows.append(pd.DataFrame({
                "density": density, "estimator": name, "repeat": r,
                "image_index": np.asarray(idx[a:a + bs], np.int64), "image_id": list(ids[a:a + bs]),
                "nll_nats": est.nll_nats, "se_nats": est.se_nats,
                "logp_db_per_dim": units.logp_db_per_dim(est.nll_nats, d),
                "exact_logp_db_per_dim": (units.logp_db_per_dim(exact_nll[a:a + bs], d)
                                          if exact_nll is not None else np.full(b, np.nan)),
                "nfe": est.nfe, "seconds": est.seconds / b, "cpu_seconds": cpu / b,
                "options": _fmt_opts(est.options), "d": d}))
    bar.close()
    df = pd.concat(rows, ignore_index=True)
    one = df[df.estimator == "one-shot"][["density", "image_index", "logp_db_per_dim"]]
    return df.merge(one.rename(columns={"logp_db_per_dim": "one_shot_logp_db_per_dim"}),
                    on=["density", "image_index"], how="left")


def _fmt_opts(opts: dict) -> str:
    return " ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in sorted(opts.items())
                    if k != "nfev")


def summarize(per_image: pd.DataFrame, tolerance_db: float) -> pd.DataFrame:
    """One row per (density, estimator) of the per-image table (module docstring)."""
    out = []
    for (density, name), g in per_image.groupby(["density", "estimator"], sort=False):
        by_img = g.groupby("image_index")
        err = g["logp_db_per_dim"] - g["exact_logp_db_per_dim"]
        has_exact = bool(np.isfinite(err).all()) and len(err) > 0
        err_img = (g.assign(err=err).groupby("image_index")["err"].mean()) if has_exact else None
        n_img = by_img.ngroups
        sd_rep = by_img["logp_db_per_dim"].std(ddof=1)
        d = int(g["d"].iloc[0])
        row = {
            "density": density, "estimator": name, "options": g["options"].iloc[0],
            "n_images": n_img, "repeats": int(g["repeat"].nunique()), "d": d,
            "bias_db_per_dim": float(err_img.mean()) if has_exact else np.nan,
            "bias_se_db_per_dim": (float(err_img.std(ddof=1) / math.sqrt(n_img))
                                   if has_exact and n_img > 1 else np.nan),
            "rms_error_db_per_dim": float(np.sqrt((err ** 2).mean())) if has_exact else np.nan,
            "sd_repeats_db_per_dim": float(np.sqrt((sd_rep.fillna(0.0) ** 2).mean())),
            "mc_se_db_per_dim": float((g["se_nats"] * 10 / (d * math.log(10))).mean()),
            "diff_one_shot_db_per_dim": float((g["logp_db_per_dim"] - g["one_shot_logp_db_per_dim"]).mean()),
            "nfe_per_image": float(g["nfe"].mean()),
            "seconds_per_image": float(g["seconds"].mean()),
            "cpu_seconds_per_image": float(g["cpu_seconds"].mean()),
        }
        row["images_per_second"] = 1.0 / row["seconds_per_image"] if row["seconds_per_image"] > 0 else np.inf
        out.append(row)
    df = pd.DataFrame(out)
    for density in df["density"].unique():
        sel = df["density"] == density
        one = df[sel & (df["estimator"] == "one-shot")]
        if len(one):
            df.loc[sel, "one_shot_speedup"] = df.loc[sel, "seconds_per_image"] / float(one["seconds_per_image"].iloc[0])
            df.loc[sel, "one_shot_speedup_cpu"] = (df.loc[sel, "cpu_seconds_per_image"]
                                                   / float(one["cpu_seconds_per_image"].iloc[0]))
    exact = (df["density"] == "exact") & np.isfinite(df["bias_db_per_dim"])
    df["tolerance_db_per_dim"] = np.where(exact, float(tolerance_db), np.nan)
    within = df["bias_db_per_dim"].abs() <= tolerance_db + 3 * df["bias_se_db_per_dim"].fillna(0.0)
    df["within_tolerance"] = [bool(w) if e else None for w, e in zip(within, exact)]
    if not np.isfinite(df["bias_db_per_dim"]).any():          # no exact density: no bias columns
        df = df.drop(columns=list(EXACT_COLUMNS))
    return df


def estimators_from_params(cfg: dict, model, norm, data, out, images_out, device=None) -> pd.DataFrame:
    """`dsm estimators`: the comparison of the scale (``estimators`` params) -> CSV ``out``
    and the per-image Parquet ``images_out``."""
    from dsm.data.exact import exact_density
    from dsm.data.store import open_store
    from dsm.evaluate import read_norm
    from dsm.io import code_version, sha256_file, sha256_json, write_parquet, write_text
    from dsm.modelfile import load_energy_model
    from dsm.outputs import preflight
    from dsm.runtime import stage_threads

    preflight({out: "text", images_out: "parquet"})
    ecfg = cfg.get("estimators")
    if not isinstance(ecfg, dict):
        raise DsmError("params: section 'estimators' missing")
    stage_threads(cfg, "evaluate")
    net, payload, dev = load_energy_model(model, device if device is not None else cfg.get("device", "auto"))
    model_sha = sha256_file(model)
    norm_info = read_norm(norm, model_sha)
    tcfg = payload["config"]["train"]
    t_max, t_min = float(tcfg["t_max"]), float(tcfg["t_min"])
    data = Path(data)
    test, train = open_store(data / "test"), open_store(data / "train")
    if tuple(test.shape) != tuple(payload["shape"]):
        raise DsmError(f"{test.path}: images {tuple(test.shape)} do not match the model's {tuple(payload['shape'])}")
    n = min(int(ecfg["n_images"]), len(test))
    idx = np.arange(n, dtype=np.int64)
    x = test.images(idx)
    ids = test.index.set_index("image_index").loc[idx, "image_id"].astype(str).to_numpy()
    fields = {"model": ModelEnergy(net, float(norm_info["c_nats"]), t_max, t_min, dev)}
    dens = exact_density(test.meta)
    exact_nll = None
    if dens is not None:
        import torch

        fields["exact"] = ExactEnergy(dens, t_max, t_min)
        exact_nll = np.asarray(dens.energy(torch.from_numpy(x).double(), 0.0), np.float64)
    prior = gaussian_prior(train, ecfg["n_prior"]) if ecfg["prior"] == "gaussian" else Prior("model")
    per_image = run_estimators(fields, x, ids, idx, ecfg, prior, exact_nll,
                               progress=bool(cfg.get("train", {}).get("progress", True)))
    summary = summarize(per_image, float(ecfg["tolerance_db_per_dim"]))
    const = {"prior": prior.kind, "c_nats": float(norm_info["c_nats"]), "model_sha256": model_sha,
             "params_sha256": sha256_json(cfg), "code_version": code_version()}
    for k, v in const.items():
        summary[k] = v
        per_image[k] = v
    write_parquet(images_out, per_image)
    write_text(out, summary.to_csv(index=False, float_format="%.6g"))
    ode_row = summary[(summary.density == "model") & (summary.estimator == "ode")]
    if len(ode_row):
        print(f"estimators: one-shot is {float(ode_row['one_shot_speedup'].iloc[0]):.0f}x faster than the ODE "
              f"({n} images) -> {out}", file=sys.stderr)
    return summary
