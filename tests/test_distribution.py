"""The distribution of log p: `dsm gumbel` (dsm/analysis/gumbel.py), Table 2's NLL rows
(dsm/analysis/nll.py, dsm/figures/table2.py), the probes (dsm/analysis/probes.py) and the
selections of Figures 3 and 6-8, against known answers: Gumbel and normal samples of known
parameters, the maximum-likelihood equations of the Gumbel, a hand-computed KS distance, a
Gaussian model whose dequantized energy has a closed form.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from scipy import stats

from dsm import units
from dsm.analysis import gumbel as gb
from dsm.analysis import nll
from dsm.cli import main
from dsm.errors import DsmError

LOC, SCALE = 9.57, 3.17   # [paper] grayscale ImageNet64


def write_table(path, values, d=4096, **extra):
    df = pd.DataFrame({"image_id": [f"i{k:06d}" for k in range(len(values))],
                       "image_index": np.arange(len(values)), "d": d, "logp_db_per_dim": values, **extra})
    df.to_parquet(path)
    return path


def run_gumbel(tmp_path, table, *args):
    """`dsm gumbel` in-process, run from a directory without params.yaml (schema defaults)."""
    out = tmp_path / "out" / "gumbel"
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(tmp_path)
        rc = main(["gumbel", str(table), "--out", str(out), *args])
    return rc, out


# --- the fit ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def gumbel_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("g")
    x = stats.gumbel_r.rvs(loc=LOC, scale=SCALE, size=50_000, random_state=np.random.default_rng(7))
    table = write_table(tmp / "logp.parquet", x)
    rc, out = run_gumbel(tmp, table, "--set", "gumbel.bootstrap=200")
    assert rc == 0
    headline = {f.stem: json.loads(f.read_text()) for f in out.iterdir()}
    return x, headline, json.loads((out.parent / "gumbel-details.json").read_text())


def test_headline_files_are_dvc_metrics_rows(gumbel_run):
    """One file per quantity named with its unit, in the shared vocabulary (a narrow table
    in `dvc metrics show`); the numbers are the details'."""
    from test_analysis import check_headline_file

    x, m, det = gumbel_run
    assert set(m) == {"loc_db_per_dim", "scale_db_per_dim", "entropy_db_per_dim", "nll_bits_per_dim"}
    for name in ("loc_db_per_dim", "scale_db_per_dim", "entropy_db_per_dim"):
        assert set(m[name]) == {"value", "ci95_lo", "ci95_hi", "n"} and m[name]["n"] == len(x)
    assert m["loc_db_per_dim"]["value"] == det["gumbel_r"]["loc"]
    assert [m["scale_db_per_dim"]["ci95_lo"], m["scale_db_per_dim"]["ci95_hi"]] == det["gumbel_r"]["scale_ci95"]
    assert m["nll_bits_per_dim"] == {"value": det["entropy"]["bits_per_dim_8bit"], "n": len(x)}
    out = Path(det["provenance"]["source"]).parent / "out" / "gumbel"      # where gumbel_run wrote
    assert sorted(f.name for f in out.iterdir()) == ["entropy_db_per_dim.json", "loc_db_per_dim.json",
                                                     "nll_bits_per_dim.json", "scale_db_per_dim.json"]
    for f in out.iterdir():
        check_headline_file(f)


