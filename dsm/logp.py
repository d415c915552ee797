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
         progress: bool = True) -> dict:
    """Write the per-image Parquet ``out`` (module docstring); returns a small summary."""
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
    pos, total_db = 0, 0.0
    with ParquetStream(out, schema()) as writer, \
            tqdm(total=total, desc=f"logp ({estimator})", unit="img", file=sys.stderr,
                 disable=None if progress else True, leave=False) as bar:
        for cols, x in batches(items, shape, int(batch_size), resize=resize, allow_unclipped=allow_unclipped):
            b = len(x)
            keys = np.arange(pos, pos + b)
            est = estimate(estimator, field, torch.from_numpy(x), keys=keys, seed=seed, prior=pr, **opts)
            e = np.asarray(est.nll_nats, np.float64)
            if not np.isfinite(e).all():
                bad = int(np.flatnonzero(~np.isfinite(e))[0])
                raise DsmError(f"{cols['file'][bad]}: non-finite log p from the model")
            writer.write({**cols, **const, "energy_nats": e, "nats_per_dim": units.nats_per_dim(e, d),
                          "logp_db_per_dim": units.logp_db_per_dim(e, d),
                          "nll_bits_per_dim": units.nll_bits_per_dim_8bit(e, d),
                          "se_nats": est.se_nats, "nfe": np.full(b, est.nfe)})
            total_db += float(units.logp_db_per_dim(e, d).sum())
            pos += b
            bar.update(b)
    summary = {"images": pos, "mean_logp_db_per_dim": total_db / max(pos, 1), "norm": str(norm_path),
               "estimator": estimator, "out": str(out)}
    print(f"logp: {pos} images, mean log p {summary['mean_logp_db_per_dim']:.3f} dB/dim ({estimator}, "
          f"c from {norm_path}) -> {out}", file=sys.stderr)
    return summary
