"""The README's results tables, rendered from a run's outputs (``dsm summary``).

Each table is one small function of :data:`TABLES` that reads the details files of one
scale's run (``results/<scale>/...``: the analyses' details JSON and CSV files, never the
DVC metric files, whose keys are a display vocabulary), the per-image Parquet tables and
the models' provenance (``model.pt``), or Snakemake's benchmark files
(``benchmarks/<scale>/...``), and returns a :class:`Table`: a header, its column
alignment and rows of formatted cells. :func:`render` adds, under the table, one line of
provenance: the scale, the replicate seeds, the commit the outputs were computed at
(their ``code_version``), where they ran (device, torch version and threads, from the
models' provenance) and the CPU of the machine ``dsm summary`` runs on, and the files
read. A table whose inputs are missing renders as one line naming the missing output and
the command that builds it.

:func:`update_text` replaces the content between ``<!-- summary:NAME -->`` and
``<!-- /summary:NAME -->`` with table NAME; :func:`update_files` does that for several
documents, all rendered before any is written, each written atomically.

Numbers are formatted by :func:`pm` (value ± spread: two significant digits of a spread
whose leading digit is 1 or 2, else one, and the value to the same decimal), :func:`sig`
(significant digits) and :func:`interval`; negative numbers carry a true minus sign (−),
as in the rest of the documentation. Units: log p in dB/dim (docs/theory.md#units) unless
a column says otherwise.
"""

from __future__ import annotations

import math
import os
import platform
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from dsm.errors import DsmError

MINUS = "−"


# --- numbers ---------------------------------------------------------------------------------

def _text(s: str) -> str:
    return s.replace("-", MINUS)


