"""Do two models trained on disjoint sets A and B assign the same log p? (Figure 2)

For each N the inputs are the per-image tables of the two models ``N{N}-A`` and
``N{N}-B`` (``dsm evaluate``: one row per image and model, log p in dB/dim). The
comparison set is each model's own training images, i.e. the A images and the B
images (at most ``evaluate.max_per_set`` of each), every one of them scored by both
models. Per N:

* ``pearson_r``   Pearson correlation of log p_A and log p_B (null below 3 images);
* ``rms_db``      RMS of log p_A - log p_B, dB/dim;
* ``mean_db``     mean of log p_A - log p_B, dB/dim (a pure offset of one model's
                  normalization constant shows here);
* the same three on held-out test images (``test_*``);
* on a source with an exact density (``field``): ``exact_mean_err_db`` and
  ``exact_rms_err_db``, the mean and RMS of (model - exact) log p over both models
  on their own training images, ``exact_mean_err_db_A``/``_B`` per model, and
  ``test_exact_*`` on test images.

With several replicates (params ``seeds``: one pair of models per base seed), every
metric is computed per replicate and reported as the mean over replicates (``<metric>``),
their standard deviation (``<metric>_sd``, 0 for one replicate) and, for the per-model
errors against the exact log p, the largest magnitude over all models
(``exact_mean_err_db_max_abs``); the per-replicate values are under ``by_seed``.

Outputs of ``dsm compare``: the headline numbers, a folder per N (``N<n>/``) of one file
per quantity of :data:`HEADLINE` (names carrying units; DVC metrics, dsm.headline), all of the above
in a details JSON (an output, not a metric), and the per-N table as CSV (DVC plots).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from dsm.errors import DsmError

# Column names of the per-image tables (dsm.evaluate; schema in the README).
SET, ID, LOGP, EXACT = "image_set", "image_id", "logp_db_per_dim", "exact_logp_db_per_dim"
SPLITS = ("A", "B")


def table_path(logp_dir, seed: int, n: int, split: str) -> Path:
    """The per-image table of model ``N{n}-{split}`` of replicate ``seed`` (a fixed function
    of seed, N and split; the layout of dsm/pipeline/stages.py)."""
    return Path(logp_dir) / f"seed{seed}" / f"N{n}-{split}.parquet"


def read_table(path) -> pd.DataFrame:
    from dsm.io import read_parquet

    path = Path(path)
    if not path.is_file():
        raise DsmError(f"{path}: per-image log p table not found (run `dsm evaluate`)")
    df = read_parquet(path, "per-image log p table")
    missing = [c for c in (SET, ID, LOGP) if c not in df.columns]
    if missing:
        raise DsmError(f"{path}: columns {missing} missing (has {list(df.columns)})")
    return df


def pair_tables(table_a: pd.DataFrame, table_b: pd.DataFrame, sets=SPLITS) -> pd.DataFrame:
    """One row per image of ``sets`` scored by both models.

    Columns: image_id, image_set, logp_a, logp_b (dB/dim), and exact (dB/dim) when the
    tables carry the exact log p.
    """
    cols = [ID, SET, LOGP] + ([EXACT] if EXACT in table_a.columns else [])
    a = table_a.loc[table_a[SET].isin(sets), cols].rename(columns={LOGP: "logp_a", EXACT: "exact"})
    b = table_b.loc[table_b[SET].isin(sets), [ID, SET, LOGP]].rename(columns={LOGP: "logp_b"})
    pairs = a.merge(b, on=[ID, SET], how="inner", validate="one_to_one")
    if not len(pairs) == len(a) == len(b):
        raise DsmError("the A and B tables do not score the same images "
                       f"({len(a)} and {len(b)} rows, {len(pairs)} in common)")
    return pairs.reset_index(drop=True)


def agreement(x: np.ndarray, y: np.ndarray) -> dict:
    """Pearson r, RMS and mean of x - y (dB/dim), and the number of images."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    diff = x - y
    r = None
    if len(x) >= 3 and np.std(x) > 0 and np.std(y) > 0:
        r = float(np.corrcoef(x, y)[0, 1])
    return {
        "n_images": int(len(x)),
        "pearson_r": r,
        "rms_db": float(np.sqrt(np.mean(diff**2))) if len(x) else None,
        "mean_db": float(np.mean(diff)) if len(x) else None,
    }


def exact_errors(pairs: pd.DataFrame, prefix: str = "") -> dict:
    """Mean and RMS of (model - exact) log p, both models pooled, each on its own images.

    On the training sets (``prefix=''``) model A is scored on the A images and model B
    on the B images; on test images (``prefix='test_'``) both models on all of them.
    """
    if "exact" not in pairs or pairs["exact"].isna().all():
        return {}
    if prefix:
        err_a, err_b = pairs["logp_a"] - pairs["exact"], pairs["logp_b"] - pairs["exact"]
    else:
        own_a, own_b = pairs[SET] == "A", pairs[SET] == "B"
        err_a = (pairs["logp_a"] - pairs["exact"])[own_a]
        err_b = (pairs["logp_b"] - pairs["exact"])[own_b]
    err = np.concatenate([err_a, err_b])
    return {f"{prefix}exact_mean_err_db": float(np.mean(err)),
            f"{prefix}exact_rms_err_db": float(np.sqrt(np.mean(err**2))),
            f"{prefix}exact_mean_err_db_A": float(np.mean(err_a)),
            f"{prefix}exact_mean_err_db_B": float(np.mean(err_b))}


