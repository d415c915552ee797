"""The Gaussian scale mixture of Figure 1: an exact density at every noise level.

``x ~ Σ_i w_i N(0, σ_i² I_d)``, by default d = 1000, σ = (1, 4), w = (½, ½)
(docs/theory.md#figure-1-a-gaussian-scale-mixture). Adding noise of variance t per dimension keeps it a scale mixture,
``y ~ Σ_i w_i N(0, v_i I_d)`` with ``v_i = σ_i² + t``, so the noisy energy

    U(y, t) = -log Σ_i w_i N(y; 0, v_i I) = -logsumexp_i [log w_i - r²/(2 v_i) - (d/2) log(2π v_i)]

is exact for every y and t ≥ 0 and depends on y only through r = ||y||. With the
posterior weights ``π_i(r, t) = softmax_i(log w_i - r²/(2 v_i) - (d/2) log(2π v_i))``:

    ∂U/∂r   = r Σ_i π_i / v_i                          (radial score)
    ∇_y U   = y Σ_i π_i / v_i                          (space score)
    ∂U/∂t   = Σ_i π_i (d / (2 v_i) - r² / (2 v_i²))    (time score)

All energies are nats; t is a variance; y has shape (B, ...) and is flattened to
(B, d). Functions take torch tensors and work in the input's dtype (use float64 for
reference values); ``t`` is a float or a tensor broadcastable to (B,).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from dsm.errors import DsmError

D = 1000
SIGMAS = (1.0, 4.0)
WEIGHTS = (0.5, 0.5)


def sample(n: int, seed: int, d: int = D, sigmas=SIGMAS, weights=WEIGHTS,
           chunk: int = 10_000) -> np.ndarray:
    """``n`` samples of the mixture, float32 (n, d); deterministic in ``seed``.

    Component labels are drawn first for all n, then the Gaussians chunk by chunk
    (bounded temporaries; the stream, hence the result, does not depend on ``chunk``).
    """
    return GaussianScaleMixture(d, tuple(sigmas), tuple(weights)).sample(n, seed, chunk)


@dataclass(frozen=True)
class GaussianScaleMixture:
    """Exact density of ``Σ_i w_i N(0, σ_i² I_d)`` under additive Gaussian noise."""

    d: int = D
    sigmas: tuple = SIGMAS
    weights: tuple = WEIGHTS

    def __post_init__(self):
        s, w = np.asarray(self.sigmas, float), np.asarray(self.weights, float)
        if self.d < 1:
            raise DsmError(f"gsm: d must be >= 1, got {self.d}")
        if s.ndim != 1 or len(s) < 1 or np.any(s <= 0):
            raise DsmError(f"gsm: sigmas must be a non-empty list of positive numbers, got {self.sigmas}")
        if w.shape != s.shape or np.any(w <= 0) or abs(w.sum() - 1) > 1e-6:
            raise DsmError(f"gsm: weights must be positive, one per sigma, summing to 1, got {self.weights}")

    # --- provenance ---------------------------------------------------------------
    def to_meta(self) -> dict:
        """What a prepared store's meta.json needs to rebuild this density."""
        return {"kind": "gsm", "d": int(self.d), "sigmas": [float(s) for s in self.sigmas],
                "weights": [float(w) for w in self.weights]}

    @classmethod
    def from_meta(cls, meta: dict) -> "GaussianScaleMixture":
        return cls(int(meta["d"]), tuple(meta["sigmas"]), tuple(meta["weights"]))

    # --- sampling -----------------------------------------------------------------
    def sample(self, n: int, seed: int, chunk: int = 10_000) -> np.ndarray:
        """float32 (n, d) samples, deterministic in ``seed``."""
        rng = np.random.default_rng(seed)
        k = rng.choice(len(self.sigmas), size=n, p=np.asarray(self.weights, float))
        s = np.asarray(self.sigmas, np.float32)[k]
        out = np.empty((n, self.d), np.float32)
        for i in range(0, n, chunk):
            j = min(n, i + chunk)
            out[i:j] = rng.standard_normal((j - i, self.d), dtype=np.float32) * s[i:j, None]
        return out

    # --- exact energy and its derivatives, radial form ----------------------------
    def _log_terms(self, r2: torch.Tensor, t) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, K) log [w_i N(y; 0, v_i I)] and (B, K) variances v_i, from r² (B,)."""
        sig2 = torch.tensor(self.sigmas, dtype=r2.dtype, device=r2.device) ** 2
        logw = torch.log(torch.tensor(self.weights, dtype=r2.dtype, device=r2.device))
        t = torch.as_tensor(t, dtype=r2.dtype, device=r2.device)
        v = sig2 + t.reshape(-1, 1) if t.ndim else sig2 + t          # (B, K) or (K,)
        v = torch.broadcast_to(v, r2.shape + sig2.shape)
        logs = logw - r2[..., None] / (2 * v) - 0.5 * self.d * torch.log(2 * math.pi * v)
        return logs, v

    def radial_energy(self, r: torch.Tensor, t) -> torch.Tensor:
        """U as a function of r = ||y|| (any shape) and t: nats, shape of r."""
        logs, _ = self._log_terms(r**2, t)
        return -torch.logsumexp(logs, dim=-1)

    def posterior(self, r: torch.Tensor, t) -> torch.Tensor:
        """π_i(r, t): probability of component i given ||y|| = r, shape r.shape + (K,)."""
        logs, _ = self._log_terms(r**2, t)
        return torch.softmax(logs, dim=-1)

    def radial_score(self, r: torch.Tensor, t) -> torch.Tensor:
        """∂U/∂r = r Σ_i π_i / v_i (nats per unit of r), shape of r."""
        logs, v = self._log_terms(r**2, t)
        return r * (torch.softmax(logs, dim=-1) / v).sum(-1)

    def radial_time_score(self, r: torch.Tensor, t) -> torch.Tensor:
        """∂U/∂t at fixed r, nats per unit variance, shape of r."""
        logs, v = self._log_terms(r**2, t)
        per = 0.5 * self.d / v - (r**2)[..., None] / (2 * v**2)
        return (torch.softmax(logs, dim=-1) * per).sum(-1)

    # --- same on images y of shape (B, ...) ----------------------------------------
    def _r(self, y: torch.Tensor) -> torch.Tensor:
        y = y.reshape(y.shape[0], -1)
        if y.shape[1] != self.d:
            raise DsmError(f"gsm: expected {self.d} values per sample, got {y.shape[1]}")
        return torch.linalg.vector_norm(y, dim=1)

    def energy(self, y: torch.Tensor, t) -> torch.Tensor:
        """U(y, t) in nats, (B,). Exact, normalized (it is -log p(y | t))."""
        return self.radial_energy(self._r(y), t)

    def score(self, y: torch.Tensor, t) -> torch.Tensor:
        """∇_y U(y, t), shape of y."""
        logs, v = self._log_terms(self._r(y) ** 2, t)
        g = (torch.softmax(logs, dim=-1) / v).sum(-1)
        return y * g.reshape((-1,) + (1,) * (y.ndim - 1))

    def time_score(self, y: torch.Tensor, t) -> torch.Tensor:
        """∂_t U(y, t) in nats per unit variance, (B,)."""
        return self.radial_time_score(self._r(y), t)

    def denoise(self, y: torch.Tensor, t) -> torch.Tensor:
        """Optimal denoiser E[x | y] = y - t ∇_y U, shape of y."""
        t = torch.as_tensor(t, dtype=y.dtype, device=y.device)
        tt = t.reshape((-1,) + (1,) * (y.ndim - 1)) if t.ndim else t
        return y - tt * self.score(y, t)

    def entropy(self, t: float) -> float:
        """Exact differential entropy of p(y | t) in nats, E[U(y, t)], by 1-D quadrature.

        Under component i, ||y||² / v_i is χ²_d, so H = Σ_i w_i E_{r ~ √v_i χ_d}[U(r, t)];
        each expectation is integrated over r/√v_i ∈ mean ± 40 sd of χ_d (relative
        precision ~1e-10).
        """
        from scipy import integrate, stats

        total = 0.0
        for s, w in zip(self.sigmas, self.weights):
            sv = math.sqrt(s**2 + t)
            chi = stats.chi(self.d)
            lo, hi = max(chi.mean() - 40 * chi.std(), 0.0), chi.mean() + 40 * chi.std()

            def f(q):
                r = torch.tensor([sv * q], dtype=torch.float64)
                return float(self.radial_energy(r, t)[0]) * chi.pdf(q)

            val, _ = integrate.quad(f, lo, hi, points=[chi.mean()], limit=200, epsabs=1e-9, epsrel=1e-12)
            total += w * val
        return total

    def entropy_gaussian_bound(self, t: float) -> float:
        """Entropy (nats) of the Gaussian with the same covariance, (d/2) ln(2πe (E σ² + t)).

        An upper bound on the true entropy at t; it is what the normalization constant
        of docs/theory.md#normalization-constant assumes at t_max when the data variance is accounted for.
        """
        var = float(np.dot(self.weights, np.square(self.sigmas)))
        return 0.5 * self.d * math.log(2 * math.pi * math.e * (var + t))
