"""Energy and score-only wrappers around a network s(y, t) (docs/theory.md#energy-from-a-score-network).

EnergyModel:  U(y, t) = ½ <y, s(y, t)> + c(t), the first term summed over all non-batch
              axes (nats, up to a constant); c(t) the optional y-independent term
              (dsm.nets.offset; none by default); ∇_y U and ∂_t U by autograd, denoiser
              x̂ = y - t ∇_y U.
ScoreModel:   the score-only baseline, s(y, t) used directly, x̂ = y - t s.

Shapes: y (B, ...) (images (B, C, H, W) for the UNet, vectors (B, d) for other nets),
t (B,) noise variance per sample. Nothing here assumes 4-D inputs.
"""

from __future__ import annotations

import torch
from torch import nn

from dsm.nets.offset import AnalyticOffset


def _per_sample(t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """t (B,) reshaped to broadcast against like (B, ...)."""
    return t.reshape(-1, *([1] * (like.dim() - 1))).to(like.dtype)


class EnergyModel(nn.Module):
    """U(y, t) = ½ <y, s(y, t)> for a network net(y, t) -> same shape as y.

    grad_mode selects how energy_and_scores gets (∇_y U, ∂_t U) for training:
      "autograd":  one torch.autograd.grad(U.sum(), (y, t)) (docs/theory.md#objectives), the reference;
      "embedding": one torch.autograd.grad(U.sum(), (y, emb)) with emb = embedding(t),
                   then ∂_t U = <∂U/∂emb, d emb/dt> with d emb/dt by forward mode through
                   the small embedding MLP only (nets exposing .embed/.forward_emb).
    Both give the same values and the same parameter gradients (tests/test_objectives.py).

    offset: None, or a module ``offset(t, emb, d) -> (B,)`` (dsm.nets.offset): the
    y-independent term c(t). A learned one reads the network's noise embedding, so the
    network must expose ``forward_and_embedding`` (the UNet does).
    """

    GRAD_MODES = ("autograd", "embedding")

    def __init__(self, net: nn.Module, grad_mode: str = "autograd", offset: nn.Module | None = None):
        super().__init__()
        self.net = net
        if grad_mode not in self.GRAD_MODES:
            raise ValueError(f"grad_mode: expected one of {self.GRAD_MODES}, got {grad_mode!r}")
        self.grad_mode = grad_mode
        needs_emb = offset is not None and not isinstance(offset, AnalyticOffset)
        if needs_emb and not hasattr(net, "forward_and_embedding"):
            raise ValueError(f"a learned offset needs the network's noise embedding "
                             f"({type(net).__name__} has no forward_and_embedding)")
        self.offset = offset
        self._offset_needs_emb = needs_emb

    def energy(self, y: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """(B, ...), (B,) -> (B,) energy in nats (unnormalized). No gradient is needed:
        this is the one-shot log p evaluation (works under torch.inference_mode)."""
        if self.offset is None:
            return 0.5 * (y * self.net(y, t)).flatten(1).sum(1)
        emb = None
        if self._offset_needs_emb:
            s, emb = self.net.forward_and_embedding(y, t)
        else:
            s = self.net(y, t)
        return 0.5 * (y * s).flatten(1).sum(1) + self.offset(t.to(y.dtype), emb, y[0].numel())

    def offset_energy(self, t: torch.Tensor, d: int) -> torch.Tensor:
        """c(t) (B,) in nats (zeros without an offset), for diagnostics."""
        if self.offset is None:
            return torch.zeros_like(t)
        emb = self.net.embedding(t, t.dtype) if self._offset_needs_emb else None
        return self.offset(t, emb, d)

    forward = energy

    def energy_and_scores(self, y: torch.Tensor, t: torch.Tensor, create_graph: bool = False):
        """(U (B,), ∇_y U (B, ...), ∂_t U (B,)).

        With create_graph=True (training) all three stay differentiable w.r.t. the
        parameters (double back-propagation); otherwise all three are detached. y and t
        are used as given if they already require grad, else detached copies are
        differentiated.
        """
        with torch.enable_grad():
            y = y if y.requires_grad else y.detach().requires_grad_(True)
            if self.grad_mode == "embedding" and hasattr(self.net, "forward_emb") and hasattr(self.net, "embed"):
                return self._via_embedding(y, t, create_graph)
            t = t if t.requires_grad else t.detach().requires_grad_(True)
            u = self.energy(y, t)
            gy, gt = torch.autograd.grad(u.sum(), (y, t), create_graph=create_graph)
            return (u, gy, gt) if create_graph else (u.detach(), gy, gt)

    def _via_embedding(self, y, t, create_graph):
        self.net.check_input(y)  # forward_emb skips the checks of net.forward
        t = t.detach().to(y.dtype)
        # emb and d emb/dt from one forward-mode pass through the small MLP.
        emb, demb = self.net.embed.forward_with_tangent(t)
        if not create_graph:
            emb, demb = emb.detach(), demb.detach()
        emb_leaf = emb if emb.requires_grad else emb.detach().requires_grad_(True)
        s = self.net.forward_emb(y, emb_leaf)
        u = 0.5 * (y * s).flatten(1).sum(1)
        d = y[0].numel()
        if self._offset_needs_emb:
            u = u + self.offset(t, emb_leaf, d)   # its t-dependence goes through emb
        gy, gemb = torch.autograd.grad(u.sum(), (y, emb_leaf), create_graph=create_graph)
        gt = (gemb * demb).sum(1)
        if isinstance(self.offset, AnalyticOffset):  # t-dependence outside the embedding
            u = u + self.offset(t, None, d)
            gt = gt + self.offset.time_derivative(t, d)
        return (u, gy, gt) if create_graph else (u.detach(), gy, gt)

    def score(self, y: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """∇_y U (B, ...), in 1/units of y (not equal to s(y, t) unless J_s is symmetric).

        Works under torch.no_grad and torch.inference_mode (autograd is re-enabled here
        on copies of the inputs); the result is detached.
        """
        with torch.inference_mode(False), torch.enable_grad():
            y = y.detach().clone().requires_grad_(True)
            u = self.energy(y, t.detach().clone())
            (gy,) = torch.autograd.grad(u.sum(), y)
        return gy

    def time_score(self, y: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """∂_t U (B,), nats per unit of variance; detached, like score."""
        with torch.inference_mode(False), torch.enable_grad():
            t = t.detach().to(y.dtype).clone().requires_grad_(True)
            u = self.energy(y.detach().clone(), t)
            (gt,) = torch.autograd.grad(u.sum(), t)
        return gt

    def denoise(self, y: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """x̂ = y - t ∇_y U (Miyasawa–Tweedie), (B, ...), detached."""
        g = self.score(y, t)
        return y.detach() - _per_sample(t, y) * g


class ScoreModel(nn.Module):
    """Score-only baseline: s(y, t) = net(y, t) is the score; x̂ = y - t s. No energy."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def score(self, y: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """s(y, t) (B, ...); differentiable w.r.t. the parameters."""
        return self.net(y, t)

    forward = score

    def denoise(self, y: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return y - _per_sample(t, y) * self.score(y, t)
