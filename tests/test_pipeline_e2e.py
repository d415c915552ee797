"""The smoke scale end to end, with Snakemake and with DVC, and the Snakemake <-> DVC
round trip: run with Snakemake, adopt into dvc.lock (`dsm sync dvc`), push to a local
remote, git clone, dvc pull, re-sync Snakemake (`dsm sync snakemake`), and Snakemake
plans no training job. Each test works in its own copy of the working tree.
"""

from __future__ import annotations

import json
import shutil
import subprocess

import pandas as pd
import pytest

from dsm.pipeline.report import load_json_tree
from test_pipeline_util import (copy_repo, dvc, edit_param, git_commit, load_params,
                                planned_jobs, run, snakemake, tool)

pytestmark = pytest.mark.slow

SCALE = "smoke"


def outputs_of(repo):
    """Every pipeline output present in ``repo`` (files; directories as themselves)."""
    found = set()
    for top in ("data", "models", "results", "figures"):
        for p in (repo / top).rglob("*") if (repo / top).exists() else []:
            rel = str(p.relative_to(repo))
            # .snakemake_timestamp: Snakemake's mark in a directory output (DVC ignores it)
            if (p.name in (".gitignore", ".snakemake_timestamp") or "/checkpoints" in rel
                    or "/fig1/ssm" in rel or "/fig1/dsm" in rel):
                continue
            if rel.startswith(f"data/{SCALE}/images/"):
                continue
            if p.is_file() or rel == f"data/{SCALE}/images":
                found.add(rel)
    return found


def check_results(repo):
    ns = load_params(repo)["scales"][SCALE]["split"]["N"]
    pdf = repo / "figures/fig2.pdf"
    assert pdf.read_bytes()[:5] == b"%PDF-"
    metrics = json.loads((repo / f"results/{SCALE}/fig2_details.json").read_text())
    assert sorted(int(n) for n in metrics["by_N"]) == sorted(ns)
    for n in ns:
        m = metrics["by_N"][str(n)]
        assert m["n_images"] == 2 * min(n, load_params(repo)["scales"][SCALE]["evaluate"]["max_per_set"])
        assert m["rms_db"] >= 0 and "exact_rms_err_db" in m  # field: exact log p known
        lean = load_json_tree(repo / f"results/{SCALE}/fig2_metrics/N{n}")
        assert lean["rms_A_minus_B_db_per_dim"]["value"] == m["rms_db"]
        assert lean["bias_db_per_dim"]["value"] == m["exact_mean_err_db"]
    table = pd.read_parquet(repo / f"results/{SCALE}/logp/seed0/N{ns[-1]}-A.parquet")
    assert set(table["image_set"]) == {"A", "B", "test"}
    for col in ("image_id", "dataset", "N", "model_split", "t", "energy_nats", "logp_db_per_dim",
                "nll_bits_per_dim", "norm_const_nats", "checkpoint_sha256", "params_sha256",
                "code_version", "exact_logp_db_per_dim"):
        assert col in table.columns, col


@pytest.fixture(scope="module")
def snakemake_run(smoke_all):
    """A git repo at the smoke scale where `snakemake all` ran (tests/conftest.py)."""
    return smoke_all


def test_snakemake_end_to_end(snakemake_run):
    check_results(snakemake_run)
    assert (snakemake_run / "figures/fig1.pdf").read_bytes()[:5] == b"%PDF-"
    logs = list((snakemake_run / "logs").rglob("*.log"))
    assert len(logs) >= 10
    assert list((snakemake_run / f"benchmarks/{SCALE}/train").rglob("*.tsv"))
    # every job wrote its benchmark file, so `dsm cost` (what `make figures` ends with) is complete
    from dsm.pipeline.cost import read_jobs
    from dsm.pipeline.stages import STAGES

    assert {j.stage for j in read_jobs(snakemake_run, SCALE)} == set(STAGES)
    cost = run([tool("dsm"), "cost"], snakemake_run).stdout
    assert cost.startswith(f"Cost of the {SCALE} scale: ") and "slowest jobs: " in cost


