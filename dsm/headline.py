"""Headline-number files: what ``dvc metrics show`` lists (the stage table's ``metrics``).

One small vocabulary for every headline file, so that DVC's table (one row per file, one
column per key found in any file) stays a narrow table of rows: a file holds **one
quantity**, its name says what and in which unit (``loc_db_per_dim.json``,
``energy_psnr_db.json``: the stem ends with a suffix of
``dsm.pipeline.report.METRIC_UNITS``), and its keys are among :data:`KEYS`:

* ``value``: the number;
* ``se``: its standard error (over images, or over replicates: ``n`` says how many);
* ``ci95_lo``, ``ci95_hi``: a 95 % interval (bootstrap);
* ``n``: the sample size behind ``se`` or the interval (images or replicates).

A stage writes its headline numbers as one directory of such files
(:func:`write_metrics_dir`, e.g. ``results/<scale>/full/gumbel/``); a table of them is a
directory per row (Figure 2's ``fig2_metrics/N<N>/``, Table 1's ``table1_metrics/psnr+90/``).
Everything else (settings, alternatives, per-seed values, timings) goes to the stage's
details file.

Non-finite numbers (a standard error of one image) become ``null``: JSON has no NaN, and
DVC leaves nulls out of its table. A leaf module (imports dsm.io only), so the stages that
write headline files do not depend on each other.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

KEYS = ("value", "se", "ci95_lo", "ci95_hi", "n")


@dataclass(frozen=True)
class Metric:
    """One headline quantity: ``value``, optionally its standard error ``se``, a 95 %
    interval ``ci95 = (lo, hi)`` and the sample size ``n`` (None: not given, left out)."""

    value: float | None
    se: float | None = None
    ci95: tuple[float, float] | None = None
    n: int | None = None

    def as_json(self) -> dict:
        """``{value, [se], [ci95_lo, ci95_hi], [n]}``, non-finite numbers as null."""
        out = {"value": self.value}
        if self.se is not None:
            out["se"] = self.se
        if self.ci95 is not None:
            out["ci95_lo"], out["ci95_hi"] = self.ci95
        if self.n is not None:
            out["n"] = int(self.n)
        return finite(out)


def finite(obj):
    """``obj`` with every NaN/inf float (in dicts and lists, recursively) replaced by None."""
    if isinstance(obj, dict):
        return {k: finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite(v) for v in obj]
    if getattr(obj, "ndim", None) == 0 and hasattr(obj, "item"):      # numpy scalars
        return finite(obj.item())
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def write_metrics_dir(path, metrics: dict) -> None:
    """The headline directory ``path``: ``{name: Metric}`` as ``name.json`` files; a value
    that is a dict ``{name: Metric}`` becomes a subdirectory (a row of a table). Replaces
    ``path`` whole and atomically (:func:`write_json_dir`)."""
    def tree(node: dict) -> dict:
        out = {}
        for name, m in node.items():
            if isinstance(m, Metric):
                out[name] = m.as_json()
            elif isinstance(m, dict):
                out[name] = tree(m)
            else:
                raise TypeError(f"headline {name}: expected a Metric or a dict of them, got {type(m).__name__}")
        return out

    write_json_dir(path, tree(metrics), nested=True)


def write_json_dir(path, files: dict, nested: bool = False) -> None:
    """A directory of JSON files ``{name: obj}`` (``name.json``), replacing ``path`` whole:
    built in a hidden temporary directory beside it and renamed into place (a killed job
    leaves the old directory, none, or the new one; never a partial one). ``nested``: a
    value whose values are all dicts is a subdirectory of files instead of one file. An
    existing ``path`` is replaced only if it is recognisably such a directory (the guard
    :func:`dsm.outputs.check_dir`: empty, or nothing but headline JSON files and
    subdirectories of them; never the current directory, a repository or a parent of the
    command's arguments); otherwise a DsmError and nothing is touched."""
    import os
    import shutil
    import tempfile

    from dsm import outputs
    from dsm.io import (is_no_space, json_text, no_space_error, remove_stale_temps, replace_dir,
                        temp_prefix, umask)

    def fill(folder: Path, node: dict) -> None:
        for name, obj in node.items():
            if nested and isinstance(obj, dict) and obj and all(isinstance(v, dict) for v in obj.values()):
                (folder / name).mkdir(mode=0o777 & ~umask())
                fill(folder / name, obj)
            else:
                with open(folder / f"{name}.json", "w") as f:
                    f.write(json_text(finite(obj)))
                    f.flush()
                    os.fsync(f.fileno())

    path = outputs.check_dir(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(path.parent, path.name)
    tmp = Path(tempfile.mkdtemp(prefix=temp_prefix(path.name), suffix=".tmp", dir=path.parent))
    try:
        os.chmod(tmp, 0o777 & ~umask())         # mkdtemp's 0700 would hide it from others
        fill(tmp, files)
        outputs.check_dir(path)                 # nothing else appeared there meanwhile
        replace_dir(tmp, path)
        outputs.record_written(path)
    except OSError as e:
        if is_no_space(e):
            raise no_space_error(path) from None
        raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
