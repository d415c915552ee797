"""Figure 3: the distribution of log p over the test set, its Gumbel fit, and images along it.

Plotting only. Reads the full model's per-image table of the whole test set
(``results/<scale>/full/logp-test.parquet``), the Gumbel fit (``dsm gumbel``'s details:
``results/<scale>/full/gumbel-details.json``), the reference images (``dsm examples``:
``examples.json``), the probes (``dsm probes``: ``probes.json``) and the prepared store
(for the pixels). Beside the PDF it writes the histogram it draws as a CSV (a DVC plot):
one row per bin, ``logp_db_per_dim`` (the bin's centre), ``bin_lo``, ``bin_hi``, ``density``
(the test images' histogram, per dB/dim, integrating to 1), ``gumbel_density`` (the fitted
Gumbel's probability of the bin divided by its width: the fit on the histogram's footing)
and on an exact source ``exact_density`` (the histogram of the exact log p), else empty.

Layout (the paper's Figure 3): below, the histogram of log p in dB/dim (a density: the
bars integrate to 1) with the fitted ``gumbel_r`` density; on a source with an exact
density (``field``) also the histogram of the exact log p of the same images (a gray
step line). Above, a row of images ordered by log p, each with an arrow to its log p on
the axis and its value: the uniform-noise probe (leftmost), the reference test images
(evenly spaced in log p), the constant-0.5 probe (rightmost). A probe far outside the
data (more than the data's range beyond it) is drawn at the border with its value, so
the histogram stays readable; ``figures.fig3.lim`` fixes the limits instead.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from dsm.analysis.gumbel import LOGP, check_values, gumbel_density
from dsm.analysis.probes import probe_images
from dsm.errors import DsmError
from dsm.figures.images import show_image
from dsm.figures.output import save_figure

EXACT = "exact_logp_db_per_dim"


def fig3_params(cfg: dict) -> dict:
    """``figures.fig3`` of a scale section, validated, with the schema's defaults."""
    from dsm.config import resolve_section

    return resolve_section(((cfg or {}).get("figures") or {}).get("fig3"), "fig3", "figures.fig3")


def _limits(values, probes, lim):
    """x limits and, per probe, where its arrow lands (inside, or at the border)."""
    lo, hi = float(np.min(values)), float(np.max(values))
    if lim is not None:
        lo, hi = float(lim[0]), float(lim[1])
    else:
        width = hi - lo or 1.0
        for v in probes:                      # take in the probes that are not far away
            if lo - width <= v < lo:
                lo = v
            if hi < v <= hi + width:
                hi = v
        pad = 0.04 * (hi - lo)
        lo, hi = lo - pad, hi + pad
    return lo, hi


def histogram_bins(values, items: list[dict], p: dict, exact=None) -> np.ndarray:
    """The bin edges of Figure 3 (``figures.fig3.bins`` bins between the limits of
    :func:`_limits`: the data, exact values included, and the probes near it)."""
    values = np.asarray(values, np.float64)
    data_values = values if exact is None else np.concatenate([values, np.asarray(exact, np.float64)])
    lo, hi = _limits(data_values, [it["logp"] for it in items if it["probe"]], p["lim"])
    return np.linspace(lo, hi, int(p["bins"]) + 1)


def histogram_table(values, bins, loc: float, scale: float, exact=None):
    """The histogram of Figure 3 as a table (pandas DataFrame, one row per bin): centre
    ``logp_db_per_dim``, ``bin_lo``, ``bin_hi``, ``density`` (values clipped to the bins, as
    drawn), ``gumbel_density`` = (F(bin_hi) - F(bin_lo)) / width of the fitted gumbel_r,
    ``exact_density`` (None without ``exact``)."""
    import pandas as pd
    from scipy import stats

    bins = np.asarray(bins, np.float64)
    lo, hi = bins[0], bins[-1]
    dens = np.histogram(np.clip(values, lo, hi), bins=bins, density=True)[0]
    cdf = stats.gumbel_r.cdf(bins, loc=loc, scale=scale)
    out = pd.DataFrame({"logp_db_per_dim": 0.5 * (bins[1:] + bins[:-1]), "bin_lo": bins[:-1],
                        "bin_hi": bins[1:], "density": dens, "gumbel_density": np.diff(cdf) / np.diff(bins)})
    out["exact_density"] = (np.histogram(np.clip(exact, lo, hi), bins=bins, density=True)[0]
                            if exact is not None else None)
    return out


