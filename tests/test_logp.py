"""`dsm logp` on a user's own images: the same log p as `dsm evaluate` on the same pixels.

A tiny `folder` dataset of 8-bit PNGs (colour, grayscale and palette images, for a
one-channel model: the luma conversion must match `dsm prepare`'s) is prepared, a smoke
model is trained on it, normalized and evaluated at its pipeline locations; `dsm logp`
on the test PNGs (finding the normalization file by itself) and on the same pixels as
arrays must give the values `dsm evaluate` wrote. Bad inputs: one-line error, exit 2,
no output file.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from dsm import units
from dsm.cli import main
from test_pipeline_util import REPO

SIZE = 8


def _png(path, rng, mode="RGB", size=SIZE):
    path.parent.mkdir(parents=True, exist_ok=True)
    if mode == "RGB":
        im = Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8), "RGB")
    elif mode == "L":
        im = Image.fromarray(rng.integers(0, 256, (size, size), dtype=np.uint8), "L")
    else:  # palette
        im = Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8), "RGB").quantize(16)
    im.save(path)
    return path


def _cli(*args):
    return main([str(a) for a in args])


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A folder dataset, its store, and a smoke model with norm and evaluation at the
    pipeline's locations (models/smoke/full, results/smoke/full) under ``root``."""
    root = tmp_path_factory.mktemp("logp")
    rng = np.random.default_rng(0)
    for i in range(40):
        _png(root / "raw" / "train" / f"im{i:02d}.png", rng)
    for i, mode in enumerate(["RGB", "L", "P", "RGB", "RGB", "L"]):
        _png(root / "raw" / "test" / f"t{i}.png", rng, mode)
    common = ["--params", REPO / "params.yaml", "--scale", "smoke",
              "--set", "data.source=folder", "--set", f"data.root={root / 'raw'}",
              "--set", "data.n_train=null", "--set", "data.n_test=null", "--set", "data.n_holdout=8",
              "--set", "data.channels=1",
              "--set", "data.image_size=null", "--set", "train.progress=false"]
    data, model = root / "data", root / "models/smoke/full"
    norm, table = root / "results/smoke/full/norm.json", root / "results/smoke/full/logp-test.parquet"
    assert _cli("prepare", *common, "--out", data) == 0
    assert _cli("train", *common, "--data", data, "--full", "--out", model) == 0
    assert _cli("normalize", *common, "--model", model / "model.pt", "--data", data, "--out", norm) == 0
    assert _cli("evaluate", *common, "--model", model / "model.pt", "--norm", norm, "--data", data,
                "--full", "--out", table) == 0
    return root, model / "model.pt", pd.read_parquet(table)


def test_logp_of_pngs_equals_evaluate(trained, tmp_path):
    root, model, table = trained
    out = tmp_path / "logp.parquet"
    assert _cli("logp", "--model", model, root / "raw" / "test", "--out", out, "--batch-size", 4) == 0
    got = pd.read_parquet(out)
    assert len(got) == len(table) == 6
    got["image_id"] = [str(f).split("/raw/", 1)[1] for f in got["file"]]     # test/t0.png ...
    both = table.merge(got, on="image_id", suffixes=("_eval", "_logp"), validate="one_to_one")
    assert len(both) == 6
    np.testing.assert_allclose(both["energy_nats_logp"], both["energy_nats_eval"], rtol=1e-6)
    np.testing.assert_allclose(both["logp_db_per_dim_logp"], both["logp_db_per_dim_eval"], rtol=1e-6)
    d = SIZE * SIZE
    np.testing.assert_allclose(got["nll_bits_per_dim"], units.nll_bits_per_dim_8bit(got["energy_nats"], d))
    np.testing.assert_allclose(got["nats_per_dim"], got["energy_nats"] / d)
    assert (got["estimator"] == "one-shot").all() and (got["nfe"] == 1).all() and (got["d"] == d).all()
    assert got["index"].isna().all() and got["key"].isna().all()
    assert np.allclose(got["norm_const_nats"], table["norm_const_nats"].iloc[0])
    assert (got["checkpoint_sha256"] == table["checkpoint_sha256"].iloc[0]).all()


def test_logp_of_arrays_equals_evaluate(trained, tmp_path):
    from dsm.data import open_store

    root, model, table = trained
    store = open_store(root / "data" / "test")
    raw = store.raw(np.arange(len(store)))                                    # uint8 (6, 1, 8, 8)
    np.save(tmp_path / "px.npy", raw)
    np.savez(tmp_path / "px.npz", gray=raw[:, 0], unit=raw.astype(np.float64) / 255)
    out = tmp_path / "arrays.parquet"
    assert _cli("logp", "--model", model, tmp_path / "px.npy", tmp_path / "px.npz", "--out", out,
                "--batch-size", 4) == 0
    got = pd.read_parquet(out)
    ref = table.sort_values("image_index")["energy_nats"].to_numpy()
    assert len(got) == 18 and got["index"].tolist() == list(range(6)) * 3
    assert [None if pd.isna(k) else k for k in got["key"]] == [None] * 6 + ["gray"] * 6 + ["unit"] * 6
    for part in range(3):
        np.testing.assert_allclose(got["energy_nats"].to_numpy()[6 * part:6 * part + 6], ref, rtol=1e-5)


