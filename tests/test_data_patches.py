"""The ``patches`` source: disjoint sets by pixel (from the recorded positions, on the real
bundled photographs), dequantization statistics, determinism, a user's folder, bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from dsm.data import open_store
from dsm.data.patches import BUNDLED, bundled_dir, parse_id
from dsm.data.prepare import LUMA, prepare
from dsm.data.splits import make_splits, read_split
from dsm.errors import DsmError
from fixtures.data_formats import write_image

REPO = Path(__file__).resolve().parent.parent
# the real bundled photographs at a small size: 32-pixel tiles, overlapping training patches
SMALL = {"source": "patches", "image_size": 8, "n_holdout": 50,
         "patches": {"photos": ["camera", "chelsea", "coins", "rocket"], "tile": 32,
                     "test_fraction": 0.2, "holdout_fraction": 0.1,
                     "stride": {"train": 4, "test": 8, "holdout": 8}, "seed": 5}}


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    return prepare(SMALL, tmp_path_factory.mktemp("p") / "store", progress=False)


def coverage(ids, shapes, size) -> dict[str, np.ndarray]:
    """{photo: bool mask (H, W) of the pixels some patch of ``ids`` covers}."""
    masks = {name: np.zeros(shape, bool) for name, shape in shapes.items()}
    for i in ids:
        photo, _, _, y, x = parse_id(i)
        masks[photo][y:y + size, x:x + size] = True
    return masks


def test_no_two_sets_share_a_pixel(small, tmp_path):
    tr, te, ho = (open_store(small, p) for p in ("train", "test", "holdout"))
    meta = tr.meta["patches"]
    m = meta["pool_size"]
    assert len(tr) == 2 * m and len(ho) == 50 and tr.meta["pools"] == {"A": [0, m], "B": [m, 2 * m]}
    shapes = {ph["name"]: (ph["height"], ph["width"]) for ph in meta["photos"]}
    ids = tr.index.image_id.tolist()
    sets = {"A": ids[:m], "B": ids[m:], "test": te.index.image_id.tolist(),
            "holdout": ho.index.image_id.tolist()}
    cover = {s: coverage(v, shapes, 8) for s, v in sets.items()}
    names = list(sets)
    for a in range(len(names)):
        for b in range(a + 1, len(names)):
            shared = sum(int((cover[names[a]][p] & cover[names[b]][p]).sum()) for p in shapes)
            assert shared == 0, f"{names[a]} and {names[b]} share {shared} pixels"
    # every patch lies inside its tile, and the tile is one the meta assigns to its set
    photos = [ph["name"] for ph in meta["photos"]]
    for s, v in sets.items():
        assigned = {(photos[i], r, c) for i, r, c in meta["tiles"][s]}
        for i in v:
            photo, r, c, y, x = parse_id(i)
            assert (photo, r, c) in assigned
            assert 32 * r <= y <= 32 * r + 24 and 32 * c <= x <= 32 * c + 24
    # training patches overlap inside their tiles (stride 4 < size 8); the sets really are
    # disjoint by pixel, not just by patch
    assert cover["A"]["camera"].sum() < len([i for i in sets["A"] if i.startswith("camera/")]) * 64
    # the split rule draws A_N from pool A and B_N from pool B, for N up to the pool size
    splits = make_splits(small, {"N": [1, m]}, tmp_path / "s.parquet", progress=False)
    pool_a, pool_b = set(sets["A"]), set(sets["B"])
    for N in (1, m):
        assert set(tr.index.image_id[read_split(splits, N, "A")]) <= pool_a
        assert set(tr.index.image_id[read_split(splits, N, "B")]) <= pool_b
    with pytest.raises(DsmError, match=r"split\.N"):
        make_splits(small, {"N": [m + 1]}, tmp_path / "t.parquet", progress=False)


def test_every_photograph_in_every_set(small):
    tr = open_store(small, "train")
    meta = tr.meta["patches"]
    m = meta["pool_size"]
    labels = tr.index.label.to_numpy()
    for i, ph in enumerate(meta["photos"]):
        assert all(ph["tiles"][s] >= 1 for s in ("A", "B", "test", "holdout")), ph
        assert abs(ph["tiles"]["A"] - ph["tiles"]["B"]) <= 1
        assert (labels[:m] == i).any() and (labels[m:] == i).any()
        assert ph["licence"] == BUNDLED[ph["name"]][1]
        assert ph["sha256"] == __import__("hashlib").sha256(
            (bundled_dir() / BUNDLED[ph["name"]][0]).read_bytes()).hexdigest()


def luma_of(path: Path) -> np.ndarray:
    """8-bit ITU-R 601 luma of an image file, computed here independently (float64)."""
    with Image.open(path) as im:
        if im.mode == "L":
            return np.asarray(im).astype(np.int64)
        rgb = np.asarray(im.convert("RGB")).astype(np.float64)
    return np.clip(np.rint(rgb @ np.asarray(LUMA)), 0, 255).astype(np.int64)


def test_pixels_are_dequantized_luma(small):
    """Each stored pixel x satisfies floor(256 x) = the photograph's 8-bit luma at the
    recorded position, and 256 x - k is uniform on [0, 1) and independent of k."""
    from scipy import stats

    te = open_store(small, "test")
    meta = te.meta["patches"]
    luma = {ph["name"]: luma_of(bundled_dir() / BUNDLED[ph["name"]][0]) for ph in meta["photos"]}
    x = te.images().astype(np.float64)
    k_all, u_all = [], []
    for j, image_id in enumerate(te.index.image_id):
        photo, _, _, y, xx = parse_id(image_id)
        k = luma[photo][y:y + 8, xx:xx + 8]
        v = 256.0 * x[j, 0]
        np.testing.assert_array_equal(np.floor(v).astype(np.int64), k)
        k_all.append(k.ravel())
        u_all.append((v - k).ravel())
    u, k = np.concatenate(u_all), np.concatenate(k_all)
    n = len(u)
    assert n > 10_000 and (u >= 0).all() and (u < 1).all()
    assert abs(u.mean() - 0.5) < 4 * np.sqrt(1 / 12 / n)
    assert abs(u.var() - 1 / 12) < 4 * np.sqrt(1 / 180 / n)          # var of (u - 1/2)^2 = 1/180
    assert stats.kstest(u, "uniform").pvalue > 1e-3
    assert abs(np.corrcoef(u, k)[0, 1]) < 4 / np.sqrt(n)
    assert te.meta["dtype"] == "float32" and 0 <= x.min() and x.max() < 1


def test_deterministic_and_seeded(small, tmp_path):
    again = prepare(SMALL, tmp_path / "again", progress=False)
    for part in ("train", "test", "holdout"):
        assert (small / part / "pixels.npy").read_bytes() == (again / part / "pixels.npy").read_bytes()
        assert open_store(small, part).index.equals(open_store(again, part).index)
    other = prepare({**SMALL, "patches": {**SMALL["patches"], "seed": 6}}, tmp_path / "other", progress=False)
    assert open_store(other, "test").meta["patches"]["tiles"] != open_store(small, "test").meta["patches"]["tiles"]
    # the same photograph pixel gets another dequantization draw under another seed
    a, b = open_store(small, "test"), open_store(other, "test")
    pos_a = {i: j for j, i in enumerate(a.index.image_id)}
    common = [(pos_a[i], j) for j, i in enumerate(b.index.image_id) if i in pos_a]
    if common:
        ja, jb = common[0]
        assert not np.array_equal(a.images([ja]), b.images([jb]))


def test_caps_keep_the_pool_structure(tmp_path):
    out = prepare({**SMALL, "n_train": 100, "n_test": 30}, tmp_path / "c", progress=False)
    tr = open_store(out, "train")
    assert (len(tr), len(open_store(out, "test"))) == (100, 30) and tr.meta["patches"]["pool_size"] == 50
    a_tiles = {tuple(t) for t in tr.meta["patches"]["tiles"]["A"]}
    names = [ph["name"] for ph in tr.meta["patches"]["photos"]]
    for j, image_id in enumerate(tr.index.image_id):
        photo, r, c, _, _ = parse_id(image_id)
        assert ((names.index(photo), r, c) in a_tiles) == (j < 50)


def test_user_folder_png_and_jpeg(tmp_path):
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:80, 0:100]
    smooth = (128 + 60 * np.sin(xx / 7.0) * np.cos(yy / 11.0)).astype(np.uint8)
    write_image(tmp_path / "photos" / "a.png", np.stack([smooth, smooth[::-1], 255 - smooth], -1))
    write_image(tmp_path / "photos" / "sub" / "b.jpg", smooth.T)                  # grayscale JPEG
    write_image(tmp_path / "photos" / "c.png", rng.integers(0, 256, (70, 70, 4), dtype=np.uint8))  # RGBA
    cfg = {"source": "patches", "root": str(tmp_path / "photos"), "image_size": 4, "n_holdout": 4,
           "patches": {"tile": 16, "test_fraction": 0.2, "holdout_fraction": 0.1}}
    out = prepare(cfg, tmp_path / "store", progress=False)
    tr, te = open_store(out, "train"), open_store(out, "test")
    meta = tr.meta["patches"]
    assert [ph["name"] for ph in meta["photos"]] == ["a.png", "c.png", "sub/b.jpg"]
    assert [(ph["height"], ph["width"]) for ph in meta["photos"]] == [(80, 100), (70, 70), (100, 80)]
    assert tr.shape == (1, 4, 4) and set(tr.index.label) == {0, 1, 2}
    photo, _, _, y, x = parse_id(te.index.image_id[0])
    k = luma_of(tmp_path / "photos" / photo)[y:y + 4, x:x + 4]
    np.testing.assert_array_equal(np.floor(256.0 * te.images([0])[0, 0].astype(np.float64)), k)


def fails(tmp_path, match, **cfg):
    with pytest.raises(DsmError, match=match):
        prepare(cfg, tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out*"))


def test_bad_input(tmp_path):
    base = {"source": "patches", "image_size": 4, "n_holdout": 1, "patches": {"tile": 16}}
    (tmp_path / "empty").mkdir()
    fails(tmp_path, r"empty: no PNG/JPEG images under data\.root", **base, root=str(tmp_path / "empty"))
    fails(tmp_path, r"nope: data\.root not found", **base, root=str(tmp_path / "nope"))
    deep = tmp_path / "deep"
    deep.mkdir()
    Image.fromarray(np.full((40, 40), 40000, np.uint16)).save(deep / "d.png")
    fails(tmp_path, r"d\.png: I;16 image \(16-bit\); the patches source needs 8-bit", **base, root=str(deep))
    tiny = tmp_path / "tiny"
    write_image(tiny / "big.png", np.zeros((64, 64), np.uint8))
    write_image(tiny / "small.png", np.zeros((15, 40), np.uint8))
    fails(tmp_path, r"small\.png: 40x15 pixels is smaller than one data\.patches\.tile = 16", **base,
          root=str(tiny))
    (tiny / "small.png").unlink()
    (tiny / "broken.jpg").write_bytes(b"\xff\xd8\xff garbage")
    fails(tmp_path, r"broken\.jpg: cannot read image", **base, root=str(tiny))
    (tiny / "broken.jpg").unlink()
    fails(tmp_path, r"data\.n_holdout: 9999 exceeds the \d+ patches", **{**base, "n_holdout": 9999},
          root=str(tiny))
    fails(tmp_path, r"data\.patches: test_fraction \+ holdout_fraction = 1\.1",
          **{**base, "patches": {"tile": 16, "test_fraction": 0.6, "holdout_fraction": 0.5}}, root=str(tiny))
    fails(tmp_path, r"data\.image_size: patches of 20 pixels do not fit", **{**base, "image_size": 20},
          root=str(tiny))
    fails(tmp_path, r"data\.channels", **base, channels=3)
    fails(tmp_path, r"data\.patches\.photos", **{**base, "patches": {"photos": ["moon"]}})
    few = tmp_path / "few"
    write_image(few / "one.png", np.zeros((32, 32), np.uint8))                  # 4 tiles of 16
    fails(tmp_path, r"data\.patches: no tile for the holdout set \(4 tiles", **base, root=str(few))


def test_cli_one_line_error(tmp_path):
    import yaml

    (tmp_path / "empty").mkdir()
    section = yaml.safe_load((REPO / "params.yaml").read_text())["scales"]["smoke"]
    section = dict(section, name="t", data={"source": "patches", "root": str(tmp_path / "empty"),
                                            "image_size": 8, "n_holdout": 1})
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"scales": {"t": section}, "run": section}))
    env = dict(os.environ, PYTHONPATH=str(REPO))
    r = subprocess.run([sys.executable, "-m", "dsm", "prepare", "--params", "params.yaml", "--out", "o"],
                       cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1
    assert r.stderr.startswith("dsm prepare: error: ") and "no PNG/JPEG images" in r.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty", "params.yaml"]
