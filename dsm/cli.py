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
                       description="c = (d/2) ln(2πe t_max) - mean U(x + sqrt(t_max) z, t_max) over held-out images.")
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
    p.add_argument("--logp", required=True, help="directory of the per-image tables N{N}-{A,B}.parquet")
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


BUILDERS += [_add_compare, _add_fig2, _add_examples, _add_sync]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dsm", description="Normalized image densities by dual score matching.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in BUILDERS:
        add(sub)
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        args.func(args)
    except DsmError as e:
        print(f"dsm {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"dsm {args.command}: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
