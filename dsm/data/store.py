"""The prepared image store: the one on-disk form every data source is written to.

A prepared dataset is a directory ``DIR`` with three parts, ``DIR/train``, ``DIR/test`` and
``DIR/holdout``. ``holdout`` holds ``data.n_holdout`` images of the training distribution
that are never trained on and never scored (the normalization set of the constant):
synthetic sources draw them from a seed stream of their own, real sources take the last
``n_holdout`` images of their training split (which ``train`` then excludes). Each part:

* ``pixels.npy``    (n, C, H, W); uint8 for 8-bit sources (scaled by 1/255 on read) or
  float32 for synthetic sources (``field``, ``gsm``: stored as is, never clipped).
  Memory-mappable: ``np.load(path, mmap_mode='r')``.
* ``index.parquet`` one row per image: ``image_index`` (int64, row of pixels.npy),
  ``image_id`` (str, stable across reruns), ``content_hash`` (str, hex SHA-256 of the
  image's stored bytes, C order), ``label`` (int64, the source's class label, -1 if none).
* ``meta.json``     source, part, n, shape (C, H, W), dtype, scale (multiplier to [0, 1]),
  the resolved data params, their hash, the code version and, for exact sources, the
  ``exact`` block :func:`dsm.data.exact_density` rebuilds the density from.

``DIR/done`` (JSON: params hash, image counts) marks a finished store. The whole
directory is built in a hidden temporary directory beside ``DIR`` and renamed into
place, so a failed or killed run leaves no ``DIR`` that looks complete (the next run
removes what a killed one left: :func:`dsm.io.remove_stale_temps`). An existing ``DIR``
is replaced only if it is a store (it has ``done``) or empty; anything else is refused.
Pixels are written chunk by chunk (the .npy header is rewritten with the final count at
the end), so memory stays bounded by one chunk whatever the number of images.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

import numpy as np

from dsm.errors import DsmError
from dsm.io import json_default

FORMAT = "dsm-store/2"             # /2: the holdout part
PARTS = ("train", "test", "holdout")


@dataclass
class Chunk:
    """A block of consecutive images from a source.

    pixels: (b, C, H, W) uint8 or float32; ids: b stable image ids; labels: (b,) int or None.
    """

    pixels: np.ndarray
    ids: list
    labels: np.ndarray | None = None


@dataclass
class PartPlan:
    """How to produce one part: a chunk iterator factory plus what is known in advance."""

    name: str
    chunks: Callable[[], Iterable[Chunk]]
    n_hint: int | None = None          # expected number of images (progress bar only)
    meta: dict = field(default_factory=dict)   # extra meta.json entries for this part


# --- reading -------------------------------------------------------------------------

class Store:
    """One part (train, test or holdout) of a prepared store, memory-mapped.

    ``len(store)`` images of shape ``store.shape`` = (C, H, W), ``store.d`` = C*H*W.
    """

    def __init__(self, path):
        self.path = Path(path)
        meta_path = self.path / "meta.json"
        if not meta_path.is_file():
            raise DsmError(f"{self.path}: not a prepared store part (no meta.json); run `dsm prepare`")
        from dsm.io import read_json

        self.meta = read_json(meta_path, "store meta.json")
        if not isinstance(self.meta, dict) or "n" not in self.meta or "shape" not in self.meta:
            raise DsmError(f"{meta_path}: not the meta.json of a prepared store (keys n, shape)")
        try:
            self.pixels = np.load(self.path / "pixels.npy", mmap_mode="r")
        except (OSError, ValueError) as e:
            raise DsmError(f"{self.path / 'pixels.npy'}: cannot read: {e}") from None
        if list(self.pixels.shape) != [self.meta["n"], *self.meta["shape"]]:
            raise DsmError(f"{self.path / 'pixels.npy'}: shape {self.pixels.shape} does not match "
                           f"meta.json (n={self.meta['n']}, shape={self.meta['shape']})")
        self.scale = float(self.meta.get("scale", 1.0))
        self._index = None

    def __len__(self) -> int:
        return int(self.pixels.shape[0])

    @property
    def shape(self) -> tuple:
        return tuple(self.pixels.shape[1:])

    @property
    def d(self) -> int:
        return int(np.prod(self.shape))

    @property
    def index(self):
        """pandas DataFrame: image_index, image_id, content_hash, label."""
        if self._index is None:
            from dsm.io import read_parquet

            self._index = read_parquet(self.path / "index.parquet", "store index")
        return self._index

    def images(self, idx=None) -> np.ndarray:
        """float32 (B, C, H, W) images at integer indices ``idx`` (default: all).

        8-bit data are scaled to [0, 1]; synthetic float data are returned as stored.
        """
        raw = self.pixels if idx is None else self.pixels[np.asarray(idx)]
        out = np.asarray(raw, dtype=np.float32)
        if self.scale != 1.0:
            out *= np.float32(self.scale)
        return out

    def read_range(self, start: int, stop: int) -> np.ndarray:
        """Stored values of images start … stop-1 by a plain file read (no mapped pages
        stay resident, unlike slicing the memmap): for streaming passes over the data."""
        count = max(0, stop - start) * self.d
        return np.fromfile(self.path / "pixels.npy", dtype=self.pixels.dtype, count=count,
                           offset=self.pixels.offset + start * self.d * self.pixels.itemsize
                           ).reshape(-1, *self.shape)

    def raw(self, idx) -> np.ndarray:
        """Stored values (uint8 or float32) at ``idx``, (B, C, H, W)."""
        return np.asarray(self.pixels[np.asarray(idx)])


def open_store(path, part: str | None = None) -> Store:
    """Open ``path`` (a part directory such as ``DIR/train``), or ``DIR`` with ``part``."""
    path = Path(path)
    if part is not None:
        if part not in PARTS:
            raise DsmError(f"store part must be one of {PARTS}, got {part!r}")
        if not (path / part).exists() and (path / "train").is_dir():
            raise DsmError(f"{path}: prepared store has no {part} part (an older store format); "
                           f"re-run `dsm prepare`")
        path = path / part
    if not path.exists():
        raise DsmError(f"{path}: prepared store not found; run `dsm prepare`")
    return Store(path)


def is_done(out, params_hash: str | None = None) -> bool:
    """True if ``out`` is a finished store (with the given params hash, if given)."""
    done = Path(out) / "done"
    if not done.is_file():
        return False
    try:
        info = json.loads(done.read_text())
    except ValueError:
        return False
    return params_hash is None or info.get("params_hash") == params_hash


# --- writing -------------------------------------------------------------------------

def row_hashes(pixels: np.ndarray) -> list[str]:
    """Hex SHA-256 of each image's stored bytes (C order), the store's content hash."""
    flat = np.ascontiguousarray(pixels).reshape(len(pixels), -1)
    return [hashlib.sha256(row.data).hexdigest() for row in flat]


def _npy_header(shape, dtype) -> bytes:
    import io

    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        buf, {"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)), "fortran_order": False,
              "shape": tuple(int(s) for s in shape)})
    return buf.getvalue()


def _write_part(plan: PartPlan, part_dir: Path, meta: dict, progress: bool) -> int:
    """Stream ``plan``'s chunks into ``part_dir``; return the number of images."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    part_dir.mkdir(parents=True)
    schema = pa.schema([("image_index", pa.int64()), ("image_id", pa.string()),
                        ("content_hash", pa.string()), ("label", pa.int64())])
    n, shape, dtype = 0, None, None
    with _bar(plan.n_hint, f"prepare {meta['source']} {plan.name}", progress) as bar, \
            open(part_dir / "pixels.npy", "wb") as f, \
            pq.ParquetWriter(part_dir / "index.parquet", schema) as writer:
        header_len = None
        for chunk in plan.chunks():
            px = chunk.pixels
            where = f"{meta['source']} {plan.name} images {n}..{n + len(px) - 1}"
            if px.ndim != 4:
                raise DsmError(f"{where}: expected (b, C, H, W) pixels, got shape {px.shape}")
            if shape is None:
                shape, dtype = px.shape[1:], px.dtype
                if dtype not in (np.uint8, np.float32):
                    raise DsmError(f"{where}: pixel dtype {dtype} (expected uint8 or float32)")
                header = _npy_header((0, *shape), dtype)
                header_len = len(header)
                f.write(header)
            if px.shape[1:] != shape or px.dtype != dtype:
                raise DsmError(f"{where}: shape {px.shape[1:]} {px.dtype} differs from the first "
                               f"images' {shape} {dtype}")
            if dtype == np.float32 and not np.isfinite(px).all():
                bad = n + int(np.flatnonzero(~np.isfinite(px.reshape(len(px), -1)).all(1))[0])
                raise DsmError(f"{meta['source']} {plan.name} image {bad}: non-finite pixel values")
            if len(chunk.ids) != len(px):
                raise DsmError(f"{where}: {len(chunk.ids)} ids for {len(px)} images")
            px = np.ascontiguousarray(px)
            f.write(px.tobytes())
            labels = (np.full(len(px), -1, np.int64) if chunk.labels is None
                      else np.asarray(chunk.labels, np.int64))
            writer.write_table(pa.table({
                "image_index": np.arange(n, n + len(px), dtype=np.int64),
                "image_id": pa.array([str(i) for i in chunk.ids], pa.string()),
                "content_hash": pa.array(row_hashes(px), pa.string()),
                "label": labels}, schema=schema))
            n += len(px)
            bar.update(len(px))
        if shape is None:
            raise DsmError(f"{meta['source']} {plan.name}: no images")
        header = _npy_header((n, *shape), dtype)
        assert len(header) == header_len, "npy header length changed"  # numpy pads for growth
        f.seek(0)
        f.write(header)
        f.flush()
        os.fsync(f.fileno())
    part_meta = dict(meta, **plan.meta, part=plan.name, n=n, shape=[int(s) for s in shape],
                     dtype=str(np.dtype(dtype)), scale=(1 / 255 if dtype == np.uint8 else 1.0),
                     format=FORMAT)
    (part_dir / "meta.json").write_text(json.dumps(part_meta, indent=2, sort_keys=True,
                                                   default=json_default) + "\n")
    return n