def plot_fig3(values, gumbel: dict, items: list[dict], p: dict, path, exact=None, title=None,
              bins=None) -> None:
    """values: test log p (dB/dim); gumbel: the details of `dsm gumbel` (fit in dB/dim);
    items: images of the top row, each {"image": (C,H,W), "logp": dB/dim, "label": str,
    "probe": bool}, drawn in order of log p; exact: exact log p of the same test images or
    None; bins: the edges (default :func:`histogram_bins`)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import ConnectionPatch

    values = np.asarray(values, np.float64)
    if bins is None:
        bins = histogram_bins(values, items, p, exact)
    lo, hi = float(bins[0]), float(bins[-1])
    fig = plt.figure(figsize=(7.2, 5.2))
    ax = fig.add_axes([0.08, 0.25, 0.9, 0.42])
    ax.hist(np.clip(values, lo, hi), bins=bins, density=True, color="tab:blue", alpha=0.55,
            label=f"model, {len(values):,} test images")
    if exact is not None:
        ax.hist(np.clip(exact, lo, hi), bins=bins, density=True, histtype="step", color="0.25", lw=1.0,
                label="exact log p (same images)")
    grid = np.linspace(lo, hi, 600)
    fit = gumbel["gumbel_r"]
    loc, scale = fit["loc"], fit["scale"]
    curve = gumbel_density(grid, loc, scale)
    ax.plot(grid, curve, color="tab:red", lw=1.4,
            label=f"Gumbel fit: loc {loc:.3g}, scale {scale:.3g} dB/dim")
    heights = np.histogram(np.clip(values, lo, hi), bins=bins, density=True)[0]
    top = max(curve.max(), heights.max())
    ax.set_ylim(0, 1.12 * top)
    ax.set_xlim(lo, hi)
    ax.set_xlabel("log p (dB/dim)")
    ax.set_ylabel("density (per dB/dim)")
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=3, frameon=False)
    sample = gumbel["sample"]
    stats = [f"95 % intervals: loc [{fit['loc_ci95'][0]:.3g}, {fit['loc_ci95'][1]:.3g}], "
             f"scale [{fit['scale_ci95'][0]:.3g}, {fit['scale_ci95'][1]:.3g}]", f"best by AIC: {gumbel.get('best_by_aic')}",
             f"mean log p {sample['mean']:.3g} dB/dim"
             + (f" (entropy {gumbel['entropy']['db_per_dim']:.3g})" if "entropy" in gumbel else ""),
             f"range {sample['range']:.3g}"]
    fig.text(0.53, 0.025, "; ".join(t for t in stats if t), fontsize=7, ha="center")
    ax.tick_params(labelsize=8)

    # the row of images, with arrows to their log p
    items = sorted(items, key=lambda it: it["logp"])   # arrows do not cross
    k = len(items)
    size = min(0.11, 0.86 / max(k, 1) * 0.85)          # width as a fraction of the figure
    h = size * 7.2 / 5.2
    xs = np.linspace(0.08 + size / 2, 0.98 - size / 2, k) if k > 1 else np.array([0.53])
    for x0, it in zip(xs, items):
        iax = fig.add_axes([x0 - size / 2, 0.76, size, h])
        show_image(iax, it["image"])
        iax.set_title(it["label"], fontsize=6, pad=2)
        v = it["logp"]
        inside = lo <= v <= hi
        xv = min(max(v, lo), hi)
        # the arrow ends just above the bar or the curve at its log p, inside the axes
        bar = heights[min(max(int(np.searchsorted(bins, xv, side="right")) - 1, 0), len(heights) - 1)]
        yv = min(max(float(gumbel_density(xv, loc, scale)), bar) + 0.03 * top, 1.08 * top) if inside else 0.02 * top
        color = "tab:purple" if it["probe"] else "k"
        fig.add_artist(ConnectionPatch(xyA=(0.5, -0.02), coordsA=iax.transAxes, xyB=(xv, yv), coordsB=ax.transData,
                                       arrowstyle="-|>", lw=0.6, color=color, mutation_scale=7,
                                       linestyle="-" if inside else ":"))
        if not inside:
            ax.annotate(f"{'<' if v < lo else '>'} {v:.3g}", (xv, 0.08 * top), fontsize=6, color=color,
                        ha="left" if v < lo else "right")
    if title:
        fig.suptitle(title, fontsize=8, y=0.995)
    save_figure(fig, path)


def _read_json(path, what: str) -> dict:
    from dsm.io import read_json

    found = read_json(path, what)
    if not isinstance(found, dict):
        raise DsmError(f"{path}: not the {what.split(' (')[0]} (not a JSON object)")
    return found


def fig3_from_params(cfg: dict, logp, gumbel, examples, probes, data, out, hist=None) -> None:
    """`dsm fig3`: Figure 3 of the scale (PDF ``out``) and its histogram (CSV ``hist``, if
    given) from the outputs of `dsm evaluate --full`, `dsm gumbel` (its details JSON),
    `dsm examples` and `dsm probes`."""
    import pandas as pd

    from dsm.data.store import open_store

    from dsm.outputs import preflight

    preflight({out: "pdf", hist: "text"})
    p = fig3_params(cfg)
    path = Path(logp)
    if not path.is_file():
        raise DsmError(f"{path}: per-image table not found (run `dsm evaluate --full`)")
    table = pd.read_parquet(path)
    values = check_values(table, LOGP, str(path))
    g = _read_json(gumbel, "Gumbel fit details (run `dsm gumbel`)")
    if g.get("column") != LOGP or "gumbel_r" not in g or "sample" not in g:
        raise DsmError(f"{gumbel}: not the details of a Gumbel fit of {LOGP} (column {g.get('column')!r})")
    ex = _read_json(examples, "reference images (run `dsm examples`)")
    pr = _read_json(probes, "probes (run `dsm probes`)")
    test = open_store(data, "test")
    exact = None
    if EXACT in table.columns and table[EXACT].notna().all():
        exact = table[EXACT].to_numpy(np.float64)
    by_index = table.set_index("image_index")
    rows = ex.get("examples") or []
    if not rows:
        raise DsmError(f"{examples}: no examples")
    idx = np.array([int(r["image_index"]) for r in rows], np.int64)
    pixels = test.images(idx)
    probe_px = probe_images(test.shape, 1, int(pr["noise"]["seed"]))
    items = [_probe_item("uniform noise", probe_px["noise"][0], pr["noise"])]
    for r, img in zip(rows, pixels):
        lp = float(r[LOGP])
        label = f"{lp:.2f}"
        if exact is not None:
            label += f"\n(exact {float(by_index.loc[int(r['image_index']), EXACT]):.2f})"
        items.append({"image": img, "logp": lp, "label": label, "probe": False})
    items.append(_probe_item(f"constant {pr['constant']['value']:g}", probe_px["constant"][0], pr["constant"]))
    dataset = str(table["dataset"].iloc[0]) if "dataset" in table.columns else ""
    title = (f"{dataset} ({cfg.get('name', '')}): log p of the {len(values):,} test images under the full model "
             f"({test.shape[0]}×{test.shape[1]}×{test.shape[2]})")
    bins = histogram_bins(values, items, p, exact)
    if hist is not None:
        from dsm.io import write_text

        table = histogram_table(values, bins, g["gumbel_r"]["loc"], g["gumbel_r"]["scale"], exact)
        write_text(hist, table.to_csv(index=False, float_format="%.8g"))
    plot_fig3(values, g, items, p, out, exact=exact, title=title, bins=bins)


def _probe_item(name: str, image, block: dict) -> dict:
    label = f"{name}\n{block['logp_db_per_dim']:.3g}"
    if "exact_logp_db_per_dim" in block:
        label += f" (exact {block['exact_logp_db_per_dim']:.3g})"
    return {"image": image, "logp": float(block["logp_db_per_dim"]), "label": label, "probe": True}
