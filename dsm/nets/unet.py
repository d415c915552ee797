"""Bias-free, noise-conditioned UNet s(y, t) of docs/theory.md#the-unet [release layout].

Scale i (0 = full resolution) has width widths[i]; the middle block has mid_width.
Every block has `layers_per_block` layers conv (no bias) -> homogeneous norm -> act:

    encoder i:  first conv 3x3 (i = 0) or 2x2 stride-2 down (i > 0), then 3x3 convs
    middle:     2x2 stride-2 down, 3x3 convs, last a 2x2 stride-2 transposed conv up
                to widths[-1]
    decoder i (deepest first): input = concat(decoder stream, skip of encoder i),
                3x3 convs, last a 2x2 stride-2 up to widths[i-1] (i > 0); decoder 0
                ends with a plain 3x3 conv to C channels (no norm, no activation)

With no additive terms anywhere in the image path, s(0, t) = 0, and with ReLU and a
homogeneous normalization (norm.py) s is exactly homogeneous of degree 1 in y.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import once_differentiable

from dsm.errors import DsmError
from dsm.nets.embedding import LOG_T_FLOOR, NoiseEmbedding
from dsm.nets.norm import IMPLS, HomogeneousInstanceNorm

_INV_SQRT_2PI = 1.0 / math.sqrt(2 * math.pi)


class _GeluGrad(torch.autograd.Function):
    """(g, x) -> g * GELU'(x), the first backward of GELU, as a function of its own.

    Its backward (the second derivative, needed by the energy objective's double
    back-propagation) is written with in-place ops on temporaries: half the work of
    autograd's generic gelu double backward. It is once_differentiable: nothing here
    needs third derivatives.
    """

    @staticmethod
    def forward(ctx, g, x):
        ctx.save_for_backward(g, x)
        return torch.ops.aten.gelu_backward(g, x)

    @staticmethod
    @once_differentiable
    def backward(ctx, q):
        g, x = ctx.saved_tensors
        dg = torch.ops.aten.gelu_backward(q, x) if ctx.needs_input_grad[0] else None
        dx = None
        if ctx.needs_input_grad[1]:
            # GELU''(x) = phi(x) (2 - x²), phi the standard normal density.
            x2 = x * x
            dx = torch.exp(x2 * -0.5)
            dx.mul_(x2.neg_().add_(2.0).mul_(_INV_SQRT_2PI)).mul_(q).mul_(g)
        return dg, dx


class _Gelu(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return F.gelu(x)

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return _GeluGrad.apply(g, x)


class FusedGELU(nn.Module):
    """Exact (erf) GELU with a cheaper second derivative; same values as nn.GELU."""

    def forward(self, x):
        return _Gelu.apply(x)


ACTIVATIONS = {"gelu": nn.GELU, "relu": nn.ReLU}
FUSED_ACTIVATIONS = {"gelu": FusedGELU, "relu": nn.ReLU}


class Layer(nn.Module):
    """conv (3x3, 2x2 down, or 2x2 up) -> norm(emb) -> activation; shapes (B, C, H, W)."""

    def __init__(self, c_in, c_out, kind, emb_dim, activation, norm_kw, last=False):
        impl = norm_kw["impl"]
        super().__init__()
        if kind == "conv":
            self.conv = nn.Conv2d(c_in, c_out, 3, padding=1, bias=False)
        elif kind == "down":
            self.conv = nn.Conv2d(c_in, c_out, 2, stride=2, bias=False)
        elif kind == "up":
            self.conv = nn.ConvTranspose2d(c_in, c_out, 2, stride=2, bias=False)
        else:  # pragma: no cover - internal
            raise ValueError(kind)
        self.last = last
        if not last:
            self.norm = HomogeneousInstanceNorm(c_out, emb_dim, **norm_kw)
            self.act = (FUSED_ACTIVATIONS if impl == "fused" else ACTIVATIONS)[activation]()

    def forward(self, h: torch.Tensor, emb: torch.Tensor, gains=None) -> torch.Tensor:
        h = self.conv(h)
        if self.last:
            return h
        return self.act(self.norm(h, emb, gains))


class Block(nn.Module):
    def __init__(self, layers):
        super().__init__()
        self.layers = nn.ModuleList(layers)

    def forward(self, h, emb, gains=None):
        """gains: None, or an iterator yielding each normalized layer's (B, C, 1, 1) gains."""
        for layer in self.layers:
            h = layer(h, emb, None if gains is None or layer.last else next(gains))
        return h


