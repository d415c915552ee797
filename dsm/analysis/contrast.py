"""Figure 4's data: log p under changes of contrast and brightness, and log p against
sparsity (docs/theory.md#the-analyses; paper §3.2, App. B.3).

**Contrast and brightness.** For an image x with pixels in [0, 1] and mean pixel value
x̄ (over all pixels and channels), the transformed image is

    T_{a,b}(x) = a (x − x̄) + b

a: contrast relative to the image's own (a = 1 keeps it, a → 0 tends to the flat image),
b: the new mean brightness (b = ½ is mid-grey; the original image is the point
(a, b) = (1, x̄)). Changing contrast around the image's mean, not around 0, keeps the two
axes separate: a alone scales the image's content, b alone shifts it. Pixels are not
clipped to [0, 1] (the density is defined on all of R^d; on ``field`` the exact density is
too). log p is the full energy model's one-shot estimate at t = 0, normalized by its
constant c (``results/<scale>/full/norm.json``), in dB/dim; on ``field`` the exact log p
is given beside it.

* ``grid``: T_{a,b}(x) on the grid contrast × brightness for one reference image
  (``figures.fig4.image``: its position in the examples list; null = the middle one);
* ``slice``: b = ``slice_brightness`` (½) over the contrast grid for every reference image.

Contrasts are ``contrast_points`` log-spaced values in [contrast[0], contrast[1]],
brightnesses ``brightness_points`` evenly spaced values in [brightness[0], brightness[1]].

**Sparsity.** The participation ratio of weighted multi-scale wavelet coefficients
(:mod:`dsm.analysis.sparsity`) of every test image in the full model's per-image table
(``results/<scale>/full/logp-test.parquet``), against its log p, with Pearson and
Spearman correlations (and on ``field`` the same with the exact log p). The ratio does not
depend on a or b (details are linear in x and the low-pass is left out).

``dsm contrast`` writes ``results/<scale>/fig4/affine.parquet``,
``results/<scale>/fig4/sparsity.parquet``, ``details.json`` (settings, per-slice numbers,
the correlations with their sample sizes, provenance) and ``metrics/``, the headline
numbers (DVC metrics, :func:`headline`; one file each, dsm.headline): ``pearson_r`` and
``spearman_rho`` (with ``n``, the test images) of log p against
the participation ratio over the test images, and on an exact source ``exact_pearson_r``,
``exact_spearman_rho`` (the same with the exact log p) and ``affine_max_abs_err_db_per_dim``
(the largest |model − exact| log p over the contrast/brightness grid and slices).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from dsm import units
from dsm.errors import DsmError

CONVENTION = "T_{a,b}(x) = a (x - mean(x)) + b: contrast a around the image's mean pixel value, " \
             "b the new mean brightness; pixels not clipped"


def fig4_params(cfg: dict) -> dict:
    """``figures.fig4`` of a scale section, validated, with the schema's defaults."""
    from dsm.config import resolve_section

    p = resolve_section(((cfg or {}).get("figures") or {}).get("fig4"), "fig4", "figures.fig4")
    for key in ("contrast", "brightness"):
        lo, hi = map(float, p[key])
        if not lo < hi:
            raise DsmError(f"figures.fig4.{key}: expected [lo, hi] with lo < hi, got {p[key]}")
    if float(p["contrast"][0]) <= 0:
        raise DsmError(f"figures.fig4.contrast: contrasts must be > 0 (log-spaced), got {p['contrast']}")
    return p


def contrasts(p: dict) -> np.ndarray:
    return np.geomspace(float(p["contrast"][0]), float(p["contrast"][1]), int(p["contrast_points"]))


def brightnesses(p: dict) -> np.ndarray:
    return np.linspace(float(p["brightness"][0]), float(p["brightness"][1]), int(p["brightness_points"]))


def affine(x: np.ndarray, a, b) -> np.ndarray:
    """T_{a,b}(x) = a (x − x̄) + b for one image x (C, H, W) and arrays a, b of equal length:
    float32 (len(a), C, H, W)."""
    x = np.asarray(x, np.float64)
    a, b = np.atleast_1d(np.asarray(a, np.float64)), np.atleast_1d(np.asarray(b, np.float64))
    centred = x - x.mean()
    return (a[:, None, None, None] * centred[None] + b[:, None, None, None]).astype(np.float32)