def test_recovers_gumbel_parameters_within_bootstrap_intervals(gumbel_run):
    x, m, det = gumbel_run
    assert det["n_images"] == 50_000 and det["column"] == "logp_db_per_dim" and det["unit"] == "dB/dim"
    loc, scale = m["loc_db_per_dim"], m["scale_db_per_dim"]
    assert loc["ci95_lo"] <= LOC <= loc["ci95_hi"]
    assert scale["ci95_lo"] <= SCALE <= scale["ci95_hi"]
    assert loc["ci95_lo"] < loc["value"] < loc["ci95_hi"]
    # the intervals are as narrow as the asymptotic standard errors say (Fisher information
    # of the Gumbel: se(loc) = 1.11 scale / sqrt(n), se(scale) = 0.78 scale / sqrt(n))
    width = loc["ci95_hi"] - loc["ci95_lo"]
    assert width == pytest.approx(2 * 1.96 * 1.109 * SCALE / math.sqrt(len(x)), rel=0.25)
    width = scale["ci95_hi"] - scale["ci95_lo"]
    assert width == pytest.approx(2 * 1.96 * 0.780 * SCALE / math.sqrt(len(x)), rel=0.25)
    # the entropy's interval: -mean log p ± 1.96 sd / sqrt(n) (the mean is nearly normal)
    h = m["entropy_db_per_dim"]
    assert h["ci95_lo"] < -x.mean() < h["ci95_hi"]
    assert h["ci95_hi"] - h["ci95_lo"] == pytest.approx(
        2 * 1.96 * x.std() / math.sqrt(len(x)), rel=0.25)


def test_gumbel_wins_by_aic_on_gumbel_samples(gumbel_run):
    _, m, det = gumbel_run
    assert det["best_by_aic"] == "gumbel_r" and det["ranking_by_aic"][0] == "gumbel_r"
    fits = det["fits"]
    assert det["aic_margin"] == pytest.approx(min(f["aic"] for n, f in fits.items() if n != "gumbel_r")
                                              - fits["gumbel_r"]["aic"])
    assert fits["gumbel_r"]["ks_statistic"] < min(fits[n]["ks_statistic"] for n in ("gumbel_l", "norm"))
    assert fits["skewnorm"]["k"] == 3 and fits["norm"]["k"] == 2


def test_summary_numbers_and_their_units(gumbel_run):
    x, m, det = gumbel_run
    mean = x.mean()
    assert det["sample"]["mean"] == pytest.approx(mean)
    # entropy = -mean log p; in nats/dim -ln(10)/10 times the dB value; 8-bit bits/dim
    assert m["entropy_db_per_dim"]["value"] == pytest.approx(-mean)
    h = -mean * math.log(10) / 10
    assert det["entropy"]["nats_per_dim"] == pytest.approx(h)
    assert m["nll_bits_per_dim"]["value"] == pytest.approx(8 + h / math.log(2))
    assert det["sample"]["range"] == pytest.approx(x.max() - x.min())
    # the Gumbel's mean loc + γ scale is the sample mean's (paper: 9.57 + 0.577 · 3.17 = 11.4)
    assert det["gumbel_r"]["mean"] == pytest.approx(mean, abs=0.05)


def test_normal_samples_pick_the_normal():
    x = np.random.default_rng(3).normal(11.4, 4.0, 20_000)
    _, details = gb.summarize(x, resamples=20, seed=0)
    assert details["best_by_aic"] == "norm"
    assert details["fits"]["norm"]["params"]["loc"] == pytest.approx(x.mean())
    assert details["fits"]["norm"]["params"]["scale"] == pytest.approx(x.std())   # ML: ddof 0
    assert details["fits"]["gumbel_r"]["delta_aic"] > 100 and details["fits"]["gumbel_l"]["delta_aic"] > 100


def test_fit_is_the_maximum_likelihood_and_ks_is_the_sup_distance():
    x = stats.gumbel_r.rvs(loc=2.0, scale=0.5, size=400, random_state=np.random.default_rng(1))
    fit = gb.fit_family(x, "gumbel_r")
    loc, scale = fit["params"]["loc"], fit["params"]["scale"]
    # the Gumbel likelihood equations: scale = mean(x) - Σ x w / Σ w, w = exp(-x/scale);
    # loc = -scale log mean(exp(-x/scale))
    w = np.exp(-(x - x.mean()) / scale)
    assert scale == pytest.approx(x.mean() - (x * w).sum() / w.sum(), rel=1e-6)
    assert loc == pytest.approx(x.mean() - scale * math.log(w.mean()), abs=1e-6)
    ll = stats.gumbel_r.logpdf(x, loc, scale).sum()
    assert fit["log_likelihood"] == pytest.approx(ll) and fit["aic"] == pytest.approx(4 - 2 * ll)
    for dl, ds in ((1e-3, 0), (-1e-3, 0), (0, 1e-3), (0, -1e-3)):   # a maximum
        assert stats.gumbel_r.logpdf(x, loc + dl, scale + ds).sum() < ll
    xs = np.sort(x)
    f = stats.gumbel_r.cdf(xs, loc, scale)
    i = np.arange(1, len(x) + 1)
    assert fit["ks_statistic"] == pytest.approx(max((i / len(x) - f).max(), (f - (i - 1) / len(x)).max()))


