"""Estimators of -log p(x) for a trained energy model: one call shape for all.

Every estimator is called as ``est(field, x, *, keys=None, seed=0, prior=None, **options)``
and returns an :class:`Estimate`: per-image ``nll_nats`` = -log p(x) in nats (normalized),
its Monte-Carlo standard error ``se_nats`` over the estimator's own random draws, the
number of network evaluations per image ``nfe`` and the wall ``seconds`` spent
(k-diffusion's idea: one signature, and every method reports what it cost).
``field`` is an :class:`EnergyField`: a trained model (:class:`ModelEnergy`, with its
normalization constant c) or an exact density (:class:`ExactEnergy`, e.g. the ``field``
source's FieldDensity) behind the same interface, so the exact density validates the
integrators. ``x`` is a batch (B, C, H, W) (or (B, d)) of clean images.

Conventions (docs/theory.md#notation): t is a noise *variance*, y_t = x + √t z, d = C·H·W, U(y, t) the
energy (-log p(y | t) up to the constant c, the same at every t); ∇U = ∇_y U, ∂_t U the
space and time scores, ΔU = tr ∇²_y U; x̂(y, t) = y - t ∇U (Miyasawa-Tweedie). The noisy
densities solve the heat equation ∂_t p = ½ Δp, that is, for U = -log p,

    ∂_t U = ½ ΔU - ½ |∇U|².                                                       (H)

T = t_max (the model's training ``t_max``). Signs: every quantity below is an energy
(-log p, nats); a positive ``nll_nats`` is a density below 1. Equation numbers are those
the project cites for the paper's appendix (arXiv 2506.05310); the formulas below are
derived here from (H), Itô's formula and Stein's lemma, not copied.

``one-shot`` (docs/theory.md#one-shot-log-p): -log p(x) = U(x, 0) + c. One forward pass.

``ode`` (paper eq. 14, the probability-flow ODE). The flow dy/dt = -½ ∇_y log p_t(y) =
½ ∇U(y, t) carries p_0 to p_t, and along it, by (H),
d/dt [-log p_t(y_t)] = ∂_t U + ∇U · ½∇U = ½ ΔU(y_t, t), hence

    -log p(x) = P(y_T) - ½ ∫_0^T ΔU(y_t, t) dt,        y_0 = x.

Solved with ``scipy.integrate.solve_ivp`` (``method``, ``rtol``, ``atol``) from t = 0 to T
in s = ln(t + t_lo) (logarithmic in t above t_lo, linear below, so the start at t = 0 is
exact), the state being every image's y and ½∫ΔU (per probe; the solver's error norm is
over the whole batch's state). ΔU is the exact trace
(d Hessian-vector products, ``trace='exact'``) or Hutchinson's estimate E_v[vᵀ ∇²U v] with
``probes`` Rademacher vectors v per image, fixed along the trajectory (the ODE then has
a deterministic right-hand side; ``se_nats`` is the standard error over the probes);
``trace='auto'`` takes the exact trace for d ≤ ``exact_trace_max_d``.

``mse-bound`` (paper eq. 16, the denoising bound). For fixed x, with mse(t) =
E_z ||x - x̂(x + √t z, t)||², Stein's lemma and (H) give
d/dt E_z[U(x + √t z, t)] = (t d - mse(t)) / (2t²), hence

    -log p(x) = E_z[P(x + √T z)] - ∫_0^T (t d - E_z ||x - y + t ∇U(y, t)||²) / (2t²) dt.

With the exact denoiser this is an identity; with a model's denoiser it is the
variational bound of the model's reverse-SDE density (Song et al. 2021), which is why it
is called a bound: for a learned model it is not the energy's own log p. The integrand
per draw, q = (t d - |x - x̂|²)/(2t²), contains (d - |z|²)/(2t), of mean exactly 0, which
dominates its variance where t ≪ the data's variances (and diverges as t → 0) but cancels
against the rest where t ≫ them (for a Gaussian of variances λ_k the |z|² terms of q add
up to -Σ_k ½(λ_k/(λ_k + t))² z_k²/t). With ``control_variate=True`` (default) β·(d - |z|²)/(2t)
is subtracted, β = (d̂_eff/d)² from the previous node's draws (d̂_eff = mean |x - x̂|²/t;
β = 1 at the first node), so β is independent of the draws it multiplies and the mean is
unchanged; it halves the standard error on ``field``. ``antithetic=True`` pairs each z
with -z (twice the evaluations; measured not to pay here, so off by default). Nodes:
``n_t`` values of t log-spaced in [t_lo, T], trapezoid rule in ln t (∫ f dt = ∫ t f d ln t),
``n_noise`` independent draws per node and image; [0, t_lo] adds t_lo f(t_lo) (the
integrand tends to a finite limit, Σ_k 1/(2λ_k) for a Gaussian, so the error is
O(t_lo²)). ``se_nats``: over the draws.

``sde`` (paper eq. 18, stochastic). Along a Brownian path y_t = x + W_t, Itô's formula
and (H) (½ΔU = ∂_t U + ½|∇U|²) give, path by path,

    -log p(x) = P(y_T) - ∫_0^T (2 ∂_t U + ½ |∇U|²)(y_t, t) dt - ∫_0^T ∇U(y_t, t) · dW_t.

It uses both of the dual scores (the time score is what makes it cheap: no divergence).
Discretized on t_0 = 0 < t_lo = t_1 < ... < t_n = T (log-spaced, ``n_t`` nodes), with
y_{k+1} = y_k + √(t_{k+1} - t_k) ξ_k, the dt-integral by the trapezoid rule in ln t (of
t·f; in t on [0, t_lo]: the trapezoid in t on a log grid is biased by about h²/6 of the
integral) and the Itô integral by left-point sums (so it has mean exactly 0); ``paths``
paths per image,
``se_nats`` over them. Its mean is exact up to the trapezoid error of the smooth
t ↦ E_z[(2∂_tU + ½|∇U|²)(x + √t z, t)]; for an exact energy each path is already exact
up to the discretization (the Itô sum is a control variate).

Prior term P at T (``prior``): ``Prior('model')``: P(y) = U(y, T) + c, the model's own
normalized density at T (for ``mse-bound`` its expectation over the same draws); or
``Prior('gaussian', mean, var)``: P(y) = -log N(y; m, (v + T) I), the density at T of a
Gaussian N(m, v I) model of the data, as a diffusion model would use it, independent of
c (for ``mse-bound`` its expectation in closed form, (d/2) ln(2π(v + T)) +
(|x - m|² + T d) / (2(v + T)): the Gaussian tail beyond T). For ``field`` at T = 1 the
Gaussian prior with the data's mean and variance is off by about 0.05 nats per image.

Accuracy: energies, scores and all sums are float64 on the field's device; a network
runs in its own dtype (float32) and its outputs are converted. ``nfe`` counts forward
passes of the network per image (a batch replicated K times for K probes counts K);
each comes with one backward pass (scores) or a backward and a double-backward
(divergence). Noise, paths and probes come from one generator per image, seeded by
(seed, estimator, key), so results do not depend on batching.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field as dc_field

import numpy as np
import torch

from dsm.errors import DsmError

ESTIMATORS = ("one-shot", "mse-bound", "ode", "sde")
_TAG = {"mse-bound": 16, "ode": 14, "sde": 18}


@dataclass
class Estimate:
    """What every estimator returns (all per image, (B,) float64 nats unless stated)."""

    name: str
    nll_nats: np.ndarray          # -log p(x), normalized, nats
    se_nats: np.ndarray           # Monte-Carlo standard error over the estimator's draws
                                  # (0: deterministic; NaN: a single draw, unknown)
    nfe: float                    # network forward passes per image
    seconds: float                # wall seconds for the whole batch
    options: dict = dc_field(default_factory=dict)


@dataclass(frozen=True)
class Prior:
    """The term P(y) = -log p(y | T) at the end of an integration (module docstring)."""

    kind: str = "model"           # model | gaussian
    mean: float | None = None     # gaussian: m, a number or an array of the image shape
    var: float | None = None      # gaussian: v, data variance per value

    def __post_init__(self):
        if self.kind not in ("model", "gaussian"):
            raise DsmError(f"prior: unknown kind {self.kind!r} (expected model or gaussian)")
        if self.kind == "gaussian" and (self.mean is None or self.var is None or not float(self.var) >= 0):
            raise DsmError("prior: gaussian needs a mean and a variance >= 0")


# --- energies behind one interface -----------------------------------------------------

class EnergyField:
    """A differentiable energy U(y, t) (B,) in nats, its constant c and noise range.

    Subclasses define ``_energy(y, t)`` (differentiable in y, in ``self.dtype``). The
    public methods take and return float64 on ``self.device`` and count network forward
    passes in ``self.forward_passes`` (images through the network).
    """

    def __init__(self, c_nats: float, t_max: float, t_min: float, device, dtype):
        self.c_nats, self.t_max, self.t_min = float(c_nats), float(t_max), float(t_min)
        self.device, self.dtype = torch.device(device), dtype
        self.forward_passes = 0

    def _energy(self, y: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _scores(self, y, t):
        with torch.inference_mode(False), torch.enable_grad():
            y = y.detach().clone().requires_grad_(True)
            t = t.detach().clone().requires_grad_(True)
            u = self._energy(y, t)
            gy, gt = torch.autograd.grad(u.sum(), (y, t))
        return u.detach(), gy, gt

    def _in(self, y, t):
        y = torch.as_tensor(y).to(self.device, self.dtype)
        t = torch.as_tensor(t, dtype=self.dtype, device=self.device)
        return y, (t.expand(y.shape[0]).clone() if t.dim() == 0 else t.reshape(y.shape[0]))

    def energy(self, y, t) -> torch.Tensor:
        """U(y, t) (B,) float64, unnormalized (add ``c_nats``), no autograd."""
        y, t = self._in(y, t)
        self.forward_passes += y.shape[0]
        with torch.no_grad():
            return self._energy(y, t).double()

    def scores(self, y, t):
        """(U (B,), ∇_y U (B, ...), ∂_t U (B,)), float64, detached."""
        y, t = self._in(y, t)
        self.forward_passes += y.shape[0]
        u, gy, gt = self._scores(y, t)
        return u.double(), gy.double(), gt.double()

    def grad_and_laplacian(self, y, t, probes: torch.Tensor | None, max_batch: int = 4096):
        """(∇_y U (B, ...), quad (B, K)) with quad[b, k] = v_kᵀ ∇²U v_k for probes v
        (B, K, ...), or, for ``probes=None``, K = 1 and quad = ΔU (exact trace, from the d
        basis vectors). The batch is replicated K times (chunks of ``max_batch``)."""
        y, t = self._in(y, t)
        b, shape = y.shape[0], tuple(y.shape[1:])
        d = int(np.prod(shape))
        exact = probes is None
        k_total = d if exact else probes.shape[1]
        quads, g0 = [], None
        per_chunk = max(1, max_batch // max(b, 1))
        for a in range(0, k_total, per_chunk):
            k = min(k_total, a + per_chunk) - a
            if exact:
                v = torch.zeros(k, d, dtype=self.dtype, device=self.device)
                v[torch.arange(k, device=self.device), torch.arange(a, a + k, device=self.device)] = 1.0
                v = v.reshape(1, k, *shape).expand(b, k, *shape)
            else:
                v = probes[:, a:a + k].to(self.device, self.dtype)
            v = v.reshape(b * k, *shape)
            self.forward_passes += b * k
            with torch.inference_mode(False), torch.enable_grad():
                yr = y.detach().unsqueeze(1).expand(b, k, *shape).reshape(b * k, *shape).clone()
                yr.requires_grad_(True)
                u = self._energy(yr, t.detach().repeat_interleave(k))
                (g,) = torch.autograd.grad(u.sum(), yr, create_graph=True)
                (hv,) = torch.autograd.grad((g * v).sum(), yr)
            quads.append((hv * v).reshape(b, k, -1).sum(-1).double())
            if g0 is None:
                g0 = g.detach().reshape(b, k, *shape)[:, 0].double()
        quad = torch.cat(quads, 1)
        return g0, (quad.sum(1, keepdim=True) if exact else quad)


class ModelEnergy(EnergyField):
    """A trained energy model (anything with ``.energy(y, t)``; ``energy_and_scores`` used
    when present) with its normalization constant c (nats) and training noise range."""

    def __init__(self, model, c_nats: float, t_max: float, t_min: float, device=None):
        if not hasattr(model, "energy"):
            raise DsmError(f"{type(model).__name__} has no energy (a score-only model): no log p")
        p = next(iter(model.parameters()), None)
        dev = device if device is not None else (p.device if p is not None else "cpu")
        super().__init__(c_nats, t_max, t_min, dev, p.dtype if p is not None else torch.float32)
        self.model = model

    def _energy(self, y, t):
        return self.model.energy(y, t)

    def _scores(self, y, t):
        if hasattr(self.model, "energy_and_scores"):
            with torch.inference_mode(False):
                return self.model.energy_and_scores(y.detach().clone(), t.detach().clone())
        return super()._scores(y, t)


class ExactEnergy(EnergyField):
    """An exact density (``.energy(y, t)`` differentiable in torch, normalized: c = 0), e.g.
    :class:`dsm.data.field.FieldDensity`, computed in float64."""

    def __init__(self, density, t_max: float, t_min: float, device="cpu"):
        super().__init__(0.0, t_max, t_min, device, torch.float64)
        self.density = density

    def _energy(self, y, t):
        return self.density.energy(y, t)


# --- helpers ----------------------------------------------------------------------------

def _rngs(seed: int, name: str, keys) -> list:
    return [np.random.default_rng([int(seed), _TAG[name], int(k)]) for k in keys]


def _normal(rngs, count: int, shape, device) -> torch.Tensor:
    """(B, count, *shape) standard normal float64, one stream per image."""
    return torch.from_numpy(np.stack([r.standard_normal((count, *shape)) for r in rngs])).to(device)


def _flat_sum(a: torch.Tensor) -> torch.Tensor:
    return a.flatten(1).sum(1)


def _prior_at(field: EnergyField, prior: Prior, y: torch.Tensor, u_T: torch.Tensor | None = None):
    """P(y) (B,) float64: -log p(y | T) under the prior (module docstring)."""
    T = field.t_max
    if prior.kind == "model":
        u = field.energy(y, T) if u_T is None else u_T
        return u + field.c_nats
    d = y[0].numel()
    m = torch.as_tensor(prior.mean, dtype=torch.float64, device=y.device)
    v = float(prior.var) + T
    return 0.5 * d * math.log(2 * math.pi * v) + _flat_sum((y.double() - m) ** 2) / (2 * v)


def _resolve(field: EnergyField, prior, keys, x):
    x = torch.as_tensor(x)
    b = x.shape[0]
    keys = np.arange(b) if keys is None else np.asarray(keys, dtype=np.int64).reshape(-1)
    if len(keys) != b:
        raise DsmError(f"estimators: {len(keys)} keys for {b} images")
    prior = Prior() if prior is None else prior
    if prior.kind == "model" and not math.isfinite(field.c_nats):
        raise DsmError("prior model: the field has no normalization constant")
    return x.to(field.device, torch.float64), keys, prior


def _t_lo(field: EnergyField, t_lo) -> float:
    t_lo = field.t_min / 10 if t_lo is None else float(t_lo)
    if not 0 < t_lo < field.t_max:
        raise DsmError(f"t_lo: need 0 < t_lo < t_max = {field.t_max:g}, got {t_lo:g}")
    return t_lo


def _log_grid(t_lo: float, t_hi: float, n: int):
    """Nodes t (n,) log-spaced in [t_lo, t_hi] and trapezoid weights w with
    Σ_k w_k f(t_k) ≈ ∫_{t_lo}^{t_hi} f dt (trapezoid in ln t of t·f)."""
    if n < 2:
        raise DsmError(f"n_t: need at least 2 nodes, got {n}")
    s = np.linspace(math.log(t_lo), math.log(t_hi), n)
    t = np.exp(s)
    h = np.diff(s)
    w = np.zeros(n)
    w[:-1] += h / 2
    w[1:] += h / 2
    return t, w * t


def _sync(device):
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


class _Clock:
    def __init__(self, field):
        self.field = field

    def __enter__(self):
        _sync(self.field.device)
        self.passes0 = self.field.forward_passes
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc):
        _sync(self.field.device)
        self.seconds = time.perf_counter() - self.t0
        self.passes = self.field.forward_passes - self.passes0
        return False


def _mean_se(per_draw: torch.Tensor):
    """(B, n) -> mean (B,), standard error of the mean (B,) (NaN for n = 1: unknown)."""
    n = per_draw.shape[1]
    mean = per_draw.mean(1)
    se = per_draw.std(1) / math.sqrt(n) if n > 1 else torch.full_like(mean, math.nan)
    return mean.cpu().numpy(), se.cpu().numpy()


# --- the estimators ---------------------------------------------------------------------

def one_shot(field: EnergyField, x, *, keys=None, seed: int = 0, prior: Prior | None = None) -> Estimate:
    """-log p(x) = U(x, 0) + c: one forward pass (docs/theory.md#one-shot-log-p)."""
    x, keys, _ = _resolve(field, Prior("model") if prior is None else prior, keys, x)
    with _Clock(field) as clk:
        nll = field.energy(x, 0.0) + field.c_nats
    return Estimate("one-shot", nll.cpu().numpy(), np.zeros(len(keys)), clk.passes / len(keys),
                    clk.seconds, {})


def mse_bound(field: EnergyField, x, *, keys=None, seed: int = 0, prior: Prior | None = None,
              n_t: int = 64, n_noise: int = 8, t_lo: float | None = None, antithetic: bool = False,
              control_variate: bool = True) -> Estimate:
    """The denoising bound (eq. 16; module docstring), ``n_noise`` draws per node."""
    x, keys, prior = _resolve(field, prior, keys, x)
    b, shape, d = x.shape[0], tuple(x.shape[1:]), x[0].numel()
    lo = _t_lo(field, t_lo)
    ts, ws = _log_grid(lo, field.t_max, int(n_t))
    ws[0] += lo                                       # [0, t_lo]: rectangle at t_lo
    signs = (1.0, -1.0) if antithetic else (1.0,)
    rngs = _rngs(seed, "mse-bound", keys)
    with _Clock(field) as clk:
        integral = torch.zeros(b, n_noise, dtype=torch.float64, device=field.device)
        beta = torch.ones(b, 1, dtype=torch.float64, device=field.device)
        for t, w in zip(ts, ws):
            z = _normal(rngs, n_noise, shape, field.device)                 # (B, n, *shape)
            zf = z.reshape(b, n_noise, -1)
            acc = torch.zeros(b, n_noise, dtype=torch.float64, device=field.device)
            err2 = torch.zeros(b, n_noise, dtype=torch.float64, device=field.device)
            for sgn in signs:
                y = (x.unsqueeze(1) + math.sqrt(t) * sgn * z).reshape(b * n_noise, *shape)
                _, g, _ = field.scores(y, t)
                e = t * g.reshape(b, n_noise, -1) - math.sqrt(t) * sgn * zf     # x - x̂(y, t)
                e2 = (e * e).sum(-1)
                acc += (t * d - e2) / (2 * t * t) / len(signs)
                err2 += e2 / len(signs)
            if control_variate:                       # mean-zero (d - |z|²)/(2t), weight beta
                acc -= beta * (d - (zf * zf).sum(-1)) / (2 * t)
                # next node's weight from this node's draws (independent of the next ones):
                # (d_eff / d)², the weight that cancels |z|² for a Gaussian of flat spectrum
                beta = ((err2.mean(1, keepdim=True) / (t * d)).clamp(0, 1)) ** 2
            integral += w * acc
        # the prior term at T over the same kind of draws (closed form for a Gaussian)
        if prior.kind == "gaussian":
            m = torch.as_tensor(prior.mean, dtype=torch.float64, device=field.device)
            v = float(prior.var) + field.t_max
            p_T = (0.5 * d * math.log(2 * math.pi * v)
                   + (_flat_sum((x - m) ** 2) + field.t_max * d) / (2 * v)).unsqueeze(1)
        else:
            z = _normal(rngs, n_noise, shape, field.device)
            p_T = 0
            for sgn in signs:
                y = (x.unsqueeze(1) + math.sqrt(field.t_max) * sgn * z).reshape(b * n_noise, *shape)
                p_T = p_T + (field.energy(y, field.t_max).reshape(b, n_noise) + field.c_nats) / len(signs)
        mean, se = _mean_se(p_T - integral)
    return Estimate("mse-bound", mean, se, clk.passes / b, clk.seconds,
                    dict(n_t=int(n_t), n_noise=int(n_noise), t_lo=lo, antithetic=antithetic,
                         control_variate=control_variate, prior=prior.kind))


def ode(field: EnergyField, x, *, keys=None, seed: int = 0, prior: Prior | None = None,
        method: str = "RK45", rtol: float = 1e-5, atol: float = 1e-5, t_lo: float | None = None,
        trace: str = "auto", probes: int = 4, exact_trace_max_d: int = 64,
        max_batch: int = 4096) -> Estimate:
    """The probability-flow ODE (eq. 14; module docstring), solved by solve_ivp in ln t."""
    from scipy.integrate import solve_ivp

    x, keys, prior = _resolve(field, prior, keys, x)
    b, shape, d = x.shape[0], tuple(x.shape[1:]), x[0].numel()
    if trace not in ("auto", "exact", "hutchinson"):
        raise DsmError(f"trace: unknown value {trace!r} (expected auto, exact or hutchinson)")
    exact = trace == "exact" or (trace == "auto" and d <= int(exact_trace_max_d))
    lo = _t_lo(field, t_lo)
    if exact:
        v, k = None, 1
    else:
        k = int(probes)
        if k < 1:
            raise DsmError(f"probes: need at least 1, got {probes}")
        rngs = _rngs(seed, "ode", keys)
        v = torch.from_numpy(np.stack([r.integers(0, 2, (k, *shape)) * 2.0 - 1.0 for r in rngs])).to(field.device)
    n_y = b * d

    def rhs(s, state):                                # s = ln(t + t_lo), dt/ds = t + t_lo
        dt_ds = math.exp(s)
        t = max(dt_ds - lo, 0.0)
        y = torch.from_numpy(state[:n_y]).to(field.device).reshape(b, *shape)
        g, quad = field.grad_and_laplacian(y, t, v, max_batch)
        return np.concatenate([(0.5 * dt_ds * g).reshape(-1).cpu().numpy(),
                               (0.5 * dt_ds * quad).reshape(-1).cpu().numpy()])

    with _Clock(field) as clk:
        state0 = np.concatenate([x.reshape(-1).cpu().numpy(), np.zeros(b * k)])
        s0, s1 = math.log(lo), math.log(field.t_max + lo)
        sol = solve_ivp(rhs, (s0, s1), state0, method=method, rtol=float(rtol), atol=float(atol))
        if not sol.success:
            raise DsmError(f"ode: solve_ivp ({method}) failed: {sol.message}")
        end = sol.y[:, -1]
        y_T = torch.from_numpy(end[:n_y]).to(field.device).reshape(b, *shape)
        half_int = torch.from_numpy(end[n_y:]).to(field.device).reshape(b, k)
        p_T = _prior_at(field, prior, y_T).unsqueeze(1)
        mean, se = _mean_se(p_T - half_int)
        if exact:
            se = np.zeros_like(mean)                  # deterministic: its error is the solver's
    return Estimate("ode", mean, se, clk.passes / b, clk.seconds,
                    dict(method=method, rtol=float(rtol), atol=float(atol), t_lo=lo,
                         trace="exact" if exact else "hutchinson", probes=0 if exact else k,
                         nfev=int(sol.nfev), prior=prior.kind))


def sde(field: EnergyField, x, *, keys=None, seed: int = 0, prior: Prior | None = None,
        n_t: int = 64, paths: int = 8, t_lo: float | None = None) -> Estimate:
    """The stochastic estimator (eq. 18; module docstring), ``paths`` paths per image."""
    x, keys, prior = _resolve(field, prior, keys, x)
    b, shape = x.shape[0], tuple(x.shape[1:])
    p = int(paths)
    if p < 1:
        raise DsmError(f"paths: need at least 1, got {paths}")
    lo = _t_lo(field, t_lo)
    ts = np.concatenate([[0.0], _log_grid(lo, field.t_max, int(n_t))[0]])
    rngs = _rngs(seed, "sde", keys)
    with _Clock(field) as clk:
        y = x.unsqueeze(1).expand(b, p, *shape).reshape(b * p, *shape).clone()
        u, g, gt = field.scores(y, 0.0)
        f_prev = 2 * gt + 0.5 * _flat_sum(g * g)
        acc = torch.zeros(b * p, dtype=torch.float64, device=field.device)
        for t0, t1 in zip(ts[:-1], ts[1:]):
            dy = math.sqrt(t1 - t0) * _normal(rngs, p, shape, field.device).reshape(b * p, *shape)
            acc += _flat_sum(g * dy)                                       # Itô: left point
            y = y + dy
            u, g, gt = field.scores(y, t1)
            f = 2 * gt + 0.5 * _flat_sum(g * g)
            if t0 == 0.0:                                                  # [0, t_lo]: trapezoid in t
                acc += 0.5 * (f_prev + f) * t1
            else:                                                          # trapezoid in ln t of t·f
                acc += 0.5 * math.log(t1 / t0) * (t0 * f_prev + t1 * f)
            f_prev = f
        p_T = _prior_at(field, prior, y, u_T=u)
        mean, se = _mean_se((p_T - acc).reshape(b, p))
    return Estimate("sde", mean, se, clk.passes / b, clk.seconds,
                    dict(n_t=int(n_t), paths=p, t_lo=lo, prior=prior.kind))


_FUNCTIONS = {"one-shot": one_shot, "mse-bound": mse_bound, "ode": ode, "sde": sde}


def estimate(name: str, field: EnergyField, x, *, keys=None, seed: int = 0, prior: Prior | None = None,
             **options) -> Estimate:
    """Dispatch by name (one of :data:`ESTIMATORS`); unknown names and options are DsmErrors."""
    import inspect

    if name not in _FUNCTIONS:
        raise DsmError(f"estimator: unknown value {name!r} (expected one of {', '.join(ESTIMATORS)})")
    fn = _FUNCTIONS[name]
    allowed = set(inspect.signature(fn).parameters) - {"field", "x", "keys", "seed", "prior"}
    unknown = sorted(set(options) - allowed)
    if unknown:
        raise DsmError(f"estimator {name}: unknown option(s) {', '.join(unknown)} "
                       f"(known: {', '.join(sorted(allowed)) or 'none'})")
    defaults = {k: p.default for k, p in inspect.signature(fn).parameters.items() if k in allowed}
    return fn(field, x, keys=keys, seed=seed, prior=prior,
              **{k: _checked_option(name, k, v, defaults[k]) for k, v in options.items()})


# Options that must be > 0 (a tolerance of 0 or below never ends, or never starts).
POSITIVE_OPTIONS = ("rtol", "atol", "t_lo", "n_noise", "paths", "probes", "max_batch")


def _checked_option(estimator: str, key: str, value, default):
    """``value`` of option ``key`` with the type of its default (int, float, bool, str);
    a DsmError naming it if it is of another type, not finite (a NaN tolerance makes the
    ODE solver run forever) or, for ``POSITIVE_OPTIONS``, not > 0."""
    where = f"estimator {estimator}: option {key}={value!r}"
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise DsmError(f"{where}: expected true or false")
        return value
    if isinstance(default, str):
        if not isinstance(value, str):
            raise DsmError(f"{where}: expected a string")
        return value
    if value is None and default is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise DsmError(f"{where}: expected a number")
    if not math.isfinite(value):
        raise DsmError(f"{where}: not a finite number")
    if isinstance(default, int):
        if value != int(value):
            raise DsmError(f"{where}: expected an integer")
        value = int(value)
    if key in POSITIVE_OPTIONS and not value > 0:
        raise DsmError(f"{where}: must be > 0")
    return value
