"""The normalization constant of a learned energy (docs/theory.md#normalization-constant): one estimator for all.

The objective fixes U only up to a constant, and the time score makes that constant the
same at every t. At a large noise variance t_max the noisy density is nearly Gaussian,
so with H the entropy of that Gaussian

    c = H - mean_i U(x_i + sqrt(t_max) z_i, t_max)      (nats; one z_i per held-out x_i)

and U + c = -log p at every t. Two choices of the Gaussian (``entropy=``):

* ``"isotropic"``: N(mean, t_max I), H = (d/2) ln(2πe t_max) — paper eq. 9;
* ``"data_variance"``: N(mean, (v̄ + t_max) I), H = (d/2) ln(2πe (v̄ + t_max)), v̄ the
  held-out images' variance per value (mean over dimensions of the per-dimension
  variance, ddof 1). It removes the isotropic form's bias of about (d/2) v̄/t_max nats.
* ``"data_covariance"``: N(mean, Σ̂ + t_max I), Σ̂ the held-out images' sample covariance
  (d ≤ MAX_COVARIANCE_DIM): exact for Gaussian data at every t_max, so the constant can
  be taken well below the training t_max (``evaluate.norm_t``), where a model's time
  score is better than in the top decades of its range (docs/defaults.md#normalization-level-and-entropy).

``t_max`` below is the noise level of the constant: the training t_max by default, or
any level the model was trained at.

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

ENTROPIES = ("isotropic", "data_variance", "data_covariance")
# the full sample covariance is a d x d matrix: refuse it beyond this many dimensions
MAX_COVARIANCE_DIM = 4096


def gaussian_entropy(d: int, variance: float) -> float:
    """Entropy in nats of N(m, variance I) in d dimensions."""
    return 0.5 * d * math.log(2 * math.pi * math.e * variance)


def assumed_entropy(d: int, t_max: float, form: str = "isotropic", v_bar: float = 0.0,
                    cov_eigvals=None) -> float:
    """Entropy (nats) assumed for p(y | t_max): N(mean, t_max I) ('isotropic', paper eq. 9),
    N(mean, (v̄ + t_max) I) ('data_variance', v̄ the mean pixel variance of the data), or
    N(mean, Σ + t_max I) ('data_covariance', Σ the data covariance, given by its
    eigenvalues ``cov_eigvals``; see :func:`covariance_eigenvalues`)."""
    if form == "isotropic":
        v = float(t_max)
    elif form == "data_variance":
        v = float(t_max) + float(v_bar)
    elif form == "data_covariance":
        if cov_eigvals is None:
            raise DsmError("norm_entropy: 'data_covariance' needs the covariance eigenvalues")
        ev = np.clip(np.asarray(cov_eigvals, dtype=np.float64), 0.0, None)
        if len(ev) != d:
            raise DsmError(f"norm_entropy: {len(ev)} covariance eigenvalues for d = {d}")
        return float(0.5 * np.log(2 * math.pi * math.e * (ev + float(t_max))).sum())
    else:
        raise DsmError(f"norm_entropy: unknown form {form!r} (expected one of {ENTROPIES})")
    return 0.5 * d * math.log(2 * math.pi * math.e * v)


def covariance_eigenvalues(images) -> np.ndarray:
    """Eigenvalues (d,) of the sample covariance (ddof 1) of images (n, ...), float64."""
    x = np.asarray(images, dtype=np.float64).reshape(len(images), -1)
    if len(x) < 2:
        raise DsmError("covariance_eigenvalues: need at least 2 images")
    x = x - x.mean(0)
    return np.linalg.eigvalsh(x.T @ x / (len(x) - 1))


def mean_pixel_variance(images) -> float:
    """v̄: the per-pixel variance over images, averaged over pixels (images (n, ...))."""
    x = np.asarray(images, dtype=np.float64).reshape(len(images), -1)
    if len(x) < 2:
        raise DsmError("mean_pixel_variance: need at least 2 images")
    return float(x.var(axis=0, ddof=1).mean())


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
    px_sum = px_sq = px_outer = None
    for positions, u, x in noisy_energies(model, images, float(t_max), seed, batch_size=batch_size,
                                          device=device):
        if not np.isfinite(u).all():
            bad = int(positions[np.flatnonzero(~np.isfinite(u))[0]])
            raise DsmError(f"normalization: non-finite energy for held-out image {bad} at t_max={t_max}")
        if shift is None and len(u):
            shift = float(u[0])   # shifted sums keep the variance accurate for large energies
        xd = x.detach().double().flatten(1).cpu()
        d = xd.shape[1]
        if entropy == "data_covariance" and d > MAX_COVARIANCE_DIM:
            raise DsmError(f"norm_entropy: data_covariance needs a {d} x {d} covariance (d > "
                           f"{MAX_COVARIANCE_DIM}); use data_variance")
        px_sum = xd.sum(0) if px_sum is None else px_sum + xd.sum(0)
        px_sq = (xd ** 2).sum(0) if px_sq is None else px_sq + (xd ** 2).sum(0)
        if entropy == "data_covariance":
            px_outer = xd.T @ xd if px_outer is None else px_outer + xd.T @ xd
        n += len(u)
        total += float((u - shift).sum())
        total_sq += float(((u - shift) ** 2).sum())
    if n == 0:
        raise DsmError("normalization: no held-out images")
    if entropy != "isotropic" and n < 2:
        raise DsmError(f"norm_entropy: {entropy} needs at least 2 held-out images")
    mean = shift + total / n
    var = max(total_sq / n - (total / n) ** 2, 0.0) * n / max(n - 1, 1)
    mu = px_sum / n
    data_var = float(((px_sq - n * mu ** 2) / max(n - 1, 1)).clamp_min(0).mean())
    eig = None
    if entropy == "data_covariance":
        cov = (px_outer - n * torch.outer(mu, mu)) / (n - 1)
        eig = torch.linalg.eigvalsh(cov).numpy()
    h = assumed_entropy(d, float(t_max), entropy, data_var, eig)
    return {"c_nats": h - mean, "c_sem_nats": math.sqrt(var / n), "t_max": float(t_max), "d": d,
            "n_images": n, "seed": int(seed), "entropy": entropy, "entropy_nats": h,
            "data_variance": data_var, "energy_mean_nats": mean}
