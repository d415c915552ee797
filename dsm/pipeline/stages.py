"""The stage table: every pipeline stage written once.

Snakemake (``workflow/rules/stages.smk``: one rule per entry, defined in a loop), DVC
(``dvc.yaml``, generated from this table by ``dsm sync dvc-yaml``) and the ``dsm``
command line (its pipeline subcommands) all read it, so they cannot disagree about a
stage's command, inputs, outputs, parameters or code. Adding a stage is its function and
its entry here (docs/DESIGN.md, "Adding a stage").

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
  GPUs); the group's ``threads`` is also the stage's torch thread count (dsm.runtime);
* ``priority``: Snakemake's job priority (long jobs first, so the cores stay busy to the end);
* ``local``: a copy, run by Snakemake on the submitting host (``localrule``), not on a cluster.

The ``dsm`` subcommand of a stage is derived from the same entry (``dsm/cli_pipeline.py``):
its options are the ``--flags`` of ``args`` (given a value in the ``args`` of every stage
that runs the subcommand: required; given without one: a flag; ``{N}`` and ``{seed}``:
integers; ``{split}``: A or B), with the help texts of ``options`` (or of
:data:`OPTION_HELP`), plus the options that only ``options`` names (``--device``). The
subcommand calls ``<entry>.<subcommand>_from_params(cfg, **options)`` (or ``call``), ``cfg``
the scale section. ``doc`` is the subcommand's one-line help, ``description`` its
``--help`` text. Several stages may run one subcommand (``train``, ``train_full``,
``train_score``): the first in the table declares its texts and options.

What a reader sees of a stage's outputs is declared on the same entry (names of outputs):

* ``metrics``: outputs that are DVC metrics (``dvc metrics show/diff``): directories of
  headline files (:mod:`dsm.headline`), one quantity per file named with its unit
  (:data:`dsm.pipeline.report.METRIC_UNITS`), keys ``value``, ``se``, ``ci95_lo``,
  ``ci95_hi``, ``n``; everything else goes to a details file;
* ``plots``: :class:`Plot` entries, DVC plots (``dvc plots show``) of a CSV output;
* ``report``: :class:`Report` entries, outputs shown in ``snakemake --report`` with a
  caption (``workflow/report/<caption>``), a category (:data:`REPORT_CATEGORIES`) and
  the JSON files the caption quotes numbers from.

Wildcards: a stage whose outputs contain ``{seed}``, ``{N}`` and ``{split}`` runs once per
A/B model (Snakemake wildcards, DVC ``matrix``): seed over the scale's ``seeds`` (one
replicate per base seed), N over ``split.N``, split over A and B. A stage whose outputs do
not contain ``{scale}`` belongs to the active scale (params.yaml ``run``, or Snakemake's
``--config scale=NAME``): the ``publish_*`` stages, which copy each figure of the active
scale, ``figures/<scale>/<name>.pdf``, to ``figures/<name>.pdf``, so that every scale keeps
its own figures and ``snakemake figures/fig2.pdf`` builds the active scale's.
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
class Opt:
    """An option of a stage's ``dsm`` subcommand (:attr:`Stage.options`, keyed by its flag,
    or by its name for a positional argument): the help text, and what ``args`` cannot show.

    ``dest``: the keyword of the called function (default: the flag's name, lower case,
    ``-`` as ``_``); ``a.b`` puts the value under key ``b`` of the dict keyword ``a``.
    ``required``: ``None`` derives it (given a value in every stage's ``args``);
    ``False`` keeps an output optional for a user who runs the subcommand alone."""

    help: str
    type: type | None = None
    choices: tuple = ()
    dest: str | None = None
    required: bool | None = None
    default: object = None
    metavar: str | None = None


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
    local: bool = False               # a copy: Snakemake runs it on the submitting host
    priority: int = 0                 # Snakemake `priority:` (PRIORITY): long jobs first
    doc: str = ""                     # one line: the subcommand's help
    metrics: tuple[str, ...] = ()      # output names that are DVC metrics (headline numbers)
    plots: tuple[Plot, ...] = ()       # DVC plots of outputs
    report: tuple[Report, ...] = ()    # outputs shown in `snakemake --report`
    # the `dsm` subcommand (dsm/cli_pipeline.py): see the module's docstring
    description: str = ""             # `dsm <subcommand> --help` (default: doc)
    options: dict = field(default_factory=dict)  # flag -> help text or Opt
    call: str | None = None           # "module:function" if not entry.<subcommand>_from_params
    params_optional: bool = False     # no params file: the schema's defaults of what it reads

    # --- derived --------------------------------------------------------------------
    @property
    def wildcards(self) -> tuple[str, ...]:
        """The wildcards every output has; a placeholder that only some outputs have is
        filled with the active scale, as in the outputs without it."""
        sets = [set(_PLACEHOLDER.findall(p)) for p in self.outputs.values()]
        found = set.intersection(*sets) if sets else set()
        return tuple(w for w in ("scale", *MODEL_WILDCARDS) if w in found)

    @property
    def per_model(self) -> bool:
        return all(w in self.wildcards for w in MODEL_WILDCARDS)

    def code(self, root=".") -> list[str]:
        """The stage's code dependencies: files of its entry module's import closure."""
        return code_files(self.entry, root) if self.entry else []

    @property
    def cli(self) -> str | None:
        """The ``dsm`` subcommand the stage runs (None: a shell ``command``)."""
        return None if self.command is not None else (self.subcommand or self.name)

    def full_command(self) -> str:
        """The command in neutral syntax ({input.x}, {output.x}, {scale}, {N}, {split})."""
        if self.command is not None:
            return self.command
        return f"dsm {self.cli} --params {PARAMS_FILE} --scale {{scale}} {self.args}".strip()

    def log(self) -> str:
        return self._under("logs", ".log")

    def benchmark_file(self) -> str:
        return self._under("benchmarks", ".tsv")

    def _under(self, top: str, suffix: str) -> str:
        """``<top>/{scale}/<name>[/seed{seed}/N{N}-{split}]<suffix>``: per scale also for a
        stage of the active scale (its {scale} is filled in), so ``dsm cost`` finds every job
        of a scale under ``benchmarks/<scale>/``."""
        model = "/seed{seed}/N{N}-{split}" if self.per_model else ""
        return f"{top}/{{scale}}/{self.name}{model}{suffix}"


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
GUMBEL = "results/{scale}/full/gumbel"             # headline numbers: loc_db_per_dim.json, ...
GUMBEL_DETAILS = "results/{scale}/full/gumbel-details.json"
PROBES = "results/{scale}/full/probes.json"
TABLE2 = {"csv": "results/{scale}/table2.csv", "md": "results/{scale}/table2.md",
          "tex": "results/{scale}/table2.tex"}
TABLE2_METRICS = "results/{scale}/table2_metrics"
PEERS_LOGP = "results/{scale}/peers/logp-test.parquet"
PEERS_INFO = "results/{scale}/peers/peers.json"
FIG678_SELECTION = "results/{scale}/fig678.json"
TABLE1 = "results/{scale}/table1"
TABLE1_METRICS = TABLE1 + "_metrics"
FIG5_DIR = "results/{scale}/fig5"
FIG4_DIR = "results/{scale}/fig4"
FIG5_METRICS = FIG5_DIR + "/metrics"
FIG4_METRICS = FIG4_DIR + "/metrics"
BIAS_METRICS = "results/{scale}/bias_metrics"
FIG1_METRICS = "results/{scale}/fig1/metrics"
FIG2_METRICS = "results/{scale}/fig2_metrics"
FIG2_DETAILS = "results/{scale}/fig2_details.json"
FIG2_BY_N = "results/{scale}/fig2_by_N.csv"
ESTIMATORS_CSV = "results/{scale}/estimators.csv"
ESTIMATORS_IMAGES = "results/{scale}/estimators-images.parquet"


def figure(name: str) -> str:
    """A figure of a scale; ``figures/<name>.pdf`` is the active scale's copy (``publish_<name>``)."""
    return f"figures/{{scale}}/{name}.pdf"


FIG678 = {"highest": figure("fig6"), "lowest": figure("fig7"), "spaced": figure("fig8")}
# the figures published for the active scale, in the paper's order
FIGURES = ("fig1", "fig2", "fig3", "fig4", "fig5", "fig6", "fig7", "fig8", "bias", "estimators")

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
# copied beside the output, then renamed: a kill never leaves a partial file in place
COPY = "cp {input.pdf} {output.pdf}.part && mv -f {output.pdf}.part {output.pdf}"
# Snakemake priorities: among the jobs ready to run, the longest start first (Figure 1's
# two trainings and the full models, then the A/B models and the split that gates them),
# so the short analyses fill the cores at the end instead of one long job running alone.
LONGEST, LONG = 20, 10

# Help of the options that mean the same in every subcommand; a stage's `options` overrides.
OPTION_HELP = {
    "--data": "prepared store directory (from `dsm prepare`)",
    "--splits": "splits Parquet (from `dsm split`)",
    "--model": "trained energy model (model.pt)",
    "--norm": "its normalization JSON (from `dsm normalize`)",
    "--logp": "per-image table of the test set (from `dsm evaluate --full`)",
    "--examples": "reference images JSON (from `dsm examples`)",
    "--N": "training set size",
    "--split": "which training set",
    "--device": "override the scale's device: auto, cpu, cuda, cuda:1 ...",
}

STAGES: dict[str, Stage] = {s.name: s for s in [
    Stage(
        name="prepare", entry="dsm.data.prepare", reads=("data",),
        inputs={}, outputs={"images": IMAGES}, directories=("images",),
        args="--out {output.images}", resources="data",
        doc="prepare a data source into the image store (train/ and test/ parts)",
        description="Prepare the data source of the scale (its data.* keys) into the store OUT: "
                    "OUT/train and OUT/test.",
        options={"--out": "output directory of the prepared store"},
        call="dsm.cli_pipeline:prepare"),
    Stage(
        name="split", entry="dsm.data.splits", reads=("split",),
        inputs={"data": IMAGES}, outputs={"splits": SPLITS_FILE},
        args="--data {input.data} --out {output.splits}", resources="light", priority=LONG,
        doc="write the disjoint nested A/B training splits",
        description="A = the first N, B = the last N training images, for each N of split.N.",
        options={"--out": "output Parquet file of the splits"},
        call="dsm.cli_pipeline:split"),
    Stage(
        name="train", entry="dsm.train", reads=TRAIN_READS,
        inputs={"data": IMAGES, "splits": SPLITS_FILE}, outputs={"model": MODEL},
        args="--data {input.data} --splits {input.splits} --N {N} --split {split} --seed {seed}"
             " --out models/{scale}/seed{seed}/N{N}-{split}",
        resources="train", exec_=True, priority=LONG,
        doc="train one model (set A or B of size N, or all images: --full); resumes from OUT",
        description="Train one model on split SPLIT of size N (or, with --full, on every training "
                    "image). Rerunning the same command resumes from OUT/checkpoints/latest (if the "
                    "config hash matches); SIGTERM or SIGUSR1 writes a checkpoint and exits with "
                    "128+signal. CPU threads: resources.train.threads of the scale.",
        options={"--splits": "splits Parquet (from `dsm split`); not with --full",
                 "--seed": "base seed of the replicate (one of the scale's `seeds`); the model's own "
                           "seed is derived from it, N and the split (train.pairing)",
                 "--full": "train on the whole training set (base seed: full.seed of the scale)",
                 "--kind": Opt("override model.kind (score: the score-only baseline of Table 1)",
                               choices=("energy", "score")),
                 "--out": "run directory (checkpoints, metrics, model.pt)",
                 "--device": OPTION_HELP["--device"]},
        call="dsm.cli_pipeline:train"),
    Stage(
        name="train_full", entry="dsm.train", subcommand="train", reads=TRAIN_READS + ("full",),
        inputs={"data": IMAGES}, outputs={"model": FULL_MODEL},
        args="--data {input.data} --full --out models/{scale}/full",
        resources="train", exec_=True, priority=LONGEST,
        doc="the full energy model: every training image, the same recipe"),
    Stage(
        name="train_score", entry="dsm.train", subcommand="train", reads=TRAIN_READS + ("full",),
        inputs={"data": IMAGES}, outputs={"model": FULL_SCORE_MODEL},
        args="--data {input.data} --full --kind score --out models/{scale}/full-score",
        resources="train", exec_=True, priority=LONGEST,
        doc="the score-only baseline (Table 1): the full model's data, recipe and seed"),
    Stage(
        name="normalize", entry="dsm.evaluate",
        reads=("evaluate.n_norm", "evaluate.batch_size", "evaluate.noise_seed",
               "evaluate.norm_entropy", "evaluate.norm_t", "resources.evaluate.threads"),
        inputs={"model": MODEL, "data": IMAGES}, outputs={"norm": NORM},
        args="--model {input.model} --data {input.data} --out {output.norm}",
        resources="evaluate",
        doc="the model's normalization constant from held-out images at T = evaluate.norm_t",
        description="The constant c of U + c = -log p: c = H - mean U(x + sqrt(T) z, T) over the "
                    "first evaluate.n_norm test images, one noise draw z each (evaluate.noise_seed), "
                    "at T = evaluate.norm_t (null: the model's training t_max); H is the entropy of "
                    "a Gaussian for the noisy images at T (evaluate.norm_entropy: isotropic, "
                    "data_variance or data_covariance).",
        options={"--model": "trained model file (model.pt)",
                 "--data": "prepared store directory (its test part is used)",
                 "--out": "output JSON", "--device": OPTION_HELP["--device"]}),
    Stage(
        name="normalize_full", entry="dsm.evaluate", subcommand="normalize",
        reads=("evaluate.n_norm", "evaluate.batch_size", "evaluate.noise_seed",
               "evaluate.norm_entropy", "evaluate.norm_t", "resources.evaluate.threads"),
        inputs={"model": FULL_MODEL, "data": IMAGES}, outputs={"norm": FULL_NORM},
        args="--model {input.model} --data {input.data} --out {output.norm}",
        resources="evaluate",
        doc="the full model's normalization constant",
        report=(Report("norm", "full_norm.rst", "density", "Full model", data={"norm": FULL_NORM}),)),
    Stage(
        name="evaluate", entry="dsm.evaluate",
        reads=("evaluate.max_per_set", "evaluate.batch_size", "resources.evaluate.threads"),
        inputs={"model": MODEL, "norm": NORM, "data": IMAGES, "splits": SPLITS_FILE},
        outputs={"logp": LOGP},
        args="--model {input.model} --norm {input.norm} --data {input.data}"
             " --splits {input.splits} --N {N} --split {split} --out {output.logp}",
        resources="evaluate",
        doc="per-image log p of a model into Parquet",
        description="One-shot log p at t = 0 on the model's own, the other set's and test images "
                    "(at most evaluate.max_per_set of each); with --full, on every test image (a "
                    "model trained with `dsm train --full`).",
        options={"--model": "trained model file (model.pt)",
                 "--splits": "splits Parquet (from `dsm split`); not with --full",
                 "--full": "every test image, streamed",
                 "--out": "output Parquet", "--device": OPTION_HELP["--device"]},
        call="dsm.cli_pipeline:evaluate"),
    Stage(
        name="evaluate_full", entry="dsm.evaluate", subcommand="evaluate",
        reads=("evaluate.batch_size", "resources.evaluate.threads"),
        inputs={"model": FULL_MODEL, "norm": FULL_NORM, "data": IMAGES},
        outputs={"logp": FULL_LOGP},
        args="--model {input.model} --norm {input.norm} --data {input.data} --full --out {output.logp}",
        resources="evaluate",
        doc="per-image log p of the full model on every test image",
        report=(Report("logp", "full_logp.rst", "density", "Full model", data={"norm": FULL_NORM}),)),
    Stage(
        name="examples", entry="dsm.analysis.examples", reads=("figures.examples",),
        inputs={"logp": FULL_LOGP}, outputs={"examples": EXAMPLES},
        args="--logp {input.logp} --out {output.examples}", resources="light",
        doc="reference test images evenly spaced in log p (Figures 3, 4, 5)",
        description="From the full model's test-set table, figures.examples.count images at evenly "
                    "spaced log p (JSON).",
        options={"--out": "output JSON"},
        report=(Report("examples", "examples.rst", "density", "Full model",
                       data={"examples": EXAMPLES}),)),
    Stage(
        name="gumbel", entry="dsm.analysis.gumbel", reads=("gumbel",),
        inputs={"logp": FULL_LOGP},
        outputs={"gumbel": GUMBEL, "details": GUMBEL_DETAILS}, directories=("gumbel",),
        args="{input.logp} --out {output.gumbel} --details {output.details}", resources="light",
        doc="maximum-likelihood Gumbel fit of per-image log p (and its rivals)",
        description="Fit scipy.stats.gumbel_r to one column of a per-image table by maximum "
                    "likelihood; 95 % bootstrap intervals (gumbel.bootstrap resamples, gumbel.seed); "
                    "the same fit of gumbel_l, norm and skewnorm with AIC and the Kolmogorov-Smirnov "
                    "statistic; the sample mean (entropy estimate), range and 8-bit bits/dim. Without "
                    "a params file the schema's defaults are used.",
        options={"table": Opt("per-image table (e.g. results/<scale>/full/logp-test.parquet)",
                              metavar="IN.parquet", dest="logp"),
                 "--out": "output directory of the headline numbers (DVC metrics), one file per "
                          "quantity named with its unit: loc_db_per_dim.json, scale_db_per_dim.json, "
                          "entropy_db_per_dim.json {value, ci95_lo, ci95_hi, n}, nll_bits_per_dim.json",
                 "--details": Opt("full report JSON: every family's fit, AIC, KS, bootstrap settings "
                                  "(default: OUT-details.json beside OUT)", required=False),
                 "--column": Opt("column to fit (default: logp_db_per_dim)", default="logp_db_per_dim")},
        params_optional=True,
        metrics=("gumbel",),
        report=(Report("details", "gumbel.rst", "density", "Gumbel fit",
                       data={"gumbel": GUMBEL, "details": GUMBEL_DETAILS}),)),
    Stage(
        name="probes", entry="dsm.analysis.probes",
        reads=("figures.fig3.noise_images", "figures.fig3.noise_seed", "resources.evaluate.threads"),
        inputs={"model": FULL_MODEL, "norm": FULL_NORM, "data": IMAGES}, outputs={"probes": PROBES},
        args="--model {input.model} --norm {input.norm} --data {input.data} --out {output.probes}",
        resources="evaluate",
        doc="log p of uniform-noise and constant images under a model (Figure 3)",
        description="Evaluate the full model (with its normalization constant) on "
                    "figures.fig3.noise_images uniform-noise images in [0, 1] and on the constant 0.5 "
                    "image, with the test images' shape (JSON).",
        options={"--data": "prepared store directory (its test part gives the shape)",
                 "--out": "output JSON", "--device": OPTION_HELP["--device"]}),
    Stage(
        name="fig3", entry="dsm.figures.fig3", reads=("figures.fig3.bins", "figures.fig3.lim"),
        inputs={"logp": FULL_LOGP, "gumbel": GUMBEL_DETAILS, "examples": EXAMPLES, "probes": PROBES,
                "data": IMAGES},
        outputs={"pdf": figure("fig3"), "hist": "results/{scale}/fig3/hist.csv"},
        args="--logp {input.logp} --gumbel {input.gumbel} --examples {input.examples}"
             " --probes {input.probes} --data {input.data} --out {output.pdf} --hist {output.hist}",
        resources="light",
        doc="Figure 3: histogram of test log p, Gumbel fit, images along it",
        description="Plot the full model's test log p with the Gumbel fit (dsm gumbel), the "
                    "reference images (dsm examples) and the probes (dsm probes).",
        options={"--gumbel": "Gumbel fit details JSON (dsm gumbel --details)",
                 "--probes": "probes JSON (dsm probes)",
                 "--data": "prepared store directory (the pixels)",
                 "--out": "output PDF",
                 "--hist": Opt("output CSV: the histogram drawn and the fit per bin (DVC plot)",
                               required=False)},
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
        doc="Figures 6-8: highest, lowest, evenly spaced log p test images",
        description="Grids (figures.fig678.rows x cols) of test images labelled with their log p in "
                    "dB/dim.",
        options={"--data": "prepared store directory (the pixels)",
                 "--highest": "output PDF of Figure 6", "--lowest": "output PDF of Figure 7",
                 "--spaced": "output PDF of Figure 8",
                 "--selection": Opt("output JSON: per figure the number of images and the first and "
                                    "last one", required=False)},
        report=tuple(Report(kind, f"fig{k}.rst", "density", f"Figure {k}",
                            data={"selection": FIG678_SELECTION})
                     for k, kind in zip((6, 7, 8), FIG678))),
    Stage(
        name="peers", entry="dsm.analysis.peers", reads=("peers", "resources.evaluate.threads"),
        inputs={"data": IMAGES}, outputs={"logp": PEERS_LOGP, "info": PEERS_INFO},
        args="--data {input.data} --logp {output.logp} --info {output.info}",
        resources="evaluate",
        doc="Table 2's peers: a Gaussian mixture and a Gaussian on the same images",
        description="Fit a full-covariance Gaussian mixture (peers.gmm) and a single Gaussian on "
                    "peers.n_fit training images; exact log p of every test image.",
        options={"--logp": "output Parquet: one row per test image and peer",
                 "--info": "output JSON: fits, CPU seconds, parameter counts, test NLL"}),
    Stage(
        name="table2", entry="dsm.figures.table2",
        reads=("table2", "evaluate.batch_size", "resources.evaluate.threads"),
        inputs={"logp": FULL_LOGP, "data": IMAGES, "model": FULL_MODEL, "norm": FULL_NORM,
                "peers": PEERS_LOGP, "peers_info": PEERS_INFO},
        outputs={**TABLE2, "metrics": TABLE2_METRICS}, directories=("metrics",),
        args="--logp {input.logp} --data {input.data} --model {input.model} --norm {input.norm}"
             " --peers {input.peers} --peers-info {input.peers_info} --benchmarks benchmarks/{scale}"
             " --csv {output.csv} --md {output.md} --tex {output.tex} --metrics {output.metrics}",
        resources="evaluate",
        doc="Table 2: test-set NLL in bits/dim (8-bit shift, dequantization, exact entropy on field), "
            "the full model against a GMM and a Gaussian",
        description="Mean test NLL (continuous density + 8-bit shift; uniform dequantization on "
                    "8-bit sources; exact entropy and the model's excess on exact sources) as CSV, "
                    "Markdown and LaTeX, with the peers (dsm peers): their NLL, the paired difference "
                    "model - peer, each model's parameters and CPU seconds.",
        options={"--model": "the table's model (evaluated for dequantization, 8-bit only)",
                 "--csv": "output CSV", "--md": "output Markdown table", "--tex": "output LaTeX table",
                 "--metrics": Opt("output directory of the headline numbers (DVC metrics): one file "
                                  "per row that applies, <row>_bits_per_dim.json {value, se, n}",
                                  required=False),
                 "--peers": Opt("the peers' per-image table (dsm peers): their rows", required=False),
                 "--peers-info": Opt("the peers' JSON (fits and costs)", required=False),
                 "--benchmarks": Opt("directory of Snakemake's benchmark files (the model's CPU "
                                     "seconds, when present)", required=False),
                 "--device": OPTION_HELP["--device"]},
        metrics=("metrics",),
        report=(Report("csv", "table2.rst", "density", "Table 2", data={"metrics": TABLE2_METRICS}),)),
    Stage(
        name="bias", entry="dsm.analysis.bias", reads=("bias", "resources.evaluate.threads"),
        inputs={"model": FULL_MODEL, "norm": FULL_NORM, "data": IMAGES},
        outputs={"table": "results/{scale}/bias.csv", "totals": "results/{scale}/bias.json",
                 "metrics": BIAS_METRICS}, directories=("metrics",),
        args="--model {input.model} --norm {input.norm} --data {input.data}"
             " --out {output.table} --totals {output.totals} --metrics {output.metrics}",
        resources="evaluate",
        doc="bias budget of a model against the exact density (field)",
        description="Split the mean error of log p into the normalization's, the time score's and "
                    "the space score's parts (dsm.analysis.bias).",
        options={"--data": "prepared store directory (its test part is used)",
                 "--out": Opt("output CSV: the budget per noise level", dest="out_csv"),
                 "--totals": Opt("output JSON: the totals and settings (details)", dest="out_json"),
                 "--metrics": Opt("output directory of the headline numbers (DVC metrics): one file "
                                  "per term, <term>_err_db_per_dim.json {value, se} (norm, time, space, "
                                  "score, predicted, direct)", dest="out_metrics", required=False)},
        metrics=("metrics",)),
    Stage(
        name="fig_bias", entry="dsm.figures.bias", subcommand="fig-bias", reads=(),
        inputs={"table": "results/{scale}/bias.csv", "totals": "results/{scale}/bias.json"},
        outputs={"pdf": figure("bias")},
        args="--table {input.table} --totals {input.totals} --out {output.pdf}", resources="light",
        doc="the bias budget figure",
        description="Plot `dsm bias`'s per-t table and totals.",
        options={"--table": "the budget per noise level (CSV of `dsm bias --out`)",
                 "--totals": "the totals (JSON of `dsm bias --totals`)", "--out": "output PDF"},
        report=(Report("pdf", "bias.rst", "bias", "Bias budget",
                       data={"metrics": BIAS_METRICS, "totals": "results/{scale}/bias.json"}),)),
    Stage(
        name="compare", entry="dsm.analysis.generalization", reads=("split", "seeds"),
        inputs={"tables": Each(LOGP, LOGP_DIR)},
        outputs={"metrics": FIG2_METRICS, "details": FIG2_DETAILS, "by_n": FIG2_BY_N},
        directories=("metrics",),
        args=f"--logp {LOGP_DIR} --metrics {{output.metrics}} --details {{output.details}}"
             " --by-n {output.by_n}", resources="light",
        doc="Figure 2 metrics: do the A and B models agree, per N",
        description="Per N: Pearson r, RMS and mean of log p_A - log p_B (dB/dim) on the models' own "
                    "training images, and errors against the exact log p; means and spread over the "
                    "replicates (seeds).",
        options={"--logp": "directory of the per-image tables seed<seed>/N<N>-<A|B>.parquet",
                 "--metrics": "output directory of the headline numbers (DVC metrics): per N a "
                              "folder N<n>/ of <quantity>.json {value, se, n} (n: replicates)",
                 "--details": "output JSON of every per-N metric, per replicate, with provenance",
                 "--by-n": Opt("also write the per-N metrics as CSV (DVC plots)", dest="by_n_csv",
                               required=False)},
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
        outputs={"pdf": figure("fig2")},
        args=f"--logp {LOGP_DIR} --details {{input.details}} --out {{output.pdf}}", resources="light",
        doc="Figure 2: log p_A against log p_B, one panel per N",
        description="Plot the per-image tables of the first replicate for the Ns in DETAILS (from "
                    "`dsm compare`).",
        options={"--logp": "directory of the per-image tables", "--details": "details JSON from `dsm compare`",
                 "--out": "output PDF"},
        report=(Report("pdf", "fig2.rst", "generalization", "Figure 2",
                       data={"metrics": FIG2_METRICS}),)),
    Stage(
        name="fig1", entry="dsm.figures.fig1", reads=("fig1", "resources.train.threads"),
        inputs={}, outputs={"pdf": "results/{scale}/fig1/fig1.pdf",
                            "metrics": FIG1_METRICS,
                            "details": "results/{scale}/fig1/details.json"},
        directories=("metrics",),
        args="--out results/{scale}/fig1", resources="train", exec_=True, priority=LONGEST,
        doc="Figure 1: single vs dual score matching on a Gaussian scale mixture",
        description="Train the mixture-of-quadratics model by SSM and DSM; write fig1.pdf, "
                    "metrics/ (headline numbers) and details.json.",
        options={"--out": "output directory", "--device": OPTION_HELP["--device"]},
        metrics=("metrics",)),
    Stage(
        name="table1", entry="dsm.analysis.denoising",
        reads=("figures.table1", "resources.evaluate.threads"),
        inputs={"energy": FULL_MODEL, "score": FULL_SCORE_MODEL, "data": IMAGES},
        outputs={"csv": TABLE1 + ".csv", "md": TABLE1 + ".md", "tex": TABLE1 + ".tex",
                 "json": TABLE1 + ".json", "metrics": TABLE1_METRICS}, directories=("metrics",),
        args="--energy {input.energy} --score {input.score} --data {input.data} --out " + TABLE1,
        resources="evaluate",
        doc="Table 1: denoising PSNR of the energy and the score model",
        description="Denoising PSNR (of the mean MSE over test images, delta-method standard errors) "
                    "at the input PSNRs of figures.table1.psnr; writes OUT.csv, OUT.md, OUT.tex and "
                    "OUT.json.",
        options={"--energy": "the full energy model (model.pt)",
                 "--score": "the score-only model (model.pt)",
                 "--data": "prepared store directory (its test part is used)",
                 "--out": "output path without suffix (e.g. results/default/table1): OUT.csv, OUT.md, "
                          "OUT.tex, OUT.json (details) and the directory OUT_metrics (headline "
                          "numbers, DVC metrics)",
                 "--device": OPTION_HELP["--device"]},
        call="dsm.cli_pipeline:table1",
        metrics=("metrics",),
        report=(Report("csv", "table1.rst", "noise levels", "Table 1", data={"metrics": TABLE1_METRICS}),)),
    Stage(
        name="dimensionality", entry="dsm.analysis.dimensionality",
        reads=("figures.fig5", "resources.evaluate.threads"),
        inputs={"model": FULL_MODEL, "norm": FULL_NORM, "data": IMAGES, "examples": EXAMPLES},
        outputs={"curves": FIG5_DIR + "/curves.parquet", "details": FIG5_DIR + "/details.json",
                 "metrics": FIG5_METRICS, "d_eff": FIG5_DIR + "/d_eff.csv"},
        directories=("metrics",),
        args="--model {input.model} --norm {input.norm} --data {input.data} --examples {input.examples}"
             " --curves {output.curves} --details {output.details} --metrics {output.metrics}"
             " --d-eff {output.d_eff}",
        resources="evaluate",
        doc="Figure 5's curves: E[log p(y,t)|x] and d_eff (eqs. 11, 12) vs t",
        description="For the reference images and the test-set average, on the t grid of "
                    "figures.fig5: E[log p(y,t)|x] (dB/dim) and the effective dimensionality by eq. 11 "
                    "and eq. 12 (from the model's space and time scores).",
        options={"--model": "the full energy model (model.pt)",
                 "--data": "prepared store directory (its test part is used)",
                 "--curves": Opt("output Parquet of the curves", dest="out.curves"),
                 "--details": Opt("output JSON: agreement of eqs. 11 and 12, settings, provenance",
                                  dest="out.details"),
                 "--metrics": Opt("output directory of the headline numbers (DVC metrics)",
                                  dest="out.metrics", required=False),
                 "--d-eff": Opt("output CSV: the test-average d_eff against t (DVC plot)",
                                dest="out.d_eff", required=False),
                 "--device": OPTION_HELP["--device"]},
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
        outputs={"pdf": figure("fig5")},
        args="--curves {input.curves} --details {input.details} --data {input.data} --out {output.pdf}",
        resources="light",
        doc="Figure 5 (right): log p and effective dimensionality against t",
        description="Plot the curves of `dsm dimensionality`.",
        options={"--curves": "curves Parquet of `dsm dimensionality`",
                 "--details": "details JSON of `dsm dimensionality`",
                 "--data": "prepared store directory (thumbnails)", "--out": "output PDF"},
        report=(Report("pdf", "fig5.rst", "noise levels", "Figure 5",
                       data={"metrics": FIG5_METRICS}),)),
    Stage(
        name="contrast", entry="dsm.analysis.contrast",
        reads=("figures.fig4", "resources.evaluate.threads"),
        inputs={"model": FULL_MODEL, "norm": FULL_NORM, "data": IMAGES, "examples": EXAMPLES,
                "logp": FULL_LOGP},
        outputs={"affine": FIG4_DIR + "/affine.parquet", "sparsity": FIG4_DIR + "/sparsity.parquet",
                 "details": FIG4_DIR + "/details.json", "metrics": FIG4_METRICS},
        directories=("metrics",),
        args="--model {input.model} --norm {input.norm} --data {input.data} --examples {input.examples}"
             " --logp {input.logp} --affine {output.affine} --sparsity {output.sparsity}"
             " --details {output.details} --metrics {output.metrics}",
        resources="evaluate",
        doc="Figure 4's data: log p of a (x - mean) + b; log p vs sparsity",
        description="log p of contrast/brightness changes of the reference images (grid and b = 1/2 "
                    "slice), and the wavelet participation ratio of every test image against its "
                    "log p (Pearson, Spearman).",
        options={"--model": "the full energy model (model.pt)",
                 "--affine": Opt("output Parquet: log p over contrast and brightness", dest="out.affine"),
                 "--sparsity": Opt("output Parquet: participation ratio and log p", dest="out.sparsity"),
                 "--details": Opt("output JSON: settings, correlations, per-slice numbers",
                                  dest="out.details"),
                 "--metrics": Opt("output directory of the headline numbers (DVC metrics)",
                                  dest="out.metrics", required=False),
                 "--device": OPTION_HELP["--device"]},
        metrics=("metrics",)),
    Stage(
        name="fig4", entry="dsm.figures.fig4", reads=(),
        inputs={"affine": FIG4_DIR + "/affine.parquet", "sparsity": FIG4_DIR + "/sparsity.parquet",
                "details": FIG4_DIR + "/details.json"},
        outputs={"pdf": figure("fig4")},
        args="--affine {input.affine} --sparsity {input.sparsity} --details {input.details} --out {output.pdf}",
        resources="light",
        doc="Figure 4: contrast, brightness and sparsity against log p",
        description="Plot the tables of `dsm contrast`.",
        options={"--affine": "log p over contrast and brightness (Parquet of `dsm contrast`)",
                 "--sparsity": "participation ratio and log p (Parquet of `dsm contrast`)",
                 "--details": "details JSON of `dsm contrast`", "--out": "output PDF"},
        report=(Report("pdf", "fig4.rst", "noise levels", "Figure 4",
                       data={"metrics": FIG4_METRICS}),)),
    Stage(
        name="estimators", entry="dsm.analysis.estimators",
        reads=("estimators", "resources.evaluate.threads"),
        inputs={"model": FULL_MODEL, "norm": FULL_NORM, "data": IMAGES},
        outputs={"csv": ESTIMATORS_CSV, "images": ESTIMATORS_IMAGES},
        args="--model {input.model} --norm {input.norm} --data {input.data}"
             " --out {output.csv} --images-out {output.images}",
        resources="evaluate",
        doc="one-shot log p against the integrating estimators",
        description="On the first estimators.n_images test images: one-shot, denoising bound, "
                    "probability-flow ODE and SDE estimates of log p for the model and (on exact "
                    "sources) the exact density; bias, spread, NFE, seconds.",
        options={"--model": "full energy model (model.pt)",
                 "--data": "prepared store directory (test and train parts)",
                 "--out": "output CSV, one row per (density, estimator)",
                 "--images-out": "output Parquet, one row per image and run",
                 "--device": OPTION_HELP["--device"]}),
    Stage(
        name="fig_estimators", entry="dsm.figures.estimators", subcommand="fig-estimators", reads=(),
        inputs={"csv": ESTIMATORS_CSV, "images": ESTIMATORS_IMAGES},
        outputs={"pdf": figure("estimators")},
        args="--csv {input.csv} --images {input.images} --out {output.pdf}", resources="light",
        doc="the estimators figure (error and cost per image)",
        description="Plot the CSV and per-image table of `dsm estimators`.",
        options={"--csv": "CSV from `dsm estimators`", "--images": "per-image Parquet from `dsm estimators`",
                 "--out": "output PDF"},
        report=(Report("pdf", "estimators.rst", "density", "Estimators of log p"),)),
    Stage(
        name="fig1_figure", entry=None, reads=(),
        inputs={"pdf": "results/{scale}/fig1/fig1.pdf"}, outputs={"pdf": figure("fig1")},
        args="", command=COPY, resources="light", local=True,
        doc="Figure 1 of the scale beside its other figures (fig1 writes it beside its models)",
        report=(Report("pdf", "fig1.rst", "method", "Figure 1", data={"metrics": FIG1_METRICS}),)),
    *(Stage(name=f"publish_{name}", entry=None, reads=(),
            inputs={"pdf": figure(name)}, outputs={"pdf": f"figures/{name}.pdf"},
            args="", command=COPY, resources="light", local=True,
            doc=f"figures/{name}.pdf: the active scale's copy of figures/<scale>/{name}.pdf")
      for name in FIGURES),
]}

# What `snakemake all` (and the README's `make figures`) builds: the paper's figures of the
# active scale (figures/<scale>/, and their copies under figures/) and its tables.
TARGETS = (*(f"figures/{name}.pdf" for name in FIGURES), GUMBEL, *TABLE2.values(), TABLE1 + ".md")


# Sources with an exact density (their stores carry an `exact` block: dsm.data.exact). The
# targets that measure against it (the bias budget) are left out of `all` for every other
# source, whose `bias` stage would only write outputs that say "not available".
EXACT_SOURCES = ("field", "gsm")
EXACT_ONLY = ("figures/bias.pdf",)


def targets(source: str, skip=()) -> tuple[str, ...]:
    """What `snakemake all` builds for a scale whose ``data.source`` is ``source``, less the
    figures named in ``skip`` (the scale's ``all_skip``)."""
    left_out = {f"figures/{name}.pdf" for name in skip}
    return tuple(t for t in TARGETS
                 if (source in EXACT_SOURCES or t not in EXACT_ONLY) and t not in left_out)


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
