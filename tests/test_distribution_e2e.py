"""The distribution of log p end to end at the smoke scale, from the shared `snakemake all`
run (tests/conftest.py): Figure 3, Figures 6-8 and Table 2 from a full model trained,
normalized and evaluated on every test image; their numbers checked against the per-image
table, the exact density of the `field` source and the model itself; a second run plans
nothing, and editing the Gumbel code reruns only the fit and Figure 3.
"""

from __future__ import annotations

import json
import math
import os

import numpy as np
import pandas as pd
import pytest
import torch

from test_pipeline_util import planned_jobs, run, snakemake

pytestmark = pytest.mark.slow

SCALE = "smoke"
TARGETS = ["figures/fig3.pdf", "figures/fig6.pdf", "figures/fig7.pdf", "figures/fig8.pdf",
           f"results/{SCALE}/table2.csv", f"results/{SCALE}/table2.md", f"results/{SCALE}/table2.tex"]


@pytest.fixture(scope="module")
def repo(smoke_all):
    return smoke_all


def test_outputs_exist(repo):
    for t in TARGETS:
        assert (repo / t).stat().st_size > 0, t
    for f in ("fig3", "fig6", "fig7", "fig8"):
        assert (repo / f"figures/{f}.pdf").read_bytes()[:5] == b"%PDF-"


def test_gumbel_against_the_table(repo):
    table = pd.read_parquet(repo / f"results/{SCALE}/full/logp-test.parquet")
    m = {f.stem: json.loads(f.read_text()) for f in (repo / f"results/{SCALE}/full/gumbel").glob("*.json")}
    det = json.loads((repo / f"results/{SCALE}/full/gumbel-details.json").read_text())
    lp = table["logp_db_per_dim"].to_numpy()
    assert det["n_images"] == len(table) == 64
    assert det["sample"]["mean"] == pytest.approx(lp.mean())
    assert m["entropy_db_per_dim"]["value"] == pytest.approx(-lp.mean())
    assert m["nll_bits_per_dim"]["value"] == pytest.approx(table["nll_bits_per_dim"].mean())
    loc = m["loc_db_per_dim"]
    assert loc["ci95_lo"] <= loc["value"] <= loc["ci95_hi"] and loc["n"] == len(table)
    assert det["bootstrap"]["resamples"] == 100                      # scales.smoke.gumbel.bootstrap
    assert det["provenance"]["checkpoint_sha256"] == table["checkpoint_sha256"].iloc[0]
    # Figure 3's histogram (a DVC plot): the bins hold every image, the fit integrates to ~1
    hist = pd.read_csv(repo / f"results/{SCALE}/fig3/hist.csv")
    width = hist["bin_hi"] - hist["bin_lo"]
    assert (hist["density"] * width).sum() == pytest.approx(1.0, rel=1e-6)
    assert (hist["gumbel_density"] * width).sum() == pytest.approx(1.0, abs=0.1)


def test_table2_against_the_table_and_the_exact_density(repo):
    from dsm.data.store import open_store

    table = pd.read_parquet(repo / f"results/{SCALE}/full/logp-test.parquet")
    meta = open_store(repo / f"data/{SCALE}/images", "test").meta
    rows = pd.read_csv(repo / f"results/{SCALE}/table2.csv").set_index("key")
    d, ln2 = int(table["d"].iloc[0]), math.log(2)
    assert rows.loc["model_8bit_shift", "bits_per_dim"] == pytest.approx(table["nll_bits_per_dim"].mean(), rel=1e-5)
    assert rows.loc["exact_test", "bits_per_dim"] == pytest.approx(
        8 + table["exact_energy_nats"].mean() / d / ln2, rel=1e-5)
    assert rows.loc["exact_entropy", "bits_per_dim"] == pytest.approx(
        8 + meta["exact"]["entropy_nats"] / d / ln2, rel=1e-5)
    assert not rows.loc["model_dequantized", "applies"]              # field: continuous pixels
    excess = (table["energy_nats"] - table["exact_energy_nats"]) / d / ln2
    assert rows.loc["model_excess", "bits_per_dim"] == pytest.approx(excess.mean(), rel=1e-5)
    assert rows.loc["model_excess", "se_bits_per_dim"] == pytest.approx(excess.std(ddof=1) / 8, rel=1e-4)
    md = (repo / f"results/{SCALE}/table2.md").read_text()
    assert f"{rows.loc['model_8bit_shift', 'bits_per_dim']:.4f}" in md and "does not apply" in md


def test_probes_against_the_model_and_the_exact_density(repo):
    from dsm.analysis.probes import probe_images
    from dsm.data.exact import exact_density
    from dsm.data.store import open_store
    from dsm.evaluate import energy
    from dsm.modelfile import load_model
    from dsm import units

    pr = json.loads((repo / f"results/{SCALE}/full/probes.json").read_text())
    test = open_store(repo / f"data/{SCALE}/images", "test")
    c = json.loads((repo / f"results/{SCALE}/full/norm.json").read_text())["c_nats"]
    model, _ = load_model(repo / f"models/{SCALE}/full/model.pt")
    images = probe_images(test.shape, pr["noise"]["count"], pr["noise"]["seed"])
    dens = exact_density(test.meta)
    for name in ("noise", "constant"):
        x = images[name]
        u = energy(model, torch.from_numpy(x), 0.0).double().numpy() + c
        got = [r["logp_db_per_dim"] for r in pr[name]["images"]]
        assert got == pytest.approx(units.logp_db_per_dim(u, test.d), abs=1e-4)
        exact = units.logp_db_per_dim(np.asarray(dens.energy(x.astype(np.float64), 0.0)), test.d)
        assert [r["exact_logp_db_per_dim"] for r in pr[name]["images"]] == pytest.approx(exact)
    # the flat image is the field's mode: more likely than any test image and than noise
    table = pd.read_parquet(repo / f"results/{SCALE}/full/logp-test.parquet")
    assert pr["constant"]["exact_logp_db_per_dim"] > table["exact_logp_db_per_dim"].max()
    assert pr["noise"]["exact_logp_db_per_dim"] < table["exact_logp_db_per_dim"].min()


def test_figures_are_byte_reproducible(repo, tmp_path):
    out = [tmp_path / f"f{k}.pdf" for k in (6, 7, 8)]
    run(["dsm", "fig678", "--params", "params.yaml", "--scale", SCALE, "--logp",
         f"results/{SCALE}/full/logp-test.parquet", "--data", f"data/{SCALE}/images",
         "--highest", str(out[0]), "--lowest", str(out[1]), "--spaced", str(out[2])], repo)
    for k, f in zip((6, 7, 8), out):
        assert f.read_bytes() == (repo / f"figures/{SCALE}/fig{k}.pdf").read_bytes()
        assert f.read_bytes() == (repo / f"figures/fig{k}.pdf").read_bytes()     # the active scale's copy


def test_second_run_plans_nothing_and_gumbel_code_reruns_fit_and_fig3_only(repo):
    assert planned_jobs(snakemake([*TARGETS, "--dry-run"], repo)) == {}
    module = repo / "dsm/analysis/gumbel.py"
    text, stat = module.read_text(), module.stat()
    module.write_text(text + "\n# edited\n")
    try:
        assert planned_jobs(snakemake([*TARGETS, "--dry-run"], repo)) == {"gumbel": 1, "fig3": 1,
                                                                          "publish_fig3": 1}
    finally:                                # the shared run must stay up to date
        module.write_text(text)
        os.utime(module, ns=(stat.st_atime_ns, stat.st_mtime_ns))
