"""``dsm logp``: log p of a user's own images under a trained energy model.

    dsm logp --model models/default/full/model.pt photos/ more.png arrays.npy --out logp.parquet

Inputs and their conversion: :mod:`dsm.data.user` (8-bit images / 255, ITU-R 601 luma
for one-channel models, the model's size or ``--resize``; arrays uint8 or float in
[0, 1]). The estimator (``--estimator``, default ``one-shot``) is one of
:mod:`dsm.estimators`, with ``--option KEY=VALUE`` for its settings; the integrating
ones use the model's training t range and, as the term at t_max, the model's own
normalized energy (``--prior model``) or a Gaussian N(m, (v + t_max) I)
(``--prior gaussian --prior-mean M --prior-var V``).

The normalization constant c: ``--norm NORM.json``, else ``norm.json`` beside the model
file, else the pipeline's normalization file of a model at its pipeline location
(``models/<scale>/full/model.pt`` -> ``results/<scale>/full/norm.json``, and likewise for
the A/B models), else an error saying how to make one. The JSON must belong to this
model file (its ``model_sha256``).

Output: Parquet, one row per image, streamed batch by batch (memory bounded by a batch;
the file appears only when complete): ``file``, ``key`` (.npz member), ``index`` (image
in the array; null for image files), ``estimator``, ``d``, ``energy_nats`` (-log p(x),
nats), ``nats_per_dim`` (-log p / d), ``logp_db_per_dim`` (-10 energy / (d ln 10)),
``nll_bits_per_dim`` (**8-bit discrete convention**: 8 + nats_per_dim / ln 2), ``se_nats``
(the estimator's Monte-Carlo standard error; 0 for one-shot), ``nfe`` (network forward
passes per image), ``norm_const_nats``, ``checkpoint_sha256``, ``code_version``.

**Photographs under a patch model** (``--patches STRIDE``; e.g. the ``natural`` scale's
8 x 8 model): each image file is cut into the model's patches with corners on a grid of
STRIDE pixels, pixels made as the ``patches`` source makes them (8-bit luma k,
(k + u) / 256 with u seeded by ``--seed`` and the file's name: :func:`dsm.data.user.image_patches`).
One row per patch: ``index`` its number in the image, ``y``, ``x`` its top-left pixel, and
``image_logp_db_per_dim`` the mean log p of the image's patches (dB/dim), also printed.

    dsm logp --model models/natural/full/model.pt --patches 8 photo.jpg --out photo-patches.parquet
"""

from __future__ import annotations

import math
import re
import sys
from pathlib import Path

import numpy as np

from dsm import units
from dsm.errors import DsmError

COLUMNS = [
    ("file", "string"), ("key", "string"), ("index", "int64"), ("estimator", "string"),
    ("d", "int64"), ("energy_nats", "float64"), ("nats_per_dim", "float64"),
    ("logp_db_per_dim", "float64"), ("nll_bits_per_dim", "float64"), ("se_nats", "float64"),
    ("nfe", "float64"), ("norm_const_nats", "float64"), ("checkpoint_sha256", "string"),
    ("code_version", "string"),
]


def schema():
    import pyarrow as pa

    return pa.schema([(n, getattr(pa, k)()) for n, k in COLUMNS],
                     metadata={"energy_nats": "-log p(x), nats (normalized: U(x, 0) + c for one-shot)",
                               "nats_per_dim": "-log p(x) / d",
                               "logp_db_per_dim": "-10 energy_nats / (d ln 10)",
                               "nll_bits_per_dim": "8-bit discrete convention: 8 + nats_per_dim / ln 2"})


PATCH_COLUMNS = [("y", "int64"), ("x", "int64"), ("image_logp_db_per_dim", "float64")]


def patch_schema():
    import pyarrow as pa

    base = schema()
    return pa.schema(list(base) + [pa.field(n, getattr(pa, k)()) for n, k in PATCH_COLUMNS],
                     metadata={**(base.metadata or {}),
                               b"image_logp_db_per_dim": b"mean logp_db_per_dim of the image's patches",
                               b"y": b"top-left pixel row of the patch in the image"})


def _pattern_regex(pattern: str) -> re.Pattern:
    parts = re.split(r"\{(\w+)\}", pattern)
    rx = "".join(re.escape(p) if i % 2 == 0 else f"(?P<{p}>[^/]+)" for i, p in enumerate(parts))
    return re.compile(rf"(?:^|.*/)({rx})$")


