"""`dsm summary`: the README's results tables rendered from a run's outputs.

* formatting against hand-computed numbers; markers and their errors; missing inputs;
* on the smoke run of tests/conftest.py (``smoke_all``), every table rendered and each
  number checked against the file it comes from, to the precision it is printed with;
* the README's and docs/results.md's committed tables have the structure ``dsm summary``
  renders (names, header rows, column layout); their numbers come from a default run and
  are compared only when such a run's outputs, at the commit the tables state, are present.
"""

from __future__ import annotations

import json
import math
import re
import shutil
from pathlib import Path

import pandas as pd
import pytest

from dsm import summary
from dsm.cli import main
from dsm.errors import DsmError
from test_pipeline_util import REPO

SCALE = "smoke"
DOCUMENTS = [REPO / "README.md", REPO / "docs/results.md"]


# --- reading rendered tables ---------------------------------------------------------------

def cells(line: str) -> list[str]:
    """The cells of a Markdown table row (escaped pipes stay in their cell)."""
    return [c.strip().replace("\\|", "|") for c in re.split(r"(?<!\\)\|", line.strip())[1:-1]]


def table_lines(block: str) -> list[str]:
    return [ln for ln in block.splitlines() if ln.startswith("|")]


def rows(block: str) -> list[dict]:
    """The body rows of the rendered table as {header: cell}."""
    lines = table_lines(block)
    header = cells(lines[0])
    return [dict(zip(header, cells(ln))) for ln in lines[2:]]


NUMBER = re.compile(r"[+−-]?\d[\d,]*(?:\.\d+)?(?:e[+−-]?\d+)?")


def numbers(text: str) -> list[tuple[float, float]]:
    """Every number of a cell with the rounding it was printed with (half its last digit)."""
    out = []
    for m in NUMBER.finditer(text):
        s = m.group(0).replace("−", "-").replace(",", "")
        mant = s.split("e")[0]
        decimals = len(mant.split(".")[1]) if "." in mant else 0
        exp = int(s.split("e")[1]) if "e" in s else 0
        out.append((float(s), 0.5 * 10.0 ** (exp - decimals) * (1 + 1e-9)))
    return out


def close(text: str, *values, index: int = 0) -> None:
    """The numbers of ``text`` from ``index`` on equal ``values`` to their printed precision."""
    found = numbers(text)[index:]
    assert len(found) >= len(values), (text, values)
    for (x, tol), v in zip(found, values):
        assert abs(x - v) <= tol + 1e-12, f"{text!r}: {x} is not {v} (to ±{tol})"


# --- formatting ------------------------------------------------------------------------------

def test_spread_decides_the_decimals():
    assert summary.decimals_for(0.12) == 2 and summary.decimals_for(0.04) == 2
    assert summary.decimals_for(0.0021) == 4 and summary.decimals_for(3.0) == 0
    assert summary.pm(0.2167, 0.1234) == "0.22 ± 0.12"
    assert summary.pm(-0.127, 0.008, plus=True) == "−0.127 ± 0.008"
    assert summary.pm(0.045, 0.0021) == "0.0450 ± 0.0021"
    assert summary.pm(6.0381, 0.0) == "6.04"                     # no spread: 3 significant digits
    assert summary.pm(0.0, 2e-7, plus=True, max_decimals=3) == "+0.000 ± 2e−7"
    assert summary.pm(float("nan"), 0.1) == "–" and summary.pm(None, 0.1) == "–"


def test_significant_digits_intervals_and_counts():
    assert summary.sig(158.3) == "158" and summary.sig(0.13271) == "0.133"
    assert summary.sig(-7.634) == "−7.63" and summary.sig(0.01, plus=True) == "+0.0100"
    assert summary.interval(4.9, 4.81, 5.0) == "4.90 [4.81, 5.00]"
    assert summary.count(100000) == "100,000"
    assert summary.sci(1e-9) == "1e−9" and summary.sci(0.46) == "0.46" and summary.sci(1000) == "1e3"
    assert summary.span([336.2, 393.9]) == "336–394" and summary.span([5.44]) == "5.4"


