"""Headline-number files: what ``dvc metrics show`` lists (the stage table's ``metrics``).

A headline file holds a few numbers, flat, each named with its unit (the name ends with a
suffix of ``dsm.pipeline.report.METRIC_UNITS``: ``_db_per_dim``, ``_bits_per_dim``,
``_psnr_db``, ``_dims``, ``_fraction``, ``pearson_r``, ...), no strings, lists or timings:
everything else goes to the stage's details file. DVC's table has one row per file and
one column per key name, so more numbers than fit one terminal line are written as a
**directory** of files sharing their keys, one file per row (:func:`write_json_dir`; Figure
2's ``fig2_metrics/N<N>.json``, Table 1's rows per input PSNR).

Non-finite numbers (a standard error of one image) become ``null``: JSON has no NaN, and
DVC leaves nulls out of its table. A leaf module (imports dsm.io only), so the stages that
write headline files do not depend on each other.
"""

from __future__ import annotations

import math
from pathlib import Path


def finite(obj):
    """``obj`` with every NaN/inf float (in dicts and lists, recursively) replaced by None."""
    if isinstance(obj, dict):
        return {k: finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if getattr(obj, "ndim", None) == 0 and hasattr(obj, "item"):      # numpy scalars
        return finite(obj.item())
    return obj


def write_headline(path, numbers: dict) -> None:
    """One headline file: ``{name: number or None}`` (sorted keys), written atomically."""
    from dsm.io import write_json

    write_json(path, finite(numbers))


def write_json_dir(path, files: dict) -> None:
    """A directory of JSON files ``{name: obj}`` (``name.json``), replacing ``path`` whole:
    built in a hidden temporary directory beside it and renamed into place (a killed job
    leaves the old directory, none, or the new one; never a partial one). An existing
    ``path`` is replaced only if it is recognisably such a directory (the guard
    :func:`dsm.outputs.check_dir`: empty, or nothing but headline JSON files; never the
    current directory, a repository or a parent of the command's arguments); otherwise a
    DsmError and nothing is touched."""
    import os
    import shutil
    import tempfile

    from dsm import outputs
    from dsm.io import (is_no_space, json_text, no_space_error, remove_stale_temps, replace_dir,
                        temp_prefix, umask)

    path = outputs.check_dir(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(path.parent, path.name)
    tmp = Path(tempfile.mkdtemp(prefix=temp_prefix(path.name), suffix=".tmp", dir=path.parent))
    try:
        os.chmod(tmp, 0o777 & ~umask())         # mkdtemp's 0700 would hide it from others
        for name, obj in files.items():
            with open(tmp / f"{name}.json", "w") as f:
                f.write(json_text(finite(obj)))
                f.flush()
                os.fsync(f.fileno())
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