def log_p(model, c_nats: float, images: np.ndarray, *, batch_size: int = 256, device=None) -> np.ndarray:
    """One-shot log p (dB/dim) at t = 0 of images (n, C, H, W): -10 (U(x, 0) + c) / (d ln 10)."""
    import torch

    from dsm.evaluate import energy

    dev = torch.device("cpu") if device is None else torch.device(device)
    d = int(np.prod(images.shape[1:]))
    out = np.empty(len(images))
    for i in range(0, len(images), batch_size):
        y = torch.from_numpy(np.ascontiguousarray(images[i:i + batch_size])).to(dev)
        u = energy(model, y, 0.0).double().cpu().numpy()
        out[i:i + len(u)] = units.logp_db_per_dim(u + c_nats, d)
    return out


def correlations(x, y) -> dict:
    """Pearson and Spearman correlations of finite pairs (None below 3 pairs), with the 95 %
    interval of Pearson's r by Fisher's z (atanh r ± 1.96 / sqrt(n - 3); None below 4 pairs)."""
    from scipy import stats

    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    ok = np.isfinite(x) & np.isfinite(y)
    x, y = x[ok], y[ok]
    if len(x) < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return {"n": len(x), "pearson_r": None, "spearman_rho": None, "pearson_ci95": None}
    r = float(stats.pearsonr(x, y)[0])
    ci = None
    if len(x) > 3 and abs(r) < 1:
        z, half = np.arctanh(r), 1.959964 / np.sqrt(len(x) - 3)
        ci = [float(np.tanh(z - half)), float(np.tanh(z + half))]
    return {"n": len(x), "pearson_r": r, "spearman_rho": float(stats.spearmanr(x, y)[0]), "pearson_ci95": ci}


def headline(details: dict) -> dict:
    """The headline numbers (see the module's docstring) from the details of
    :func:`contrast_from_params`."""
    from dsm.headline import Metric

    s = details["sparsity"]
    out = {}
    for prefix, who in (("", "model"), ("exact_", "exact")):
        if s.get(who) is not None:
            c = s[who]
            out[f"{prefix}pearson_r"] = Metric(c["pearson_r"], n=c.get("n"))
            out[f"{prefix}spearman_rho"] = Metric(c["spearman_rho"], n=c.get("n"))
    if "grid_model_minus_exact_db" in details:
        out["affine_max_abs_err_db_per_dim"] = Metric(details["grid_model_minus_exact_db"]["max_abs"])
    return out


