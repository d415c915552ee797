"""``field``: synthetic grayscale images with an exactly computable density (docs/theory.md#the-exact-likelihood-benchmark-field).

``x = μ 1 + s g``: g is a stationary Gaussian field whose covariance is diagonal in the
orthonormal 2-D DCT basis (``scipy.fft.dctn(norm='ortho')``, here the matrix D with
``c = D X Dᵀ``), with eigenvalues

    λ_k = std² · p_k / mean(p),   p_k = (f_k² + f0²)^(-α/2),   f_k = |k| / 2  (cycles per image)

so the mean pixel variance of g is ``std²``; s is a contrast drawn from K fixed
``scales`` with ``weights`` w. For noise of variance t per pixel, with
``v_jk = s_j² λ_k + t`` and ``c = DCT(y - μ)``,

    U(y, t) = -logsumexp_j [ log w_j - ½ Σ_k ( c_k² / v_jk + log(2π v_jk) ) ]

is the exact, normalized -log p(y | t) in nats. With responsibilities
``r_j(y) = softmax_j(...)``: ``∇_y U = IDCT(Σ_j r_j c / v_j)``,
``∂_t U = Σ_j r_j ½ Σ_k (1/v_jk - c_k²/v_jk²)``, and the optimal denoiser
``E[x | y] = y - t ∇_y U`` (a responsibility-weighted sum of Wiener filters).
The entropy and d_eff are closed-form for K = 1 and Monte-Carlo (with a control
variate, standard error returned) for K > 1. Pixels are not clipped.

Data params, ``data.field.*`` (defaults): ``alpha`` (2.0, spectral exponent),
``f0`` (1.0, cycles per image, low-frequency cutoff), ``std`` (0.1, pixel std of g),
``scales`` ([0.5, 1.0, 2.0], contrasts s_j > 0), ``weights`` ([0.25, 0.5, 0.25],
positive, normalized to sum 1), ``mean`` (0.5, μ), ``seed`` (0). Image size from
``data.image_size`` (default 16); ``data.channels`` must be 1.

Generation is deterministic: image i of a part comes from block i // BLOCK, seeded by
``SeedSequence([seed, part, block])``, so any chunking gives the same pixels.
Functions accept torch tensors (computed in float64, returned as float64) or numpy
arrays (numpy float64 returned); y is (B, 1, H, W) or (B, H, W); t is a float or (B,).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from dsm.errors import DsmError

BLOCK = 4096
DEFAULT_IMAGE_SIZE = 16
PART_CODE = {"train": 0, "test": 1, "holdout": 2}     # one seed stream per part


def dct_matrix(n: int) -> np.ndarray:
    """Orthonormal DCT-II matrix D (n, n): ``D @ x == scipy.fft.dct(x, norm='ortho')``."""
    import scipy.fft

    return scipy.fft.dct(np.eye(n), norm="ortho", axis=0)


def spectrum(size: int, alpha: float, f0: float, std: float) -> np.ndarray:
    """Eigenvalues λ (size, size), float64, indexed like ``dctn`` coefficients; mean = std²."""
    k = np.arange(size, dtype=np.float64)
    f2 = (k[:, None] ** 2 + k[None, :] ** 2) / 4.0
    p = (f2 + f0 ** 2) ** (-alpha / 2)
    return std ** 2 * p / p.mean()


class FieldDensity:
    """Exact density of the ``field`` source at every noise variance t ≥ 0."""

    def __init__(self, size: int, alpha: float = 2.0, f0: float = 1.0, std: float = 0.1,
                 scales=(0.5, 1.0, 2.0), weights=(0.25, 0.5, 0.25), mean: float = 0.5):
        s, w = np.asarray(scales, np.float64), np.asarray(weights, np.float64)
        if s.ndim != 1 or len(s) == 0 or not np.all(s > 0) or not np.all(np.isfinite(s)):
            raise DsmError(f"data.field.scales: need a non-empty list of positive numbers, got {list(scales)}")
        if w.shape != s.shape or not np.all(w > 0) or not np.all(np.isfinite(w)):
            raise DsmError(f"data.field.weights: need {len(s)} positive numbers (one per scale), got {list(weights)}")
        for key, val in (("alpha", alpha), ("f0", f0), ("std", std), ("mean", mean)):
            if not math.isfinite(float(val)):
                raise DsmError(f"data.field.{key}: must be finite, got {val}")
        if f0 <= 0 or std <= 0:
            raise DsmError(f"data.field: f0 and std must be > 0, got f0={f0}, std={std}")
        if int(size) < 1:
            raise DsmError(f"data.image_size: must be >= 1 for field, got {size}")
        self.size, self.alpha, self.f0, self.std = int(size), float(alpha), float(f0), float(std)
        self.mean = float(mean)
        self.scales, self.weights = s, w / w.sum()
        self.d = self.size ** 2
        self.lam = spectrum(self.size, self.alpha, self.f0, self.std)
        self.D = dct_matrix(self.size)

    # --- provenance --------------------------------------------------------------
    def to_meta(self) -> dict:
        return {"kind": "field", "size": self.size, "alpha": self.alpha, "f0": self.f0,
                "std": self.std, "scales": self.scales.tolist(),
                "weights": self.weights.tolist(), "mean": self.mean}

    @classmethod
    def from_meta(cls, m: dict) -> "FieldDensity":
        return cls(m["size"], m["alpha"], m["f0"], m["std"], m["scales"], m["weights"], m["mean"])

    @property
    def K(self) -> int:
        return len(self.scales)

    # --- sampling ----------------------------------------------------------------
    def sample_block(self, seed: int, part: int, block: int, count: int = BLOCK) -> np.ndarray:
        """Images ``block*BLOCK ... block*BLOCK+count-1`` of a part: float32 (count, 1, H, W)."""
        rng = np.random.default_rng(np.random.SeedSequence([int(seed), int(part), int(block)]))
        j = rng.choice(self.K, size=BLOCK, p=self.weights)[:count]
        # float32 throughout: the stored pixels are float32 anyway, and it halves the cost
        z = rng.standard_normal((BLOCK, self.size, self.size), dtype=np.float32)[:count]
        g = _idct2(np.sqrt(self.lam).astype(np.float32) * z)       # inverse DCT of the coefficients
        x = np.float32(self.mean) + self.scales[j].astype(np.float32)[:, None, None] * g
        return x.astype(np.float32, copy=False)[:, None]

    def sample(self, n: int, seed: int = 0, part: int = 0, start: int = 0) -> np.ndarray:
        """Images ``start ... start+n-1`` of a part (train=0, test=1, holdout=2), float32 (n, 1, H, W)."""
        out = np.empty((n, 1, self.size, self.size), np.float32)
        i = start
        while i < start + n:
            b, off = divmod(i, BLOCK)
            stop = min(start + n, (b + 1) * BLOCK)
            out[i - start:stop - start] = self.sample_block(seed, part, b, stop - b * BLOCK)[off:]
            i = stop
        return out

    # --- exact energy and derivatives ---------------------------------------------
    def _t(self, ref: torch.Tensor, t) -> torch.Tensor:
        t = torch.as_tensor(t, dtype=torch.float64, device=ref.device)
        if t.ndim == 0:
            t = t.expand(ref.shape[0])
        if t.shape != (ref.shape[0],):
            raise DsmError(f"field: t must be a float or shape ({ref.shape[0]},), got {tuple(t.shape)}")
        return t

    def _grid(self, y: torch.Tensor) -> torch.Tensor:
        if y.shape[-2:] != (self.size, self.size) or y[0].numel() != self.d:
            raise DsmError(f"field: expected images (B, 1, {self.size}, {self.size}), got {tuple(y.shape)}")
        return y.reshape(-1, self.size, self.size)

    def _coef(self, y: torch.Tensor) -> torch.Tensor:
        """DCT coefficients of y - μ: (B, H, W) float64."""
        D = torch.as_tensor(self.D, dtype=torch.float64, device=y.device)
        return D @ (self._grid(y).to(torch.float64) - self.mean) @ D.T

    def _idct(self, c: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        D = torch.as_tensor(self.D, dtype=torch.float64, device=c.device)
        return (D.T @ c @ D).reshape(like.shape)

    def _terms(self, c: torch.Tensor, t: torch.Tensor):
        """log w_j + log N_j (B, K) and variances v (B, K, H, W)."""
        lam = torch.as_tensor(self.lam, dtype=torch.float64, device=c.device)
        s2 = torch.as_tensor(self.scales ** 2, dtype=torch.float64, device=c.device)
        logw = torch.as_tensor(np.log(self.weights), dtype=torch.float64, device=c.device)
        if not t.requires_grad and bool((t == t[0]).all()):
            v = s2[:, None, None] * lam + t[0]                       # (K, H, W), shared
            logdet = torch.log(2 * math.pi * v).sum((-2, -1))        # (K,)
            v = v.expand(c.shape[0], *v.shape)
        else:
            v = s2[None, :, None, None] * lam + t[:, None, None, None]
            logdet = torch.log(2 * math.pi * v).sum((-2, -1))        # (B, K)
        ll = -0.5 * ((c[:, None] ** 2 / v).sum((-2, -1)) + logdet)
        return logw + ll, v

    def energy(self, y, t):
        """U(y, t) = -log p(y | t), nats, (B,). Differentiable (torch autograd) in y and t."""
        y, to_np = _torch(y)
        c = self._coef(y)
        logs, _ = self._terms(c, self._t(c, t))
        return _back(-torch.logsumexp(logs, dim=1), to_np)

    def responsibilities(self, y, t):
        """Posterior probability of each contrast scale given y: (B, K)."""
        y, to_np = _torch(y)
        c = self._coef(y)
        logs, _ = self._terms(c, self._t(c, t))
        return _back(torch.softmax(logs, dim=1), to_np)

    def score(self, y, t):
        """∇_y U(y, t), shape of y, nats per unit pixel value."""
        y, to_np = _torch(y)
        c = self._coef(y)
        logs, v = self._terms(c, self._t(c, t))
        r = torch.softmax(logs, dim=1)[:, :, None, None]
        return _back(self._idct((r * c[:, None] / v).sum(1), y), to_np)

    def time_score(self, y, t):
        """∂_t U(y, t), nats per unit variance, (B,)."""
        y, to_np = _torch(y)
        c = self._coef(y)
        logs, v = self._terms(c, self._t(c, t))
        r = torch.softmax(logs, dim=1)
        per = 0.5 * (1 / v - c[:, None] ** 2 / v ** 2).sum((-2, -1))
        return _back((r * per).sum(1), to_np)

    def denoise(self, y, t):
        """Optimal denoiser E[x | y] (MMSE), shape of y."""
        y, to_np = _torch(y)
        c = self._coef(y)
        tt = self._t(c, t)
        logs, v = self._terms(c, tt)
        r = torch.softmax(logs, dim=1)[:, :, None, None]
        s2lam = v - tt[:, None, None, None]
        chat = (r * c[:, None] * s2lam / v).sum(1)           # Σ_j r_j Wiener_j(c)
        return _back(self._idct(chat, y) + self.mean, to_np)

    # --- entropy and effective dimensionality ---------------------------------------
    def _component_entropies(self, t: float) -> np.ndarray:
        v = self.scales[:, None, None] ** 2 * self.lam + t
        return 0.5 * np.log(2 * math.pi * math.e * v).sum((1, 2))

    def entropy(self, t: float = 0.0, n: int = 30_000, seed: int = 0) -> tuple[float, float]:
        """Differential entropy of p(y | t) = E[U(y, t)] in nats, and its standard error.

        Exact (standard error 0) for one contrast scale. For K > 1 it is
        ``Σ_j w_j (H_j - log w_j + E_j[log r_j(y)])`` with H_j the Gaussian entropies
        (exact) and the small bounded term E_j[log r_j] estimated by stratified
        Monte Carlo over ``n`` draws (fixed ``seed``); the returned standard error is
        that of this estimate.
        """
        H = self._component_entropies(t)
        if self.K == 1:
            return float(H[0]), 0.0
        m_j, v_j = self._mc_per_component(t, n, seed, "logr")
        m = self.weights @ (H - np.log(self.weights) + m_j)
        se = math.sqrt(float((self.weights ** 2 * v_j).sum()))
        return float(m), se

    def d_eff(self, t: float, n: int = 30_000, seed: int = 0) -> tuple[float, float]:
        """Effective dimensionality E_{x,y} ||x - E[x|y]||² / t (docs/theory.md#effective-dimensionality, eq. 11), and its SE.

        Closed form ``Σ_k s²λ_k / (s²λ_k + t)`` for K = 1. For K > 1, the posterior
        is a mixture of Gaussians: MMSE = Σ_j w_j tr(Σ_j^post) (exact) + E[Σ_j r_j
        ||x̂_j - x̂||²] (stratified Monte Carlo over ``n`` draws, SE returned).
        Equals d at t = 0 and tends to 0 as t → ∞.
        """
        if t <= 0:
            return float(self.d), 0.0
        v = self.scales[:, None, None] ** 2 * self.lam + t
        within = self.weights @ ((v - t) / v).sum((1, 2))          # tr(Σ_j^post) / t
        if self.K == 1:
            return float(within), 0.0
        m_j, v_j = self._mc_per_component(t, n, seed, "spread")
        return float(within + self.weights @ m_j / t), math.sqrt(float((self.weights ** 2 * v_j).sum())) / t

    def _mc_per_component(self, t: float, n: int, seed: int, what: str, chunk: int = 4096):
        """Per-component mean and variance-of-mean of a statistic of y ~ component j."""
        rng = np.random.default_rng(seed)
        m = max(2, n // self.K)
        lam = torch.as_tensor(self.lam)
        s2 = torch.as_tensor(self.scales ** 2)
        means, vars_ = np.zeros(self.K), np.zeros(self.K)
        for j in range(self.K):
            vals = []
            for a in range(0, m, chunk):
                b = min(m, a + chunk)
                z = torch.as_tensor(rng.standard_normal((b - a, self.size, self.size)))
                c = torch.sqrt(s2[j] * lam + t) * z
                logs, v = self._terms(c, torch.full((b - a,), float(t), dtype=torch.float64))
                logr = torch.log_softmax(logs, dim=1)
                if what == "logr":
                    vals.append(logr[:, j].numpy())
                else:
                    r = logr.exp()[:, :, None, None]
                    xj = c[:, None] * (v - t) / v                       # component means (DCT)
                    xbar = (r * xj).sum(1, keepdim=True)
                    vals.append((r * (xj - xbar) ** 2).sum((1, 2, 3)).numpy())
            vals = np.concatenate(vals)
            means[j], vars_[j] = vals.mean(), vals.var(ddof=1) / len(vals)
        return means, vars_

    def d_eff_image(self, x, t: float, n_noise: int = 1000, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """Per-image d_eff(x, t) = E_z ||x - x̂(x + √t z)||² / t by Monte Carlo: (mean, SE), (B,)."""
        x, _ = _torch(x)
        gen = torch.Generator().manual_seed(seed)
        acc, acc2 = torch.zeros(x.shape[0], dtype=torch.float64), torch.zeros(x.shape[0], dtype=torch.float64)
        for _ in range(n_noise):
            y = x.to(torch.float64) + math.sqrt(t) * torch.randn(x.shape, generator=gen, dtype=torch.float64)
            e = ((self.denoise(y, t) - x) ** 2).reshape(x.shape[0], -1).sum(1) / t
            acc += e
            acc2 += e ** 2
        mean = acc / n_noise
        var = (acc2 / n_noise - mean ** 2).clamp_min(0) / max(1, n_noise - 1)
        return mean.numpy(), var.sqrt().numpy()


def _idct2(c: np.ndarray) -> np.ndarray:
    """Dᵀ C D for a stack C (B, n, n): the orthonormal inverse 2-D DCT.

    scipy's FFT, not matmuls: small batched BLAS matmuls are slow, and very slow when
    BLAS threads compete with other processes for the cores.
    """
    import scipy.fft

    return scipy.fft.idctn(c, axes=(1, 2), norm="ortho")


def _torch(y):
    if isinstance(y, torch.Tensor):
        return y, False
    return torch.as_tensor(np.asarray(y, dtype=np.float64)), True


def _back(out: torch.Tensor, to_np: bool):
    return out.detach().numpy() if to_np else out


# --- source plan for `dsm prepare` -------------------------------------------------------

def density_from_cfg(cfg: dict) -> FieldDensity:
    f = cfg["field"]
    if cfg.get("channels") not in (None, 1):
        raise DsmError(f"data.channels: field images are grayscale; channels must be 1, got {cfg['channels']}")
    return FieldDensity(cfg.get("image_size") or DEFAULT_IMAGE_SIZE, f["alpha"], f["f0"], f["std"],
                        f["scales"], f["weights"], f["mean"])


def plan(cfg: dict):
    """Part plans and the exact-density meta for ``dsm prepare`` (data.source: field)."""
    from dsm.data.store import Chunk, PartPlan

    dens = density_from_cfg(cfg)
    seed = int(cfg["field"]["seed"])
    counts = {"train": cfg.get("n_train"), "test": cfg.get("n_test"), "holdout": cfg.get("n_holdout")}
    for part, n in counts.items():
        if n is None:
            raise DsmError(f"data.n_{part}: required for source field (a synthetic source has no 'all')")

    def chunks(part, n):
        code = PART_CODE[part]
        for b in range(0, -(-n // BLOCK)):
            count = min(BLOCK, n - b * BLOCK)
            px = dens.sample_block(seed, code, b, count)
            ids = [f"field-s{seed}-{part}-{i:08d}" for i in range(b * BLOCK, b * BLOCK + count)]
            yield Chunk(px, ids)

    H, se = dens.entropy(0.0, n=20_000)
    exact = dict(dens.to_meta(), entropy_nats=H, entropy_se=se, seed=seed)
    plans = [PartPlan(p, (lambda p=p, n=n: chunks(p, n)), n) for p, n in counts.items()]
    return plans, {"exact": exact}
