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
    """(model, payload) from a ``model.pt``: the network rebuilt from its stored config."""
    from dsm.nets import build_model

    payload = read_model_file(path)
    c, h, _ = payload["shape"]
    model = build_model(payload["model_cfg"], channels=c, image_size=h)
    model.load_state_dict(payload["model"])
    model.to(resolve_device(device)).eval()
    return model, payload


def load_energy_model(path, device=None):
    """(model, payload, device) of an energy model file; DsmError for a score-only model."""
    dev = resolve_device(device)
    model, payload = load_model(path, dev)
    if payload.get("kind", "energy") != "energy":
        raise DsmError(f"{path}: a {payload.get('kind')} model has no energy; "
                       f"log p needs model.kind: energy")
    return model, payload, dev
