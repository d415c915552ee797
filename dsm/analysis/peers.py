"""Peer densities: a Gaussian mixture and a single Gaussian, fit on the same training images.

The question Table 2 asks of the dual-score-matching log p is whether it beats what a
simple normalized model already gives. The classic natural-patch prior is a Gaussian
mixture with full covariances (EPLL); its log p is exact:

    log p(x) = logsumexp_k [ ln w_k - ½ ( d ln 2π + ln det Σ_k + (x - μ_k)ᵀ Σ_k⁻¹ (x - μ_k) ) ]

fit by EM (scikit-learn's ``GaussianMixture``, ``covariance_type='full'``, k-means
initialization, ``reg_covar`` added to every covariance's diagonal). The single Gaussian
is the one-component case in closed form: μ the sample mean, Σ the maximum-likelihood
covariance plus ``reg_covar`` I.

Both are fit on ``peers.n_fit`` training images (a seeded subsample of the train part;
null = all) flattened to d-vectors, and evaluated on every test image. Per image:
``energy_nats`` = -log p(x) (nats), nats/dim, log p in dB/dim and the NLL in bits/dim with
the 8-bit shift ``8 + nats / (d ln 2)`` (:mod:`dsm.units`), the convention of Table 2.
Costs: CPU seconds (``time.process_time``, all threads of the process) of the fit and of
the evaluation, and the number of free parameters (GMM: K d + K d (d + 1) / 2 + K - 1;
Gaussian: d + d (d + 1) / 2).

Params (``peers``): ``n_fit``, ``seed`` (subsample and EM initialization), ``gmm``:
``n_components``, ``max_iter``, ``tol``, ``reg_covar``, ``n_init``.
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dsm import units
from dsm.errors import DsmError

PEERS = ("gmm", "gaussian")
LN2PI = math.log(2 * math.pi)


@dataclass
class Gaussian:
    """A d-dimensional Gaussian N(mean, cov); ``chol`` the lower Cholesky factor of cov."""

    mean: np.ndarray        # (d,)
    cov: np.ndarray         # (d, d)
    chol: np.ndarray        # (d, d), cov = chol cholᵀ

    @property
    def d(self) -> int:
        return len(self.mean)

    @property
    def n_parameters(self) -> int:
        return gaussian_parameters(self.d)

    def log_prob(self, x: np.ndarray) -> np.ndarray:
        """log N(x; mean, cov) in nats, (n,) float64, for x (n, d)."""
        from scipy.linalg import solve_triangular

        z = solve_triangular(self.chol, (np.asarray(x, np.float64) - self.mean).T, lower=True)
        logdet = 2.0 * np.log(np.diag(self.chol)).sum()
        return -0.5 * (self.d * LN2PI + logdet + (z * z).sum(0))


def gaussian_parameters(d: int) -> int:
    return d + d * (d + 1) // 2


def gmm_parameters(k: int, d: int) -> int:
    return k * d + k * d * (d + 1) // 2 + k - 1


def fit_gaussian(x: np.ndarray, reg_covar: float = 1e-6) -> Gaussian:
    """The maximum-likelihood Gaussian of the rows of x (n, d), plus ``reg_covar`` I."""
    x = np.asarray(x, np.float64)
    mean = x.mean(0)
    xc = x - mean
    cov = xc.T @ xc / len(x) + reg_covar * np.eye(x.shape[1])
    try:
        chol = np.linalg.cholesky(cov)
    except np.linalg.LinAlgError:
        raise DsmError(f"peers: the training images' covariance is singular; raise peers.gmm.reg_covar "
                       f"(now {reg_covar:g})") from None
    return Gaussian(mean, cov, chol)


def fit_gmm(x: np.ndarray, n_components: int, *, max_iter: int = 100, tol: float = 1e-3,
            reg_covar: float = 1e-6, n_init: int = 1, seed: int = 0):
    """scikit-learn's full-covariance GaussianMixture fit on the rows of x (n, d) by EM."""
    import warnings

    from sklearn.exceptions import ConvergenceWarning
    from sklearn.mixture import GaussianMixture

    if n_components > len(x):
        raise DsmError(f"peers.gmm.n_components: {n_components} components for {len(x)} training images")
    gmm = GaussianMixture(n_components=int(n_components), covariance_type="full", max_iter=int(max_iter),
                          tol=float(tol), reg_covar=float(reg_covar), n_init=int(n_init),
                          random_state=int(seed))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)     # reported as `converged`
        try:
            gmm.fit(np.asarray(x, np.float64))
        except ValueError as e:         # ill-defined covariance: reg_covar too small for the data
            raise DsmError(f"peers: the mixture fit failed ({str(e).splitlines()[0]}); raise "
                           f"peers.gmm.reg_covar (now {reg_covar:g})") from None
    return gmm


