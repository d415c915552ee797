"""The prepared store: format, atomicity, idempotence, params validation, CLI (field, gsm)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from dsm.data import open_store
from dsm.data.exact import exact_density
from dsm.data.prepare import prepare, resolve
from dsm.data.store import Chunk, PartPlan, row_hashes, write_store
from dsm.errors import DsmError

REPO = Path(__file__).resolve().parent.parent
FIELD = {"source": "field", "image_size": 8, "n_train": 300, "n_test": 50, "n_holdout": 40,
         "field": {"scales": [0.5, 1.0], "weights": [0.5, 0.5], "seed": 3}}


def run_cli(*args, cwd):
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.run([sys.executable, "-m", "dsm", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=120)


def write_params(path, data, split=None):
    """A params file with one scale: the repo's smoke scale (if any) with our data/split."""
    import yaml

    section = {"name": "t"}
    repo_params = REPO / "params.yaml"
    if repo_params.is_file():
        scales = yaml.safe_load(repo_params.read_text()).get("scales") or {}
        section = dict(scales.get("smoke") or next(iter(scales.values()), {}), name="t")
    section.update(data=data, split=split or {"N": [1, 10]})
    path.write_text(yaml.safe_dump({"scales": {"t": section}, "run": section}))
    return path


def test_field_store_format(tmp_path):
    out = prepare(FIELD, tmp_path / "f", progress=False)
    assert (out / "done").is_file()
    tr, te = open_store(out, "train"), open_store(out / "test")
    assert (len(tr), len(te), tr.shape, tr.d) == (300, 50, (1, 8, 8), 64)
    px = np.load(out / "train" / "pixels.npy", mmap_mode="r")
    assert isinstance(px, np.memmap) and px.dtype == np.float32
    idx = tr.index
    assert list(idx.columns) == ["image_index", "image_id", "content_hash", "label"]
    assert idx.image_index.tolist() == list(range(300)) and idx.image_id.is_unique
    assert idx.content_hash.tolist() == row_hashes(np.asarray(px))
    meta = json.loads((out / "train" / "meta.json").read_text())
    assert meta["source"] == "field" and meta["dtype"] == "float32" and meta["n"] == 300
    dens = exact_density(tr.meta)
    np.testing.assert_array_equal(tr.images(), dens.sample(300, seed=3, part=0))
    np.testing.assert_array_equal(te.images(), dens.sample(50, seed=3, part=1))
    assert meta["exact"]["entropy_nats"] == pytest.approx(dens.entropy(0.0)[0])
    assert dens.energy(torch.as_tensor(tr.images([0, 1])), torch.zeros(2)).shape == (2,)
    assert not list(tmp_path.glob(".f.*"))                    # no temp dirs left


def test_holdout_part_own_seed_stream(tmp_path):
    """field: the holdout part is stream 2 of the seed (train 0, test 1), disjoint by content."""
    out = prepare(FIELD, tmp_path / "f", progress=False)
    tr, te, ho = (open_store(out, p) for p in ("train", "test", "holdout"))
    assert (len(ho), ho.shape, ho.meta["part"], ho.meta["format"]) == (40, (1, 8, 8), "holdout", "dsm-store/2")
    dens = exact_density(ho.meta)
    np.testing.assert_array_equal(ho.images(), dens.sample(40, seed=3, part=2))
    assert ho.index.image_id[0] == "field-s3-holdout-00000000"
    hashes = [set(s.index.content_hash) for s in (tr, te, ho)]
    assert not hashes[0] & hashes[2] and not hashes[1] & hashes[2] and len(hashes[2]) == 40
    assert json.loads((out / "done").read_text())["n"] == {"train": 300, "test": 50, "holdout": 40}
    # the holdout count changes neither train nor test
    out2 = prepare(dict(FIELD, n_holdout=5), tmp_path / "g", progress=False)
    np.testing.assert_array_equal(open_store(out2, "train").images(), tr.images())
    np.testing.assert_array_equal(open_store(out2, "holdout").images(), ho.images([0, 1, 2, 3, 4]))


