"""The Figure 1 model: a mixture of quadratic energies whose coefficients depend on t.

    U(y, t) = -logsumexp_i ( -(a_i(t) ||y||² + b_i(t)) ),   i = 1..K (K = 2)

(METHOD.md §7). ``(a, b/d)`` are the 2K outputs of an MLP (default 5 linear layers,
width 256, GELU) of the single feature ln(t + t_min); ``a = softplus(.)`` keeps each
component a normalizable Gaussian (a_i > 0). The family contains the exact noisy
energy of a centred Gaussian scale mixture, a_i = 1/(2(σ_i² + t)) and
b_i = (d/2) log(2π(σ_i² + t)) - log w_i, so the only error left is the fit.

Interface as :class:`dsm.nets.EnergyModel`: ``energy(y, t)`` (B,) nats (unnormalized),
``score(y, t)`` = ∇_y U (shape of y), ``time_score(y, t)`` = ∂_t U (B,),
``denoise(y, t)`` = y - t ∇_y U; y is (B, ...) with d values per sample, t (B,) a
variance. The scores come from autograd of the energy, as the training objectives do.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

_INV_SQRT2 = 1.0 / math.sqrt(2.0)
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)


def quadratic_mixture_energy(r2: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """-logsumexp_i(-(a_i r² + b_i)): r2 (B,), a and b (B, K) -> (B,) nats."""
    return -torch.logsumexp(-(a * r2[:, None] + b), dim=-1)


class GSMMLPEnergy(nn.Module):
    """Mixture-of-quadratics energy with an MLP of ln(t + t_min) for its coefficients.

    Args:
        d: values per sample (the b outputs are scaled by d so that the MLP's
            outputs are O(1) per dimension).
        components: K, the number of quadratics.
        width: hidden width of the MLP.
        layers: number of linear layers (``layers - 1`` hidden GELU layers).
        t_min: offset of the log feature; t = 0 maps to ln(t_min).
    """

    def __init__(self, d: int = 1000, components: int = 2, width: int = 256, layers: int = 5,
                 t_min: float = 1e-2):
        super().__init__()
        if layers < 2:
            raise ValueError(f"gsm_mlp: layers must be >= 2, got {layers}")
        self.d, self.components, self.t_min = int(d), int(components), float(t_min)
        mods: list[nn.Module] = []
        for i in range(layers - 1):
            mods += [nn.Linear(1 if i == 0 else width, width), nn.GELU()]
        mods.append(nn.Linear(width, 2 * components))
        self.mlp = nn.Sequential(*mods)

    # --- the model ----------------------------------------------------------------
    def coefficients(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """a (B, K) > 0 per unit of r², and b (B, K) nats, for t (B,)."""
        out = self.mlp(torch.log(t + self.t_min)[:, None])
        k = self.components
        return F.softplus(out[:, :k]), self.d * out[:, k:]

    def radial_energy(self, r: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """U as a function of r = ||y|| (B,) and t (B,): (B,) nats."""
        a, b = self.coefficients(t)
        return quadratic_mixture_energy(r**2, a, b)

    def energy(self, y: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """U(y, t): y (B, ...) with d values each, t (B,) -> (B,) nats, unnormalized."""
        a, b = self.coefficients(t)
        return quadratic_mixture_energy(y.reshape(y.shape[0], -1).pow(2).sum(1), a, b)

    forward = energy

    # --- derivatives ----------------------------------------------------------------
    def coefficients_and_rates(self, t: torch.Tensor):
        """(a, b, ∂a/∂t, ∂b/∂t), each (B, K), in one pass with the tangent carried along.

        Forward-mode differentiation by hand through Linear and (exact, erf) GELU layers:
        a scalar input makes the tangent one extra column per layer, cheaper than a
        reverse pass and, unlike it, needs no second backward through GELU when training.
        """
        h = torch.log(t + self.t_min)[:, None]
        dh = (1.0 / (t + self.t_min))[:, None]
        layers = list(self.mlp)
        for i, layer in enumerate(layers):
            if isinstance(layer, nn.Linear):
                h, dh = layer(h), dh @ layer.weight.T
            else:  # GELU: d/dh [h Φ(h)] = Φ(h) + h φ(h)
                cdf = 0.5 * (1.0 + torch.erf(h * _INV_SQRT2))
                dh = dh * (cdf + h * torch.exp(-0.5 * h * h) * _INV_SQRT_2PI)
                h = h * cdf
        k = self.components
        a, da = F.softplus(h[:, :k]), torch.sigmoid(h[:, :k]) * dh[:, :k]
        return a, self.d * h[:, k:], da, self.d * dh[:, k:]

    def energy_and_scores(self, y: torch.Tensor, t: torch.Tensor, create_graph: bool = False):
        """(U (B,), ∇_y U (shape of y), ∂_t U (B,)) in closed form.

        With e_i = a_i r² + b_i and π = softmax(-e): ∇_y U = 2 y Σ_i π_i a_i and
        ∂_t U = Σ_i π_i (∂_t a_i r² + ∂_t b_i). Equal to autograd of :meth:`energy`
        (tests/test_fig1.py) at about half the cost of double back-propagation; the
        results stay differentiable w.r.t. the parameters (and y) when
        ``create_graph=True``, as dsm.objectives expects.
        """
        with torch.set_grad_enabled(create_graph):
            a, b, da, db = self.coefficients_and_rates(t)
            r2 = y.reshape(y.shape[0], -1).pow(2).sum(1)
            e = a * r2[:, None] + b
            u = -torch.logsumexp(-e, dim=-1)
            pi = torch.softmax(-e, dim=-1)
            gy = y * (2 * (pi * a).sum(-1)).reshape((-1,) + (1,) * (y.ndim - 1))
            gt = (pi * (da * r2[:, None] + db)).sum(-1)
        if not create_graph:
            u, gy, gt = u.detach(), gy.detach(), gt.detach()
        return u, gy, gt

    def score(self, y: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """∇_y U(y, t), shape of y (not differentiable w.r.t. the parameters)."""
        return self.energy_and_scores(y.detach(), t.detach())[1]

    def time_score(self, y: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """∂_t U(y, t), (B,) nats per unit variance."""
        return self.energy_and_scores(y.detach(), t.detach())[2]

    def denoise(self, y: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """x̂ = y - t ∇_y U, shape of y."""
        return y - t.reshape((-1,) + (1,) * (y.ndim - 1)) * self.score(y, t)

    def radial_score(self, r: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """∂U/∂r = 2 r Σ_i π_i a_i (closed form), (B,)."""
        a, b = self.coefficients(t)
        pi = torch.softmax(-(a * (r**2)[:, None] + b), dim=-1)
        return 2 * r * (pi * a).sum(-1)

    def log_normalizer(self, t: torch.Tensor) -> torch.Tensor:
        """log ∫ exp(-U(y, t)) dy = logsumexp_i(-b_i + (d/2) log(π / a_i)), (B,) nats.

        Closed form for this family; 0 at every t for an exactly normalized model.
        """
        a, b = self.coefficients(t)
        return torch.logsumexp(-b + 0.5 * self.d * torch.log(math.pi / a), dim=-1)
