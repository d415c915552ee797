"""``cifar10``: the CIFAR-10 python pickle batches (32×32 color).

Files under ``data.root`` (or ``data.root/cifar-10-batches-py``): ``data_batch_1`` …
``data_batch_5`` (train, 50,000) and ``test_batch`` (test, 10,000); each a pickled
dict with ``data`` (10000×3072 uint8, channel-major R, G, B planes of 32×32),
``labels`` (0–9) and ``filenames``; keys are bytes when written by Python 2.
Image ids ``cifar10/<batch>/<row>``. Options: none. Read with the restricted
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


def plan(cfg: dict):
    from dsm.data.convert import convert_uint8, native_channels, required_root
    from dsm.data.store import Chunk, PartPlan

    root = required_root(cfg, "cifar10", "directory of data_batch_* and test_batch")
    if (root / "cifar-10-batches-py").is_dir():
        root = root / "cifar-10-batches-py"
    channels = native_channels(cfg, 3, "cifar10")
    size = cfg.get("image_size")
    files = {"train": TRAIN, "test": TEST}
    # 60,000 images are 184 MB: read and validate every batch before writing anything
    loaded = {p: [(name, *load_batch(root / name)) for name in names] for p, names in files.items()}

    def chunks(part):
        left = cfg.get(f"n_{part}")
        for name, data, labels in loaded[part]:
            n = len(data) if left is None else min(len(data), left)
            if n <= 0:
                return
            yield Chunk(convert_uint8(data[:n], channels, size),
                        [f"cifar10/{name}/{i:05d}" for i in range(n)], labels[:n])
            if left is not None:
                left -= n

    def total(p):
        n = sum(len(d) for _, d, _ in loaded[p])
        return n if cfg.get(f"n_{p}") is None else min(n, cfg[f"n_{p}"])

    return [PartPlan(p, (lambda p=p: chunks(p)), total(p)) for p in files], {"root": str(root)}