def test_snakemake_builds_table1_and_figures_4_5_1(snakemake_run):
    """Across noise levels (docs/results.md): Table 1, Figures 4 and 5 and Figure 1's third panel
    come out of `snakemake all` with the numbers docs/results.md quotes."""
    repo, res = snakemake_run, snakemake_run / f"results/{SCALE}"
    cfg = load_params(repo)["scales"][SCALE]["figures"]
    for name in ("fig1", "fig4", "fig5"):
        assert (repo / f"figures/{name}.pdf").read_bytes()[:5] == b"%PDF-"
    t1 = json.loads((res / "table1.json").read_text())
    assert [e["input_psnr_db"] for e in t1["by_psnr"]] == [float(p) for p in cfg["table1"]["psnr"]]
    for e in t1["by_psnr"]:
        assert {"energy", "score", "optimal", "energy_minus_score"} <= set(e)     # field: optimal row
        # no denoiser beats the optimal one (beyond its standard error)
        for name in ("energy", "score"):
            assert e[name]["psnr_db"] <= e["optimal"]["psnr_db"] + 3 * e["optimal"]["se_db"] + 1e-6
        assert e["energy_minus_score"]["se_db"] >= 0
    assert isinstance(t1["claim"]["holds"], bool)
    assert (res / "table1.md").read_text().count("\n") == 6 and (res / "table1.tex").read_text().startswith("\\begin")
    assert len(pd.read_csv(res / "table1.csv")) == 3 * len(cfg["table1"]["psnr"])
    f5 = json.loads((res / "fig5/details.json").read_text())
    worst = f5["model_consistency"]["largest_disagreement"]
    assert {"gap", "gap_se", "t", "curve"} <= set(worst)
    assert f5["exact_consistency"]["fraction_of_points_agreeing_statistically"] >= 0.8
    curves = pd.read_parquet(res / "fig5/curves.parquet")
    n_ref = load_params(repo)["scales"][SCALE]["figures"]["examples"]["count"]
    assert len(curves) == (n_ref + 1) * cfg["fig5"]["points"]
    f4 = json.loads((res / "fig4/details.json").read_text())
    for who in ("model", "exact"):
        assert -1 <= f4["sparsity"][who]["pearson_r"] <= 1 and -1 <= f4["sparsity"][who]["spearman_rho"] <= 1
    affine = pd.read_parquet(res / "fig4/affine.parquet")
    g = cfg["fig4"]
    assert len(affine) == g["contrast_points"] * (g["brightness_points"] + n_ref)
    f1 = json.loads((res / "fig1/details.json").read_text())
    assert f1["landscape"]["barrier_direct_nats"] > f1["landscape"]["barrier_detour_nats"]


def test_snakemake_second_run_does_nothing(snakemake_run):
    assert planned_jobs(snakemake(["all", "--dry-run"], snakemake_run)) == {}


def report_results(html: str) -> dict:
    """The results a Snakemake report embeds: {path: {caption, data_uri, ...}}."""
    start = html.index('<script id="results">')
    body = html[start:html.index("</script>", start)]
    return json.loads(body.split("var results = ", 1)[1].strip().rstrip(";"))


