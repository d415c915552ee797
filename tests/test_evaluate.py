"""Normalization constant, per-image log p and the streaming Parquet writer.

Closed forms: for x ~ N(μ, σ² I) the noisy density is N(μ, (σ² + t) I), so
U(y, t) = ||y - μ||² / (2(σ² + t)) + (d/2) ln(σ² + t) is its energy up to the
t-independent constant (d/2) ln 2π, which the one-shot estimate must recover (up to the
bias (d/2) ln(1 + σ²/t_max) of the N(mean, t_max I) approximation and Monte-Carlo error).
"""

from __future__ import annotations

import json
import math

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from dsm import units
from dsm.errors import DsmError
from dsm.evaluate import (ParquetStream, denoise, energy, evaluate_images, log_density, row_schema,
                          space_score, time_score)
from dsm.normalization import normalization_constant
from dsm.runtime import image_noise


class Gaussian(torch.nn.Module):
    """Energy of N(μ, (σ² + t) I) minus ``missing`` nats (an unnormalized energy model)."""

    def __init__(self, mu, sigma2: float, missing: float):
        super().__init__()
        self.register_buffer("mu", torch.as_tensor(mu, dtype=torch.float64))
        self.sigma2, self.missing = sigma2, missing

    def energy(self, y, t):
        y = y.double().flatten(1)
        v = self.sigma2 + t.double()
        d = y.shape[1]
        return (y - self.mu.flatten()).pow(2).sum(1) / (2 * v) + 0.5 * d * torch.log(v) - self.missing


