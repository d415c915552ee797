"""A/B splits: nesting, disjointness (by index and content), duplicates, errors."""

import numpy as np
import pandas as pd
import pytest

from dsm.data.prepare import prepare
from dsm.data.splits import make_splits, read_split
from dsm.data.store import Chunk, PartPlan, write_store
from dsm.errors import DsmError


@pytest.fixture(scope="module")
def field_store(tmp_path_factory):
    out = tmp_path_factory.mktemp("s") / "f"
    return prepare({"source": "field", "image_size": 4, "n_train": 250, "n_test": 5, "n_holdout": 30},
                   out, progress=False)


def uint8_store(path, pixels):
    def chunks():
        yield Chunk(pixels, [f"img{i}" for i in range(len(pixels))])

    return write_store(path, [PartPlan("train", chunks), PartPlan("test", chunks)],
                       {"source": "x", "params_hash": "h"}, progress=False)


def test_nested_and_disjoint(field_store, tmp_path):
    out = make_splits(field_store, {"N": [100, 1, 10]}, tmp_path / "s.parquet", progress=False)
    df = pd.read_parquet(out)
    assert list(df.columns) == ["image_index", "image_id", "content_hash", "split", "N", "dup_in_other"]
    prev = {"A": set(), "B": set()}
    for N in (1, 10, 100):
        a, b = read_split(out, N, "A"), read_split(out, N, "B")
        assert a.tolist() == list(range(N)) and b.tolist() == list(range(250 - N, 250))
        assert not set(a) & set(b)
        ha = set(df[(df.N == N) & (df.split == "A")].content_hash)
        hb = set(df[(df.N == N) & (df.split == "B")].content_hash)
        assert len(ha) == N and not ha & hb
        assert prev["A"] <= set(a) and prev["B"] <= set(b)
        prev = {"A": set(a), "B": set(b)}
    assert not df.dup_in_other.any()
    idx = pd.read_parquet(field_store / "train" / "index.parquet")
    assert (df.image_id.values == idx.image_id.values[df.image_index.values]).all()


def test_splits_are_drawn_from_train_only(field_store, tmp_path):
    """A and B come from the train part: no image of the holdout (or test) part is in them."""
    from dsm.data import open_store

    out = make_splits(field_store, {"N": [125]}, tmp_path / "s.parquet", progress=False)
    df = pd.read_parquet(out)
    held = set(open_store(field_store, "holdout").index.content_hash)
    held |= set(open_store(field_store, "test").index.content_hash)
    assert len(held) == 35 and not held & set(df.content_hash)
    assert df.image_id.str.startswith("field-s0-train-").all()


def test_whole_train_set_at_2N_equal_n(field_store, tmp_path):
    out = make_splits(field_store / "train", {"N": [125]}, tmp_path / "s.parquet", progress=False)
    assert len(set(read_split(out, 125, "A")) | set(read_split(out, 125, "B"))) == 250


def test_too_large_N_names_key_and_writes_nothing(field_store, tmp_path):
    with pytest.raises(DsmError, match=r"split\.N: 2·max N = 252 exceeds the n = 250"):
        make_splits(field_store, {"N": [1, 126]}, tmp_path / "s.parquet", progress=False)
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("cfg, key", [({"N": []}, "split.N"), ({"N": [0]}, "split.N"),
                                      ({"N": [1, 1]}, "split.N"), ({"M": 3}, "split.M"),
                                      ({"on_duplicate": "drop"}, "split.on_duplicate")])
def test_bad_split_params(field_store, tmp_path, cfg, key):
    with pytest.raises(DsmError, match=key):
        make_splits(field_store, cfg, tmp_path / "s.parquet", progress=False)
    assert not list(tmp_path.iterdir())


def test_idempotent(field_store, tmp_path, capsys):
    out = make_splits(field_store, {"N": [1, 10]}, tmp_path / "s.parquet", progress=False)
    mtime = out.stat().st_mtime_ns
    make_splits(field_store, {"N": [1, 10]}, out, progress=False)
    assert "not rewriting" in capsys.readouterr().err and out.stat().st_mtime_ns == mtime
    make_splits(field_store, {"N": [1, 20]}, out, progress=False)
    assert read_split(out, 20, "A").size == 20


def test_duplicates_reported_and_straddling_pair_flagged(tmp_path, capsys):
    px = np.arange(20, dtype=np.uint8).reshape(20, 1, 1, 1).repeat(4, axis=2)
    px[18] = px[1]            # image 18 (in B for N >= 2) duplicates image 1 (in A for N >= 2)
    px[5] = px[4]             # a duplicate inside A only
    store = uint8_store(tmp_path / "d", px)
    out = make_splits(store, {"N": [1, 5]}, tmp_path / "s.parquet", progress=False)
    err = capsys.readouterr().err
    assert "2 image(s)" in err and "exact duplicates" in err
    assert "split N=5: 1 distinct image content(s) occur in both A and B" in err and "img1 = img18" in err
    df = pd.read_parquet(out)
    flagged = df[df.dup_in_other]
    assert sorted(flagged.image_index) == [1, 18] and set(flagged.N) == {5}
    with pytest.raises(DsmError, match="on_duplicate"):
        make_splits(store, {"N": [5], "on_duplicate": "error"}, tmp_path / "e.parquet", progress=False)
    assert not (tmp_path / "e.parquet").exists()


def test_corrupt_store_detected_by_hash(tmp_path):
    px = np.arange(10, dtype=np.uint8).reshape(10, 1, 1, 1)
    store = uint8_store(tmp_path / "c", px)
    arr = np.load(store / "train" / "pixels.npy", mmap_mode="r+")
    arr[8] = 99
    arr.flush()
    del arr
    with pytest.raises(DsmError, match="image 8 does not match its content_hash"):
        make_splits(store, {"N": [2]}, tmp_path / "s.parquet", progress=False)


def test_read_split_errors(field_store, tmp_path):
    out = make_splits(field_store, {"N": [1]}, tmp_path / "s.parquet", progress=False)
    with pytest.raises(DsmError, match=r"no split N=7 \(available: \[1\]\)"):
        read_split(out, 7, "A")
    with pytest.raises(DsmError, match="'A' or 'B'"):
        read_split(out, 1, "C")
    with pytest.raises(DsmError, match="not found"):
        read_split(tmp_path / "x.parquet", 1, "A")
