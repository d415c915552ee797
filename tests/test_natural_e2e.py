"""The natural-image pipeline end to end at a tiny size: `snakemake all` on patches of the
bundled photographs, with the smoke scale's model and recipe (a scale `natural-tiny`
added to a copy of params.yaml). Every figure and table of `all` is built and is a PDF
pdftoppm can render, the bias budget (which needs an exact density) is not part of it,
and Table 2 holds the peers."""

from __future__ import annotations

import json
import math
import shutil
import subprocess

import pandas as pd
import pytest

from dsm.pipeline.stages import EXACT_ONLY, targets
from test_pipeline_util import copy_repo, planned_jobs, snakemake

SCALE = "natural-tiny"
TINY = f"""  {SCALE}:
    <<: *smoke
    name: {SCALE}
    data:
      source: patches
      image_size: 8
      channels: 1
      n_train: 400
      n_test: 64
      n_holdout: 32
      root: null
      patches:
        photos: [camera, chelsea, coins, gravel]
        tile: 32
        test_fraction: 0.2
        holdout_fraction: 0.1
        stride: {{train: 4, test: 8, holdout: 8}}
        seed: 0
    peers:
      n_fit: null
      seed: 0
      gmm: {{n_components: 2, max_iter: 20, tol: 1.0e-3, reg_covar: 1.0e-6, n_init: 1}}

"""


@pytest.fixture(scope="module")
def natural_run(tmp_path_factory):
    repo = copy_repo(tmp_path_factory.mktemp("nat") / "repo")
    params = repo / "params.yaml"
    text = params.read_text()
    marker = "# The switch: the active scale"
    assert marker in text
    params.write_text(text.replace(marker, TINY + marker, 1))
    snakemake(["all", "--cores", "2", "--config", f"scale={SCALE}"], repo, timeout=1500)
    return repo


@pytest.mark.slow
def test_every_target_built_and_renders(natural_run, tmp_path):
    repo = natural_run
    built = [t.replace("{scale}", SCALE) for t in targets("patches")]
    assert not set(EXACT_ONLY) & set(built)
    for t in built:
        assert (repo / t).exists(), t
    assert not (repo / "figures/bias.pdf").exists()
    pdftoppm = shutil.which("pdftoppm")
    for t in built:
        if not t.endswith(".pdf"):
            continue
        assert (repo / t).read_bytes()[:5] == b"%PDF-"
        if pdftoppm:
            out = tmp_path / t.replace("/", "_").removesuffix(".pdf")
            subprocess.run([pdftoppm, "-png", "-r", "30", "-singlefile", str(repo / t), str(out)],
                           check=True, capture_output=True, timeout=120)
            assert out.with_suffix(".png").stat().st_size > 1000
    assert planned_jobs(snakemake(["all", "--dry-run", "--config", f"scale={SCALE}"], repo)) == {}


@pytest.mark.slow
def test_table2_and_figure4_on_natural_patches(natural_run):
    repo = natural_run
    rows = pd.read_csv(repo / f"results/{SCALE}/table2.csv").set_index("key")
    assert {"model_8bit_shift", "gmm", "gaussian", "model_minus_gmm", "model_minus_gaussian"} <= set(rows.index)
    assert "exact_test" not in rows.index and not rows.loc["model_dequantized", "applies"]
    info = json.loads((repo / f"results/{SCALE}/peers/peers.json").read_text())
    assert rows.loc["gmm", "bits_per_dim"] == pytest.approx(info["gmm"]["test_nll_bits_per_dim"], rel=1e-5)
    assert rows.loc["gmm", "n_parameters"] == 2 * 64 + 2 * 2080 + 1
    # the mixture beats the single Gaussian on real patches
    assert rows.loc["gmm", "bits_per_dim"] < rows.loc["gaussian", "bits_per_dim"]
    assert rows.loc["model_8bit_shift", "n_parameters"] > 0
    assert not math.isnan(rows.loc["model_8bit_shift", "fit_cpu_seconds"])    # Snakemake's benchmark
    details = json.loads((repo / f"results/{SCALE}/fig4/details.json").read_text())
    metrics = repo / f"results/{SCALE}/fig4/metrics"
    r = json.loads((metrics / "pearson_r.json").read_text())["value"]
    assert r is not None and -1 <= r <= 1
    assert not (metrics / "exact_pearson_r.json").exists()
    assert json.dumps(details).count("levels") >= 1
    bias = json.loads((repo / f"results/{SCALE}/fig5/details.json").read_text())
    assert bias                                                                 # Figure 5 without exact curves
