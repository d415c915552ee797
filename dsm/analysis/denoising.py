"""Table 1: denoising PSNR of the energy and the score network across noise levels
(docs/theory.md#units, #the-analyses; paper Table 1).

At each input PSNR p of ``figures.table1.psnr`` the noise variance is ``t = 10^(-p/10)``
(peak 1: pixels in [0, 1]). Every test image x (the first ``n_images`` of the test part)
gets one noise draw z (seeded by ``noise_seed`` and the image's index in the store, the
same z at every t and for every model: the comparison is paired), ``y = x + √t z``, and

* the energy model's denoiser is ``x̂ = y - t ∇_y U(y, t)`` (Miyasawa–Tweedie),
* the score-only model's is ``x̂ = y - t s(y, t)``,
* on a source with an exact density (``field``) the optimal one ``E[x | y]``
  (:meth:`FieldDensity.denoise`) is a third row: the ceiling both networks are below.

Per image ``MSE_i = ||x̂ - x||² / d``; the table's PSNR is that of the **mean** MSE, as in
the paper: ``PSNR = -10 log10 mean_i MSE_i`` (dB). Its standard error is propagated by
the delta method from the standard error of the mean MSE over images:
``SE(PSNR) = (10 / ln 10) · SE(mean MSE) / mean MSE``, with ``SE(mean MSE) = sd_i(MSE_i) / √n``
(it covers both the choice of images and the noise draws, one draw per image). The
difference energy − score is paired (same images, same z):
``ΔPSNR = -10 log10(m_E / m_S)``, ``SE(Δ) = (10 / ln 10) · sd_i(MSE_E,i / m_E - MSE_S,i / m_S) / √n``
(delta method on the pair of means, their covariance included).

``dsm table1`` writes ``results/<scale>/table1.csv`` (one row per model and input PSNR),
``table1.md`` and ``table1.tex`` (the paper's layout: a column per input PSNR, a row per
model, ``PSNR ± SE``), ``table1.json`` (the details: the numbers, the per-PSNR difference
energy − score with its standard error, and whether the paper's claim holds: the energy
model denoises at least as well as the score model at every noise level but the smallest)
and the headline numbers (DVC metrics, dsm.headline) as a directory ``table1_metrics/``
with a folder per input PSNR p, ``psnr<+p>/`` (``psnr+90``, ``psnr-30``), of
``energy_psnr_db``, ``score_psnr_db``, ``optimal_psnr_db`` (exact sources) and
``energy_minus_score_psnr_db``, each ``{value, se, n}``.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import torch

from dsm import units
from dsm.errors import DsmError
from dsm.io import code_version, sha256_file, sha256_json, write_json, write_text

DB = 10.0 / math.log(10.0)   # d(-10 log10 m) / d(ln m), in dB
ROWS = {"energy": "energy network (y − t∇U)", "score": "score network (y − t s)",
        "optimal": "optimal (exact E[x|y])"}


def noise_variance(psnr_db: float) -> float:
    """The noise variance t whose input PSNR is ``psnr_db`` (peak 1): t = 10^(-PSNR/10)."""
    return units.noise_variance_from_psnr(float(psnr_db))


# --- per-image errors ------------------------------------------------------------------

def denoising_mse(model, images, t: float, noise, *, batch_size: int = 256, device=None) -> np.ndarray:
    """Per-image ``||x̂(y, t) - x||² / d`` (float64, (n,)) with ``y = x + √t z``.

    model: anything :func:`dsm.evaluate.denoise` accepts (an EnergyModel: y - t ∇_y U; a
    ScoreModel: y - t s; an :class:`dsm.data.exact.ExactModel`: E[x | y]).
    images, noise: (n, C, H, W) arrays (x in [0, 1], z standard normal).
    """
    from dsm.evaluate import denoise

    images, noise = np.asarray(images, np.float32), np.asarray(noise, np.float32)
    if images.shape != noise.shape:
        raise DsmError(f"denoising: images {images.shape} and noise {noise.shape} differ in shape")
    dev = torch.device("cpu") if device is None else torch.device(device)
    out = np.empty(len(images), np.float64)
    sqrt_t = math.sqrt(t)
    for i in range(0, len(images), batch_size):
        x = torch.from_numpy(images[i:i + batch_size]).to(dev)
        y = x + sqrt_t * torch.from_numpy(noise[i:i + batch_size]).to(dev)
        with torch.no_grad():
            xhat = denoise(model, y, torch.full((len(x),), t, device=dev, dtype=torch.float32))
        err = (xhat.double() - x.double()).flatten(1)
        out[i:i + len(x)] = (err ** 2).mean(1).cpu().numpy()
    if not np.isfinite(out).all():
        raise DsmError(f"denoising: non-finite denoiser output at t={t:g} "
                       f"(image {int(np.flatnonzero(~np.isfinite(out))[0])})")
    return out


# --- PSNR of the mean MSE and its standard error -----------------------------------------

def psnr_summary(mse) -> dict:
    """PSNR (dB) of the mean of per-image MSEs, and its delta-method standard error."""
    mse = np.asarray(mse, np.float64)
    n = len(mse)
    if n == 0:
        raise DsmError("denoising: no images")
    m = float(mse.mean())
    se_m = float(mse.std(ddof=1) / math.sqrt(n)) if n > 1 else float("nan")
    return {"psnr_db": float(units.psnr_db(m)), "se_db": DB * se_m / m, "mse": m, "mse_se": se_m,
            "n_images": n}


def psnr_difference(mse_a, mse_b) -> dict:
    """Paired PSNR(a) - PSNR(b) (dB) of the mean MSEs over the same images and noise, and
    its delta-method standard error (the covariance of the two means included)."""
    a, b = np.asarray(mse_a, np.float64), np.asarray(mse_b, np.float64)
    if a.shape != b.shape:
        raise DsmError(f"denoising: paired MSEs of different lengths {a.shape}, {b.shape}")
    ma, mb = a.mean(), b.mean()
    lin = a / ma - b / mb      # linearization of ln(m_a) - ln(m_b) around the means
    se = DB * float(lin.std(ddof=1)) / math.sqrt(len(a)) if len(a) > 1 else float("nan")
    return {"diff_db": float(-10.0 * math.log10(ma / mb)), "se_db": se}


def denoising_table(models: dict, images, noise, psnrs, *, batch_size: int = 256, device=None,
                    progress: bool = True) -> dict:
    """{name: {input_psnr: per-image MSE array}} for every model and input PSNR."""
    from tqdm import tqdm

    out = {name: {} for name in models}
    jobs = [(name, p) for p in psnrs for name in models]
    for name, p in tqdm(jobs, desc="table1", file=sys.stderr, disable=None if progress else True,
                        leave=False):
        out[name][float(p)] = denoising_mse(models[name], images, noise_variance(p), noise,
                                            batch_size=batch_size, device=device)
    return out


def summarize(mse: dict, psnrs) -> dict:
    """Rows, differences energy − score and the claim check from :func:`denoising_table`."""
    rows, by_psnr = [], []
    for p in psnrs:
        p = float(p)
        entry = {"input_psnr_db": p, "t": noise_variance(p)}
        for name in mse:
            s = psnr_summary(mse[name][p])
            entry[name] = s
            rows.append({"model": name, "input_psnr_db": p, "t": entry["t"], **s})
        if "energy" in mse and "score" in mse:
            d = psnr_difference(mse["energy"][p], mse["score"][p])
            d["z"] = d["diff_db"] / d["se_db"] if d["se_db"] and d["se_db"] > 0 else None
            entry["energy_minus_score"] = d
        if "optimal" in mse:
            entry["gap_to_optimal_db"] = {name: entry["optimal"]["psnr_db"] - entry[name]["psnr_db"]
                                          for name in mse if name != "optimal"}
        by_psnr.append(entry)
    result = {"rows": rows, "by_psnr": by_psnr}
    if all("energy_minus_score" in e for e in by_psnr):
        result["claim"] = claim_check(by_psnr)
    return result


def claim_check(by_psnr: list) -> dict:
    """The paper's reading of Table 1: the energy model denoises at least as well as the
    score model at every noise level except the smallest (the highest input PSNR)."""
    order = sorted(by_psnr, key=lambda e: -e["input_psnr_db"])
    smallest_noise, rest = order[0], order[1:]
    diffs = {e["input_psnr_db"]: e["energy_minus_score"] for e in order}
    below = [e["input_psnr_db"] for e in rest if e["energy_minus_score"]["diff_db"] < 0]
    below_2se = [e["input_psnr_db"] for e in rest
                 if e["energy_minus_score"]["diff_db"] < -2 * e["energy_minus_score"]["se_db"]]
    return {
        "statement": "energy PSNR >= score PSNR at every input PSNR except the highest (smallest noise)",
        "excluded_input_psnr_db": smallest_noise["input_psnr_db"],
        "holds": not below, "holds_within_2se": not below_2se,
        "energy_below_score_at": below, "energy_below_score_by_more_than_2se_at": below_2se,
        "diff_db_at_excluded": diffs[smallest_noise["input_psnr_db"]],
    }


def row_name(input_psnr_db: float) -> str:
    """The headline file of one input PSNR: ``psnr+90``, ``psnr+0``, ``psnr-30``."""
    return f"psnr{float(input_psnr_db):+g}"


def headline(summary: dict) -> dict:
    """``{row_name(p): {energy_psnr_db, score_psnr_db, [optimal_psnr_db],
    energy_minus_score_psnr_db}}`` of :class:`dsm.headline.Metric` (PSNR or difference,
    standard error, images) from :func:`summarize`."""
    from dsm.headline import Metric

    out = {}
    for e in summary["by_psnr"]:
        row = {f"{name}_psnr_db": Metric(e[name]["psnr_db"], se=e[name]["se_db"], n=e[name]["n_images"])
               for name in ("energy", "score", "optimal") if name in e}
        if "energy_minus_score" in e:
            d = e["energy_minus_score"]
            row["energy_minus_score_psnr_db"] = Metric(d["diff_db"], se=d["se_db"], n=e["energy"]["n_images"])
        out[row_name(e["input_psnr_db"])] = row
    return out


# --- writing the table ------------------------------------------------------------------

def _cell(s: dict) -> str:
    return f"{s['psnr_db']:.2f} ± {s['se_db']:.2g}"


def _psnr_label(p: float) -> str:
    return f"{p:g}"


def table_markdown(summary: dict, names) -> str:
    by = summary["by_psnr"]
    head = "| output PSNR (dB) at input PSNR → | " + " | ".join(_psnr_label(e["input_psnr_db"]) for e in by) + " |"
    lines = [head, "|---|" + "---:|" * len(by)]
    for name in names:
        lines.append(f"| {ROWS.get(name, name)} | " + " | ".join(_cell(e[name]) for e in by) + " |")
    if all("energy_minus_score" in e for e in by):
        lines.append("| energy − score | " + " | ".join(
            f"{e['energy_minus_score']['diff_db']:+.2f} ± {e['energy_minus_score']['se_db']:.2g}" for e in by) + " |")
    return "\n".join(lines) + "\n"


def table_latex(summary: dict, names) -> str:
    by = summary["by_psnr"]
    cols = "l" + "r" * len(by)
    tex = lambda s: s.replace("∇", r"$\nabla$").replace("−", "-").replace("|", r"$|$")
    lines = [r"\begin{tabular}{" + cols + "}", r"\hline",
             "Input PSNR (dB) & " + " & ".join(_psnr_label(e["input_psnr_db"]) for e in by) + r" \\", r"\hline"]
    for name in names:
        cells = [f"{e[name]['psnr_db']:.2f} $\\pm$ {e[name]['se_db']:.2g}" for e in by]
        lines.append(tex(ROWS.get(name, name)) + " & " + " & ".join(cells) + r" \\")
    if all("energy_minus_score" in e for e in by):
        cells = [f"{e['energy_minus_score']['diff_db']:+.2f} $\\pm$ {e['energy_minus_score']['se_db']:.2g}"
                 for e in by]
        lines += [r"\hline", "energy - score & " + " & ".join(cells) + r" \\"]
    lines += [r"\hline", r"\end{tabular}"]
    return "\n".join(lines) + "\n"


def table_csv(summary: dict) -> str:
    cols = ["model", "input_psnr_db", "t", "psnr_db", "se_db", "mse", "mse_se", "n_images"]
    lines = [",".join(cols)]
    for r in summary["rows"]:
        lines.append(",".join(r[c] if isinstance(r[c], str) else f"{r[c]:.10g}" for c in cols))
    return "\n".join(lines) + "\n"


# --- the pipeline stage -------------------------------------------------------------------

def training_t_range(model_file) -> list | None:
    """[t_min, t_max] the model was trained on (its model.pt), or None if not recorded:
    outside it a network extrapolates."""
    from dsm.modelfile import read_model_file

    train = (read_model_file(model_file).get("config") or {}).get("train") or {}
    if "t_min" in train and "t_max" in train:
        return [float(train["t_min"]), float(train["t_max"])]
    return None


def table1_params(cfg: dict) -> dict:
    """``figures.table1`` of a scale section, validated, with the schema's defaults."""
    from dsm.config import resolve_section

    p = resolve_section(((cfg or {}).get("figures") or {}).get("table1"), "table1", "figures.table1")
    if len(set(map(float, p["psnr"]))) != len(p["psnr"]):
        raise DsmError(f"figures.table1.psnr: input PSNRs must be distinct, got {p['psnr']}")
    return p


