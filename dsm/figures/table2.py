"""Table 2: the test set's negative log-likelihood in bits/dim, conventions explicit.

``dsm table2`` reads the full model's per-image table of the whole test set
(``results/<scale>/full/logp-test.parquet``) and the prepared store (its ``meta``: 8-bit or
continuous pixels, exact density); on an 8-bit source it also evaluates the full model
(``model.pt`` + ``norm.json``) on uniformly dequantized test images. The rows and their
conventions are :mod:`dsm.analysis.nll`'s. Written three ways, the same numbers:
``results/<scale>/table2.csv`` (one row per quantity, machine-readable),
``table2.md`` (Markdown, conventions as notes) and ``table2.tex`` (a LaTeX ``table`` with
booktabs rules); and the headline numbers (DVC metrics) as a directory
``results/<scale>/table2_metrics/`` of one file per row that applies, named by the row's
key and the unit (``model_8bit_shift_bits_per_dim.json``, ``model_dequantized_...``,
``exact_test_...``, ``exact_entropy_...``, ``model_excess_...``, and with the peers ``gmm_...``,
``gaussian_...``, ``model_minus_gmm_...``, ...), each ``{value, se, n}`` (dsm.headline;
``dvc metrics show`` prints them as the table).

With ``--peers`` (the ``peers`` stage's outputs) the table compares the full model with a
Gaussian mixture and a single Gaussian fit on the same training images: their NLL, the
paired difference model - peer, and the cost of each (free parameters; CPU seconds of the
fit and of scoring the test set). The peers' CPU seconds are measured in their stage; the
model's are read from Snakemake's benchmark files of its jobs (``--benchmarks DIR``:
``train_full.tsv``; ``normalize_full.tsv`` + ``evaluate_full.tsv``, whole processes), when
present (a DVC run writes none: "n/a"). Timings go to the CSV, Markdown and LaTeX, never
to the headline numbers.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np

from dsm.analysis.nll import COSTS, PAPER_BITS, is_8bit, nll_rows
from dsm.errors import DsmError

COLUMNS = ["key", "quantity", "convention", "bits_per_dim", "se_bits_per_dim", "nats_per_dim",
           "se_nats_per_dim", "n_images", "applies", "note", *COSTS]


def _num(v, spec=".4f") -> str:
    return "n/a" if v is None or (isinstance(v, float) and not math.isfinite(v)) else format(v, spec)


def _se(v) -> str:
    return "" if v is None else ("0" if v == 0 else f"{v:.2g}")


def _count(v) -> str:
    return "" if v is None else f"{int(v):,}"


def _cpu(r) -> str:
    """'fit / eval' CPU seconds of a model's row, blank for other rows."""
    if r.get("n_parameters") is None and r.get("fit_cpu_seconds") is None:
        return ""
    return " / ".join("n/a" if r.get(k) is None else f"{r[k]:.3g}" for k in ("fit_cpu_seconds", "eval_cpu_seconds"))


def notes(rows, context: dict) -> list[str]:
    out = [f"{r['quantity']}: {r['convention']}" + (f" ({r['note']})" if r["note"] else "") for r in rows]
    out.append("Standard errors: sd / sqrt(n) over the test images (for the source entropy: of its "
               "Monte-Carlo term). nats/dim is -log p / d, without the 8-bit shift.")
    if context.get("dataset") == "imagenet64" and context.get("channels") == 3:
        out.append(f"Paper (Guth et al. 2025), color ImageNet64, continuous density + 8-bit shift: "
                   f"{PAPER_BITS} bits/dim.")
    return out


def to_csv(rows) -> str:
    import pandas as pd

    return pd.DataFrame(rows, columns=COLUMNS).to_csv(index=False, float_format="%.6g")


