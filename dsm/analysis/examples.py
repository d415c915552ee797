"""Reference test images: evenly spaced in log p (Figure 3's row of examples, and the
reference images of Figures 4 and 5).

From the full model's per-image table of the whole test set
(``results/<scale>/full/logp-test.parquet``), ``count`` images whose log p (dB/dim) are
closest to ``count`` evenly spaced values between the 1st and 99th percentiles (so one
outlier does not decide the row), lowest first; ties are broken by ``image_id``, so the
choice is reproducible. ``dsm examples`` writes them as JSON
(``results/<scale>/full/examples.json``): image_index, image_id, logp_db_per_dim, the
target value, and the table's provenance.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from dsm.errors import DsmError

LOGP = "logp_db_per_dim"


def select_examples(table: pd.DataFrame, count: int, column: str = LOGP,
                    quantiles=(0.01, 0.99)) -> pd.DataFrame:
    """Rows of ``table`` at evenly spaced values of ``column`` (lowest first), no repeats."""
    if column not in table:
        raise DsmError(f"column {column!r} missing (has {list(table.columns)})")
    df = table[np.isfinite(table[column])].sort_values([column, "image_id"]).reset_index(drop=True)
    if len(df) < count:
        raise DsmError(f"{count} examples requested but only {len(df)} finite values of {column}")
    lo, hi = np.quantile(df[column], quantiles)
    targets = np.linspace(lo, hi, count)
    chosen, taken = [], set()
    for target in targets:
        order = np.argsort(np.abs(df[column].to_numpy() - target), kind="stable")
        i = next(int(j) for j in order if int(j) not in taken)
        taken.add(i)
        chosen.append({**df.iloc[i].to_dict(), "target_db_per_dim": float(target)})
    out = pd.DataFrame(chosen)
    return out.sort_values(column, kind="stable").reset_index(drop=True)


def examples_from_params(cfg: dict, logp, out) -> dict:
    """`dsm examples`: the reference images of the scale (``figures.examples.count``)."""
    from dsm.io import code_version, read_parquet, write_json

    path = Path(logp)
    if not path.is_file():
        raise DsmError(f"{path}: per-image table not found (run `dsm evaluate --full`)")
    table = read_parquet(path, "per-image table")
    count = int(cfg["figures"]["examples"]["count"])
    rows = select_examples(table, count)
    keep = ["image_index", "image_id", LOGP, "target_db_per_dim", "checkpoint_sha256"]
    result = {"count": count, "column": LOGP, "source": str(path),
              "rule": "closest to evenly spaced log p between the 1st and 99th percentiles, ties by image_id",
              "code_version": code_version(),
              "examples": [{k: (int(r[k]) if k == "image_index" else r[k]) for k in keep if k in r}
                           for r in rows.to_dict("records")]}
    write_json(out, result)
    return result