def test_gsm_holdout_part(tmp_path):
    cfg = {"source": "gsm", "n_train": 30, "n_test": 10, "n_holdout": 20, "gsm": {"d": 8, "seed": 1}}
    out = prepare(cfg, tmp_path / "g", progress=False)
    tr, te, ho = (open_store(out, p) for p in ("train", "test", "holdout"))
    assert (len(ho), ho.shape) == (20, (1, 1, 8))
    hashes = [set(s.index.content_hash) for s in (tr, te, ho)]
    assert len(hashes[2]) == 20 and not (hashes[0] | hashes[1]) & hashes[2]


def test_store_without_holdout_part_is_an_error(tmp_path):
    def chunks():
        yield Chunk(np.zeros((2, 1, 2, 2), np.float32) + np.arange(2, dtype=np.float32)[:, None, None, None],
                    ["a", "b"])

    write_store(tmp_path / "o", [PartPlan("train", chunks), PartPlan("test", chunks)],
                {"source": "x", "params_hash": "h"}, progress=False)
    with pytest.raises(DsmError, match="no holdout part .*re-run `dsm prepare`"):
        open_store(tmp_path / "o", "holdout")
    with pytest.raises(DsmError, match="part must be one of"):
        open_store(tmp_path / "o", "valid")


def test_idempotent_and_rebuild_on_change(tmp_path, capsys):
    out = prepare(FIELD, tmp_path / "f", progress=False)
    mtime = (out / "train" / "pixels.npy").stat().st_mtime_ns
    prepare(FIELD, out, progress=False)
    assert "already prepared" in capsys.readouterr().err
    assert (out / "train" / "pixels.npy").stat().st_mtime_ns == mtime
    prepare(dict(FIELD, n_test=20), out, progress=False)
    assert len(open_store(out, "test")) == 20
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f"]


def test_gsm_source(tmp_path):
    cfg = {"source": "gsm", "n_train": 100, "n_test": 10, "gsm": {"d": 50, "sigmas": [1.0, 4.0]}}
    out = prepare(cfg, tmp_path / "g", progress=False)
    s = open_store(out, "train")
    assert s.shape == (1, 1, 50)
    dens = exact_density(s.meta)
    assert dens.d == 50
    u = dens.energy(torch.as_tensor(s.images([0, 1, 2]), dtype=torch.float64), 0.1)
    assert torch.isfinite(u).all()
    norms = np.linalg.norm(s.images().reshape(100, -1), axis=1) / np.sqrt(50)
    assert ((norms < 1.6) | (norms > 2.5)).all()               # two well separated shells


@pytest.mark.parametrize("cfg, key", [
    ({"source": "nope"}, "data.source"),
    ({"source": "field", "colour": 1}, "data.colour"),
    ({"source": "field", "field": {"betaa": 1}}, "data.field.betaa"),
    ({"source": "field", "field": {"alpha": "x"}}, "data.field.alpha"),
    ({"source": "field", "channels": 2}, "data.channels"),
    ({"source": "field", "n_train": -3}, "data.n_train"),
    ({"source": "field", "n_test": 5}, "data.n_train"),
    ({"source": "field", "n_train": 5, "n_test": 5, "n_holdout": 0}, "data.n_holdout"),
    ({"source": "field", "n_train": 5, "n_test": 5, "n_holdout": None}, "data.n_holdout"),
    ({"source": "field", "n_train": 5, "n_test": 5, "channels": 3}, "data.channels"),
    ({"source": "cifar10", "cifar10": {"x": 1}}, "data.cifar10.x"),
])
def test_bad_params_name_the_key(tmp_path, cfg, key):
    with pytest.raises(DsmError, match=key.replace(".", r"\.")):
        prepare(cfg, tmp_path / "o", progress=False)
    assert not list(tmp_path.iterdir())


def test_resolve_defaults():
    cfg = resolve({"source": "field"})
    assert cfg["field"]["alpha"] == 2.0 and cfg["n_train"] is None and cfg["root"] is None


