"""What a reader sees of the results: the names of headline metrics, and the numbers the
captions of the Snakemake report quote.

**Headline metrics** (the DVC metrics files, ``dvc metrics show``; written by
:mod:`dsm.headline`) hold one quantity each, ``{value, se, ci95_lo, ci95_hi, n}``, the file
named so that its unit is read off the name: the stem ends with a suffix of
:data:`METRIC_UNITS` (``rms_A_minus_B_db_per_dim.json``, ``nll_bits_per_dim.json``,
``pearson_r.json``). Everything else (training logs, parameters, alternatives, per-seed
values, timings) goes to a details file that is an output, not a metric.

**Caption data**: the numbers of the run a caption describes.

A stage's :class:`~dsm.pipeline.stages.Report` entries name JSON files (path patterns in
``{scale}``) by a short name; :func:`caption_data` reads them for one scale into the dict
the caption sees as ``snakemake.params.report`` (``workflow/report/*.rst``, rendered by
Jinja then docutils when ``snakemake --report`` runs):

* ``scale``: the scale's name;
* ``<name>``: the JSON of that file; for a directory, ``{stem: JSON}`` of its ``*.json``
  files and ``{name: {...}}`` of its subdirectories, in natural order (``N10`` before
  ``N100``), so a caption can loop over them (``m.N100.pearson_r.value``); ``{}`` where the
  file is absent (the DAG is built before the outputs exist).

Only small JSON files belong here (headline metrics, normalization constants, lists of
examples): the dict is also shown with the job's parameters in the report.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

# unit suffix (or whole name) of a headline file's stem -> the unit it declares
METRIC_UNITS = {
    "_db_per_dim": "dB/dim (log p: -10 U / (d ln 10))",
    "_nats_per_dim": "nats/dim",
    "_nats": "nats",
    "_bits_per_dim": "bits/dim, 8-bit discrete convention (8 + U / (d ln 2))",
    "_psnr_db": "dB (PSNR for a peak of 1)",
    "_dims": "dimensions",
    "pearson_r": "Pearson correlation (dimensionless)",
    "spearman_rho": "Spearman rank correlation (dimensionless)",
    "_fraction": "fraction (dimensionless)",
    "_ratio": "ratio (dimensionless; kappa: model slope / exact slope)",
    "_count": "count",
}


def metric_unit(name: str) -> str | None:
    """The unit a headline metric's name declares (its suffix in METRIC_UNITS), else None."""
    for suffix, unit in METRIC_UNITS.items():
        if name.endswith(suffix):
            return unit
    return None


def _natural(name: str):
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]


def load_json_tree(path) -> dict:
    """A JSON file's content, or for a directory ``{stem: content}`` of its ``*.json`` files
    and ``{name: tree}`` of its subdirectories (natural order); ``{}`` when ``path`` does not
    exist or is not valid JSON yet."""
    path = Path(path)
    try:
        if path.is_dir():
            entries = [p for p in path.iterdir() if p.is_dir() or p.suffix == ".json"]
            entries = [p for p in entries if not p.name.startswith(".")]
            return {(p.name if p.is_dir() else p.stem): load_json_tree(p)
                    for p in sorted(entries, key=lambda p: _natural(p.stem))}
        if path.is_file():
            return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return {}


def caption_data(patterns: dict, scale: str, root=".") -> dict:
    """``{"scale": scale, name: load_json_tree(root / pattern)}`` for ``{name: pattern}``."""
    out = {"scale": scale}
    for name, pattern in patterns.items():
        out[name] = load_json_tree(Path(root) / pattern.replace("{scale}", scale))
    return out
