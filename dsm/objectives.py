"""Noise-level sampling and the dual / denoising score matching losses (docs/theory.md#objectives).

Per example, with d = numel per sample, y = x + sqrt(t) z:

    DSM = || sqrt(t/d) ∇_y U(y,t) - z / sqrt(d) ||²
    TSM = ( (t/d) ∂_t U(y,t) - ½ (1 - ||z||²/d) )²

both unitless and O(1) at every t; the dual loss is DSM + TSM (weight 1), the
score-only baseline uses DSM with the network's score s in place of ∇_y U.
Nothing assumes images: x may be (B, C, H, W) or (B, d).

Model contract: the dual loss needs `model.energy(y, t) -> (B,)`; if the model also has
`energy_and_scores(y, t, create_graph) -> (U, ∇_y U, ∂_t U)` that is used instead
(it may implement a faster but equivalent route). The score loss needs
`model.score(y, t) -> (B, ...)` differentiable w.r.t. the parameters.
"""

from __future__ import annotations

import math

import torch

from dsm.errors import DsmError


def sample_noise_levels(batch: int, t_min: float, t_max: float, generator=None, device=None,
                        dtype=torch.float32) -> torch.Tensor:
    """(batch,) noise variances, log t ~ Uniform(log t_min, log t_max).

    Drawn on the generator's device (CPU when None), then moved to `device`, so a
    seeded CPU generator gives the same t on every device.
    """
    if not (t_min > 0 and t_max >= t_min):
        raise DsmError(f"train.t_min/t_max: need 0 < t_min <= t_max, got {t_min}, {t_max}")
    gen_device = generator.device if generator is not None else None
    u = torch.rand(batch, generator=generator, device=gen_device, dtype=torch.float64)
    log_t = math.log(t_min) + u * (math.log(t_max) - math.log(t_min))
    return torch.exp(log_t).to(device=device if device is not None else u.device, dtype=dtype)


def _energy_and_scores(model, y, t):
    if hasattr(model, "energy_and_scores"):
        return model.energy_and_scores(y, t, create_graph=True)
    y = y.detach().requires_grad_(True)
    t = t.detach().requires_grad_(True)
    u = model.energy(y, t)
    gy, gt = torch.autograd.grad(u.sum(), (y, t), create_graph=True)
    return u, gy, gt


def _reduce(terms: dict, reduction: str) -> dict:
    if reduction == "none":
        return terms
    if reduction != "mean":
        raise ValueError(f"reduction: 'mean' or 'none', got {reduction!r}")
    return {k: v.mean() for k, v in terms.items()}


def dual_score_matching_loss(model, x: torch.Tensor, t: torch.Tensor, z: torch.Tensor,
                             reduction: str = "mean") -> dict:
    """DSM + TSM. x clean (B, ...), t (B,) variance, z (B, ...) standard normal.

    Returns dict(loss, dsm, tsm): scalars (batch means), or (B,) with reduction="none".
    loss is differentiable w.r.t. the model's parameters (double back-propagation).
    """
    d = x[0].numel()
    tb = t.reshape(-1, *([1] * (x.dim() - 1))).to(x.dtype)
    y = x + tb.sqrt() * z
    _, gy, gt = _energy_and_scores(model, y, t.to(x.dtype))
    dsm = (tb.sqrt() * gy - z).flatten(1).pow(2).sum(1) / d
    z2 = z.flatten(1).pow(2).sum(1) / d
    tsm = (t.to(x.dtype) * gt / d - 0.5 * (1 - z2)).pow(2)
    return _reduce({"loss": dsm + tsm, "dsm": dsm, "tsm": tsm}, reduction)


def denoising_score_matching_loss(model, x: torch.Tensor, t: torch.Tensor, z: torch.Tensor,
                                  reduction: str = "mean") -> dict:
    """DSM alone; dict(loss, dsm). The score is the score-only model's s(y, t) or, for an
    energy model (``train.loss: dsm`` on ``model.kind: energy``: single score matching, the
    control that shows what the time score adds), ∇_y U kept differentiable."""
    d = x[0].numel()
    tb = t.reshape(-1, *([1] * (x.dim() - 1))).to(x.dtype)
    y = x + tb.sqrt() * z
    if hasattr(model, "energy"):
        _, s, _ = _energy_and_scores(model, y, t.to(x.dtype))
    else:
        s = model.score(y, t.to(x.dtype))
    dsm = (tb.sqrt() * s - z).flatten(1).pow(2).sum(1) / d
    return _reduce({"loss": dsm, "dsm": dsm}, reduction)
