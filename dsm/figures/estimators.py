"""The estimators figure: how far each estimator of log p is from the truth, and what it costs.

Plotting only; reads the outputs of :mod:`dsm.analysis.estimators`
(``results/<scale>/estimators.csv`` and ``estimators-images.parquet``).

Left panel: per test image, log p of each estimator of the learned model (averaged over
repeats) minus the exact log p, in dB/dim, error bars the spread across repeats, a black
bar the mean over images; on sources without an exact density, minus the one-shot value
instead. Middle panel (sources with an exact density): the same for the exact density
used as the model, with the stated tolerance as a grey band: these validate the
integrators. Right panel: wall seconds per image (log scale) of each estimator, with
its network evaluations per image and the one-shot speed-up.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from dsm.errors import DsmError
from dsm.figures.output import save_figure

ORDER = ("one-shot", "mse-bound", "ode", "sde")
STYLE = {"model": dict(color="tab:blue", label="learned model"),
         "exact": dict(color="tab:orange", label="exact density as the model")}


def _read(path, kind):
    path = Path(path)
    if not path.is_file():
        raise DsmError(f"{path}: {kind} not found (run `dsm estimators`)")
    return pd.read_csv(path) if path.suffix == ".csv" else pd.read_parquet(path)


def _errors(ax, per_image, density, names, ref, tolerance=None):
    st = STYLE[density]
    for i, name in enumerate(names):
        g = per_image[(per_image.density == density) & (per_image.estimator == name)]
        by = g.assign(err=g["logp_db_per_dim"] - g[ref]).groupby("image_index")["err"]
        mean, sd = by.mean().to_numpy(), by.std(ddof=1).fillna(0.0).to_numpy()
        xs = i + (np.linspace(-0.25, 0.25, len(mean)) if len(mean) > 1 else np.zeros(1))
        ax.errorbar(xs, mean, yerr=sd, fmt="o", ms=3, lw=0.8, color=st["color"])
        ax.hlines(mean.mean(), i - 0.35, i + 0.35, color="k", lw=1.5)
    ax.axhline(0.0, color="0.4", lw=0.8, ls="--")
    if tolerance is not None and np.isfinite(tolerance):
        ax.axhspan(-tolerance, tolerance, color="0.85", zorder=0, label=f"±{tolerance:g} dB/dim (stated tolerance)")
        ax.legend(fontsize=7, frameon=False, loc="best")
    ax.set_xticks(range(len(names)), names, fontsize=8)
    ax.set_xlim(-0.6, len(names) - 0.4)


def fig_estimators(summary: pd.DataFrame, per_image: pd.DataFrame):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [n for n in ORDER if n in set(summary["estimator"])]
    densities = [d for d in ("model", "exact") if d in set(summary["density"])]
    has_exact = bool(np.isfinite(per_image["exact_logp_db_per_dim"]).all())
    ref = "exact_logp_db_per_dim" if has_exact else "one_shot_logp_db_per_dim"
    refname = "exact log p" if has_exact else "one-shot log p"
    ncols = 1 + len(densities)
    fig, axes = plt.subplots(1, ncols, figsize=(3.7 * ncols, 3.6))
    for ax, density in zip(axes, densities):
        tol = None
        if density == "exact" and "tolerance_db_per_dim" in summary:
            tol = float(summary.loc[summary.density == "exact", "tolerance_db_per_dim"].max())
        _errors(ax, per_image, density, names, ref, tol)
        ax.set_ylabel(f"log p − {refname} (dB/dim)")
        ax.set_title(f"{STYLE[density]['label']}: error per image", fontsize=9)

    bx = axes[-1]
    width = 0.8 / len(densities)
    for j, density in enumerate(densities):
        off = (j - (len(densities) - 1) / 2) * width
        st = STYLE[density]
        rows = summary[summary.density == density].set_index("estimator").reindex(names)
        secs = rows["seconds_per_image"].to_numpy(float)
        bx.bar(np.arange(len(names)) + off, secs, width=width * 0.95, color=st["color"], label=st["label"])
        for i, (name, r) in enumerate(rows.iterrows()):
            text = f"{r['nfe_per_image']:.0f} NFE"
            if name != "one-shot" and np.isfinite(r.get("one_shot_speedup", np.nan)):
                text += f", ×{r['one_shot_speedup']:.0f}"
            bx.text(i + off, secs[i] * 1.3, text, ha="center", va="bottom", fontsize=6.5, rotation=90)
    bx.set_yscale("log")
    secs_all = summary["seconds_per_image"].to_numpy(float)
    bx.set_ylim(np.nanmin(secs_all) / 3, np.nanmax(secs_all) * 3e3)
    bx.set_xticks(range(len(names)), names, fontsize=8)
    bx.set_ylabel("wall seconds per image")
    bx.set_title("cost (×: one-shot speed-up)", fontsize=9)
    bx.legend(fontsize=7, frameon=False, loc="upper left")
    n_img, reps = int(summary["n_images"].max()), int(summary["repeats"].max())
    fig.suptitle(f"Estimators of log p on {n_img} test images (dots: mean over up to {reps} repeats, "
                 f"error bars: sd over repeats; black: mean over images)", fontsize=9)
    fig.tight_layout()
    return fig


def fig_estimators_from_params(cfg: dict, csv, images, out) -> Path:
    """`dsm fig-estimators`: the figure from the estimators stage's CSV and per-image table."""
    summary, per_image = _read(csv, "estimators table"), _read(images, "per-image estimators table")
    for col in ("density", "estimator", "seconds_per_image", "nfe_per_image"):
        if col not in summary:
            raise DsmError(f"{csv}: column {col!r} missing")
    return save_figure(fig_estimators(summary, per_image), out)
