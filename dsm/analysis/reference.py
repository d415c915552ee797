"""The reference images of Figures 3–5 and the test part they index, for the analyses
across noise levels (:mod:`dsm.analysis.dimensionality`, :mod:`dsm.analysis.contrast`)
and their figures. A leaf module: reading them costs no network code."""

from __future__ import annotations

import json
from pathlib import Path

from dsm.errors import DsmError


def read_examples(path) -> list:
    """The reference images of ``results/<scale>/full/examples.json`` (``dsm examples``):
    a list of {image_index, image_id, logp_db_per_dim}, lowest log p first."""
    path = Path(path)
    if not path.is_file():
        raise DsmError(f"{path}: reference images not found (run `dsm examples`)")
    try:
        ex = json.loads(path.read_text())["examples"]
        return [{"image_index": int(e["image_index"]), "image_id": str(e["image_id"]),
                 "logp_db_per_dim": float(e["logp_db_per_dim"])} for e in ex]
    except (ValueError, KeyError, TypeError) as e:
        raise DsmError(f"{path}: not an examples file ({type(e).__name__}: {e})") from None


def open_test_part(data):
    """The test part of a prepared store ``data`` (``DIR`` or ``DIR/test``)."""
    from dsm.data.store import open_store

    data = Path(data)
    return open_store(data / "test") if (data / "test").exists() else open_store(data)
