"""Writing a figure: atomically (temp file, then rename) and reproducibly (no creation
date in the PDF, so the same figure gives the same bytes and the same DVC hash)."""

from __future__ import annotations

from pathlib import Path

from dsm.io import atomic_path
from dsm.outputs import KINDS


def save_figure(fig, path, **kwargs) -> Path:
    """``fig.savefig`` to ``path`` atomically; the format from the suffix (default pdf)."""
    import matplotlib.pyplot as plt

    path = Path(path)
    fmt = path.suffix.lstrip(".") or "pdf"
    metadata = {"CreationDate": None} if fmt == "pdf" else {}
    try:
        with atomic_path(path, kind=fmt if fmt in KINDS else None) as tmp:
            fig.savefig(tmp, format=fmt, metadata=metadata, **kwargs)
    finally:
        plt.close(fig)
    return path
