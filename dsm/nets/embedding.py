"""Noise-level embedding: Fourier features of t (or of log t) followed by a small MLP.

docs/theory.md#noise-embedding: 32 frequencies, cos and sin (64 features) -> MLP 64 -> 256 -> 256 with
SiLU. Each normalization layer then maps the 256-d embedding to its own per-channel
gains (see norm.py); the embedding itself never touches the image path additively,
so the network stays bias-free in y.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from dsm.errors import DsmError

EMBEDDINGS = ("linear", "log", "release", "log-release")
# kinds whose features are of ln(t + log_t_floor) (the rest use t itself)
LOG_EMBEDDINGS = ("log", "log-release")
# kinds whose angular frequencies are 2π × logspace(0, -2) (the rest: logspace(0, -2), no 2π)
TWO_PI_EMBEDDINGS = ("linear", "log")

# log t is evaluated as log(t + floor) so that t = 0 (the one-shot log p(x) evaluation)
# stays finite; unlike a clamp it keeps d/dt nonzero. Training covers ln(t + floor) for
# t >= t_min, so t = 0 (ln floor) lies inside the trained features when the floor is well
# above t_min (the default scale: floor 1e-5, t_min 1e-6) and ln 2 outside them when it
# equals t_min (model.log_t_floor: null, resolved by dsm.train); a floor far below t_min
# (the old fixed 1e-12) puts t = 0 far outside, where the network's output is arbitrary
# (docs/defaults.md#training-range-and-noise-embedding). LOG_T_FLOOR is only the default
# for models saved without the key.
LOG_T_FLOOR = 1e-12


class NoiseEmbedding(nn.Module):
    """t (B,) noise variance -> (B, dim) embedding.

    kind="linear": features cos(2π f t), sin(2π f t) of t itself, f log-spaced 1 .. 0.01
    (periods 1 .. 100 in units of t), nearly constant for t < 1e-3.
    kind="release" [release]: cos(ω t), sin(ω t) with angular frequencies ω =
    logspace(0, -2) = 1 .. 0.01 and no 2π: exactly the released code's features
    (periods 2π .. 200π).
    kind="log": the "linear" features of ln(t + log_t_floor), periods 1 .. 100 in units of
    ln t, so the embedding keeps resolving noise levels down to the floor (set it above the
    training t_min so that t = 0 stays inside the trained range).
    kind="log-release": the "release" features (no 2π) of ln(t + log_t_floor): periods
    2π .. 200π in ln t, smoother in the noise level than "log".
    The frequencies are a buffer saved with the model, so old model files load to the same
    function.
    """

    def __init__(self, kind: str = "linear", n_freqs: int = 32, dim: int = 256,
                 log_t_floor: float = LOG_T_FLOOR):
        super().__init__()
        if kind not in EMBEDDINGS:
            raise DsmError(f"model.embedding: unknown value {kind!r} (expected one of {EMBEDDINGS})")
        if not float(log_t_floor) > 0:
            raise DsmError(f"model.log_t_floor: must be > 0, got {log_t_floor}")
        self.kind = kind
        self.dim = dim
        self.log_t_floor = float(log_t_floor)
        freqs = torch.logspace(0.0, -2.0, n_freqs, dtype=torch.float64)
        if kind in TWO_PI_EMBEDDINGS:
            freqs = 2 * math.pi * freqs
        self.register_buffer("freqs", freqs.float())
        self.mlp = nn.Sequential(
            nn.Linear(2 * n_freqs, dim), nn.SiLU(), nn.Linear(dim, dim), nn.SiLU()
        )

    def features(self, t: torch.Tensor) -> torch.Tensor:
        """(B,) -> (B, 2 n_freqs) Fourier features [cos, sin]."""
        u = torch.log(t + self.log_t_floor) if self.kind in LOG_EMBEDDINGS else t
        arg = u[:, None] * self.freqs.to(u.dtype)
        return torch.cat([torch.cos(arg), torch.sin(arg)], dim=1)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return self.mlp(self.features(t))

    def forward_with_tangent(self, t: torch.Tensor):
        """(emb (B, dim), d emb / dt (B, dim)): forward-mode derivative by the chain rule.

        Written out by hand (the MLP is two Linear + SiLU) rather than with torch.func.jvp,
        whose first use loads TorchScript decompositions (slow, deprecated warnings).
        Both outputs are differentiable w.r.t. the MLP parameters.
        """
        if self.kind in LOG_EMBEDDINGS:
            u, du = torch.log(t + self.log_t_floor), 1.0 / (t + self.log_t_floor)
        else:
            u, du = t, torch.ones_like(t)
        w = self.freqs.to(u.dtype)
        arg = u[:, None] * w
        cos, sin = torch.cos(arg), torch.sin(arg)
        h = torch.cat([cos, sin], dim=1)
        dh = torch.cat([-sin * w, cos * w], dim=1) * du[:, None]
        for layer in self.mlp:
            if isinstance(layer, nn.Linear):
                h, dh = layer(h), dh @ layer.weight.T
            else:  # SiLU: d/da [a sigmoid(a)] = sigmoid(a) (1 + a (1 - sigmoid(a)))
                sig = torch.sigmoid(h)
                h, dh = h * sig, dh * sig * (1 + h * (1 - sig))
        return h, dh