def find_norm(model: Path, norm=None) -> Path:
    """The normalization JSON of ``model`` (module docstring); DsmError if there is none."""
    if norm is not None:
        return Path(norm)
    model = Path(model)
    beside = model.parent / "norm.json"
    if beside.is_file():
        return beside
    from dsm.pipeline.stages import FULL_MODEL, FULL_NORM, MODEL, NORM

    posix = model.resolve().as_posix()
    for model_pat, norm_pat in ((FULL_MODEL, FULL_NORM), (MODEL, NORM)):
        m = _pattern_regex(model_pat).match(posix)
        if m:
            root = posix[: m.start(1)]
            cand = Path(root + norm_pat.format(**m.groupdict()))
            if cand.is_file():
                return cand
    raise DsmError(f"{model}: no normalization constant found (no --norm, no {beside}, no pipeline "
                   f"norm file); make one with `dsm normalize --model {model} --data DATA --out NORM.json` "
                   f"(DATA: a prepared store of held-out images like the training data) and pass --norm NORM.json")


def _warn_if_not_8bit(payload: dict, items) -> None:
    """One line on stderr when image files meet a model whose training store (if it is
    still where the model file says) did not hold 8-bit images, e.g. ``field`` floats."""
    import json

    data = (payload.get("provenance") or {}).get("data")
    if not data or not any(it.kind == "image" for it in items):
        return
    meta = Path(data) / "train" / "meta.json"
    try:
        info = json.loads(meta.read_text())
    except (OSError, ValueError):
        return
    if info.get("dtype") != "uint8":
        print(f"dsm logp: note: the model was trained on {info.get('source', '?')} images stored as "
              f"{info.get('dtype')} ({meta}), not 8-bit images; image files are read as 8-bit values / 255",
              file=sys.stderr)


def parse_options(items) -> dict:
    """``KEY=VALUE`` strings -> dict (values parsed as YAML: numbers, booleans, strings)."""
    import yaml

    out = {}
    for item in items or []:
        if "=" not in item:
            raise DsmError(f"--option {item!r}: expected KEY=VALUE")
        k, raw = item.split("=", 1)
        try:
            v = yaml.safe_load(raw)
        except yaml.YAMLError:
            raise DsmError(f"--option {item!r}: the value is not valid YAML") from None
        if isinstance(v, str):                        # YAML reads 1e-4 (no dot) as a string
            try:
                v = float(v)
            except ValueError:
                pass
        if isinstance(v, float) and not math.isfinite(v):
            raise DsmError(f"--option {k.strip()}={raw}: not a finite number")
        out[k.strip()] = v
    return out