def test_fisher_interval_closed_form():
    lo, hi = summary.fisher_ci(0.0, 1000)
    half = math.tanh(1.959964 / math.sqrt(997))
    assert lo == pytest.approx(-half) and hi == pytest.approx(half)
    lo, hi = summary.fisher_ci(0.5, 28)
    assert math.atanh(hi) - math.atanh(0.5) == pytest.approx(1.959964 / 5)
    assert summary.fisher_ci(0.5, 3) is None


def test_commit_of_a_code_version():
    assert summary.commit_of("dsm 0.1.0 (3166aff30204)") == "3166aff30204"
    assert summary.commit_of("dsm 0.1.0 (3166aff30204-dirty)") == "3166aff30204-dirty"
    assert summary.commit_of("dsm 0.1.0") == "dsm 0.1.0"


# --- markers ----------------------------------------------------------------------------------

def test_marked_blocks_and_their_errors():
    text = "a\n<!-- summary:bias -->\nold\n<!-- /summary:bias -->\nb\n"
    ((name, start, end),) = summary.marked_blocks(text)
    assert name == "bias" and text[start:end] == "\nold\n"
    with pytest.raises(DsmError, match=r"README.md:2: unknown summary table 'nope' in marker <!-- summary:nope -->"):
        summary.marked_blocks("x\n<!-- summary:nope -->\n<!-- /summary:nope -->\n", "README.md")
    text = "<!-- summary:table2@natural -->\nold\n<!-- /summary:table2@natural -->\n"
    ((name, start, end),) = summary.marked_blocks(text)
    assert summary.split_name(name) == ("table2", "natural") and summary.split_name("bias") == ("bias", None)
    with pytest.raises(DsmError, match="unknown summary table 'nope@natural'"):
        summary.marked_blocks("<!-- summary:nope@natural -->\n<!-- /summary:nope@natural -->\n")
    with pytest.raises(DsmError, match="is not closed"):
        summary.marked_blocks("<!-- summary:bias -->\n")
    with pytest.raises(DsmError, match="without its"):
        summary.marked_blocks("<!-- /summary:bias -->\n")
    with pytest.raises(DsmError, match="inside the block"):
        summary.marked_blocks("<!-- summary:bias -->\n<!-- summary:fig1 -->\n")


def test_missing_inputs_render_as_one_line_naming_the_output_and_its_command(tmp_path):
    line = summary.render("bias", tmp_path, "default")
    assert line.count("\n") == 0
    assert "`results/default/bias.json` is missing" in line
    assert "`snakemake --cores 2 results/default/bias.json --config scale=default` (stage `bias`)" in line
    line = summary.render("cost", tmp_path, "default")
    assert "`benchmarks/default` is missing" in line and "snakemake --cores 2 all" in line
    with pytest.raises(DsmError, match="unknown summary table 'x'"):
        summary.render("x", tmp_path, "default")


def test_update_writes_nothing_when_one_document_is_bad(tmp_path, capsys):
    good, bad = tmp_path / "good.md", tmp_path / "bad.md"
    good.write_text("<!-- summary:bias -->\nold\n<!-- /summary:bias -->\n")
    bad.write_text("<!-- summary:fig9 -->\n<!-- /summary:fig9 -->\n")
    before = good.read_text()
    assert main(["summary", "--root", str(REPO), "--scale", "default", "--update", str(good), str(bad)]) == 2
    assert good.read_text() == before
    assert "summary:fig9" in capsys.readouterr().err
    none = tmp_path / "none.md"
    none.write_text("no markers\n")
    assert main(["summary", "--root", str(REPO), "--scale", "default", "--update", str(none)]) == 2
    assert main(["summary", "--root", str(REPO), "--table", "nope"]) == 2


