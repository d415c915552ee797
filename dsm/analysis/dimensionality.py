"""Figure 5: E[log p(y, t) | x] and the effective dimensionality across noise levels
(docs/theory.md#effective-dimensionality; paper §3.3, eqs. 11–12).

For a clean image x, noise draws ``z_k`` (k = 1 … K) and ``y_k = x + √t z_k``, from the
model's energy U, space score ∇_y U and time score ∂_t U at the same draws:

* ``E_y[log p(y, t) | x] = -E_k[U(y_k, t) + c]`` (c: the model's normalization constant
  from ``results/<scale>/full/norm.json``), reported in dB/dim: ``-10 (U + c) / (d ln 10)``;
* eq. 11, ``d_eff = E_y ||x - x̂(y, t)||² / t`` with ``x̂ = y - t ∇_y U`` (squared error
  summed over pixels). Since ``x - x̂ = t ∇_y U - √t z`` exactly, it is computed as
  ``E_k ||z_k - √t ∇_y U(y_k, t)||²``, which avoids the cancellation of x - x̂ (two
  numbers near x) at small t;
* eq. 12, ``d_eff = d - 2 ∂ E_y[U(y, t) | x] / ∂ ln t`` with the derivative from the
  network's own scores (no finite differences): ``t d/dt E_z[U(x + √t z, t)] =
  t E_z[∂_t U] + (√t / 2) E_z<∇_y U, z>``, so ``d_eff = d - E_k[2 t ∂_t U + √t <∇_y U, z_k>]``.

For the true density the two are equal for every x and t (the heat equation); for a model
their gap is a consistency diagnostic. Every estimate comes with its Monte-Carlo standard
error over the draws, and the gap eq. 11 − eq. 12 with the standard error of the paired
per-draw differences. Noise draws are seeded by (seed, image index in the store, draw) and
the same draws serve every t (common random numbers: smooth curves in t).

Curves: each reference image (``results/<scale>/full/examples.json``), K = ``n_noise``
draws; and the test-set average over the first ``n_average`` test images with
``n_noise_average`` draws each (its standard error is over images). On a source with an
exact density (``field``) the same estimators run on the exact energy and scores (the
exact curves; their eq. 11 and eq. 12 agree within Monte-Carlo error) and the population
d_eff of :meth:`FieldDensity.d_eff` is added to the average curve.

``dsm dimensionality`` writes ``results/<scale>/fig5/curves.parquet`` (one row per curve
and t), ``details.json`` (where eq. 11 and eq. 12 agree and where not, the largest
disagreement and where, settings, provenance), ``d_eff.csv`` (the test-average curve: t,
``d_eff_eq11``, ``d_eff_eq12``, ``exact_d_eff_eq11`` and ``exact_d_eff_population``, empty
without an exact density; a DVC plot) and ``metrics/``, the headline numbers (DVC
metrics, :func:`headline`; one file each, dsm.headline), in dimensions (of d):
``max_abs_gap_dims`` (the largest
|eq. 11 − eq. 12| of the model over every curve and t), ``trained_max_abs_gap_dims`` (the
same within the model's training range of t; null if the grid has no point in it),
``agreeing_fraction`` (the share of the model's (curve, t) points where the two agree
within 3 standard errors) and on an exact source ``exact_max_abs_gap_dims`` (the same
estimators on the exact density: Monte-Carlo error only) and ``d_eff_max_abs_err_dims``
(the model's eq. 11 against the exact one's, within the training range).
"""

from __future__ import annotations

import math
import sys

import numpy as np
import torch

from dsm import units
from dsm.analysis.reference import open_test_part, read_examples
from dsm.errors import DsmError

STATS = ("energy", "eq11", "eq12", "gap")     # per-draw quantities averaged over draws


def t_grid(p: dict) -> np.ndarray:
    """The noise variances of the figure: ``points`` log-spaced values in 10^log10_t."""
    lo, hi = map(float, p["log10_t"])
    return np.logspace(lo, hi, int(p["points"]))


def draw_noise(seed: int, image_index: int, k: int, shape) -> np.ndarray:
    """``k`` standard normal draws (k, *shape) float32 for one image, seeded by
    (seed, image index, draw): independent of batching and of the other images."""
    rng = np.random.default_rng([int(seed), int(image_index)])
    return rng.standard_normal((k, *shape), dtype=np.float32)


def _energy_and_scores(model, y: torch.Tensor, t: torch.Tensor):
    if hasattr(model, "energy_and_scores"):
        return model.energy_and_scores(y, t)
    from dsm.evaluate import energy, space_score, time_score

    return energy(model, y, t), space_score(model, y, t), time_score(model, y, t)