class UNet(nn.Module):
    """s(y, t): y (B, C, H, W), t (B,) noise variance -> (B, C, H, W).

    H and W must be divisible by 2**len(widths) (DsmError otherwise).
    """

    def __init__(
        self,
        channels: int = 1,
        widths=(64, 128, 256),
        mid_width: int = 512,
        layers_per_block: int = 3,
        activation: str = "gelu",
        embedding: str = "linear",
        log_t_floor: float = LOG_T_FLOOR,
        norm_eps: float = 1e-5,
        norm_eps_mode: str = "absolute",
        impl: str = "fused",
        emb_dim: int = 256,
        n_freqs: int = 32,
    ):
        super().__init__()
        widths = [int(w) for w in widths]
        if not widths or min(widths) < 1 or int(mid_width) < 1:
            raise DsmError(f"model.widths/mid_width: need >= 1 scale of positive width, got {widths}, {mid_width}")
        if layers_per_block < 2:
            raise DsmError(f"model.layers_per_block: must be >= 2 (a down and an up conv), got {layers_per_block}")
        if activation not in ACTIVATIONS:
            raise DsmError(f"model.activation: unknown value {activation!r} (expected one of {tuple(ACTIVATIONS)})")
        if impl not in IMPLS:
            raise DsmError(f"model.impl: unknown value {impl!r} (expected one of {IMPLS})")
        if channels not in (1, 3):
            raise DsmError(f"data.channels: must be 1 or 3, got {channels}")
        self.channels = channels
        self.impl = impl
        self._norms = None  # plain list (not registered twice), filled on first use
        self.n_scales = len(widths)
        self.embed = NoiseEmbedding(embedding, n_freqs, emb_dim, log_t_floor)

        norm_kw = {"eps": norm_eps, "eps_mode": norm_eps_mode, "impl": impl}

        def layer(c_in, c_out, kind, last=False):
            return Layer(c_in, c_out, kind, emb_dim, activation, norm_kw, last)

        n_inner = layers_per_block - 1
        self.encoder = nn.ModuleList()
        c_prev = channels
        for i, w in enumerate(widths):
            first = layer(c_prev, w, "conv" if i == 0 else "down")
            self.encoder.append(Block([first] + [layer(w, w, "conv") for _ in range(n_inner)]))
            c_prev = w
        m = int(mid_width)
        self.middle = Block(
            [layer(widths[-1], m, "down")]
            + [layer(m, m, "conv") for _ in range(layers_per_block - 2)]
            + [layer(m, widths[-1], "up")]
        )
        self.decoder = nn.ModuleList()
        for i in reversed(range(self.n_scales)):
            w = widths[i]
            inner = [layer(2 * w, w, "conv")] + [layer(w, w, "conv") for _ in range(layers_per_block - 2)]
            if i > 0:
                last = layer(w, widths[i - 1], "up")
            else:
                last = layer(w, channels, "conv", last=True)
            self.decoder.append(Block(inner + [last]))

    def check_input(self, y: torch.Tensor) -> None:
        if y.dim() != 4 or y.shape[1] != self.channels:
            raise DsmError(f"UNet: expected images (B, {self.channels}, H, W), got shape {tuple(y.shape)}")
        f = 2**self.n_scales
        if y.shape[2] % f or y.shape[3] % f:
            raise DsmError(
                f"image size {y.shape[2]}x{y.shape[3]} is not divisible by 2**{self.n_scales} = {f} "
                f"(the UNet has {self.n_scales} scales): change data.image_size or model.widths"
            )

    def embedding(self, t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """t (B,) -> (B, emb_dim); split out so callers can differentiate through it alone."""
        return self.embed(t.to(dtype))

    def all_gains(self, emb: torch.Tensor):
        """Every norm layer's gains gamma (1 + W emb + b) from one matrix product.

        Same values as each layer's own Linear, but 1 op instead of 20 (each small op
        costs several more in the energy's double backward). Iterator of (B, C_l, 1, 1).
        """
        norms = self._norms
        if norms is None:  # module order = order of use in forward_emb
            norms = self._norms = [m for m in self.modules() if isinstance(m, HomogeneousInstanceNorm)]
        w = torch.cat([n.gain.weight for n in norms])
        b = torch.cat([n.gain.bias for n in norms])
        gamma = torch.cat([n.gamma for n in norms])
        g = torch.addcmul(gamma, torch.addmm(b, emb, w.t()), gamma)
        return iter(g[:, :, None, None].split([n.gamma.numel() for n in norms], dim=1))

    def forward_emb(self, y: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        """s given the noise embedding emb (B, emb_dim) instead of t."""
        gains = self.all_gains(emb) if self.impl == "fused" else None
        skips = []
        h = y
        for block in self.encoder:
            h = block(h, emb, gains)
            skips.append(h)
        h = self.middle(h, emb, gains)
        for block in self.decoder:
            h = block(torch.cat([h, skips.pop()], dim=1), emb, gains)
        return h

    def forward_and_embedding(self, y: torch.Tensor, t: torch.Tensor):
        """(s (B, C, H, W), the noise embedding (B, emb_dim)), for heads that read the
        embedding (the energy's learned y-independent term)."""
        self.check_input(y)
        if t.shape != (y.shape[0],):
            raise DsmError(f"UNet: t must have shape (B,) = ({y.shape[0]},), got {tuple(t.shape)}")
        emb = self.embedding(t, y.dtype)
        return self.forward_emb(y, emb), emb

    def forward(self, y: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.forward_and_embedding(y, t)[0]


def build_network(model_cfg: dict, channels: int, image_size: int) -> UNet:
    """UNet from the `model:` parameter section (keys documented in dsm.nets.build_model)."""
    cfg = dict(model_cfg or {})
    widths = cfg.get("widths", [64, 128, 256])
    if isinstance(widths, int):
        widths = [widths]
    n_scales = len(widths)
    f = 2**n_scales
    if image_size % f:
        raise DsmError(
            f"data.image_size: {image_size} is not divisible by 2**{n_scales} = {f} "
            f"(model.widths has {n_scales} scales)"
        )
    return UNet(
        channels=int(channels),
        widths=widths,
        mid_width=int(cfg.get("mid_width", 2 * widths[-1])),
        layers_per_block=int(cfg.get("layers_per_block", 3)),
        activation=str(cfg.get("activation", "gelu")),
        embedding=str(cfg.get("embedding", "linear")),
        log_t_floor=float(LOG_T_FLOOR if cfg.get("log_t_floor") is None else cfg["log_t_floor"]),
        norm_eps=float(cfg.get("norm_eps", 1e-5)),
        norm_eps_mode=str(cfg.get("norm_eps_mode", "absolute")),
        impl=str(cfg.get("impl", "fused")),
    )
