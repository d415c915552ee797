"""The `dsm` command line: argument parsing and the one-line error convention.

The pipeline's subcommands (one per stage of dsm/pipeline/stages.py) are derived from the
stage table by :mod:`dsm.cli_pipeline`; the commands outside the pipeline (``dsm sync``,
``dsm cost``, ``dsm logp``, ``dsm summary``) are written here. Every handler imports its module lazily (so ``dsm --help``
is fast) and calls one library function. A :class:`dsm.errors.DsmError` becomes a
one-line ``dsm <cmd>: error: ...`` on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import sys

from dsm.errors import DsmError

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

def _add_cost(sub):
    p = sub.add_parser("cost", help="wall and CPU time per stage of a scale's run",
                       description="Sum Snakemake's benchmark files (benchmarks/<scale>/**.tsv) per stage: "
                                   "jobs, wall seconds, CPU seconds, peak memory; the slowest jobs; with "
                                   "--since, the run that started then: its wall time and how busy the "
                                   "cores were. `make figures` ends with it.")
    p.add_argument("--scale", default=None,
                   help="the scale (default: the active one, `run` of params.yaml)")
    p.add_argument("--params", default="params.yaml", help="parameter file (default: params.yaml)")
    p.add_argument("--root", default=".", help="repository root holding benchmarks/ (default: .)")
    p.add_argument("--top", type=int, default=5, help="how many of the slowest jobs to list (default 5)")
    p.add_argument("--since", type=float, default=None, metavar="EPOCH_S",
                   help="start of the run to report on (seconds since the epoch, `date +%%s`)")
    p.add_argument("--cores", type=int, default=None, help="cores the run was given (snakemake --cores)")
    p.set_defaults(func=_run_cost)

def _run_cost(args):
    from pathlib import Path

    from dsm.pipeline.cost import cost_table, read_jobs

    scale = args.scale
    if scale is None:
        from dsm.config import read_yaml

        path = Path(args.root) / args.params
        run = read_yaml(path).get("run")
        if not isinstance(run, dict) or not isinstance(run.get("name"), str):
            raise DsmError(f"{path}: no active scale (run.name): give --scale")
        scale = run["name"]
    print(cost_table(read_jobs(args.root, scale), scale, top=args.top, since=args.since, cores=args.cores))

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
    p.add_argument("--patches", type=int, default=None, metavar="STRIDE",
                   help="photographs under a patch model: cut each image into the model's patches on a "
                        "grid of STRIDE pixels, pixels as the patches source makes them; one row per patch "
                        "(y, x) with the image's mean log p")
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
         allow_unclipped=args.allow_unclipped, device=args.device, threads=args.threads,
         patches=args.patches)

def version_text() -> str:
    """``dsm <version>``, with the git commit (``-dirty`` if modified) when the package runs
    from a checkout (as the provenance fields of the outputs name it: dsm.io.code_version)."""
    from pathlib import Path

    import dsm

    if not (Path(dsm.__file__).resolve().parent.parent / ".git").exists():
        return f"dsm {dsm.__version__}"         # an installed copy: no commit to name
    from dsm.io import code_version

    return code_version()

class _Version(argparse.Action):
    """``--version``: the text is computed when asked for (it runs git), not at every call."""

    def __init__(self, option_strings, dest=argparse.SUPPRESS, help=None):
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, help=help)

    def __call__(self, parser, namespace, values, option_string=None):
        print(version_text())
        parser.exit()
def _add_summary(sub):
    p = sub.add_parser("summary", help="the README's results tables, rendered from a run's outputs",
                       description="Render the results tables (results/<scale>/..., benchmarks/<scale>/..., "
                                   "the models' provenance) as Markdown, each with the scale, seeds, "
                                   "commit and machine under it. With --update, replace the content "
                                   "between <!-- summary:NAME --> and <!-- /summary:NAME --> in each FILE "
                                   "with table NAME (atomic writes; all files rendered first).")
    p.add_argument("--params", default="params.yaml", help="parameter file (default: params.yaml)")
    p.add_argument("--scale", default=None, help="the run's scale (default: the active one, `run`)")
    p.add_argument("--root", default=".", help="repository root holding results/ (default: .)")
    p.add_argument("--table", action="append", default=None, metavar="NAME",
                   help="print only this table (repeatable); names: see docs/results.md")
    p.add_argument("--update", nargs="+", default=None, metavar="FILE",
                   help="Markdown files whose marked blocks to replace, e.g. README.md docs/results.md")
    p.set_defaults(func=_run_summary)

def _run_summary(args):
    from pathlib import Path

    from dsm import summary

    from dsm.config import load_scale

    scale = load_scale(Path(args.root, args.params), args.scale)["name"]   # known scale, or `run`
    if args.update:
        if args.table:
            raise DsmError("--table and --update do not go together: --update renders the "
                           "tables its files' markers name")
        changed = summary.update_files(args.update, args.root, scale)
        print(f"dsm summary: {len(changed)} of {len(args.update)} file(s) changed", file=sys.stderr)
    else:
        for name in args.table or []:
            if name not in summary.TABLES:
                raise DsmError(f"--table: unknown table {name!r} (known: {', '.join(summary.TABLES)})")
        sys.stdout.write(summary.render_all(args.root, scale, args.table))

def build_parser() -> argparse.ArgumentParser:
    from dsm.cli_pipeline import add_stage_commands

    parser = argparse.ArgumentParser(
        prog="dsm", description="Normalized image densities by dual score matching.")
    parser.add_argument("--version", action=_Version,
                        help="print the version (and the git commit of a checkout) and exit")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    add_stage_commands(sub)
    for add in (_add_sync, _add_cost, _add_logp, _add_summary):
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
    if isinstance(e, OSError) and e.errno in (errno.EACCES, errno.EROFS, errno.ENOENT, errno.ENOTDIR,
                                               errno.EISDIR, errno.ENAMETOOLONG) and e.filename:
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
        # a file name that is not valid UTF-8 is shown with \x escapes (not a crash)
        message = message.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
        tracker.write(f"dsm {args.command}: {message}\n")

    import warnings

    caught: list[str] = []      # library warnings: one line each after a success, none
                                # before an error line (the error says what went wrong)
    try:
        from dsm import outputs

        outputs.declare_cli(parser, args)     # what the command must never write over
        with warnings.catch_warnings():
            warnings.showwarning = lambda message, category, *_, **__: caught.append(
                f"{category.__name__}: {str(message).splitlines()[0] if str(message) else ''}")
            args.func(args)
        for text in dict.fromkeys(caught):
            report(f"warning: {text}")
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
        from dsm import outputs

        outputs.reset()
    return 0

if __name__ == "__main__":
    sys.exit(main())
