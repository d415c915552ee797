"""The stage table: every pipeline stage written once.

Snakemake (``workflow/rules/*.smk``, one thin rule per stage) and DVC (``dvc.yaml``,
generated from this table by ``dsm sync dvc-yaml``) both read it, so the two cannot
disagree about a stage's command, inputs, outputs, parameters or code.

A :class:`Stage` names

* ``name``: the Snakemake rule, the DVC stage and (for ``dsm`` stages) the subcommand;
* ``entry``: the module whose ``<name>_from_params`` the subcommand calls; the stage's
  **code dependencies** are the files of its import closure (:mod:`dsm.pipeline.codedeps`),
  computed, never written by hand;
* ``reads``: the keys of the scale section it reads (``a.b`` = key b of section a): its
  parameter dependencies (Snakemake ``params:``, DVC ``params: [run.a.b]``);
* ``inputs``/``outputs``: path patterns in the wildcards ``{scale}``, ``{N}``, ``{split}``;
  an :class:`Each` input stands for one file per model (seed, N, split) of the scale (DVC:
  its directory);
* ``args``: the command line after ``dsm <subcommand> --params params.yaml --scale {scale}``
  (the subcommand is the name unless ``subcommand`` says otherwise), with
  ``{input.x}``/``{output.x}`` for the named paths and the wildcards;
* ``resources``: the group of the scale's ``resources:`` section (threads, memory, time,
  GPUs); the group's ``threads`` is also the stage's torch thread count (dsm.runtime).

What a reader sees of a stage's outputs is declared on the same entry (names of outputs):

* ``metrics``: outputs that are DVC metrics (``dvc metrics show/diff``): small JSON files
  (or directories of them) of headline numbers whose names carry their unit
  (:data:`dsm.pipeline.report.METRIC_UNITS`); everything else goes to a details file;
* ``plots``: :class:`Plot` entries, DVC plots (``dvc plots show``) of a CSV output;
* ``report``: :class:`Report` entries, outputs shown in ``snakemake --report`` with a
  caption (``workflow/report/<caption>``), a category (:data:`REPORT_CATEGORIES`) and
  the JSON files the caption quotes numbers from.

Wildcards: a stage whose outputs contain ``{seed}``, ``{N}`` and ``{split}`` runs once per
A/B model (Snakemake wildcards, DVC ``matrix``): seed over the scale's ``seeds`` (one
replicate per base seed), N over ``split.N``, split over A and B. A stage whose outputs do not contain ``{scale}``
(the figures) belongs to the active scale (params.yaml ``run``, or Snakemake's
``--config scale=NAME``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from dsm.pipeline.codedeps import code_files

PARAMS_FILE = "params.yaml"
SPLITS = ("A", "B")
MODEL_WILDCARDS = ("seed", "N", "split")
# where each model wildcard's values come from, in a scale section (DVC matrix, Snakemake expand)
WILDCARD_VALUES = {"seed": "seeds", "N": "split.N", "split": None}
_PLACEHOLDER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_.]*)\}")


@dataclass(frozen=True)
class Each:
    """An input that is one file per model (seed × N × split) of the scale: ``pattern`` expanded.
    DVC cannot expand lists in ``deps:``, so it depends on ``dvc_dir``, which must hold
    exactly those files."""

    pattern: str
    dvc_dir: str


@dataclass(frozen=True)
class Plot:
    """A DVC plot (``dvc plots show``) of a stage's CSV output: column ``y`` against ``x``;
    ``y`` a tuple of columns draws one line each (DVC tells them apart by dash pattern).

    ``template``: a DVC built-in template (linear, scatter, smooth, bar_horizontal, ...)
    or the name of a Vega-Lite template of the repository, ``workflow/plots/<name>.json``
    (``logx``: log x axis; ``loglog``: both axes log; ``step``: a histogram, each line a
    step at the midpoints between its x values)."""

    id: str
    output: str
    x: str
    y: str | tuple[str, ...]
    title: str
    x_label: str
    y_label: str
    template: str = "linear"


@dataclass(frozen=True)
class Report:
    """A stage output shown in the Snakemake report (``snakemake --report report.html``).

    ``caption``: an RST file under ``workflow/report/``, rendered with Jinja: it sees
    ``snakemake.config`` (params.yaml), ``snakemake.wildcards`` and
    ``snakemake.params.report``: ``scale`` (the job's scale) and, for each ``data``
    entry ``name: path pattern``, that JSON file read (a directory: ``{stem: JSON}`` of
    its ``*.json``), so the caption quotes the numbers of the run it describes.
    ``category``: a key of :data:`REPORT_CATEGORIES` (the paper's section);
    ``subcategory``: the figure or table (``Figure 2``). For an output that is a directory,
    ``patterns`` selects its files (Snakemake wildcard patterns relative to it, e.g.
    ``("{name}.pdf",)``); each is shown with the caption."""

    output: str
    caption: str
    category: str
    subcategory: str
    data: dict = field(default_factory=dict)
    patterns: tuple[str, ...] = ()


@dataclass(frozen=True)
class Stage:
    name: str
    entry: str | None
    reads: tuple[str, ...]
    inputs: dict
    outputs: dict
    args: str
    resources: str
    command: str | None = None        # a shell command other than `dsm <subcommand> ...`
    subcommand: str | None = None     # the `dsm` subcommand, if not the stage's name
    directories: tuple[str, ...] = ()  # output names that are directories
    exec_: bool = False               # `exec` the command: SIGTERM reaches it (training)
    benchmark: bool = False           # heavy stage: Snakemake `benchmark:`
    doc: str = ""
    metrics: tuple[str, ...] = ()      # output names that are DVC metrics (headline numbers)
    plots: tuple[Plot, ...] = ()       # DVC plots of outputs
    report: tuple[Report, ...] = ()    # outputs shown in `snakemake --report`

    # --- derived --------------------------------------------------------------------
    @property
    def wildcards(self) -> tuple[str, ...]:
        """The wildcards every output has; a placeholder that only some outputs have (the
        scale of ``results/{scale}/fig3/hist.csv`` beside ``figures/fig3.pdf``) is filled
        with the active scale, as in the outputs without it."""
        sets = [set(_PLACEHOLDER.findall(p)) for p in self.outputs.values()]
        found = set.intersection(*sets) if sets else set()
        return tuple(w for w in ("scale", *MODEL_WILDCARDS) if w in found)

    @property
    def per_model(self) -> bool:
        return all(w in self.wildcards for w in MODEL_WILDCARDS)

    def code(self, root=".") -> list[str]:
        """The stage's code dependencies: files of its entry module's import closure."""
        return code_files(self.entry, root) if self.entry else []

    def full_command(self) -> str:
        """The command in neutral syntax ({input.x}, {output.x}, {scale}, {N}, {split})."""
        if self.command is not None:
            return self.command
        sub = self.subcommand or self.name
        return f"dsm {sub} --params {PARAMS_FILE} --scale {{scale}} {self.args}".strip()

    def log(self) -> str:
        return self._under("logs", ".log")

    def benchmark_file(self) -> str:
        return self._under("benchmarks", ".tsv")

    def _under(self, top: str, suffix: str) -> str:
        scale = "{scale}/" if "scale" in self.wildcards else ""
        model = "/seed{seed}/N{N}-{split}" if self.per_model else ""
        return f"{top}/{scale}{self.name}{model}{suffix}"


MODEL = "models/{scale}/seed{seed}/N{N}-{split}/model.pt"
IMAGES = "data/{scale}/images"
SPLITS_FILE = "data/{scale}/splits.parquet"
NORM = "results/{scale}/norm/seed{seed}/N{N}-{split}.json"
LOGP_DIR = "results/{scale}/logp"
LOGP = LOGP_DIR + "/seed{seed}/N{N}-{split}.parquet"
FULL_MODEL = "models/{scale}/full/model.pt"
FULL_SCORE_MODEL = "models/{scale}/full-score/model.pt"
FULL_NORM = "results/{scale}/full/norm.json"
FULL_LOGP = "results/{scale}/full/logp-test.parquet"
EXAMPLES = "results/{scale}/full/examples.json"
GUMBEL = "results/{scale}/full/gumbel"             # headline numbers: loc.json, scale.json, ...
GUMBEL_DETAILS = "results/{scale}/full/gumbel-details.json"
PROBES = "results/{scale}/full/probes.json"
TABLE2 = {"csv": "results/{scale}/table2.csv", "md": "results/{scale}/table2.md",
          "tex": "results/{scale}/table2.tex"}
TABLE2_METRICS = "results/{scale}/table2_metrics"
FIG678 = {"highest": "figures/fig6.pdf", "lowest": "figures/fig7.pdf", "spaced": "figures/fig8.pdf"}
FIG678_SELECTION = "results/{scale}/fig678.json"
TABLE1 = "results/{scale}/table1"
TABLE1_METRICS = TABLE1 + "_metrics"
FIG5_DIR = "results/{scale}/fig5"
FIG4_DIR = "results/{scale}/fig4"
BIAS_METRICS = "results/{scale}/bias_metrics"
FIG1_METRICS = "results/{scale}/fig1/metrics.json"
FIG2_METRICS = "results/{scale}/fig2_metrics"
FIG2_DETAILS = "results/{scale}/fig2_details.json"
FIG2_BY_N = "results/{scale}/fig2_by_N.csv"
ESTIMATORS_CSV = "results/{scale}/estimators.csv"
ESTIMATORS_IMAGES = "results/{scale}/estimators-images.parquet"

# Sections of the Snakemake report, in the paper's order (Report.category is a key).
REPORT_CATEGORIES = {
    "method": "1. Dual score matching",
    "generalization": "2. Generalization",
    "density": "3. The density of images",
    "noise levels": "4. Across noise levels",
    "bias": "5. Where the bias of log p comes from",
}
# DVC's built-in plot templates; any other Plot.template is workflow/plots/<name>.json
DVC_TEMPLATES = ("linear", "simple", "scatter", "scatter_jitter", "smooth", "confusion",
                 "confusion_normalized", "bar_horizontal", "bar_horizontal_sorted")
TRAIN_READS = ("model", "train", "resources.train.threads")

STAGES: dict[str, Stage] = {s.name: s for s in [
    Stage(
        name="prepare", entry="dsm.data.prepare", reads=("data",),
        inputs={}, outputs={"images": IMAGES}, directories=("images",),
        args="--out {output.images}", resources="data", benchmark=True,
        doc="prepare the data source into the image store (train/ and test/ parts)"),
    Stage(
        name="split", entry="dsm.data.splits", reads=("split",),
        inputs={"data": IMAGES}, outputs={"splits": SPLITS_FILE},
        args="--data {input.data} --out {output.splits}", resources="light",
        doc="the disjoint nested A/B training sets for every N"),
    Stage(
        name="train", entry="dsm.train", reads=TRAIN_READS,
        inputs={"data": IMAGES, "splits": SPLITS_FILE}, outputs={"model": MODEL},
        args="--data {input.data} --splits {input.splits} --N {N} --split {split} --seed {seed}"
             " --out models/{scale}/seed{seed}/N{N}-{split}",
        resources="train", exec_=True, benchmark=True,
        doc="train one energy model on the N images of set A or B (resumes when rerun)"),
    Stage(
        name="train_full", entry="dsm.train", subcommand="train", reads=TRAIN_READS + ("full",),
        inputs={"data": IMAGES}, outputs={"model": FULL_MODEL},
        args="--data {input.data} --full --out models/{scale}/full",
        resources="train", exec_=True, benchmark=True,
        doc="the full energy model: every training image, the same recipe"),
    Stage(
        name="train_score", entry="dsm.train", subcommand="train", reads=TRAIN_READS + ("full",),
        inputs={"data": IMAGES}, outputs={"model": FULL_SCORE_MODEL},
        args="--data {input.data} --full --kind score --out models/{scale}/full-score",
        resources="train", exec_=True, benchmark=True,
        doc="the score-only baseline (Table 1): the full model's data, recipe and seed"),
    Stage(
        name="normalize", entry="dsm.evaluate",
        reads=("evaluate.n_norm", "evaluate.batch_size", "evaluate.noise_seed",
               "evaluate.norm_entropy", "evaluate.norm_t", "resources.evaluate.threads"),
        inputs={"model": MODEL, "data": IMAGES}, outputs={"norm": NORM},
        args="--model {input.model} --data {input.data} --out {output.norm}",
        resources="evaluate", benchmark=True,
        doc="the model's normalization constant from held-out images at T = evaluate.norm_t"),
    Stage(
        name="normalize_full", entry="dsm.evaluate", subcommand="normalize",
        reads=("evaluate.n_norm", "evaluate.batch_size", "evaluate.noise_seed",
               "evaluate.norm_entropy", "evaluate.norm_t", "resources.evaluate.threads"),
        inputs={"model": FULL_MODEL, "data": IMAGES}, outputs={"norm": FULL_NORM},
        args="--model {input.model} --data {input.data} --out {output.norm}",
        resources="evaluate", benchmark=True,
        doc="the full model's normalization constant",
        report=(Report("norm", "full_norm.rst", "density", "Full model", data={"norm": FULL_NORM}),)),
    Stage(
        name="evaluate", entry="dsm.evaluate",
        reads=("evaluate.max_per_set", "evaluate.batch_size", "resources.evaluate.threads"),
        inputs={"model": MODEL, "norm": NORM, "data": IMAGES, "splits": SPLITS_FILE},
        outputs={"logp": LOGP},
        args="--model {input.model} --norm {input.norm} --data {input.data}"
             " --splits {input.splits} --N {N} --split {split} --out {output.logp}",
        resources="evaluate", benchmark=True,
        doc="per-image log p of the model on its own, the other set's and test images"),
    Stage(
        name="evaluate_full", entry="dsm.evaluate", subcommand="evaluate",
        reads=("evaluate.batch_size", "resources.evaluate.threads"),
        inputs={"model": FULL_MODEL, "norm": FULL_NORM, "data": IMAGES},
        outputs={"logp": FULL_LOGP},
        args="--model {input.model} --norm {input.norm} --data {input.data} --full --out {output.logp}",
        resources="evaluate", benchmark=True,
        doc="per-image log p of the full model on every test image",
        report=(Report("logp", "full_logp.rst", "density", "Full model", data={"norm": FULL_NORM}),)),
    Stage(
        name="examples", entry="dsm.analysis.examples", reads=("figures.examples",),
        inputs={"logp": FULL_LOGP}, outputs={"examples": EXAMPLES},
        args="--logp {input.logp} --out {output.examples}", resources="light",
        doc="reference test images evenly spaced in log p (Figures 3, 4, 5)",
        report=(Report("examples", "examples.rst", "density", "Full model",
                       data={"examples": EXAMPLES}),)),
    Stage(
        name="gumbel", entry="dsm.analysis.gumbel", reads=("gumbel",),
        inputs={"logp": FULL_LOGP},
        outputs={"gumbel": GUMBEL, "details": GUMBEL_DETAILS}, directories=("gumbel",),
        args="{input.logp} --out {output.gumbel} --details {output.details}", resources="light",
        doc="maximum-likelihood Gumbel fit of the test set's log p, with bootstrap intervals and rivals",
        metrics=("gumbel",),
        report=(Report("details", "gumbel.rst", "density", "Gumbel fit",
                       data={"gumbel": GUMBEL, "details": GUMBEL_DETAILS}),)),
    Stage(
        name="probes", entry="dsm.analysis.probes",
        reads=("figures.fig3.noise_images", "figures.fig3.noise_seed", "resources.evaluate.threads"),
        inputs={"model": FULL_MODEL, "norm": FULL_NORM, "data": IMAGES}, outputs={"probes": PROBES},
        args="--model {input.model} --norm {input.norm} --data {input.data} --out {output.probes}",
        resources="evaluate",
        doc="log p of uniform-noise images and of the constant 0.5 image under the full model (Figure 3)"),
    Stage(
        name="fig3", entry="dsm.figures.fig3", reads=("figures.fig3.bins", "figures.fig3.lim"),
        inputs={"logp": FULL_LOGP, "gumbel": GUMBEL_DETAILS, "examples": EXAMPLES, "probes": PROBES,
                "data": IMAGES},
        outputs={"pdf": "figures/fig3.pdf", "hist": "results/{scale}/fig3/hist.csv"},
        args="--logp {input.logp} --gumbel {input.gumbel} --examples {input.examples}"
             " --probes {input.probes} --data {input.data} --out {output.pdf} --hist {output.hist}",
        resources="light",
        doc="Figure 3: histogram of test log p with the Gumbel fit, probes and example images",
        plots=(Plot("fig3_hist", "hist", x="logp_db_per_dim", y=("density", "gumbel_density", "exact_density"),
                    template="step",
                    title="Figure 3: histogram of the test images' log p and the fitted Gumbel density",
                    x_label="log p (dB/dim)",
                    y_label="density (per dB/dim); the fit: its probability of each bin / width"),),
        report=(Report("pdf", "fig3.rst", "density", "Figure 3",
                       data={"gumbel": GUMBEL, "probes": PROBES}),)),
    Stage(
        name="fig678", entry="dsm.figures.fig678", reads=("figures.fig678",),
        inputs={"logp": FULL_LOGP, "data": IMAGES}, outputs={**FIG678, "selection": FIG678_SELECTION},
        args="--logp {input.logp} --data {input.data} --highest {output.highest}"
             " --lowest {output.lowest} --spaced {output.spaced} --selection {output.selection}",
        resources="light",
        doc="Figures 6-8: grids of the highest, lowest and evenly spaced log p test images",
        report=tuple(Report(kind, f"fig{k}.rst", "density", f"Figure {k}",
                            data={"selection": FIG678_SELECTION})
                     for k, kind in zip((6, 7, 8), FIG678))),
    Stage(
        name="table2", entry="dsm.figures.table2",
        reads=("table2", "evaluate.batch_size", "resources.evaluate.threads"),
        inputs={"logp": FULL_LOGP, "data": IMAGES, "model": FULL_MODEL, "norm": FULL_NORM},
        outputs={**TABLE2, "metrics": TABLE2_METRICS}, directories=("metrics",),
        args="--logp {input.logp} --data {input.data} --model {input.model} --norm {input.norm}"
             " --csv {output.csv} --md {output.md} --tex {output.tex} --metrics {output.metrics}",
        resources="evaluate",
        doc="Table 2: test-set NLL in bits/dim (8-bit shift, dequantization, exact entropy on field)",
        metrics=("metrics",),
        report=(Report("csv", "table2.rst", "density", "Table 2", data={"metrics": TABLE2_METRICS}),)),
    Stage(
        name="bias", entry="dsm.analysis.bias", reads=("bias", "resources.evaluate.threads"),
        inputs={"model": FULL_MODEL, "norm": FULL_NORM, "data": IMAGES},
        outputs={"table": "results/{scale}/bias.csv", "totals": "results/{scale}/bias.json",
                 "metrics": BIAS_METRICS}, directories=("metrics",),
        args="--model {input.model} --norm {input.norm} --data {input.data}"
             " --out {output.table} --totals {output.totals} --metrics {output.metrics}",
        resources="evaluate", benchmark=True,
        doc="bias budget of the full model against the exact density (field): where log p's error comes from",
        metrics=("metrics",)),
    Stage(
        name="fig_bias", entry="dsm.figures.bias", subcommand="fig-bias", reads=(),
        inputs={"table": "results/{scale}/bias.csv", "totals": "results/{scale}/bias.json"},
        outputs={"pdf": "figures/bias.pdf"},
        args="--table {input.table} --totals {input.totals} --out {output.pdf}", resources="light",
        doc="the bias budget figure",
        report=(Report("pdf", "bias.rst", "bias", "Bias budget",
                       data={"metrics": BIAS_METRICS, "totals": "results/{scale}/bias.json"}),)),
    Stage(
        name="compare", entry="dsm.analysis.generalization", reads=("split", "seeds"),
        inputs={"tables": Each(LOGP, LOGP_DIR)},
        outputs={"metrics": FIG2_METRICS, "details": FIG2_DETAILS, "by_n": FIG2_BY_N},
        directories=("metrics",),
        args=f"--logp {LOGP_DIR} --metrics {{output.metrics}} --details {{output.details}}"
             " --by-n {output.by_n}", resources="light",
        doc="Figure 2's metrics: do the A and B models agree, per N (mean and spread over seeds)",
        metrics=("metrics",),
        plots=(Plot("fig2_pearson_r", "by_n", x="N", y="pearson_r", template="logx",
                    title="Figure 2: do models trained on disjoint sets A and B agree? (Pearson r)",
                    x_label="N (training images per model)",
                    y_label="Pearson r of log p_A and log p_B (own training images)"),
               Plot("fig2_rms", "by_n", x="N", y="rms_db", template="loglog",
                    title="Figure 2: RMS of log p_A - log p_B on the models' own training images",
                    x_label="N (training images per model)",
                    y_label="RMS of log p_A - log p_B (dB/dim)")),
        report=(Report("by_n", "fig2_by_N.rst", "generalization", "Figure 2",
                       data={"metrics": FIG2_METRICS}),)),
    Stage(
        name="fig2", entry="dsm.figures.fig2", reads=("figures.fig2", "seeds"),
        inputs={"tables": Each(LOGP, LOGP_DIR), "details": FIG2_DETAILS},
        outputs={"pdf": "figures/fig2.pdf"},
        args=f"--logp {LOGP_DIR} --details {{input.details}} --out {{output.pdf}}", resources="light",
        doc="Figure 2: log p_A against log p_B per N (the first replicate)",
        report=(Report("pdf", "fig2.rst", "generalization", "Figure 2",
                       data={"metrics": FIG2_METRICS}),)),
    Stage(
        name="fig1", entry="dsm.figures.fig1", reads=("fig1", "resources.train.threads"),
        inputs={}, outputs={"pdf": "results/{scale}/fig1/fig1.pdf",
                            "metrics": FIG1_METRICS,
                            "details": "results/{scale}/fig1/details.json"},
        args="--out results/{scale}/fig1", resources="train", exec_=True, benchmark=True,
        doc="Figure 1: single vs dual score matching on a Gaussian scale mixture (trains 2 models)",
        metrics=("metrics",)),
    Stage(
        name="table1", entry="dsm.analysis.denoising",
        reads=("figures.table1", "resources.evaluate.threads"),
        inputs={"energy": FULL_MODEL, "score": FULL_SCORE_MODEL, "data": IMAGES},
        outputs={"csv": TABLE1 + ".csv", "md": TABLE1 + ".md", "tex": TABLE1 + ".tex",
                 "json": TABLE1 + ".json", "metrics": TABLE1_METRICS}, directories=("metrics",),
        args="--energy {input.energy} --score {input.score} --data {input.data} --out " + TABLE1,
        resources="evaluate", benchmark=True,
        doc="Table 1: denoising PSNR of the energy and the score model across noise levels",
        metrics=("metrics",),
        report=(Report("csv", "table1.rst", "noise levels", "Table 1", data={"metrics": TABLE1_METRICS}),)),
    Stage(
        name="dimensionality", entry="dsm.analysis.dimensionality",
        reads=("figures.fig5", "resources.evaluate.threads"),
        inputs={"model": FULL_MODEL, "norm": FULL_NORM, "data": IMAGES, "examples": EXAMPLES},
        outputs={"curves": FIG5_DIR + "/curves.parquet", "details": FIG5_DIR + "/details.json",
                 "metrics": FIG5_DIR + "/metrics.json", "d_eff": FIG5_DIR + "/d_eff.csv"},
        args="--model {input.model} --norm {input.norm} --data {input.data} --examples {input.examples}"
             " --curves {output.curves} --details {output.details} --metrics {output.metrics}"
             " --d-eff {output.d_eff}",
        resources="evaluate", benchmark=True,
        doc="Figure 5's curves: E[log p(y,t)|x] and d_eff by eqs. 11 and 12 across t",
        metrics=("metrics",),
        plots=(Plot("fig5_d_eff", "d_eff", x="t",
                    y=("d_eff_eq11", "d_eff_eq12", "exact_d_eff_eq11", "exact_d_eff_population"),
                    template="logx",
                    title="Figure 5: effective dimensionality of the test-average curve, eq. 11, eq. 12 and exact",
                    x_label="noise variance t",
                    y_label="effective dimensionality d_eff (dimensions)"),)),
    Stage(
        name="fig5", entry="dsm.figures.fig5", reads=(),
        inputs={"curves": FIG5_DIR + "/curves.parquet", "details": FIG5_DIR + "/details.json",
                "data": IMAGES},
        outputs={"pdf": "figures/fig5.pdf"},
        args="--curves {input.curves} --details {input.details} --data {input.data} --out {output.pdf}",
        resources="light",
        doc="Figure 5 (right): log p and effective dimensionality against the noise level",
        report=(Report("pdf", "fig5.rst", "noise levels", "Figure 5",
                       data={"metrics": FIG5_DIR + "/metrics.json"}),)),
    Stage(
        name="contrast", entry="dsm.analysis.contrast",
        reads=("figures.fig4", "resources.evaluate.threads"),
        inputs={"model": FULL_MODEL, "norm": FULL_NORM, "data": IMAGES, "examples": EXAMPLES,
                "logp": FULL_LOGP},
        outputs={"affine": FIG4_DIR + "/affine.parquet", "sparsity": FIG4_DIR + "/sparsity.parquet",
                 "details": FIG4_DIR + "/details.json", "metrics": FIG4_DIR + "/metrics.json"},
        args="--model {input.model} --norm {input.norm} --data {input.data} --examples {input.examples}"
             " --logp {input.logp} --affine {output.affine} --sparsity {output.sparsity}"
             " --details {output.details} --metrics {output.metrics}",
        resources="evaluate", benchmark=True,
        doc="Figure 4's data: log p of a (x - mean) + b over contrast and brightness; log p vs sparsity",
        metrics=("metrics",)),
    Stage(
        name="fig4", entry="dsm.figures.fig4", reads=(),
        inputs={"affine": FIG4_DIR + "/affine.parquet", "sparsity": FIG4_DIR + "/sparsity.parquet",
                "details": FIG4_DIR + "/details.json"},
        outputs={"pdf": "figures/fig4.pdf"},
        args="--affine {input.affine} --sparsity {input.sparsity} --details {input.details} --out {output.pdf}",
        resources="light",
        doc="Figure 4: contrast and brightness, and sparsity, against log p",
        report=(Report("pdf", "fig4.rst", "noise levels", "Figure 4",
                       data={"metrics": FIG4_DIR + "/metrics.json"}),)),
    Stage(
        name="estimators", entry="dsm.analysis.estimators",
        reads=("estimators", "resources.evaluate.threads"),
        inputs={"model": FULL_MODEL, "norm": FULL_NORM, "data": IMAGES},
        outputs={"csv": ESTIMATORS_CSV, "images": ESTIMATORS_IMAGES},
        args="--model {input.model} --norm {input.norm} --data {input.data}"
             " --out {output.csv} --images-out {output.images}",
        resources="evaluate", benchmark=True,
        doc="one-shot log p against the denoising bound, the ODE and the SDE estimator: bias, spread, cost"),
    Stage(
        name="fig_estimators", entry="dsm.figures.estimators", subcommand="fig-estimators", reads=(),
        inputs={"csv": ESTIMATORS_CSV, "images": ESTIMATORS_IMAGES},
        outputs={"pdf": "figures/estimators.pdf"},
        args="--csv {input.csv} --images {input.images} --out {output.pdf}", resources="light",
        doc="the estimators figure: error against the exact log p and cost per image",
        report=(Report("pdf", "estimators.rst", "density", "Estimators of log p"),)),
    Stage(
        name="publish_fig1", entry=None, reads=(),
        inputs={"pdf": "results/{scale}/fig1/fig1.pdf"}, outputs={"pdf": "figures/fig1.pdf"},
        # copied beside it, then renamed: a kill never leaves a partial figure in place
        args="", command="cp {input.pdf} {output.pdf}.part && mv -f {output.pdf}.part {output.pdf}",
        resources="light",
        doc="Figure 1 of the active scale under figures/",
        report=(Report("pdf", "fig1.rst", "method", "Figure 1", data={"metrics": FIG1_METRICS}),)),
]}

# What `snakemake all` (and the README's `make figures`) builds: the paper's figures.
TARGETS = ("figures/fig1.pdf", "figures/fig2.pdf", "figures/fig3.pdf", "figures/fig4.pdf",
           "figures/fig5.pdf", *FIG678.values(), "figures/bias.pdf", GUMBEL, *TABLE2.values(),
           TABLE1 + ".md",
           "figures/estimators.pdf")


def stage(name: str) -> Stage:
    return STAGES[name]


def check_table(root=".") -> None:
    """Consistency of the table itself (a test runs it): every input is produced by an
    earlier stage or is a file of the repository; entry modules exist; placeholders of
    commands name existing inputs and outputs."""
    produced: dict[str, str] = {}
    for s in STAGES.values():
        if s.entry is not None and not s.code(root):
            raise ValueError(f"stage {s.name}: entry module {s.entry} not found")
        for name, p in s.inputs.items():
            pattern = p.pattern if isinstance(p, Each) else p
            if pattern not in produced:
                raise ValueError(f"stage {s.name}: input {name} = {pattern} is no earlier stage's output")
        for ref in _PLACEHOLDER.findall(s.full_command()):
            kind, _, key = ref.partition(".")
            if kind == "input" and key not in s.inputs or kind == "output" and key not in s.outputs:
                raise ValueError(f"stage {s.name}: command names unknown {ref}")
        for p in s.outputs.values():
            if p in produced:
                raise ValueError(f"stage {s.name}: output {p} is also produced by {produced[p]}")
            produced[p] = s.name
        _check_presentation(s, produced, root)
    ids = [p.id for s in STAGES.values() for p in s.plots]
    if len(ids) != len(set(ids)):
        raise ValueError(f"plot ids are not unique: {sorted(ids)}")
    if not Path(root, PARAMS_FILE).is_file():
        raise ValueError(f"{PARAMS_FILE} not found under {root}")


def _check_presentation(s: Stage, produced: dict, root) -> None:
    """metrics/plots/report name outputs of the stage; captions, categories and plot
    templates exist; a caption's data is an output of this or an earlier stage."""
    for name in s.metrics:
        if name not in s.outputs:
            raise ValueError(f"stage {s.name}: metrics names unknown output {name}")
    for p in s.plots:
        if p.output not in s.outputs:
            raise ValueError(f"stage {s.name}: plot {p.id} names unknown output {p.output}")
        if p.template not in DVC_TEMPLATES and not Path(root, plot_template(p)).is_file():
            raise ValueError(f"stage {s.name}: plot {p.id}: template {plot_template(p)} not found")
    for r in s.report:
        if r.output not in s.outputs:
            raise ValueError(f"stage {s.name}: report names unknown output {r.output}")
        if not Path(root, REPORT_DIR, r.caption).is_file():
            raise ValueError(f"stage {s.name}: caption {REPORT_DIR}/{r.caption} not found")
        if (r.output in s.directories) != bool(r.patterns):
            raise ValueError(f"stage {s.name}: report of {r.output}: patterns are needed for a "
                             "directory and only for one")
        if r.category not in REPORT_CATEGORIES:
            raise ValueError(f"stage {s.name}: report category {r.category!r} is not one of "
                             f"{list(REPORT_CATEGORIES)}")
        for key, pattern in r.data.items():
            if pattern not in produced:
                raise ValueError(f"stage {s.name}: caption data {key} = {pattern} is no stage's output")
    data = [(k, v) for r in s.report for k, v in r.data.items()]
    if len(dict(data)) != len(set(data)):
        raise ValueError(f"stage {s.name}: caption data names two different files alike: {data}")


REPORT_DIR = "workflow/report"      # captions (RST + Jinja) and the workflow description
PLOT_DIR = "workflow/plots"         # Vega-Lite templates of DVC plots


def plot_template(p: Plot) -> str:
    """The template as dvc.yaml names it: a built-in name, or a file of the repository."""
    return p.template if p.template in DVC_TEMPLATES else f"{PLOT_DIR}/{p.template}.json"


# DVC: what `dvc metrics show/diff` and `dvc plots show` read, collected from the table.
METRICS = tuple(s.outputs[name] for s in STAGES.values() for name in s.metrics)
PLOTS = tuple((s, p) for s in STAGES.values() for p in s.plots)
