"""Where and how a computation runs: device, CPU threads, seeds, determinism.

Every result of the pipeline must be a function of its parameters, not of the tool
that launched it. Two things decide floating-point results besides the inputs:

* the device (``device`` in params, or ``--device``), recorded in each output;
* on CPU, the number of intra-op threads (a reduction split over more threads sums in
  another order). Pipeline stages set it from their params
  (``resources.<group>.threads``, see :func:`stage_threads`), never from the
  environment, so Snakemake (which exports ``OMP_NUM_THREADS``) and DVC (which does
  not) compute bit-identical outputs.
"""

from __future__ import annotations

import os
import random
from typing import Mapping

import numpy as np
import torch

from dsm.errors import DsmError


def resolve_device(spec=None) -> torch.device:
    """'auto' (or None) -> cuda if available else cpu; 'cpu', 'cuda', 'cuda:N' as given."""
    if isinstance(spec, torch.device):
        return spec
    spec = "auto" if spec in (None, "") else str(spec)
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(spec)
    except RuntimeError:
        raise DsmError(f"device: unknown value {spec!r} (expected auto, cpu, cuda or cuda:N)") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise DsmError(f"device: {spec!r} requested but CUDA is not available (use auto or cpu)")
    if dev.type not in ("cpu", "cuda"):
        raise DsmError(f"device: unsupported device type {dev.type!r} (expected auto, cpu, cuda)")
    return dev


def use_threads(threads, where: str = "threads") -> int:
    """Set torch's intra-op threads to ``threads`` (None: leave as is); returns the count."""
    if threads in (None, ""):
        return torch.get_num_threads()
    try:
        n = int(threads)
    except (TypeError, ValueError):
        raise DsmError(f"{where}: expected a positive integer, got {threads!r}") from None
    if n < 1 or isinstance(threads, bool):
        raise DsmError(f"{where}: expected a positive integer, got {threads!r}")
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)
    return n


def stage_threads(cfg: Mapping, group: str) -> int:
    """Threads of a pipeline stage: ``resources.<group>.threads`` of the scale section.

    The same number is the job's core request in Snakemake and SLURM, so a stage
    computes the same bits whichever tool runs it. (A library caller's section without
    ``resources`` leaves torch's thread count as it is.)
    """
    res = ((cfg.get("resources") or {}).get(group) or {})
    return use_threads(res.get("threads"), f"resources.{group}.threads")


def seed_everything(seed: int) -> None:
    """Seed the global torch, numpy and python RNGs (model initialization uses torch's)."""
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)


def derived_seed(seed: int, *stream) -> int:
    """An independent 63-bit seed for a named stream (data, noise, epoch k, a model)."""
    words = [int(seed)] + [int(s) if isinstance(s, int) else int.from_bytes(str(s).encode()[:8], "little")
                           for s in stream]
    return int(np.random.SeedSequence(words).generate_state(1, np.uint64)[0] >> np.uint64(1))


def image_noise(seed: int, positions, shape) -> np.ndarray:
    """Standard normal noise (B, *shape) float32, one independent stream per image position
    (so results do not depend on how images are batched)."""
    return np.stack([np.random.default_rng([int(seed), int(p)]).standard_normal(shape, dtype=np.float32)
                     for p in positions]) if len(positions) else np.zeros((0, *shape), np.float32)


def set_determinism(device: torch.device, enabled: bool) -> tuple[bool, bool]:
    """Turn on deterministic algorithms; return the previous (enabled, warn_only) to restore."""
    previous = (torch.are_deterministic_algorithms_enabled(),
                torch.is_deterministic_algorithms_warn_only_enabled())
    if not enabled:
        return previous
    if device.type == "cuda":
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True
    torch.use_deterministic_algorithms(True, warn_only=True)
    return previous


def describe(device: torch.device) -> dict:
    """What an output's provenance records about where it was computed."""
    info = {"device": str(device), "torch": str(torch.__version__), "threads": torch.get_num_threads()}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info
