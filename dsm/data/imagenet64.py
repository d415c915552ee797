"""``imagenet64``: the official downsampled ImageNet 64×64 release.

Files under ``data.root``: ``train_data_batch_1`` … ``train_data_batch_10`` (train,
1,281,167 images) and ``val_data`` (test, 50,000), each either in the npz form
(``<name>.npz``) or the pickle form (``<name>``, no extension). Each holds ``data``,
uint8 rows of 12288 = 3·64·64 values in channel-major order (all R, then G, then B,
each 64×64 row-major), and ``labels`` (1 … 1000). Image ids
``imagenet64/<file>/<row>``. Options: none. Caps take the first images in file order
(later batches are then not read). The holdout part is the last ``data.n_holdout``
training images (the end of ``train_data_batch_10``), which train excludes. Peak memory is
about one batch (~1.6 GB for the real files): both official forms must be read whole.

Pickles are read with a restricted unpickler that accepts only numpy arrays and
plain Python containers, so a malicious file cannot run code.
"""

from __future__ import annotations

import io
import pickle
import zipfile
import zlib
from pathlib import Path

import numpy as np

from dsm.errors import DsmError

TRAIN = tuple(f"train_data_batch_{k}" for k in range(1, 11))
TEST = ("val_data",)
ROW = 3 * 64 * 64
CHUNK = 4096
SIZES = {"train": 1_281_167, "test": 50_000}

_ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
            ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
            ("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.numeric", "_frombuffer"),
            ("numpy._core.numeric", "_frombuffer"), ("_codecs", "encode")}


class _SafeUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        if (module, name) in _ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} (only numpy arrays allowed)")


def safe_unpickle(path, encoding: str = "ASCII"):
    """Unpickle ``path`` allowing only numpy arrays and builtins; errors -> DsmError."""
    try:
        with open(path, "rb") as f:
            return _SafeUnpickler(io.BufferedReader(f), encoding=encoding).load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError,
            IndexError, KeyError, OSError, UnicodeDecodeError) as e:
        raise DsmError(f"{path}: cannot read pickle (corrupt or truncated?): {e}") from None


def _key(d: dict, name: str):
    for k in (name, name.encode()):
        if k in d:
            return d[k]
    return None


def load_file(root: Path, name: str):
    """(data uint8 (n, 12288), labels int64 (n,)) of one official file, npz or pickle."""
    npz, pkl = root / f"{name}.npz", root / name
    if npz.is_file():
        path = npz
        try:
            with np.load(path, allow_pickle=False) as z:
                d = {k: z[k] for k in ("data", "labels") if k in z.files}
        except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as e:
            raise DsmError(f"{path}: cannot read npz (corrupt or truncated?): {e}") from None
    elif pkl.is_file():
        path = pkl
        d = safe_unpickle(path)
        if not isinstance(d, dict):
            raise DsmError(f"{path}: expected a pickled dict with 'data' and 'labels', got {type(d).__name__}")
    else:
        raise DsmError(f"{npz} (or {pkl.name} in pickle form): file not found")
    data, labels = _key(d, "data"), _key(d, "labels")
    if data is None or labels is None:
        raise DsmError(f"{path}: missing 'data' or 'labels'")
    data, labels = np.asarray(data), np.asarray(labels)
    if data.dtype != np.uint8:
        raise DsmError(f"{path}: data dtype {data.dtype}, expected uint8")
    if data.ndim != 2 or data.shape[1] != ROW:
        raise DsmError(f"{path}: data shape {data.shape}, expected (n, {ROW}) rows of 3x64x64 channel-major")
    if labels.shape != (len(data),):
        raise DsmError(f"{path}: {labels.shape} labels for {len(data)} images")
    return data, labels.astype(np.int64)


def holdout_start(root: Path, n_holdout: int) -> tuple[int, int]:
    """(batch, row) where the holdout part starts: the last ``n_holdout`` training images,
    found by reading the training batches from the last one backwards (only as many as
    the holdout spans are read)."""
    left = int(n_holdout)
    for k in range(len(TRAIN) - 1, -1, -1):
        size = len(load_file(root, TRAIN[k])[0])
        if size >= left and (k, size - left) != (0, 0):
            return k, size - left
        left -= size
    raise DsmError(f"data.n_holdout: {n_holdout} would leave none of the training images of "
                   f"imagenet64 for training (set a smaller data.n_holdout)")


def plan(cfg: dict):
    from dsm.data.convert import convert_uint8, native_channels, required_root
    from dsm.data.store import Chunk, PartPlan

    root = required_root(cfg, "imagenet64", "directory of train_data_batch_* and val_data")
    channels = native_channels(cfg, 3, "imagenet64")
    size = cfg.get("image_size")
    files = {"train": TRAIN, "test": TEST}
    for part, names in files.items():     # fail early on a missing file, before writing anything
        for name in names:
            if not ((root / f"{name}.npz").is_file() or (root / name).is_file()):
                raise DsmError(f"{root / name}[.npz]: file not found")
    hb, hr = holdout_start(root, int(cfg.get("n_holdout") or 0))
    # part -> [(file, first row, stop row or None = to the end)] in order
    spans = {"train": [(name, 0, None) for name in TRAIN[:hb]] + [(TRAIN[hb], 0, hr)],
             "test": [(name, 0, None) for name in TEST],
             "holdout": [(TRAIN[hb], hr, None)] + [(name, 0, None) for name in TRAIN[hb + 1:]]}
    caps = {"train": cfg.get("n_train"), "test": cfg.get("n_test"), "holdout": None}

    def chunks(part):
        left = caps[part]
        for name, lo, hi in spans[part]:
            if left is not None and left <= 0 or lo == hi:
                continue
            data, labels = load_file(root, name)
            stop = len(data) if hi is None else hi
            if left is not None:
                stop = min(stop, lo + left)
            for a in range(lo, stop, CHUNK):
                b = min(stop, a + CHUNK)
                px = convert_uint8(data[a:b].reshape(-1, 3, 64, 64), channels, size)
                yield Chunk(px, [f"imagenet64/{name}/{i:06d}" for i in range(a, b)], labels[a:b])
            if left is not None:
                left -= stop - lo
            del data, labels

    n_holdout = int(cfg.get("n_holdout") or 0)
    hints = {"train": cfg.get("n_train") or SIZES["train"] - n_holdout, "test": cfg.get("n_test") or SIZES["test"],
             "holdout": n_holdout}
    plans = [PartPlan(p, (lambda p=p: chunks(p)), hints[p]) for p in spans]
    meta = {"root": str(root), "holdout": {
        "rule": "the last n_holdout images of the source's training split, excluded from train",
        "first_id": f"imagenet64/{TRAIN[hb]}/{hr:06d}", "n": n_holdout}}
    return plans, meta