def gmm_log_prob(gmm, x: np.ndarray) -> np.ndarray:
    """Exact log p(x) of the mixture in nats, (n,) float64."""
    return gmm.score_samples(np.asarray(x, np.float64))


def training_sample(store, n_fit: int | None, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(indices, images (n, d) float64) of ``n_fit`` training images drawn without
    replacement (seeded; sorted indices), or all of them when ``n_fit`` is null."""
    n = len(store)
    if n_fit is None or int(n_fit) >= n:
        idx = np.arange(n)
    else:
        rng = np.random.default_rng(np.random.SeedSequence([int(seed), 7]))
        idx = np.sort(rng.choice(n, size=int(n_fit), replace=False))
    return idx, store.images(idx).reshape(len(idx), -1).astype(np.float64)


def rows_of(name: str, e: np.ndarray, d: int, index, ids) -> dict:
    """Per-image columns of one peer from its energies -log p (nats)."""
    return {"image_index": np.asarray(index, np.int64), "image_id": list(ids), "model": name,
            "d": d, "energy_nats": e, "nats_per_dim": units.nats_per_dim(e, d),
            "logp_db_per_dim": units.logp_db_per_dim(e, d),
            "nll_bits_per_dim": units.nll_bits_per_dim_8bit(e, d)}


class _Mixture:
    """A fitted GaussianMixture seen through ``log_prob`` (like :class:`Gaussian`)."""

    def __init__(self, gmm):
        self.gmm = gmm

    def log_prob(self, x: np.ndarray) -> np.ndarray:
        return gmm_log_prob(self.gmm, x)


def fit_peers(train_x: np.ndarray, p: dict) -> dict:
    """Both peers fit on train_x (n, d): ``{peer: (model with .log_prob, info)}``, info with
    the parameter count and the CPU (and wall) seconds of the fit."""
    g = p["gmm"]
    d = train_x.shape[1]
    t0 = _clock()
    gmm = fit_gmm(train_x, g["n_components"], max_iter=g["max_iter"], tol=g["tol"],
                  reg_covar=g["reg_covar"], n_init=g["n_init"], seed=p["seed"])
    t1 = _clock()
    gauss = fit_gaussian(train_x, g["reg_covar"])
    t2 = _clock()
    return {
        "gmm": (_Mixture(gmm), {"n_components": int(g["n_components"]), "covariance": "full",
                                "n_parameters": gmm_parameters(int(g["n_components"]), d),
                                "converged": bool(gmm.converged_), "n_iter": int(gmm.n_iter_),
                                **_seconds("fit", t0, t1)}),
        "gaussian": (gauss, {"n_parameters": gauss.n_parameters, **_seconds("fit", t1, t2)}),
    }


def score(model, store, batch_size: int = 4096) -> tuple[np.ndarray, dict]:
    """(-log p (n,) nats of every image of ``store``, the CPU and wall seconds of it);
    the images are read batch by batch, and only the model's computation is timed."""
    n = len(store)
    out, cpu, wall = np.empty(n), 0.0, 0.0
    for a in range(0, n, batch_size):
        x = store.images(np.arange(a, min(n, a + batch_size))).reshape(-1, store.d).astype(np.float64)
        t0 = _clock()
        out[a:a + len(x)] = -model.log_prob(x)
        t1 = _clock()
        cpu, wall = cpu + t1[0] - t0[0], wall + t1[1] - t0[1]
    if not np.isfinite(out).all():
        raise DsmError(f"peers: non-finite log p on test image {int(np.flatnonzero(~np.isfinite(out))[0])}")
    return out, {"eval_cpu_seconds": cpu, "eval_wall_seconds": wall}


def _clock() -> tuple[float, float]:
    return time.process_time(), time.perf_counter()


def _seconds(what: str, t0, t1) -> dict:
    return {f"{what}_cpu_seconds": t1[0] - t0[0], f"{what}_wall_seconds": t1[1] - t0[1]}


def peers_from_params(cfg: dict, data, logp, info) -> dict:
    """`dsm peers`: fit the GMM and the Gaussian on ``peers.n_fit`` training images of the
    store ``data``, score every test image; per-image Parquet ``logp`` (one row per image
    and peer) and the JSON ``info`` (fits, costs, test NLL ± SE in bits/dim)."""
    import pandas as pd
    from threadpoolctl import threadpool_limits

    from dsm.config import resolve_section
    from dsm.data.store import open_store
    from dsm.io import atomic_path, code_version, sha256_json, write_json

    p = resolve_section(cfg.get("peers"), "peers", "peers")
    threads = int(((cfg.get("resources") or {}).get("evaluate") or {}).get("threads", 1))
    train, test = open_store(data, "train"), open_store(data, "test")
    idx, x = training_sample(train, p["n_fit"], p["seed"])
    fitted = {}
    with threadpool_limits(limits=threads):       # BLAS threads: results depend on them
        for name, (model, meta) in fit_peers(x, p).items():
            meta["train_nll_nats_per_dim"] = float(-model.log_prob(x).mean() / x.shape[1])
            e, seconds = score(model, test)
            fitted[name] = (e, dict(meta, **seconds))
    d = test.d
    index = test.index
    frames = [pd.DataFrame(rows_of(name, e, d, index["image_index"], index["image_id"].astype(str)))
              for name, (e, _) in fitted.items()]
    table = pd.concat(frames, ignore_index=True)
    with atomic_path(logp) as tmp:
        table.to_parquet(tmp, index=False)
    summary = {"d": d, "n_fit": len(idx), "n_test": len(test), "threads": threads, "seed": int(p["seed"]),
               "data": str(Path(data)), "dataset": test.meta.get("source"),
               "params_sha256": sha256_json(cfg), "code_version": code_version(),
               "nll_convention": "8 + (-log p) / (d ln 2) bits/dim, mean over the test images, "
                                 "SE = sd / sqrt(n)"}
    for name, (e, meta) in fitted.items():
        bits = units.nll_bits_per_dim_8bit(e, d)
        summary[name] = dict(meta, test_nll_bits_per_dim=float(bits.mean()),
                             test_nll_se_bits_per_dim=float(bits.std(ddof=1) / math.sqrt(len(bits)))
                             if len(bits) > 1 else 0.0)
    write_json(info, summary)
    shown = ", ".join(f"{n} {summary[n]['test_nll_bits_per_dim']:.4f} ± {summary[n]['test_nll_se_bits_per_dim']:.2g} "
                      f"bits/dim (fit {summary[n]['fit_cpu_seconds']:.1f} CPU-s)" for n in PEERS)
    print(f"peers: {shown} -> {logp}, {info}", file=sys.stderr)
    return summary


def read_peers(logp, info=None):
    """(per-image table, info dict or None) of a peers stage's outputs."""
    import pandas as pd

    from dsm.io import read_json

    path = Path(logp)
    if not path.is_file():
        raise DsmError(f"{path}: peers table not found (run `dsm peers`)")
    table = pd.read_parquet(path)
    for col in ("image_index", "model", "energy_nats", "d"):
        if col not in table.columns:
            raise DsmError(f"{path}: column {col!r} missing")
    return table, (read_json(info, "peers info") if info is not None else None)