def test_report_of_the_smoke_run(snakemake_run, tmp_path):
    """`snakemake --report report.html` after the run: one self-contained page with every
    figure of `rule all` and every output the stage table flags, each embedded byte for
    byte, in its category, with a caption that quotes the run's own headline numbers."""
    import base64

    from dsm.pipeline.stages import REPORT_CATEGORIES, STAGES, TARGETS

    out = tmp_path / "report.html"
    snakemake(["--report", str(out)], snakemake_run, timeout=300)
    html = out.read_text()
    results = report_results(html)
    shown = {s.outputs[r.output].replace("{scale}", SCALE): (s, r) for s in STAGES.values() for r in s.report}
    figures = [t.replace("figures/", f"figures/{SCALE}/") for t in TARGETS if t.startswith("figures/")]
    assert set(figures) <= set(results) and set(results) == set(shown)
    for path, (stage, r) in shown.items():
        entry = results[path]
        assert base64.b64decode(entry["data_uri"].split("base64,", 1)[1]) == (snakemake_run / path).read_bytes()
        assert entry["job_properties"]["rule"] == stage.name and entry["caption"], path
    assert "application/vnd.apache.parquet" in results[f"results/{SCALE}/full/logp-test.parquet"]["data_uri"][:60]
    cats = json.loads(html.split('<script id="categories">', 1)[1].split("var categories = ", 1)[1]
                      .split("</script>", 1)[0].strip().rstrip(";"))
    assert set(REPORT_CATEGORIES.values()) == set(cats)
    # the captions quote the numbers of this run
    ns = sorted(load_params(snakemake_run)["scales"][SCALE]["split"]["N"])
    last = {k: v["value"] for k, v in load_json_tree(snakemake_run / f"results/{SCALE}/fig2_metrics/N{ns[-1]}").items()}
    fig2 = " ".join(results[f"figures/{SCALE}/fig2.pdf"]["caption"].split())
    assert f"at N = {ns[-1]} the two models agree with Pearson r = {last['pearson_r']:.4f}" in fig2
    assert f"RMS difference of {last['rms_A_minus_B_db_per_dim']:.3g} dB/dim" in fig2
    fig1m = {k: v["value"] for k, v in load_json_tree(snakemake_run / f"results/{SCALE}/fig1/metrics").items()}
    fig1 = " ".join(results[f"figures/{SCALE}/fig1.pdf"]["caption"].split())
    assert f"{fig1m['dual_max_abs_err_db_per_dim']:.3g} dB/dim for dual score matching" in fig1
    assert f"results of the <tt class=\\\"docutils literal\\\">{SCALE}</tt> scale" in html
    # building the report changed nothing: Snakemake still plans no job
    assert planned_jobs(snakemake(["all", "--dry-run"], snakemake_run)) == {}


def test_no_output_is_visible_to_git(snakemake_run):
    status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=all"],
                            cwd=snakemake_run, capture_output=True, text=True, check=True).stdout
    leaked = [line for line in status.splitlines()
              if any(part in line for part in ("data/", "models/", "results/", "figures/", "logs/", "benchmarks/"))]
    assert not leaked, leaked


def test_sync_refuses_without_a_run(tmp_path):
    repo = copy_repo(tmp_path / "repo", scale=SCALE, git=True)
    for tool_name in ("dvc", "snakemake"):
        res = run([tool("dsm"), "sync", tool_name], repo, check=False)
        assert res.returncode == 2 and "outputs" in res.stderr, res.stderr


def content_hashes(repo) -> dict:
    """sha256 of every output file (the store directory's files included)."""
    import hashlib

    found = {}
    for top in ("data", "models", "results", "figures"):
        for p in sorted((repo / top).rglob("*")) if (repo / top).exists() else []:
            rel = str(p.relative_to(repo))
            # training logs (metrics.jsonl) hold timings; they are not outputs
            if (p.is_file() and p.name not in (".gitignore", "metrics.jsonl", ".snakemake_timestamp")
                    and "/checkpoints" not in rel):
                found[rel] = hashlib.sha256(p.read_bytes()).hexdigest()
    return found


@pytest.fixture(scope="module")
def adopted(snakemake_run):
    """`dsm sync dvc` after the Snakemake run: the run recorded in dvc.lock."""
    before = content_hashes(snakemake_run)
    run([tool("dsm"), "sync", "dvc"], snakemake_run)
    return snakemake_run, before


@pytest.mark.tier2
def test_sync_dvc_leaves_both_tools_up_to_date(adopted):
    """After `dsm sync dvc`: dvc status clean AND Snakemake plans nothing, and no output's
    content changed."""
    adopted, before = adopted
    assert planned_jobs(snakemake(["all", "--dry-run"], adopted)) == {}
    assert content_hashes(adopted) == before
    status = json.loads(dvc(["status", "--json"], adopted).stdout or "{}")
    assert status == {}
    res = dvc(["repro"], adopted)
    assert "Running stage" not in res.stdout, res.stdout
    lock = (adopted / "dvc.lock").read_text()
    assert "train@0-1-A" in lock and "run.train" in lock  # matrix: seed, N, split


