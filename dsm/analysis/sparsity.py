"""Sparsity of an image: the participation ratio of its multi-scale wavelet coefficients
(docs/theory.md#the-analyses; paper Figure 4, right).

An image (C, H, W) is decomposed per channel by the 2-D discrete wavelet transform of
PyWavelets (``pywt.wavedec2``, ``mode='periodization'``: for a power-of-two size the
orthonormal Haar transform keeps exactly H·W coefficients) over L levels, where
``L = min(levels, pywt.dwt_max_level(min(H, W), wavelet))`` (the release uses 6 levels
on 64×64 images; a 16×16 image allows 4 Haar levels, 8×8 three). The coefficients of
level ℓ (ℓ = 1 the finest, … L the coarsest; horizontal, vertical and diagonal details)
are divided by ``2^ℓ`` — the release's ``2^(j+1)`` with j = ℓ − 1 counted from 0 at the
finest scale: the orthonormal 2-D Haar coefficients of level ℓ have a gain 2^ℓ relative
to local pixel differences, so the weighting puts every scale in pixel units. The
low-pass residual (the mean brightness at the coarsest scale) is left out: it measures
brightness, not sparsity. With the n weighted detail coefficients c,

    PR(x) = ||c||₁² / (n ||c||₂²)   in [1/n, 1]

equals 1/n when a single coefficient is non-zero (the sparsest image) and 1 when all
have the same magnitude. A constant image (no details) has no PR (NaN).
"""

from __future__ import annotations

import numpy as np

from dsm.errors import DsmError


def _pywt():
    try:
        import pywt
    except ImportError:  # pragma: no cover - a dependency of the package
        raise DsmError("PyWavelets is required for the sparsity analysis: pip install PyWavelets") from None
    return pywt


def wavelet_levels(size: int, levels: int, wavelet: str = "haar") -> int:
    """Levels actually used: ``levels`` capped by what an image of side ``size`` allows."""
    pywt = _pywt()
    try:
        cap = pywt.dwt_max_level(int(size), pywt.Wavelet(wavelet).dec_len)
    except ValueError as e:
        raise DsmError(f"figures.fig4.wavelet: {e}") from None
    if cap < 1:
        raise DsmError(f"images of side {size} are too small for a {wavelet} wavelet decomposition")
    return max(1, min(int(levels), cap))


def weighted_details(images, levels: int, wavelet: str = "haar") -> np.ndarray:
    """Weighted detail coefficients (n_images, n) float64 of images (B, C, H, W) (or one
    (C, H, W) image, or (H, W)), level ℓ divided by 2^ℓ; ``levels`` as given (cap it with
    :func:`wavelet_levels`)."""
    pywt = _pywt()
    x = np.asarray(images, np.float64)
    if x.ndim == 2:
        x = x[None, None]
    elif x.ndim == 3:
        x = x[None]
    if x.ndim != 4:
        raise DsmError(f"sparsity: expected images (B, C, H, W), got shape {x.shape}")
    coeffs = pywt.wavedec2(x, wavelet, mode="periodization", level=int(levels), axes=(-2, -1))
    parts = []
    for k, details in enumerate(coeffs[1:]):          # coarsest (ℓ = L) first
        ell = int(levels) - k
        for c in details:
            parts.append(c.reshape(len(x), -1) / 2.0 ** ell)
    return np.concatenate(parts, axis=1)


def participation_ratio(coefficients) -> np.ndarray:
    """``||c||₁² / (n ||c||₂²)`` per row of ``coefficients`` (B, n) (NaN for a zero row)."""
    c = np.abs(np.asarray(coefficients, np.float64))
    if c.ndim == 1:
        c = c[None]
    n = c.shape[1]
    l1, l2 = c.sum(1), (c ** 2).sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(l2 > 0, l1 ** 2 / (n * l2), np.nan)


def image_participation_ratio(images, levels: int = 6, wavelet: str = "haar") -> np.ndarray:
    """The participation ratio (B,) of images (B, C, H, W) with the levels capped by the size."""
    x = np.asarray(images)
    levels = wavelet_levels(min(x.shape[-2:]), levels, wavelet)
    return participation_ratio(weighted_details(x, levels, wavelet))
