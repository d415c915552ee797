"""The image training stage (`dsm train`): one model on split A or B of size N.

Reads a prepared store and a split, samples batches (:class:`ImageBatches`: a fresh
permutation per epoch, small sets cycled, optional horizontal flips), builds the model
from ``model:`` and trains it with :func:`dsm.fit.fit` into a run directory whose
``model.pt`` (:mod:`dsm.modelfile`) is the stage's output. Rerunning resumes.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch

from dsm.errors import DsmError
from dsm.fit import config_hash, fit
from dsm.io import code_version, remove_stale_temps, sha256_file, sha256_json
from dsm.modelfile import read_model_file, resolve_model_cfg, write_model_file
from dsm.runtime import derived_seed, describe, resolve_device, seed_everything, stage_threads


def _store_part(data, part: str):
    from dsm.data.store import open_store

    data = Path(data)
    return open_store(data / part) if (data / part).exists() else open_store(data)


def _images_digest(store, idx: np.ndarray) -> str:
    """SHA-256 over the content hashes of the selected images, in order."""
    index = store.index
    if "content_hash" not in index:
        raise DsmError(f"{store.path}/index.parquet: column 'content_hash' missing")
    hashes = index.set_index("image_index").loc[idx, "content_hash"].astype(str).tolist()
    return sha256_json(hashes)


class ImageBatches:
    """``next_batch`` for a training set of ``n`` store images.

    The set is visited epoch by epoch in a fresh permutation per epoch (seeded by
    (seed, epoch), a pure function of the step, so nothing but the step is needed to
    resume); sets smaller than the batch are cycled. Horizontal flips, if on, draw from
    the trainer's data generator.
    """

    def __init__(self, store, idx: np.ndarray, batch_size: int, seed: int, hflip: bool,
                 device: torch.device, cache_bytes: int = 1 << 30):
        self.store, self.idx = store, np.asarray(idx, dtype=np.int64)
        self.n, self.batch_size, self.seed, self.hflip = len(self.idx), int(batch_size), seed, hflip
        self.device = device
        self._perms: dict[int, np.ndarray] = {}
        self.cache = None
        if self.n * store.d * 4 <= cache_bytes:
            cache = torch.from_numpy(store.images(self.idx))
            self.cache = cache.to(device) if device.type == "cuda" else cache

    def _perm(self, epoch: int) -> np.ndarray:
        if epoch not in self._perms:
            if len(self._perms) > 64:
                self._perms.clear()
            rng = np.random.default_rng(derived_seed(self.seed, "epoch", epoch))
            self._perms[epoch] = rng.permutation(self.n)
        return self._perms[epoch]

    def __call__(self, step: int, generator: torch.Generator) -> torch.Tensor:
        pos = np.arange(step * self.batch_size, (step + 1) * self.batch_size, dtype=np.int64)
        epochs, within = pos // self.n, pos % self.n
        rows = np.empty_like(pos)
        for e in np.unique(epochs):
            sel = epochs == e
            rows[sel] = self._perm(int(e))[within[sel]]
        if self.cache is not None:
            x = self.cache[torch.from_numpy(rows).to(self.cache.device)]
        else:
            x = torch.from_numpy(self.store.images(self.idx[rows]))
            if self.device.type == "cuda":
                x = x.pin_memory()
        if self.hflip:
            flip = (torch.rand(len(rows), generator=generator) < 0.5).to(x.device)
            x = torch.where(flip[:, None, None, None], x.flip(-1), x)
        return x


RUN_FILES = ("config.json", "metrics.jsonl", "checkpoints", "model.pt")


def check_run_dir(out) -> dict | None:
    """Refuse to train into a directory that is not a run directory of ``dsm train``: one
    that exists and holds anything but a run's files (config.json, metrics.jsonl,
    checkpoints/, model.pt) and hidden files, or whose model.pt is not a dsm model file
    (unless the directory holds a run's checkpoints or config.json: then the unreadable
    model.pt is replaced like a stale one). A typo in ``--out`` must not overwrite or
    delete someone else's files. Returns the payload of OUT/model.pt ({} if unreadable,
    None if absent)."""
    from dsm.outputs import check_place

    out = check_place(out)          # not `.`, a repository, a parent of an argument, under a file
    if out.exists() and not out.is_dir():
        raise DsmError(f"{out}: exists and is not a directory (--out is the run directory)")
    if not out.is_dir():
        return None
    foreign = sorted(p.name for p in out.iterdir() if p.name not in RUN_FILES and not p.name.startswith("."))
    if foreign:
        raise DsmError(f"{out}: not a run directory of `dsm train` (it holds {', '.join(foreign[:3])}"
                       f"{' ...' if len(foreign) > 3 else ''}); refusing to write into it; "
                       f"choose another --out")
    model_path = out / "model.pt"
    if not model_path.exists():
        return None
    try:
        return read_model_file(model_path)
    except DsmError as e:
        if (out / "config.json").is_file() or (out / "checkpoints").is_dir():
            print(f"train: {e}; it will be replaced once this run has its first checkpoint",
                  file=sys.stderr)
            return {}
        raise DsmError(f"{e}; refusing to replace it (not a run directory of `dsm train`)") from None


def _model_identity(cfg: dict, shape, store, idx, n: int, split: str) -> dict:
    return {"model": cfg["model"], "shape": list(shape),
            "data": {"N": int(n), "split": split, "train_images_sha256": _images_digest(store, idx)}}


PAIRINGS = ("independent", "paired")
FULL = "full"   # the split name of a model trained on the whole training set


def model_seed(base_seed: int, n: int, split: str, pairing: str = "independent") -> int:
    """The seed of one model (initialization, noise draws, batch order), derived from the
    base seed of its replicate (params ``seeds``), N and its split.

    ``independent`` (the default): ``derived_seed(base, "model", N, split)``, so the A and
    B models of an N share nothing but the recipe — the comparison the paper's test of
    generalization needs. ``paired``: ``derived_seed(base, "model", N)``, the same for A
    and B (a controlled experiment: differences then come from the training sets alone).
    The full model (split ``full``) gets ``derived_seed(base, "model", "full")``.
    """
    if pairing not in PAIRINGS:
        raise DsmError(f"train.pairing: unknown value {pairing!r} (expected one of {', '.join(PAIRINGS)})")
    if split == FULL:
        return derived_seed(int(base_seed), "model", FULL)
    if pairing == "paired":
        return derived_seed(int(base_seed), "model", int(n))
    return derived_seed(int(base_seed), "model", int(n), str(split))


def train_from_params(cfg: dict, data, splits, n, split: str, out, seed: int = 0, kind=None,
                      device=None) -> Path:
    """Train one model; write ``OUT/model.pt``.

    cfg: one resolved scale section (keys model, train, device, resources). data: prepared
    store directory (its ``train`` part is used). ``split`` A|B with ``n`` and ``splits``
    (the splits Parquet): the N images of that set; ``split="full"``: every training image
    (``n`` and ``splits`` ignored). ``seed``: the base seed of the replicate (params
    ``seeds``; ``full.seed`` for the full model), from which :func:`model_seed` derives the
    model's own. ``kind``: overrides ``model.kind`` (``score`` for the score-only model of
    Table 1). Rerunning resumes; a finished run with the same config hash does nothing.
    """
    from dsm.data.splits import read_split
    from dsm.nets import build_model

    stage_threads(cfg, "train")
    for key in ("model", "train"):
        if not isinstance(cfg.get(key), dict):
            raise DsmError(f"params: section '{key}' missing")
    tcfg = dict(cfg["train"])
    if split == FULL and (cfg.get("full") or {}).get("lr") is not None:
        tcfg["lr"] = float(cfg["full"]["lr"])    # the full models' own rate (full.lr)
    pairing = tcfg.pop("pairing", "independent")
    tcfg["seed"] = model_seed(seed, 0 if split == FULL else n, split, pairing)
    model_cfg = dict(cfg["model"], **({"kind": kind} if kind else {}))
    cfg = {**cfg, "model": resolve_model_cfg(model_cfg, tcfg)}
    out = Path(out)
    model_path = out / "model.pt"

    store = _store_part(data, "train")
    if split == FULL:
        idx, n = np.arange(len(store), dtype=np.int64), len(store)
    else:
        idx = np.asarray(read_split(splits, n, split), dtype=np.int64)
    if len(idx) == 0:
        raise DsmError(f"{splits}: split {split} of N={n} is empty")
    shape = tuple(store.shape)
    if shape[1] != shape[2]:
        raise DsmError(f"{store.path}: images are {shape[1]}x{shape[2]}; only square images are supported")
    identity = _model_identity(cfg, shape, store, idx, n, split)
    resolved, chash = config_hash(tcfg, identity)

    done = check_run_dir(out)
    replaces = []
    if done is not None:
        if done.get("config_sha256") == chash:
            print(f"train: {model_path} is up to date (config {chash[:12]}); nothing to do",
                  file=sys.stderr)
            for d in (out, out / "checkpoints"):
                remove_stale_temps(d)           # left by a run killed after its last write
            return model_path
        if done:
            print(f"train: {model_path} was trained with another config; retraining (it is "
                  f"kept until the new run's first checkpoint)", file=sys.stderr)
        replaces = [model_path]

    dev = resolve_device(device if device is not None else cfg.get("device", tcfg.get("device", "auto")))
    seed_everything(int(tcfg["seed"]))  # model initialization
    model = build_model(cfg["model"], channels=shape[0], image_size=shape[1])
    batches = ImageBatches(store, idx, tcfg["batch_size"], int(tcfg["seed"]), bool(tcfg.get("hflip", False)), dev)
    result = fit(model, batches, tcfg, out, device=dev, identity=identity,
                 desc=f"train N={n} {split}", replaces=replaces)

    provenance = {
        "code_version": code_version(),
        "params_sha256": sha256_json(cfg),
        "train_images_sha256": identity["data"]["train_images_sha256"],
        "splits_sha256": sha256_file(splits) if split != FULL else None,
        "data": str(data), "splits": str(splits) if split != FULL else None, "N": int(n), "split": split,
        "base_seed": int(seed), "model_seed": int(tcfg["seed"]), "pairing": pairing,
        "steps": result.step, **describe(dev),
        # no timings (they are in OUT/metrics.jsonl): equal training gives equal model files
        "last_metrics": {k: v for k, v in result.last.items() if k not in ("seconds", "images_per_s")},
    }
    return write_model_file(model_path, model, cfg["model"], shape, resolved, chash, provenance)
