"""``fashion-mnist``: 28×28 grayscale photos of clothing, from the official IDX files.

Files (each gzipped ``.gz`` or raw) under ``data.root``, by default
``/usr/share/datasets/fashion-mnist`` where the Debian package
``dataset-fashion-mnist`` installs them: ``train-images-idx3-ubyte``,
``train-labels-idx1-ubyte`` (60,000) and ``t10k-images-idx3-ubyte``,
``t10k-labels-idx1-ubyte`` (10,000). The IDX format: two zero bytes, a type code
(0x08 = uint8), the number of dimensions, the dimensions as big-endian int32, then
the values in row-major order. Image ids ``fashion-mnist/<file part>/<row>``; labels 0–9.
The holdout part is the last ``data.n_holdout`` rows of the training files (ids
``fashion-mnist/train/<row>``), which the train part excludes.
Options: none (``data.fashion-mnist`` is empty); ``channels`` must be 1;
``image_size`` other than 28 resizes (Lanczos).
"""

from __future__ import annotations

import gzip
import zlib
from pathlib import Path

import numpy as np

from dsm.errors import DsmError

DEFAULT_ROOT = "/usr/share/datasets/fashion-mnist"
DEBIAN_PACKAGE = "dataset-fashion-mnist"
FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
         "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}
CHUNK = 8192


def find(root: Path, name: str) -> Path:
    for cand in (root / name, root / f"{name}.gz"):
        if cand.is_file():
            return cand
    raise DsmError(f"{root / name}[.gz]: file not found (set data.root, or install the Debian "
                   f"package {DEBIAN_PACKAGE})")


def read_idx(path) -> np.ndarray:
    """The array stored in an IDX file (gzipped if the name ends in .gz); uint8 only."""
    path = Path(path)
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as f:
                raw = f.read()
        else:
            raw = path.read_bytes()
    except (OSError, EOFError, zlib.error) as e:
        raise DsmError(f"{path}: cannot read (corrupt or truncated gzip?): {e}") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise DsmError(f"{path}: not an IDX file (bad magic number)")
    if raw[2] != 0x08:
        raise DsmError(f"{path}: IDX value type 0x{raw[2]:02x}, expected 0x08 (unsigned byte)")
    ndim = raw[3]
    head = 4 + 4 * ndim
    if ndim == 0 or len(raw) < head:
        raise DsmError(f"{path}: truncated IDX header")
    dims = tuple(int(x) for x in np.frombuffer(raw, ">i4", count=ndim, offset=4))
    expect = head + int(np.prod(dims))
    if len(raw) != expect:
        what = "truncated" if len(raw) < expect else "has trailing bytes"
        raise DsmError(f"{path}: {what}: {len(raw)} bytes, expected {expect} for shape {dims}")
    return np.frombuffer(raw, np.uint8, offset=head).reshape(dims)


def load_part(root, part: str):
    """(images uint8 (n, 28, 28), labels uint8 (n,)) of ``part`` ('train' or 'test')."""
    root = Path(root)
    img_path, lab_path = (find(root, name) for name in FILES[part])
    images, labels = read_idx(img_path), read_idx(lab_path)
    if images.ndim != 3:
        raise DsmError(f"{img_path}: expected 3 dimensions (n, H, W), got shape {images.shape}")
    if labels.ndim != 1 or len(labels) != len(images):
        raise DsmError(f"{lab_path}: expected {len(images)} labels, got shape {labels.shape}")
    return images, labels


def plan(cfg: dict):
    from dsm.data.convert import cap, convert_uint8, holdout_meta, holdout_split, native_channels
    from dsm.data.store import Chunk, PartPlan

    root = Path(cfg.get("root") or DEFAULT_ROOT)
    if not root.is_dir():
        raise DsmError(f"{root}: data.root not found (Fashion-MNIST IDX files; on Debian install "
                       f"the package {DEBIAN_PACKAGE}, which puts them in {DEFAULT_ROOT})")
    channels = native_channels(cfg, 1, "fashion-mnist")
    size = cfg.get("image_size")
    # read (and so validate) everything before writing anything
    loaded = {p: load_part(root, p) for p in FILES}
    n_avail = len(loaded["train"][0])
    n_train, start = holdout_split(n_avail, cfg, "fashion-mnist")
    # part -> (file part, first row, stop row): holdout = the last n_holdout training images
    rows = {"train": ("train", 0, n_train),
            "test": ("test", 0, cap(len(loaded["test"][0]), cfg.get("n_test"))),
            "holdout": ("train", start, n_avail)}

    def chunks(part):
        src, lo, hi = rows[part]
        images, labels = loaded[src]
        for a in range(lo, hi, CHUNK):
            b = min(hi, a + CHUNK)
            px = convert_uint8(images[a:b, None], channels, size)
            yield Chunk(px, [f"fashion-mnist/{src}/{i:05d}" for i in range(a, b)], labels[a:b])

    plans = [PartPlan(p, (lambda p=p: chunks(p)), rows[p][2] - rows[p][1]) for p in rows]
    meta = {"root": str(root), "holdout": holdout_meta(start, n_avail, f"fashion-mnist/train/{start:05d}",
                                                        f"fashion-mnist/train/{n_avail - 1:05d}")}
    return plans, meta
