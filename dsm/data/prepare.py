"""``dsm prepare``: validate the ``data`` params, dispatch to a source, write the store.

Data params (the ``data`` section of a scale; defaults in brackets):

* ``source``     [field] one of field, gsm, fashion-mnist, imagenet64, cifar10, folder.
* ``root``       [null] directory of the raw files (real sources). null means the
                 source's default: fashion-mnist ``/usr/share/datasets/fashion-mnist``
                 (Debian package ``dataset-fashion-mnist``); the others require it.
* ``image_size`` [null] output height = width in pixels. null: the source's native
                 size (field 16, fashion-mnist 28, imagenet64 64, cifar10 32, folder:
                 all images must then share one size). Real images are resized
                 (Lanczos) when it differs; folder images are resized on the shorter
                 side and center-cropped. Ignored by gsm.
* ``channels``   [null] 1 = grayscale (ITU-R 601 luma 0.299 R + 0.587 G + 0.114 B,
                 rounded to uint8), 3 = color. null: the source's native channels.
                 field, gsm and fashion-mnist are grayscale only.
* ``n_train``, ``n_test`` [null] caps on the number of images (the first ones in
                 source order); null = all. Required for the synthetic sources.
* ``n_holdout``  [1000] images of the ``holdout`` part: the training distribution, never
                 trained on nor scored (the normalization set). Synthetic sources draw
                 them from a seed stream of their own (disjoint from train's and test's);
                 real sources take the last ``n_holdout`` images of their training split,
                 which ``train`` then excludes (``meta.json`` ``holdout`` says which).
* one subsection per source, read only when that source is active:
  ``field`` (see :mod:`dsm.data.field`), ``gsm`` (d, sigmas, weights, seed),
  ``folder`` (test_fraction); ``fashion-mnist``, ``imagenet64``, ``cifar10`` take no
  options (an empty mapping or null).

Pixels are scaled to [0, 1] on read (8-bit sources are stored as uint8). Horizontal
flips are a training-time augmentation and are not baked in.
"""

from __future__ import annotations

import sys
from pathlib import Path

from dsm.data.convert import LUMA  # noqa: F401  (re-exported: the grayscale weights)
from dsm.errors import DsmError

SOURCES = ("field", "gsm", "fashion-mnist", "imagenet64", "cifar10", "folder")
COMMON = ("source", "root", "image_size", "channels", "n_train", "n_test", "n_holdout")
# sources with options of their own (a `$defs` entry of the schema each)
OPTIONS = ("field", "gsm", "folder")


def resolve(data_cfg: dict | None) -> dict:
    """The data params validated against the schema, with its defaults filled in, reduced
    to the common keys and the active source's own section; errors name the key."""
    from dsm.config import resolve_section

    cfg = resolve_section(data_cfg, "data", "data")
    out = {k: cfg.get(k) for k in COMMON}
    src = out["source"]
    out[src] = resolve_section(cfg.get(src), src, f"data.{src}") if src in OPTIONS else {}
    if src == "field" and out["image_size"] is None:
        from dsm.data.field import DEFAULT_IMAGE_SIZE

        out["image_size"] = DEFAULT_IMAGE_SIZE      # resolved, so null and 16 hash alike
    return out


def params_hash(cfg: dict) -> str:
    from dsm.data.store import FORMAT
    from dsm.io import sha256_json

    return sha256_json({"format": FORMAT, "data": cfg})


def plan_source(cfg: dict):
    """(part plans, extra meta) of the resolved config's source."""
    src = cfg["source"]
    if src == "field":
        from dsm.data import field as mod
    elif src == "gsm":
        return _plan_gsm(cfg)
    elif src == "fashion-mnist":
        from dsm.data import fashion_mnist as mod
    elif src == "imagenet64":
        from dsm.data import imagenet64 as mod
    elif src == "cifar10":
        from dsm.data import cifar10 as mod
    else:
        from dsm.data import folder as mod
    return mod.plan(cfg)


def prepare(data_cfg: dict, out, progress: bool = True) -> Path:
    """Prepare ``data_cfg``'s source into the store ``out`` (DIR/train, DIR/test, DIR/holdout).

    A finished store with the same params hash is not rebuilt (a line says so on
    stderr). An existing ``out`` that is not a store (nor an empty directory) is refused
    before any work. Any error leaves no partial output; temporaries a killed run left
    beside ``out`` are removed.
    """
    from dsm.data.store import check_replaceable, is_done, remove_stale_temps, write_store
    from dsm.io import code_version

    cfg = resolve(data_cfg)
    h = params_hash(cfg)
    out = Path(out)
    check_replaceable(out)
    remove_stale_temps(out)
    if is_done(out, h):
        print(f"dsm prepare: {out} is already prepared with these params; not rebuilding",
              file=sys.stderr)
        return out
    plans, extra = plan_source(cfg)
    meta = dict(extra, source=cfg["source"], params=cfg, params_hash=h, code_version=code_version())
    write_store(out, plans, meta, progress=progress)
    print(f"dsm prepare: wrote {out}", file=sys.stderr)
    return out


def _plan_gsm(cfg: dict):
    """The d-dimensional Gaussian scale mixture of Figure 1 (dsm.data.gsm), shape (1, 1, d).

    Samples are generated in blocks seeded by ``SeedSequence([seed, part, block])``
    (bounded memory, independent of chunking); float32, not clipped.
    """
    import numpy as np

    from dsm.data.gsm import GaussianScaleMixture
    from dsm.data.store import Chunk, PartPlan

    g = cfg["gsm"]
    if cfg.get("channels") not in (None, 1):
        raise DsmError(f"data.channels: gsm samples are vectors (1, 1, d); channels must be 1, got {cfg['channels']}")
    if g["d"] < 1:
        raise DsmError(f"data.gsm.d: must be >= 1, got {g['d']}")
    mix = GaussianScaleMixture(int(g["d"]), tuple(float(s) for s in g["sigmas"]),
                               tuple(float(w) for w in g["weights"]))
    sig, w = np.asarray(mix.sigmas, np.float64), np.asarray(mix.weights, np.float64)
    block = max(1, (1 << 22) // mix.d)                  # about 16 MB of float32 per block
    counts = {"train": cfg.get("n_train"), "test": cfg.get("n_test"), "holdout": cfg.get("n_holdout")}
    for part, n in counts.items():
        if n is None:
            raise DsmError(f"data.n_{part}: required for source gsm (a synthetic source has no 'all')")

    def chunks(part, n):
        code = {"train": 0, "test": 1, "holdout": 2}[part]     # one seed stream per part
        for b in range(0, -(-n // block)):
            count = min(block, n - b * block)
            rng = np.random.default_rng(np.random.SeedSequence([int(g["seed"]), code, b]))
            s = sig[rng.choice(len(sig), size=block, p=w / w.sum())][:count]
            x = rng.standard_normal((block, mix.d), dtype=np.float32)[:count] * s[:, None].astype(np.float32)
            ids = [f"gsm-s{g['seed']}-{part}-{i:08d}" for i in range(b * block, b * block + count)]
            yield Chunk(x[:, None, None, :], ids)

    plans = [PartPlan(p, (lambda p=p, n=n: chunks(p, n)), n) for p, n in counts.items()]
    return plans, {"exact": dict(mix.to_meta(), seed=int(g["seed"]))}
