"""Figure 2: do models trained on disjoint sets A and B of N images agree on log p?

Plotting only; reads the per-image tables (``results/<scale>/logp/N{N}-{A,B}.parquet``)
and the per-N metrics (details JSON) of :mod:`dsm.analysis.generalization`.

Layout (the paper's): one panel per N, log p_A (x) against log p_B (y) in dB/dim over
each model's own training images (at most ``max_points`` of each set; A images and B
images in two colours), identity line, shared axes. On a source with an exact density
(``field``) a second row plots each model's log p against the exact log p (model A on
the A images, model B on the B images).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from dsm.analysis.generalization import SPLITS, pair_tables, read_table, table_path
from dsm.errors import DsmError
from dsm.figures.output import save_figure

COLORS = {"A": "tab:blue", "B": "tab:orange"}
def fig2_params(cfg: dict) -> dict:
    """``figures.fig2`` of a scale section, validated, with the schema's defaults."""
    from dsm.config import resolve_section

    return resolve_section(((cfg or {}).get("figures") or {}).get("fig2"), "fig2", "figures.fig2")


def load_pairs(logp_dir, seed: int, ns, max_points: int) -> dict:
    """{N: pairs DataFrame} of replicate ``seed``, at most ``max_points`` images of each set."""
    out = {}
    for n in ns:
        pairs = pair_tables(read_table(table_path(logp_dir, seed, n, "A")),
                            read_table(table_path(logp_dir, seed, n, "B")), SPLITS)
        out[n] = pairs.groupby("image_set", group_keys=False).head(max_points)
    return out


def _limits(values, lim):
    if lim is not None:
        return float(lim[0]), float(lim[1])
    v = np.concatenate([np.asarray(x, np.float64) for x in values if len(x)])
    v = v[np.isfinite(v)]
    if not len(v):
        return 0.0, 1.0
    lo, hi = float(v.min()), float(v.max())
    pad = 0.05 * (hi - lo or 1.0)
    return lo - pad, hi + pad


def _fmt(x, spec):
    return "–" if x is None else format(x, spec)


def _pm(m: dict, key: str, spec: str) -> str:
    """``mean ± sd`` over replicates (just the value for one replicate)."""
    if (m.get("n_seeds") or 1) > 1 and m.get(key) is not None and m.get(f"{key}_sd") is not None:
        return f"{format(m[key], spec)}±{format(m[f'{key}_sd'], '.2g')}"
    return _fmt(m.get(key), spec)


