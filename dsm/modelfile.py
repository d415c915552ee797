"""The trained-model file ``model.pt``: its format, writing it, and loading it back.

``model.pt`` = ``{format: "dsm-model/1", model (state dict), model_cfg, kind, shape [C,H,W],
config, config_sha256, provenance: {...}}``; only tensors, plain containers, strings and
numbers, so ``torch.load(..., weights_only=True)`` reads it (no pickled code runs).
Evaluation needs only this module and :mod:`dsm.nets`, not the trainer.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Mapping

import torch

from dsm.errors import DsmError
from dsm.io import save_torch
from dsm.runtime import resolve_device

MODEL_FORMAT = "dsm-model/1"


def resolve_model_cfg(model_cfg: Mapping, train_cfg: Mapping) -> dict:
    """The model section as trained: ``log_t_floor: null`` (or absent) of a log embedding
    becomes ``train.t_min``, so that t = 0 (the one-shot log p) maps to the edge of the
    trained noise range. The resolved value is stored in model.pt and hashed."""
    m = json.loads(json.dumps(dict(model_cfg)))
    if str(m.get("embedding", "linear")).startswith("log") and m.get("log_t_floor") is None:
        m["log_t_floor"] = float(train_cfg["t_min"])
    return m


def write_model_file(path, model: torch.nn.Module, model_cfg: Mapping, shape, config: Mapping,
                     config_sha256: str, provenance: Mapping) -> Path:
    """Write ``model.pt`` atomically (weights on CPU + everything needed to rebuild it)."""
    payload = {
        "format": MODEL_FORMAT,
        "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "model_cfg": json.loads(json.dumps(dict(model_cfg))),
        "kind": model_cfg.get("kind", "energy"),
        "shape": list(shape),
        "config": dict(config),
        "config_sha256": config_sha256,
        "provenance": dict(provenance),
    }
    save_deterministic(payload, path)
    return Path(path)


def save_deterministic(payload, path) -> None:
    """``torch.save`` atomically, with bytes that depend on the payload only
    (:func:`dsm.io.save_torch`)."""
    save_torch(payload, path)


def read_model_file(path) -> dict:
    """The payload of a ``model.pt`` (weights-only load); DsmError if it is not one."""
    path = Path(path)
    if not path.is_file():
        raise DsmError(f"{path}: model file not found; run `dsm train`")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001
        first = str(e).strip().splitlines()[-1][:200] if str(e).strip() else ""
        raise DsmError(f"{path}: cannot read model file ({type(e).__name__}: {first})") from None
    if not isinstance(payload, dict) or payload.get("format") != MODEL_FORMAT:
        raise DsmError(f"{path}: not a dsm model file ({MODEL_FORMAT})")
    return payload


def load_model(path, device="cpu"):
    """(model, payload) from a ``model.pt``: the network rebuilt from its stored config.

    A file with the right format tag but contents that do not fit together (a file of
    another version of the code, or an edited one: ``model_cfg`` or ``shape`` missing or
    malformed, a weight missing, extra or of another shape) is a DsmError naming the file
    and what is wrong. The network is first built on torch's ``meta`` device (no memory),
    so absurd widths in ``model_cfg`` are caught before anything is allocated."""
    from dsm.nets import build_model

    payload = read_model_file(path)
    c, h = _check_layout(path, payload)
    try:
        with torch.device("meta"):
            skeleton = build_model(payload["model_cfg"], channels=c, image_size=h)
    except DsmError as e:
        raise DsmError(f"{path}: its model_cfg is not a model of this version of dsm ({e})") from None
    except (KeyError, TypeError, ValueError, RuntimeError, ZeroDivisionError) as e:
        raise DsmError(f"{path}: its model_cfg is not a model of this version of dsm "
                       f"({type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''})") from None
    _check_weights(path, skeleton.state_dict(), payload["model"])
    model = build_model(payload["model_cfg"], channels=c, image_size=h)
    model.load_state_dict(payload["model"])
    model.to(resolve_device(device)).eval()
    return model, payload


def _check_layout(path, payload: dict) -> tuple[int, int]:
    """(channels, image size) of a model file whose fields have the right types."""
    if not isinstance(payload.get("model_cfg"), dict):
        raise DsmError(f"{path}: model file without a model_cfg mapping (written by another "
                       f"version of dsm?); retrain it")
    shape = payload.get("shape")
    if not (isinstance(shape, (list, tuple)) and len(shape) == 3
            and all(isinstance(v, int) and not isinstance(v, bool) and 0 < v <= 1 << 16 for v in shape)):
        raise DsmError(f"{path}: model file's shape {shape!r} is not [C, H, W] of positive sizes")
    c, h, w = shape
    if h != w:
        raise DsmError(f"{path}: model file's shape {shape!r}: only square images are supported")
    weights = payload.get("model")
    if not isinstance(weights, dict) or not all(isinstance(v, torch.Tensor) for v in weights.values()):
        raise DsmError(f"{path}: model file's weights are not a mapping of tensors")
    return c, h


def _check_weights(path, expected: dict, given: dict) -> None:
    """The stored weights must be exactly those of the network ``model_cfg`` describes."""
    missing = sorted(set(expected) - set(given))
    extra = sorted(set(given) - set(expected))
    if missing or extra:
        what = f"weight {missing[0]} missing" if missing else f"unexpected weight {extra[0]}"
        raise DsmError(f"{path}: model file's weights do not match its model_cfg ({what}; "
                       f"{len(missing)} missing, {len(extra)} unexpected)")
    for name, t in expected.items():
        if tuple(given[name].shape) != tuple(t.shape):
            raise DsmError(f"{path}: model file's weight {name} has shape {tuple(given[name].shape)}, "
                           f"its model_cfg gives {tuple(t.shape)}")
        if given[name].is_floating_point() and not bool(torch.isfinite(given[name]).all()):
            raise DsmError(f"{path}: model file's weight {name} holds NaN or infinite values")


def load_energy_model(path, device=None):
    """(model, payload, device) of an energy model file; DsmError for a score-only model."""
    dev = resolve_device(device)
    model, payload = load_model(path, dev)
    if payload.get("kind", "energy") != "energy":
        raise DsmError(f"{path}: a {payload.get('kind')} model has no energy; "
                       f"log p needs model.kind: energy")
    return model, payload, dev
