"""Table 2's peer densities (dsm/analysis/peers.py) against closed forms, on an exact density,
and in Table 2's rows (dsm/analysis/nll.py, dsm/figures/table2.py)."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
import torch
from scipy import stats
from scipy.special import logsumexp

from dsm.analysis import nll, peers
from dsm.data import open_store
from dsm.data.exact import exact_density
from dsm.data.prepare import prepare
from dsm.errors import DsmError

LN2 = math.log(2)


def correlated(n, d, seed=0, shift=0.0):
    rng = np.random.default_rng(seed)
    a = rng.normal(size=(d, d)) / math.sqrt(d)
    return rng.normal(size=(n, d)) @ a.T + shift


def test_gaussian_log_prob_is_scipys():
    x = correlated(500, 6)
    g = peers.fit_gaussian(x, reg_covar=1e-6)
    np.testing.assert_allclose(g.mean, x.mean(0))
    np.testing.assert_allclose(g.cov, np.cov(x.T, bias=True) + 1e-6 * np.eye(6), rtol=1e-12)
    y = correlated(50, 6, seed=1)
    want = stats.multivariate_normal(g.mean, g.cov).logpdf(y)
    np.testing.assert_allclose(g.log_prob(y), want, rtol=1e-10)
    assert g.n_parameters == 6 + 21


def test_gmm_log_prob_by_hand():
    x = np.concatenate([correlated(300, 4, 0), correlated(300, 4, 1, shift=3.0)])
    gmm = peers.fit_gmm(x, 3, max_iter=50, reg_covar=1e-6, seed=2)
    y = correlated(40, 4, seed=3, shift=1.5)
    comp = np.stack([math.log(w) + stats.multivariate_normal(m, c).logpdf(y)
                     for w, m, c in zip(gmm.weights_, gmm.means_, gmm.covariances_)])
    np.testing.assert_allclose(peers.gmm_log_prob(gmm, y), logsumexp(comp, axis=0), rtol=1e-10)
    assert peers.gmm_parameters(3, 4) == gmm._n_parameters() == 3 * 4 + 3 * 10 + 2
    assert peers.gmm_parameters(20, 64) == 42_899 and peers.gaussian_parameters(64) == 2_144
    # the seed fixes the fit
    again = peers.fit_gmm(x, 3, max_iter=50, reg_covar=1e-6, seed=2)
    np.testing.assert_array_equal(again.means_, gmm.means_)


def test_bad_fit_settings_are_one_line_errors():
    with pytest.raises(DsmError, match=r"peers\.gmm\.n_components: 5 components for 3"):
        peers.fit_gmm(correlated(3, 2), 5)
    flat = np.zeros((20, 3))
    with pytest.raises(DsmError, match=r"peers\.gmm\.reg_covar"):
        peers.fit_gaussian(flat, reg_covar=0.0)


def test_training_sample_seeded_without_replacement(tmp_path):
    out = prepare({"source": "field", "image_size": 4, "n_train": 50, "n_test": 5, "n_holdout": 5},
                  tmp_path / "f", progress=False)
    store = open_store(out, "train")
    idx, x = peers.training_sample(store, 20, seed=3)
    assert len(set(idx)) == 20 and list(idx) == sorted(idx)
    np.testing.assert_array_equal(x, store.images(idx).reshape(20, -1))
    assert np.array_equal(peers.training_sample(store, 20, seed=3)[0], idx)
    assert not np.array_equal(peers.training_sample(store, 20, seed=4)[0], idx)
    assert len(peers.training_sample(store, None, seed=3)[0]) == 50


@pytest.fixture(scope="module")
def field_peers(tmp_path_factory):
    """The peers stage on field images, whose exact density is known."""
    root = tmp_path_factory.mktemp("peers")
    data = prepare({"source": "field", "image_size": 4, "n_train": 4000, "n_test": 400, "n_holdout": 5},
                   root / "f", progress=False)
    cfg = {"name": "t", "resources": {"evaluate": {"threads": 1}},
           "peers": {"n_fit": 3000, "seed": 0, "gmm": {"n_components": 3, "max_iter": 100}}}
    info = peers.peers_from_params(cfg, data, root / "p.parquet", root / "p.json")
    return data, pd.read_parquet(root / "p.parquet"), info


def test_peers_excess_over_the_exact_density_is_nonnegative(field_peers):
    data, table, info = field_peers
    test = open_store(data, "test")
    ex = exact_density(test.meta).energy(torch.as_tensor(test.images().copy(), dtype=torch.float64), 0.0).numpy()
    excess = {}
    for name in peers.PEERS:
        rows = table[table.model == name].sort_values("image_index")
        assert rows.image_index.tolist() == list(range(len(test)))
        diff = (rows.energy_nats.to_numpy() - ex) / (16 * LN2)
        m, se = diff.mean(), diff.std(ddof=1) / math.sqrt(len(diff))
        assert m > -2 * se, f"{name}: excess {m:.4f} ± {se:.4f} bits/dim below 0"
        excess[name] = m
    # the field is a mixture of contrasts: a mixture fits it better than one Gaussian
    assert excess["gmm"] < excess["gaussian"] and excess["gaussian"] > 0.05


def test_peers_outputs_units_and_costs(field_peers):
    data, table, info = field_peers
    d = 16
    assert set(table.model) == {"gmm", "gaussian"} and (table.d == d).all()
    np.testing.assert_allclose(table.nll_bits_per_dim, 8 + table.energy_nats / (d * LN2))
    np.testing.assert_allclose(table.logp_db_per_dim, -10 * table.energy_nats / (d * math.log(10)))
    np.testing.assert_allclose(table.nats_per_dim, table.energy_nats / d)
    assert (info["n_fit"], info["n_test"], info["d"]) == (3000, 400, 16)
    g = info["gmm"]
    assert g["n_parameters"] == 3 * 16 + 3 * 136 + 2 and g["n_components"] == 3
    assert info["gaussian"]["n_parameters"] == 16 + 136
    for name in peers.PEERS:
        assert info[name]["fit_cpu_seconds"] >= 0 and info[name]["eval_cpu_seconds"] >= 0
        bits = table[table.model == name].nll_bits_per_dim
        assert info[name]["test_nll_bits_per_dim"] == pytest.approx(bits.mean())
        assert info[name]["test_nll_se_bits_per_dim"] == pytest.approx(bits.std(ddof=1) / math.sqrt(400))


def pair_tables(n=30, d=16):
    rng = np.random.default_rng(1)
    ex = d * rng.normal(-1, 0.2, n)
    model = pd.DataFrame({"image_index": np.arange(n), "energy_nats": ex + d * rng.normal(0.05, 0.02, n),
                          "d": d, "exact_energy_nats": ex})
    order = rng.permutation(n)            # the peers' rows in another order
    rows = []
    for name, shift in (("gmm", 0.1), ("gaussian", 0.4)):
        e = ex + d * rng.normal(shift, 0.05, n)
        rows.append(pd.DataFrame({"image_index": order, "model": name, "d": d, "energy_nats": e[order]}))
    return model, pd.concat(rows, ignore_index=True)


def test_nll_rows_with_peers_paired_by_image():
    model, peer = pair_tables()
    info = {"n_fit": 100, "gmm": {"n_components": 3, "n_parameters": 77, "fit_cpu_seconds": 1.5,
                                  "eval_cpu_seconds": 0.1},
            "gaussian": {"n_parameters": 152, "fit_cpu_seconds": 0.01, "eval_cpu_seconds": 0.01}}
    rows = {r["key"]: r for r in nll.nll_rows(model, {"source": "field", "dtype": "float32"}, peers=peer,
                                              peers_info=info, model_costs={"n_parameters": 999})}
    d = 16
    for name in ("gmm", "gaussian"):
        pe = peer[peer.model == name].set_index("image_index").energy_nats.loc[model.image_index].to_numpy()
        assert rows[name]["bits_per_dim"] == pytest.approx(8 + pe.mean() / d / LN2)
        diff = (model.energy_nats.to_numpy() - pe) / d / LN2
        assert rows[f"model_minus_{name}"]["bits_per_dim"] == pytest.approx(diff.mean())
        assert rows[f"model_minus_{name}"]["se_bits_per_dim"] == pytest.approx(diff.std(ddof=1) / math.sqrt(30))
        assert rows[f"model_minus_{name}"]["bits_per_dim"] == pytest.approx(
            rows["model_8bit_shift"]["bits_per_dim"] - rows[name]["bits_per_dim"])
        exc = (pe - model.exact_energy_nats.to_numpy()) / d / LN2
        assert rows[f"{name}_excess"]["bits_per_dim"] == pytest.approx(exc.mean())
    assert rows["gmm"]["n_parameters"] == 77 and rows["gmm"]["fit_cpu_seconds"] == 1.5
    assert "3 components" in rows["gmm"]["quantity"] and "fit on 100 training images" in rows["gmm"]["note"]
    assert rows["model_8bit_shift"]["n_parameters"] == 999 and rows["model_excess"]["n_parameters"] is None
    # a peer that scored other images is refused
    with pytest.raises(DsmError, match="other test images"):
        nll.nll_rows(model, {"source": "field"}, peers=peer[peer.image_index != 3])


def test_table2_shows_costs_in_every_format():
    from dsm.figures import table2

    model, peer = pair_tables()
    model = model.drop(columns="exact_energy_nats")               # real photographs: no exact density
    info = {"gmm": {"n_components": 3, "n_parameters": 42_899, "fit_cpu_seconds": 173.0, "eval_cpu_seconds": 0.5}}
    rows = nll.nll_rows(model, {"source": "patches", "dtype": "float32"}, peers=peer[peer.model == "gmm"],
                        peers_info=info, model_costs={"n_parameters": 203_873, "fit_cpu_seconds": None,
                                                      "eval_cpu_seconds": None})
    ctx = {"dataset": "patches", "channels": 1, "scale": "x", "n_images": 30, "d": 16, "source": "t.parquet",
           "checkpoint": "abc", "code_version": "dsm test"}
    md, tex = table2.to_markdown(rows, ctx), table2.to_latex(rows, ctx)
    assert "42,899" in md and "173 / 0.5" in md and "203,873" in md and "n/a / n/a" in md
    assert "42,899" in tex and "173 / 0.5" in tex
    back = pd.read_csv(__import__("io").StringIO(table2.to_csv(rows))).set_index("key")
    assert back.loc["gmm", "n_parameters"] == 42_899 and back.loc["gmm", "fit_cpu_seconds"] == 173.0
    assert set(table2.headline(rows)) == {"model_8bit_shift_bits_per_dim", "gmm_bits_per_dim", "model_minus_gmm_bits_per_dim"}


def test_benchmark_cpu_seconds(tmp_path):
    from dsm.figures.table2 import benchmark_cpu_seconds

    f = tmp_path / "train_full.tsv"
    f.write_text("s\th:m:s\tmax_rss\tmax_vms\tmax_uss\tmax_pss\tio_in\tio_out\tmean_load\tcpu_time\n"
                 "12.5\t0:00:12\t300.1\t900.2\t280.0\t285.0\t0.0\t1.2\t95.0\t11.75\n")
    assert benchmark_cpu_seconds(f) == 11.75
    assert benchmark_cpu_seconds(tmp_path / "missing.tsv") is None
    (tmp_path / "bad.tsv").write_text("s\n1.0\n")
    assert benchmark_cpu_seconds(tmp_path / "bad.tsv") is None
