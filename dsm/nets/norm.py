"""Homogeneous instance normalization with noise-conditioned multiplicative gains.

docs/theory.md#homogeneous-instance-normalization. Per sample b and channel c, over the spatial axes:

    out = (h - mu_bc) * sqrt(vbar_b / (v_bc + eps) + eps) * gamma_c * (1 + e_c(t))

with vbar_b the mean over channels of the variances v_bc. The factor equalises the
channel norms while keeping the global norm, so the layer is (nearly) homogeneous of
degree 1 in h: exactly so for eps = 0, or for eps_mode="relative", where the inner eps
is scaled by vbar_b (the input's energy) and the ratio becomes scale-free. There are
no batch statistics (train = eval, and the double backward of the energy objective
is well defined per sample).
"""

from __future__ import annotations

import torch
from torch import nn

from dsm.errors import DsmError

EPS_MODES = ("absolute", "relative")
IMPLS = ("fused", "autograd")


class _CenterVar(torch.autograd.Function):
    """h (B, C, H, W) -> (xc = h - mean_hw h, v = mean_hw xc²  (B, C, 1, 1)).

    Same values as the plain autograd graph, with a hand-written backward of 4 large
    ops instead of ~8. The backward uses only the saved *output* xc and differentiable
    ops, so autograd can differentiate it again (double back-propagation of the
    energy objective), the derivative flowing back into xc through this same function.
    """

    @staticmethod
    def forward(ctx, h):
        xc = h - h.mean(dim=(2, 3), keepdim=True)
        v = (xc * xc).mean(dim=(2, 3), keepdim=True)
        ctx.save_for_backward(xc)
        return xc, v

    @staticmethod
    def backward(ctx, g_xc, g_v):
        (xc,) = ctx.saved_tensors
        n = xc.shape[2] * xc.shape[3]
        # d xc/dh is the centering projection P (symmetric); dv/dh = 2 xc / n and
        # P xc = xc, so grad_h = P g_xc + (2/n) g_v xc.
        grad = None
        if g_xc is not None:
            grad = g_xc - g_xc.mean(dim=(2, 3), keepdim=True)
        if g_v is not None:
            term = xc * (g_v * (2.0 / n))
            grad = term if grad is None else grad + term
        return grad


class HomogeneousInstanceNorm(nn.Module):
    """(B, C, H, W) features and (B, emb_dim) noise embedding -> (B, C, H, W).

    eps_mode="absolute": the formula above with a fixed eps (release: 1e-5); the
    layer is homogeneous only for |h|^2 >> eps per pixel.
    eps_mode="relative": inner eps replaced by eps * vbar_b, so the output is exactly
    homogeneous of degree 1 in h for any eps >= 0 (a floor of the dtype's smallest
    normal number keeps h = 0 finite: output 0).
    impl="fused" computes the statistics with a hand-written (double-differentiable)
    backward; impl="autograd" is the plain reference. Same values and derivatives.
    """

    def __init__(self, channels: int, emb_dim: int, eps: float = 1e-5, eps_mode: str = "absolute",
                 impl: str = "fused"):
        super().__init__()
        if eps < 0:
            raise DsmError(f"model.norm_eps: must be >= 0, got {eps}")
        if eps_mode not in EPS_MODES:
            raise DsmError(f"model.norm_eps_mode: unknown value {eps_mode!r} (expected one of {EPS_MODES})")
        if impl not in IMPLS:
            raise DsmError(f"model.impl: unknown value {impl!r} (expected one of {IMPLS})")
        self.impl = impl
        self.eps = float(eps)
        self.eps_mode = eps_mode
        self.gamma = nn.Parameter(torch.ones(channels))
        self.gain = nn.Linear(emb_dim, channels)

    def gains(self, emb: torch.Tensor) -> torch.Tensor:
        """(B, emb_dim) -> (B, C, 1, 1) multiplicative gains gamma_c (1 + e_c(t))."""
        return (self.gamma * (1 + self.gain(emb)))[:, :, None, None]

    def forward(self, h: torch.Tensor, emb: torch.Tensor | None = None,
                gains: torch.Tensor | None = None) -> torch.Tensor:
        """h (B, C, H, W) and either emb (B, emb_dim) or precomputed gains (B, C, 1, 1)."""
        if gains is None:
            gains = self.gains(emb)
        if self.impl == "fused":
            centered, var = _CenterVar.apply(h)
        else:  # reference: plain autograd through the statistics
            var, mean = torch.var_mean(h, dim=(2, 3), keepdim=True, correction=0)
            centered = h - mean
        tiny = torch.finfo(h.dtype).tiny
        # eps = 0 is allowed for homogeneity tests; the floor only matters for a channel
        # that is exactly constant, where it makes 0/0 -> 0 instead of NaN.
        if self.eps_mode == "relative":
            a, kappa = self.eps, tiny
        else:
            a, kappa = 0.0, (self.eps if self.eps > 0 else tiny)
        # Few small ops on purpose: each one becomes several in the double backward (a
        # hand-written double-differentiable Function for this chain was tried: its
        # Python overhead cost more than the ops it saved, docs/benchmarks.md).
        vbar = var.mean(dim=1, keepdim=True)
        mult = torch.sqrt(vbar / (var + a * vbar + kappa) + self.eps) * gains
        return centered * mult
