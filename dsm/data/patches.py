"""``patches``: square grayscale patches of photographs; no two sets share a pixel.

Photographs: by default the ones bundled in scikit-image's wheel (:data:`BUNDLED`, chosen
by ``data.patches.photos``; every one is public domain or CC0, see docs/data.md), or, with
``data.root`` set, every PNG/JPEG under that folder (sorted relative paths; ``photos`` is
then ignored).

Each photograph becomes 8-bit luma k (ITU-R 601 from 8-bit RGB, rounded, as
:func:`dsm.data.convert.convert_uint8`; grayscale files are taken as they are), then is
dequantized, ``x = (k + u) / 256`` with ``u ~ U[0, 1)`` per pixel (a generator seeded by
``(seed, the photograph's name)``), and stored as float32 in [0, 1). 16-bit or float
images are refused: the dequantization assumes 8-bit values.

**Disjoint sets.** A photograph is cut into disjoint ``tile`` × ``tile`` squares from its
top-left corner (the strips right and below that do not fill a tile are not used). Its
tiles are shuffled (seeded) and dealt: ``round(test_fraction · n)`` to test,
``round(holdout_fraction · n)`` to holdout, the rest alternately to the training pools A
and B, so every set sees the same mix of photographs. Patches (``image_size`` pixels
square, corners on a grid of ``stride[set]`` pixels) are cut only inside a tile, so they
may overlap within their tile but no pixel is in two sets.

**Parts.** ``test`` and ``holdout``: the set's patches shuffled (the first ``n_test``;
``n_holdout`` of them, an error if there are fewer). ``train``: pool A's patches shuffled,
the first M, then pool B's shuffled, the first M, with M = min(|A|, |B|, n_train // 2)
(n_train null: no cap). The split rule of :mod:`dsm.data.splits` (A_N = the first N
training images, B_N = the last N) then draws A_N from pool A only and B_N from pool B
only, for every N <= M.

Image ids ``<photo>/t<row>-<col>/y<y>x<x>``: the photograph, the tile's row and column
in its grid, and the patch's top-left pixel in the photograph (:func:`parse_id`). Label:
the photograph's position in the list. ``meta.json`` records every photograph (file,
SHA-256, size, licence), every tile's set and the pool size M.

Data params, ``data.patches.*`` (defaults): ``photos`` (the ten photographs of
:data:`DEFAULT_PHOTOS`), ``tile`` (64), ``test_fraction`` (0.15), ``holdout_fraction``
(0.05), ``stride`` ({train: 2, test: 8, holdout: 8}), ``seed`` (0). Patch size from
``data.image_size`` (default 8); ``data.channels`` must be 1. Memory: the prepared
patches of one set at a time (they are shuffled before writing).
"""

from __future__ import annotations

import hashlib
import re
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dsm.errors import DsmError

DEFAULT_SIZE = 8
SETS = ("test", "holdout", "A", "B")
CHUNK = 8192

# The photographs of scikit-image's wheel that may be used (name: file, licence as
# skimage.data's docstrings state it). Left out: moon and page (no licence stated), the
# motorcycle stereo pair (Middlebury 2014; no licence stated), and the drawings, text and
# synthetic images (horse, text, logo, colorwheel, chessboard, phantom).
BUNDLED = {
    "astronaut": ("astronaut.png", "public domain (NASA)"),
    "brick": ("brick.png", "CC0 (CC0Textures)"),
    "camera": ("camera.png", "CC0 (Lav Varshney)"),
    "chelsea": ("chelsea.png", "CC0 (Stefan van der Walt)"),
    "clock": ("clock_motion.png", "public domain (Stefan van der Walt)"),
    "coffee": ("coffee.png", "CC0 (Rachel Michetti)"),
    "coins": ("coins.png", "no known copyright restrictions (Brooklyn Museum)"),
    "grass": ("grass.png", "CC0 (DeviantArt, linolafett)"),
    "gravel": ("gravel.png", "CC0 (CC0Textures)"),
    "rocket": ("rocket.jpg", "public domain (SpaceX)"),
    "hubble_deep_field": ("hubble_deep_field.jpg", "public domain (NASA)"),
    "immunohistochemistry": ("ihc.png", "no known copyright restrictions (CMMI)"),
    "retina": ("retina.jpg", "CC0 (Mikael Häggström)"),
}
# scenes and textures; the astronomical and medical photographs are available, not default
DEFAULT_PHOTOS = ("astronaut", "brick", "camera", "chelsea", "clock", "coffee", "coins", "grass",
                  "gravel", "rocket")
