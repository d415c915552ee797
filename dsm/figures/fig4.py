"""Figure 4: log p under changes of contrast and brightness, and log p against sparsity.

Plotting only; reads ``results/<scale>/fig4/{affine.parquet, sparsity.parquet,
details.json}`` (:mod:`dsm.analysis.contrast`, where the convention
T_{a,b}(x) = a (x − x̄) + b is defined).

Left: log p(T_{a,b}(x)) (dB/dim) over log contrast a and brightness b for one reference
image (the original image at (1, x̄) marked), with contours (the exact log p's dashed on
``field``); middle: the b = ½ slice for
every reference image (colours as in Figure 5; exact log p dotted on ``field``); right:
log p of every test image against the participation ratio of its wavelet coefficients,
with Pearson r and Spearman ρ.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from dsm.errors import DsmError
from dsm.figures.fig5 import ref_colors
from dsm.figures.output import save_figure


# The columns each table of `dsm contrast` must have (a swapped --affine/--sparsity, or
# another table, is refused naming the file).
COLUMNS = {"contrast table": ("kind", "a", "b", "image_index", "image_mean", "logp_db_per_dim",
                              "exact_logp_db_per_dim"),
           "sparsity table": ("participation_ratio", "logp_db_per_dim", "exact_logp_db_per_dim")}


def _read(path, what):
    from dsm.io import read_json, read_parquet

    path = Path(path)
    if not path.is_file():
        raise DsmError(f"{path}: {what} not found (run `dsm contrast`)")
    if what not in COLUMNS:
        found = read_json(path, what)
        if not isinstance(found, dict):
            raise DsmError(f"{path}: not the {what} of `dsm contrast` (not a JSON object)")
        return found
    table = read_parquet(path, what)
    missing = [c for c in COLUMNS[what] if c not in table.columns]
    if missing:
        swapped = " (are --affine and --sparsity swapped?)" if any(
            set(cols) <= set(table.columns) for w, cols in COLUMNS.items() if w != what) else ""
        raise DsmError(f"{path}: not the {what} of `dsm contrast`: column {missing[0]!r} missing{swapped}")
    return table


def plot_fig4(affine, sparsity, details: dict, path, title: str = "") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (axl, axm, axr) = plt.subplots(1, 3, figsize=(11, 3.6), layout="constrained")
    grid = affine[affine["kind"] == "grid"]
    a, b = np.unique(grid["a"]), np.unique(grid["b"])
    z = grid.sort_values(["a", "b"])["logp_db_per_dim"].to_numpy().reshape(len(a), len(b))
    mesh = axl.pcolormesh(a, b, z.T, shading="nearest", cmap="magma", rasterized=True)
    cs = axl.contour(a, b, z.T, levels=8, colors="w", linewidths=0.5, alpha=0.7)
    if grid["exact_logp_db_per_dim"].notna().all():       # the exact log p, same levels, dashed
        ze = grid.sort_values(["a", "b"])["exact_logp_db_per_dim"].to_numpy().reshape(len(a), len(b))
        axl.contour(a, b, ze.T, levels=cs.levels, colors="cyan", linewidths=0.6, linestyles="--", alpha=0.8)
    axl.plot([1.0], [grid["image_mean"].iloc[0]], marker="o", mfc="none", mec="cyan", ms=7,
             label="original (a = 1, b = x̄)")
    axl.set_xscale("log")
    axl.set_xlabel("contrast a")
    axl.set_ylabel("brightness b")
    axl.set_title(f"log p(a(x − x̄) + b), image {int(grid['image_index'].iloc[0])}"
                  + (" (dashed: exact)" if grid["exact_logp_db_per_dim"].notna().all() else ""), fontsize=8)
    axl.legend(fontsize=6, loc="upper right")
    fig.colorbar(mesh, ax=axl, label="log p (dB/dim)")

    slices = affine[affine["kind"] == "slice"]
    order = list(dict.fromkeys(slices["image_index"]))
    exact = slices["exact_logp_db_per_dim"].notna().any()
    for col, k in zip(ref_colors(len(order)), order):
        g = slices[slices["image_index"] == k].sort_values("a")
        axm.plot(g["a"], g["logp_db_per_dim"], color=col, lw=1.3, label=f"#{k}")
        if exact:
            axm.plot(g["a"], g["exact_logp_db_per_dim"], color=col, lw=0.9, ls=":")
    axm.set_xscale("log")
    axm.set_xlabel("contrast a")
    axm.set_ylabel("log p (dB/dim)")
    axm.set_title(f"b = {details.get('slice_brightness', 0.5):g}" + (" (dotted: exact)" if exact else ""),
                  fontsize=8)
    axm.legend(fontsize=6, loc="lower left")

    s = (details.get("sparsity") or {})
    axr.scatter(sparsity["participation_ratio"], sparsity["logp_db_per_dim"], s=3, lw=0, alpha=0.6,
                color="tab:blue", rasterized=True, label="model")
    if sparsity["exact_logp_db_per_dim"].notna().any():
        axr.scatter(sparsity["participation_ratio"], sparsity["exact_logp_db_per_dim"], s=3, lw=0, alpha=0.3,
                    color="tab:orange", rasterized=True, label="exact")
        axr.legend(fontsize=6, markerscale=3, loc="upper right")
    m = s.get("model") or {}
    fmt = lambda v: "–" if v is None else f"{v:.3f}"
    ci = m.get("pearson_ci95")
    ci_text = f" [{ci[0]:.2f}, {ci[1]:.2f}]" if ci else ""
    axr.set_title(f"r = {fmt(m.get('pearson_r'))}{ci_text}, ρ = {fmt(m.get('spearman_rho'))} "
                  f"(n = {m.get('n', 0)})", fontsize=8)
    axr.set_xlabel(f"participation ratio ({s.get('wavelet', '')}, {s.get('levels', '')} levels)")
    axr.set_ylabel("log p (dB/dim)")
    from matplotlib.ticker import FixedLocator, NullLocator, ScalarFormatter

    ticks = [v for v in (0.1, 0.25, 0.5, 1, 2, 4, 10) if a.min() <= v <= a.max()]
    for ax in (axl, axm):
        ax.xaxis.set_major_locator(FixedLocator(ticks))
        ax.xaxis.set_major_formatter(ScalarFormatter())
        ax.xaxis.set_minor_locator(NullLocator())
    for ax in (axl, axm, axr):
        ax.tick_params(labelsize=7)
    if title:
        fig.suptitle(title, fontsize=9)
    save_figure(fig, path)


def fig4_from_params(cfg: dict, affine, sparsity, details, out) -> None:
    """`dsm fig4`: the figure from the tables and details of `dsm contrast`."""
    m = _read(details, "details")
    title = f"{m.get('dataset') or ''} ({cfg.get('name', '')}): full energy model; {m.get('convention', '')}"
    plot_fig4(_read(affine, "contrast table"), _read(sparsity, "sparsity table"), m, out, title=title)
