"""The normalization constant of a learned energy (METHOD.md §5): one estimator for all.

The objective fixes U only up to a constant, and the time score makes that constant the
same at every t. At a large noise variance t_max the noisy density is nearly Gaussian,
so with H the entropy of that Gaussian

    c = H - mean_i U(x_i + sqrt(t_max) z_i, t_max)      (nats; one z_i per held-out x_i)

and U + c = -log p at every t. Two choices of the Gaussian (``entropy=``):

* ``"isotropic"``: N(mean, t_max I), H = (d/2) ln(2πe t_max) — METHOD §5 as written;
* ``"data_variance"``: N(mean, (v̄ + t_max) I), H = (d/2) ln(2πe (v̄ + t_max)), v̄ the
  held-out images' variance per value (mean over dimensions of the per-dimension
  variance). It removes the isotropic form's bias of about (d/2) v̄/t_max nats.

Noise draws are per image, seeded by (seed, position of the image in the stream), so
the result does not depend on batching.
"""

from __future__ import annotations

import math
from typing import Iterator

import numpy as np
import torch

from dsm.errors import DsmError
from dsm.runtime import image_noise

ENTROPIES = ("isotropic", "data_variance")


def gaussian_entropy(d: int, variance: float) -> float:
    """Entropy in nats of N(m, variance I) in d dimensions."""
    return 0.5 * d * math.log(2 * math.pi * math.e * variance)


def _batches(images, batch_size: int) -> Iterator[torch.Tensor]:
    """Tensors (b, ...) from a tensor/array (chunked) or an iterable of batches."""
    if isinstance(images, (torch.Tensor, np.ndarray)):
        for i in range(0, len(images), batch_size):
            yield torch.as_tensor(images[i:i + batch_size])
    else:
        for batch in images:
            yield torch.as_tensor(batch)


def device_of(model) -> torch.device:
    p = next(iter(model.parameters()), None)
    return p.device if p is not None else torch.device("cpu")


def noisy_energies(model, images, t: float, seed: int, *, batch_size: int = 256,
                   device=None) -> Iterator[tuple[np.ndarray, np.ndarray, torch.Tensor]]:
    """Yield (positions, U(x + sqrt(t) z, t) float64, x) per batch; z per image from ``seed``."""
    dev = device_of(model) if device is None else torch.device(device)
    pos = 0
    for x in _batches(images, batch_size):
        b = x.shape[0]
        positions = np.arange(pos, pos + b)
        y = x.to(dev, torch.float32)
        if t > 0:
            z = torch.from_numpy(image_noise(seed, positions, tuple(x.shape[1:]))).to(dev)
            y = y + math.sqrt(t) * z
        with torch.inference_mode():
            u = model.energy(y, torch.full((b,), float(t), device=dev)).double().cpu().numpy()
        pos += b
        yield positions, u, x


def normalization_constant(model, images, t_max: float, seed: int, *, entropy: str = "isotropic",
                           batch_size: int = 256, device=None) -> dict:
    """The constant c in nats (see the module docstring) and its Monte-Carlo standard error.

    model: anything with ``.energy(y, t) -> (B,)``. images: a tensor/array (n, ...) of
    held-out clean images, or an iterable of such batches. Returns dict(c_nats,
    c_sem_nats, t_max, d, n_images, seed, entropy, entropy_nats, data_variance,
    energy_mean_nats).
    """
    if not hasattr(model, "energy"):
        raise DsmError(f"{type(model).__name__} has no energy (a score-only model): no normalization "
                       f"constant; train with model.kind: energy")
    if entropy not in ENTROPIES:
        raise DsmError(f"norm_entropy: unknown value {entropy!r} (expected one of {', '.join(ENTROPIES)})")
    n, total, total_sq, shift, d = 0, 0.0, 0.0, None, None
    px_sum = px_sq = None
    for positions, u, x in noisy_energies(model, images, float(t_max), seed, batch_size=batch_size,
                                          device=device):
        if not np.isfinite(u).all():
            bad = int(positions[np.flatnonzero(~np.isfinite(u))[0]])
            raise DsmError(f"normalization: non-finite energy for held-out image {bad} at t_max={t_max}")
        if shift is None and len(u):
            shift = float(u[0])   # shifted sums keep the variance accurate for large energies
        xd = x.detach().double().flatten(1).cpu()
        px_sum = xd.sum(0) if px_sum is None else px_sum + xd.sum(0)
        px_sq = (xd ** 2).sum(0) if px_sq is None else px_sq + (xd ** 2).sum(0)
        d = xd.shape[1]
        n += len(u)
        total += float((u - shift).sum())
        total_sq += float(((u - shift) ** 2).sum())
    if n == 0:
        raise DsmError("normalization: no held-out images")
    mean = shift + total / n
    var = max(total_sq / n - (total / n) ** 2, 0.0) * n / max(n - 1, 1)
    data_var = float((px_sq / n - (px_sum / n) ** 2).clamp_min(0).mean())
    h = gaussian_entropy(d, float(t_max) + (data_var if entropy == "data_variance" else 0.0))
    return {"c_nats": h - mean, "c_sem_nats": math.sqrt(var / n), "t_max": float(t_max), "d": d,
            "n_images": n, "seed": int(seed), "entropy": entropy, "entropy_nats": h,
            "data_variance": data_var, "energy_mean_nats": mean}