_ID = re.compile(r"^(?P<photo>.+)/t(?P<ty>\d+)-(?P<tx>\d+)/y(?P<y>\d+)x(?P<x>\d+)$")


@dataclass
class Photo:
    """One photograph: its name (id prefix), file, licence and dequantized pixels (H, W)."""

    name: str
    path: Path
    licence: str
    pixels: np.ndarray          # float32 (H, W) in [0, 1)
    sha256: str


def patch_id(photo: str, ty: int, tx: int, y: int, x: int) -> str:
    return f"{photo}/t{ty:02d}-{tx:02d}/y{y:04d}x{x:04d}"


def parse_id(image_id: str) -> tuple[str, int, int, int, int]:
    """(photo, tile row, tile column, y, x) of a patch id (y, x: its top-left pixel)."""
    m = _ID.match(str(image_id))
    if m is None:
        raise DsmError(f"{image_id!r}: not a patch id (<photo>/t<row>-<col>/y<y>x<x>)")
    return m["photo"], int(m["ty"]), int(m["tx"]), int(m["y"]), int(m["x"])


def bundled_dir() -> Path:
    """scikit-image's data directory (found without importing scikit-image)."""
    import importlib.util

    spec = importlib.util.find_spec("skimage")
    if spec is None or not spec.submodule_search_locations:
        raise DsmError("data.root: null means the photographs bundled with scikit-image, which is "
                       "not installed (pip install scikit-image), or set data.root to a folder of photographs")
    return Path(list(spec.submodule_search_locations)[0]) / "data"


def _key(name: str) -> int:
    """A stable 63-bit integer of a photograph's name (its seed streams)."""
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big") >> 1


def read_luma(path: Path) -> np.ndarray:
    """8-bit luma (H, W) uint8 of an image file: grayscale as is, color by ITU-R 601."""
    from PIL import Image, UnidentifiedImageError

    from dsm.data.convert import convert_uint8

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                im.load()
                mode = im.mode
                if mode.startswith("I") or mode == "F":
                    raise DsmError(f"{path}: {mode} image ({'16-bit' if '16' in mode else 'not 8-bit'}); "
                                   f"the patches source needs 8-bit images (its dequantization assumes them)")
                arr = np.asarray(im) if mode == "L" else np.asarray(im.convert("RGB"))
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError,
            Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise DsmError(f"{path}: cannot read image: {e}") from None
    if arr.ndim == 2:
        return np.ascontiguousarray(arr, np.uint8)
    return convert_uint8(arr.transpose(2, 0, 1)[None], 1, None)[0, 0]


def dequantize(k: np.ndarray, seed: int, name: str) -> np.ndarray:
    """(k + u) / 256, u ~ U[0, 1) per pixel from the generator of (seed, name): float32,
    always inside k's bin (a value that float32 rounds up to (k + 1) / 256 is moved to the
    float32 just below it, so floor(256 x) = k exactly)."""
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 0, _key(name)]))
    u = rng.random(k.shape, dtype=np.float64)
    x = ((k.astype(np.float64) + u) / 256.0).astype(np.float32)
    top = ((k.astype(np.float64) + 1.0) / 256.0).astype(np.float32)     # exact in float32
    return np.where(x < top, x, np.nextafter(top, np.float32(0)))


