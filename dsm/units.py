"""Unit conversions for energies and log-likelihoods.

Conventions (docs/theory.md#units): an energy ``U`` is in nats and already includes the
normalization constant, so ``-log p(x) = U``; ``d`` is the number of pixel values
(C*H*W). log p in dB/dim is ``-10 U / (d ln 10)``: +10 dB/dim means a density
10^d times larger. The discrete 8-bit NLL in bits/dim assumes a uniform density
inside each of the 256 bins of width 1/256 on pixels scaled to [0, 1].
"""

from __future__ import annotations

import math

LN10 = math.log(10.0)
LN2 = math.log(2.0)


def nats_per_dim(energy_nats, d: int):
    """Normalized energy per dimension, nats/dim (= -log p / d)."""
    return energy_nats / d


def logp_db_per_dim(energy_nats, d: int):
    """log p(x) in dB/dim from a normalized energy in nats."""
    return -10.0 * energy_nats / (d * LN10)


def energy_from_db_per_dim(logp_db, d: int):
    """Inverse of :func:`logp_db_per_dim`: normalized energy in nats."""
    return -logp_db * d * LN10 / 10.0


def db_per_dim_from_nats_per_dim(nats):
    """Convert a per-dimension *energy* in nats/dim to log p in dB/dim."""
    return -10.0 * nats / LN10


def nll_bits_per_dim_8bit(energy_nats, d: int):
    """Discrete negative log-likelihood of 8-bit data in bits/dim.

    Convention: pixels in [0, 1], the continuous density is taken constant within
    each bin of width 1/256, so P(bin) = p(x) / 256^d and
    NLL = 8 + U / (d ln 2) bits/dim.
    """
    return 8.0 + energy_nats / (d * LN2)


def continuous_nll_bits_per_dim(energy_nats, d: int):
    """Continuous (differential) NLL in bits/dim on [0, 1]-scaled pixels."""
    return energy_nats / (d * LN2)


def psnr_db(mse, peak: float = 1.0):
    """PSNR in dB of a mean squared error per pixel value, for the given peak."""
    return 10.0 * (math.log10(peak**2) - _log10(mse))


def noise_variance_from_psnr(psnr: float, peak: float = 1.0) -> float:
    """Noise variance t whose input PSNR is ``psnr`` dB (t = peak² 10^(-psnr/10))."""
    return peak**2 * 10.0 ** (-psnr / 10.0)


def _log10(x):
    try:
        return math.log10(x)
    except TypeError:  # numpy / torch arrays
        return x.log10() if hasattr(x, "log10") else __import__("numpy").log10(x)
