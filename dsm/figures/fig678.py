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

Ties in log p are broken by image_id, so the grids are reproducible. Beside the PDFs a
small JSON (``results/<scale>/fig678.json``, the numbers the report's captions quote) says
per figure how many images it shows and its first and last image (index, id, log p; exact
log p on ``field``), in reading order. Each grid is drawn as
one mosaic image with the labels as text (one axes, so hundreds of images cost seconds);
pixels clipped to [0, 1], gray for one channel, RGB for three.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from dsm.analysis.examples import select_examples
from dsm.errors import DsmError
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


def mosaic(images, rows: int, cols: int, gap_x: int, gap_y: int) -> np.ndarray:
    """Images (k, C, H, W) tiled row by row into one array (rows·(H+gap_y), cols·(W+gap_x)[, 3]),
    each tile below a white band of gap_y pixels (for its label), white where no image."""
    from dsm.figures.images import as_display

    k, c, h, w = images.shape
    shape = (rows * (h + gap_y), cols * (w + gap_x)) + ((3,) if c == 3 else ())
    out = np.ones(shape)
    for i in range(min(k, rows * cols)):
        r, q = divmod(i, cols)
        y, x = r * (h + gap_y) + gap_y, q * (w + gap_x) + gap_x // 2
        out[y:y + h, x:x + w] = as_display(images[i])
    return out


def plot_grid(images, logp, p: dict, path, title: str, exact=None) -> None:
    """images (k, C, H, W), logp (k,) dB/dim, exact (k,) or None; a rows × cols grid, drawn
    as one mosaic (one axes: fast for hundreds of images)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    images = np.asarray(images)
    k, _, h, w = images.shape
    cols, cell = int(p["cols"]), float(p["cell"])
    rows = min(int(p["rows"]), -(-k // cols))
    label_h = 0.3 if exact is not None else 0.18          # inches of label above each image
    gap_y, gap_x = max(1, round(h * label_h / cell)), max(1, round(0.08 * w))
    tiles = mosaic(images, rows, cols, gap_x, gap_y)
    width = cols * cell * (w + gap_x) / w
    fig = plt.figure(figsize=(max(width, 3.6), rows * (cell + label_h) + 0.45))
    ax = fig.add_axes([0.5 - min(width / max(width, 3.6), 1) / 2, 0.0, min(width / max(width, 3.6), 1),
                       1 - 0.45 / (rows * (cell + label_h) + 0.45)])
    ax.imshow(tiles, cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest", aspect="auto")
    ax.axis("off")
    for i in range(k):
        r, q = divmod(i, cols)
        label = f"{logp[i]:.2f}" + (f"\n(exact {exact[i]:.2f})" if exact is not None else "")
        ax.text(q * (w + gap_x) + gap_x / 2 + w / 2, r * (h + gap_y) + gap_y - 0.5, label, fontsize=6,
                ha="center", va="bottom")
    fig.suptitle(title, fontsize=7, y=1 - 0.05 / (rows * (cell + label_h) + 0.45))
    save_figure(fig, path)


def _image(row, has_exact: bool) -> dict:
    out = {"image_index": int(row["image_index"]), "image_id": str(row["image_id"]),
           "logp_db_per_dim": float(row[LOGP])}
    if has_exact:
        out["exact_logp_db_per_dim"] = float(row[EXACT])
    return out


def fig678_from_params(cfg: dict, logp, data, highest, lowest, spaced, selection=None) -> None:
    """`dsm fig678`: Figures 6 (highest), 7 (lowest) and 8 (evenly spaced) as PDFs, and the
    JSON ``selection`` (if given): per figure its count and first and last image."""
    import pandas as pd

    from dsm.data.store import open_store

    from dsm.outputs import preflight

    preflight({highest: "pdf", lowest: "pdf", spaced: "pdf", selection: "json"})
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
    shown = {"dataset": dataset, "n_test_images": len(table), "units": "log p in dB/dim",
             "order": "reading order of the grid (row by row)"}
    for kind, out in zip(KINDS, (highest, lowest, spaced)):
        rows = select(table, kind, int(p["rows"]) * int(p["cols"]))
        shown[kind] = {"count": len(rows), "first": _image(rows.iloc[0], has_exact),
                       "last": _image(rows.iloc[-1], has_exact)}
        images = test.images(rows["image_index"].to_numpy(np.int64))
        title = (TITLES[kind].format(k=len(rows)) + " (dB/dim)\n"
                 + f"full model, {dataset} ({cfg.get('name', '')}), {len(table):,} test images")
        plot_grid(images, rows[LOGP].to_numpy(), p, out, title,
                  exact=rows[EXACT].to_numpy() if has_exact else None)
    if selection is not None:
        from dsm.io import write_json

        write_json(selection, shown)
