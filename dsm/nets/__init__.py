"""Networks: the homogeneous UNet, its normalization and noise embedding, and the
energy / score-only wrappers (docs/theory.md#the-model, docs/DESIGN.md "Models")."""

from __future__ import annotations

from dsm.errors import DsmError
from dsm.nets.energy import EnergyModel, ScoreModel
from dsm.nets.offset import OFFSETS, build_offset
from dsm.nets.unet import UNet, build_network

MODEL_KINDS = ("energy", "score")


def build_model(model_cfg: dict, channels: int, image_size: int):
    """EnergyModel or ScoreModel from the `model:` parameter section.

    Keys (defaults in brackets):
      kind            energy | score                       [energy]
      widths          list, width per scale; scales = len   [64, 128, 256]
      mid_width       width of the middle block             [2 * widths[-1]]
      layers_per_block  conv layers per block (>= 2)        [3]
      activation      gelu | relu                           [gelu]
      embedding       linear (features of t, 2π f) | log (of ln t, 2π f) | release (of t,
                      ω = 1 .. 0.01, no 2π: the released code) | log-release (of ln t, no 2π)  [linear]
      log_t_floor     log embedding: features of ln(t + log_t_floor); `dsm train` sets
                      null to train.t_min so t = 0 lies in the trained range  [1e-12]
      norm_eps        eps of the homogeneous norm (>= 0)    [1e-5]
      norm_eps_mode   absolute | relative (eps scaled by the input's energy,
                      exactly homogeneous)                  [absolute]
      impl            fused (hand-written backward of the norm statistics and a
                      cheaper GELU second derivative) | autograd (plain reference);
                      same values and gradients (tests/test_objectives.py)  [fused]
      grad_mode       autograd | embedding: how the energy model computes ∂_t U for
                      training (same result; see EnergyModel)  [autograd]
      offset          off | analytic | learned: the energy's y-independent term c(t)
                      (dsm.nets.offset)                     [off]
      offset_variance analytic offset: v of (d/2) ln(t + v)  [0]
      offset_hidden   learned offset: hidden width of its MLP  [64]
    image_size must be divisible by 2**len(widths) (DsmError otherwise).
    """
    cfg = dict(model_cfg or {})
    kind = cfg.get("kind", "energy")
    if kind not in MODEL_KINDS:
        raise DsmError(f"model.kind: unknown value {kind!r} (expected one of {MODEL_KINDS})")
    net = build_network(cfg, channels, image_size)
    if kind == "score":
        return ScoreModel(net)
    grad_mode = cfg.get("grad_mode", "autograd")
    if grad_mode not in EnergyModel.GRAD_MODES:
        raise DsmError(f"model.grad_mode: unknown value {grad_mode!r} (expected one of {EnergyModel.GRAD_MODES})")
    offset = build_offset(str(cfg.get("offset", "off")), net.embed.dim,
                          float(cfg.get("offset_variance", 0.0)), int(cfg.get("offset_hidden", 64)))
    return EnergyModel(net, grad_mode=grad_mode, offset=offset)


__all__ = ["UNet", "EnergyModel", "ScoreModel", "build_network", "build_model", "MODEL_KINDS",
           "OFFSETS"]
