"""Real-image sources against tiny fixtures in their official formats, and their bad inputs."""

import gzip
import pickle
from pathlib import Path

import numpy as np
import pytest

from dsm.data import open_store
from dsm.data.prepare import LUMA, prepare
from dsm.errors import DsmError
from fixtures.data_formats import (idx_bytes, write_cifar10, write_fashion_mnist, write_image,
                                   write_imagenet64)

REAL_FASHION = Path("/usr/share/datasets/fashion-mnist")


def luma(rgb):  # (n, 3, H, W) uint8 -> (n, 1, H, W) uint8
    y = np.tensordot(np.asarray(LUMA, np.float32), rgb.astype(np.float32), axes=([0], [1]))
    return np.clip(np.rint(y), 0, 255).astype(np.uint8)[:, None]


def prep(tmp_path, **cfg):
    cfg.setdefault("n_holdout", 2)            # the fixtures hold a handful of training images
    return prepare(cfg, tmp_path / "out", progress=False)


def check_holdout(out, train_images, n_holdout):
    """The holdout part is the last ``n_holdout`` of the source's training images (stored
    as ``train_images``, in source order), the train part the rest; disjoint by content."""
    tr, ho = open_store(out, "train"), open_store(out, "holdout")
    assert (len(tr), len(ho)) == (len(train_images) - n_holdout, n_holdout)
    np.testing.assert_array_equal(ho.raw(np.arange(len(ho))), train_images[-n_holdout:])
    np.testing.assert_array_equal(tr.raw(np.arange(len(tr))), train_images[:-n_holdout])
    assert not set(tr.index.content_hash) & set(ho.index.content_hash)
    assert not set(open_store(out, "test").index.content_hash) & set(ho.index.content_hash)
    assert tr.meta["holdout"]["first_id"] == ho.index.image_id.iloc[0]
    assert ho.meta["part"] == "holdout" and ho.meta["format"] == "dsm-store/2"
    return tr, ho


def fails(tmp_path, match, **cfg):
    cfg.setdefault("n_holdout", 2)
    with pytest.raises(DsmError, match=match):
        prep(tmp_path, **cfg)
    assert not (tmp_path / "out").exists()
    assert not list(tmp_path.glob(".out*")), "temporary output left behind"


# --- fashion-mnist -----------------------------------------------------------------

@pytest.mark.parametrize("gz", [True, False])
def test_fashion_mnist(tmp_path, gz):
    ref = write_fashion_mnist(tmp_path / "raw", gz=gz)
    out = prep(tmp_path, source="fashion-mnist", root=str(tmp_path / "raw"))
    for part in ("train", "test"):
        s = open_store(out, part)
        n = len(ref[part][0]) - (2 if part == "train" else 0)     # less the holdout part
        np.testing.assert_array_equal(s.raw(np.arange(len(s)))[:, 0], ref[part][0][:n])
        assert s.index.label.tolist() == ref[part][1][:n].tolist()
        assert s.index.image_id[0] == f"fashion-mnist/{part}/00000"
        assert s.images([0]).max() <= 1.0 and s.meta["dtype"] == "uint8"


def test_fashion_mnist_holdout(tmp_path):
    ref = write_fashion_mnist(tmp_path / "raw", n_train=9)
    out = prep(tmp_path, source="fashion-mnist", root=str(tmp_path / "raw"), n_holdout=3)
    tr, ho = check_holdout(out, ref["train"][0][:, None], 3)
    assert ho.index.image_id.tolist() == [f"fashion-mnist/train/{i:05d}" for i in (6, 7, 8)]
    assert ho.index.label.tolist() == ref["train"][1][6:].tolist()
    out = prep(tmp_path, source="fashion-mnist", root=str(tmp_path / "raw"), n_holdout=3, n_train=2)
    assert len(open_store(out, "train")) == 2 and len(open_store(out, "holdout")) == 3  # caps only train
    fails(tmp_path / "bad", r"data\.n_holdout: 9 would leave none of the 9 training images", source="fashion-mnist",
          root=str(tmp_path / "raw"), n_holdout=9)