def test_bootstrap_is_seeded():
    x = stats.gumbel_r.rvs(size=300, random_state=np.random.default_rng(2))
    a, b = gb.bootstrap_gumbel(x, 30, seed=5), gb.bootstrap_gumbel(x, 30, seed=5)
    assert a == b and gb.bootstrap_gumbel(x, 30, seed=6) != a


def test_entropy_agrees_across_columns_of_one_table(tmp_path):
    """The same images' log p in dB/dim, nats/dim, 8-bit bits/dim and nats give one entropy."""
    d = 64
    e = d * np.random.default_rng(0).normal(-1.0, 0.3, 200)            # -log p, nats
    cols = {"logp_db_per_dim": units.logp_db_per_dim(e, d), "nats_per_dim": e / d,
            "nll_bits_per_dim": units.nll_bits_per_dim_8bit(e, d), "energy_nats": e}
    h_db = -units.logp_db_per_dim(e, d).mean()
    for col, v in cols.items():
        m, det = gb.summarize(v, col, resamples=10, seed=0, d=d)
        u = gb.column_unit(col)["suffix"]
        assert m[f"loc_{u}"].ci95 is not None and m[f"scale_{u}"].n == 200
        assert m["entropy_db_per_dim"].value == pytest.approx(h_db), col
        # the interval of the entropy maps through the unit's conversion (decreasing for log p)
        lo, hi = m["entropy_db_per_dim"].ci95
        assert lo < h_db < hi, col
        assert det["entropy"]["nats_per_dim"] == pytest.approx(e.mean() / d), col
    assert gb.summarize(cols["nll_bits_per_dim"], "nll_bits_per_dim", 10, 0)[0][
        "nll_bits_per_dim"].value == pytest.approx(cols["nll_bits_per_dim"].mean())
    m, _ = gb.summarize(cols["logp_db_per_dim"], "other", resamples=10, seed=0)
    assert set(m) == {"loc_other", "scale_other"}


# --- bad input: one line, exit 2, nothing written -----------------------------------------

def _bad_tables(tmp_path):
    good = np.random.default_rng(0).gumbel(5, 1, 50)
    with_nan = good.copy()
    with_nan[3] = np.nan
    not_parquet = tmp_path / "text.parquet"
    not_parquet.write_text("image_id,logp\n")
    return {
        "missing column": (write_table(tmp_path / "a.parquet", good), ["--column", "exact_logp_db_per_dim"],
                           "column 'exact_logp_db_per_dim' missing"),
        "too few": (write_table(tmp_path / "b.parquet", good[:9]), [], "9 finite values; the fit needs at least 10"),
        "NaN": (write_table(tmp_path / "c.parquet", with_nan), [], "1 non-finite (NaN (null)) values (first at row 3)"),
        "all null": (write_table(tmp_path / "d.parquet", good, exact_logp_db_per_dim=[None] * 50),
                     ["--column", "exact_logp_db_per_dim"], "NaN (null)"),
        "infinite": (write_table(tmp_path / "e.parquet", np.r_[good, np.inf]), [], "(infinite)"),
        "constant": (write_table(tmp_path / "f.parquet", np.full(20, 3.0)), [], "constant"),
        "not numeric": (write_table(tmp_path / "g.parquet", good, label=["x"] * 50), ["--column", "label"],
                        "not numeric"),
        "no file": (tmp_path / "nope.parquet", [], "file not found"),
        "not parquet": (not_parquet, [], "not a readable Parquet file"),
        "bad param": (write_table(tmp_path / "h.parquet", good), ["--set", "gumbel.bootstrap=1"],
                      "gumbel.bootstrap"),
    }


