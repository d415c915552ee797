"""Training checkpoints: atomic writes, the ``latest`` pointer, RNG states, loading.

A run directory ``OUT/checkpoints/`` holds ``step_00001000.pt`` files and a text file
``latest`` naming the newest one. Every file is written to a temporary name and renamed,
the pointer last, so a killed job leaves either the old or the new checkpoint, never half
of one. Checkpoints contain only tensors, plain containers, strings and numbers, so
``torch.load(..., weights_only=True)`` reads them (no pickled code is ever executed).
"""

from __future__ import annotations

import random
import re
from pathlib import Path

import numpy as np
import torch

from dsm.errors import DsmError
from dsm.io import save_torch, write_text

FORMAT = 1
POINTER = "latest"
_NAME = re.compile(r"^step_(\d+)\.pt$")


# --- RNG states as weights_only-safe containers ----------------------------------------

def rng_state(generators: dict[str, torch.Generator]) -> dict:
    """Every RNG state the training step can touch, plus the named torch generators."""
    state = {
        "torch_cpu": torch.get_rng_state(),
        "python": _python_state_to_plain(random.getstate()),
        "numpy": _numpy_state_to_plain(np.random.get_state()),
        "generators": {name: g.get_state() for name, g in generators.items()},
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict, generators: dict[str, torch.Generator]) -> None:
    torch.set_rng_state(state["torch_cpu"])
    random.setstate(_python_state_from_plain(state["python"]))
    np.random.set_state(_numpy_state_from_plain(state["numpy"]))
    for name, g in generators.items():
        g.set_state(state["generators"][name])
    if "cuda" in state and torch.cuda.is_available():
        cuda_states = state["cuda"]
        if len(cuda_states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda_states)


def _python_state_to_plain(s):
    version, internal, gauss = s
    return [version, list(internal), gauss]


def _python_state_from_plain(s):
    version, internal, gauss = s
    return (version, tuple(internal), gauss)


def _numpy_state_to_plain(s):
    name, keys, pos, has_gauss, cached = s
    return [name, torch.from_numpy(np.asarray(keys, dtype=np.int64)), int(pos), int(has_gauss),
            float(cached)]


def _numpy_state_from_plain(s):
    name, keys, pos, has_gauss, cached = s
    return (name, keys.numpy().astype(np.uint32), pos, has_gauss, cached)


# --- files ---------------------------------------------------------------------------

def checkpoint_dir(out_dir) -> Path:
    return Path(out_dir) / "checkpoints"


def list_checkpoints(out_dir) -> list[tuple[int, Path]]:
    """``(step, path)`` of every checkpoint file in ``OUT/checkpoints``, oldest first."""
    cdir = checkpoint_dir(out_dir)
    if not cdir.is_dir():
        return []
    found = []
    for p in cdir.iterdir():
        m = _NAME.match(p.name)
        if m:
            found.append((int(m.group(1)), p))
    return sorted(found)


def latest_checkpoint(out_dir) -> Path | None:
    """The file ``OUT/checkpoints/latest`` points to (or, without a pointer, the newest one)."""
    order = candidates(out_dir)
    return order[0] if order else None


def candidates(out_dir) -> list[Path]:
    """Every checkpoint file, newest first: the pointer's target, then the others by step."""
    cdir = checkpoint_dir(out_dir)
    pointer, first = cdir / POINTER, []
    try:
        target = cdir / pointer.read_text().strip()
        if _NAME.match(target.name) and target.is_file():
            first = [target]
    except (OSError, UnicodeDecodeError):
        pass
    return first + [p for _, p in reversed(list_checkpoints(out_dir)) if p not in first]


def save_checkpoint(out_dir, step: int, payload: dict, keep: int = 3) -> Path:
    """Write ``payload`` atomically as ``step_<step>.pt``, move the pointer, prune old ones."""
    cdir = checkpoint_dir(out_dir)
    path = cdir / f"step_{step:08d}.pt"
    payload = {"format": FORMAT, "step": int(step), **payload}
    save_torch(payload, path)   # through a file object: bytes independent of the temp name
    write_text(cdir / POINTER, path.name + "\n")
    for _, old in list_checkpoints(out_dir)[: -max(1, keep)]:
        if old != path:
            old.unlink(missing_ok=True)
    return path


def load_checkpoint(path, map_location="cpu") -> dict:
    """Load a checkpoint (weights only); a corrupt or foreign file is a DsmError."""
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # noqa: BLE001 - torch raises many types for bad files
        raise DsmError(f"{path}: cannot read checkpoint ({type(e).__name__}: {e})".splitlines()[0]) from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise DsmError(f"{path}: not a dsm checkpoint (format {FORMAT})")
    return payload


def remove_checkpoints(out_dir) -> int:
    """Delete every checkpoint and the pointer (stale state of another config)."""
    n = 0
    for _, p in list_checkpoints(out_dir):
        p.unlink(missing_ok=True)
        n += 1
    (checkpoint_dir(out_dir) / POINTER).unlink(missing_ok=True)
    return n


def all_finite(tensors) -> bool:
    """True when every floating tensor of a (nested) state is finite."""
    if isinstance(tensors, torch.Tensor):
        return not tensors.is_floating_point() or bool(torch.isfinite(tensors).all())
    if isinstance(tensors, dict):
        return all(all_finite(v) for v in tensors.values())
    if isinstance(tensors, (list, tuple)):
        return all(all_finite(v) for v in tensors)
    return True