def test_resize_matches_the_folder_conversion(trained, tmp_path):
    from dsm.data.folder import load_image

    root, model, _ = trained
    big = _png(tmp_path / "big" / "b.png", np.random.default_rng(3), size=2 * SIZE + 3)
    small = tmp_path / "small" / "s.png"
    small.parent.mkdir()
    Image.fromarray(load_image(big, SIZE).transpose(1, 2, 0), "RGB").save(small)
    assert _cli("logp", "--model", model, big, "--out", tmp_path / "x.parquet") == 2    # no --resize
    assert not (tmp_path / "x.parquet").exists()
    assert _cli("logp", "--model", model, big, "--resize", "--out", tmp_path / "a.parquet") == 0
    assert _cli("logp", "--model", model, small, "--out", tmp_path / "b.parquet") == 0
    a, b = pd.read_parquet(tmp_path / "a.parquet"), pd.read_parquet(tmp_path / "b.parquet")
    np.testing.assert_allclose(a["energy_nats"], b["energy_nats"], rtol=1e-6)


def test_integrating_estimator_through_logp(trained, tmp_path):
    root, model, table = trained
    out = tmp_path / "sde.parquet"
    assert _cli("logp", "--model", model, root / "raw" / "test", "--out", out, "--estimator", "sde",
                "--option", "paths=2", "--option", "n_t=8") == 0
    got = pd.read_parquet(out)
    assert (got["estimator"] == "sde").all() and (got["se_nats"] > 0).all()
    assert np.isfinite(got["energy_nats"]).all() and (got["nfe"] == 2 * 9).all()
    assert _cli("logp", "--model", model, root / "raw" / "test", "--out", out, "--estimator", "sde",
                "--option", "pathz=2") == 2


def _sixteen_bit(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((SIZE, SIZE), 40000, np.uint16)).save(path)
    return path


def _corrupt(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"not an image at all")
    return path


def _truncated(path):
    good = _png(path.parent / "good.png", np.random.default_rng(1))
    data = good.read_bytes()
    good.unlink()
    path.write_bytes(data[: len(data) // 2])
    return path


def _empty(path):
    path.mkdir(parents=True)
    (path / "notes.txt").write_text("no images here")
    return path


def _npy_of_another_shape(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, np.zeros((2, 3, SIZE, SIZE), np.uint8))
    return path


def _float_out_of_range(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, np.full((2, 1, SIZE, SIZE), 1.5, np.float32))
    return path


BAD = {
    "corrupt": (_corrupt, "c.png", "cannot read image"),
    "truncated": (_truncated, "t.png", "cannot read image"),
    "wrong-size": (lambda p: _png(p, np.random.default_rng(2), size=16), "w.png", "does not match the model's 8x8"),
    "16-bit": (_sixteen_bit, "s.png", "16-bit"),
    "empty-folder": (_empty, "empty", "no PNG/JPEG images"),
    "float-range": (_float_out_of_range, "f.npy", "outside [0, 1]"),
    "npy-shape": (_npy_of_another_shape, "s.npy", "does not fit"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_one_line_error_exit_2_nothing_written(trained, tmp_path, capsys, case):
    root, model, _ = trained
    make, name, words = BAD[case]
    bad = make(tmp_path / "in" / name)
    good = root / "raw" / "test"
    out = tmp_path / "out.parquet"
    capsys.readouterr()
    assert _cli("logp", "--model", model, good, bad, "--out", out, "--batch-size", 2) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("dsm logp: error: ") and words in err[0], err
    assert str(bad) in err[0]
    assert not out.exists() and not list(tmp_path.glob(".out.parquet*"))


def test_normalization_file_is_required(trained, tmp_path, capsys):
    import shutil

    _, model, _ = trained
    lone = tmp_path / "elsewhere" / "model.pt"
    lone.parent.mkdir()
    shutil.copy(model, lone)
    capsys.readouterr()
    assert _cli("logp", "--model", lone, tmp_path, "--out", tmp_path / "o.parquet") == 2
    err = capsys.readouterr().err
    assert "no normalization constant" in err and "dsm normalize" in err and "--norm" in err
    shutil.copy(model.parent.parent.parent.parent / "results/smoke/full/norm.json", lone.parent / "norm.json")
    assert _cli("logp", "--model", lone, tmp_path / "none", "--out", tmp_path / "o.parquet") == 2
    assert "not found" in capsys.readouterr().err


def test_normalization_file_of_a_model_at_its_pipeline_location(tmp_path):
    from dsm.errors import DsmError
    from dsm.logp import find_norm

    for model, norm in [("models/default/full/model.pt", "results/default/full/norm.json"),
                        ("models/paper/seed1/N100-B/model.pt", "results/paper/norm/seed1/N100-B.json")]:
        (tmp_path / model).parent.mkdir(parents=True)
        (tmp_path / model).write_bytes(b"")
        with pytest.raises(DsmError, match="no normalization constant"):
            find_norm(tmp_path / model)
        (tmp_path / norm).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / norm).write_text("{}")
        assert find_norm(tmp_path / model) == tmp_path / norm
        assert find_norm(tmp_path / model, "given.json") == type(tmp_path)("given.json")


def test_estimator_options_from_the_command_line():
    from dsm.logp import parse_options

    assert parse_options(["rtol=1e-4", "n_t=32", "trace=hutchinson", "antithetic=true"]) == \
        {"rtol": 1e-4, "n_t": 32, "trace": "hutchinson", "antithetic": True}


def test_note_when_the_training_store_was_not_8_bit(tmp_path, capsys):
    import json

    from dsm.data.user import Item
    from dsm.logp import _warn_if_not_8bit

    (tmp_path / "store" / "train").mkdir(parents=True)
    (tmp_path / "store" / "train" / "meta.json").write_text(json.dumps({"source": "field", "dtype": "float32"}))
    payload = {"provenance": {"data": str(tmp_path / "store")}}
    _warn_if_not_8bit(payload, [Item("npy", tmp_path / "a.npy", 3)])
    assert capsys.readouterr().err == ""                      # arrays: no note
    _warn_if_not_8bit(payload, [Item("image", tmp_path / "a.png", 1)])
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "field" in err and "float32" in err and "8-bit" in err