@pytest.mark.parametrize("case", ["missing column", "too few", "NaN", "all null", "infinite", "constant",
                                  "not numeric", "no file", "not parquet", "bad param"])
def test_bad_input_is_one_line_exit_2_nothing_written(case, tmp_path, capsys):
    table, args, words = _bad_tables(tmp_path)[case]
    rc, out = run_gumbel(tmp_path, table, *args)
    err = capsys.readouterr().err
    assert rc == 2
    assert err.count("\n") == 1 and err.startswith("dsm gumbel: error: ") and words in err, err
    assert not out.parent.exists() or not any(out.parent.iterdir())


def test_bad_input_through_the_installed_command(tmp_path):
    table = write_table(tmp_path / "t.parquet", np.arange(5.0))
    out = tmp_path / "o" / "g.json"
    res = subprocess.run([sys.executable, "-m", "dsm", "gumbel", str(table), "--out", str(out)],
                         cwd=tmp_path, capture_output=True, text=True)
    assert res.returncode == 2 and res.stdout == ""
    assert res.stderr.splitlines() == [f"dsm gumbel: error: {table}: column 'logp_db_per_dim' has 5 finite "
                                       f"values; the fit needs at least 10"]
    assert not (tmp_path / "o").exists()


# --- Table 2 --------------------------------------------------------------------------------

class GaussianEnergy(torch.nn.Module):
    """U(y) = ||y - m||² / (2 s²) (unnormalized), any t."""

    def __init__(self, m=0.5, s=0.2):
        super().__init__()
        self.m, self.s = m, s

    def energy(self, y, t):
        return ((y - self.m) ** 2).flatten(1).sum(1) / (2 * self.s ** 2)


class Pixels:
    def __init__(self, x):
        self.x = x

    def images(self, idx):
        return self.x[np.asarray(idx)]


def test_dequantized_energy_matches_the_closed_form():
    """E_u (x + u - m)² = (x - m)² + (x - m)/256 + 1/(3 · 256²) for u ~ U[0, 1/256)."""
    rng = np.random.default_rng(0)
    x = (rng.integers(0, 256, (6, 1, 4, 4)) / 255).astype(np.float32)
    model, c, draws = GaussianEnergy(), 3.0, 400
    got = nll.dequantized_energy(model, Pixels(x), np.arange(6), c, draws, seed=1, batch_size=4, device="cpu")
    a = x.astype(np.float64) - model.m
    want = ((a ** 2 + a / 256 + 1 / (3 * 256 ** 2)).reshape(6, -1).sum(1)) / (2 * model.s ** 2) + c
    var_u = 4 * a ** 2 / (12 * 256 ** 2)                 # Var of (x+u-m)² ≈ (2a)² Var u
    se = np.sqrt(var_u.reshape(6, -1).sum(1) / draws) / (2 * model.s ** 2)
    assert np.all(np.abs(got - want) < 5 * se + 1e-9)
    # independent of batching and of the other images
    again = nll.dequantized_energy(model, Pixels(x), np.array([4, 2]), c, draws, seed=1, batch_size=1, device="cpu")
    assert again == pytest.approx(got[[4, 2]], rel=1e-12)


def nll_table(d=16, n=40, exact=True):
    rng = np.random.default_rng(4)
    ex = d * rng.normal(-1.0, 0.2, n)
    e = ex + d * rng.normal(0.1, 0.05, n)
    cols = {"energy_nats": e, "d": d}
    if exact:
        cols["exact_energy_nats"] = ex
    return pd.DataFrame(cols)