def is_store(out) -> bool:
    """True if ``out`` is a prepared store of ours (it has the ``done`` marker), finished
    with any params: what ``dsm prepare`` may replace."""
    done = Path(out) / "done"
    try:
        info = json.loads(done.read_text())
    except (OSError, ValueError):
        return False
    return isinstance(info, dict) and "params_hash" in info


def check_replaceable(out) -> None:
    """Refuse an ``out`` that exists and is neither an empty directory nor a prepared store
    (a typo in ``--out`` must not delete a folder)."""
    out = Path(out)
    if not (out.exists() or out.is_symlink()):
        return
    if out.is_dir() and not is_store(out) and any(out.iterdir()):
        raise DsmError(f"{out}: exists and is not a prepared store (no {out / 'done'}); refusing "
                       f"to replace it: remove it yourself or choose another --out")
    if not out.is_dir():
        raise DsmError(f"{out}: exists and is not a directory; refusing to replace it")


def remove_stale_temps(out) -> None:
    """Remove the temporary directories a killed ``dsm prepare`` of ``out`` left beside it."""
    from dsm.io import remove_stale_temps as remove

    remove(Path(out).parent, Path(out).name)


def write_store(out, plans: list[PartPlan], meta: dict, progress: bool = True) -> Path:
    """Build the store ``out`` from one plan per part, atomically.

    ``meta`` must hold ``source`` and ``params_hash``. An existing ``out`` must be a store
    (or an empty directory): anything else is refused before any work. Any error removes
    the temporary directory and leaves an existing ``out`` untouched; a full disk is a
    DsmError naming ``out``.
    """
    from dsm.io import is_no_space, temp_prefix, umask

    out = Path(out)
    check_replaceable(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(out)
    tmp = Path(tempfile.mkdtemp(prefix=temp_prefix(out.name), suffix=".tmp", dir=out.parent))
    os.chmod(tmp, 0o777 & ~umask())                   # mkdtemp makes it private
    try:
        counts = {p.name: _write_part(p, tmp / p.name, meta, progress) for p in plans}
        (tmp / "done").write_text(json.dumps(
            {"params_hash": meta["params_hash"], "source": meta["source"], "n": counts},
            indent=2, sort_keys=True) + "\n")
        check_replaceable(out)                         # nothing appeared meanwhile
        old = None
        if out.exists() or out.is_symlink():
            old = Path(tempfile.mkdtemp(prefix=temp_prefix(out.name), suffix=".old", dir=out.parent))
            os.replace(out, old / "store")
        os.replace(tmp, out)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if is_no_space(e):
            raise DsmError(f"no space left on the device of {out.parent} (writing {out}); "
                           f"nothing was written") from None
        raise
    return out


def _bar(total, desc, enabled):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="img", file=sys.stderr, disable=not enabled,
                mininterval=1.0, leave=False)

