"""A user's own images for ``dsm logp``: image files, folders and arrays, converted the
way the model's training data was.

Inputs, any mix, in the order given (each name a path):

* PNG/JPEG files (``.png``, ``.jpg``, ``.jpeg``, any case);
* folders: every such file below them (recursively), sorted by relative path;
* ``.npy`` arrays (memory-mapped and streamed: any size) and ``.npz`` archives (every
  array in the archive's order, each loaded whole, one at a time).

What is assumed. A model file holds the image shape [C, H, W] it was trained on, not
the training data's store meta, so the conversion assumed is the one ``dsm prepare``
applies to 8-bit sources (``dsm.data.folder``, ``dsm.data.convert``):

* image files must be 8-bit (a 16-bit PNG is refused rather than truncated); PIL
  decodes them to RGB (palettes expanded, alpha dropped, grayscale replicated), a
  one-channel model then takes the ITU-R 601 luma rounded to 8 bits, and values are
  divided by 255 (float32, exactly as ``Store.images`` scales a uint8 store);
* the size must be H x W; with ``resize`` the shorter side is resized to H (Lanczos)
  and the center square cropped, as ``data.image_size`` does for the ``folder`` source;
* arrays are (n, C, H, W), or (n, H, W) for a one-channel model; uint8 (divided by 255)
  or float in [0, 1] (float16/32/64, cast to float32); ``allow_unclipped`` accepts finite
  floats outside [0, 1] (the synthetic ``field`` images are not clipped). Arrays are
  never resized.

Anything else (a corrupt or truncated file, another size, another bit depth or dtype,
an empty folder) is a :class:`DsmError` naming the file, raised by :func:`scan` (headers
only, before any work) or, for what only decoding reveals, by :func:`batches`.

Patch mode (``dsm logp --patches STRIDE``, a model of small patches such as the
``natural`` scale's): each photograph of any size is cut into the model's s x s patches
on a grid of ``STRIDE`` pixels, made as the ``patches`` source makes its pixels
(:func:`image_patches`).
"""

from __future__ import annotations

import warnings
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from dsm.errors import DsmError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")
ARRAY_EXTENSIONS = (".npy", ".npz")
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@dataclass(frozen=True)
class Item:
    """One input unit: an image file, or one array (of a .npy file or a .npz member)."""

    kind: str            # image | npy | npz
    path: Path
    count: int           # images in it
    key: str | None = None


def _png_bit_depth(path: Path) -> int | None:
    with open(path, "rb") as f:
        head = f.read(33)
    if head[:8] != _PNG_SIGNATURE or head[12:16] != b"IHDR":
        return None
    return head[24]


def _scan_image(path: Path, shape, resize: bool) -> Item:
    from PIL import Image, UnidentifiedImageError

    c, h, w = shape
    try:
        # an image too large to decode safely (PIL's decompression-bomb limit) is refused
        # here, from its header, as `dsm.data.folder.load_image` would refuse to decode it
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                mode, size = im.mode, im.size
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError,
            Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise DsmError(f"{path}: cannot read image: {e}") from None
    # the PNG header's bit depth whatever the file's name: PIL reads a 16-bit RGB PNG as
    # 8-bit RGB (cutting the low byte), also when it is named .jpg
    depth = _png_bit_depth(path)
    if (depth is not None and depth > 8) or mode.startswith(("I", "F")):
        raise DsmError(f"{path}: {depth or 16}-bit image (mode {mode}); only 8-bit images are supported "
                       f"(the model's pixels are 8-bit values / 255): convert it to 8 bits")
    if size != (w, h) and not resize:
        raise DsmError(f"{path}: size {size[0]}x{size[1]} does not match the model's {w}x{h} "
                       f"(pass --resize to resize the shorter side and center-crop)")
    return Item("image", path, 1)


def _check_array_shape(where: str, shape, dtype, model_shape) -> int:
    c, h, w = model_shape
    ok = (len(shape) == 4 and tuple(shape[1:]) == (c, h, w)) or (len(shape) == 3 and c == 1 and tuple(shape[1:]) == (h, w))
    if not ok:
        want = f"(n, {c}, {h}, {w})" + (f" or (n, {h}, {w})" if c == 1 else "")
        raise DsmError(f"{where}: array of shape {tuple(shape)} does not fit the model: expected {want}")
    if not (dtype == np.uint8 or np.issubdtype(dtype, np.floating)):
        raise DsmError(f"{where}: dtype {dtype} not supported (expected uint8, or float in [0, 1])")
    if shape[0] == 0:
        raise DsmError(f"{where}: empty array (no images)")
    return int(shape[0])