def per_draw(model, x: torch.Tensor, z: torch.Tensor, t: float) -> dict:
    """Per-draw values (float64 numpy, (B,)) at y = x + √t z: ``energy`` U(y, t) (nats,
    unnormalized), ``eq11`` ||z - √t ∇_y U||², ``eq12`` d - 2t ∂_t U - √t <∇_y U, z>, ``gap``
    eq11 - eq12. x, z (B, C, H, W) on the model's device; float32 for networks."""
    d = x[0].numel()
    s = math.sqrt(t)
    y = x + s * z
    tt = torch.full((x.shape[0],), float(t), device=x.device, dtype=x.dtype)
    u, gy, gt = _energy_and_scores(model, y, tt)
    u, gy, gt, z64 = u.detach().double(), gy.detach().double().flatten(1), gt.detach().double(), z.double().flatten(1)
    eq11 = ((z64 - s * gy) ** 2).sum(1)
    eq12 = d - 2.0 * t * gt - s * (gy * z64).sum(1)
    return {"energy": u.cpu().numpy(), "eq11": eq11.cpu().numpy(), "eq12": eq12.cpu().numpy(),
            "gap": (eq11 - eq12).cpu().numpy()}


def image_curves(model, images, noises, ts, *, batch_size: int = 256, device=None) -> dict:
    """Per image and t, the mean over draws and its standard error of each of :data:`STATS`.

    images (n, C, H, W); noises: list of n arrays (k, C, H, W) (k ≥ 1, may differ per
    image). Returns {stat: (n, T) means, stat + '_se': (n, T) standard errors} (float64;
    SE NaN for one draw)."""
    dev = torch.device("cpu") if device is None else torch.device(device)
    n, T = len(images), len(ts)
    # (image, draw) pairs, flattened and batched
    owner = np.concatenate([np.full(len(z), i) for i, z in enumerate(noises)])
    zs = np.concatenate(noises).astype(np.float32)
    xs = np.asarray(images, np.float32)
    sums = {s: np.zeros((n, T)) for s in STATS}
    sq = {s: np.zeros((n, T)) for s in STATS}
    counts = np.bincount(owner, minlength=n).astype(np.float64)
    for j, t in enumerate(ts):
        for a in range(0, len(zs), batch_size):
            own = owner[a:a + batch_size]
            x = torch.from_numpy(xs[own]).to(dev)
            z = torch.from_numpy(zs[a:a + batch_size]).to(dev)
            vals = per_draw(model, x, z, float(t))
            for s in STATS:
                v = vals[s]
                if not np.isfinite(v).all():
                    raise DsmError(f"dimensionality: non-finite {s} at t={t:g} for image "
                                   f"{int(own[np.flatnonzero(~np.isfinite(v))[0]])}")
                np.add.at(sums[s][:, j], own, v)
                np.add.at(sq[s][:, j], own, v * v)
    out = {}
    for s in STATS:
        mean = sums[s] / counts[:, None]
        var = np.where(counts[:, None] > 1,
                       np.clip(sq[s] / counts[:, None] - mean ** 2, 0, None) * counts[:, None]
                       / np.maximum(counts[:, None] - 1, 1), np.nan)
        out[s], out[s + "_se"] = mean, np.sqrt(var / counts[:, None])
    return out


def average_curve(per_image: dict) -> dict:
    """The mean over images of per-image means, with the standard error over images."""
    out = {}
    for s in STATS:
        m = per_image[s]
        out[s] = m.mean(0)
        out[s + "_se"] = m.std(0, ddof=1) / math.sqrt(len(m)) if len(m) > 1 else np.full(m.shape[1], np.nan)
    return out


def agreement(gap, gap_se, d: int, rel_tol: float) -> dict:
    """Where eq. 11 and eq. 12 agree: statistically (|gap| ≤ 3 SE) and practically
    (|gap| ≤ rel_tol · d); arrays over t."""
    gap, gap_se = np.asarray(gap), np.asarray(gap_se)
    stat = np.abs(gap) <= 3 * np.nan_to_num(gap_se, nan=0.0)
    return {"statistical": stat, "practical": np.abs(gap) <= rel_tol * d}


def _intervals(ts, mask) -> list:
    """Contiguous runs of True in ``mask`` as [t_first, t_last] pairs."""
    runs, start = [], None
    for i, m in enumerate(list(mask) + [False]):
        if m and start is None:
            start = i
        if not m and start is not None:
            runs.append([float(ts[start]), float(ts[i - 1])])
            start = None
    return runs


