"""The distribution of per-image log p over a test set: a maximum-likelihood Gumbel fit
(docs/theory.md#the-analyses, "Gumbel fit"; paper §3.2, App. C.3), and its rivals.

Input: one numeric column of a per-image table (default ``logp_db_per_dim`` of
``results/<scale>/full/logp-test.parquet``: log p in dB/dim, one row per test image).

* **Gumbel fit.** ``scipy.stats.gumbel_r`` (the distribution of maxima, right-skewed:
  density ``exp(-(z + e^{-z})) / scale``, ``z = (x - loc) / scale``) by maximum likelihood;
  ``loc`` and ``scale`` are in the column's unit. [paper] grayscale ImageNet64, 50k test
  images: loc 9.57, scale 3.17 dB/dim.
* **Intervals.** 95 % percentile-bootstrap intervals of loc, scale and the sample mean:
  ``resamples`` resamples of the images with replacement, drawn from
  ``numpy.random.default_rng(seed)``.
* **Rivals.** The same maximum-likelihood fit of ``gumbel_l`` (left-skewed), ``norm`` and
  ``skewnorm``, each with its log-likelihood, ``AIC = 2 k - 2 log L`` (k = 2, 2, 2, 3
  parameters) and the Kolmogorov-Smirnov statistic ``sup |F_n - F|`` against the fitted
  cdf (a distance, not a test: the parameters were fitted to the same sample).
  ``best_by_aic`` names the smallest AIC; ``aic_margin`` is the runner-up's AIC minus it.
* **Summary.** The sample mean is an entropy estimate, with a sign: on log p columns
  ``entropy = -mean log p``; as the test images come from p and log p is the model's, it
  estimates the cross-entropy H(p, p_model) >= H(p) (equal for a perfect model). In dB/dim
  it is ``-mean(logp_db_per_dim)``: negative when the density exceeds 1 on average (images
  concentrated in [0, 1]^d); [paper] -11.4 dB/dim, range (max - min) 34.4 dB/dim. In the
  8-bit convention ``8 + H / (d ln 2)`` bits/dim with H in nats (H/d = -ln(10)/10 · mean
  log p in dB/dim): the test set's mean NLL.

Units follow the column's name: ``*db_per_dim`` (log p, dB/dim), ``*nats_per_dim`` and
``*bits_per_dim`` (-log p per dimension; bits/dim in the 8-bit convention) and
``*energy_nats`` (-log p in nats, converted per dimension with the table's ``d``); other
columns are fitted as they are, without entropy conversions.

Outputs (``dsm gumbel``): the **headline numbers** (DVC metrics, dsm.headline), a directory
of one file per quantity, its name carrying the unit: ``loc_<u>``, ``scale_<u>`` (``<u>`` the
column's unit, ``db_per_dim`` for log p) and ``entropy_db_per_dim``, each ``{value, ci95_lo,
ci95_hi, n}``, and ``nll_bits_per_dim`` ``{value, n}``; and the **details** JSON (every
family's fit, AIC, KS, ``best_by_aic``, the bootstrap, quantiles, provenance).

Bad input (no file, not Parquet, missing or non-numeric column, any NaN or infinite
value, fewer than 10 values, no spread) is a :class:`DsmError` naming the file and column.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np

from dsm.errors import DsmError
from dsm.headline import Metric

LOGP = "logp_db_per_dim"
MIN_VALUES = 10
LEVEL = 0.95
QUANTILES = (0.01, 0.25, 0.5, 0.75, 0.99)
LN10, LN2 = math.log(10.0), math.log(2.0)
# name -> (scipy.stats attribute, names of its parameters in order)
FAMILIES = {
    "gumbel_r": ("gumbel_r", ("loc", "scale")),
    "gumbel_l": ("gumbel_l", ("loc", "scale")),
    "norm": ("norm", ("loc", "scale")),
    "skewnorm": ("skewnorm", ("a", "loc", "scale")),
}


# --- units of a column --------------------------------------------------------------------

def column_unit(column: str) -> dict:
    """How a column's values relate to -log p per dimension.

    Returns ``suffix`` (for metric keys), ``label`` (for people), ``kind`` (``logp``: values
    are log p, ``energy``: values are -log p, ``other``) and ``to_nats`` (values -> -log p in
    nats/dim, given d; None when unknown)."""
    if column.endswith("db_per_dim"):
        return {"suffix": "db_per_dim", "label": "dB/dim", "kind": "logp",
                "to_nats": lambda v, d: -v * LN10 / 10.0}
    if column.endswith("bits_per_dim"):
        return {"suffix": "bits_per_dim", "label": "bits/dim (8-bit convention: 8 + nats/dim / ln 2)",
                "kind": "energy", "to_nats": lambda v, d: (v - 8.0) * LN2}
    if column.endswith("nats_per_dim"):
        return {"suffix": "nats_per_dim", "label": "nats/dim (-log p / d)", "kind": "energy",
                "to_nats": lambda v, d: v}
    if column.endswith("energy_nats"):
        return {"suffix": "nats", "label": "nats (-log p)", "kind": "energy",
                "to_nats": lambda v, d: None if d is None else v / d}
    return {"suffix": column, "label": f"units of {column}", "kind": "other", "to_nats": None}


# --- reading and checking ----------------------------------------------------------------

def read_column(path, column: str = LOGP):
    """``(values float64 (n,), table)``: the column of a per-image Parquet table, checked."""
    import pandas as pd

    path = Path(path)
    if not path.is_file():
        raise DsmError(f"{path}: file not found")
    try:
        table = pd.read_parquet(path)
    except Exception as e:  # pyarrow raises several types for a file that is not Parquet
        raise DsmError(f"{path}: not a readable Parquet file ({type(e).__name__})") from None
    return check_values(table, column, str(path)), table


def check_values(table, column: str, where: str = "table") -> np.ndarray:
    """The column as float64, or a DsmError: missing, non-numeric, NaN/inf, < 10 values, constant."""
    import pandas as pd

    if column not in table.columns:
        raise DsmError(f"{where}: column {column!r} missing (has: {', '.join(map(str, table.columns))})")
    col = table[column]
    if not (pd.api.types.is_numeric_dtype(col) and not pd.api.types.is_bool_dtype(col)):
        if col.isna().all():
            raise DsmError(f"{where}: column {column!r} has {len(col)} NaN (null) values and no finite one")
        raise DsmError(f"{where}: column {column!r} is not numeric (dtype {col.dtype})")
    x = col.to_numpy(dtype=np.float64, na_value=np.nan)
    bad = ~np.isfinite(x)
    if bad.any():
        first = int(np.flatnonzero(bad)[0])
        kind = "NaN (null)" if np.isnan(x).any() else "infinite"
        raise DsmError(f"{where}: column {column!r} has {int(bad.sum())} non-finite ({kind}) values "
                       f"(first at row {first}); no fit on incomplete data")
    if len(x) < MIN_VALUES:
        raise DsmError(f"{where}: column {column!r} has {len(x)} finite values; the fit needs at "
                       f"least {MIN_VALUES}")
    if np.ptp(x) == 0:
        raise DsmError(f"{where}: column {column!r} is constant ({x[0]:g}): no spread to fit")
    return x


# --- fits ----------------------------------------------------------------------------------

def _dist(name: str):
    from scipy import stats

    return getattr(stats, FAMILIES[name][0])


# What scipy's fits raise on data they cannot fit (huge values, no spread): FitError is a
# RuntimeError.
FIT_ERRORS = (RuntimeError, ValueError, OverflowError, FloatingPointError, ZeroDivisionError)


def _fit(dist, x: np.ndarray) -> tuple[float, ...]:
    """``dist.fit(x)``, its warnings silenced (the result is checked instead); None when
    scipy fails or the parameters are not finite with a positive scale."""
    import warnings

    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        try:
            theta = tuple(float(v) for v in dist.fit(x))
        except FIT_ERRORS:
            return None
    if not all(np.isfinite(theta)) or not theta[-1] > 0:
        return None
    return theta


def fit_family(x: np.ndarray, name: str, where: str = "table") -> dict:
    """Maximum-likelihood fit of one family: params, log_likelihood (nats, summed over the
    sample, of the density in the column's unit), aic, ks_statistic, k. A fit scipy cannot
    make (values too large for its optimizer, ...) is a DsmError naming ``where``."""
    import warnings

    from scipy import stats

    dist, names = _dist(name), FAMILIES[name][1]
    theta = _fit(dist, x)
    if theta is not None:
        with warnings.catch_warnings(), np.errstate(all="ignore"):
            warnings.simplefilter("ignore")
            ll = float(np.sum(dist.logpdf(x, *theta)))
            ks = float(stats.kstest(x, dist.cdf, args=theta).statistic)
    if theta is None or not (math.isfinite(ll) and math.isfinite(ks)):
        raise DsmError(f"{where}: the maximum-likelihood {name} fit failed on these values "
                       f"(range {x.min():.6g} .. {x.max():.6g}): not values a fit can use")
    k = len(names)
    return {"params": dict(zip(names, theta)), "k": k, "log_likelihood": ll, "aic": 2 * k - 2 * ll,
            "ks_statistic": ks}


def fit_families(x: np.ndarray, names=tuple(FAMILIES), where: str = "table") -> dict:
    """{family: fit_family(x, family)}, and each one's ``delta_aic`` from the best."""
    fits = {n: fit_family(x, n, where) for n in names}
    best = min(f["aic"] for f in fits.values())
    for f in fits.values():
        f["delta_aic"] = f["aic"] - best
    return fits


def fit_gumbel(x: np.ndarray) -> tuple[float, float]:
    """(loc, scale) of the maximum-likelihood ``gumbel_r`` fit."""
    p = fit_family(x, "gumbel_r")["params"]
    return p["loc"], p["scale"]


def bootstrap_gumbel(x: np.ndarray, resamples: int, seed: int, level: float = LEVEL,
                     where: str = "table") -> dict:
    """Percentile-bootstrap intervals of the gumbel_r loc and scale, and of the sample mean:
    ``{"loc": [lo, hi], "scale": [lo, hi], "mean": [lo, hi], "resamples", "seed", "level"}``;
    the images are resampled with replacement, ``resamples`` times, from
    ``numpy.random.default_rng(seed)``. A resample without a finite fit (all its values
    equal: a sample of few distinct values) makes the intervals meaningless: a DsmError
    naming ``where`` and how many resamples failed."""
    from scipy import stats

    if int(resamples) < 2:
        raise DsmError(f"gumbel.bootstrap: need at least 2 resamples, got {resamples}")
    rng = np.random.default_rng(int(seed))
    n = len(x)
    est = np.empty((int(resamples), 3))
    failed = 0
    for b in range(int(resamples)):
        sample = x[rng.integers(0, n, n)]
        theta = _fit(stats.gumbel_r, sample) if np.ptp(sample) > 0 else None
        failed += theta is None
        est[b, :2] = theta if theta is not None else (np.nan, np.nan)
        est[b, 2] = sample.mean()
    if failed:
        raise DsmError(f"{where}: {failed} of {int(resamples)} bootstrap resamples have no finite "
                       f"Gumbel fit (no spread: only {len(np.unique(x))} distinct values among {n}); "
                       f"its intervals would be meaningless")
    q = [(1 - level) / 2, 1 - (1 - level) / 2]
    lo_hi = np.quantile(est, q, axis=0)
    return {"loc": [float(lo_hi[0, 0]), float(lo_hi[1, 0])],
            "scale": [float(lo_hi[0, 1]), float(lo_hi[1, 1])],
            "mean": [float(lo_hi[0, 2]), float(lo_hi[1, 2])],
            "resamples": int(resamples), "seed": int(seed), "level": level, "method": "percentile"}


def gumbel_density(x, loc: float, scale: float) -> np.ndarray:
    """The fitted density (per unit of the column) at x: Figure 3's curve."""
    from scipy import stats

    return stats.gumbel_r.pdf(np.asarray(x, np.float64), loc=loc, scale=scale)


# --- the summary ------------------------------------------------------------------------------

def summarize(x: np.ndarray, column: str = LOGP, resamples: int = 1000, seed: int = 0,
              d: int | None = None, where: str = "table") -> tuple[dict, dict]:
    """``(headline, details)`` of a checked sample ``x`` of ``column``.

    headline (the DVC metrics, :class:`dsm.headline.Metric` by file name, the names carry
    the column's unit ``<u>``): ``loc_<u>`` and ``scale_<u>`` of the gumbel_r fit with their
    95 % percentile bootstrap interval; where the unit allows, ``entropy_db_per_dim``
    (-mean log p, its interval from the same resamples) and ``nll_bits_per_dim`` (the same
    entropy in bits/dim of the 8-bit convention: the test set's mean NLL); ``n``: images.
    details: n_images, every family's fit (fits), best_by_aic and aic_margin, the bootstrap,
    the sample's mean, range and quantiles, the entropy in every unit, conventions in words.
    """
    x = check_values(_frame(column, x), column, where)
    unit = column_unit(column)
    u = unit["suffix"]
    where = f"{where}: column {column!r}"
    fits = fit_families(x, where=where)
    boot = bootstrap_gumbel(x, resamples, seed, where=where)
    g = fits["gumbel_r"]
    ranked = sorted(fits, key=lambda n: fits[n]["aic"])
    mean, sd = float(np.mean(x)), float(np.std(x, ddof=1))
    n = int(len(x))
    headline = {f"{name}_{u}": Metric(g["params"][name], ci95=tuple(boot[name]), n=n)
                for name in ("loc", "scale")}
    details = {
        "column": column, "unit": unit["label"], "n_images": int(len(x)),
        "gumbel_r": {"loc": g["params"]["loc"], "scale": g["params"]["scale"],
                     "loc_ci95": boot["loc"], "scale_ci95": boot["scale"],
                     "mean": g["params"]["loc"] + float(np.euler_gamma) * g["params"]["scale"],
                     "log_likelihood": g["log_likelihood"]},
        "best_by_aic": ranked[0], "aic_margin": fits[ranked[1]]["aic"] - fits[ranked[0]]["aic"],
        "bootstrap": boot, "fits": fits, "ranking_by_aic": ranked,
        "sample": {"mean": mean, "sd": sd, "se_mean": sd / math.sqrt(len(x)), "mean_ci95": boot["mean"],
                   "min": float(x.min()), "max": float(x.max()), "range": float(np.ptp(x)),
                   "quantiles": {str(q): float(np.quantile(x, q)) for q in QUANTILES}},
        "conventions": {
            "gumbel_r": "maximum-likelihood scipy.stats.gumbel_r (right-skewed); loc and scale in the column's unit",
            "aic": "2 k - 2 log L, log L in nats summed over images; smaller is better; aic_margin: the "
                   "runner-up's AIC minus the best's",
            "ks_statistic": "sup |empirical cdf - fitted cdf| (parameters fitted to the same sample: a distance, not a test)",
            "log_likelihood": "sum over images of the fitted density's log (nats), density per unit of the column",
            "intervals": "95 % percentile bootstrap over images (bootstrap.resamples resamples)",
        },
    }
    to_nats = unit["to_nats"]
    h = None if to_nats is None else to_nats(mean, d)
    if h is not None:
        h = float(h)
        # the conversion is affine, so the interval's ends map to the interval of the entropy
        ends = sorted(10.0 * float(to_nats(v, d)) / LN10 for v in boot["mean"])
        headline["entropy_db_per_dim"] = Metric(10.0 * h / LN10, ci95=(ends[0], ends[1]), n=n)
        headline["nll_bits_per_dim"] = Metric(8.0 + h / LN2, n=n)
        details["entropy"] = {
            "db_per_dim": 10.0 * h / LN10, "ci95_db_per_dim": ends, "nats_per_dim": h,
            "bits_per_dim_8bit": 8.0 + h / LN2,
            "sign": ("entropy = -mean log p (a differential entropy: negative when the density "
                     "exceeds 1 on average); in dB/dim it is -mean(logp_db_per_dim)"),
            "estimates": ("the cross-entropy H(p, p_model) >= H(p) when log p is a model's and the "
                          "images are samples of p (equality for a perfect model)"),
            "bits_per_dim_8bit_convention": ("8 + H / (d ln 2): the discrete 8-bit convention (bins of "
                                             "width 1/256); the test set's mean NLL"),
        }
    return headline, details


def _frame(column, x):
    import pandas as pd

    return pd.DataFrame({column: np.asarray(x)})


def default_details_path(out) -> Path:
    out = Path(out)
    return out.with_name(f"{out.stem}-details.json")


def gumbel_from_params(cfg: dict, logp, out, details=None, column: str = LOGP) -> dict:
    """`dsm gumbel`: fit ``column`` of the table ``logp``; write the headline numbers as the
    directory ``out`` (DVC metrics: ``loc_db_per_dim.json``, ``scale_db_per_dim.json``,
    ``entropy_db_per_dim.json``, ``nll_bits_per_dim.json`` for a dB/dim column, one row
    each) and the full report ``details`` (default: OUT-details.json
    beside it). Params: ``gumbel.bootstrap`` (resamples), ``gumbel.seed``. Nothing is
    written when the input is bad. Returns the details."""
    from dsm.headline import write_metrics_dir
    from dsm.io import code_version, sha256_file, write_json

    from dsm.outputs import preflight

    preflight(dirs=[out])
    details = Path(details) if details is not None else default_details_path(out)
    preflight({details: "json"})
    g = (cfg or {}).get("gumbel") or {}
    resamples, seed = int(g.get("bootstrap", 1000)), int(g.get("seed", 0))
    x, table = read_column(logp, column)
    d = None
    if "d" in table.columns and table["d"].nunique() == 1:
        d = int(table["d"].iloc[0])
    headline, report = summarize(x, column, resamples, seed, d, where=str(logp))
    prov = {"source": str(logp), "source_sha256": sha256_file(logp), "code_version": code_version()}
    for key in ("dataset", "checkpoint_sha256"):
        if key in table.columns and table[key].nunique() == 1:
            prov[key] = str(table[key].iloc[0])
    if d is not None:
        prov["d"] = d
    report = {**report, "dataset": prov.get("dataset"), "provenance": prov}
    write_json(details, report)
    write_metrics_dir(out, headline)
    fit, s = report["gumbel_r"], report["sample"]
    entropy = f", entropy {report['entropy']['db_per_dim']:.4g} dB/dim" if "entropy" in report else ""
    print(f"gumbel: loc {fit['loc']:.4g} [{fit['loc_ci95'][0]:.4g}, {fit['loc_ci95'][1]:.4g}], scale "
          f"{fit['scale']:.4g} [{fit['scale_ci95'][0]:.4g}, {fit['scale_ci95'][1]:.4g}] {report['unit']} "
          f"(95 % bootstrap, {resamples} resamples); "
          f"mean {s['mean']:.4g}{entropy}; best by AIC: {report['best_by_aic']} "
          f"(margin {report['aic_margin']:.3g}) -> {out}, {details}", file=sys.stderr)
    return report
