"""Figure 5 (right): E[log p(y, t) | x] and the effective dimensionality against the noise
variance t, for the reference images and the test-set average.

Plotting only; reads ``results/<scale>/fig5/curves.parquet`` and ``details.json``
(:mod:`dsm.analysis.dimensionality`) and the reference images for the thumbnails.

Layout: a row of the reference images (framed in their curves' colours, lowest log p
first), then two panels over t (log axis): left, E[log p(y, t) | x] in dB/dim; right,
d_eff by eq. 11 (solid) and eq. 12 (dashed), with the dimension d dotted. The test-set
average is black; noise levels outside the model's training range are shaded. On a source with an exact density the exact curves are drawn thin
and dotted in the same colours (and the population d_eff of the source in grey).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from dsm.errors import DsmError
from dsm.figures.output import save_figure
from dsm.io import read_json, read_parquet


def read_curves(path):
    import pandas as pd

    path = Path(path)
    if not path.is_file():
        raise DsmError(f"{path}: curves not found (run `dsm dimensionality`)")
    df = read_parquet(path, "curves of `dsm dimensionality`")
    missing = {"curve", "kind", "t", "d", "logp_db_per_dim", "d_eff_eq11", "d_eff_eq12"} - set(df.columns)
    if missing:
        raise DsmError(f"{path}: columns {sorted(missing)} missing")
    return df


def ref_colors(n: int):
    import matplotlib

    cmap = matplotlib.colormaps["viridis"]
    return [cmap(v) for v in np.linspace(0.05, 0.85, max(n, 1))]


def plot_fig5(df, details: dict, thumbnails: dict, path, title: str = "") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    refs = [c for c in dict.fromkeys(df.loc[df["kind"] == "reference", "curve"])]
    colors = dict(zip(refs, ref_colors(len(refs))))
    colors["test average"] = "black"
    exact = "exact_d_eff_eq11" in df and df["exact_d_eff_eq11"].notna().any()
    d = int(df["d"].iloc[0])
    fig = plt.figure(figsize=(9, 4.6), layout="constrained")
    top, bottom = fig.subfigures(2, 1, height_ratios=[1, 4.2])
    thumbs = top.subplots(1, max(len(refs), 1), squeeze=False)[0]
    for ax, name in zip(thumbs, refs):
        img = thumbnails.get(name)
        if img is not None:
            ax.imshow(img[0] if img.shape[0] == 1 else np.clip(img.transpose(1, 2, 0), 0, 1),
                      cmap="gray", vmin=0, vmax=1, interpolation="nearest")
        ax.set_xticks([])
        ax.set_yticks([])
        for s in ax.spines.values():
            s.set_edgecolor(colors[name])
            s.set_linewidth(3)
        ax.set_title(name.replace("image ", "#"), fontsize=7)
    for ax in thumbs[len(refs):]:
        ax.axis("off")
    axl, axr = bottom.subplots(1, 2)
    for name in refs + ["test average"]:
        g = df[df["curve"] == name].sort_values("t")
        if not len(g):
            continue
        col, lw = colors[name], 2.2 if name == "test average" else 1.3
        axl.plot(g["t"], g["logp_db_per_dim"], color=col, lw=lw, label=name)
        axr.plot(g["t"], g["d_eff_eq11"], color=col, lw=lw)
        axr.plot(g["t"], g["d_eff_eq12"], color=col, lw=lw, ls=(0, (4, 2)))
        if exact:
            axl.plot(g["t"], g["exact_logp_db_per_dim"], color=col, lw=0.9, ls=":")
            axr.plot(g["t"], g["exact_d_eff_eq11"], color=col, lw=0.9, ls=":")
        if name == "test average" and "exact_d_eff_population" in g and g["exact_d_eff_population"].notna().any():
            axr.plot(g["t"], g["exact_d_eff_population"], color="0.6", lw=3, alpha=0.5, zorder=0)
    axr.axhline(d, color="0.5", lw=0.8, ls=":")
    t_range = (details or {}).get("training_t_range")
    for ax in (axl, axr):
        ax.set_xscale("log")
        if t_range:       # where the network extrapolates
            lo, hi = float(df["t"].min()), float(df["t"].max())
            for a, b in ((lo, t_range[0]), (t_range[1], hi)):
                if a < b:
                    ax.axvspan(a, b, color="0.85", zorder=0, lw=0)
        ax.set_xlabel("noise variance t")
        ax.tick_params(labelsize=8)
    axl.set_ylabel("E[log p(y, t) | x] (dB/dim)")
    axr.set_ylabel(f"effective dimensionality (of d = {d})")
    axr.set_ylim(-0.03 * d, 1.08 * d)
    from matplotlib.lines import Line2D

    styles = [Line2D([], [], color="k", lw=1.3, label="eq. 11: E‖x − x̂‖²/t"),
              Line2D([], [], color="k", lw=1.3, ls=(0, (4, 2)), label="eq. 12: d − 2 ∂E[U]/∂ln t")]
    if exact:
        styles.append(Line2D([], [], color="k", lw=0.9, ls=":", label="exact (same draws)"))
    if t_range:
        from matplotlib.patches import Patch

        styles.append(Patch(color="0.85", label="outside the training range of t"))
        if "exact_d_eff_population" in df and df["exact_d_eff_population"].notna().any():
            styles.append(Line2D([], [], color="0.6", lw=3, alpha=0.5, label="exact, population"))
    axr.legend(handles=styles, fontsize=7, loc="lower left")
    axl.legend(fontsize=7, loc="lower left")
    w = (details or {}).get("model_consistency", {}).get("largest_disagreement")
    if w:
        axr.set_title(f"largest |eq.11 − eq.12| = {abs(w['gap']):.3g} at t = {w['t']:.2g} ({w['curve']})",
                      fontsize=8)
    if title:
        top.suptitle(title, fontsize=9)
    save_figure(fig, path)


def fig5_from_params(cfg: dict, curves, details, data, out) -> None:
    """`dsm fig5`: the figure from the curves and details of `dsm dimensionality`."""
    from dsm.analysis.reference import open_test_part

    df = read_curves(curves)
    mpath = Path(details)
    if not mpath.is_file():
        raise DsmError(f"{mpath}: details not found (run `dsm dimensionality`)")
    m = read_json(mpath, "details of `dsm dimensionality`")
    if not isinstance(m, dict):
        raise DsmError(f"{mpath}: not the details of `dsm dimensionality` (not a JSON object)")
    test = open_test_part(data)
    refs = df[df["kind"] == "reference"].drop_duplicates("curve")
    thumbs = {r.curve: test.images([int(r.image_index)])[0] for r in refs.itertuples()}
    title = (f"{m.get('dataset') or ''} ({cfg.get('name', '')}): full energy model, {m.get('n_noise')} noise draws "
             f"per reference image, average over {m.get('n_average')} test images")
    plot_fig5(df, m, thumbs, out, title=title)
