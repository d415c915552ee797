"""dsm.analysis.generalization (Figure 2 metrics) and dsm.figures.fig2 on synthetic tables."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from dsm.analysis import generalization as gen
from dsm.errors import DsmError
from dsm.headline import Metric, write_metrics_dir
from dsm.pipeline.report import load_json_tree
from dsm.figures import fig2


def make_table(n, split, logp, exact=None, n_test=0, test_logp=None):
    """A per-image table of model N{n}-{split}: rows for the A images, the B images, test."""
    rows = []
    for s in ("A", "B"):
        for i in range(n):
            rows.append({"image_id": f"{s}{i}", "image_set": s, "dataset": "field", "N": n,
                         "model_split": split, "t": 0.0,
                         "logp_db_per_dim": logp(s, i),
                         "exact_logp_db_per_dim": exact(s, i) if exact else np.nan})
    for i in range(n_test):
        rows.append({"image_id": f"T{i}", "image_set": "test", "dataset": "field", "N": n,
                     "model_split": split, "t": 0.0, "logp_db_per_dim": test_logp(i),
                     "exact_logp_db_per_dim": exact("test", i) if exact else np.nan})
    return pd.DataFrame(rows)


def test_agreement_known_values():
    x = np.array([1.0, 2.0, 3.0, 4.0])
    m = gen.agreement(x, x + 0.5)
    assert m["n_images"] == 4 and m["mean_db"] == pytest.approx(-0.5)
    assert m["rms_db"] == pytest.approx(0.5) and m["pearson_r"] == pytest.approx(1.0)
    m = gen.agreement(x, -x)
    assert m["pearson_r"] == pytest.approx(-1.0)
    assert m["rms_db"] == pytest.approx(math.sqrt(np.mean((2 * x) ** 2)))
    assert gen.agreement(x[:2], x[:2])["pearson_r"] is None  # undefined below 3 images


def test_pairs_join_on_image_and_keep_own_sets():
    a = make_table(3, "A", lambda s, i: 10.0 + i, n_test=2, test_logp=lambda i: 0.0)
    b = make_table(3, "B", lambda s, i: 20.0 + i, n_test=2, test_logp=lambda i: 1.0)
    pairs = gen.pair_tables(a, b)
    assert len(pairs) == 6 and set(pairs["image_set"]) == {"A", "B"}
    assert (pairs["logp_b"] - pairs["logp_a"] == 10.0).all()
    with pytest.raises(DsmError, match="same images"):
        gen.pair_tables(a, b[b["image_id"] != "A0"])


def test_metrics_for_n_and_exact_errors():
    # model A is exact on its own images and +3 dB/dim too high on B's; model B the reverse
    exact = lambda s, i: float(i)  # noqa: E731
    a = make_table(5, "A", lambda s, i: i + (0.0 if s == "A" else 3.0), exact, 4, lambda i: i + 1.0)
    b = make_table(5, "B", lambda s, i: i + (0.0 if s == "B" else 3.0), exact, 4, lambda i: i - 1.0)
    m = gen.metrics_for_n(a, b)
    assert m["n_images"] == 10
    assert m["rms_db"] == pytest.approx(3.0) and m["mean_db"] == pytest.approx(0.0)
    assert m["exact_mean_err_db"] == pytest.approx(0.0) and m["exact_rms_err_db"] == pytest.approx(0.0)
    assert m["test_n_images"] == 4 and m["test_mean_db"] == pytest.approx(2.0)
    assert m["test_exact_mean_err_db"] == pytest.approx(0.0)
    assert m["test_exact_rms_err_db"] == pytest.approx(1.0)


def test_no_exact_columns_without_exact_density():
    a = make_table(4, "A", lambda s, i: float(i))
    b = make_table(4, "B", lambda s, i: float(i) + 1)
    m = gen.metrics_for_n(a, b)
    assert not any(k.startswith("exact") for k in m)


def write_tables(tmp_path, ns, noise, seed=0):
    rng = np.random.default_rng(seed)
    for n in ns:
        base = {f"{s}{i}": rng.normal(10, 3) for s in "AB" for i in range(n)}
        base.update({f"T{i}": rng.normal(10, 3) for i in range(5)})
        for split in "AB":
            sd = noise(n)
            t = make_table(n, split, lambda s, i: base[f"{s}{i}"] + rng.normal(0, sd) + (8.0 if s == split and n < 10 else 0.0),
                           lambda s, i: base.get(f"{s}{i}", 10.0), 5, lambda i: base[f"T{i}"] + rng.normal(0, sd))
            path = gen.table_path(tmp_path, seed, n, split)
            path.parent.mkdir(parents=True, exist_ok=True)
            t.to_parquet(path)


def test_compare_from_params_writes_headline_details_and_csv(tmp_path):
    ns = [1, 10, 100]
    write_tables(tmp_path, ns, lambda n: 1.0 / n)
    cfg = {"name": "unit", "split": {"N": ns}, "seeds": [0]}
    metrics, details, csv = tmp_path / "m", tmp_path / "d.json", tmp_path / "m.csv"
    out = gen.compare_from_params(cfg, tmp_path, metrics, details, csv)
    data = json.loads(details.read_text(), parse_constant=lambda c: pytest.fail(f"{c} in JSON"))
    assert data["by_N"].keys() == out["by_N"].keys()
    assert data["dataset"] == "field" and data["scale"] == "unit"
    assert data["by_N"]["1"]["pearson_r"] is None
    assert data["by_N"]["1"]["rms_db"] > 5 and data["by_N"]["100"]["rms_db"] < 0.1
    assert data["by_N"]["100"]["pearson_r"] > 0.99
    table = pd.read_csv(csv)
    assert list(table["N"]) == ns and "rms_db" in table
    # the headline numbers: a folder per N, one file per quantity named with its unit, the
    # details' values (one replicate: n = 1, no standard error)
    assert sorted(f.name for f in metrics.iterdir()) == ["N1", "N10", "N100"]
    for n in ns:
        lean = load_json_tree(metrics / f"N{n}")
        full = data["by_N"][str(n)]
        assert lean == {"pearson_r": {"value": full["pearson_r"], "n": 1},
                        "rms_A_minus_B_db_per_dim": {"value": full["rms_db"], "n": 1},
                        "mean_A_minus_B_db_per_dim": {"value": full["mean_db"], "n": 1},
                        "bias_db_per_dim": {"value": full["exact_mean_err_db"], "n": 1}}
    check_headline_dir(metrics)
    # a rerun replaces the directory whole (an N dropped from split.N leaves no file behind)
    gen.compare_from_params({**cfg, "split": {"N": [10, 100]}}, tmp_path, metrics, details)
    assert sorted(f.name for f in metrics.iterdir()) == ["N10", "N100"]
    assert not [f for f in tmp_path.iterdir() if f.name.startswith(".m.")]


def test_headline_of_replicates_is_their_mean_and_standard_error():
    by_n = {"10": {"n_seeds": 3, "pearson_r": 0.9, "pearson_r_sd": 0.03, "rms_db": 1.0, "rms_db_sd": 0.3,
                   "mean_db": 0.1, "mean_db_sd": 0.06, "exact_mean_err_db": -0.2, "exact_mean_err_db_sd": 0.12}}
    h = gen.headline(by_n)["N10"]
    assert h["bias_db_per_dim"] == Metric(-0.2, se=0.12 / math.sqrt(3), n=3)
    assert h["rms_A_minus_B_db_per_dim"].as_json() == {"value": 1.0, "se": pytest.approx(0.3 / math.sqrt(3)), "n": 3}


def check_headline_file(path):
    """A DVC metrics file (dsm.headline): one quantity, its file name ending with a unit, its
    keys among value, se, ci95_lo, ci95_hi, n (value always), numbers or null, no strings
    or lists (DVC would show strings as columns and drop lists)."""
    from dsm.headline import KEYS
    from dsm.pipeline.report import metric_unit

    path = Path(path)
    assert metric_unit(path.stem) is not None, f"{path}: the file name names no unit"
    values = json.loads(path.read_text())
    assert "value" in values and set(values) <= set(KEYS), (path, sorted(values))
    for key, v in values.items():
        assert v is None or (isinstance(v, (int, float)) and not isinstance(v, bool)), (path, key, v)
    assert values.get("n") is None or isinstance(values["n"], int), path


def check_headline_dir(path) -> list[Path]:
    """Every file of a headline directory (folders are rows of a table) passes
    :func:`check_headline_file`; returns the files."""
    files = sorted(Path(path).rglob("*.json"))
    assert files, path
    for f in files:
        check_headline_file(f)
    return files


def test_headline_without_exact_density_has_no_bias():
    by_n = {"10": {"n_seeds": 1, "pearson_r": 0.5, "rms_db": 1.0, "mean_db": 0.1, "n_images": 20}}
    assert gen.headline(by_n) == {"N10": {"pearson_r": Metric(0.5, n=1), "rms_A_minus_B_db_per_dim": Metric(1.0, n=1),
                                          "mean_A_minus_B_db_per_dim": Metric(0.1, n=1)}}


def test_replicates_are_aggregated_mean_and_sd(tmp_path):
    """Two replicates: every metric is the mean of the per-seed values, _sd their standard
    deviation (ddof 1), and the largest per-model error magnitude is reported."""
    ns = [10, 100]
    for seed in (0, 1):
        write_tables(tmp_path, ns, lambda n: 1.0 / n, seed=seed)
    by_n, by_seed = gen.compare(tmp_path, ns, seeds=[0, 1])
    for n in ("10", "100"):
        per = [by_seed[s][n]["rms_db"] for s in ("0", "1")]
        assert by_n[n]["rms_db"] == pytest.approx(np.mean(per))
        assert by_n[n]["rms_db_sd"] == pytest.approx(np.std(per, ddof=1))
        models = [by_seed[s][n][f"exact_mean_err_db_{x}"] for s in ("0", "1") for x in "AB"]
        assert by_n[n]["exact_mean_err_db_max_abs"] == pytest.approx(max(abs(v) for v in models))
        assert by_n[n]["n_seeds"] == 2
    one, _ = gen.compare(tmp_path, ns, seeds=[1])
    assert one["100"]["rms_db_sd"] == 0.0 and one["100"]["rms_db"] == by_seed["1"]["100"]["rms_db"]


def test_compare_missing_table_names_the_file(tmp_path):
    with pytest.raises(DsmError, match="N7-A.parquet"):
        gen.compare(tmp_path, [7])


def test_fig2_pdf(tmp_path):
    ns = [1, 10, 100]
    write_tables(tmp_path, ns, lambda n: 1.0 / n)
    cfg = {"name": "unit", "split": {"N": ns}, "seeds": [0],
           "figures": {"fig2": {"max_points": 50, "lim": None}}}
    gen.compare_from_params(cfg, tmp_path, tmp_path / "m", tmp_path / "d.json")
    out = tmp_path / "fig" / "fig2.pdf"
    fig2.fig2_from_params(cfg, tmp_path, tmp_path / "d.json", out)
    assert out.read_bytes()[:5] == b"%PDF-"
    assert not list(out.parent.glob(".*tmp*"))
    pairs = fig2.load_pairs(tmp_path, 0, [100], 50)
    assert (pairs[100]["image_set"].value_counts() == 50).all()  # at most max_points per set


def test_fig2_rejects_unknown_keys(tmp_path):
    with pytest.raises(DsmError, match=r"figures\.fig2\.colour"):
        fig2.fig2_params({"figures": {"fig2": {"colour": "red"}}})


def test_examples_evenly_spaced_reproducible():
    from dsm.analysis.examples import select_examples

    rng = np.random.default_rng(0)
    values = rng.gumbel(10, 3, 500)
    table = pd.DataFrame({"image_id": [f"i{k:04d}" for k in range(500)], "image_index": np.arange(500),
                          "logp_db_per_dim": values})
    rows = select_examples(table, 5)
    lo, hi = np.quantile(values, [0.01, 0.99])
    assert list(rows["logp_db_per_dim"]) == sorted(rows["logp_db_per_dim"])
    assert rows["image_id"].is_unique and len(rows) == 5
    for got, target in zip(rows["logp_db_per_dim"], np.linspace(lo, hi, 5)):
        assert abs(got - target) == pytest.approx(np.min(np.abs(values - target)))
    shuffled = table.sample(frac=1.0, random_state=1)
    assert list(select_examples(shuffled, 5)["image_id"]) == list(rows["image_id"])
    with pytest.raises(DsmError, match="only 3 finite"):
        select_examples(table.head(3), 5)


def test_fig2_points_beyond_fixed_axes_are_drawn_on_the_border_and_counted():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots()
    k = fig2._scatter(ax, [0.5, 2.0, -1.0], [0.5, 0.5, -3.0], (0.0, 1.0), s=2.0, c="C0", label="x")
    assert k == 2
    inside, beyond = ax.collections
    assert inside.get_offsets().tolist() == [[0.5, 0.5]]
    assert beyond.get_offsets().tolist() == [[1.0, 0.5], [0.0, 0.0]]
    assert fig2._scatter(ax, [5.0], [5.0], None, s=2.0, c="C0", label="y") == 0   # limits from the data
    assert "2 off the axes" in fig2._beyond(2) and fig2._beyond(0) == ""
    plt.close(fig)


# --- the headline files' writer (dsm.headline) ------------------------------------------

def test_metrics_dir_is_one_small_vocabulary(tmp_path):
    """write_metrics_dir: one file per quantity with only the keys given (NaN as null), a
    dict of them a folder (a row); the directory is replaced whole."""
    out = tmp_path / "m"
    write_metrics_dir(out, {"loc_db_per_dim": Metric(4.5, ci95=(4.25, 4.75), n=100),
                            "N10": {"pearson_r": Metric(0.5, se=float("nan"), n=3)}})
    assert json.loads((out / "loc_db_per_dim.json").read_text()) == {
        "value": 4.5, "ci95_lo": 4.25, "ci95_hi": 4.75, "n": 100}
    assert json.loads((out / "N10/pearson_r.json").read_text()) == {"value": 0.5, "se": None, "n": 3}
    assert {str(f.relative_to(out)) for f in check_headline_dir(out)} == {"loc_db_per_dim.json",
                                                                          "N10/pearson_r.json"}
    write_metrics_dir(out, {"scale_db_per_dim": Metric(np.float64(1.5))})
    assert [f.name for f in out.iterdir()] == ["scale_db_per_dim.json"]
    assert json.loads((out / "scale_db_per_dim.json").read_text()) == {"value": 1.5}
    with pytest.raises(TypeError, match="loc"):
        write_metrics_dir(out, {"loc": 4.5})
    assert [f.name for f in out.iterdir()] == ["scale_db_per_dim.json"]     # untouched