def test_nll_rows_known_values_continuous_source():
    t = nll_table()
    meta = {"source": "field", "dtype": "float32", "exact": {"entropy_nats": -17.0, "entropy_se": 0.01}}
    rows = {r["key"]: r for r in nll.nll_rows(t, meta)}
    e, ex, d = t["energy_nats"].to_numpy(), t["exact_energy_nats"].to_numpy(), 16
    ln2 = math.log(2)
    assert rows["model_8bit_shift"]["bits_per_dim"] == pytest.approx(8 + e.mean() / d / ln2)
    assert rows["model_8bit_shift"]["se_bits_per_dim"] == pytest.approx((e / d).std(ddof=1) / math.sqrt(40) / ln2)
    assert rows["model_dequantized"]["applies"] is False and rows["model_dequantized"]["bits_per_dim"] is None
    assert "does not apply" in rows["model_dequantized"]["note"]
    assert rows["exact_test"]["bits_per_dim"] == pytest.approx(8 + ex.mean() / d / ln2)
    assert rows["exact_entropy"]["bits_per_dim"] == pytest.approx(8 - 17.0 / d / ln2)
    assert rows["exact_entropy"]["se_bits_per_dim"] == pytest.approx(0.01 / d / ln2)
    ex_row = rows["model_excess"]
    assert ex_row["bits_per_dim"] == pytest.approx(rows["model_8bit_shift"]["bits_per_dim"]
                                                   - rows["exact_test"]["bits_per_dim"])
    assert ex_row["se_bits_per_dim"] == pytest.approx(((e - ex) / d).std(ddof=1) / math.sqrt(40) / ln2)
    assert ex_row["se_bits_per_dim"] < rows["exact_test"]["se_bits_per_dim"]     # paired


def test_nll_rows_8bit_source_and_real_data():
    t = nll_table(exact=False)
    meta = {"source": "imagenet64", "dtype": "uint8"}
    deq = t["energy_nats"].to_numpy() + 2.0
    rows = {r["key"]: r for r in nll.nll_rows(t, meta, dequantized=deq, draws=3)}
    assert set(rows) == {"model_8bit_shift", "model_dequantized"}
    assert rows["model_dequantized"]["bits_per_dim"] - rows["model_8bit_shift"]["bits_per_dim"] == \
        pytest.approx(2.0 / 16 / math.log(2))
    assert "3 draw(s)" in rows["model_dequantized"]["convention"]
    with pytest.raises(DsmError, match="no dequantized energies"):
        nll.nll_rows(t, meta)


def test_table2_formats_agree(tmp_path):
    from dsm.figures import table2

    t = nll_table()
    rows = nll.nll_rows(t, {"source": "field", "dtype": "float32", "exact": {"entropy_nats": -17.0}})
    ctx = {"dataset": "field", "channels": 1, "scale": "x", "n_images": 40, "d": 16, "source": "t.parquet",
           "checkpoint": "abc", "code_version": "dsm test"}
    back = pd.read_csv(__import__("io").StringIO(table2.to_csv(rows)))
    assert list(back["key"]) == [r["key"] for r in rows]
    for r, (_, b) in zip(rows, back.iterrows()):
        if r["bits_per_dim"] is None:
            assert np.isnan(b["bits_per_dim"])
        else:
            assert b["bits_per_dim"] == pytest.approx(r["bits_per_dim"], rel=1e-5)
    md, tex = table2.to_markdown(rows, ctx), table2.to_latex(rows, ctx)
    for r in rows:
        shown = "n/a" if r["bits_per_dim"] is None else f"{r['bits_per_dim']:.4f}"
        assert shown in md and shown in tex
    assert "8-bit shift" in md and "does not apply" in md and "\\toprule" in tex
    assert "U[0, 1/256)\\^{}d" in tex and "E\\_u" in tex          # escaped for LaTeX


# --- probes and the selections of the figures -----------------------------------------------

def test_probe_images():
    a = gb_probes().probe_images((1, 8, 8), 3, seed=2)
    b = gb_probes().probe_images((1, 8, 8), 5, seed=2)
    assert a["noise"].shape == (3, 1, 8, 8) and np.array_equal(a["noise"], b["noise"][:3])
    assert 0 <= a["noise"].min() and a["noise"].max() < 1 and abs(a["noise"].mean() - 0.5) < 0.1
    assert np.all(a["constant"] == 0.5) and a["constant"].shape == (1, 1, 8, 8)