def photo_files(cfg: dict) -> list[tuple[str, Path, str]]:
    """[(name, path, licence)] of the photographs: the bundled ones named by
    ``data.patches.photos``, or every PNG/JPEG under ``data.root``."""
    from dsm.data.convert import list_images

    p = cfg["patches"]
    if cfg.get("root"):
        root = Path(cfg["root"])
        if not root.is_dir():
            raise DsmError(f"{root}: data.root not found (a folder of photographs)")
        names = list_images(root)
        if not names:
            raise DsmError(f"{root}: no PNG/JPEG images under data.root")
        return [(rel, root / rel, "the user's") for rel in names]
    where = bundled_dir()
    out = []
    for name in p["photos"]:
        if name not in BUNDLED:
            raise DsmError(f"data.patches.photos: {name!r} is not a bundled photograph "
                           f"(known: {', '.join(BUNDLED)})")
        file, licence = BUNDLED[name]
        if not (where / file).is_file():
            raise DsmError(f"{where / file}: bundled photograph not found (scikit-image installed "
                           f"without its data?)")
        out.append((name, where / file, licence))
    return out


def load_photos(cfg: dict) -> list[Photo]:
    """Every photograph read, converted to luma and dequantized; each must hold a tile."""
    p = cfg["patches"]
    tile, seed = int(p["tile"]), int(p["seed"])
    photos = []
    for name, path, licence in photo_files(cfg):
        k = read_luma(path)
        if min(k.shape) < tile:
            raise DsmError(f"{path}: {k.shape[1]}x{k.shape[0]} pixels is smaller than one "
                           f"data.patches.tile = {tile} tile")
        sha = hashlib.sha256(path.read_bytes()).hexdigest()
        photos.append(Photo(name, path, licence, dequantize(k, seed, name), sha))
    return photos


def assign_tiles(photos: list[Photo], p: dict) -> dict[str, list[tuple[int, int, int]]]:
    """{set: [(photo index, tile row, tile column)]}: each photograph's tiles shuffled
    (seeded by (seed, its name)) and dealt to test, holdout, then alternately to A and B
    (B first on every other photograph, so the pools stay within a tile of each other)."""
    tile, seed = int(p["tile"]), int(p["seed"])
    f_test, f_hold = float(p["test_fraction"]), float(p["holdout_fraction"])
    if f_test + f_hold >= 1:
        raise DsmError(f"data.patches: test_fraction + holdout_fraction = {f_test + f_hold:g} leaves "
                       f"no tiles for training (must be < 1)")
    out = {s: [] for s in SETS}
    for i, ph in enumerate(photos):
        rows, cols = ph.pixels.shape[0] // tile, ph.pixels.shape[1] // tile
        grid = [(i, r, c) for r in range(rows) for c in range(cols)]
        rng = np.random.default_rng(np.random.SeedSequence([seed, 1, _key(ph.name)]))
        grid = [grid[j] for j in rng.permutation(len(grid))]
        n_test, n_hold = round(f_test * len(grid)), round(f_hold * len(grid))
        out["test"] += grid[:n_test]
        out["holdout"] += grid[n_test:n_test + n_hold]
        rest = grid[n_test + n_hold:]
        first, second = ("A", "B") if i % 2 == 0 else ("B", "A")   # an odd tile out alternates
        out[first] += rest[0::2]
        out[second] += rest[1::2]
    return out


def corners(size: int, tile: int, stride: int) -> np.ndarray:
    """Offsets of the patch corners along one side of a tile: 0, stride, … <= tile - size."""
    if size > tile:
        raise DsmError(f"data.image_size: patches of {size} pixels do not fit a data.patches.tile "
                       f"of {tile}")
    return np.arange(0, tile - size + 1, stride)


def cut(photos: list[Photo], tiles, size: int, tile: int, stride: int):
    """(patches float32 (n, 1, size, size), ids, labels (n,) int64: the photograph's index)
    of every patch inside the given tiles, corners on the stride grid of each tile, in
    tile order."""
    from numpy.lib.stride_tricks import sliding_window_view

    offs = corners(size, tile, stride)
    blocks, ids, labels = [], [], []
    for i, r, c in tiles:
        y0, x0 = r * tile, c * tile
        win = sliding_window_view(photos[i].pixels[y0:y0 + tile, x0:x0 + tile], (size, size))
        blocks.append(win[offs][:, offs].reshape(-1, 1, size, size))
        ids += [patch_id(photos[i].name, r, c, y0 + dy, x0 + dx) for dy in offs for dx in offs]
        labels.append(np.full(len(offs) ** 2, i, np.int64))
    return np.ascontiguousarray(np.concatenate(blocks)), ids, np.concatenate(labels)