def logp(model, inputs, out, *, norm=None, estimator: str = "one-shot", options=None,
         prior: str = "model", prior_mean=None, prior_var=None, seed: int = 0, batch_size: int = 64,
         resize: bool = False, allow_unclipped: bool = False, device=None, threads=None,
         progress: bool = True, patches: int | None = None) -> dict:
    """Write the per-image Parquet ``out`` (module docstring; per patch with ``patches``, the
    stride); returns a small summary."""
    import torch
    from tqdm import tqdm

    from dsm.data.user import batches, scan
    from dsm.estimators import ESTIMATORS, ModelEnergy, Prior, estimate
    from dsm.evaluate import ParquetStream, read_norm
    from dsm.io import code_version, sha256_file
    from dsm.modelfile import load_energy_model
    from dsm.runtime import use_threads

    if estimator not in ESTIMATORS:
        raise DsmError(f"--estimator: unknown value {estimator!r} (expected one of {', '.join(ESTIMATORS)})")
    if int(batch_size) < 1:
        raise DsmError(f"--batch-size: must be >= 1, got {batch_size}")
    use_threads(threads, "--threads")
    model = Path(model)
    net, payload, dev = load_energy_model(model, device)
    model_sha = sha256_file(model)
    norm_path = find_norm(model, norm)
    c = float(read_norm(norm_path, model_sha)["c_nats"])
    shape = tuple(int(s) for s in payload["shape"])
    d = int(np.prod(shape))
    if patches is not None:
        if int(patches) < 1:
            raise DsmError(f"--patches: the stride must be >= 1, got {patches}")
        if resize:
            raise DsmError("--patches and --resize exclude each other (patches keep the image's scale)")
        from dsm.data.user import patch_files

        items = patch_files(inputs)
        total = None
    else:
        items = scan(inputs, shape, resize=resize)                  # every header checked first
        _warn_if_not_8bit(payload, items)
        total = sum(it.count for it in items)
    tcfg = payload["config"]["train"]
    field = ModelEnergy(net, c, float(tcfg["t_max"]), float(tcfg["t_min"]), dev)
    if prior == "gaussian":
        if prior_mean is None or prior_var is None:
            raise DsmError("--prior gaussian needs --prior-mean and --prior-var")
        pr = Prior("gaussian", float(prior_mean), float(prior_var))
    else:
        pr = Prior(prior)
    opts = parse_options(options) if not isinstance(options, dict) else dict(options)
    const = {"estimator": estimator, "d": d, "norm_const_nats": c, "checkpoint_sha256": model_sha,
             "code_version": code_version()}

    def score(x, keys):
        est = estimate(estimator, field, torch.from_numpy(x), keys=keys, seed=seed, prior=pr, **opts)
        return np.asarray(est.nll_nats, np.float64), est

    def columns(e, est, b):
        return {**const, "energy_nats": e, "nats_per_dim": units.nats_per_dim(e, d),
                "logp_db_per_dim": units.logp_db_per_dim(e, d),
                "nll_bits_per_dim": units.nll_bits_per_dim_8bit(e, d),
                "se_nats": est.se_nats, "nfe": np.full(b, est.nfe)}

    if patches is not None:
        return _logp_patches(items, shape, int(patches), int(batch_size), seed, out, score, columns,
                             norm_path, estimator, progress)
    pos, total_db = 0, 0.0
    with ParquetStream(out, schema()) as writer, \
            tqdm(total=total, desc=f"logp ({estimator})", unit="img", file=sys.stderr,
                 disable=None if progress else True, leave=False) as bar:
        for cols, x in batches(items, shape, int(batch_size), resize=resize, allow_unclipped=allow_unclipped):
            b = len(x)
            e, est = score(x, np.arange(pos, pos + b))
            if not np.isfinite(e).all():
                bad = int(np.flatnonzero(~np.isfinite(e))[0])
                raise DsmError(f"{cols['file'][bad]}: non-finite log p from the model")
            writer.write({**cols, **columns(e, est, b)})
            total_db += float(units.logp_db_per_dim(e, d).sum())
            pos += b
            bar.update(b)
    summary = {"images": pos, "mean_logp_db_per_dim": total_db / max(pos, 1), "norm": str(norm_path),
               "estimator": estimator, "out": str(out)}
    print(f"logp: {pos} images, mean log p {summary['mean_logp_db_per_dim']:.3f} dB/dim ({estimator}, "
          f"c from {norm_path}) -> {out}", file=sys.stderr)
    return summary


def _logp_patches(files, shape, stride, batch_size, seed, out, score, columns, norm_path, estimator,
                  progress) -> dict:
    """Patch mode of :func:`logp`: every file's patches scored batch by batch, its rows
    written once the image is done (with the image's mean log p)."""
    from tqdm import tqdm

    from dsm.data.user import image_patches
    from dsm.evaluate import ParquetStream

    d = int(np.prod(shape))
    pos, per_image = 0, []
    with ParquetStream(out, patch_schema()) as writer, \
            tqdm(total=len(files), desc=f"logp patches ({estimator})", unit="image", file=sys.stderr,
                 disable=None if progress else True, leave=False) as bar:
        for path in files:
            x, ys, xs = image_patches(path, shape, stride, seed)
            parts = []
            for a in range(0, len(x), batch_size):
                e, est = score(x[a:a + batch_size], np.arange(pos + a, pos + min(len(x), a + batch_size)))
                if not np.isfinite(e).all():
                    raise DsmError(f"{path}: non-finite log p from the model (patch "
                                   f"{a + int(np.flatnonzero(~np.isfinite(e))[0])})")
                parts.append(columns(e, est, len(e)))
            rows = {k: (np.concatenate([p[k] for p in parts]) if isinstance(parts[0][k], np.ndarray)
                        else parts[0][k]) for k in parts[0]}
            mean_db = float(np.mean(rows["logp_db_per_dim"]))
            n = len(x)
            writer.write({**rows, "file": [str(path)] * n, "key": [None] * n, "index": list(range(n)),
                          "y": ys, "x": xs, "image_logp_db_per_dim": np.full(n, mean_db)})
            per_image.append((str(path), n, mean_db))
            pos += n
            bar.update(1)
    for path, n, mean_db in per_image:
        print(f"logp: {path}: {n} patches, mean log p {mean_db:.3f} dB/dim", file=sys.stderr)
    summary = {"images": len(per_image), "patches": pos,
               "mean_logp_db_per_dim": float(np.mean([m for _, _, m in per_image])),
               "per_image": per_image, "norm": str(norm_path), "estimator": estimator, "out": str(out)}
    print(f"logp: {pos} patches of {len(per_image)} images ({estimator}, c from {norm_path}) -> {out}",
          file=sys.stderr)
    return summary
