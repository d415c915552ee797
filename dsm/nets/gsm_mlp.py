"""The Figure 1 model: a mixture of quadratic energies whose coefficients depend on t.

    U(y, t) = -logsumexp_i ( -(a_i(t) ||y||² + b_i(t)) ),   i = 1..K (K = 2)

(docs/theory.md#figure-1-a-gaussian-scale-mixture). ``(a, b/d)`` are the 2K outputs of an MLP (default 5 linear layers,
width 256, GELU) of the single feature ln(t + t_min); ``a = softplus(.)`` keeps each
component a normalizable Gaussian (a_i > 0). The family contains the exact noisy
energy of a centred Gaussian scale mixture, a_i = 1/(2(σ_i² + t)) and
b_i = (d/2) log(2π(σ_i² + t)) - log w_i, so the only error left is the fit.

Interface as :class:`dsm.nets.EnergyModel`: ``energy(y, t)`` (B,) nats (unnormalized),
``score(y, t)`` = ∇_y U (shape of y), ``time_score(y, t)`` = ∂_t U (B,),
``denoise(y, t)`` = y - t ∇_y U; y is (B, ...) with d values per sample, t (B,) a
variance. The scores come from autograd of the energy, as in the training objectives
(a hand-written closed form with a forward-mode t-tangent was tried: same values, but
28.9 against 26.3 CPU ms per training step at width 256, so it was dropped).
The released code leaves a unconstrained; softplus is this project's choice (with it,
every component is a normalizable Gaussian and ``log_normalizer`` is finite).
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F


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
    def energy_and_scores(self, y: torch.Tensor, t: torch.Tensor, create_graph: bool = False):
        """(U (B,), ∇_y U (shape of y), ∂_t U (B,)) from one autograd pass, as
        :meth:`dsm.nets.EnergyModel.energy_and_scores` (y, t used as given if they
        require grad, else detached copies are differentiated)."""
        with torch.enable_grad():
            y = y if y.requires_grad else y.detach().requires_grad_(True)
            t = t if t.requires_grad else t.detach().requires_grad_(True)
            u = self.energy(y, t)
            gy, gt = torch.autograd.grad(u.sum(), (y, t), create_graph=create_graph)
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