# --- the pipeline stage -------------------------------------------------------------------

def fig5_params(cfg: dict) -> dict:
    """``figures.fig5`` of a scale section, validated, with the schema's defaults."""
    from dsm.config import resolve_section

    p = resolve_section(((cfg or {}).get("figures") or {}).get("fig5"), "fig5", "figures.fig5")
    lo, hi = map(float, p["log10_t"])
    if not lo < hi:
        raise DsmError(f"figures.fig5.log10_t: expected [lo, hi] with lo < hi, got {p['log10_t']}")
    return p


def _curve_rows(name, kind, image_index, image_id, ts, model_stats, exact_stats, c, d, rel_tol) -> list:
    rows = []
    ok = agreement(model_stats["gap"], model_stats["gap_se"], d, rel_tol)
    for j, t in enumerate(ts):
        r = {"curve": name, "kind": kind, "image_index": image_index, "image_id": image_id,
             "t": float(t), "d": d,
             "logp_db_per_dim": float(units.logp_db_per_dim(model_stats["energy"][j] + c, d)),
             "logp_se_db": float(10 * model_stats["energy_se"][j] / (d * units.LN10)),
             "d_eff_eq11": model_stats["eq11"][j], "d_eff_eq11_se": model_stats["eq11_se"][j],
             "d_eff_eq12": model_stats["eq12"][j], "d_eff_eq12_se": model_stats["eq12_se"][j],
             "gap": model_stats["gap"][j], "gap_se": model_stats["gap_se"][j],
             "agree_statistical": bool(ok["statistical"][j]), "agree_practical": bool(ok["practical"][j])}
        if exact_stats is not None:
            r.update({"exact_logp_db_per_dim": float(units.logp_db_per_dim(exact_stats["energy"][j], d)),
                      "exact_logp_se_db": float(10 * exact_stats["energy_se"][j] / (d * units.LN10)),
                      "exact_d_eff_eq11": exact_stats["eq11"][j], "exact_d_eff_eq11_se": exact_stats["eq11_se"][j],
                      "exact_d_eff_eq12": exact_stats["eq12"][j], "exact_d_eff_eq12_se": exact_stats["eq12_se"][j],
                      "exact_gap": exact_stats["gap"][j], "exact_gap_se": exact_stats["gap_se"][j]})
        rows.append(r)
    return rows


def _pick(stats: dict, i: int) -> dict:
    return {k: v[i] for k, v in stats.items()}


def curve_summary(df, d: int, rel_tol: float, prefix: str = "") -> dict:
    """Largest |eq. 11 − eq. 12| of the curves in ``df`` and where the average curve agrees;
    the same restricted to the model's training range of t (``in_training_range``)."""
    out = _curve_summary(df, d, rel_tol, prefix)
    if "in_training_range" in df and df["in_training_range"].any() and not df["in_training_range"].all():
        inside = _curve_summary(df[df["in_training_range"]], d, rel_tol, prefix)
        out["within_training_range"] = {k: inside[k] for k in ("largest_disagreement", "average_curve",
                                                                "fraction_of_points_agreeing_statistically",
                                                                "fraction_of_points_agreeing_practically")}
    return out


def _curve_summary(df, d: int, rel_tol: float, prefix: str = "") -> dict:
    gap, se = df[prefix + "gap"].to_numpy(), df[prefix + "gap_se"].to_numpy()
    i = int(np.argmax(np.abs(gap)))
    row = df.iloc[i]
    worst = {"gap": float(gap[i]), "gap_over_d": float(gap[i] / d), "gap_se": float(se[i]),
             "z": float(gap[i] / se[i]) if se[i] > 0 else None, "t": float(row["t"]),
             "curve": str(row["curve"]), "d_eff_eq11": float(row[prefix + "d_eff_eq11"]),
             "d_eff_eq12": float(row[prefix + "d_eff_eq12"])}
    avg = df[df["kind"] == "average"]
    ts = avg["t"].to_numpy()
    ok = agreement(avg[prefix + "gap"], avg[prefix + "gap_se"], d, rel_tol)
    z = np.abs(gap) / np.where(se > 0, se, np.nan)
    return {"largest_disagreement": worst,
            "max_abs_gap_over_d_by_curve": {str(k): float(np.abs(g[prefix + "gap"]).max() / d)
                                            for k, g in df.groupby("curve", sort=False)},
            "average_curve": {"agree_statistical_t_intervals": _intervals(ts, ok["statistical"]),
                              "agree_practical_t_intervals": _intervals(ts, ok["practical"]),
                              "disagree_statistical_at_t": [float(t) for t, m in zip(ts, ok["statistical"]) if not m],
                              "max_abs_gap_over_d": float(np.abs(avg[prefix + "gap"]).max() / d)},
            "fraction_of_points_agreeing_statistically": float(np.mean(np.nan_to_num(z, nan=0.0) <= 3)),
            "fraction_of_points_agreeing_practically": float(np.mean(np.abs(gap) <= rel_tol * d))}