def test_non_finite_and_shape_errors_leave_nothing(tmp_path):
    def bad_chunks():
        yield Chunk(np.zeros((3, 1, 4, 4), np.float32), ["a", "b", "c"])
        x = np.zeros((2, 1, 4, 4), np.float32)
        x[1, 0, 2, 2] = np.nan
        yield Chunk(x, ["d", "e"])

    meta = {"source": "test", "params_hash": "h"}
    with pytest.raises(DsmError, match="image 4: non-finite"):
        write_store(tmp_path / "o", [PartPlan("train", bad_chunks)], meta, progress=False)

    def mixed():
        yield Chunk(np.zeros((1, 1, 4, 4), np.uint8), ["a"])
        yield Chunk(np.zeros((1, 1, 5, 5), np.uint8), ["b"])

    with pytest.raises(DsmError, match="differs"):
        write_store(tmp_path / "o", [PartPlan("train", mixed)], meta, progress=False)

    def wrong_dtype():
        yield Chunk(np.zeros((1, 1, 4, 4), np.int16), ["a"])

    with pytest.raises(DsmError, match="dtype int16"):
        write_store(tmp_path / "o", [PartPlan("train", wrong_dtype)], meta, progress=False)
    assert not list(tmp_path.iterdir())


def test_failed_rebuild_keeps_old_store(tmp_path):
    out = prepare(FIELD, tmp_path / "f", progress=False)
    with pytest.raises(DsmError):
        prepare(dict(FIELD, field={"weights": [1.0]}), out, progress=False)
    assert len(open_store(out, "train")) == 300
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f"]


def test_uint8_scaled_on_read(tmp_path):
    def chunks():
        yield Chunk(np.array([[[[0, 255]]], [[[51, 102]]]], np.uint8), ["a", "b"], np.array([3, 4]))

    write_store(tmp_path / "o", [PartPlan("train", chunks)], {"source": "x", "params_hash": "h"},
                progress=False)
    s = open_store(tmp_path / "o/train")
    np.testing.assert_allclose(s.images(), [[[[0, 1]]], [[[0.2, 0.4]]]], rtol=1e-6)
    assert s.index.label.tolist() == [3, 4]


def test_open_store_missing(tmp_path):
    with pytest.raises(DsmError, match="dsm prepare"):
        open_store(tmp_path / "nothing", "train")


def test_cli_prepare_and_split(tmp_path):
    params = write_params(tmp_path / "params.yaml", FIELD)
    r = run_cli("prepare", "--params", str(params), "--out", "data/f", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    r = run_cli("prepare", "--params", str(params), "--out", "data/f", cwd=tmp_path)
    assert r.returncode == 0 and "not rebuilding" in r.stderr
    r = run_cli("split", "--params", str(params), "--data", "data/f", "--out", "data/s.parquet",
                cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert len(pd.read_parquet(tmp_path / "data/s.parquet")) == 22
    r = run_cli("prepare", "--help", cwd=tmp_path)
    assert r.returncode == 0 and "--out" in r.stdout


def test_cli_bad_input_exit_2_nothing_left(tmp_path):
    params = write_params(tmp_path / "params.yaml", FIELD)
    # --set is validated like the file: the error names the override and the key
    r = run_cli("prepare", "--params", str(params), "--out", "out", "--set", "data.field.bogus=1",
                cwd=tmp_path)
    assert r.returncode == 2
    assert r.stderr.strip().startswith("dsm prepare: error: --set (")
    assert "data.field.bogus: unknown key" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    r = run_cli("split", "--params", str(params), "--data", "out", "--out", "s.parquet", cwd=tmp_path)
    assert r.returncode == 2 and "dsm prepare" in r.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["params.yaml"]
    params = write_params(tmp_path / "params.yaml", {"source": "fashion-mnist",
                                                     "root": str(tmp_path / "missing")})
    r = run_cli("prepare", "--params", str(params), "--out", "out", cwd=tmp_path)
    assert r.returncode == 2 and "missing" in r.stderr and "not found" in r.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["params.yaml"]