@pytest.mark.tier2
def test_dvc_metrics_are_headline_numbers_named_with_units(adopted):
    """`dvc metrics show`: the files the stage table declares (a directory stands for its
    files), one quantity each, named with its unit, in one small vocabulary (value, se,
    ci95_lo, ci95_hi, n), so that the whole table, with no argument, fits a terminal:
    at most 160 characters wide, with room for the longest scale name."""
    from dsm.headline import KEYS
    from dsm.pipeline.stages import METRICS
    from test_analysis import check_headline_file

    repo, _ = adopted
    shown = json.loads(dvc(["metrics", "show", "--json"], repo).stdout)
    (data,) = [rev["data"] for rev in shown.values()]  # one revision (its key: "" or "workspace")
    files = set(data)
    ns = load_params(repo)["scales"][SCALE]["split"]["N"]
    declared = set()
    for m in METRICS:
        path = repo / m.replace("{scale}", SCALE)
        declared |= ({str(f.relative_to(repo)) for f in path.rglob("*.json")} if path.is_dir()
                     else {str(path.relative_to(repo))})
    assert files == declared
    assert {f"results/{SCALE}/fig2_metrics/N{n}/rms_A_minus_B_db_per_dim.json" for n in ns} | {
            f"results/{SCALE}/fig1/metrics/dual_max_abs_err_db_per_dim.json",
            f"results/{SCALE}/full/gumbel/loc_db_per_dim.json", f"results/{SCALE}/fig5/metrics/max_abs_gap_dims.json",
            f"results/{SCALE}/bias_metrics/direct_err_db_per_dim.json",
            f"results/{SCALE}/table1_metrics/psnr+0/energy_psnr_db.json"} <= files
    for f in files:
        check_headline_file(repo / f)
        values = {k: v for k, v in json.loads((repo / f).read_text()).items() if v is not None}
        assert data[f]["data"] == values  # DVC leaves out nulls
    assert set().union(*(d["data"] for d in data.values())) <= set(KEYS)
    table = dvc(["metrics", "show"], repo).stdout
    longest = max(load_params(repo)["scales"], key=len)
    assert max(len(line) for line in table.splitlines()) + len(longest) - len(SCALE) <= 160, table
    assert f"results/{SCALE}/fig1/metrics/dual_max_abs_err_db_per_dim.json" in table


@pytest.mark.tier2
def test_dvc_plots_have_titles_labels_and_log_axes(adopted):
    repo, _ = adopted
    shown = json.loads(dvc(["plots", "show", "--json"], repo).stdout)["data"]
    specs = {pid: entries[0]["content"] for pid, entries in shown.items() if entries}
    assert {"fig2_pearson_r", "fig2_rms"} <= set(specs)
    for pid in ("fig2_pearson_r", "fig2_rms"):
        spec = specs[pid]
        assert spec["title"]["text"].startswith("Figure 2")
        assert spec["encoding"]["x"]["title"] == "N (training images per model)"
        assert spec["encoding"]["x"]["scale"]["type"] == "log"
        assert "dB/dim" in spec["encoding"]["y"]["title"] or pid == "fig2_pearson_r"
        ns = sorted(int(float(row["N"])) for row in spec["data"]["values"])
        assert ns == sorted(load_params(repo)["scales"][SCALE]["split"]["N"])