def _npz_headers(path: Path) -> list[tuple[str, tuple, np.dtype]]:
    """(key, shape, dtype) of every array of an .npz, from the headers only; a member whose
    header claims more (or fewer) bytes than the member holds is refused here, before a
    load would try to allocate what the header claims."""
    out = []
    try:
        with zipfile.ZipFile(path) as zf:
            for info in zf.infolist():
                name = info.filename
                if not name.endswith(".npy"):
                    continue
                with zf.open(info) as f:
                    version = np.lib.format.read_magic(f)
                    read = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                            else np.lib.format.read_array_header_2_0)
                    shape, _, dtype = read(f)
                    offset = f.tell()
                claimed = offset + int(np.prod(shape, dtype=object)) * dtype.itemsize
                if dtype.hasobject or claimed != info.file_size:
                    raise DsmError(f"{path}[{name[:-4]}]: its header claims an array of shape "
                                   f"{tuple(shape)} ({claimed - offset} bytes) but the member holds "
                                   f"{info.file_size - offset} bytes: truncated or corrupt")
                out.append((name[:-4], shape, dtype))
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as e:
        raise DsmError(f"{path}: cannot read .npz archive: {e}") from None
    if not out:
        raise DsmError(f"{path}: no arrays in the archive")
    return out


def _open_npy(path: Path) -> np.ndarray:
    """The memory-mapped array of a .npy file; a file that is not one (a text file named
    .npy, a truncated one) is a DsmError saying so (numpy would call anything without the
    .npy header "pickled data", and suggest loading it unsafely)."""
    try:
        with open(path, "rb") as f:
            magic = f.read(6)
    except OSError as e:
        raise DsmError(f"{path}: cannot read: {e.strerror}") from None
    if magic != b"\x93NUMPY":
        raise DsmError(f"{path}: not a NumPy .npy file (no .npy header; written by numpy.save?)")
    try:
        return np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError) as e:
        raise DsmError(f"{path}: cannot read .npy array: {e}") from None


def _utf8_name(path: Path) -> Path:
    """``path``, if its name is valid UTF-8 (the table's ``file`` column is UTF-8 text)."""
    try:
        str(path).encode("utf-8")
    except UnicodeEncodeError:
        shown = str(path).encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
        raise DsmError(f"{shown}: file name is not valid UTF-8 (the output table names each "
                       f"file in UTF-8); rename it") from None
    return path


def scan(inputs, shape, resize: bool = False) -> list[Item]:
    """Every input unit, validated from headers (files, sizes, modes, shapes, dtypes)."""
    items: list[Item] = []
    for name in inputs:
        path = _utf8_name(Path(name))
        if path.is_dir():
            files = sorted((_utf8_name(p) for p in path.rglob("*")
                            if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS),
                           key=lambda p: p.relative_to(path).as_posix())
            if not files:
                raise DsmError(f"{path}: no PNG/JPEG images (.png, .jpg, .jpeg) in this folder")
            items += [_scan_image(p, shape, resize) for p in files]
        elif not path.exists():
            raise DsmError(f"{path}: not found")
        elif path.suffix.lower() in IMAGE_EXTENSIONS:
            items.append(_scan_image(path, shape, resize))
        elif path.suffix.lower() == ".npy":
            arr = _open_npy(path)
            items.append(Item("npy", path, _check_array_shape(str(path), arr.shape, arr.dtype, shape)))
        elif path.suffix.lower() == ".npz":
            for key, shp, dtype in _npz_headers(path):
                items.append(Item("npz", path, _check_array_shape(f"{path}[{key}]", shp, dtype, shape), key))
        else:
            raise DsmError(f"{path}: unsupported file type (expected .png, .jpg, .jpeg, .npy, .npz or a folder)")
    if not items:
        raise DsmError("no input images")
    return items


def _to_float(where: str, a: np.ndarray, model_shape, allow_unclipped: bool) -> np.ndarray:
    a = np.asarray(a)
    if a.ndim == 3:
        a = a[:, None]
    if a.dtype == np.uint8:
        out = a.astype(np.float32)
        out *= np.float32(1 / 255)
        return out
    out = a.astype(np.float32)
    if not np.isfinite(out).all():
        raise DsmError(f"{where}: non-finite values")
    if not allow_unclipped and (out.min() < 0 or out.max() > 1):
        raise DsmError(f"{where}: float values outside [0, 1] (min {out.min():.4g}, max {out.max():.4g}); "
                       f"pixels must be in [0, 1] (or pass --allow-unclipped, e.g. for field images)")
    return out


