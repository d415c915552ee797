"""The `dsm` command line: one subcommand per pipeline stage, argument parsing only.

Every subcommand's handler imports its module lazily (so `dsm --help` is fast) and
calls one library function. A :class:`dsm.errors.DsmError` becomes a one-line
``dsm <cmd>: error: ...`` on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import sys

from dsm.errors import DsmError


def _add_params_options(p: argparse.ArgumentParser) -> None:
    """--params/--scale/--set, shared by the commands the pipeline calls."""
    p.add_argument("--params", default="params.yaml", help="parameter file (default: params.yaml)")
    p.add_argument("--scale", default=None,
                   help="scale section of params.yaml to use (default: the active one, `run`)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override one parameter of the scale section, e.g. train.steps=100")


def _scale_cfg(args) -> dict:
    from dsm.config import load_scale

    return load_scale(args.params, args.scale, overrides=args.overrides)


# --- data (issue: data sources and splits) -----------------------------------------

def _add_prepare(sub):
    p = sub.add_parser("prepare", help="prepare a dataset into the common on-disk store",
                       description="Prepare a data source (data.* of the scale) into DIR/train and DIR/test.")
    _add_params_options(p)
    p.add_argument("--out", required=True, help="output directory of the prepared store")
    p.set_defaults(func=_run_prepare)


def _run_prepare(args):
    from dsm.data.prepare import prepare

    prepare(_scale_cfg(args).get("data"), args.out)


def _add_split(sub):
    p = sub.add_parser("split", help="write the disjoint nested A/B training splits",
                       description="A = the first N, B = the last N training images, for each N of split.N.")
    _add_params_options(p)
    p.add_argument("--data", required=True, help="prepared store directory (from `dsm prepare`)")
    p.add_argument("--out", required=True, help="output Parquet file of the splits")
    p.set_defaults(func=_run_split)


def _run_split(args):
    from dsm.data.splits import make_splits

    make_splits(args.data, _scale_cfg(args).get("split"), args.out)


# --- training and evaluation --------------------------------------------------------

def _add_train(sub):
    p = sub.add_parser("train", help="train an energy (or score) model; resumes from OUT",
                       description="Train one model on split SPLIT of size N (or, with --full, on every "
                                   "training image). Rerunning the same command resumes from "
                                   "OUT/checkpoints/latest (if the config hash matches); SIGTERM or "
                                   "SIGUSR1 writes a checkpoint and exits with 128+signal. CPU threads: "
                                   "resources.train.threads of the scale.")
    _add_params_options(p)
    p.add_argument("--data", required=True, help="prepared store directory")
    p.add_argument("--splits", help="splits Parquet (from `dsm split`); not with --full")
    p.add_argument("--N", type=int, help="training set size")
    p.add_argument("--split", choices=["A", "B"], help="which training set")
    p.add_argument("--full", action="store_true",
                   help="train on the whole training set (base seed: full.seed of the scale)")
    p.add_argument("--seed", type=int, default=None,
                   help="base seed of the replicate (one of the scale's `seeds`); the model's own "
                        "seed is derived from it, N and the split (train.pairing)")
    p.add_argument("--kind", choices=["energy", "score"], default=None,
                   help="override model.kind (score: the score-only baseline of Table 1)")
    p.add_argument("--out", required=True, help="run directory (checkpoints, metrics, model.pt)")
    p.add_argument("--device", default=None, help="override device: auto, cpu, cuda, cuda:1 ...")
    p.set_defaults(func=_run_train)


def _run_train(args):
    from dsm.train import FULL, train_from_params

    cfg = _scale_cfg(args)
    if args.full:
        if args.N is not None or args.split is not None:
            raise DsmError("--full trains on every training image: do not give --N or --split")
        seed = args.seed if args.seed is not None else int(cfg["full"]["seed"])
        train_from_params(cfg, data=args.data, splits=None, n=None, split=FULL, out=args.out,
                          seed=seed, kind=args.kind, device=args.device)
        return
    missing = [f"--{k}" for k in ("splits", "N", "split") if getattr(args, k) is None]
    if missing:
        raise DsmError(f"{', '.join(missing)} required (or --full)")
    train_from_params(cfg, data=args.data, splits=args.splits, n=args.N, split=args.split,
                      out=args.out, seed=args.seed if args.seed is not None else int(cfg["seeds"][0]),
                      kind=args.kind, device=args.device)


def _add_normalize(sub):
    p = sub.add_parser("normalize", help="normalization constant of a trained energy model",
                       description="c = H - mean U(x + sqrt(T) z, T) over the first evaluate.n_norm held-out (test) "
                                   "images, one noise draw each, at T = evaluate.norm_t (null: the model's "
                                   "training t_max), H the entropy of the Gaussian evaluate.norm_entropy "
                                   "(isotropic, data_variance or data_covariance); docs/method.md.")
    _add_params_options(p)
    p.add_argument("--model", required=True, help="trained model file (model.pt)")
    p.add_argument("--data", required=True, help="prepared store directory (its test part is used)")
    p.add_argument("--out", required=True, help="output JSON")
    p.add_argument("--device", default=None)
    p.set_defaults(func=_run_normalize)


def _run_normalize(args):
    from dsm.evaluate import normalize_from_params

    normalize_from_params(_scale_cfg(args), model=args.model, data=args.data, out=args.out,
                          device=args.device)


def _add_evaluate(sub):
    p = sub.add_parser("evaluate", help="per-image log p of a model into Parquet",
                       description="One-shot log p at t = 0 on the model's own, the other set's and test "
                                   "images (at most evaluate.max_per_set of each); with --full, on every "
                                   "test image (a model trained with `dsm train --full`).")
    _add_params_options(p)
    p.add_argument("--model", required=True, help="trained model file (model.pt)")
    p.add_argument("--norm", required=True, help="normalization JSON (from `dsm normalize`)")
    p.add_argument("--data", required=True, help="prepared store directory")
    p.add_argument("--splits", help="splits Parquet (not with --full)")
    p.add_argument("--N", type=int)
    p.add_argument("--split", choices=["A", "B"])
    p.add_argument("--full", action="store_true", help="every test image, streamed")
    p.add_argument("--out", required=True, help="output Parquet")
    p.add_argument("--device", default=None)
    p.set_defaults(func=_run_evaluate)


def _run_evaluate(args):
    from dsm.evaluate import evaluate_from_params, evaluate_test_set_from_params

    if args.full:
        evaluate_test_set_from_params(_scale_cfg(args), model=args.model, norm=args.norm,
                                      data=args.data, out=args.out, device=args.device)
        return
    missing = [f"--{k}" for k in ("splits", "N", "split") if getattr(args, k) is None]
    if missing:
        raise DsmError(f"{', '.join(missing)} required (or --full)")
    evaluate_from_params(_scale_cfg(args), model=args.model, norm=args.norm, data=args.data,
                         splits=args.splits, n=args.N, split=args.split, out=args.out,
                         device=args.device)


# --- analyses and figures -----------------------------------------------------------

def _add_fig1(sub):
    p = sub.add_parser("fig1", help="Figure 1: single vs dual score matching on a Gaussian scale mixture",
                       description="Train the mixture-of-quadratics model by SSM and DSM; write fig1.pdf, "
                                   "metrics.json (headline numbers) and details.json.")
    _add_params_options(p)
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--device", default=None)
    p.set_defaults(func=_run_fig1)


def _run_fig1(args):
    from dsm.figures.fig1 import fig1_from_params

    fig1_from_params(_scale_cfg(args), out=args.out, device=args.device)


BUILDERS = [_add_prepare, _add_split, _add_train, _add_normalize, _add_evaluate, _add_fig1]


# --- Figure 2: comparison of the A and B models, the figure, Snakemake <-> DVC sync --

def _add_compare(sub):
    p = sub.add_parser("compare", help="Figure 2 metrics: do the A and B models agree, per N",
                       description="Per N: Pearson r, RMS and mean of log p_A - log p_B (dB/dim) on the "
                                   "models' own training images, and errors against the exact log p.")
    _add_params_options(p)
    p.add_argument("--logp", required=True, help="directory of the per-image tables seed{seed}/N{N}-{A,B}.parquet")
    p.add_argument("--metrics", required=True,
                   help="output directory of the headline numbers, one N<n>.json per N (DVC metrics)")
    p.add_argument("--details", required=True,
                   help="output JSON of every per-N metric, per replicate, with provenance")
    p.add_argument("--by-n", default=None, help="also write the per-N metrics as CSV (DVC plots)")
    p.set_defaults(func=_run_compare)


def _run_compare(args):
    from dsm.analysis.generalization import compare_from_params

    compare_from_params(_scale_cfg(args), logp=args.logp, metrics=args.metrics, details=args.details,
                        by_n_csv=args.by_n)


def _add_fig2(sub):
    p = sub.add_parser("fig2", help="Figure 2: log p_A against log p_B, one panel per N",
                       description="Plot the per-image tables of the Ns in DETAILS (from `dsm compare`).")
    _add_params_options(p)
    p.add_argument("--logp", required=True, help="directory of the per-image tables")
    p.add_argument("--details", required=True, help="details JSON from `dsm compare`")
    p.add_argument("--out", required=True, help="output PDF")
    p.set_defaults(func=_run_fig2)


def _run_fig2(args):
    from dsm.figures.fig2 import fig2_from_params

    fig2_from_params(_scale_cfg(args), logp=args.logp, details=args.details, out=args.out)


def _add_sync(sub):
    p = sub.add_parser("sync", help="make Snakemake and DVC agree on what is up to date",
                       description="`dsm sync dvc`: after a Snakemake run, record its outputs in dvc.lock "
                                   "(dvc commit -f). `dsm sync snakemake`: after dvc pull/checkout/repro, "
                                   "mark the outputs up to date for Snakemake (snakemake --touch --forceall). "
                                   "`dsm sync dvc-yaml`: regenerate dvc.yaml from the stage table "
                                   "(dsm/pipeline/stages.py).")
    p.add_argument("tool", choices=["dvc", "snakemake", "dvc-yaml"],
                   help="the tool to bring up to date; dvc-yaml: regenerate dvc.yaml from the stage table")
    p.add_argument("--root", default=".", help="repository root (default: .)")
    p.set_defaults(func=_run_sync)


def _run_sync(args):
    from dsm.pipeline import sync

    if args.tool == "dvc-yaml":
        from dsm.pipeline.render import write_dvc_yaml

        changed = write_dvc_yaml(args.root)
        print(f"dsm sync dvc-yaml: {args.root}/dvc.yaml {'regenerated' if changed else 'is up to date'}",
              file=sys.stderr)
    elif args.tool == "dvc":
        sync.sync_dvc(args.root)
    else:
        sync.sync_snakemake(args.root)


def _add_examples(sub):
    p = sub.add_parser("examples", help="reference test images evenly spaced in log p",
                       description="From the full model's test-set table, figures.examples.count images "
                                   "at evenly spaced log p (JSON).")
    _add_params_options(p)
    p.add_argument("--logp", required=True, help="per-image table of the test set (dsm evaluate --full)")
    p.add_argument("--out", required=True, help="output JSON")
    p.set_defaults(func=_run_examples)


def _run_examples(args):
    from dsm.analysis.examples import examples_from_params

    examples_from_params(_scale_cfg(args), logp=args.logp, out=args.out)


def _add_bias(sub):
    p = sub.add_parser("bias", help="bias budget of a model against the exact density (field)",
                       description="Split the mean error of log p into the normalization's, the time "
                                   "score's and the space score's parts (dsm.analysis.bias).")
    _add_params_options(p)
    p.add_argument("--model", required=True, help="trained energy model (model.pt)")
    p.add_argument("--norm", required=True, help="its normalization JSON")
    p.add_argument("--data", required=True, help="prepared store directory (its test part is used)")
    p.add_argument("--out", required=True, help="output CSV: the budget per noise level")
    p.add_argument("--totals", required=True, help="output JSON: the totals and settings (details)")
    p.add_argument("--metrics", default=None,
                   help="output directory of the headline numbers (DVC metrics): one file per term "
                        "(norm, time, space, score, predicted, direct), {err_db_per_dim, se_db_per_dim}")
    p.set_defaults(func=_run_bias)


def _run_bias(args):
    from dsm.analysis.bias import bias_from_params

    bias_from_params(_scale_cfg(args), model=args.model, norm=args.norm, data=args.data,
                     out_csv=args.out, out_json=args.totals, out_metrics=args.metrics)


def _add_fig_bias(sub):
    p = sub.add_parser("fig-bias", help="the bias budget figure",
                       description="Plot `dsm bias`'s per-t table and totals.")
    _add_params_options(p)
    p.add_argument("--table", required=True)
    p.add_argument("--totals", required=True)
    p.add_argument("--out", required=True, help="output PDF")
    p.set_defaults(func=_run_fig_bias)


def _run_fig_bias(args):
    from dsm.figures.bias import fig_bias_from_params

    fig_bias_from_params(_scale_cfg(args), table=args.table, totals=args.totals, out=args.out)


BUILDERS += [_add_compare, _add_fig2, _add_examples, _add_bias, _add_fig_bias, _add_sync]


# --- the distribution of log p: Gumbel fit, Figure 3, Figures 6-8, Table 2 --------------

def _add_gumbel(sub):
    p = sub.add_parser("gumbel", help="maximum-likelihood Gumbel fit of per-image log p (and its rivals)",
                       description="Fit scipy.stats.gumbel_r to one column of a per-image table by maximum "
                                   "likelihood; 95 % bootstrap intervals (gumbel.bootstrap resamples, "
                                   "gumbel.seed); the same fit of gumbel_l, norm and skewnorm with AIC and "
                                   "the Kolmogorov-Smirnov statistic; the sample mean (entropy estimate), "
                                   "range and 8-bit bits/dim. Without a params file the schema's defaults "
                                   "are used.")
    _add_params_options(p)
    p.add_argument("table", metavar="IN.parquet", help="per-image table (e.g. results/<scale>/full/logp-test.parquet)")
    p.add_argument("--out", required=True,
                   help="output directory of the headline numbers (DVC metrics): loc.json, scale.json, "
                        "entropy.json, nll.json, each {estimate, ci95_lo, ci95_hi} with the unit in the keys")
    p.add_argument("--details", default=None,
                   help="full report JSON: every family's fit, AIC, KS, bootstrap settings "
                        "(default: OUT-details.json beside OUT)")
    p.add_argument("--column", default="logp_db_per_dim", help="column to fit (default: logp_db_per_dim)")
    p.set_defaults(func=_run_gumbel)


def _run_gumbel(args):
    from pathlib import Path

    from dsm.analysis.gumbel import gumbel_from_params

    if args.params == "params.yaml" and args.scale is None and not Path(args.params).is_file():
        from dsm.config import apply_overrides, resolve_section

        given = apply_overrides({"gumbel": {}}, args.overrides)
        cfg = {"gumbel": resolve_section(given.get("gumbel"), "gumbel", "gumbel")}
    else:
        cfg = _scale_cfg(args)
    gumbel_from_params(cfg, logp=args.table, out=args.out, details=args.details, column=args.column)


def _add_probes(sub):
    p = sub.add_parser("probes", help="log p of uniform-noise and constant images under a model (Figure 3)",
                       description="Evaluate the full model (with its normalization constant) on "
                                   "figures.fig3.noise_images uniform-noise images in [0, 1] and on the "
                                   "constant 0.5 image, with the test images' shape (JSON).")
    _add_params_options(p)
    p.add_argument("--model", required=True, help="energy model file (model.pt)")
    p.add_argument("--norm", required=True, help="its normalization JSON (dsm normalize)")
    p.add_argument("--data", required=True, help="prepared store directory (its test part gives the shape)")
    p.add_argument("--out", required=True, help="output JSON")
    p.add_argument("--device", default=None)
    p.set_defaults(func=_run_probes)


def _run_probes(args):
    from dsm.analysis.probes import probes_from_params

    probes_from_params(_scale_cfg(args), model=args.model, norm=args.norm, data=args.data, out=args.out,
                       device=args.device)


def _add_fig3(sub):
    p = sub.add_parser("fig3", help="Figure 3: histogram of test log p, Gumbel fit, images along it",
                       description="Plot the full model's test log p with the Gumbel fit (dsm gumbel), the "
                                   "reference images (dsm examples) and the probes (dsm probes).")
    _add_params_options(p)
    p.add_argument("--logp", required=True, help="per-image table of the test set (dsm evaluate --full)")
    p.add_argument("--gumbel", required=True, help="Gumbel fit details JSON (dsm gumbel --details)")
    p.add_argument("--examples", required=True, help="reference images JSON (dsm examples)")
    p.add_argument("--probes", required=True, help="probes JSON (dsm probes)")
    p.add_argument("--data", required=True, help="prepared store directory (the pixels)")
    p.add_argument("--out", required=True, help="output PDF")
    p.add_argument("--hist", default=None, help="output CSV: the histogram drawn and the fit per bin (DVC plot)")
    p.set_defaults(func=_run_fig3)


def _run_fig3(args):
    from dsm.figures.fig3 import fig3_from_params

    fig3_from_params(_scale_cfg(args), logp=args.logp, gumbel=args.gumbel, examples=args.examples,
                     probes=args.probes, data=args.data, out=args.out, hist=args.hist)


def _add_fig678(sub):
    p = sub.add_parser("fig678", help="Figures 6-8: highest, lowest, evenly spaced log p test images",
                       description="Grids (figures.fig678.rows x cols) of test images labelled with their "
                                   "log p in dB/dim.")
    _add_params_options(p)
    p.add_argument("--logp", required=True, help="per-image table of the test set (dsm evaluate --full)")
    p.add_argument("--data", required=True, help="prepared store directory (the pixels)")
    p.add_argument("--highest", required=True, help="output PDF of Figure 6")
    p.add_argument("--lowest", required=True, help="output PDF of Figure 7")
    p.add_argument("--spaced", required=True, help="output PDF of Figure 8")
    p.add_argument("--selection", default=None,
                   help="output JSON: per figure the number of images and the first and last one")
    p.set_defaults(func=_run_fig678)


def _run_fig678(args):
    from dsm.figures.fig678 import fig678_from_params

    fig678_from_params(_scale_cfg(args), logp=args.logp, data=args.data, highest=args.highest,
                       lowest=args.lowest, spaced=args.spaced, selection=args.selection)


def _add_table2(sub):
    p = sub.add_parser("table2", help="Table 2: test-set NLL in bits/dim, conventions explicit",
                       description="Mean test NLL (continuous density + 8-bit shift; uniform dequantization "
                                   "on 8-bit sources; exact entropy and the model's excess on exact sources) "
                                   "as CSV, Markdown and LaTeX.")
    _add_params_options(p)
    p.add_argument("--logp", required=True, help="per-image table of the test set (dsm evaluate --full)")
    p.add_argument("--data", required=True, help="prepared store directory")
    p.add_argument("--model", required=True, help="the table's model (evaluated for dequantization, 8-bit only)")
    p.add_argument("--norm", required=True, help="its normalization JSON")
    p.add_argument("--csv", required=True)
    p.add_argument("--md", required=True)
    p.add_argument("--tex", required=True)
    p.add_argument("--metrics", default=None,
                   help="output directory of the headline numbers (DVC metrics): one file per row that "
                        "applies, {mean_bits_per_dim, se_bits_per_dim}")
    p.add_argument("--device", default=None)
    p.set_defaults(func=_run_table2)


def _run_table2(args):
    from dsm.figures.table2 import table2_from_params

    table2_from_params(_scale_cfg(args), logp=args.logp, data=args.data, model=args.model, norm=args.norm,
                       csv=args.csv, md=args.md, tex=args.tex, metrics=args.metrics, device=args.device)


BUILDERS += [_add_gumbel, _add_probes, _add_fig3, _add_fig678, _add_table2]


# --- across noise levels: Table 1, Figures 4 and 5 ------------------------------------

def _add_table1(sub):
    p = sub.add_parser("table1", help="Table 1: denoising PSNR of the energy and the score model",
                       description="Denoising PSNR (of the mean MSE over test images, delta-method standard "
                                   "errors) at the input PSNRs of figures.table1.psnr; writes OUT.csv, OUT.md, "
                                   "OUT.tex and OUT.json.")
    _add_params_options(p)
    p.add_argument("--energy", required=True, help="the full energy model (model.pt)")
    p.add_argument("--score", required=True, help="the score-only model (model.pt)")
    p.add_argument("--data", required=True, help="prepared store directory (its test part is used)")
    p.add_argument("--out", required=True,
                   help="output path without suffix (e.g. results/default/table1): OUT.csv, OUT.md, OUT.tex, "
                        "OUT.json (details) and the directory OUT_metrics (headline numbers, DVC metrics)")
    p.add_argument("--device", default=None)
    p.set_defaults(func=_run_table1)


def _run_table1(args):
    from dsm.analysis.denoising import table1_from_params

    out = {k: f"{args.out}.{k}" for k in ("csv", "md", "tex", "json")} | {"metrics": f"{args.out}_metrics"}
    table1_from_params(_scale_cfg(args), energy=args.energy, score=args.score, data=args.data, out=out,
                       device=args.device)


def _add_dimensionality(sub):
    p = sub.add_parser("dimensionality", help="Figure 5's curves: E[log p(y,t)|x] and d_eff (eqs. 11, 12) vs t",
                       description="For the reference images and the test-set average, on the t grid of "
                                   "figures.fig5: E[log p(y,t)|x] (dB/dim) and the effective dimensionality by "
                                   "eq. 11 and eq. 12 (from the model's space and time scores).")
    _add_params_options(p)
    p.add_argument("--model", required=True, help="the full energy model (model.pt)")
    p.add_argument("--norm", required=True, help="its normalization JSON (dsm normalize)")
    p.add_argument("--data", required=True, help="prepared store directory (its test part is used)")
    p.add_argument("--examples", required=True, help="reference images (dsm examples)")
    p.add_argument("--curves", required=True, help="output Parquet of the curves")
    p.add_argument("--details", required=True, help="output JSON: agreement of eqs. 11 and 12, settings, provenance")
    p.add_argument("--metrics", default=None, help="output JSON: the headline numbers (DVC metrics)")
    p.add_argument("--d-eff", default=None, help="output CSV: the test-average d_eff against t (DVC plot)")
    p.add_argument("--device", default=None)
    p.set_defaults(func=_run_dimensionality)


def _run_dimensionality(args):
    from dsm.analysis.dimensionality import dimensionality_from_params

    dimensionality_from_params(_scale_cfg(args), model=args.model, norm=args.norm, data=args.data,
                               examples=args.examples,
                               out={"curves": args.curves, "details": args.details, "metrics": args.metrics,
                                    "d_eff": args.d_eff},
                               device=args.device)


def _add_fig5(sub):
    p = sub.add_parser("fig5", help="Figure 5 (right): log p and effective dimensionality against t",
                       description="Plot the curves of `dsm dimensionality`.")
    _add_params_options(p)
    p.add_argument("--curves", required=True)
    p.add_argument("--details", required=True, help="details JSON of `dsm dimensionality`")
    p.add_argument("--data", required=True, help="prepared store directory (thumbnails)")
    p.add_argument("--out", required=True, help="output PDF")
    p.set_defaults(func=_run_fig5)


def _run_fig5(args):
    from dsm.figures.fig5 import fig5_from_params

    fig5_from_params(_scale_cfg(args), curves=args.curves, details=args.details, data=args.data, out=args.out)


def _add_contrast(sub):
    p = sub.add_parser("contrast", help="Figure 4's data: log p of a (x - mean) + b; log p vs sparsity",
                       description="log p of contrast/brightness changes of the reference images (grid and "
                                   "b = 1/2 slice), and the wavelet participation ratio of every test image "
                                   "against its log p (Pearson, Spearman).")
    _add_params_options(p)
    p.add_argument("--model", required=True, help="the full energy model (model.pt)")
    p.add_argument("--norm", required=True, help="its normalization JSON")
    p.add_argument("--data", required=True, help="prepared store directory")
    p.add_argument("--examples", required=True, help="reference images (dsm examples)")
    p.add_argument("--logp", required=True, help="per-image table of the test set (dsm evaluate --full)")
    p.add_argument("--affine", required=True, help="output Parquet: log p over contrast and brightness")
    p.add_argument("--sparsity", required=True, help="output Parquet: participation ratio and log p")
    p.add_argument("--details", required=True, help="output JSON: settings, correlations, per-slice numbers")
    p.add_argument("--metrics", default=None, help="output JSON: the headline numbers (DVC metrics)")
    p.add_argument("--device", default=None)
    p.set_defaults(func=_run_contrast)


def _run_contrast(args):
    from dsm.analysis.contrast import contrast_from_params

    contrast_from_params(_scale_cfg(args), model=args.model, norm=args.norm, data=args.data,
                         examples=args.examples, logp=args.logp,
                         out={"affine": args.affine, "sparsity": args.sparsity, "details": args.details,
                              "metrics": args.metrics},
                         device=args.device)


def _add_fig4(sub):
    p = sub.add_parser("fig4", help="Figure 4: contrast, brightness and sparsity against log p",
                       description="Plot the tables of `dsm contrast`.")
    _add_params_options(p)
    p.add_argument("--affine", required=True)
    p.add_argument("--sparsity", required=True)
    p.add_argument("--details", required=True, help="details JSON of `dsm contrast`")
    p.add_argument("--out", required=True, help="output PDF")
    p.set_defaults(func=_run_fig4)


def _run_fig4(args):
    from dsm.figures.fig4 import fig4_from_params

    fig4_from_params(_scale_cfg(args), affine=args.affine, sparsity=args.sparsity, details=args.details,
                     out=args.out)


BUILDERS += [_add_table1, _add_dimensionality, _add_fig5, _add_contrast, _add_fig4]


# --- estimators side by side, and log p of a user's own images -----------------------

def _add_estimators(sub):
    p = sub.add_parser("estimators", help="one-shot log p against the integrating estimators",
                       description="On the first estimators.n_images test images: one-shot, denoising "
                                   "bound, probability-flow ODE and SDE estimates of log p for the model "
                                   "and (on exact sources) the exact density; bias, spread, NFE, seconds.")
    _add_params_options(p)
    p.add_argument("--model", required=True, help="full energy model (model.pt)")
    p.add_argument("--norm", required=True, help="its normalization JSON (from `dsm normalize`)")
    p.add_argument("--data", required=True, help="prepared store directory (test and train parts)")
    p.add_argument("--out", required=True, help="output CSV, one row per (density, estimator)")
    p.add_argument("--images-out", required=True, help="output Parquet, one row per image and run")
    p.add_argument("--device", default=None)
    p.set_defaults(func=_run_estimators)


def _run_estimators(args):
    from dsm.analysis.estimators import estimators_from_params

    estimators_from_params(_scale_cfg(args), model=args.model, norm=args.norm, data=args.data,
                           out=args.out, images_out=args.images_out, device=args.device)


def _add_fig_estimators(sub):
    p = sub.add_parser("fig-estimators", help="the estimators figure (error and cost per image)",
                       description="Plot the CSV and per-image table of `dsm estimators`.")
    _add_params_options(p)
    p.add_argument("--csv", required=True, help="CSV from `dsm estimators`")
    p.add_argument("--images", required=True, help="per-image Parquet from `dsm estimators`")
    p.add_argument("--out", required=True, help="output PDF")
    p.set_defaults(func=_run_fig_estimators)


def _run_fig_estimators(args):
    from dsm.figures.estimators import fig_estimators_from_params

    fig_estimators_from_params(_scale_cfg(args), csv=args.csv, images=args.images, out=args.out)


def _add_logp(sub):
    p = sub.add_parser("logp", help="log p of your own images (PNG/JPEG files, folders, .npy/.npz)",
                       description="Per-image log p under a trained energy model, one Parquet row per "
                                   "image (dB/dim, nats/dim, bits/dim of the 8-bit convention). Images "
                                   "are converted like 8-bit training data (/255; ITU-R 601 luma for a "
                                   "one-channel model) and must have the model's size unless --resize.")
    p.add_argument("inputs", nargs="+", metavar="INPUT",
                   help="PNG/JPEG files, folders of them (recursive), .npy or .npz arrays "
                        "((n, C, H, W) or (n, H, W); uint8, or float in [0, 1])")
    p.add_argument("--model", required=True, help="trained energy model (model.pt)")
    p.add_argument("--norm", default=None,
                   help="normalization JSON (default: norm.json beside the model, or the pipeline's "
                        "results/<scale>/... file of a model at its pipeline location)")
    p.add_argument("--out", required=True, help="output Parquet")
    p.add_argument("--estimator", default="one-shot", choices=["one-shot", "mse-bound", "ode", "sde"],
                   help="one-shot (default: one network evaluation) or an integrating estimator")
    p.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                   help="estimator option, e.g. n_t=32, paths=4, rtol=1e-4, trace=hutchinson")
    p.add_argument("--prior", default="model", choices=["model", "gaussian"],
                   help="term at t_max of the integrating estimators (default: the model's own U + c)")
    p.add_argument("--prior-mean", type=float, default=None, help="gaussian prior: mean pixel value m")
    p.add_argument("--prior-var", type=float, default=None, help="gaussian prior: data variance per value v")
    p.add_argument("--resize", action="store_true",
                   help="resize image files of another size (shorter side, Lanczos; center crop)")
    p.add_argument("--allow-unclipped", action="store_true",
                   help="accept float arrays outside [0, 1] (e.g. the synthetic field images)")
    p.add_argument("--batch-size", type=int, default=64,
                   help="images per batch (memory is bounded by one batch; default 64)")
    p.add_argument("--seed", type=int, default=0, help="seed of the integrating estimators' noise")
    p.add_argument("--device", default=None, help="auto (default), cpu, cuda, cuda:N")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: as set)")
    p.set_defaults(func=_run_logp)


def _run_logp(args):
    from dsm.logp import logp

    logp(args.model, args.inputs, args.out, norm=args.norm, estimator=args.estimator,
         options=args.option, prior=args.prior, prior_mean=args.prior_mean, prior_var=args.prior_var,
         seed=args.seed, batch_size=args.batch_size, resize=args.resize,
         allow_unclipped=args.allow_unclipped, device=args.device, threads=args.threads)


BUILDERS += [_add_estimators, _add_fig_estimators, _add_logp]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dsm", description="Normalized image densities by dual score matching.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in BUILDERS:
        add(sub)
    return parser


class _LineTracker:
    """stderr, remembering whether its last line is finished: progress bars leave a line
    open (ending in a carriage return), and an error must start on a line of its own, also
    in a log file."""

    def __init__(self, stream):
        self.stream, self.at_line_start = stream, True

    def write(self, text):
        if text:
            self.at_line_start = text.endswith("\n")
        return self.stream.write(text)

    def __getattr__(self, name):
        return getattr(self.stream, name)


def _error_message(e: BaseException) -> str | None:
    """The one line for an exception that is bad input or the environment, not a bug:
    a full disk, an unreadable file, a corrupt Parquet or JSON file (a safety net: the
    library raises DsmError naming the file wherever it reads one)."""
    import errno
    import json

    from dsm.io import is_no_space

    if isinstance(e, DsmError):
        return str(e)
    if is_no_space(e):
        where = f" on the device of {e.filename}" if getattr(e, "filename", None) else ""
        return f"no space left{where} ({e.strerror or e})"
    if isinstance(e, OSError) and e.errno in (errno.EACCES, errno.EROFS, errno.ENOENT) and e.filename:
        return f"{e.filename}: {e.strerror}"
    if isinstance(e, json.JSONDecodeError):
        return f"invalid JSON input: {e}"
    if type(e).__module__.startswith("pyarrow"):
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        return f"cannot read input ({type(e).__name__}: {first})"
    return None


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    stderr = sys.stderr
    sys.stderr = tracker = _LineTracker(stderr)

    def report(message: str) -> None:
        if not tracker.at_line_start:
            tracker.write("\n")         # finish a progress bar's line first
        tracker.write(f"dsm {args.command}: {message}\n")

    try:
        args.func(args)
    except KeyboardInterrupt:
        report("interrupted")
        return 130
    except Exception as e:  # noqa: BLE001 - anything not recognised is re-raised
        message = _error_message(e)
        if message is None:
            raise
        report(f"error: {message}")
        return 2
    finally:
        sys.stderr = stderr
    return 0


if __name__ == "__main__":
    sys.exit(main())
