"""Figures 6, 7 and 8: test images of the highest, the lowest, and evenly spaced log p.

Plotting only. From the full model's per-image table of the whole test set
(``results/<scale>/full/logp-test.parquet``) and the prepared store (the pixels), three
grids of ``figures.fig678.rows`` × ``cols`` images (fewer if the test set is smaller),
read row by row, each labelled with its log p in dB/dim (on ``field`` also the exact log p):

* Figure 6: the highest log p, highest first;
* Figure 7: the lowest log p, lowest first;
* Figure 8: log p evenly spaced from the lowest to the highest, lowest first: the images
  closest to evenly spaced values between the minimum and the maximum, no image twice
  (:func:`dsm.analysis.examples.select_examples` over the whole range).

Ties in log p are broken by image_id, so the grids are reproducible.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from dsm.analysis.examples import select_examples
from dsm.errors import DsmError
from dsm.figures.images import show_image
from dsm.figures.output import save_figure

LOGP = "logp_db_per_dim"
EXACT = "exact_logp_db_per_dim"
KINDS = ("highest", "lowest", "spaced")
TITLES = {"highest": "Figure 6: the {k} test images of highest log p",
          "lowest": "Figure 7: the {k} test images of lowest log p",
          "spaced": "Figure 8: {k} test images of evenly spaced log p"}


def fig678_params(cfg: dict) -> dict:
    """``figures.fig678`` of a scale section, validated, with the schema's defaults."""
    from dsm.config import resolve_section

    return resolve_section(((cfg or {}).get("figures") or {}).get("fig678"), "fig678", "figures.fig678")


def select(table, kind: str, count: int):
    """The rows of one grid, in reading order."""
    df = table[np.isfinite(table[LOGP])]
    count = min(count, len(df))
    if kind == "highest":
        return df.sort_values([LOGP, "image_id"], ascending=[False, True], kind="stable").head(count)
    if kind == "lowest":
        return df.sort_values([LOGP, "image_id"], kind="stable").head(count)
    if kind == "spaced":
        return select_examples(df, count, quantiles=(0.0, 1.0))
    raise ValueError(kind)


def plot_grid(images, logp, p: dict, path, title: str, exact=None) -> None:
    """images (k, C, H, W), logp (k,) dB/dim, exact (k,) or None; a rows × cols grid."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows, cols, cell = int(p["rows"]), int(p["cols"]), float(p["cell"])
    rows = min(rows, -(-len(images) // cols))
    label_h = 0.32 if exact is not None else 0.2
    fig, axes = plt.subplots(rows, cols, figsize=(max(cols * cell, 3.6), rows * (cell + label_h) + 0.5),
                             squeeze=False)
    for i, ax in enumerate(axes.flat):
        if i >= len(images):
            ax.axis("off")
            continue
        show_image(ax, images[i])
        label = f"{logp[i]:.2f}"
        if exact is not None:
            label += f"\n(exact {exact[i]:.2f})"
        ax.set_title(label, fontsize=6, pad=2)
    fig.suptitle(title, fontsize=7)
    fig.tight_layout(pad=0.3, h_pad=0.2, w_pad=0.2)
    save_figure(fig, path)


def fig678_from_params(cfg: dict, logp, data, highest, lowest, spaced) -> None:
    """`dsm fig678`: Figures 6 (highest), 7 (lowest) and 8 (evenly spaced) as PDFs."""
    import pandas as pd

    from dsm.data.store import open_store

    p = fig678_params(cfg)
    path = Path(logp)
    if not path.is_file():
        raise DsmError(f"{path}: per-image table not found (run `dsm evaluate --full`)")
    table = pd.read_parquet(path)
    for col in (LOGP, "image_index", "image_id"):
        if col not in table.columns:
            raise DsmError(f"{path}: column {col!r} missing")
    if not np.isfinite(table[LOGP]).any():
        raise DsmError(f"{path}: no finite {LOGP}")
    test = open_store(data, "test")
    has_exact = EXACT in table.columns and table[EXACT].notna().all()
    dataset = str(table["dataset"].iloc[0]) if "dataset" in table.columns else ""
    for kind, out in zip(KINDS, (highest, lowest, spaced)):
        rows = select(table, kind, int(p["rows"]) * int(p["cols"]))
        images = test.images(rows["image_index"].to_numpy(np.int64))
        title = (TITLES[kind].format(k=len(rows)) + " (dB/dim)\n"
                 + f"full model, {dataset} ({cfg.get('name', '')}), {len(table):,} test images")
        plot_grid(images, rows[LOGP].to_numpy(), p, out, title,
                  exact=rows[EXACT].to_numpy() if has_exact else None)