def to_markdown(rows, context: dict) -> str:
    lines = [f"# Table 2: test-set NLL ({context['dataset']}, scale {context['scale']}, "
             f"{context['n_images']} test images, d = {context['d']})", "",
             "| quantity | bits/dim | ± s.e. | nats/dim | images | parameters | CPU-s fit / eval |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['quantity']} | {_num(r['bits_per_dim'])} | {_se(r['se_bits_per_dim'])} | "
                     f"{_num(r['nats_per_dim'])} | {'' if r['n_images'] is None else r['n_images']} | "
                     f"{_count(r.get('n_parameters'))} | {_cpu(r)} |")
    lines += ["", "Conventions:", ""] + [f"* {n}" for n in notes(rows, context)]
    lines += ["", f"Source: `{context['source']}` (model {context['checkpoint'][:12]}), {context['code_version']}.", ""]
    return "\n".join(lines)


_TEX = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
        "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\^{}", "|": r"$|$", "<": r"$<$",
        ">": r"$>$"}


def tex_escape(text: str) -> str:
    return "".join(_TEX.get(c, c) for c in str(text))


def to_latex(rows, context: dict) -> str:
    marks = "abcdefghijklmnopqrstuvwxyz"
    body = []
    for i, r in enumerate(rows):
        body.append(f"{tex_escape(r['quantity'])}$^{{\\mathrm{{{marks[i]}}}}}$ & {_num(r['bits_per_dim'])} & "
                    f"{_se(r['se_bits_per_dim'])} & {_num(r['nats_per_dim'])} & "
                    f"{tex_escape(_count(r.get('n_parameters')))} & {tex_escape(_cpu(r))} \\\\")
    foot = [f"$^{{\\mathrm{{{marks[i]}}}}}$ {tex_escape(n)}" for i, n in enumerate(notes(rows, context)[:len(rows)])]
    foot += [tex_escape(n) for n in notes(rows, context)[len(rows):]]
    return "\n".join([
        f"% Table 2, generated by `dsm table2` ({tex_escape(context['code_version'])}); needs \\usepackage{{booktabs}}",
        "\\begin{table}[t]", "\\centering",
        f"\\caption{{Negative log-likelihood of the {tex_escape(context['dataset'])} test set "
        f"({context['n_images']} images, $d = {context['d']}$), bits/dim.}}",
        "\\begin{tabular}{lrrrrr}", "\\toprule",
        "Quantity & bits/dim & s.e. & nats/dim & parameters & CPU-s fit / eval \\\\", "\\midrule", *body, "\\bottomrule", "\\end{tabular}",
        "\\par\\smallskip\\footnotesize", " \\\\\n".join(foot), "\\end{table}", ""])


def headline(rows) -> dict:
    """The headline numbers of Table 2: ``{<row key>_bits_per_dim: Metric(mean, se, n)}`` for
    every row that applies (bits/dim of the row's convention; the excess has no shift)."""
    from dsm.headline import Metric

    return {f"{r['key']}_bits_per_dim": Metric(r["bits_per_dim"], se=r["se_bits_per_dim"], n=r["n_images"])
            for r in rows if r["applies"]}


def benchmark_cpu_seconds(path) -> float | None:
    """CPU seconds (``cpu_time``) of a Snakemake benchmark file, or None if absent or unreadable."""
    import pandas as pd

    try:
        value = float(pd.read_csv(path, sep="\t")["cpu_time"].iloc[0])
    except (OSError, KeyError, IndexError, ValueError, pd.errors.ParserError, pd.errors.EmptyDataError):
        return None
    return value if math.isfinite(value) else None


def model_costs(model, benchmarks=None) -> dict:
    """The full model's parameter count (model.pt) and, from Snakemake's benchmark files in
    ``benchmarks`` when present, the CPU seconds of its training and of its evaluation
    (normalization constant + the test set)."""
    from dsm.modelfile import read_model_file

    weights = read_model_file(model)["model"]
    out = {"n_parameters": int(sum(v.numel() for v in weights.values())),
           "fit_cpu_seconds": None, "eval_cpu_seconds": None}
    if benchmarks is not None:
        b = Path(benchmarks)
        out["fit_cpu_seconds"] = benchmark_cpu_seconds(b / "train_full.tsv")
        parts = [benchmark_cpu_seconds(b / f) for f in ("normalize_full.tsv", "evaluate_full.tsv")]
        out["eval_cpu_seconds"] = None if None in parts else sum(parts)
    return out


