"""``folder``: a user's own PNG/JPEG images, from any directory tree.

Images are the files under ``data.root`` whose names end in .png, .jpg or .jpeg (any
case), in sorted order of their relative paths, which are their image ids. If
``root`` has ``train/`` and ``test/`` subfolders they are the parts; otherwise each
image goes to test when the SHA-256 of its relative path, read as a fraction in
[0, 1), is below ``data.folder.test_fraction`` (default 0.1), so adding or removing
files never moves the others between train and test. The holdout part is the last
``data.n_holdout`` training images in that order, which train excludes.

Every image is converted to RGB (palette, alpha and 16-bit modes through PIL), then
to grayscale by ITU-R 601 luma when ``channels`` is 1 (default: 3). With
``image_size`` set, the shorter side is resized to it (Lanczos) and the center
square cropped; with ``image_size`` null all images must have one size. An
unreadable or truncated file, or a size mismatch, is an error naming the file.
Memory is bounded by one chunk of images.
"""

from __future__ import annotations

import hashlib
import warnings
from pathlib import Path

import numpy as np

from dsm.errors import DsmError

EXTENSIONS = (".png", ".jpg", ".jpeg")
CHUNK = 1024


def list_images(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*")
                  if p.suffix.lower() in EXTENSIONS and p.is_file())


def _to_test(rel: str, fraction: float) -> bool:
    h = int.from_bytes(hashlib.sha256(rel.encode()).digest()[:8], "big")
    return h / 2 ** 64 < fraction


def load_image(path: Path, size: int | None) -> np.ndarray:
    """uint8 (3, H, W) RGB, resized/center-cropped to ``size`` if given."""
    from PIL import Image, UnidentifiedImageError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                im.load()
                if im.mode.startswith("I"):          # 16-bit gray: keep the high byte
                    hi = np.asarray(im.convert("I"), np.int64) >> 8
                    im = Image.fromarray(np.clip(hi, 0, 255).astype(np.uint8), "L")
                rgb = im.convert("RGB")
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError,
            Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise DsmError(f"{path}: cannot read image: {e}") from None
    if size is not None:
        w, h = rgb.size
        scale = size / min(w, h)
        nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
        rgb = rgb.resize((nw, nh), Image.Resampling.LANCZOS)
        left, top = (nw - size) // 2, (nh - size) // 2
        rgb = rgb.crop((left, top, left + size, top + size))
    return np.asarray(rgb).transpose(2, 0, 1)


def plan(cfg: dict):
    from dsm.data.convert import cap, convert_uint8, holdout_meta, holdout_split, required_root
    from dsm.data.store import Chunk, PartPlan

    root = required_root(cfg, "folder", "a directory of PNG/JPEG images")
    frac = float(cfg["folder"]["test_fraction"])
    if not 0 <= frac < 1:
        raise DsmError(f"data.folder.test_fraction: must be in [0, 1), got {frac}")
    channels = cfg.get("channels") or 3
    size = cfg.get("image_size")
    if (root / "train").is_dir() and (root / "test").is_dir():
        files = {p: [f"{p}/{r}" for r in list_images(root / p)] for p in ("train", "test")}
    else:
        every = list_images(root)
        files = {"train": [r for r in every if not _to_test(r, frac)],
                 "test": [r for r in every if _to_test(r, frac)]}
    for part, names in files.items():
        if not names:
            raise DsmError(f"{root}: no PNG/JPEG images for the {part} part")
    every_train = files["train"]
    n_train, start = holdout_split(len(every_train), cfg, f"folder {root}")
    files = {"train": every_train[:n_train], "test": files["test"][:cap(len(files["test"]), cfg.get("n_test"))],
             "holdout": every_train[start:]}

    def chunks(part):
        names = files[part]
        first = None
        for a in range(0, len(names), CHUNK):
            batch = []
            for rel in names[a:a + CHUNK]:
                im = load_image(root / rel, size)
                if first is None:
                    first = (rel, im.shape)
                elif im.shape != first[1]:
                    raise DsmError(f"{root / rel}: size {im.shape[2]}x{im.shape[1]} differs from "
                                   f"{first[0]}'s {first[1][2]}x{first[1][1]} (set data.image_size to resize)")
                batch.append(im)
            yield Chunk(convert_uint8(np.stack(batch), channels, None), names[a:a + CHUNK])

    meta = {"root": str(root), "holdout": holdout_meta(start, len(every_train), files["holdout"][0],
                                                        files["holdout"][-1])}
    return [PartPlan(p, (lambda p=p: chunks(p)), len(files[p])) for p in files], meta