def gaussian_data(n, shape, mu, sigma, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.as_tensor(mu, dtype=torch.float32) + sigma * torch.randn(n, *shape, generator=g)


def test_normalization_constant_recovers_missing_constant():
    shape, d = (1, 4, 4), 16
    mu = torch.full(shape, 0.5)
    sigma, t_max, n = 0.3, 1e3, 4000
    missing = 17.25
    model = Gaussian(mu, sigma**2, missing)
    x = gaussian_data(n, shape, mu, sigma)
    r = normalization_constant(model, x, t_max, seed=0, batch_size=500)
    truth = 0.5 * d * math.log(2 * math.pi) + missing      # U + truth = -log p exactly
    bias = -0.5 * d * math.log(1 + sigma**2 / t_max)
    assert r["d"] == d and r["n_images"] == n and r["t_max"] == t_max
    assert abs(r["c_nats"] - truth - bias) < 4 * r["c_sem_nats"]
    assert r["c_sem_nats"] < 0.1                           # ≈ sqrt(d/2 / n)


def test_normalization_constant_exact_from_the_same_noise():
    """σ = 0: c is exactly (d/2) ln(2πe t) - mean U over the very same draws."""
    shape, d, t_max = (2, 3), 6, 50.0
    model = Gaussian(torch.zeros(shape), 0.0, missing=3.0)
    x = torch.zeros(9, *shape)
    r = normalization_constant(model, x, t_max, seed=5, batch_size=4)
    z = torch.from_numpy(image_noise(5, range(9), shape)).double()
    u = (t_max * z.flatten(1).pow(2).sum(1)) / (2 * t_max) + 0.5 * d * math.log(t_max) - 3.0
    expect = 0.5 * d * math.log(2 * math.pi * math.e * t_max) - u.mean().item()
    assert r["c_nats"] == pytest.approx(expect, rel=0, abs=1e-5)
    # with many images the estimate converges to the truth, (d/2) ln 2π + 3
    many = normalization_constant(model, torch.zeros(20000, *shape), t_max, seed=1, batch_size=5000)
    assert abs(many["c_nats"] - (0.5 * d * math.log(2 * math.pi) + 3.0)) < 4 * many["c_sem_nats"]
    assert many["c_sem_nats"] < 0.02


def test_normalization_constant_independent_of_batching():
    model = Gaussian(torch.zeros(1, 2, 2), 0.1, 1.0)
    x = gaussian_data(23, (1, 2, 2), 0.0, 0.3)
    a = normalization_constant(model, x, 10.0, seed=2, batch_size=1)
    b = normalization_constant(model, x, 10.0, seed=2, batch_size=7)
    c = normalization_constant(model, (x[i:i + 5] for i in range(0, 23, 5)), 10.0, seed=2)
    assert a["c_nats"] == pytest.approx(b["c_nats"], abs=1e-9)
    assert a["c_nats"] == pytest.approx(c["c_nats"], abs=1e-9)


def test_normalization_constant_of_exact_field_density_is_zero():
    field = pytest.importorskip("dsm.data.field")
    dens = field.FieldDensity(8)
    x = torch.from_numpy(dens.sample(2000, seed=0)).float()

    class Exact(torch.nn.Module):
        def energy(self, y, t):
            return dens.energy(y.double(), t.double()) - 40.0   # 40 nats short of normalized

    r = normalization_constant(Exact(), x, 1e3, seed=0, batch_size=500)
    assert abs(r["c_nats"] - 40.0) < 4 * r["c_sem_nats"] + 0.05


def test_scores_and_denoiser_closed_forms():
    shape, d = (1, 3, 3), 9
    mu = torch.linspace(0, 1, d).reshape(shape)
    s2 = 0.2
    model = Gaussian(mu, s2, 0.0)
    y = gaussian_data(5, shape, mu, 0.7, seed=3).double()
    t = torch.tensor([1e-3, 0.1, 1.0, 10.0, 100.0], dtype=torch.float64)
    v = (s2 + t).reshape(-1, 1, 1, 1)
    assert torch.allclose(space_score(model, y, t), (y - mu) / v)
    ts = d / (2 * (s2 + t)) - (y - mu).flatten(1).pow(2).sum(1) / (2 * (s2 + t) ** 2)
    assert torch.allclose(time_score(model, y, t), ts)
    assert torch.allclose(denoise(model, y, t), mu + s2 / v * (y - mu))
    assert torch.allclose(energy(model, y, 0.5), model.energy(y, torch.full((5,), 0.5)))


def test_log_density_units():
    e = np.array([-100.0, 0.0, 250.0])
    d = 64
    cols = log_density(e, c_nats=10.0, d=d)
    assert np.allclose(cols["energy_nats"], e + 10)
    assert np.allclose(cols["nats_per_dim"], (e + 10) / d)
    assert np.allclose(cols["logp_db_per_dim"], -10 * (e + 10) / (d * math.log(10)))
    assert np.allclose(cols["nll_bits_per_dim"], 8 + (e + 10) / (d * math.log(2)))
    assert np.allclose(cols["logp_db_per_dim"], units.logp_db_per_dim(e + 10, d))


def _rows(x, batch_size):
    def batches():
        for i in range(0, len(x), batch_size):
            idx = np.arange(i, min(len(x), i + batch_size))
            yield {"image_id": [f"img{j}" for j in idx], "image_index": idx, "image_set": "test"}, x[idx].numpy()
    return batches()


@pytest.mark.parametrize("t", [0.0, 0.5])
def test_streaming_writer_rows_do_not_depend_on_batch_size(tmp_path, t):
    model = Gaussian(torch.full((1, 4, 4), 0.5), 0.05, 3.0)
    x = gaussian_data(30, (1, 4, 4), 0.5, 0.2)
    tables = []
    for bs in (1, 7):
        path = tmp_path / f"rows_{bs}.parquet"
        with ParquetStream(path, row_schema()) as w:
            for rows in evaluate_images(model, _rows(x, bs), c_nats=1.5, t=t, noise_seed=4):
                w.write({**rows, "dataset": "gauss", "N": 10, "model_split": "A", "norm_const_nats": 1.5,
                         "checkpoint_sha256": "abc", "params_sha256": "def", "code_version": "dsm test"})
        assert w.rows == 30
        tables.append(pq.read_table(path))
    assert tables[0].schema == row_schema()
    assert tables[0].equals(tables[1])
    df = tables[0].to_pandas()
    assert df["image_id"].tolist() == [f"img{j}" for j in range(30)]
    assert (df["t"] == t).all() and (df["d"] == 16).all() and df["exact_energy_nats"].isna().all()


def test_streaming_writer_is_atomic(tmp_path):
    path = tmp_path / "rows.parquet"
    with pytest.raises(RuntimeError):
        with ParquetStream(path, row_schema()) as w:
            w.write({"image_id": ["a"], "image_index": [0], "energy_nats": [1.0]})
            raise RuntimeError("killed")
    assert not path.exists() and not list(tmp_path.iterdir())


def test_score_only_model_has_no_log_p():
    class ScoreOnly(torch.nn.Module):
        def score(self, y, t):
            return y

    with pytest.raises(DsmError, match="score-only"):
        normalization_constant(ScoreOnly(), torch.zeros(2, 3), 1.0, seed=0)


# --- the pipeline stages, end to end on a tiny field store ------------------------------

@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    pytest.importorskip("dsm.data.prepare")
    from dsm.data.prepare import prepare
    from dsm.data.splits import make_splits
    from dsm.train import train_from_params

    root = tmp_path_factory.mktemp("pipe")
    cfg = {
        "name": "t", "seed": 0, "device": "cpu",
        "data": {"source": "field", "image_size": 8, "channels": 1, "n_train": 24, "n_test": 12},
        "split": {"N": [2, 10]},
        "model": {"kind": "energy", "widths": [4, 8], "mid_width": 8, "layers_per_block": 2,
                  "activation": "gelu", "embedding": "log", "norm_eps": 1e-5},
        "train": {"steps": 6, "batch_size": 4, "lr": 1e-3, "lr_halve_every": 3, "t_min": 1e-6,
                  "t_max": 1e3, "hflip": True, "checkpoint_every": 3, "log_every": 3, "seed": 0,
                  "flush_denormal": True, "threads": 1, "progress": False},
        "resources": {"train": {"threads": 1}, "evaluate": {"threads": 1}},
        "evaluate": {"n_norm": 12, "batch_size": 5, "max_per_set": 8, "noise_seed": 0,
                     "norm_check_t": [0.01, 0.1, 1.0, 10.0, 100.0]},
    }
    data = root / "data"
    prepare(cfg["data"], data)
    make_splits(data, cfg["split"], root / "splits.parquet")
    model = train_from_params(cfg, data=data, splits=root / "splits.parquet", n=10, split="A",
                              out=root / "model_A")
    return cfg, root, data, model


def test_normalize_and_evaluate_from_params(pipeline):
    from dsm.evaluate import evaluate_from_params, normalize_from_params
    from dsm.io import sha256_file

    cfg, root, data, model = pipeline
    norm = normalize_from_params(cfg, model=model, data=data, out=root / "norm.json")
    saved = json.loads((root / "norm.json").read_text())
    assert saved["c_nats"] == norm["c_nats"] and saved["n_images"] == 12 and saved["d"] == 64
    assert saved["model_sha256"] == sha256_file(model) and saved["t_max"] == 1e3
    for key in ("seed", "c_sem_nats", "params_sha256", "code_version"):
        assert key in saved
    # the images are the store's holdout part (never trained on, never scored)
    assert saved["images"] == "holdout" and saved["data"].endswith("holdout")
    from dsm.data import open_store
    from dsm.normalization import normalization_constant as nc
    from dsm.modelfile import load_model
    net = load_model(model)[0]
    again = nc(net, open_store(data / "holdout").images(np.arange(12)), 1e3, seed=0)
    assert again["c_nats"] == pytest.approx(saved["c_nats"], rel=1e-7)   # batching: float32 sums
    # the check: the schema's levels within [t_min, t_max], T included, and their spread
    levels = [row["t"] for row in saved["check"]]
    assert levels == [0.01, 0.1, 1.0, 10.0, 100.0, 1000.0]
    assert saved["check_entropy"] == "data_covariance"
    cs = [row["c_nats"] for row in saved["check"]]
    assert saved["check_spread_db_per_dim"] == pytest.approx(10 * (max(cs) - min(cs)) / (64 * math.log(10)))
    at_t = nc(net, open_store(data / "holdout").images(np.arange(12)), 0.1, seed=0, entropy="data_covariance")
    assert saved["check"][1]["c_nats"] == pytest.approx(at_t["c_nats"], rel=1e-7)

    out = root / "eval.parquet"
    evaluate_from_params(cfg, model=model, norm=root / "norm.json", data=data,
                         splits=root / "splits.parquet", n=10, split="A", out=out)
    table = pq.read_table(out)
    assert table.schema.names == row_schema().names
    df = table.to_pandas()
    assert df.groupby("image_set").size().to_dict() == {"A": 8, "B": 8, "test": 8}
    assert df[df.image_set == "A"]["image_index"].tolist() == list(range(8))        # first ones
    assert df[df.image_set == "B"]["image_index"].tolist() == list(range(14, 22))
    assert (df["N"] == 10).all() and (df["model_split"] == "A").all() and (df["t"] == 0.0).all()
    assert (df["dataset"] == "field").all() and (df["checkpoint_sha256"] == sha256_file(model)).all()
    assert np.allclose(df["norm_const_nats"], norm["c_nats"])
    assert (df["norm_t"] == 1e3).all() and (df["norm_images"] == "holdout").all()
    assert (df["norm_entropy"] == "isotropic").all()
    assert np.allclose(df["logp_db_per_dim"], units.logp_db_per_dim(df["energy_nats"], 64))
    assert np.allclose(df["nll_bits_per_dim"], units.nll_bits_per_dim_8bit(df["energy_nats"], 64))
    assert df["exact_energy_nats"].notna().all()
    assert np.allclose(df["exact_logp_db_per_dim"], units.logp_db_per_dim(df["exact_energy_nats"], 64))
    assert df.groupby("image_set")["image_id"].apply(lambda s: s.is_unique).all()


def test_normalize_needs_the_holdout_part(pipeline, tmp_path):
    import shutil

    from dsm.evaluate import normalize_from_params

    cfg, root, data, model = pipeline
    old = tmp_path / "old"
    shutil.copytree(data, old)
    shutil.rmtree(old / "holdout")
    with pytest.raises(DsmError, match="no 'holdout' part"):
        normalize_from_params(cfg, model=model, data=old, out=tmp_path / "n.json")
    assert not (tmp_path / "n.json").exists()


def test_evaluate_rejects_stale_norm_and_wrong_model(pipeline, tmp_path):
    from dsm.evaluate import evaluate_from_params

    cfg, root, data, model = pipeline
    (tmp_path / "norm.json").write_text(json.dumps({"c_nats": 1.0, "model_sha256": "0" * 64}))
    with pytest.raises(DsmError, match="another model"):
        evaluate_from_params(cfg, model=model, norm=tmp_path / "norm.json", data=data,
                             splits=root / "splits.parquet", n=10, split="A", out=tmp_path / "e.parquet")
    (tmp_path / "norm.json").write_text(json.dumps({"c_nats": 1.0}))    # no record of its model
    with pytest.raises(DsmError, match="model_sha256' missing"):
        evaluate_from_params(cfg, model=model, norm=tmp_path / "norm.json", data=data,
                             splits=root / "splits.parquet", n=10, split="A", out=tmp_path / "e.parquet")
    from dsm.io import sha256_file

    (tmp_path / "norm.json").write_text(json.dumps({"c_nats": 1.0, "model_sha256": sha256_file(model)}))
    with pytest.raises(DsmError, match="trained on N=10 split A"):
        evaluate_from_params(cfg, model=model, norm=tmp_path / "norm.json", data=data,
                             splits=root / "splits.parquet", n=2, split="B", out=tmp_path / "e.parquet")
    assert not (tmp_path / "e.parquet").exists()


def test_train_from_params_model_file_and_noop(pipeline, capsys):
    from dsm.modelfile import load_model
    from dsm.train import train_from_params

    cfg, root, data, model = pipeline
    net, payload = load_model(model)
    assert payload["provenance"]["N"] == 10 and payload["provenance"]["split"] == "A"
    assert payload["shape"] == [1, 8, 8] and payload["provenance"]["steps"] == 6
    for key in ("code_version", "params_sha256", "train_images_sha256", "splits_sha256"):
        assert payload["provenance"][key]
    before = model.stat().st_mtime_ns
    train_from_params(cfg, data=data, splits=root / "splits.parquet", n=10, split="A", out=root / "model_A")
    assert "up to date" in capsys.readouterr().err
    assert model.stat().st_mtime_ns == before


def test_train_from_params_retrains_on_param_change(pipeline, tmp_path, capsys):
    import shutil

    from dsm.modelfile import read_model_file
    from dsm.train import train_from_params

    cfg, root, data, model = pipeline
    out = tmp_path / "model_A"
    shutil.copytree(model.parent, out)
    old = read_model_file(out / "model.pt")
    changed = dict(cfg, train=dict(cfg["train"], lr=5e-4))
    train_from_params(changed, data=data, splits=root / "splits.parquet", n=10, split="A", out=out)
    err = capsys.readouterr().err
    assert "another config; retraining" in err and "config changed" in err
    new = read_model_file(out / "model.pt")
    assert new["config_sha256"] != old["config_sha256"] and new["config"]["train"]["lr"] == 5e-4
    assert not all(torch.equal(new["model"][k], old["model"][k]) for k in old["model"])


@pytest.mark.parametrize("pairing", ["independent", "paired"])
def test_a_and_b_models_seeds_by_pairing(pipeline, tmp_path, pairing):
    """By default the A and B models of an N get different initial parameters and noise
    draws (own seeds); with train.pairing: paired, identical ones."""
    from dsm.modelfile import read_model_file
    from dsm.train import model_seed, train_from_params

    cfg, root, data, _ = pipeline
    cfg = dict(cfg, train=dict(cfg["train"], steps=0, pairing=pairing))   # steps 0: the initialization
    payloads = {}
    for split in "AB":
        path = train_from_params(cfg, data=data, splits=root / "splits.parquet", n=10, split=split,
                                 out=tmp_path / split, seed=3)
        payloads[split] = read_model_file(path)
    a, b = payloads["A"], payloads["B"]
    same_init = all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    seeds = (a["config"]["train"]["seed"], b["config"]["train"]["seed"])   # also the noise draws' seed
    assert seeds == (model_seed(3, 10, "A", pairing), model_seed(3, 10, "B", pairing))
    assert a["provenance"]["base_seed"] == 3 and a["provenance"]["pairing"] == pairing
    if pairing == "paired":
        assert same_init and seeds[0] == seeds[1]
    else:
        assert not same_init and seeds[0] != seeds[1]
    # replicates (other base seeds) and other N differ too; the derivation is stable
    assert model_seed(4, 10, "A") != model_seed(3, 10, "A") != model_seed(3, 100, "A")
    assert model_seed(0, 100000, "A") == model_seed(0, 100000, "A")