def plot_fig2(pairs: dict, metrics: dict, p: dict, path, title: str | None = None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ns = list(pairs)
    exact = all("exact" in df and df["exact"].notna().all() for df in pairs.values())
    rows = 2 if exact else 1
    values = [df[c] for df in pairs.values() for c in ("logp_a", "logp_b")]
    if exact:
        values += [df["exact"] for df in pairs.values()]
    lo, hi = _limits(values, p["lim"])
    # With fixed limits, points beyond them are drawn on the panel's border (as the
    # memorizing models' log p of unseen images can be far below everything else).
    clip = (lo, hi) if p["lim"] else None
    size = p["panel_size"]
    # one or two panels: wide enough for the panel titles and the figure's title
    width = max(size * len(ns), 4.5)
    fig, axes = plt.subplots(rows, len(ns), figsize=(width, size * rows + 0.4),
                             squeeze=False, sharex=True, sharey=True, constrained_layout=True)
    by_n = (metrics or {}).get("by_N", {})
    for j, n in enumerate(ns):
        df, m = pairs[n], by_n.get(str(n), {})
        ax = axes[0, j]
        beyond = 0
        for s in SPLITS:
            d = df[df["image_set"] == s]
            beyond += _scatter(ax, d["logp_a"], d["logp_b"], clip, s=p["point_size"], c=COLORS[s],
                               label=f"train {s}")
        ax.plot([lo, hi], [lo, hi], "k-", lw=0.6)
        ax.set_title(f"N = {n:,}\nr = {_pm(m, 'pearson_r', '.4f')}, "
                     f"RMS = {_pm(m, 'rms_db', '.3g')}{_beyond(beyond)}", fontsize=7)
        if j == 0:
            ax.set_ylabel("log p_B (dB/dim)")
            ax.legend(fontsize=6, markerscale=3, loc="upper left")
        ax.set_xlabel("log p_A (dB/dim)", fontsize=8)
        if exact:
            ax = axes[1, j]
            beyond = 0
            for s, col in (("A", "logp_a"), ("B", "logp_b")):
                d = df[df["image_set"] == s]
                beyond += _scatter(ax, d["exact"], d[col], clip, s=p["point_size"], c=COLORS[s],
                                   label=f"model {s}")
            ax.plot([lo, hi], [lo, hi], "k-", lw=0.6)
            ax.set_title(f"error mean {_pm(m, 'exact_mean_err_db', '.3g')}, "
                         f"RMS {_pm(m, 'exact_rms_err_db', '.3g')}{_beyond(beyond)}", fontsize=7)
            ax.set_xlabel("exact log p (dB/dim)")
            if j == 0:
                ax.set_ylabel("model log p (dB/dim)")
                ax.legend(fontsize=6, markerscale=3, loc="upper left")
    for ax in axes.flat:
        ax.set_xlim(lo, hi)
        ax.set_ylim(lo, hi)
        ax.set_aspect("equal")
        ax.tick_params(labelsize=7)
    if title:
        import textwrap

        fig.suptitle("\n".join(textwrap.wrap(title, width=int(width * 13))), fontsize=9)
    save_figure(fig, path)


def _scatter(ax, x, y, clip, *, s, c, label) -> int:
    """Points (x, y); with ``clip = (lo, hi)``, those beyond the axes are drawn on the
    panel's border as larger triangles (a memorizing model's log p can lie far outside
    the range of everything else). Returns how many were beyond."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    out = np.zeros(len(x), bool) if clip is None else (
        (x < clip[0]) | (x > clip[1]) | (y < clip[0]) | (y > clip[1]))
    ax.scatter(x[~out], y[~out], s=s, c=c, lw=0, alpha=0.7, label=label, rasterized=True)
    if out.any():
        ax.scatter(np.clip(x[out], *clip), np.clip(y[out], *clip), s=max(6 * s, 12), c=c, marker="^",
                   lw=0, alpha=0.9, rasterized=True, clip_on=False)
    return int(out.sum())


def _beyond(k: int) -> str:
    return f"\n{k} off the axes (▲ on the border)" if k else ""


def fig2_from_params(cfg: dict, logp, details, out) -> None:
    """`dsm fig2`: the figure for the Ns of the details file (from `dsm compare`)."""
    from dsm.io import read_json

    p = fig2_params(cfg)
    details_path = Path(details)
    if not details_path.is_file():
        raise DsmError(f"{details_path}: details not found (run `dsm compare`)")
    m = read_json(details_path, "details file")
    if not isinstance(m, dict) or not isinstance(m.get("by_N", {}), dict):
        raise DsmError(f"{details_path}: not a details file of `dsm compare` (by_N)")
    ns = sorted(int(n) for n in m.get("by_N", {}))
    if not ns:
        raise DsmError(f"{details_path}: no per-N metrics")
    seeds = m.get("seeds") or [0]
    pairs = load_pairs(logp, seeds[0], ns, int(p["max_points"]))
    reps = (f"points: replicate seed {seeds[0]}; numbers: mean±sd over {len(seeds)} replicates"
            if len(seeds) > 1 else f"one replicate (seed {seeds[0]})")
    title = (f"{m.get('dataset') or ''} ({m.get('scale') or cfg.get('name')}): log p of models trained on "
             f"disjoint sets A and B ({m.get('pairing', 'independent')} seeds)\n{reps}")
    plot_fig2(pairs, m, p, out, title=title)
