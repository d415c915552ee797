"""Normalization constant and per-image log p, streamed to Parquet (docs/theory.md#normalization-constant, #one-shot-log-p).

* :func:`normalization_constant` — the one-shot estimate
  ``c = (d/2) ln(2πe t_max) - mean_i U(x_i + sqrt(t_max) z_i, t_max)`` (nats), so that
  ``U + c`` is the normalized energy ``-log p`` at every t.
* :func:`energy`, :func:`space_score`, :func:`time_score`, :func:`denoise` — the model's
  quantities at any t, batched (energy without autograd).
* :func:`log_density` — per-image normalized energy (nats), nats/dim, log p in dB/dim and
  the 8-bit discrete NLL in bits/dim (convention: uniform density within bins of 1/256).
* :func:`evaluate_images` / :class:`ParquetStream` — iterate over image batches and write
  rows incrementally, so memory does not grow with the number of images.
* :func:`normalize_from_params`, :func:`evaluate_from_params` — the pipeline stages.

Noise draws are per image (seeded by (seed, position of the image in the stream)), so
results do not depend on the batch size.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
import torch

from dsm import units
from dsm.errors import DsmError
from dsm.io import (atomic_path, check_finite, code_version, read_json, sha256_file, sha256_json,
                    write_json)
from dsm.modelfile import load_energy_model
from dsm.normalization import MAX_COVARIANCE_DIM, device_of, normalization_constant
from dsm.runtime import image_noise, stage_threads

# The per-image Parquet schema (one row per image and model); see docs/DESIGN.md.
ROW_COLUMNS = [
    ("image_id", "string"), ("image_index", "int64"), ("image_set", "string"),
    ("dataset", "string"), ("N", "int64"), ("model_split", "string"), ("seed", "int64"),
    ("t", "float64"),
    ("d", "int64"), ("energy_nats", "float64"), ("nats_per_dim", "float64"),
    ("logp_db_per_dim", "float64"), ("nll_bits_per_dim", "float64"),
    ("norm_const_nats", "float64"), ("norm_t", "float64"), ("norm_entropy", "string"),
    ("norm_images", "string"), ("exact_energy_nats", "float64"),
    ("exact_logp_db_per_dim", "float64"), ("checkpoint_sha256", "string"),
    ("params_sha256", "string"), ("code_version", "string"),
]


def row_schema():
    import pyarrow as pa

    return pa.schema([(name, getattr(pa, kind)()) for name, kind in ROW_COLUMNS],
                     metadata={"nll_bits_per_dim": "8-bit discrete convention: 8 + nats_per_dim / ln 2",
                               "logp_db_per_dim": "-10 energy_nats / (d ln 10)",
                               "energy_nats": "normalized energy U(x, t) + c = -log p(x | t)"})


# --- model quantities at any t ----------------------------------------------------------

def _t_vector(t, batch: int, like: torch.Tensor) -> torch.Tensor:
    t = torch.as_tensor(t, dtype=like.dtype, device=like.device)
    return t.expand(batch).clone() if t.dim() == 0 else t.reshape(batch)


def _need_energy(model):
    if not hasattr(model, "energy"):
        raise DsmError(f"{type(model).__name__} has no energy (a score-only model): no log p or "
                       f"normalization constant; train with model.kind: energy")


def energy(model, y: torch.Tensor, t) -> torch.Tensor:
    """Unnormalized energy U(y, t), (B,) nats; y (B, ...), t float or (B,) variance. No autograd."""
    _need_energy(model)
    with torch.inference_mode():
        return model.energy(y, _t_vector(t, y.shape[0], y))


def _autograd(model, y, t, wrt: str):
    """∂U/∂y or ∂U/∂t by autograd, for models that only define .energy."""
    with torch.enable_grad():
        y = y.detach().requires_grad_(wrt == "y")
        t = t.detach().requires_grad_(wrt == "t")
        (g,) = torch.autograd.grad(model.energy(y, t).sum(), y if wrt == "y" else t)
    return g


def space_score(model, y: torch.Tensor, t) -> torch.Tensor:
    """∇_y U(y, t) (B, ...) (the score network's s for a score-only model), detached."""
    tv = _t_vector(t, y.shape[0], y)
    if hasattr(model, "score"):
        return model.score(y, tv).detach()
    _need_energy(model)
    return _autograd(model, y, tv, "y")


def time_score(model, y: torch.Tensor, t) -> torch.Tensor:
    """∂_t U(y, t) (B,), nats per unit variance, detached."""
    _need_energy(model)
    tv = _t_vector(t, y.shape[0], y)
    if hasattr(model, "time_score"):
        return model.time_score(y, tv).detach()
    return _autograd(model, y, tv, "t")


def denoise(model, y: torch.Tensor, t) -> torch.Tensor:
    """The implied denoiser x̂(y, t) = y - t ∇_y U(y, t), (B, ...), detached."""
    tv = _t_vector(t, y.shape[0], y)
    if hasattr(model, "denoise"):
        return model.denoise(y, tv).detach()
    return y.detach() - tv.reshape(-1, *([1] * (y.dim() - 1))) * space_score(model, y, tv)


def log_density(energy_nats: np.ndarray, c_nats: float, d: int) -> dict:
    """Columns from unnormalized energies (float64 nats): energy_nats (normalized U + c),
    nats_per_dim, logp_db_per_dim, nll_bits_per_dim (8-bit discrete convention)."""
    e = np.asarray(energy_nats, dtype=np.float64) + float(c_nats)
    return {"energy_nats": e, "nats_per_dim": units.nats_per_dim(e, d),
            "logp_db_per_dim": units.logp_db_per_dim(e, d),
            "nll_bits_per_dim": units.nll_bits_per_dim_8bit(e, d)}


def _exact_energy(exact, x: np.ndarray, t: float) -> np.ndarray:
    out = exact.energy(np.asarray(x, dtype=np.float64), float(t))
    if isinstance(out, torch.Tensor):
        out = out.detach().cpu().numpy()
    return np.asarray(out, dtype=np.float64).reshape(len(x))


def evaluate_images(model, batches: Iterable[tuple[dict, np.ndarray]], c_nats: float, *,
                    t: float = 0.0, noise_seed: int = 0, exact=None, device=None) -> Iterator[dict]:
    """Per-image log p, batch by batch.

    batches: iterable of (columns, images): ``columns`` a dict of per-image metadata arrays
    (e.g. image_id) passed through; images (b, C, H, W) float32 clean images.
    t: noise variance (0 = the clean images; t > 0 evaluates y = x + sqrt(t) z with
    per-image noise seeded by (noise_seed, running position)).
    Yields dicts of equal-length columns: the metadata, t, d, the columns of
    :func:`log_density`, and exact_energy_nats / exact_logp_db_per_dim (NaN-free when
    ``exact`` is given, else None).
    """
    _need_energy(model)
    dev = device_of(model) if device is None else torch.device(device)
    pos = 0
    for columns, images in batches:
        x = torch.as_tensor(np.asarray(images, dtype=np.float32))
        b, d = x.shape[0], int(np.prod(x.shape[1:]))
        y = x
        if t > 0:
            y = x + math.sqrt(t) * torch.from_numpy(image_noise(noise_seed, np.arange(pos, pos + b),
                                                                tuple(x.shape[1:])))
        u = energy(model, y.to(dev), t).double().cpu().numpy()
        if not np.isfinite(u).all():
            raise DsmError(f"evaluate: non-finite model energy at t={t} for image "
                           f"{pos + int(np.flatnonzero(~np.isfinite(u))[0])} of the stream")
        row = dict(columns)
        row.update(t=np.full(b, float(t)), d=np.full(b, d, np.int64), **log_density(u, c_nats, d))
        if exact is not None:
            ex = _exact_energy(exact, y.numpy(), t)
            row.update(exact_energy_nats=ex, exact_logp_db_per_dim=units.logp_db_per_dim(ex, d))
        else:
            row.update(exact_energy_nats=None, exact_logp_db_per_dim=None)
        pos += b
        yield row


class ParquetStream:
    """Write tables to a Parquet file incrementally, atomically (temp file, then rename).

    ``with ParquetStream(path, schema) as w: w.write(columns_dict)``; on an exception the
    destination is untouched. Constant columns can be given as scalars.
    """

    def __init__(self, path, schema):
        self.path, self.schema = Path(path), schema
        self.rows = 0

    def __enter__(self):
        import pyarrow.parquet as pq

        self._atomic = atomic_path(self.path, kind="parquet")
        tmp = self._atomic.__enter__()
        try:
            self._writer = pq.ParquetWriter(tmp, self.schema)
        except BaseException:
            # the temp file goes now (not when the generator is collected); a full disk
            # becomes atomic_path's DsmError naming the path
            if not self._atomic.__exit__(*sys.exc_info()):
                raise
        return self

    def write(self, columns: dict) -> None:
        import pyarrow as pa

        n = max((len(v) for v in columns.values() if v is not None and not np.isscalar(v)
                 and not isinstance(v, str)), default=0)
        arrays = []
        for f in self.schema:
            v = columns.get(f.name)
            if v is None or np.isscalar(v) or isinstance(v, str):
                arrays.append(pa.array([v] * n, f.type))
            else:
                arrays.append(pa.array(np.asarray(v) if not isinstance(v, list) else v, f.type))
        self._writer.write_table(pa.Table.from_arrays(arrays, schema=self.schema))
        self.rows += n

    def __exit__(self, exc_type, exc, tb):
        try:
            self._writer.close()
        finally:
            return self._atomic.__exit__(exc_type, exc, tb)


# --- pipeline stages -------------------------------------------------------------------

def _store(data, part: str):
    from dsm.data.store import open_store

    data = Path(data)
    return open_store(data / part) if (data / part).exists() else open_store(data)


def _ecfg(cfg: dict) -> dict:
    e = cfg.get("evaluate")
    if not isinstance(e, dict):
        raise DsmError("params: section 'evaluate' missing")
    return e


def _store_batches(store, idx: np.ndarray, batch_size: int, columns: dict) -> Iterator[tuple[dict, np.ndarray]]:
    index = store.index.set_index("image_index")
    for i in range(0, len(idx), batch_size):
        sel = idx[i:i + batch_size]
        cols = {"image_id": index.loc[sel, "image_id"].astype(str).to_numpy(), "image_index": sel}
        cols.update({k: v for k, v in columns.items()})
        yield cols, store.images(sel)


NORM_SET = "holdout"   # the store part of the normalization images: never trained on, never scored


def normalize_from_params(cfg: dict, model, data, out, device=None) -> dict:
    """Write the normalization constant of ``model`` (model.pt) to JSON ``out``.

    Uses the first ``evaluate.n_norm`` images of the store's ``holdout`` part (images of the
    training distribution that no model trains on and no stage scores), one noise draw
    each (seed ``evaluate.noise_seed``) at the noise level T = ``evaluate.norm_t`` (null:
    the model's training ``t_max``), with the Gaussian entropy there per
    ``evaluate.norm_entropy`` (dsm.normalization). The JSON's ``t_max`` is T.

    The self-consistency check: the constant read at T and at every level of
    ``evaluate.norm_check_t`` within the model's training range, with the entropy form
    ``evaluate.norm_check_entropy`` (``check``: T, c, its SE; ``check_entropy``), and the
    spread of those constants in dB/dim (``check_spread_db_per_dim``). A model whose time
    score carries the change of log p with t gives the same c at every T; the check needs
    no exact density, so it applies to real images too.
    """
    ecfg = _ecfg(cfg)
    stage_threads(cfg, "evaluate")
    dev_spec = device if device is not None else cfg.get("device", "auto")
    net, payload, dev = load_energy_model(model, dev_spec)
    t_train = float(payload["config"]["train"]["t_max"])
    t_min = float(payload["config"]["train"].get("t_min", 0.0))
    t_max = t_train if ecfg.get("norm_t") is None else float(ecfg["norm_t"])
    store = _holdout_store(data)
    n = min(int(ecfg.get("n_norm", len(store))), len(store))
    bs = int(ecfg.get("batch_size", 256))
    seed = int(ecfg.get("noise_seed", 0))
    if tuple(store.shape) != tuple(payload["shape"]):
        raise DsmError(f"{store.path}: images {tuple(store.shape)} do not match the model's {tuple(payload['shape'])}")
    entropy = str(ecfg.get("norm_entropy", "isotropic"))

    def constant(level: float, form: str) -> dict:
        images = (store.images(np.arange(i, min(n, i + bs))) for i in range(0, n, bs))
        r = normalization_constant(net, images, level, seed, entropy=form, batch_size=bs, device=dev)
        check_finite(r["c_nats"], f"{model}: normalization constant c_nats at T = {level:g} "
                                  f"(non-finite model energies)")
        return r

    result = constant(t_max, entropy)
    d = int(result["d"])
    # the check reads c at lower T too, where only the data-covariance Gaussian is accurate
    # enough (an isotropic one errs by about v/(2T) per pixel); beyond MAX_COVARIANCE_DIM
    # the data-variance one
    check_form = str(ecfg.get("norm_check_entropy", "data_covariance"))
    if check_form == "data_covariance" and d > MAX_COVARIANCE_DIM:
        check_form = "data_variance"
    levels = sorted({float(v) for v in ecfg.get("norm_check_t") or []
                     if t_min <= float(v) <= t_train * (1 + 1e-9)} | {t_max})
    check = [{"t": lv, "c_nats": r["c_nats"], "c_sem_nats": r["c_sem_nats"],
              "c_db_per_dim": -float(units.logp_db_per_dim(r["c_nats"], d))}
             for lv, r in ((lv, result if (lv == t_max and check_form == entropy)
                            else constant(lv, check_form)) for lv in levels)]
    cs = [row["c_nats"] for row in check]
    result.update({
        "method": ("one-shot: H - mean U(x + sqrt(T) z, T) over held-out images at T, H the entropy of "
                   + {"isotropic": "N(mean, T I)",
                      "data_variance": "N(mean, (v + T) I), v the images' variance per pixel",
                      "data_covariance": "N(mean, S + T I), S the images' covariance"}[entropy]),
        "images": NORM_SET, "check": check, "check_entropy": check_form,
        "check_spread_db_per_dim": -float(units.logp_db_per_dim(max(cs) - min(cs), d)),
        "model": str(model), "model_sha256": sha256_file(model), "data": str(store.path),
        "params_sha256": sha256_json(cfg), "code_version": code_version(),
        "model_config_sha256": payload.get("config_sha256"),
    })
    write_json(out, result)
    print(f"normalize: c = {result['c_nats']:.6g} nats (± {result['c_sem_nats']:.2g}, {n} {NORM_SET} "
          f"images, T = {t_max:g}); read at T = {', '.join(f'{lv:g}' for lv in levels)} it spreads by "
          f"{result['check_spread_db_per_dim']:.3g} dB/dim -> {out}", file=sys.stderr)
    return result


def _holdout_store(data):
    from dsm.data.store import open_store

    path = Path(data) / NORM_SET
    if not (path / "meta.json").is_file():
        raise DsmError(f"{data}: no '{NORM_SET}' part (the normalization images, never trained on nor "
                       f"scored); prepare the store again with this version of `dsm prepare`")
    return open_store(path)


def evaluate_from_params(cfg: dict, model, norm, data, splits, n: int, split: str, out,
                         device=None) -> Path:
    """Per-image log p at t = 0 of model (N, split) on its own, the other set's and test images.

    At most ``evaluate.max_per_set`` images of each set (the first ones). Writes the
    Parquet ``out`` (schema: :data:`ROW_COLUMNS`, docs/DESIGN.md) incrementally.
    """
    from dsm.data.splits import read_split

    ecfg = _ecfg(cfg)
    stage_threads(cfg, "evaluate")
    dev_spec = device if device is not None else cfg.get("device", "auto")
    net, payload, dev = load_energy_model(model, dev_spec)
    model_sha = sha256_file(model)
    norm_info = read_norm(norm, model_sha)
    prov = payload.get("provenance", {})
    if prov.get("N") not in (None, int(n)) or prov.get("split") not in (None, split):
        raise DsmError(f"{model}: trained on N={prov.get('N')} split {prov.get('split')}, "
                       f"not N={n} split {split}")
    max_per_set = int(ecfg.get("max_per_set", 1000))
    bs = int(ecfg.get("batch_size", 256))
    other = "B" if split == "A" else "A"
    train, test = _store(data, "train"), _store(data, "test")
    for s in (train, test):
        if tuple(s.shape) != tuple(payload["shape"]):
            raise DsmError(f"{s.path}: images {tuple(s.shape)} do not match the model's {tuple(payload['shape'])}")
    sets = [(split, train, read_split(splits, n, split)[:max_per_set]),
            (other, train, read_split(splits, n, other)[:max_per_set]),
            ("test", test, np.arange(min(len(test), max_per_set), dtype=np.int64))]
    return _write_rows(cfg, out, sets, net, payload, model, norm_info, dev, bs,
                       desc=f"evaluate N={n} {split}")


def evaluate_test_set_from_params(cfg: dict, model, norm, data, out, device=None) -> Path:
    """Per-image log p at t = 0 of a model on **every** test image (``dsm evaluate --full``),
    streamed batch by batch (memory bounded by one batch). Same schema as
    :func:`evaluate_from_params`; ``image_set`` is ``test``."""
    ecfg = _ecfg(cfg)
    stage_threads(cfg, "evaluate")
    dev_spec = device if device is not None else cfg.get("device", "auto")
    net, payload, dev = load_energy_model(model, dev_spec)
    norm_info = read_norm(norm, sha256_file(model))
    test = _store(data, "test")
    if tuple(test.shape) != tuple(payload["shape"]):
        raise DsmError(f"{test.path}: images {tuple(test.shape)} do not match the model's {tuple(payload['shape'])}")
    sets = [("test", test, np.arange(len(test), dtype=np.int64))]
    return _write_rows(cfg, out, sets, net, payload, model, norm_info, dev,
                       int(ecfg.get("batch_size", 256)), desc="evaluate test set")


def _write_rows(cfg, out, sets, net, payload, model, norm_info, dev, bs, desc) -> Path:
    """Stream the rows of ``sets`` [(image_set, store, indices)] into the Parquet ``out``."""
    from tqdm import tqdm

    from dsm.data.exact import exact_density

    store0 = sets[0][1]
    exact = exact_density(store0.meta)
    dataset = str(store0.meta.get("source", cfg.get("data", {}).get("source", "")))
    prov = payload.get("provenance", {})
    const = {"dataset": dataset, "N": prov.get("N"), "model_split": prov.get("split"),
             "seed": prov.get("base_seed"),
             "norm_const_nats": float(norm_info["c_nats"]), "norm_t": float(norm_info["t_max"]),
             "norm_entropy": str(norm_info.get("entropy", "isotropic")),
             "norm_images": str(norm_info.get("images", "test")),
             "checkpoint_sha256": sha256_file(model),
             "params_sha256": sha256_json(cfg), "code_version": code_version()}
    total = sum(len(idx) for _, _, idx in sets)
    with ParquetStream(out, row_schema()) as writer, \
            tqdm(total=total, desc=desc, unit="img", file=sys.stderr, disable=None, leave=False) as bar:
        for image_set, store, idx in sets:
            batches = _store_batches(store, np.asarray(idx, np.int64), bs, {"image_set": image_set})
            for rows in evaluate_images(net, batches, norm_info["c_nats"], t=0.0, exact=exact, device=dev):
                writer.write({**rows, **const})
                bar.update(len(rows["energy_nats"]))
    print(f"evaluate: {writer.rows} rows -> {out}", file=sys.stderr)
    return Path(out)


def read_norm(path, model_sha: str) -> dict:
    path = Path(path)
    if not path.is_file():
        raise DsmError(f"{path}: normalization file not found; run `dsm normalize`")
    info = read_json(path, "normalization file")      # NaN/Infinity anywhere: refused
    if not isinstance(info, dict) or "c_nats" not in info:
        raise DsmError(f"{path}: key 'c_nats' missing")
    check_finite(info["c_nats"], f"{path}: c_nats")
    if "model_sha256" not in info:
        raise DsmError(f"{path}: key 'model_sha256' missing: no record of which model this constant "
                       f"belongs to; rerun `dsm normalize`")
    if info["model_sha256"] != model_sha:
        raise DsmError(f"{path}: computed for another model (model_sha256 {str(info['model_sha256'])[:12]} "
                       f"!= {model_sha[:12]}); rerun `dsm normalize`")
    return info