def test_a_corrupt_input_is_a_one_line_error_naming_it(tmp_path, capsys):
    bias = tmp_path / "results/default/bias.json"
    bias.parent.mkdir(parents=True)
    bias.write_text("{not json")
    assert main(["summary", "--root", str(REPO), "--scale", "default", "--table", "fig1"]) == 0
    capsys.readouterr()
    (tmp_path / "params.yaml").write_text((REPO / "params.yaml").read_text())
    assert main(["summary", "--root", str(tmp_path), "--scale", "default", "--table", "bias"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "results/default/bias.json: not valid JSON" in err
    tsv = tmp_path / "benchmarks/default/prepare.tsv"
    tsv.parent.mkdir(parents=True)
    tsv.write_text("s\tcpu\n1.0\t2.0\n")
    assert main(["summary", "--root", str(tmp_path), "--scale", "default", "--table", "cost"]) == 2
    assert "prepare.tsv: column cpu_time missing" in capsys.readouterr().err


# --- the smoke run: every table against its sources -------------------------------------------

@pytest.fixture(scope="module")
def run(smoke_all):
    return smoke_all


@pytest.fixture(scope="module")
def rendered(run):
    out = {name: summary.render(name, run, SCALE) for name in summary.TABLES}
    for name, text in out.items():
        assert not text.startswith("*Not rendered"), (name, text)
    return out


def load(run, rel):
    return json.loads((run / rel.format(scale=SCALE)).read_text())


def test_every_table_states_scale_seeds_commit_and_machine(run, rendered):
    import torch

    details = load(run, "results/{scale}/fig2_details.json")
    commit = summary.commit_of(details["code_version"])
    for name, text in rendered.items():
        line = text.splitlines()[-1]
        assert line.startswith("<sub>") and f"scale `{SCALE}`" in line, (name, line)
        assert f"commit {commit}" in line and "logical CPUs" in line, (name, line)
        if name not in ("cost", "cost-details"):
            assert "seed" in line, (name, line)
    assert f"torch {torch.__version__}" in rendered["bias"] and "1 thread" in rendered["bias"]
    assert "replicate seeds 0" in rendered["fig2"]


def test_fig1(run, rendered):
    d = load(run, "results/{scale}/fig1/details.json")
    (row,) = rows(rendered["fig1"])
    assert row["seed"] == str(d["params"]["seed"])
    close(row["dual score matching"], d["dsm"]["max_abs"])
    close(row["single score matching"], d["ssm"]["max_abs"])
    close(row["single, after its best constant shift"], d["ssm"]["max_abs_shifted"])
    dual, single = rows(rendered["fig1-details"])
    for row, m in ((dual, d["dsm"]), (single, d["ssm"])):
        close(row["RMS"], m["rms"])
        close(row["RMS after the mean shift"], m["rms_shifted"])


def test_fig2(run, rendered):
    d = load(run, "results/{scale}/fig2_details.json")
    table = rows(rendered["fig2"])
    assert [int(r["N"].replace(",", "")) for r in table] == sorted(int(n) for n in d["by_N"])
    for r in table:
        m = d["by_N"][r["N"].replace(",", "")]
        assert r["replicates"] == str(m["n_seeds"])
        close(r["RMS log p_A − log p_B"], m["rms_db"])
        if m["pearson_r"] is None:
            assert r["Pearson r"] == "–"
        else:
            close(r["Pearson r"], m["pearson_r"])
        a, b = r["error, model A / B"].split(" / ")
        close(a, m["exact_mean_err_db_A"])
        close(b, m["exact_mean_err_db_B"])
        close(r["largest |error|"], m["exact_mean_err_db_max_abs"])
    for r in rows(rendered["fig2-replicates"]):
        m = d["by_seed"][r["seed"]][r["N"].replace(",", "")]
        close(r["RMS A − B"], m["rms_db"])
        close(r["error, model A"], m["exact_mean_err_db_A"])
        close(r["error, model B"], m["exact_mean_err_db_B"])


def test_bias(run, rendered):
    d = load(run, "results/{scale}/bias.json")
    table = {r["quantity"].removesuffix(", dB/dim"): r["value"] for r in rows(rendered["bias"])}
    terms = {f"normalization at T = {d['t_norm']:g}": "norm_err", "time score, T → 0": "time_total",
             "space score, T → 0": "space_total", "predicted (the sum)": "predicted_err",
             "measured at t = 0": "direct_err"}
    assert list(table)[:len(terms)] == list(terms)
    extra = list(table)[len(terms):]            # the κ and normalization checks (next test)
    assert all(q.startswith(("κ(t) of the time score", "spread of c read at")) for q in extra), extra
    for label, key in terms.items():
        close(table[label], d[key + "_db"], d[key + "_se_db"])
    assert f"T = {d['t_norm']:g}" in rendered["bias"]


def test_bias_gains_the_kappa_and_normalization_checks_when_present(run, tmp_path):
    """The rows that other outputs add (bias.json ``kappa_check``; norm.json ``check``)."""
    root = tmp_path / "r"
    for rel in ("results/{scale}/bias.json", "results/{scale}/full/norm.json", "models/{scale}/full/model.pt"):
        (root / rel.format(scale=SCALE)).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(run / rel.format(scale=SCALE), root / rel.format(scale=SCALE))
    bias = load(root, "results/{scale}/bias.json")
    bias["kappa_check"] = {"min": 0.912, "max": 1.034, "from_t": 0.1, "to_t": 10.0, "n_levels": 3}
    (root / f"results/{SCALE}/bias.json").write_text(json.dumps(bias))
    norm = load(root, "results/{scale}/full/norm.json")
    norm["check"] = [{"t": t, "c_nats": c, "c_sem_nats": 0.1, "c_db_per_dim": 0.0}
                     for t, c in ((0.01, 150.0), (0.1, 150.2), (1.0, 150.5))]
    norm["check_spread_db_per_dim"] = 0.034
    (root / f"results/{SCALE}/full/norm.json").write_text(json.dumps(norm))
    table = rows(summary.render("bias", root, SCALE))
    assert table[-2]["quantity"].startswith("κ(t) of the time score over t ∈ [0.1, 10]")
    close(table[-2]["value"], 0.912, 1.03)
    assert table[-1]["quantity"].startswith("spread of c read at 3 levels T ∈ [0.01, 1]")
    close(table[-1]["value"], 0.034)


def test_a_result_of_a_replaced_model_is_marked_stale(run, tmp_path):
    root = tmp_path / "r"
    for rel, src in (("results/{scale}/bias.json", None), ("models/{scale}/full/model.pt",
                                                          "models/{scale}/full-score/model.pt")):
        dest = root / rel.format(scale=SCALE)
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(run / (src or rel).format(scale=SCALE), dest)
    text = summary.render("bias", root, SCALE)
    sha = load(run, "results/{scale}/bias.json")["model_sha256"][:12]
    assert f"**stale**: computed from model {sha}" in text
    assert "stale" not in summary.render("bias", run, SCALE)


def test_gumbel(run, rendered):
    d = load(run, "results/{scale}/full/gumbel-details.json")
    (row,) = rows(rendered["gumbel"])
    assert row["test images"] == summary.count(d["n_images"])
    close(row["Gumbel location"], d["gumbel_r"]["loc"], *d["gumbel_r"]["loc_ci95"])
    close(row["Gumbel scale"], d["gumbel_r"]["scale"], *d["gumbel_r"]["scale_ci95"])
    close(row["mean log p"], d["sample"]["mean"], *d["sample"]["mean_ci95"])
    df = pd.read_parquet(run / f"results/{SCALE}/full/logp-test.parquet")
    err = df["logp_db_per_dim"] - df["exact_logp_db_per_dim"]
    close(row["error, model − exact"], err.mean(), err.std() / math.sqrt(len(err)))
    assert row["best family by AIC"].startswith(summary.FAMILIES[d["best_by_aic"]])
    assert "model " + d["provenance"]["checkpoint_sha256"][:12] in rendered["gumbel"]


def test_table2(run, rendered):
    df = pd.read_csv(run / f"results/{SCALE}/table2.csv")
    applies = df[df["applies"].astype(str) == "True"]
    table = rows(rendered["table2"])
    assert [r["quantity"] for r in table] == [summary.TABLE2_LABELS[k] for k in applies["key"]]
    for r, (_, src) in zip(table, applies.iterrows()):
        close(r["bits/dim"], src["bits_per_dim"], src["se_bits_per_dim"])
        close(r["nats/dim"], src["nats_per_dim"], src["se_nats_per_dim"])


def test_table1(run, rendered):
    d = load(run, "results/{scale}/table1.json")
    table, details = rows(rendered["table1"]), rows(rendered["table1-details"])
    assert len(table) == len(details) == len(d["by_psnr"])
    for r, r2, src in zip(table, details, d["by_psnr"]):
        close(r["input PSNR"], src["input_psnr_db"])
        assert r["t trained"] == ("yes" if src["in_training_range"] else "no")
        close(r["energy (y − t∇U)"], src["energy"]["psnr_db"])
        close(r["score (y − t s)"], src["score"]["psnr_db"])
        close(r["optimal (exact)"], src["optimal"]["psnr_db"])
        close(r["energy − score"], src["energy_minus_score"]["diff_db"])
        close(r2["t"], src["t"])
        close(r2["optimal − energy"], src["gap_to_optimal_db"]["energy"])
        if src["energy_minus_score"]["z"] is not None:
            close(r2["z"], src["energy_minus_score"]["z"])


def test_fig45(run, rendered):
    f4 = load(run, "results/{scale}/fig4/details.json")
    f5 = load(run, "results/{scale}/fig5/details.json")
    sparsity, d_eff, grid = rows(rendered["fig45"])
    sp = f4["sparsity"]
    lo, hi = summary.fisher_ci(sp["model"]["pearson_r"], sp["model"]["n"])
    close(sparsity["model"], sp["model"]["pearson_r"], lo, hi)
    close(sparsity["exact density"], sp["exact"]["pearson_r"])
    g = f5["model_consistency"]["largest_disagreement"]
    close(d_eff["model"], abs(g["gap"]), g["gap_se"])
    assert f"dimensions of {f5['d']}" in d_eff["quantity"]
    close(grid["model"], f4["grid_model_minus_exact_db"]["max_abs"])


def test_estimators(run, rendered):
    df = pd.read_csv(run / f"results/{SCALE}/estimators.csv")
    df = df[~((df["density"] == "exact") & (df["estimator"] == "one-shot"))]
    table, details = rows(rendered["estimators"]), rows(rendered["estimators-details"])
    assert len(table) == len(details) == len(df)
    for r, r2, (_, src) in zip(table, details, df.iterrows()):
        assert r["density"] == src["density"]
        assert r["estimator"] == summary.ESTIMATOR_NAMES[src["estimator"]]
        close(r["bias"], src["bias_db_per_dim"], src["bias_se_db_per_dim"])
        close(r["NFE / image"], src["nfe_per_image"])
        if src["density"] == "model":
            close(r["one-shot faster (CPU)"], src["one_shot_speedup_cpu"])
            close(r2["one-shot faster (wall / CPU)"], src["one_shot_speedup"], src["one_shot_speedup_cpu"])
        close(r2["sd over repeats"], src["sd_repeats_db_per_dim"])


def test_cost(run, rendered):
    per_stage: dict[str, list] = {}
    for f in sorted((run / f"benchmarks/{SCALE}").rglob("*.tsv")):
        stage = f.relative_to(run / f"benchmarks/{SCALE}").parts[0].removesuffix(".tsv")
        per_stage.setdefault(stage, []).append(pd.read_csv(f, sep="\t").iloc[0])
    (row,) = rows(rendered["cost"])
    total = sum(r["cpu_time"] for recs in per_stage.values() for r in recs)
    assert row["benchmarked jobs"] == str(sum(map(len, per_stage.values())))
    close(row["CPU s, all jobs"], total)
    details = rows(rendered["cost-details"])
    assert {r["stage"] for r in details} == set(per_stage) >= {"train", "prepare", "fig1"}
    for r in details:
        recs = per_stage[r["stage"]]
        assert r["jobs"] == str(len(recs))
        close(r["CPU s, all jobs"], sum(x["cpu_time"] for x in recs))
        cpu = sorted(x["cpu_time"] for x in recs)
        close(r["CPU s per job"], cpu[0], *([cpu[-1]] if "–" in r["CPU s per job"] else []))


def test_update_replaces_only_the_marked_blocks(run, tmp_path):
    doc = tmp_path / "doc.md"
    doc.write_text("# t\n\n<!-- summary:fig1 -->\nold\n<!-- /summary:fig1 -->\n\ntext\n")
    assert main(["summary", "--root", str(run), "--scale", SCALE, "--update", str(doc)]) == 0
    text = doc.read_text()
    assert text.startswith("# t\n\n<!-- summary:fig1 -->\n| seed |") and text.endswith(
        "<!-- /summary:fig1 -->\n\ntext\n")
    assert "old" not in text
    once = text
    assert main(["summary", "--root", str(run), "--scale", SCALE, "--update", str(doc)]) == 0
    assert doc.read_text() == once


# --- the documents' committed tables ------------------------------------------------------------

def blocks_of(path: Path) -> dict[str, str]:
    text = path.read_text()
    return {name: text[a:b] for name, a, b in summary.marked_blocks(text, str(path))}


def structure(block: str) -> tuple:
    lines = table_lines(block)
    assert len(lines) >= 3, block
    width = len(cells(lines[0]))
    assert all(len(cells(ln)) == width for ln in lines), block
    return cells(lines[0]), lines[1]


def test_the_documents_hold_every_table_once():
    """Every table of the default scale once (tables of other scales, NAME@SCALE, besides)."""
    names = [n for doc in DOCUMENTS for n in blocks_of(doc) if summary.split_name(n)[1] is None]
    assert sorted(names) == sorted(summary.TABLES)


def test_committed_tables_have_the_rendered_structure(rendered):
    for doc in DOCUMENTS:
        for name, block in blocks_of(doc).items():
            if summary.split_name(name)[1] is not None:
                continue            # another scale's table: its rows differ (peers, no exact density)
            assert structure(block) == structure(rendered[name]), f"{doc.name}: table {name}"
            assert block.strip().splitlines()[-1].startswith("<sub>"), f"{doc.name}: table {name}"


def test_committed_numbers_equal_a_default_run_at_the_stated_commit():
    """Only where a default run's outputs are present, at the commit the tables state."""
    details = REPO / "results/default/fig2_details.json"
    if not details.is_file():
        pytest.skip("no default run here (results/default/); the tables' numbers are not checked")
    commit = summary.commit_of(json.loads(details.read_text()).get("code_version", ""))
    for doc in DOCUMENTS:
        for name, block in blocks_of(doc).items():
            if summary.split_name(name)[1] is not None:
                continue
            if f"commit {commit}" not in block:
                pytest.skip(f"{doc.name}: table {name} states another commit than the run here ({commit})")
            fresh = summary.render(name, REPO, "default")
            assert table_lines(block) == table_lines(fresh), f"{doc.name}: table {name}"