def metrics_for_n(table_a: pd.DataFrame, table_b: pd.DataFrame) -> dict:
    """All per-N metrics of one pair of models (see the module docstring)."""
    train = pair_tables(table_a, table_b, SPLITS)
    out = agreement(train["logp_a"], train["logp_b"])
    out.update(exact_errors(train))
    test = pair_tables(table_a, table_b, ("test",))
    if len(test):
        out.update({f"test_{k}": v for k, v in agreement(test["logp_a"], test["logp_b"]).items()})
        out.update(exact_errors(test, "test_"))
    return out


def compare(logp_dir, ns, seeds=(0,)) -> tuple[dict, dict]:
    """(per-N metrics aggregated over replicates, per-seed per-N metrics), keyed by str."""
    by_seed = {}
    for seed in seeds:
        by_seed[str(seed)] = {str(n): metrics_for_n(read_table(table_path(logp_dir, seed, n, "A")),
                                                    read_table(table_path(logp_dir, seed, n, "B")))
                              for n in ns}
    return {str(n): aggregate([by_seed[str(s)][str(n)] for s in seeds]) for n in ns}, by_seed


def aggregate(replicates: list[dict]) -> dict:
    """Mean and standard deviation over replicates of every numeric metric; for the
    per-model errors against the exact log p, also the largest magnitude."""
    out = {"n_seeds": len(replicates)}
    for key in replicates[0]:
        values = [r.get(key) for r in replicates]
        if key == "n_images":
            out[key] = values[0]
            continue
        vals = np.array([v for v in values if v is not None], dtype=np.float64)
        if not len(vals):
            out[key], out[f"{key}_sd"] = None, None
            continue
        out[key] = float(vals.mean())
        out[f"{key}_sd"] = float(vals.std(ddof=1)) if len(vals) > 1 else 0.0
    for prefix in ("", "test_"):
        per_model = [r[f"{prefix}exact_mean_err_db_{s}"] for r in replicates for s in SPLITS
                     if r.get(f"{prefix}exact_mean_err_db_{s}") is not None]
        if per_model:
            out[f"{prefix}exact_mean_err_db_max_abs"] = float(np.max(np.abs(per_model)))
    return out


# The headline numbers per N (DVC metrics: a folder N<n>/ of one file per quantity): name ->
# key of the aggregated per-N metrics. Units are in the names (dsm.pipeline.report.METRIC_UNITS).
HEADLINE = {
    "pearson_r": "pearson_r",                        # log p_A vs log p_B, own training images
    "rms_A_minus_B_db_per_dim": "rms_db",             # RMS of log p_A - log p_B
    "mean_A_minus_B_db_per_dim": "mean_db",           # mean of log p_A - log p_B
    "bias_db_per_dim": "exact_mean_err_db",           # mean of model - exact log p (exact sources)
}


def headline(by_n: dict) -> dict:
    """``{"N<n>": {name: Metric}}`` from the aggregated per-N metrics: the mean over the
    replicates, its standard error sd / sqrt(replicates) (none for one replicate) and the
    number of replicates ``n``; ``bias_db_per_dim`` only where the exact log p is known."""
    from dsm.headline import Metric

    out = {}
    for n, m in by_n.items():
        k = int(m.get("n_seeds", 1))
        row = {}
        for name, key in HEADLINE.items():
            if key not in m:
                continue
            sd = m.get(f"{key}_sd")
            se = sd / math.sqrt(k) if k > 1 and sd is not None else None
            row[name] = Metric(m[key], se=se, n=k)
        out[f"N{n}"] = row
    return out


def compare_from_params(cfg: dict, logp, metrics, details, by_n_csv=None) -> dict:
    """`dsm compare`: the headline numbers (directory ``metrics``, ``N<n>/<quantity>.json``, DVC
    metrics), everything (``details`` JSON: all per-N metrics with their spread, the
    per-replicate values, provenance) and a per-N CSV (DVC plots). Returns the details."""
    from dsm.io import code_version, write_json, write_text
    from dsm.outputs import preflight

    preflight({details: "json", by_n_csv: "text"}, dirs=[metrics])
    ns = sorted(int(n) for n in cfg["split"]["N"])
    seeds = [int(s) for s in cfg["seeds"]]
    by_n, by_seed = compare(logp, ns, seeds)
    first = read_table(table_path(logp, seeds[0], ns[0], "A"))
    out = {
        "scale": cfg.get("name"),
        "dataset": str(first["dataset"].iloc[0]) if "dataset" in first and len(first) else None,
        "units": "log p in dB/dim; differences are model A - model B",
        "images": "each model's own training images (A and B), scored by both models",
        "seeds": seeds,
        "replicates": "one pair of models per base seed; <metric> is the mean over replicates, "
                      "<metric>_sd their standard deviation",
        "pairing": (cfg.get("train") or {}).get("pairing", "independent"),
        "code_version": code_version(),
        "by_N": by_n,
        "by_seed": by_seed,
    }
    from dsm.headline import finite, write_metrics_dir

    write_json(details, finite(out))
    write_metrics_dir(metrics, headline(by_n))
    if by_n_csv is not None:
        rows = [{"N": int(n), **m} for n, m in by_n.items()]
        write_text(by_n_csv, pd.DataFrame(rows).to_csv(index=False))
    return out