def test_fashion_mnist_caps_and_resize(tmp_path):
    write_fashion_mnist(tmp_path / "raw")
    out = prep(tmp_path, source="fashion-mnist", root=str(tmp_path / "raw"), n_train=4, image_size=32)
    s = open_store(out, "train")
    assert (len(s), s.shape) == (4, (1, 32, 32))


def test_fashion_mnist_bad_inputs(tmp_path):
    raw = tmp_path / "raw"
    write_fashion_mnist(raw)
    fails(tmp_path, "channels must be 1", source="fashion-mnist", root=str(raw), channels=3)
    fails(tmp_path, "data.root not found", source="fashion-mnist", root=str(tmp_path / "nope"))
    p = raw / "train-images-idx3-ubyte.gz"
    good = p.read_bytes()
    p.write_bytes(good[: len(good) // 2])                       # truncated gzip
    fails(tmp_path, r"train-images-idx3-ubyte\.gz: cannot read", source="fashion-mnist", root=str(raw))
    p.write_bytes(b"not gzip at all")                           # corrupt gzip
    fails(tmp_path, r"train-images-idx3-ubyte\.gz: cannot read", source="fashion-mnist", root=str(raw))
    body = gzip.decompress(good)
    p.write_bytes(gzip.compress(body[:-10]))                    # valid gzip, truncated IDX
    fails(tmp_path, r"train-images-idx3-ubyte\.gz: truncated", source="fashion-mnist", root=str(raw))
    p.write_bytes(gzip.compress(b"\x01\x02" + body[2:]))        # bad magic
    fails(tmp_path, "not an IDX file", source="fashion-mnist", root=str(raw))
    p.write_bytes(gzip.compress(idx_bytes(np.zeros((5, 28), np.uint8))))  # wrong shape
    fails(tmp_path, "expected 3 dimensions", source="fashion-mnist", root=str(raw))
    p.write_bytes(gzip.compress(idx_bytes(np.zeros((6, 28, 28), np.uint8))))  # 6 images, 7 labels
    fails(tmp_path, r"train-labels-idx1-ubyte\.gz: expected 6 labels", source="fashion-mnist", root=str(raw))
    p.unlink()
    fails(tmp_path, r"train-images-idx3-ubyte\[\.gz\]: file not found", source="fashion-mnist", root=str(raw))


@pytest.mark.skipif(not (REAL_FASHION / "train-images-idx3-ubyte.gz").is_file(),
                    reason=f"real Fashion-MNIST not installed at {REAL_FASHION} "
                           "(apt-get install dataset-fashion-mnist)")
def test_real_fashion_mnist(tmp_path):
    out = prep(tmp_path, source="fashion-mnist", n_holdout=2000)  # default root = the Debian path
    tr, te, ho = open_store(out, "train"), open_store(out, "test"), open_store(out, "holdout")
    assert (len(tr), len(te), len(ho), tr.shape) == (58000, 10000, 2000, (1, 28, 28))
    labels = np.concatenate([tr.index.label, ho.index.label])
    assert np.bincount(labels).tolist() == [6000] * 10
    assert np.bincount(te.index.label).tolist() == [1000] * 10
    assert ho.index.image_id.iloc[-1] == "fashion-mnist/train/59999"
    x = tr.images(np.arange(0, 58000, 7))
    assert abs(x.mean() - 0.2860) < 0.005 and abs(x.std() - 0.3530) < 0.005   # published stats
    dup = tr.index.content_hash.duplicated().sum()
    assert dup < 100                                             # a handful of exact duplicates


# --- imagenet64 --------------------------------------------------------------------

@pytest.mark.parametrize("form", ["npz", "pickle"])
def test_imagenet64(tmp_path, form):
    ref = write_imagenet64(tmp_path / "raw", form=form)
    out = prep(tmp_path, source="imagenet64", root=str(tmp_path / "raw"))
    for part in ("train", "test"):
        s = open_store(out, part)
        assert s.shape == (3, 64, 64)
        n = len(ref[part][0]) - (2 if part == "train" else 0)     # less the holdout part
        np.testing.assert_array_equal(s.raw(np.arange(len(s))), ref[part][0][:n])
        assert s.index.label.tolist() == ref[part][1][:n].tolist()
    assert open_store(out, "train").index.image_id[3] == "imagenet64/train_data_batch_2/000000"


@pytest.mark.parametrize("form", ["npz", "pickle"])
def test_imagenet64_holdout_spans_batches(tmp_path, form):
    ref = write_imagenet64(tmp_path / "raw", form=form)          # 15 training images, 2 in the last batch
    out = prep(tmp_path, source="imagenet64", root=str(tmp_path / "raw"), n_holdout=3)
    tr, ho = check_holdout(out, ref["train"][0], 3)
    assert ho.index.image_id.tolist() == ["imagenet64/train_data_batch_9/000000",
                                          "imagenet64/train_data_batch_10/000000",
                                          "imagenet64/train_data_batch_10/000001"]
    assert ho.index.label.tolist() == ref["train"][1][-3:].tolist()
    out = prep(tmp_path, source="imagenet64", root=str(tmp_path / "raw"), n_holdout=3, n_train=4)
    assert len(open_store(out, "train")) == 4 and len(open_store(out, "holdout")) == 3
    fails(tmp_path / "bad", r"data\.n_holdout: 15 would leave none", source="imagenet64",
          root=str(tmp_path / "raw"), n_holdout=15)


def test_imagenet64_gray_caps(tmp_path):
    ref = write_imagenet64(tmp_path / "raw")
    out = prep(tmp_path, source="imagenet64", root=str(tmp_path / "raw"), channels=1, n_train=4,
               n_test=2)
    s = open_store(out, "train")
    assert (len(s), s.shape) == (4, (1, 64, 64))
    np.testing.assert_array_equal(s.raw(np.arange(4)), luma(ref["train"][0][:4]))
    out = prep(tmp_path, source="imagenet64", root=str(tmp_path / "raw"), image_size=32)
    assert open_store(out, "test").shape == (3, 32, 32)


def test_imagenet64_bad_inputs(tmp_path):
    raw = tmp_path / "raw"
    write_imagenet64(raw)
    root = str(raw)
    fails(tmp_path, "data.root: required", source="imagenet64")
    p = raw / "train_data_batch_3.npz"
    good = p.read_bytes()
    p.write_bytes(good[:100])
    fails(tmp_path, r"train_data_batch_3\.npz: cannot read npz", source="imagenet64", root=root)
    np.savez(p, data=np.zeros((2, 12288), np.float32), labels=[1, 2])
    fails(tmp_path, r"train_data_batch_3\.npz: data dtype float32", source="imagenet64", root=root)
    np.savez(p, data=np.zeros((2, 4096), np.uint8), labels=[1, 2])
    fails(tmp_path, r"train_data_batch_3\.npz: data shape \(2, 4096\)", source="imagenet64", root=root)
    np.savez(p, data=np.zeros((2, 12288), np.uint8), labels=[1])
    fails(tmp_path, r"train_data_batch_3\.npz: \(1,\) labels for 2", source="imagenet64", root=root)
    p.unlink()
    fails(tmp_path, r"train_data_batch_3\[\.npz\]: file not found", source="imagenet64", root=root)


def test_imagenet64_pickle_corrupt_and_unsafe(tmp_path):
    raw = tmp_path / "raw"
    write_imagenet64(raw, form="pickle")
    p = raw / "val_data"
    p.write_bytes(p.read_bytes()[:-50])
    fails(tmp_path, "val_data: cannot read pickle", source="imagenet64", root=str(raw))

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    p.write_bytes(pickle.dumps({"data": Evil(), "labels": []}))
    fails(tmp_path, "refusing to load builtins.print", source="imagenet64", root=str(raw))


# --- cifar10 -------------------------------------------------------------------------

def test_cifar10(tmp_path):
    ref = write_cifar10(tmp_path / "raw")
    for root in (tmp_path / "raw", tmp_path / "raw" / "cifar-10-batches-py"):
        out = prep(tmp_path, source="cifar10", root=str(root))
        for part in ("train", "test"):
            s = open_store(out, part)
            n = len(ref[part][0]) - (2 if part == "train" else 0)     # less the holdout part
            np.testing.assert_array_equal(s.raw(np.arange(len(s))), ref[part][0][:n])
            assert s.index.label.tolist() == ref[part][1][:n].tolist()
    out = prep(tmp_path, source="cifar10", root=str(tmp_path / "raw"), channels=1, n_train=5)
    s = open_store(out, "train")
    np.testing.assert_array_equal(s.raw(np.arange(5)), luma(ref["train"][0][:5]))


def test_cifar10_holdout_spans_batches(tmp_path):
    ref = write_cifar10(tmp_path / "raw")                        # 5 batches of 2
    out = prep(tmp_path, source="cifar10", root=str(tmp_path / "raw"), n_holdout=3)
    tr, ho = check_holdout(out, ref["train"][0], 3)
    assert ho.index.image_id.tolist() == ["cifar10/data_batch_4/00001", "cifar10/data_batch_5/00000",
                                          "cifar10/data_batch_5/00001"]
    assert tr.index.image_id.iloc[-1] == "cifar10/data_batch_4/00000"
    fails(tmp_path / "bad", r"data\.n_holdout: 10 would leave none", source="cifar10", root=str(tmp_path / "raw"),
          n_holdout=10)


def test_cifar10_bad_inputs(tmp_path):
    write_cifar10(tmp_path / "raw")
    d = tmp_path / "raw" / "cifar-10-batches-py"
    good = (d / "data_batch_2").read_bytes()
    (d / "data_batch_2").write_bytes(good[:200])
    fails(tmp_path, "data_batch_2: cannot read pickle", source="cifar10", root=str(d))
    (d / "data_batch_2").write_bytes(pickle.dumps({b"data": np.zeros((2, 3072), np.int32),
                                                  b"labels": [0, 1]}, protocol=2))
    fails(tmp_path, "data_batch_2: data int32", source="cifar10", root=str(d))
    (d / "data_batch_2").unlink()
    fails(tmp_path, "data_batch_2: file not found", source="cifar10", root=str(d))


# --- folder ----------------------------------------------------------------------------

def make_folder(root, n=12, size=(10, 10), seed=0):
    rng = np.random.default_rng(seed)
    arrays = {}
    for i in range(n):
        arr = rng.integers(0, 256, (*size, 3), dtype=np.uint8)
        rel = f"sub{i % 2}/img{i:02d}.png"
        write_image(Path(root) / rel, arr)
        arrays[rel] = arr
    return arrays


def test_folder_png_exact_and_hash_split(tmp_path):
    arrays = make_folder(tmp_path / "raw", n=30)
    out = prep(tmp_path, source="folder", root=str(tmp_path / "raw"), folder={"test_fraction": 0.3})
    tr, te, ho = open_store(out, "train"), open_store(out, "test"), open_store(out, "holdout")
    assert len(tr) + len(te) + len(ho) == 30 and 0 < len(te) < 30 and len(ho) == 2
    ids = tr.index.image_id.tolist() + te.index.image_id.tolist() + ho.index.image_id.tolist()
    assert sorted(ids) == sorted(arrays)
    assert tr.index.image_id.tolist() + ho.index.image_id.tolist() == sorted(tr.index.image_id.tolist()
                                                                             + ho.index.image_id.tolist())
    for s in (tr, te, ho):
        for i, rel in enumerate(s.index.image_id):
            np.testing.assert_array_equal(s.raw([i])[0], arrays[rel].transpose(2, 0, 1))
    # adding a file does not move the others between parts
    write_image(tmp_path / "raw" / "zz.png", np.zeros((10, 10, 3), np.uint8))
    out = prep(tmp_path, source="folder", root=str(tmp_path / "raw"), folder={"test_fraction": 0.3})
    assert set(te.index.image_id) <= set(open_store(out, "test").index.image_id)


def test_folder_holdout_is_the_last_training_images(tmp_path):
    arrays = make_folder(tmp_path / "raw" / "train", n=8)
    make_folder(tmp_path / "raw" / "test", n=2, seed=1)
    out = prep(tmp_path, source="folder", root=str(tmp_path / "raw"), n_holdout=3)
    names = sorted(arrays)
    tr, ho = check_holdout(out, np.stack([arrays[r].transpose(2, 0, 1) for r in names]), 3)
    assert ho.index.image_id.tolist() == [f"train/{r}" for r in names[-3:]]


def test_folder_train_test_dirs_jpeg_modes_resize_gray(tmp_path):
    raw = tmp_path / "raw"
    rng = np.random.default_rng(1)
    write_image(raw / "train" / "a.jpg", rng.integers(0, 256, (20, 30, 3), dtype=np.uint8))
    write_image(raw / "train" / "b.PNG", rng.integers(0, 256, (16, 16), dtype=np.uint8))    # gray
    write_image(raw / "train" / "c.png", rng.integers(0, 256, (40, 24, 4), dtype=np.uint8))  # RGBA
    write_image(raw / "test" / "d.jpeg", rng.integers(0, 256, (8, 8, 3), dtype=np.uint8))
    (raw / "train" / "notes.txt").write_text("ignored")
    write_image(raw / "train" / "e.png", rng.integers(0, 256, (8, 8, 3), dtype=np.uint8))
    out = prep(tmp_path, source="folder", root=str(raw), image_size=8, channels=1, n_holdout=1)
    tr = open_store(out, "train")
    assert open_store(out, "holdout").index.image_id.tolist() == ["train/e.png"]
    assert (len(tr), tr.shape) == (3, (1, 8, 8))
    assert tr.index.image_id.tolist() == ["train/a.jpg", "train/b.PNG", "train/c.png"]
    assert open_store(out, "test").shape == (1, 8, 8)


def test_folder_bad_inputs(tmp_path):
    raw = tmp_path / "raw"
    make_folder(raw / "train", n=6)
    make_folder(raw / "test", n=2)
    root = str(raw)
    write_image(raw / "train" / "sub1" / "big.png", np.zeros((12, 10, 3), np.uint8))
    fails(tmp_path, r"big\.png: size 10x12 differs", source="folder", root=root)
    (raw / "train" / "sub1" / "big.png").unlink()
    (raw / "train" / "sub0" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    fails(tmp_path, r"broken\.png: cannot read image", source="folder", root=root)
    (raw / "train" / "sub0" / "broken.png").unlink()
    good = (raw / "test" / "sub0" / "img00.png").read_bytes()
    (raw / "test" / "sub0" / "img00.png").write_bytes(good[: len(good) // 2])   # truncated PNG
    fails(tmp_path, r"img00\.png: cannot read image", source="folder", root=root)
    flat = tmp_path / "flat"
    make_folder(flat, n=3)
    fails(tmp_path, "no PNG/JPEG images for the test part", source="folder", root=str(flat),
          folder={"test_fraction": 0.0})
    fails(tmp_path, "data.folder.test_fraction", source="folder", root=str(flat),
          folder={"test_fraction": 1.5})
    fails(tmp_path, "data.root: required", source="folder")