def gb_probes():
    from dsm.analysis import probes

    return probes


def test_grid_selections():
    from dsm.figures.fig678 import select

    v = np.array([3.0, 1.0, 2.0, 5.0, 4.0, 2.0])
    t = pd.DataFrame({"image_id": [f"i{k}" for k in range(6)], "image_index": np.arange(6), "logp_db_per_dim": v})
    assert list(select(t, "highest", 3)["logp_db_per_dim"]) == [5.0, 4.0, 3.0]
    assert list(select(t, "lowest", 3)["image_id"]) == ["i1", "i2", "i5"]          # ties by image_id
    spaced = select(t, "spaced", 3)
    assert list(spaced["logp_db_per_dim"]) == [1.0, 3.0, 5.0]
    assert len(select(t, "highest", 100)) == 6


def test_fig3_limits_take_in_near_probes_only():
    from dsm.figures.fig3 import _limits

    lo, hi = _limits(np.array([0.0, 10.0]), [-5.0, 60.0], None)
    assert lo < -5.0 < 0 and 10.0 < hi < 11.0          # -5 is near, 60 is far: drawn at the border
    assert _limits(np.array([0.0, 10.0]), [], [2.0, 3.0]) == (2.0, 3.0)


# --- what a reader sees: Figure 3's histogram (a DVC plot), Table 2's headline numbers -------

def test_fig3_histogram_table_is_the_drawn_histogram_and_the_fit_per_bin():
    from dsm.figures.fig3 import histogram_table

    x = stats.gumbel_r.rvs(loc=LOC, scale=SCALE, size=2000, random_state=np.random.default_rng(5))
    bins = np.linspace(x.min() - 1, x.max() + 1, 31)
    t = histogram_table(x, bins, LOC, SCALE)
    width = np.diff(bins)
    assert list(t["logp_db_per_dim"]) == pytest.approx(list(0.5 * (bins[1:] + bins[:-1])))
    assert (t["density"] * width).sum() == pytest.approx(1.0)
    assert list(t["density"]) == pytest.approx(list(np.histogram(x, bins, density=True)[0]))
    # the fit on the histogram's footing: its probability of each bin over the width
    mass = stats.gumbel_r.cdf(bins[1:], LOC, SCALE) - stats.gumbel_r.cdf(bins[:-1], LOC, SCALE)
    assert list(t["gumbel_density"]) == pytest.approx(list(mass / width))
    assert t["exact_density"].isna().all()
    # values outside the bins are counted in the border bins (clipped, as drawn)
    t2 = histogram_table(np.r_[x, 1e3], bins, LOC, SCALE, exact=x)
    assert (t2["density"] * width).sum() == pytest.approx(1.0) and t2["density"].iloc[-1] > t["density"].iloc[-1]
    assert list(t2["exact_density"]) == pytest.approx(list(t["density"]))


def test_table2_headline_rows(tmp_path):
    from dsm.figures import table2
    from dsm.headline import Metric, write_metrics_dir
    from test_analysis import check_headline_dir

    rows = nll.nll_rows(nll_table(), {"source": "field", "dtype": "float32", "exact": {"entropy_nats": -17.0}})
    h = table2.headline(rows)
    assert set(h) == {"model_8bit_shift_bits_per_dim", "exact_test_bits_per_dim", "exact_entropy_bits_per_dim",
                      "model_excess_bits_per_dim"}                                         # dequantized: n/a
    by_key = {r["key"]: r for r in rows}
    for key, m in h.items():
        r = by_key[key.removesuffix("_bits_per_dim")]
        assert m == Metric(r["bits_per_dim"], se=r["se_bits_per_dim"], n=r["n_images"])
    write_metrics_dir(tmp_path / "m", h)
    assert len(check_headline_dir(tmp_path / "m")) == 4