def headline(details: dict, in_training_range) -> dict:
    """The headline numbers (see the module's docstring) from the details of
    :func:`dimensionality_from_params`; ``in_training_range``: the curves' flags (all, some
    or none of the points inside the model's training range of t)."""
    d = int(details["d"])
    model = details["model_consistency"]
    flags = np.asarray(in_training_range, bool)
    if flags.all():
        trained = model["largest_disagreement"]
    elif flags.any():
        trained = model["within_training_range"]["largest_disagreement"]
    else:
        trained = None
    from dsm.headline import Metric

    out = {"max_abs_gap_dims": Metric(abs(model["largest_disagreement"]["gap"])),
           "trained_max_abs_gap_dims": Metric(abs(trained["gap"]) if trained else None),
           "agreeing_fraction": Metric(model["fraction_of_points_agreeing_statistically"])}
    if "exact_consistency" in details:
        out["exact_max_abs_gap_dims"] = Metric(abs(details["exact_consistency"]["largest_disagreement"]["gap"]))
        err = details["model_vs_exact_within_training_range"]["max_abs_d_eff_eq11_error_over_d"]
        out["d_eff_max_abs_err_dims"] = Metric(err * d)
    return out


D_EFF_COLUMNS = ("d_eff_eq11", "d_eff_eq12", "exact_d_eff_eq11", "exact_d_eff_population")


def d_eff_table(df):
    """The test-average curve of d_eff against t (a DVC plot): columns ``t`` and
    :data:`D_EFF_COLUMNS` (dimensions; empty where there is no exact density)."""
    avg = df[df["kind"] == "average"].sort_values("t")
    out = avg[["t"]].copy()
    for col in D_EFF_COLUMNS:
        out[col] = avg[col] if col in avg else None
    return out


