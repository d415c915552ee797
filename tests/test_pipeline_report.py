"""What a reader sees, declared in the stage table (dsm/pipeline/stages.py): DVC metrics
and plots in the generated dvc.yaml, outputs flagged for `snakemake --report` with their
captions, and the numbers the captions quote. Fast checks here; the report of a real smoke
run is built in tests/test_pipeline_e2e.py.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import types

import pytest
import yaml

from dsm.pipeline import render
from dsm.pipeline.report import caption_data, load_json_tree, metric_unit
from dsm.pipeline.stages import (METRICS, PLOTS, REPORT_CATEGORIES, REPORT_DIR, STAGES, TARGETS,
                                 Plot, Report, _check_presentation, plot_template)
from test_pipeline_util import REPO

# docutils: Snakemake calls publish_parts(writer_name=...), as these tests do
pytestmark = pytest.mark.filterwarnings("ignore::PendingDeprecationWarning")


def test_dvc_yaml_metrics_and_plots_come_from_the_table():
    doc = yaml.safe_load((REPO / "dvc.yaml").read_text())
    assert doc["metrics"] == [m.replace("{scale}", "${run.name}") for m in METRICS]
    assert {"results/${run.name}/fig2_metrics", "results/${run.name}/fig1/metrics"} <= set(doc["metrics"])
    plots = {k: v for entry in doc["plots"] for k, v in entry.items()}
    assert set(plots) == {p.id for _, p in PLOTS} >= {"fig2_pearson_r", "fig2_rms"}
    for stage, p in PLOTS:
        spec = plots[p.id]
        assert spec["y"] == {stage.outputs[p.output].replace("{scale}", "${run.name}"): list(p.y) if isinstance(p.y, tuple) else p.y}
        assert spec["x"] == p.x and spec["title"] and spec["x_label"] and spec["y_label"]
        assert spec["template"] == plot_template(p)
    # Figure 2's curves: log x (N), and log y for the RMS that spans decades
    assert plots["fig2_pearson_r"]["template"] == "workflow/plots/logx.json"
    assert plots["fig2_rms"]["template"] == "workflow/plots/loglog.json"


@pytest.mark.parametrize("name", ["logx", "loglog"])
def test_plot_templates_are_vega_lite_with_dvc_anchors(name):
    text = (REPO / "workflow/plots" / f"{name}.json").read_text()
    spec = json.loads(text)
    for anchor in ("DATA", "X", "Y", "TITLE", "X_LABEL", "Y_LABEL"):
        assert f"<DVC_METRIC_{anchor}>" in text, anchor
    assert spec["encoding"]["x"]["scale"]["type"] == "log"
    assert (spec["encoding"]["y"].get("scale", {}).get("type") == "log") == (name == "loglog")


def test_every_figure_target_is_in_the_report():
    """Every figure `snakemake all` publishes is shown, as the scale's own file
    figures/{scale}/<name>.pdf (figures/<name>.pdf is its copy for the active scale)."""
    shown = {s.outputs[r.output] for s in STAGES.values() for r in s.report}
    figures = [t.replace("figures/", "figures/{scale}/") for t in TARGETS if t.startswith("figures/")]
    assert figures and set(figures) <= shown
    for s in STAGES.values():
        for r in s.report:
            assert (REPO / REPORT_DIR / r.caption).is_file(), r.caption
            assert r.category in REPORT_CATEGORIES
    assert (REPO / REPORT_DIR / "workflow.rst").is_file()
    assert 'report: "workflow/report/workflow.rst"' in (REPO / "Snakefile").read_text()


def test_the_check_rejects_what_a_reader_could_not_see():
    fig2 = STAGES["fig2"]
    produced = {p: s.name for s in STAGES.values() for p in s.outputs.values()}
    bad = [
        (dataclasses.replace(fig2, metrics=("nope",)), "metrics names unknown output nope"),
        (dataclasses.replace(fig2, plots=(Plot("x", "pdf", "N", "r", "t", "x", "y", template="nope"),)),
         "template workflow/plots/nope.json not found"),
        (dataclasses.replace(fig2, report=(Report("nope", "fig2.rst", "generalization", "F"),)),
         "report names unknown output nope"),
        (dataclasses.replace(fig2, report=(Report("pdf", "missing.rst", "generalization", "F"),)),
         "caption workflow/report/missing.rst not found"),
        (dataclasses.replace(fig2, report=(Report("pdf", "fig2.rst", "Figure 2", "F"),)),
         "category 'Figure 2'"),
        (dataclasses.replace(fig2, report=(Report("pdf", "fig2.rst", "generalization", "F",
                                                  patterns=("{name}.pdf",)),)),
         "patterns are needed for a directory and only for one"),
        (dataclasses.replace(fig2, directories=("pdf",)),  # a directory shown without patterns
         "patterns are needed for a directory and only for one"),
        (dataclasses.replace(fig2, report=(Report("pdf", "fig2.rst", "generalization", "F",
                                                  data={"m": "results/{scale}/nothing.json"}),)),
         "caption data m = results/{scale}/nothing.json is no stage's output"),
    ]
    _check_presentation(fig2, produced, REPO)
    for stage, message in bad:
        with pytest.raises(ValueError, match=message.replace("{", r"\{").replace("}", r"\}")
                           .replace(".", r"\.").replace("(", r"\(")):
            _check_presentation(stage, produced, REPO)


def test_metric_names_declare_units():
    assert metric_unit("rms_A_minus_B_db_per_dim").startswith("dB/dim")
    assert metric_unit("nll_bits_per_dim").startswith("bits/dim, 8-bit")
    assert metric_unit("pearson_r").startswith("Pearson") and metric_unit("c_nats") == "nats"
    assert metric_unit("rms") is None and metric_unit("train_seconds") is None


def test_caption_data_reads_files_and_directories(tmp_path):
    d = tmp_path / "results/unit/fig2_metrics"
    for n in (100, 1, 10):
        (d / f"N{n}").mkdir(parents=True)
        (d / f"N{n}/pearson_r.json").write_text(json.dumps({"value": n / 100}))
    (tmp_path / "results/unit/norm.json").write_text('{"c_nats": 1.5}')
    (tmp_path / "results/unit/half.json").write_text('{"c_na')  # being written
    got = caption_data({"m": "results/{scale}/fig2_metrics", "norm": "results/{scale}/norm.json",
                        "absent": "results/{scale}/absent.json", "half": "results/{scale}/half.json"},
                       "unit", tmp_path)
    assert got == {"scale": "unit", "m": {"N1": {"pearson_r": {"value": 0.01}},
                                          "N10": {"pearson_r": {"value": 0.1}},
                                          "N100": {"pearson_r": {"value": 1.0}}},
                   "norm": {"c_nats": 1.5}, "absent": {}, "half": {}}
    assert list(got["m"]) == ["N1", "N10", "N100"]  # natural order
    assert load_json_tree(tmp_path / "nothing") == {}


def test_report_params_are_derived_so_never_a_rerun_trigger():
    """Snakemake leaves params that are functions of a job's output out of its params
    rerun trigger (its own test of that, Rule._is_deriving_function); `reads` stays in."""
    from snakemake.rules import Rule

    scale_of = lambda wildcards: {"name": "smoke"}  # noqa: E731
    fn = render.smk_report_params(STAGES["fig2"], scale_of, REPO)
    assert Rule._is_deriving_function(fn)
    assert not Rule._is_deriving_function(render.smk_params(STAGES["fig2"], scale_of, lambda c, k: None))
    assert fn(types.SimpleNamespace(), output=[])["scale"] == "smoke"


# --- the captions, rendered as `snakemake --report` renders them (Jinja, then docutils) -----

def render_caption(name: str, report: dict) -> str:
    """Caption ``name`` with ``snakemake.params.report = report`` and the shipped params as
    ``snakemake.config``: Jinja (trim_blocks, lstrip_blocks), then docutils to HTML."""
    from docutils.core import publish_parts
    from jinja2 import Environment

    config = yaml.safe_load((REPO / "params.yaml").read_text())
    snakemake = types.SimpleNamespace(config=config, params=types.SimpleNamespace(report=report),
                                      wildcards={})
    env = Environment(trim_blocks=True, lstrip_blocks=True)
    text = env.from_string((REPO / REPORT_DIR / name).read_text()).render(
        snakemake=snakemake, categories={}, files=[])
    # docutils: errors become exceptions, not a "System Message" in the report
    return publish_parts(text, writer_name="html", settings_overrides={"halt_level": 2})["body"]


def headline_files(tmp_path, scale="default"):
    """Synthetic outputs of a run, in the layout of the stage table (headline directories
    written by dsm.headline, as the stages write them)."""
    from dsm.headline import Metric, write_metrics_dir

    root = tmp_path / "results" / scale
    cfg = yaml.safe_load((REPO / "params.yaml").read_text())["scales"][scale]
    ns, k = cfg["split"]["N"], len(cfg["seeds"])
    se = (lambda v: v) if k > 1 else (lambda v: None)
    write_metrics_dir(root / "fig2_metrics", {f"N{n}": {
        "pearson_r": Metric(None if n == 1 else 0.998765, se=se(0.0001), n=k),
        "rms_A_minus_B_db_per_dim": Metric(40.0 / n ** 0.5, se=se(0.5), n=k),
        "mean_A_minus_B_db_per_dim": Metric(0.0123, se=se(0.001), n=k),
        "bias_db_per_dim": Metric(-0.5234, se=se(0.0456), n=k)} for n in ns})
    write_metrics_dir(root / "fig1/metrics", {
        "dual_max_abs_err_db_per_dim": Metric(0.1331), "dual_rms_err_db_per_dim": Metric(0.0501),
        "single_max_abs_err_db_per_dim": Metric(7.634), "single_rms_err_db_per_dim": Metric(3.21)})
    write_metrics_dir(root / "full/gumbel", {
        "loc_db_per_dim": Metric(4.7812, ci95=(4.61, 4.95), n=1000),
        "scale_db_per_dim": Metric(1.6134, ci95=(1.5, 1.7), n=1000),
        "entropy_db_per_dim": Metric(-5.712, ci95=(-5.8, -5.6), n=1000),
        "nll_bits_per_dim": Metric(6.0732, n=1000)})
    write_metrics_dir(root / "table2_metrics", {
        "model_8bit_shift_bits_per_dim": Metric(6.1098, se=0.0181, n=1000),
        "exact_entropy_bits_per_dim": Metric(6.0381, se=0.00001),
        "model_excess_bits_per_dim": Metric(0.0745, se=0.0021, n=1000)})
    write_metrics_dir(root / "table1_metrics", {
        f"psnr{p:+g}": {"energy_psnr_db": Metric(30.0 + p / 10, se=0.1, n=100),
                        "score_psnr_db": Metric(29.5 + p / 10, se=0.1, n=100),
                        "energy_minus_score_psnr_db": Metric(0.5, se=0.04, n=100),
                        **({"optimal_psnr_db": Metric(31.0 + p / 10, se=0.1, n=100)}
                           if cfg["data"]["source"] == "field" else {})}
        for p in map(float, cfg["figures"]["table1"]["psnr"])})
    write_metrics_dir(root / "bias_metrics", {
        f"{t}_err_db_per_dim": Metric(v, se=0.01) for t, v in (
            ("norm", 0.01), ("time", -0.1), ("space", -0.05), ("score", -0.15), ("predicted", -0.14),
            ("direct", -0.2161))})
    (root / "full/norm.json").write_text(json.dumps({"c_nats": -1234.5678, "c_sem_nats": 0.123, "d": 256,
                                                      "n_images": 1000, "t_max": 1000.0}))
    (root / "full/examples.json").write_text(json.dumps({
        "count": 2, "rule": "closest to evenly spaced log p", "examples": [
            {"image_index": 7, "image_id": "test-7", "logp_db_per_dim": 3.14159},
            {"image_index": 9, "image_id": "test-9", "logp_db_per_dim": 12.5}]}))
    return ns


@pytest.mark.parametrize("scale", ["default", "paper"])
def test_captions_quote_the_headline_numbers(tmp_path, scale):
    ns = headline_files(tmp_path, scale)
    seeds = yaml.safe_load((REPO / "params.yaml").read_text())["scales"][scale]["seeds"]
    html = {}
    for s in STAGES.values():
        for r in s.report:
            text = render_caption(r.caption, caption_data(r.data, scale, tmp_path))
            html[r.caption] = " ".join(text.split())  # one line: captions wrap anywhere
    fig2 = html["fig2.rst"]
    assert f"at N = {max(ns)} the two models agree with Pearson r = 0.9988" in fig2
    assert f"RMS difference of {40.0 / max(ns) ** 0.5:.3g} dB/dim" in fig2
    assert f"at N = {min(ns)} the RMS difference is {40.0 / min(ns) ** 0.5:.3g} dB/dim" in fig2
    assert f"bias) at N = {max(ns)} is -0.523 dB/dim" in fig2
    assert ("0.0456 dB/dim" in fig2) == (len(seeds) > 1)
    fig1 = html["fig1.rst"]
    assert "0.133 dB/dim for dual score matching and 7.63 dB/dim for single" in fig1
    assert "location 4.78 dB/dim (95 % interval [4.61, 4.95])" in html["gumbel.rst"]
    assert "location 4.78 and scale 1.61 dB/dim" in html["fig3.rst"]
    assert "test NLL is 6.1098 +- 0.018 bits/dim" in html["table2.rst"]
    assert "excess +0.0745 +- 0.0021" in html["table2.rst"]
    assert "+0.50 dB at" in html["table1.rst"] and "+0.50 +- 0.04" in html["table1.rst"]
    assert "measured directly -0.216 +- 0.01 dB/dim" in html["bias.rst"]
    assert "c = -1234.57 nats" in html["full_norm.rst"]
    assert "log p = 3.14 dB/dim" in html["examples.rst"] and "test-9" in html["examples.rst"]
    by_n = html["fig2_by_N.rst"]
    assert by_n.count("images per model: r =") == len(ns)
    assert (f"{min(ns)} images per model: r = n/a" in by_n) == (min(ns) == 1)


def test_captions_render_before_any_result_exists(tmp_path):
    """The DAG is built (and the params evaluated) before the outputs exist: the captions
    then say what the figure is, without numbers, and do not fail."""
    for s in STAGES.values():
        for r in s.report:
            html = render_caption(r.caption, caption_data(r.data, "smoke", tmp_path))
            assert "Headline" not in html and len(html) > 100, r.caption


def test_workflow_description_renders():
    from docutils.core import publish_parts
    from jinja2 import Environment

    config = yaml.safe_load((REPO / "params.yaml").read_text())
    category = collections.namedtuple("Category", "name")  # hashable, like Snakemake's
    cats = {category(n): {} for n in REPORT_CATEGORIES.values()}
    text = Environment(trim_blocks=True, lstrip_blocks=True).from_string(
        (REPO / REPORT_DIR / "workflow.rst").read_text()).render(
        snakemake=types.SimpleNamespace(config=config), categories=cats, files=[])
    html = publish_parts(text, writer_name="html", settings_overrides={"halt_level": 2})["html_body"]
    scale = config["run"]["name"]
    assert f"<tt class=\"docutils literal\">{scale}</tt> scale" in html
    assert "; ".join(sorted(REPORT_CATEGORIES.values())) + "." in " ".join(html.split())