def _stride(p: dict, name: str) -> int:
    return int(p["stride"]["train" if name in ("A", "B") else name])


def _shuffled(patches, seed: int, code: int, keep: int):
    """The first ``keep`` of a seeded permutation of (pixels, ids, labels)."""
    px, ids, labels = patches
    order = np.random.default_rng(np.random.SeedSequence([seed, 2, code])).permutation(len(px))[:keep]
    return px[order], [ids[j] for j in order], labels[order]


def plan(cfg: dict):
    """Part plans and the patches meta for ``dsm prepare`` (data.source: patches)."""
    from dsm.data.convert import native_channels
    from dsm.data.store import Chunk, PartPlan

    native_channels(cfg, 1, "patches")
    p = cfg["patches"]
    seed, size, tile = int(p["seed"]), int(cfg["image_size"]), int(p["tile"])
    photos = load_photos(cfg)
    tiles = assign_tiles(photos, p)
    for name in SETS:
        if not tiles[name]:
            raise DsmError(f"data.patches: no tile for the {name} set ({sum(len(v) for v in tiles.values())} "
                           f"tiles of {tile} pixels in all; use more or larger photographs, a smaller "
                           f"tile, or other fractions)")
    # patches per set, known before cutting: every tile holds the same grid of corners
    avail = {s: len(tiles[s]) * len(corners(size, tile, _stride(p, s))) ** 2 for s in SETS}
    m = min(avail["A"], avail["B"])
    if cfg.get("n_train") is not None:
        m = min(m, int(cfg["n_train"]) // 2)
    if m < 1:
        raise DsmError(f"data.n_train: {cfg['n_train']} leaves no patch per training pool (need >= 2)")
    n_test = avail["test"] if cfg.get("n_test") is None else min(avail["test"], int(cfg["n_test"]))
    n_hold = int(cfg["n_holdout"])
    if avail["holdout"] < n_hold:
        raise DsmError(f"data.n_holdout: {n_hold} exceeds the {avail['holdout']} patches of the holdout "
                       f"tiles (raise data.patches.holdout_fraction, lower its stride, or lower n_holdout)")

    def cut_set(name):
        return cut(photos, tiles[name], size, tile, _stride(p, name))

    def chunks(name):
        if name == "train":       # pool A's patches, then pool B's: the split rule's A and B
            a, b = _shuffled(cut_set("A"), seed, 2, m), _shuffled(cut_set("B"), seed, 3, m)
            px, ids, labels = np.concatenate([a[0], b[0]]), a[1] + b[1], np.concatenate([a[2], b[2]])
        else:
            px, ids, labels = _shuffled(cut_set(name), seed, {"test": 0, "holdout": 1}[name],
                                        {"test": n_test, "holdout": n_hold}[name])
        for a in range(0, len(px), CHUNK):
            yield Chunk(px[a:a + CHUNK], ids[a:a + CHUNK], labels[a:a + CHUNK])

    meta = {"patches": {
        "photos": [{"name": ph.name, "file": ph.path.name if not cfg.get("root") else ph.name,
                    "sha256": ph.sha256, "height": int(ph.pixels.shape[0]), "width": int(ph.pixels.shape[1]),
                    "licence": ph.licence,
                    "tiles": {s: sum(t[0] == i for t in tiles[s]) for s in SETS}}
                   for i, ph in enumerate(photos)],
        "tile": tile, "size": size,
        "dequantization": "(k + u) / 256, k the 8-bit luma, u ~ U[0, 1) per pixel",
        "tiles": {s: [list(t) for t in tiles[s]] for s in SETS},
        "available": avail, "pool_size": m,
        "train_order": "pool A's patches shuffled, the first M = pool_size, then pool B's shuffled, "
                       "the first M: the first N training images are from pool A, the last N from "
                       "pool B, for every N <= M"}}
    plans = [PartPlan("train", lambda: chunks("train"), 2 * m,
                      meta={"pools": {"A": [0, m], "B": [m, 2 * m]}}),
             PartPlan("test", lambda: chunks("test"), n_test),
             PartPlan("holdout", lambda: chunks("holdout"), n_hold)]
    return plans, meta