def dimensionality_from_params(cfg: dict, model, norm, data, examples, out: dict, device=None) -> dict:
    """`dsm dimensionality`: Figure 5's curves of the full energy model ``model`` (model.pt)
    normalized by ``norm`` (its JSON), for the reference images of ``examples`` and the
    test-set average. ``out``: paths {curves (Parquet), details (JSON), and optionally
    metrics (headline JSON), d_eff (CSV)}. Returns the details."""
    import pandas as pd

    from dsm.analysis.denoising import training_t_range
    from dsm.data.exact import ExactModel, exact_density
    from dsm.evaluate import read_norm
    from dsm.io import code_version, sha256_file, sha256_json, write_json, write_parquet
    from dsm.modelfile import load_energy_model
    from dsm.outputs import preflight
    from dsm.runtime import resolve_device, stage_threads

    preflight({out["curves"]: "parquet", out["details"]: "json", out.get("metrics"): "json",
               out.get("d_eff"): "text"})
    p = fig5_params(cfg)
    stage_threads(cfg, "evaluate")
    dev = resolve_device(device if device is not None else cfg.get("device", "auto"))
    net, payload, dev = load_energy_model(model, dev)
    model_sha = sha256_file(model)
    c = float(read_norm(norm, model_sha)["c_nats"])
    test = open_test_part(data)
    if list(test.shape) != list(payload["shape"]):
        raise DsmError(f"{test.path}: images {tuple(test.shape)} do not match the model's {tuple(payload['shape'])}")
    refs = read_examples(examples)
    for e in refs:
        if not 0 <= e["image_index"] < len(test):
            raise DsmError(f"{examples}: image_index {e['image_index']} outside the test set ({len(test)} images)")
    ts = t_grid(p)
    d, shape, seed, bs = test.d, tuple(test.shape), int(p["seed"]), int(p["batch_size"])
    rel_tol = float(p["agreement_tol"])
    n_avg = min(int(p["n_average"]), len(test))
    avg_idx = np.arange(n_avg)
    ref_idx = np.array([e["image_index"] for e in refs], np.int64)
    ref_noise = [draw_noise(seed, i, int(p["n_noise"]), shape) for i in ref_idx]
    avg_noise = [draw_noise(seed, i, int(p["n_noise_average"]), shape) for i in avg_idx]
    exact = exact_density(test.meta)
    runs = {"model": net} | ({"exact": ExactModel(exact)} if exact is not None else {})
    stats = {}
    for name, m in runs.items():
        print(f"dimensionality: {name}: {len(ref_idx)} reference images x {p['n_noise']} draws, "
              f"{n_avg} test images x {p['n_noise_average']} draws, {len(ts)} noise levels", file=sys.stderr)
        stats[name] = (image_curves(m, test.images(ref_idx), ref_noise, ts, batch_size=bs, device=dev),
                       average_curve(image_curves(m, test.images(avg_idx), avg_noise, ts, batch_size=bs,
                                                  device=dev)))
    rows = []
    for i, e in enumerate(refs):
        rows += _curve_rows(f"image {e['image_index']}", "reference", e["image_index"], e["image_id"], ts,
                            _pick(stats["model"][0], i),
                            _pick(stats["exact"][0], i) if exact is not None else None, c, d, rel_tol)
    rows += _curve_rows("test average", "average", -1, "", ts, stats["model"][1],
                        stats["exact"][1] if exact is not None else None, c, d, rel_tol)
    df = pd.DataFrame(rows)
    t_range = training_t_range(model)
    df["in_training_range"] = ((df["t"] >= t_range[0]) & (df["t"] <= t_range[1])) if t_range else True
    if exact is not None and hasattr(exact, "d_eff"):
        pop = [exact.d_eff(float(t), n=int(p["n_population"]), seed=seed) for t in ts]
        avg = df["kind"] == "average"
        df.loc[avg, "exact_d_eff_population"] = np.tile([m for m, _ in pop], 1)
        df.loc[avg, "exact_d_eff_population_se"] = [s for _, s in pop]
    df["checkpoint_sha256"], df["code_version"] = model_sha, code_version()
    write_parquet(out["curves"], df)
    metrics = {
        "units": "log p in dB/dim (-10 (U + c) / (d ln 10)); d_eff in dimensions (of d)",
        "eq11": "E_z ||x - x̂(x + √t z, t)||² / t, x̂ = y - t ∇_y U",
        "eq12": "d - 2 t d/dt E_z[U(x + √t z, t)] = d - E_z[2 t ∂_t U + √t <∇_y U, z>] (network scores)",
        "agreement": f"statistical: |eq11 - eq12| <= 3 SE (paired over draws; over images for the "
                     f"average); practical: |eq11 - eq12| <= {rel_tol} d",
        "d": d, "t_grid": {"log10_t": [float(x) for x in p["log10_t"]], "points": int(p["points"])},
        "n_noise": int(p["n_noise"]), "n_average": n_avg, "n_noise_average": int(p["n_noise_average"]),
        "seed": seed, "c_nats": c, "reference_images": refs, "training_t_range": t_range,
        "model": {"path": str(model), "sha256": model_sha}, "dataset": test.meta.get("source"),
        "params_sha256": sha256_json(cfg), "code_version": code_version(),
        "model_consistency": curve_summary(df, d, rel_tol),
    }
    if exact is not None:
        metrics["exact_consistency"] = curve_summary(df, d, rel_tol, prefix="exact_")
        inside = df[df["in_training_range"]] if df["in_training_range"].any() else df
        err = inside["d_eff_eq11"] - inside["exact_d_eff_eq11"]
        k = int(np.argmax(np.abs(err.to_numpy())))
        metrics["model_vs_exact_within_training_range"] = {
            "max_abs_d_eff_eq11_error_over_d": float(abs(err.iloc[k]) / d), "at_t": float(inside["t"].iloc[k]),
            "curve": str(inside["curve"].iloc[k]),
            "max_abs_logp_error_db": float(np.abs(inside["logp_db_per_dim"]
                                                  - inside["exact_logp_db_per_dim"]).max())}
    write_json(out["details"], metrics)
    if out.get("d_eff") is not None:
        from dsm.io import write_text

        write_text(out["d_eff"], d_eff_table(df).to_csv(index=False, float_format="%.8g"))
    if out.get("metrics") is not None:
        from dsm.headline import write_metrics_dir

        write_metrics_dir(out["metrics"], headline(metrics, df["in_training_range"]))
    w = metrics["model_consistency"]["largest_disagreement"]
    print(f"dimensionality: largest |eq11 - eq12| = {abs(w['gap']):.3g} ({abs(w['gap_over_d']):.3g} d) "
          f"at t = {w['t']:.3g} ({w['curve']}) -> {out['curves']}", file=sys.stderr)
    return metrics
