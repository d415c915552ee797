"""Conversion helpers shared by the real-image sources (a leaf module: it imports no
source and no part of ``dsm prepare``, so the sources and the dispatcher do not import
each other).
"""

from __future__ import annotations

from pathlib import Path

from dsm.errors import DsmError

LUMA = (0.299, 0.587, 0.114)   # ITU-R BT.601


def required_root(cfg: dict, source: str, what: str) -> Path:
    """``data.root`` as an existing directory; DsmError naming the key or the path otherwise."""
    if not cfg.get("root"):
        raise DsmError(f"data.root: required for source {source} ({what})")
    root = Path(cfg["root"])
    if not root.is_dir():
        raise DsmError(f"{root}: data.root not found")
    return root


def native_channels(cfg: dict, native: int, source: str) -> int:
    """Output channels for a source whose images have ``native`` channels."""
    c = cfg.get("channels") or native
    if c == 3 and native == 1:
        raise DsmError(f"data.channels: {source} images are grayscale; channels must be 1 (or null), got 3")
    return c


def convert_uint8(px, channels: int, size: int | None):
    """uint8 (b, C, H, W) -> uint8 (b, channels, size, size).

    Color to grayscale by ITU-R 601 luma (0.299 R + 0.587 G + 0.114 B, rounded);
    resizing (only when ``size`` differs from H or W) by Lanczos filtering with PIL.
    """
    import numpy as np

    if px.shape[1] == 3 and channels == 1:
        luma = np.tensordot(np.asarray(LUMA, np.float32), px.astype(np.float32), axes=([0], [1]))
        px = np.clip(np.rint(luma), 0, 255).astype(np.uint8)[:, None]
    if size is not None and px.shape[2:] != (size, size):
        from PIL import Image

        out = np.empty((len(px), px.shape[1], size, size), np.uint8)
        for i, im in enumerate(px):
            hwc = im[0] if im.shape[0] == 1 else im.transpose(1, 2, 0)
            r = Image.fromarray(np.ascontiguousarray(hwc)).resize((size, size), Image.Resampling.LANCZOS)
            arr = np.asarray(r)
            out[i] = arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)
        px = out
    return np.ascontiguousarray(px)


def cap(n_avail: int, limit: int | None) -> int:
    return n_avail if limit is None else min(n_avail, limit)


def holdout_split(n_avail: int, cfg: dict, source: str) -> tuple[int, int]:
    """(images of the train part, first image of the holdout part) of a real source whose
    training split has ``n_avail`` images: the holdout part is the last ``data.n_holdout``
    of them, and the train part the first ``data.n_train`` (null: all) of the rest."""
    h = int(cfg.get("n_holdout") or 0)
    if h >= n_avail:
        raise DsmError(f"data.n_holdout: {h} would leave none of the {n_avail} training images of "
                       f"{source} for training (set a smaller data.n_holdout)")
    start = n_avail - h
    return cap(start, cfg.get("n_train")), start


def holdout_meta(start: int, n_avail: int, first_id: str, last_id: str) -> dict:
    """The ``holdout`` entry of a real source's meta.json: which training images it holds."""
    return {"rule": "the last n_holdout images of the source's training split, excluded from train",
            "first_index": int(start), "n_training_split": int(n_avail),
            "first_id": first_id, "last_id": last_id}