def _image_pixels(items: list[Item], shape, resize: bool) -> np.ndarray:
    from dsm.data.convert import convert_uint8
    from dsm.data.folder import load_image

    c, h, _ = shape
    px = np.stack([load_image(it.path, h if resize else None) for it in items])
    px = convert_uint8(px, c, None)
    out = px.astype(np.float32)
    out *= np.float32(1 / 255)
    return out


def batches(items: list[Item], shape, batch_size: int, resize: bool = False,
            allow_unclipped: bool = False) -> Iterator[tuple[dict, np.ndarray]]:
    """(columns, x) per batch: columns ``file`` (str), ``key`` (npz member or None),
    ``index`` (position in the array, None for image files); x float32 (b, C, H, W).
    Image files are grouped into batches; arrays are read ``batch_size`` images at a time."""
    pending: list[Item] = []

    def flush():
        x = _image_pixels(pending, shape, resize)
        cols = {"file": [str(it.path) for it in pending], "key": [None] * len(pending),
                "index": [None] * len(pending)}
        pending.clear()
        return cols, x

    for it in items:
        if it.kind == "image":
            pending.append(it)
            if len(pending) == batch_size:
                yield flush()
            continue
        if pending:
            yield flush()
        if it.kind == "npy":
            arr = _open_npy(it.path)
            where = str(it.path)
        else:
            where = f"{it.path}[{it.key}]"
            try:
                with np.load(it.path, allow_pickle=False) as z:
                    arr = z[it.key]
            except (zipfile.BadZipFile, zlib.error, OSError, ValueError, EOFError) as e:
                raise DsmError(f"{where}: cannot read the array: {e}") from None
        for a in range(0, it.count, batch_size):
            b = min(it.count, a + batch_size)
            x = _to_float(f"{where} images {a}..{b - 1}", arr[a:b], shape, allow_unclipped)
            yield ({"file": [str(it.path)] * (b - a), "key": [it.key] * (b - a),
                    "index": list(range(a, b))}, x)
    if pending:
        yield flush()


# --- patch mode: score a photograph with a model of small patches -----------------------

def patch_files(inputs) -> list[Path]:
    """The image files of ``inputs`` (files, and folders recursively, sorted); patch mode
    takes photographs only (arrays: score their patches as arrays instead)."""
    files: list[Path] = []
    for name in inputs:
        path = Path(name)
        if path.is_dir():
            found = sorted((p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS),
                           key=lambda p: p.relative_to(path).as_posix())
            if not found:
                raise DsmError(f"{path}: no PNG/JPEG images (.png, .jpg, .jpeg) in this folder")
            files += found
        elif not path.exists():
            raise DsmError(f"{path}: not found")
        elif path.suffix.lower() in IMAGE_EXTENSIONS:
            files.append(path)
        else:
            raise DsmError(f"{path}: --patches takes PNG/JPEG images or folders of them, not "
                           f"{path.suffix or 'this file'} (score an array's patches without --patches)")
    if not files:
        raise DsmError("no input images")
    return files


def image_patches(path: Path, shape, stride: int, seed: int = 0):
    """(patches float32 (n, C, s, s), ys, xs) of the image file ``path``: every s x s patch
    (s the model's size) with its top-left corner on the grid 0, stride, 2 stride, ...,
    pixels made as the ``patches`` source makes them: 8-bit values k (ITU-R 601 luma for a
    one-channel model, else RGB), dequantized (k + u) / 256 with u ~ U[0, 1) per pixel
    seeded by (``seed``, the file's name) (:func:`dsm.data.patches.dequantize`)."""
    from numpy.lib.stride_tricks import sliding_window_view

    from dsm.data.patches import dequantize, read_luma

    c, s, w = shape
    if s != w:
        raise DsmError(f"--patches: the model's images are {s}x{w}; patch mode needs square ones")
    if c == 1:
        k = read_luma(path)[None]
    else:
        from dsm.data.folder import load_image

        k = load_image(path, None)
    if min(k.shape[1:]) < s:
        raise DsmError(f"{path}: {k.shape[2]}x{k.shape[1]} pixels is smaller than one {s}x{s} patch of the model")
    x = np.stack([dequantize(k[i], seed, path.name if c == 1 else f"{path.name}#{i}") for i in range(c)])
    ys, xs = np.arange(0, k.shape[1] - s + 1, stride), np.arange(0, k.shape[2] - s + 1, stride)
    win = sliding_window_view(x, (s, s), axis=(1, 2))[:, ys][:, :, xs]         # (C, ny, nx, s, s)
    patches = np.ascontiguousarray(win.transpose(1, 2, 0, 3, 4).reshape(-1, c, s, s))
    yy, xx = np.meshgrid(ys, xs, indexing="ij")
    return patches, yy.ravel(), xx.ravel()