@pytest.mark.tier2
def test_round_trip_push_clone_pull_resync(adopted, tmp_path):
    adopted, _ = adopted
    remote = tmp_path / "remote"
    dvc(["remote", "add", "--force", "--default", "local", str(remote)], adopted)
    dvc(["push"], adopted)
    git_commit(adopted, "pipeline run (dvc.lock)")
    status = subprocess.run(["git", "status", "--porcelain"], cwd=adopted, capture_output=True,
                            text=True, check=True).stdout
    assert status == "", status

    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(adopted), str(clone)], check=True)
    dvc(["pull"], clone)
    assert json.loads(dvc(["status", "--json"], clone).stdout or "{}") == {}
    from dsm.pipeline.sync import dvc_stages

    declared = {o for outs in dvc_stages(clone).values() for o in outs}
    assert declared and all((clone / o).exists() for o in declared)
    # the measured fact: without the re-sync, Snakemake would retrain
    before = planned_jobs(snakemake(["figures/fig2.pdf", "--dry-run"], clone))
    assert before.get("train", 0) > 0

    run([tool("dsm"), "sync", "snakemake"], clone)
    assert planned_jobs(snakemake(["figures/fig2.pdf", "--dry-run"], clone)) == {}
    assert planned_jobs(snakemake(["all", "--dry-run"], clone)) == {}
    # and parameter changes are detected again after the re-sync
    edit_param(clone, SCALE, "train", "lr", "0.0123")
    jobs = planned_jobs(snakemake(["all", "--dry-run"], clone))
    n_models = 2 * len(load_params(clone)["scales"][SCALE]["split"]["N"])
    assert jobs["train"] == n_models and "prepare" not in jobs and "split" not in jobs


@pytest.mark.tier2
def test_dvc_repro_end_to_end(tmp_path, snakemake_run):
    """`dvc repro` alone runs the whole pipeline; same outputs as Snakemake; then a no-op;
    then `dsm sync snakemake` makes Snakemake agree in the same working copy."""
    repo = copy_repo(tmp_path / "repo", scale=SCALE, git=True)
    # DVC sets no thread count; give the jobs another one than Snakemake's (1): the stages
    # take theirs from params (resources.<group>.threads), so the numbers must not move
    dvc(["repro"], repo, timeout=900, extra_env={"OMP_NUM_THREADS": "2"})
    check_results(repo)
    assert outputs_of(repo) == outputs_of(snakemake_run)
    # bit-identical outputs whichever tool ran the stages (only Figure 1's details, the
    # estimators' tables and figure, the peers' fit and Table 2's cost columns hold timings;
    # DVC writes no benchmark files, so Table 2's model CPU seconds are n/a there: every
    # other column must agree)
    mine, theirs = content_hashes(repo), content_hashes(snakemake_run)
    timed = ("fig1/details.json", "estimators.csv", "estimators-images.parquet", "/estimators.pdf",
             "peers/peers.json", "table2.csv", "table2.md", "table2.tex")
    differ = sorted(k for k in mine if mine[k] != theirs.get(k) and not k.endswith(timed))
    assert not differ, differ
    for name, read in (("estimators.csv", pd.read_csv), ("estimators-images.parquet", pd.read_parquet),
                       ("table2.csv", pd.read_csv)):
        a, b = (read(r / f"results/{SCALE}/{name}") for r in (repo, snakemake_run))
        untimed = [c for c in a.columns if "seconds" not in c and "speedup" not in c and c != "images_per_second"]
        pd.testing.assert_frame_equal(a[untimed], b[untimed])

    def untimed_json(obj):
        if isinstance(obj, dict):
            return {k: untimed_json(v) for k, v in obj.items() if not k.endswith("_seconds")}
        return obj

    a, b = (json.loads((r / f"results/{SCALE}/peers/peers.json").read_text()) for r in (repo, snakemake_run))
    assert untimed_json(a) == untimed_json(b)
    assert json.loads(dvc(["status", "--json"], repo).stdout or "{}") == {}
    res = dvc(["repro"], repo)
    assert "Running stage" not in res.stdout, res.stdout
    run([tool("dsm"), "sync", "snakemake"], repo)
    assert planned_jobs(snakemake(["all", "--dry-run"], repo)) == {}
    assert json.loads(dvc(["status", "--json"], repo).stdout or "{}") == {}
    assert content_hashes(repo) == mine
    shutil.rmtree(repo / ".dvc" / "cache", ignore_errors=True)