def _finite(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def decimals_for(spread: float) -> int:
    """Decimals that show a spread with two significant digits when its leading digit is
    1 or 2, else one (0.12 -> 2, 0.04 -> 2, 0.0021 -> 4); at most 6."""
    e = math.floor(math.log10(abs(spread)))
    lead = abs(spread) / 10.0 ** e
    return min(6, max(0, -e + (1 if lead < 3 else 0)))


def fixed(x, decimals: int, plus: bool = False) -> str:
    """``x`` with ``decimals`` decimals; ``+`` before a positive value when ``plus``;
    "–" for a missing or non-finite value."""
    if not _finite(x):
        return "–"
    x = x + 0.0                     # no negative zero
    return _text(f"{x:+.{decimals}f}" if plus else f"{x:.{decimals}f}")


def sig(x, digits: int = 3, plus: bool = False) -> str:
    """``x`` to ``digits`` significant digits, never in exponent notation (158.3 -> 158,
    0.13271 -> 0.133); "–" for a missing value."""
    if not _finite(x):
        return "–"
    if x == 0:
        return "0"
    decimals = max(0, digits - 1 - math.floor(math.log10(abs(x))))
    return fixed(x, min(decimals, 8), plus)


def pm(value, spread, plus: bool = False, digits: int = 3, max_decimals: int = 6) -> str:
    """``value ± spread`` with the decimals of :func:`decimals_for` (at most
    ``max_decimals``: a smaller spread is written to one significant digit); the value
    alone (to ``digits`` significant digits) when the spread is missing or zero."""
    if not _finite(value):
        return "–"
    if not _finite(spread) or spread == 0:
        return sig(value, digits, plus)
    d = decimals_for(spread)
    if d > max_decimals:
        return f"{fixed(value, max_decimals, plus)} ± {sci(abs(spread))}"
    return f"{fixed(value, d, plus)} ± {fixed(spread, d)}"


def interval(value, lo, hi, plus: bool = False) -> str:
    """``value [lo, hi]`` with the decimals of the interval's half-width."""
    if not (_finite(value) and _finite(lo) and _finite(hi)) or hi <= lo:
        return sig(value, 3, plus)
    d = decimals_for((hi - lo) / 2)
    return f"{fixed(value, d, plus)} [{fixed(lo, d, plus)}, {fixed(hi, d, plus)}]"


def sci(x) -> str:
    """A noise level or other positive number to 2 significant digits (1e−09 -> 1e−9)."""
    if not _finite(x):
        return "–"
    return _text(re.sub(r"e([+-])0*(\d)", r"e\1\2", f"{x:.2g}").replace("e+", "e"))


def count(n) -> str:
    """An integer with thousands separators (100000 -> 100,000)."""
    return f"{int(n):,}" if _finite(n) else "–"


def seconds(x) -> str:
    """CPU or wall seconds of a job: one decimal below 10 s, whole seconds above."""
    if not _finite(x):
        return "–"
    return f"{x:.1f}" if x < 10 else f"{x:,.0f}"


def span(values, fmt=seconds) -> str:
    """One value, or the range ``lo–hi`` of several."""
    values = [v for v in values if _finite(v)]
    if not values:
        return "–"
    lo, hi = min(values), max(values)
    return fmt(lo) if fmt(lo) == fmt(hi) else f"{fmt(lo)}–{fmt(hi)}"


def fisher_ci(r, n, level_z: float = 1.959964) -> tuple[float, float] | None:
    """95 % interval of a Pearson r of n pairs (Fisher's z transform)."""
    if not _finite(r) or not _finite(n) or n <= 3 or abs(r) >= 1:
        return None
    z, half = math.atanh(r), level_z / math.sqrt(n - 3)
    return math.tanh(z - half), math.tanh(z + half)


# --- reading a run's outputs -------------------------------------------------------------------

class Missing(Exception):
    """An input of a table is not there: ``path`` (relative to the root) and the command
    that builds it."""

    def __init__(self, path: str, builds: str):
        super().__init__(path)
        self.path, self.builds = path, builds


def _stage_of(pattern: str):
    from dsm.pipeline.stages import STAGES

    for s in STAGES.values():
        for name, out in s.outputs.items():
            if out == pattern or (name in s.directories and pattern.startswith(out + "/")):
                return s
    return None


def build_command(pattern: str, rel: str, scale: str) -> str:
    """The command that builds output ``rel`` (of the stage table's ``pattern``)."""
    s = _stage_of(pattern)
    target = rel
    if s is not None:
        for name, out in s.outputs.items():
            if name in s.directories and pattern.startswith(out + "/"):
                target = out.replace("{scale}", scale)
    stage = f" (stage `{s.name}`)" if s is not None else ""
    return f"`snakemake --cores 2 {target} --config scale={scale}`{stage}"


@dataclass
class Inputs:
    """The outputs of one scale under a repository root, as one table reads them; it
    records what was read (files shown in the provenance line, code versions, the
    models' provenance) for :func:`provenance_line`."""

    root: Path
    scale: str
    shown: list[str] = field(default_factory=list)
    code_versions: set[str] = field(default_factory=set)
    models: list[dict] = field(default_factory=list)
    checkpoints: set[str] = field(default_factory=set)     # model files the results name
    model_shas: set[str] = field(default_factory=set)      # model files present now
    seeds: str | None = None
    notes: list[str] = field(default_factory=list)

    def rel(self, pattern: str, **wildcards) -> str:
        out = pattern.replace("{scale}", self.scale)
        for k, v in wildcards.items():
            out = out.replace("{" + k + "}", str(v))
        return out

    def path(self, pattern: str, show: bool = True, **wildcards) -> Path:
        rel = self.rel(pattern, **wildcards)
        p = self.root / rel
        if not p.exists():
            raise Missing(rel, build_command(pattern, rel, self.scale))
        if show and rel not in self.shown:
            self.shown.append(rel)
        return p

    def exists(self, pattern: str, **wildcards) -> bool:
        return (self.root / self.rel(pattern, **wildcards)).exists()

    def json(self, pattern: str, show: bool = True, **wildcards) -> dict:
        from dsm.io import read_json

        data = read_json(self.path(pattern, show, **wildcards), "details file")
        if not isinstance(data, dict):
            raise DsmError(f"{self.rel(pattern, **wildcards)}: expected a JSON object")
        version = data.get("code_version") or (data.get("provenance") or {}).get("code_version")
        if version:
            self.code_versions.add(str(version))
        self.checkpoints |= _named_checkpoints(data)
        return data

    def csv(self, pattern: str, show: bool = True):
        import pandas as pd

        p = self.path(pattern, show)
        try:
            df = pd.read_csv(p)
        except Exception as e:  # noqa: BLE001 - any unreadable CSV is bad input
            raise DsmError(f"{self.rel(pattern)}: cannot read CSV ({type(e).__name__}: {e})") from None
        if "code_version" in df.columns:
            self.code_versions |= {str(v) for v in df["code_version"].dropna().unique()}
        return df

    def parquet(self, pattern: str, columns: list[str], show: bool = True):
        """The given columns of a per-image table, with its ``code_version`` and
        ``checkpoint_sha256`` (recorded for the provenance line)."""
        from dsm.io import read_parquet

        p = self.path(pattern, show)
        import pyarrow.parquet as pq

        have = set(pq.read_schema(p).names)
        extra = [c for c in ("code_version", "checkpoint_sha256") if c in have]
        df = read_parquet(p, "per-image table", columns=[c for c in columns if c in have] + extra)
        if "code_version" in df.columns:
            self.code_versions |= {str(v) for v in df["code_version"].dropna().unique()}
        if "checkpoint_sha256" in df.columns:
            self.checkpoints |= {str(v) for v in df["checkpoint_sha256"].dropna().unique()}
        return df

    def model(self, pattern: str, **wildcards) -> dict:
        """The provenance of a ``model.pt`` (where and with what it trained)."""
        from dsm.io import sha256_file
        from dsm.modelfile import read_model_file

        path = self.path(pattern, show=False, **wildcards)
        payload = read_model_file(path)
        self.model_shas.add(sha256_file(path))
        prov = dict(payload.get("provenance") or {})
        if prov.get("code_version"):
            self.code_versions.add(str(prov["code_version"]))
        self.models.append(prov)
        return prov


def _named_checkpoints(data: dict) -> set[str]:
    """The model files (SHA-256) a details file says it was computed from."""
    found = set()
    for holder in (data, data.get("provenance") or {}):
        for key in ("model_sha256", "checkpoint_sha256"):
            if isinstance(holder.get(key), str):
                found.add(holder[key])
    models = data.get("model")
    candidates = [models] if isinstance(models, dict) else []
    candidates += list((data.get("models") or {}).values()) if isinstance(data.get("models"), dict) else []
    found |= {m["sha256"] for m in candidates if isinstance(m, dict) and isinstance(m.get("sha256"), str)}
    return found


# --- provenance ---------------------------------------------------------------------------------

def cpu_description() -> str:
    """The CPU model and logical CPU count of this machine (/proc/cpuinfo, else platform)."""
    name = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith(("model name", "hardware", "cpu model")):
                name = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    name = re.sub(r"\s+", " ", name or platform.processor() or platform.machine() or "unknown CPU")
    return f"{name}, {os.cpu_count() or '?'} logical CPUs"


def commit_of(code_version: str) -> str:
    """``dsm 0.1.0 (3166aff30204)`` -> ``3166aff30204``; without a git commit, the version."""
    m = re.search(r"\(([^()]+)\)\s*$", code_version)
    return m.group(1) if m else code_version


def _commits(versions: set[str]) -> str:
    if not versions:
        return "commit not recorded"
    commits = sorted({commit_of(v) for v in versions})
    label = "commit" if len(commits) == 1 else "commits (mixed)"
    return f"{label} {', '.join(commits)}"


def _compute(models: list[dict]) -> str | None:
    """Device, torch version and threads of the models' training runs, distinct values."""
    if not models:
        return None
    parts = []
    for key in ("device", "gpu", "torch", "threads"):
        vals = sorted({str(m[key]) for m in models if m.get(key) is not None})
        if not vals:
            continue
        if key == "torch":
            vals = [f"torch {v}" for v in vals]
        elif key == "threads":
            vals = [f"{v} thread{'' if v == '1' else 's'}" for v in vals]
        parts.append(" / ".join(vals))
    return "computed on " + ", ".join(parts) if parts else None


def provenance_line(inp: Inputs, cpu: str) -> str:
    parts = [f"scale `{inp.scale}`"]
    if inp.seeds:
        parts.append(inp.seeds)
    parts.append(_commits(inp.code_versions))
    compute = _compute(inp.models)
    if compute:
        parts.append(compute)
    if inp.checkpoints:
        parts.append("model " + ", ".join(sorted(c[:12] for c in inp.checkpoints)))
        stale = sorted(c[:12] for c in inp.checkpoints - inp.model_shas) if inp.model_shas else []
        if stale:
            parts.append(f"**stale**: computed from model {', '.join(stale)}, which is no longer "
                         f"the model file present")
    parts.append(f"summarised on {cpu}")
    parts += inp.notes
    if inp.shown:
        parts.append("from " + ", ".join(f"`{p}`" for p in inp.shown))
    return "<sub>" + "; ".join(parts) + "</sub>"


# --- tables ---------------------------------------------------------------------------------------

@dataclass
class Table:
    """A Markdown table: header cells, alignments ("l" or "r"), rows of cells."""

    header: list[str]
    align: str
    rows: list[list[str]]

    def markdown(self) -> str:
        if len(self.align) != len(self.header) or any(len(r) != len(self.header) for r in self.rows):
            raise ValueError("a row's cells do not match the header")
        sep = ["---:" if a == "r" else "---" for a in self.align]
        lines = [self.header, sep, *self.rows]
        return "\n".join("| " + " | ".join(c.replace("|", "\\|") for c in line) + " |"
                         if line is not sep else "|" + "|".join(sep) + "|" for line in lines)


FIG1_DETAILS = "results/{scale}/fig1/details.json"
FIG2_DETAILS = "results/{scale}/fig2_details.json"
MODEL = "models/{scale}/seed{seed}/N{N}-{split}/model.pt"
FULL_MODEL = "models/{scale}/full/model.pt"
FULL_SCORE_MODEL = "models/{scale}/full-score/model.pt"
FULL_NORM = "results/{scale}/full/norm.json"
FULL_LOGP = "results/{scale}/full/logp-test.parquet"
BIAS = "results/{scale}/bias.json"
GUMBEL_DETAILS = "results/{scale}/full/gumbel-details.json"
TABLE2 = "results/{scale}/table2.csv"
TABLE1 = "results/{scale}/table1.json"
FIG4_DETAILS = "results/{scale}/fig4/details.json"
FIG5_DETAILS = "results/{scale}/fig5/details.json"
ESTIMATORS = "results/{scale}/estimators.csv"
BENCHMARKS = "benchmarks/{scale}"


def _full_model(inp: Inputs, pattern: str = FULL_MODEL) -> dict:
    prov = inp.model(pattern)
    if prov.get("base_seed") is not None and inp.seeds is None:
        inp.seeds = f"full-model seed {prov['base_seed']}"
    return prov


def _fig1_rows(inp: Inputs) -> tuple[dict, dict, dict]:
    d = inp.json(FIG1_DETAILS)
    seed = (d.get("params") or {}).get("seed")
    inp.seeds = f"seed {seed}" if seed is not None else None
    if d.get("threads") is not None:
        inp.models.append({"threads": d["threads"]})
    return d, d.get("dsm") or {}, d.get("ssm") or {}


def table_fig1(inp: Inputs) -> Table:
    """Figure 1: max |error| of log p over the r range, dual vs single score matching."""
    d, dual, single = _fig1_rows(inp)
    seed = (d.get("params") or {}).get("seed")
    return Table(["seed", "dual score matching", "single score matching",
                  "single, after its best constant shift"], "lrrr",
                 [[str(seed), sig(dual.get("max_abs")), sig(single.get("max_abs")),
                   sig(single.get("max_abs_shifted"))]])


def table_fig1_details(inp: Inputs) -> Table:
    """Figure 1 in full: max and RMS |error|, before and after a constant shift."""
    d, dual, single = _fig1_rows(inp)
    seed = (d.get("params") or {}).get("seed")
    rows = [[f"{label}, {seed}", sig(m.get("max_abs")), sig(m.get("rms")), sig(m.get("max_abs_shifted")),
             sig(m.get("rms_shifted"))] for label, m in (("dual", dual), ("single", single))]
    return Table(["method, seed", "max |error|", "RMS", "max after the best constant shift",
                  "RMS after the mean shift"], "lrrrr", rows)


def _fig2(inp: Inputs) -> dict:
    d = inp.json(FIG2_DETAILS)
    seeds = d.get("seeds") or sorted(int(s) for s in d.get("by_seed", {}))
    inp.seeds = "replicate seeds " + ", ".join(str(s) for s in seeds)
    for seed in seeds:
        for n in d.get("by_N", {}):
            for split in ("A", "B"):
                if inp.exists(MODEL, seed=seed, N=n, split=split):
                    inp.model(MODEL, seed=seed, N=n, split=split)
    return d


def _ab(a, b, sd_a=None, sd_b=None) -> str:
    if not (_finite(a) or _finite(b)):
        return "–"
    return f"{pm(a, sd_a, plus=True)} / {pm(b, sd_b, plus=True)}"


def table_fig2(inp: Inputs) -> Table:
    """Figure 2 per N: agreement of models A and B (mean ± sd over replicates) and their
    error against the exact log p on their own training images."""
    d = _fig2(inp)
    rows = []
    for n, m in sorted(d.get("by_N", {}).items(), key=lambda kv: int(kv[0])):
        rows.append([count(int(n)), str(m.get("n_seeds", 1)),
                     pm(m.get("pearson_r"), m.get("pearson_r_sd")),
                     pm(m.get("rms_db"), m.get("rms_db_sd")),
                     _ab(m.get("exact_mean_err_db_A"), m.get("exact_mean_err_db_B"),
                         m.get("exact_mean_err_db_A_sd"), m.get("exact_mean_err_db_B_sd")),
                     sig(m.get("exact_mean_err_db_max_abs"))])
    return Table(["N", "replicates", "Pearson r", "RMS log p_A − log p_B", "error, model A / B",
                  "largest |error|"], "rrrrrr", rows)


def table_fig2_replicates(inp: Inputs) -> Table:
    """Figure 2 per N and replicate seed."""
    d = _fig2(inp)
    rows = []
    for seed, by_n in sorted(d.get("by_seed", {}).items(), key=lambda kv: int(kv[0])):
        for n, m in sorted(by_n.items(), key=lambda kv: int(kv[0])):
            rows.append([count(int(n)), str(seed), sig(m.get("pearson_r"), 4), sig(m.get("rms_db")),
                         sig(m.get("exact_mean_err_db_A"), plus=True),
                         sig(m.get("exact_mean_err_db_B"), plus=True)])
    rows.sort(key=lambda r: (int(r[0].replace(",", "")), int(r[1])))
    return Table(["N", "seed", "Pearson r", "RMS A − B", "error, model A", "error, model B"],
                 "rrrrrr", rows)


BIAS_TERMS = (("norm_err_db", "normalization at T = {t_norm:g}"),
              ("time_total_db", "time score, T → 0"),
              ("space_total_db", "space score, T → 0"),
              ("predicted_err_db", "predicted (the sum)"),
              ("direct_err_db", "measured at t = 0"))


def table_bias(inp: Inputs) -> Table:
    """The bias budget of the full model (model − exact log p, ± SE), the κ(t) check of
    the time score and the spread of the normalization constant over T, when present."""
    d = inp.json(BIAS)
    _full_model(inp)
    if d.get("available") is False:
        return Table(["quantity", "value"], "lr",
                     [["bias budget", "not available: the data source has no exact density"]])
    rows = []
    for key, label in BIAS_TERMS:
        se = d.get(key.replace("_db", "_se_db"))
        rows.append([label.format(t_norm=d.get("t_norm", float("nan"))) + ", dB/dim",
                     pm(d.get(key), se, plus=True)])
    kappa = d.get("kappa_check")
    if kappa:
        rows.append([f"κ(t) of the time score over t ∈ [{kappa.get('from_t', float('nan')):g}, "
                     f"{kappa.get('to_t', float('nan')):g}] (1: exact)",
                     f"{sig(kappa.get('min'))} … {sig(kappa.get('max'))}"
                     if _finite(kappa.get("min")) else "no level in range"])
    if inp.exists(FULL_NORM):
        norm = inp.json(FULL_NORM)
        check = norm.get("check") or []
        if len(check) > 1 and _finite(norm.get("check_spread_db_per_dim")):
            ts = sorted(float(c["t"]) for c in check)
            rows.append([f"spread of c read at {len(ts)} levels T ∈ [{ts[0]:g}, {ts[-1]:g}], dB/dim",
                         sig(abs(norm["check_spread_db_per_dim"]), 2)])
    return Table(["quantity", "value"], "lr", rows)


FAMILIES = {"gumbel_r": "Gumbel", "gumbel_l": "left Gumbel", "norm": "normal", "skewnorm": "skew-normal"}


def table_gumbel(inp: Inputs) -> Table:
    """The distribution of the full model's test-set log p: Gumbel fit (95 % bootstrap),
    mean log p, mean error against the exact log p (± SE over images), best family."""
    d = inp.json(GUMBEL_DETAILS)
    _full_model(inp)
    g, boot = d.get("gumbel_r") or {}, d.get("bootstrap") or {}
    sample = d.get("sample") or {}
    loc_ci = g.get("loc_ci95") or boot.get("loc") or [None, None]
    scale_ci = g.get("scale_ci95") or boot.get("scale") or [None, None]
    mean_ci = sample.get("mean_ci95") or boot.get("mean") or [None, None]
    df = inp.parquet(FULL_LOGP, ["logp_db_per_dim", "exact_logp_db_per_dim"])
    error = "–"
    if "exact_logp_db_per_dim" in df.columns and len(df) > 1:
        e = (df["logp_db_per_dim"] - df["exact_logp_db_per_dim"]).to_numpy(float)
        error = pm(float(e.mean()), float(e.std(ddof=1) / math.sqrt(len(e))), plus=True)
    best = d.get("best_by_aic")
    best_text = FAMILIES.get(best, str(best)) if best else "–"
    if best and _finite(d.get("aic_margin")):
        best_text += f" (by {d['aic_margin']:.0f})"
    return Table(["test images", "Gumbel location", "Gumbel scale", "mean log p",
                  "error, model − exact", "best family by AIC"], "rrrrrl",
                 [[count(d.get("n_images")), interval(g.get("loc"), *loc_ci),
                   interval(g.get("scale"), *scale_ci), interval(sample.get("mean"), *mean_ci),
                   error, best_text]])


TABLE2_LABELS = {
    "model_8bit_shift": "model",
    "model_dequantized": "model, dequantized",
    "exact_test": "exact density, same images",
    "exact_entropy": "source entropy (exact)",
    "model_excess": "model − exact (paired)",
    "gmm": "Gaussian mixture",
    "gaussian": "Gaussian",
    "model_minus_gmm": "model − Gaussian mixture (paired)",
    "model_minus_gaussian": "model − Gaussian (paired)",
    "gmm_excess": "Gaussian mixture − exact (paired)",
    "gaussian_excess": "Gaussian − exact (paired)",
}


def _applies(v) -> bool:
    return str(v).strip().lower() in ("true", "1", "yes")


def table_table2(inp: Inputs) -> Table:
    """Table 2: test-set NLL in bits/dim (8-bit convention: 8 + NLL / (d ln 2); the
    differences carry no shift) and nats/dim, mean ± SE over the test images; one row per
    quantity of ``table2.csv`` that applies (peers included when present)."""
    df = inp.csv(TABLE2)
    _full_model(inp)
    for col in ("key", "bits_per_dim", "se_bits_per_dim", "nats_per_dim", "se_nats_per_dim"):
        if col not in df.columns:
            raise DsmError(f"{inp.rel(TABLE2)}: column {col} missing (has {list(df.columns)})")
    rows = []
    for r in df.to_dict("records"):
        if "applies" in r and not _applies(r["applies"]):
            continue
        label = TABLE2_LABELS.get(r["key"], str(r.get("quantity") or r["key"]))
        rows.append([label, pm(_num(r["bits_per_dim"]), _num(r["se_bits_per_dim"]), digits=4),
                     pm(_num(r["nats_per_dim"]), _num(r["se_nats_per_dim"]), digits=4)])
    return Table(["quantity", "bits/dim", "nats/dim"], "lrr", rows)


def _num(v):
    try:
        x = float(v)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


def _table1(inp: Inputs) -> list[dict]:
    d = inp.json(TABLE1)
    _full_model(inp)
    inp.model(FULL_SCORE_MODEL)
    return d.get("by_psnr") or []


def table_table1(inp: Inputs) -> Table:
    """Table 1: output PSNR (dB) of the energy model's denoiser, the score-only model's and
    the optimal one, per input PSNR; energy − score ± SE (paired)."""
    rows = []
    for r in _table1(inp):
        diff = r.get("energy_minus_score") or {}
        rows.append([sig(r.get("input_psnr_db"), 2), "yes" if r.get("in_training_range") else "no",
                     fixed((r.get("energy") or {}).get("psnr_db"), 2),
                     fixed((r.get("score") or {}).get("psnr_db"), 2),
                     fixed((r.get("optimal") or {}).get("psnr_db"), 2),
                     pm(diff.get("diff_db"), diff.get("se_db"), plus=True, max_decimals=3)])
    return Table(["input PSNR", "t trained", "energy (y − t∇U)", "score (y − t s)", "optimal (exact)",
                  "energy − score"], "rlrrrr", rows)


def table_table1_details(inp: Inputs) -> Table:
    """Table 1's differences: energy − score with its z, each model's gap to the optimal
    denoiser (dB; optimal − model)."""
    rows = []
    for r in _table1(inp):
        diff, gap = r.get("energy_minus_score") or {}, r.get("gap_to_optimal_db") or {}
        rows.append([sig(r.get("input_psnr_db"), 2), sci(r.get("t")),
                     pm(diff.get("diff_db"), diff.get("se_db"), plus=True, max_decimals=3),
                     fixed(diff.get("z"), 1, plus=True), fixed(gap.get("energy"), 2), fixed(gap.get("score"), 2)])
    return Table(["input PSNR", "t", "energy − score", "z", "optimal − energy", "optimal − score"],
                 "rrrrrr", rows)


def _r_ci(part: dict) -> str:
    r, n = part.get("pearson_r"), part.get("n")
    ci = fisher_ci(r, n)
    return interval(r, *ci) if ci else sig(r, 2)


def table_fig45(inp: Inputs) -> Table:
    """Figures 4 and 5: log p against sparsity (Pearson r, 95 % interval), the largest
    disagreement of the two d_eff estimates (eqs. 11, 12), and the largest error of log p
    over Figure 4's contrast × brightness grid."""
    f4, f5 = inp.json(FIG4_DETAILS), inp.json(FIG5_DETAILS)
    _full_model(inp)
    sp = f4.get("sparsity") or {}
    model, exact = sp.get("model") or {}, sp.get("exact")
    n = (sp.get("model") or {}).get("n")
    rows = [[f"Pearson r of log p and the wavelet participation ratio ({count(n)} images)",
             _r_ci(model), _r_ci(exact) if exact else "–"]]

    def gap(consistency):
        g = (consistency or {}).get("largest_disagreement") or {}
        if not _finite(g.get("gap")):
            return "–"
        return f"{pm(abs(g['gap']), g.get('gap_se'))} (t = {sci(g.get('t'))})"

    t_range = f5.get("training_t_range") or [None, None]
    rows.append([f"largest |d_eff eq. 11 − eq. 12| (dimensions of {f5.get('d')}), "
                 f"t ≤ {sci(t_range[1])}",
                 gap(f5.get("model_consistency")), gap(f5.get("exact_consistency"))])
    grid = f4.get("grid_model_minus_exact_db") or {}
    rows.append(["largest |model − exact log p| on Figure 4's contrast × brightness grid, dB/dim",
                 sig(grid.get("max_abs")), "0" if grid else "–"])
    return Table(["quantity", "model", "exact density"], "lrr", rows)


ESTIMATOR_NAMES = {"one-shot": "one-shot", "mse-bound": "denoising bound",
                   "ode": "probability-flow ODE", "sde": "SDE"}


def _options(text) -> dict:
    return dict(kv.split("=", 1) for kv in str(text or "").split() if "=" in kv)


def _estimator_rows(inp: Inputs):
    df = inp.csv(ESTIMATORS)
    _full_model(inp)
    for r in df.to_dict("records"):
        if r["density"] == "exact" and r["estimator"] == "one-shot":
            continue                              # the exact density against itself: 0 by definition
        yield r


def table_estimators(inp: Inputs) -> Table:
    """Four estimators of log p on the full model and on the exact density: bias against
    the exact log p (± SE), network evaluations per image, how many times cheaper the
    one-shot value is (CPU time)."""
    rows = []
    for r in _estimator_rows(inp):
        faster = _num(r.get("one_shot_speedup_cpu"))
        rows.append([r["density"], ESTIMATOR_NAMES.get(r["estimator"], r["estimator"]),
                     pm(_num(r.get("bias_db_per_dim")), _num(r.get("bias_se_db_per_dim")), plus=True),
                     count(_num(r.get("nfe_per_image"))),
                     f"{faster:,.0f}×" if r["density"] == "model" and faster else "–"])
    return Table(["density", "estimator", "bias", "NFE / image", "one-shot faster (CPU)"], "llrrr", rows)


def _estimator_label(r: dict) -> str:
    name = f"`{r['estimator']}`" if r["estimator"] != "one-shot" else "one-shot"
    opts = _options(r.get("options"))
    if r["estimator"] == "ode" and opts.get("trace") == "hutchinson":
        name += f" (Hutchinson, {opts.get('probes', '?')} probe{'s' if opts.get('probes') != '1' else ''})"
    elif r["estimator"] == "ode" and opts.get("trace") == "exact":
        name += " (exact trace)"
    return name


def table_estimators_details(inp: Inputs) -> Table:
    """The estimators in full: bias ± SE, spread over repeats, NFE, and the one-shot
    value's speed-up in wall and CPU time."""
    rows = []
    for r in _estimator_rows(inp):
        wall, cpu = _num(r.get("one_shot_speedup")), _num(r.get("one_shot_speedup_cpu"))
        rows.append([r["density"], _estimator_label(r),
                     pm(_num(r.get("bias_db_per_dim")), _num(r.get("bias_se_db_per_dim")), plus=True),
                     sig(_num(r.get("sd_repeats_db_per_dim")), 2),
                     count(_num(r.get("nfe_per_image"))),
                     f"{wall:,.0f} / {cpu:,.0f}" if r["density"] == "model" and wall and cpu else "–"])
    return Table(["density", "estimator", "bias", "sd over repeats", "NFE / image",
                  "one-shot faster (wall / CPU)"], "llrrrr", rows)


# --- cost: Snakemake's benchmark files ------------------------------------------------------------

def _benchmarks(inp: Inputs) -> dict[str, list[dict]]:
    """Per stage (in the stage table's order), one record per job: wall ``s``, ``cpu_time``
    (s) and ``max_rss`` (MB) of its benchmark TSV."""
    import pandas as pd

    from dsm.pipeline.stages import STAGES

    root = inp.root / inp.rel(BENCHMARKS)
    files = sorted(root.rglob("*.tsv")) if root.is_dir() else []
    if not files:
        raise Missing(inp.rel(BENCHMARKS),
                      f"Snakemake's `benchmark:` files, written by `snakemake --cores 2 all --config "
                      f"scale={inp.scale}` (a `dvc repro` run writes none)")
    inp.shown.append(inp.rel(BENCHMARKS) + "/")
    for pattern in (FULL_NORM, FIG2_DETAILS):       # the commit of the run's results
        if inp.exists(pattern):
            inp.json(pattern, show=False)
    inp.checkpoints.clear()
    jobs: dict[str, list[dict]] = {}
    for f in files:
        stage = f.relative_to(root).parts[0].removesuffix(".tsv")
        try:
            df = pd.read_csv(f, sep="\t")
        except Exception as e:  # noqa: BLE001
            raise DsmError(f"{f}: cannot read benchmark file ({type(e).__name__}: {e})") from None
        for col in ("s", "cpu_time", "max_rss"):
            if col not in df.columns:
                raise DsmError(f"{f}: column {col} missing (a Snakemake benchmark file has s, "
                               f"cpu_time, max_rss, ...)")
        jobs.setdefault(stage, []).extend(
            {k: _num(v) for k, v in rec.items()} for rec in df[["s", "cpu_time", "max_rss"]].to_dict("records"))
    order = {name: i for i, name in enumerate(STAGES)}
    return dict(sorted(jobs.items(), key=lambda kv: (order.get(kv[0], len(order)), kv[0])))


def table_cost(inp: Inputs) -> Table:
    """The run's cost in one row, from Snakemake's benchmark files (the stages marked
    ``benchmark`` in the stage table; the light stages write none): jobs, CPU seconds of
    all of them, the stage that takes the most and the longest job."""
    jobs = _benchmarks(inp)
    cpu = {stage: [r["cpu_time"] for r in recs if _finite(r["cpu_time"])] for stage, recs in jobs.items()}
    total = sum(sum(v) for v in cpu.values())
    top = max(cpu, key=lambda k: sum(cpu[k]))
    longest = max(((stage, v) for stage, vals in cpu.items() for v in vals), key=lambda sv: sv[1])
    n = sum(len(recs) for recs in jobs.values())
    return Table(["benchmarked jobs", "CPU s, all jobs", "largest stage, CPU s", "longest job, CPU s"],
                 "rrll", [[str(n), seconds(total) + (f" ({total / 60:,.0f} min)" if total >= 120 else ""),
                           f"{top}: {seconds(sum(cpu[top]))} ({len(cpu[top])} job{'s' if len(cpu[top]) > 1 else ''})",
                           f"{longest[0]}: {seconds(longest[1])}"]])


def table_cost_details(inp: Inputs) -> Table:
    """Per stage: jobs, wall and CPU seconds per job, CPU seconds of all its jobs, peak
    memory."""
    rows = []
    for stage, recs in _benchmarks(inp).items():
        cpu = [r["cpu_time"] for r in recs if _finite(r["cpu_time"])]
        rows.append([stage, str(len(recs)), span([r["s"] for r in recs]), span(cpu), seconds(sum(cpu)),
                     span([r["max_rss"] for r in recs], lambda x: f"{x:,.0f}")])
    return Table(["stage", "jobs", "wall s per job", "CPU s per job", "CPU s, all jobs", "peak RSS, MB"],
                 "lrrrrr", rows)


TABLES: dict[str, Callable[[Inputs], Table]] = {
    "fig1": table_fig1,
    "fig1-details": table_fig1_details,
    "fig2": table_fig2,
    "fig2-replicates": table_fig2_replicates,
    "bias": table_bias,
    "gumbel": table_gumbel,
    "table2": table_table2,
    "table1": table_table1,
    "table1-details": table_table1_details,
    "fig45": table_fig45,
    "estimators": table_estimators,
    "estimators-details": table_estimators_details,
    "cost": table_cost,
    "cost-details": table_cost_details,
}


# --- rendering and updating documents ------------------------------------------------------------

def render(name: str, root, scale: str, cpu: str | None = None) -> str:
    """Table ``name`` of the scale's run under ``root`` as Markdown, with its provenance
    line; or, if an input is missing, one line saying which and what builds it."""
    if name not in TABLES:
        raise DsmError(f"unknown summary table {name!r} (known: {', '.join(TABLES)})")
    inp = Inputs(Path(root), scale)
    try:
        table = TABLES[name](inp)
    except Missing as m:
        return f"*Not rendered: `{m.path}` is missing; {m.builds} builds it.*"
    return table.markdown() + "\n\n" + provenance_line(inp, cpu or cpu_description())


def render_all(root, scale: str, names=None) -> str:
    """Every table (or ``names``) between its markers, as ``dsm summary`` prints them."""
    cpu = cpu_description()
    blocks = [f"<!-- summary:{n} -->\n{render(n, root, scale, cpu)}\n<!-- /summary:{n} -->"
              for n in (names or TABLES)]
    return "\n\n".join(blocks) + "\n"


MARKER = re.compile(r"^<!-- (/?)summary:([^ >]*) -->[ \t]*$", re.M)   # a marker is a line of its own


def split_name(name: str) -> tuple[str, str | None]:
    """``NAME`` or ``NAME@SCALE`` of a marker: the table and the scale it names (None: the
    scale the command was given)."""
    table, _, scale = name.partition("@")
    return table, (scale or None)


def marked_blocks(text: str, source: str = "document") -> list[tuple[str, int, int]]:
    """(name, start, end) of every marked block: the content between the end of the line
    ``<!-- summary:NAME -->`` and the start of the line ``<!-- /summary:NAME -->`` (a
    marker quoted within a line of text is text). ``NAME@SCALE`` renders the table of
    another scale's run under the same root (e.g. ``table2@natural``). Unpaired or
    nested markers and unknown names are DsmErrors naming the marker and its line."""
    blocks, open_ = [], None
    for m in MARKER.finditer(text):
        line = text.count("\n", 0, m.start()) + 1
        closing, name = m.group(1) == "/", m.group(2)
        if not closing:
            if split_name(name)[0] not in TABLES:
                raise DsmError(f"{source}:{line}: unknown summary table {name!r} in marker "
                               f"{m.group(0)} (known: {', '.join(TABLES)})")
            if open_ is not None:
                raise DsmError(f"{source}:{line}: marker {m.group(0)} inside the block of "
                               f"<!-- summary:{open_[0]} --> (not closed)")
            open_ = (name, m.end(), line)
        else:
            if open_ is None or open_[0] != name:
                raise DsmError(f"{source}:{line}: closing marker {m.group(0)} without its "
                               f"<!-- summary:{name} -->")
            blocks.append((name, open_[1], m.start()))
            open_ = None
    if open_ is not None:
        raise DsmError(f"{source}:{open_[2]}: marker <!-- summary:{open_[0]} --> is not closed "
                       f"(<!-- /summary:{open_[0]} -->)")
    return blocks


def update_text(text: str, root, scale: str, source: str = "document", cpu: str | None = None) -> str:
    """``text`` with every marked block replaced by its rendered table."""
    blocks = marked_blocks(text, source)
    if not blocks:
        raise DsmError(f"{source}: no <!-- summary:NAME --> ... <!-- /summary:NAME --> markers")
    cpu = cpu or cpu_description()
    out, pos = [], 0
    for name, start, end in blocks:
        table, own_scale = split_name(name)
        out += [text[pos:start], "\n", render(table, root, own_scale or scale, cpu), "\n"]
        pos = end
    out.append(text[pos:])
    return "".join(out)


def update_files(paths, root, scale: str) -> list[Path]:
    """Replace the marked blocks of each document; every document is rendered before any
    is written, and each is written atomically. Returns the documents that changed."""
    from dsm.io import write_text

    cpu = cpu_description()
    new = {}
    for p in map(Path, paths):
        if not p.is_file():
            raise DsmError(f"{p}: document not found")
        text = p.read_text()
        new[p] = (text, update_text(text, root, scale, str(p), cpu))
    changed = []
    for p, (old, text) in new.items():
        if text != old:
            write_text(p, text, replace_tracked=True)     # the documents are committed: only marked blocks change
            changed.append(p)
    return changed
