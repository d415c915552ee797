"""``cifar10``: the CIFAR-10 python pickle batches (32×32 color).

Files under ``data.root`` (or ``data.root/cifar-10-batches-py``): ``data_batch_1`` …
``data_batch_5`` (train, 50,000) and ``test_batch`` (test, 10,000); each a pickled
dict with ``data`` (10000×3072 uint8, channel-major R, G, B planes of 32×32),
``labels`` (0–9) and ``filenames``; keys are bytes when written by Python 2.
Image ids ``cifar10/<batch>/<row>``. Options: none. The holdout part is the last
``data.n_holdout`` training images (the end of ``data_batch_5``), which train excludes. Read with the restricted
unpickler of :mod:`dsm.data.imagenet64`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from dsm.errors import DsmError

TRAIN = tuple(f"data_batch_{k}" for k in range(1, 6))
TEST = ("test_batch",)
ROW = 3 * 32 * 32


def load_batch(path: Path):
    """(data uint8 (n, 3, 32, 32), labels int64 (n,)) of one batch file."""
    from dsm.data.imagenet64 import _key, safe_unpickle

    if not path.is_file():
        raise DsmError(f"{path}: file not found")
    d = safe_unpickle(path, encoding="bytes")
    if not isinstance(d, dict):
        raise DsmError(f"{path}: expected a pickled dict, got {type(d).__name__}")
    data, labels = _key(d, "data"), _key(d, "labels")
    if data is None or labels is None:
        raise DsmError(f"{path}: missing 'data' or 'labels'")
    data, labels = np.asarray(data), np.asarray(labels)
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != ROW:
        raise DsmError(f"{path}: data {data.dtype} {data.shape}, expected uint8 (n, {ROW})")
    if labels.shape != (len(data),):
        raise DsmError(f"{path}: {labels.shape} labels for {len(data)} images")
    return data.reshape(-1, 3, 32, 32), labels.astype(np.int64)


def _rows(batches, lo: int, hi: int):
    """(name, data, labels, first row) of the rows lo … hi-1 of the concatenated ``batches``."""
    offset = 0
    for name, data, labels in batches:
        a, b = max(lo - offset, 0), min(hi - offset, len(data))
        if a < b:
            yield name, data[a:b], labels[a:b], a
        offset += len(data)


def plan(cfg: dict):
    from dsm.data.convert import (cap, convert_uint8, holdout_meta, holdout_split, native_channels,
                                  required_root)
    from dsm.data.store import Chunk, PartPlan

    root = required_root(cfg, "cifar10", "directory of data_batch_* and test_batch")
    if (root / "cifar-10-batches-py").is_dir():
        root = root / "cifar-10-batches-py"
    channels = native_channels(cfg, 3, "cifar10")
    size = cfg.get("image_size")
    files = {"train": TRAIN, "test": TEST}
    # 60,000 images are 184 MB: read and validate every batch before writing anything
    loaded = {p: [(name, *load_batch(root / name)) for name in names] for p, names in files.items()}
    n_avail = sum(len(d) for _, d, _ in loaded["train"])
    n_train, start = holdout_split(n_avail, cfg, "cifar10")
    n_test = cap(sum(len(d) for _, d, _ in loaded["test"]), cfg.get("n_test"))
    # part -> (batches, first row, stop row): holdout = the last n_holdout training images
    rows = {"train": ("train", 0, n_train), "test": ("test", 0, n_test),
            "holdout": ("train", start, n_avail)}

    def chunks(part):
        src, lo, hi = rows[part]
        for name, data, labels, first in _rows(loaded[src], lo, hi):
            yield Chunk(convert_uint8(data, channels, size),
                        [f"cifar10/{name}/{i:05d}" for i in range(first, first + len(data))], labels)

    ids = [f"cifar10/{name}/{first + i:05d}" for name, data, _, first in _rows(loaded["train"], start, n_avail)
           for i in range(len(data))]
    meta = {"root": str(root), "holdout": holdout_meta(start, n_avail, ids[0], ids[-1])}
    return [PartPlan(p, (lambda p=p: chunks(p)), rows[p][2] - rows[p][1]) for p in rows], meta