def table1_from_params(cfg: dict, energy, score, data, out: dict, device=None) -> dict:
    """`dsm table1`: the table for the full energy model ``energy`` and the score-only model
    ``score`` (model.pt files) on the first ``figures.table1.n_images`` test images of the
    store ``data``. ``out``: paths {csv, md, tex, json (details), metrics (headline
    directory; optional)}."""
    from dsm.data.exact import ExactModel, exact_density
    from dsm.data.store import open_store
    from dsm.modelfile import load_model
    from dsm.outputs import preflight
    from dsm.runtime import image_noise, resolve_device, stage_threads

    preflight({out["csv"]: "text", out["md"]: "text", out["tex"]: "text", out["json"]: "json"},
              dirs=[out.get("metrics")])
    p = table1_params(cfg)
    stage_threads(cfg, "evaluate")
    dev = resolve_device(device if device is not None else cfg.get("device", "auto"))
    models, files = {}, {}
    for name, path, kind in (("energy", energy, "energy"), ("score", score, "score")):
        model, payload = load_model(path, dev)
        if payload.get("kind") != kind:
            raise DsmError(f"{path}: a {payload.get('kind')} model, expected the {kind} model")
        models[name], files[name] = model, {"path": str(path), "sha256": sha256_file(path),
                                            "shape": payload["shape"]}
    if files["energy"]["shape"] != files["score"]["shape"]:
        raise DsmError(f"{score}: image shape {files['score']['shape']} differs from the energy model's "
                       f"{files['energy']['shape']}")
    test = open_store(Path(data) / "test") if (Path(data) / "test").exists() else open_store(data)
    if list(test.shape) != list(files["energy"]["shape"]):
        raise DsmError(f"{test.path}: images {tuple(test.shape)} do not match the models' "
                       f"{tuple(files['energy']['shape'])}")
    n = min(int(p["n_images"]), len(test))
    idx = np.arange(n, dtype=np.int64)
    images = test.images(idx)
    noise = image_noise(int(p["noise_seed"]), idx, tuple(test.shape))
    exact = exact_density(test.meta)
    if exact is not None:
        models["optimal"] = ExactModel(exact)
    mse = denoising_table(models, images, noise, p["psnr"], batch_size=int(p["batch_size"]), device=dev)
    summary = summarize(mse, p["psnr"])
    t_range = training_t_range(energy)
    for e in summary["by_psnr"]:
        e["in_training_range"] = bool(t_range[0] <= e["t"] <= t_range[1]) if t_range else None
    names = list(models)
    write_text(out["csv"], table_csv(summary))
    write_text(out["md"], table_markdown(summary, names))
    write_text(out["tex"], table_latex(summary, names))
    result = {
        "units": "PSNR in dB, peak 1 (pixels in [0, 1]): -10 log10 of the mean over images of ||x̂ - x||²/d",
        "standard_error": "delta method on the mean MSE over images (one noise draw per image); "
                          "energy - score paired on the same images and noise",
        "input_psnr_db": [float(x) for x in p["psnr"]],
        "training_t_range": t_range,
        "n_images": n, "noise_seed": int(p["noise_seed"]), "data": str(test.path),
        "dataset": test.meta.get("source"), "models": files,
        "params_sha256": sha256_json(cfg), "code_version": code_version(),
        **{k: summary[k] for k in ("by_psnr", "claim") if k in summary},
    }
    write_json(out["json"], result)
    if out.get("metrics") is not None:
        from dsm.headline import write_metrics_dir

        write_metrics_dir(out["metrics"], headline(summary))
    print("table1:\n" + table_markdown(summary, names), file=sys.stderr)
    return result