def contrast_from_params(cfg: dict, model, norm, data, examples, logp, out: dict, device=None) -> dict:
    """`dsm contrast`: Figure 4's tables for the full energy model ``model`` (model.pt) with
    its normalization JSON ``norm``, the reference images ``examples`` and the test set's
    per-image table ``logp``. ``out``: paths {affine, sparsity (Parquet), details (JSON),
    metrics (headline JSON; optional)}. Returns the details."""
    import pandas as pd

    from dsm.analysis.reference import open_test_part, read_examples
    from dsm.analysis.sparsity import image_participation_ratio, wavelet_levels
    from dsm.data.exact import exact_density
    from dsm.evaluate import read_norm
    from dsm.io import code_version, sha256_file, sha256_json, write_json, write_parquet
    from dsm.modelfile import load_energy_model
    from dsm.outputs import preflight
    from dsm.runtime import resolve_device, stage_threads

    preflight({out["affine"]: "parquet", out["sparsity"]: "parquet", out["details"]: "json",
               out.get("metrics"): "json"})
    p = fig4_params(cfg)
    stage_threads(cfg, "evaluate")
    dev = resolve_device(device if device is not None else cfg.get("device", "auto"))
    net, payload, dev = load_energy_model(model, dev)
    model_sha = sha256_file(model)
    c = float(read_norm(norm, model_sha)["c_nats"])
    test = open_test_part(data)
    if list(test.shape) != list(payload["shape"]):
        raise DsmError(f"{test.path}: images {tuple(test.shape)} do not match the model's {tuple(payload['shape'])}")
    refs = read_examples(examples)
    pick = len(refs) // 2 if p["image"] is None else int(p["image"])
    if not 0 <= pick < len(refs):
        raise DsmError(f"figures.fig4.image: {pick} is not a position in the {len(refs)} reference images")
    exact = exact_density(test.meta)
    bs = int(p["batch_size"])

    # --- log p(a (x - x̄) + b) ---
    a, b = contrasts(p), brightnesses(p)
    jobs = []                                       # (kind, reference, a values, b values)
    A, B = np.meshgrid(a, b, indexing="ij")
    jobs.append(("grid", refs[pick], A.ravel(), B.ravel()))
    for e in refs:
        jobs.append(("slice", e, a, np.full_like(a, float(p["slice_brightness"]))))
    rows = []
    for kind, e, aa, bb in jobs:
        x = test.images([e["image_index"]])[0]
        ys = affine(x, aa, bb)
        lp = log_p(net, c, ys, batch_size=bs, device=dev)
        ex = (units.logp_db_per_dim(np.asarray(exact.energy(ys.astype(np.float64), 0.0)), test.d)
              if exact is not None else np.full(len(ys), np.nan))
        rows.append(pd.DataFrame({"kind": kind, "image_index": e["image_index"], "image_id": e["image_id"],
                                  "image_mean": float(x.mean()), "a": aa, "b": bb, "logp_db_per_dim": lp,
                                  "exact_logp_db_per_dim": ex}))
    table = pd.concat(rows, ignore_index=True)
    table["checkpoint_sha256"], table["code_version"] = model_sha, code_version()
    write_parquet(out["affine"], table)

    # --- sparsity ---
    path = Path(logp)
    if not path.is_file():
        raise DsmError(f"{path}: per-image table of the test set not found (run `dsm evaluate --full`)")
    per_image = pd.read_parquet(path)
    missing = {"image_index", "image_id", "logp_db_per_dim"} - set(per_image.columns)
    if missing:
        raise DsmError(f"{path}: columns {sorted(missing)} missing")
    idx = per_image["image_index"].to_numpy(np.int64)
    if len(idx) and (idx.min() < 0 or idx.max() >= len(test)):
        raise DsmError(f"{path}: image_index outside the test set ({len(test)} images)")
    levels = wavelet_levels(min(test.shape[-2:]), int(p["levels"]), p["wavelet"])
    pr = np.concatenate([image_participation_ratio(test.images(idx[i:i + 4096]), levels, p["wavelet"])
                         for i in range(0, len(idx), 4096)]) if len(idx) else np.zeros(0)
    exact_col = per_image.get("exact_logp_db_per_dim")
    sparsity = pd.DataFrame({"image_index": idx, "image_id": per_image["image_id"].astype(str),
                             "participation_ratio": pr,
                             "logp_db_per_dim": per_image["logp_db_per_dim"].to_numpy(np.float64),
                             "exact_logp_db_per_dim": (exact_col.to_numpy(np.float64) if exact_col is not None
                                                       else np.full(len(idx), np.nan))})
    write_parquet(out["sparsity"], sparsity)

    ref_pos = {e["image_index"]: i for i, e in enumerate(refs)}
    slices = table[table["kind"] == "slice"]
    metrics = {
        "convention": CONVENTION, "units": "log p in dB/dim (one-shot, t = 0, normalized by c)",
        "contrast": [float(a[0]), float(a[-1]), len(a)], "brightness": [float(b[0]), float(b[-1]), len(b)],
        "slice_brightness": float(p["slice_brightness"]),
        "grid_image": refs[pick],
        "slices": [{"image_index": int(k), "position": ref_pos[int(k)],
                    "argmax_contrast": float(g["a"].iloc[int(np.argmax(g["logp_db_per_dim"]))]),
                    "logp_range_db": [float(g["logp_db_per_dim"].min()), float(g["logp_db_per_dim"].max())]}
                   for k, g in slices.groupby("image_index", sort=False)],
        "sparsity": {
            "wavelet": p["wavelet"], "levels": levels, "levels_requested": int(p["levels"]),
            "weighting": "level l (1 = finest) divided by 2^l (the release's 2^(j+1), j = l - 1); "
                         "low-pass residual excluded; mode periodization",
            "definition": "||c||_1^2 / (n ||c||_2^2)",
            "n_coefficients": int(test.d - np.prod(np.array(test.shape[-2:]) // 2 ** levels) * test.shape[0]),
            "participation_ratio_range": [float(np.nanmin(pr)), float(np.nanmax(pr))] if len(pr) else None,
            "model": correlations(pr, sparsity["logp_db_per_dim"]),
            "exact": correlations(pr, sparsity["exact_logp_db_per_dim"]) if exact is not None else None,
        },
        "model": {"path": str(model), "sha256": model_sha}, "c_nats": c, "logp_table": str(path),
        "dataset": test.meta.get("source"), "params_sha256": sha256_json(cfg), "code_version": code_version(),
    }
    if exact is not None:
        metrics["grid_model_minus_exact_db"] = {
            "mean": float((table["logp_db_per_dim"] - table["exact_logp_db_per_dim"]).mean()),
            "max_abs": float((table["logp_db_per_dim"] - table["exact_logp_db_per_dim"]).abs().max())}
    write_json(out["details"], metrics)
    if out.get("metrics") is not None:
        from dsm.headline import write_metrics_dir

        write_metrics_dir(out["metrics"], headline(metrics))
    s = metrics["sparsity"]["model"]
    print(f"contrast: {len(table)} transformed images, {len(sparsity)} test images; log p vs participation "
          f"ratio: Pearson {s['pearson_r']}, Spearman {s['spearman_rho']} -> {out['details']}", file=sys.stderr)
    return metrics