def table2_from_params(cfg: dict, logp, data, model, norm, csv, md, tex, metrics=None,
                       device=None, peers=None, peers_info=None, benchmarks=None) -> list[dict]:
    """`dsm table2`: Table 2 of the scale as CSV, Markdown and LaTeX, and its headline
    numbers (directory ``metrics``, if given). The model and its norm are evaluated only on
    an 8-bit source (dequantization, ``table2.*`` params). With ``peers`` (and
    ``peers_info``) the peers' rows; ``benchmarks``: the directory of Snakemake's benchmark
    files, for the model's CPU seconds."""
    import pandas as pd

    from dsm.data.store import open_store
    from dsm.io import code_version, write_text
    from dsm.outputs import preflight

    preflight({csv: "text", md: "text", tex: "text"}, dirs=[metrics])
    p = (cfg.get("table2") or {})
    draws, seed = int(p.get("dequantize_draws", 1)), int(p.get("seed", 0))
    path = Path(logp)
    if not path.is_file():
        raise DsmError(f"{path}: per-image table not found (run `dsm evaluate --full`)")
    table = pd.read_parquet(path)
    for col in ("image_index", "energy_nats", "d"):
        if col not in table.columns:
            raise DsmError(f"{path}: column {col!r} missing")
    if "image_set" in table.columns and set(table["image_set"]) != {"test"}:
        raise DsmError(f"{path}: expected test images only (image_set), got {sorted(set(table['image_set']))}")
    test = open_store(data, "test")
    dequantized = None
    if is_8bit(test.meta):
        dequantized = _dequantize(cfg, table, test, model, norm, draws, seed, device)
    peer_table, info = None, None
    if peers is not None:
        from dsm.analysis.peers import read_peers

        peer_table, info = read_peers(peers, peers_info)
    rows = nll_rows(table, test.meta, dequantized, draws, peers=peer_table, peers_info=info,
                    model_costs=model_costs(model, benchmarks))
    checkpoint = str(table["checkpoint_sha256"].iloc[0]) if "checkpoint_sha256" in table.columns else ""
    context = {"dataset": test.meta.get("source", "?"), "channels": int(test.shape[0]),
               "scale": cfg.get("name", "?"), "n_images": len(table), "d": int(table["d"].iloc[0]),
               "source": str(path), "checkpoint": checkpoint, "code_version": code_version()}
    write_text(csv, to_csv(rows))
    write_text(md, to_markdown(rows, context))
    write_text(tex, to_latex(rows, context))
    if metrics is not None:
        from dsm.headline import write_metrics_dir

        write_metrics_dir(metrics, headline(rows))
    shown = ", ".join(f"{r['key']} {_num(r['bits_per_dim'])}" for r in rows)
    print(f"table2: bits/dim {shown} -> {csv}, {md}, {tex}", file=sys.stderr)
    return rows


def _dequantize(cfg, table, test, model, norm, draws, seed, device) -> np.ndarray:
    from dsm.analysis.nll import dequantized_energy
    from dsm.evaluate import read_norm
    from dsm.io import sha256_file
    from dsm.modelfile import load_energy_model
    from dsm.runtime import stage_threads

    stage_threads(cfg, "evaluate")
    net, payload, dev = load_energy_model(model, device if device is not None else cfg.get("device", "auto"))
    sha = sha256_file(model)
    info = read_norm(norm, sha)
    if "checkpoint_sha256" in table.columns and set(table["checkpoint_sha256"]) != {sha}:
        raise DsmError(f"{model}: not the model of the per-image table (checkpoint_sha256 differs)")
    bs = int((cfg.get("evaluate") or {}).get("batch_size", 256))
    return dequantized_energy(net, test, table["image_index"].to_numpy(np.int64), info["c_nats"], draws, seed,
                              batch_size=bs, device=dev)
