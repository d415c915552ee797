"""The y-independent term of the energy: U(y, t) = ½⟨y, f(y, t)⟩ + c(t).

Why it exists: ½⟨y, f(y, t)⟩ with a bias-free network f is (nearly) homogeneous of degree
2 in y, so it cannot represent the part of -log p(y | t) that does not depend on y, about
½ log det 2π(Σ + t I) for data of covariance Σ. The time score ∂_t U must carry the
change of that part with t (it is what transports the normalization constant from a large
noise level down to t = 0), and without a term for it the network cannot. c(t) adds it
without touching the space score: ∇_y U and the denoiser y - t ∇_y U are unchanged, ∂_t U
gains c'(t). See docs/theory.md (the energy model).

Forms (``model.offset``):

* ``off``       c = 0: the released function.
* ``analytic``  c(t) = (d/2) ln(t + v), v = ``model.offset_variance``: the entropy change of
                an isotropic Gaussian of per-pixel variance v (the release's
                ``additive_normalization`` is (d/2) ln t, the limit v -> 0, infinite at t = 0).
* ``learned``   c(t) = d · g(e(t)), g a small MLP on the network's own noise embedding e(t)
                (emb_dim -> hidden -> 1, SiLU), its last layer zero-initialised so training
                starts from the released function.

Shapes: t (B,) variances, emb (B, emb_dim); the result (B,) in nats.
"""

from __future__ import annotations

import torch
from torch import nn

from dsm.errors import DsmError

OFFSETS = ("off", "analytic", "learned")


class AnalyticOffset(nn.Module):
    """c(t) = (d/2) ln(t + v); no parameters."""

    def __init__(self, variance: float):
        super().__init__()
        if not float(variance) > 0:   # t = 0 (log p itself) must stay finite
            raise DsmError(f"model.offset_variance: the analytic offset needs a variance > 0 "
                           f"(c(0) = (d/2) ln v), got {variance}")
        self.variance = float(variance)

    def forward(self, t: torch.Tensor, emb: torch.Tensor | None, d: int) -> torch.Tensor:
        return 0.5 * d * torch.log(t + self.variance)

    def time_derivative(self, t: torch.Tensor, d: int) -> torch.Tensor:
        """∂c/∂t (B,), for callers that differentiate through the embedding only."""
        return 0.5 * d / (t + self.variance)


class LearnedOffset(nn.Module):
    """c(t) = d · g(emb(t)), g: Linear(emb_dim, hidden) -> SiLU -> Linear(hidden, 1), last
    layer zero-initialised (c ≡ 0 at initialization)."""

    def __init__(self, emb_dim: int, hidden: int = 64):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(emb_dim, hidden), nn.SiLU(), nn.Linear(hidden, 1))
        nn.init.zeros_(self.mlp[-1].weight)
        nn.init.zeros_(self.mlp[-1].bias)

    def forward(self, t: torch.Tensor, emb: torch.Tensor, d: int) -> torch.Tensor:
        return d * self.mlp(emb).squeeze(1)


def build_offset(kind: str, emb_dim: int, variance: float = 0.0, hidden: int = 64):
    """The module for ``model.offset`` (None for ``off``)."""
    if kind == "off":
        return None
    if kind == "analytic":
        return AnalyticOffset(variance)
    if kind == "learned":
        return LearnedOffset(emb_dim, hidden)
    raise DsmError(f"model.offset: unknown value {kind!r} (expected one of {', '.join(OFFSETS)})")
