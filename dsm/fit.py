"""The generic training loop: Adam with a step-halving learning rate, exact resume,
signals, NaN guard (:func:`fit`). It trains any model (an ``EnergyModel``, a
``ScoreModel``, the Figure-1 MLP) on batches from any ``next_batch(step, generator)``
and owns the optimizer, the seeds, the checkpoints, the metrics log and the progress bar.

Exact resume: every source of randomness is a seeded generator whose state is checkpointed
(the data generator handed to ``next_batch``, the noise generator that draws t and z, and
the global torch / numpy / python states); the learning rate is a function of the step; on
CPU ``torch.use_deterministic_algorithms`` is on. A run killed by SIGTERM and rerun ends
with bitwise the same parameters as an uninterrupted run (tests/test_train.py).
"""

from __future__ import annotations

import json
import math
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping

import torch

from dsm import checkpoint as ckpt
from dsm.errors import DsmError
from dsm.io import (directory_lock, is_no_space, remove_stale_temps, sha256_json, write_json,
                    write_text)
from dsm.runtime import derived_seed, resolve_device, seed_everything, set_determinism, use_threads

REQUIRED_KEYS = ("steps", "batch_size", "lr", "lr_halve_every", "t_min", "t_max", "seed")
# Bookkeeping keys: they do not change the trained parameters, so they are left out of the
# config hash (changing how often to log or checkpoint must not throw away a resumable run).
UNHASHED_KEYS = ("log_every", "checkpoint_every", "keep_checkpoints", "threads", "device",
                 "progress")
PREEMPT_SIGNALS = ("SIGTERM", "SIGUSR1")


# --- schedule, config hash, loss choice ------------------------------------------------

def lr_at(step: int, lr: float, halve_every) -> float:
    """Learning rate of 0-based step ``step``: lr * 0.5 ** (step // halve_every)."""
    if not halve_every:
        return float(lr)
    return float(lr) * 0.5 ** (int(step) // int(halve_every))


def config_hash(train_cfg: Mapping, identity: Mapping | None = None) -> tuple[dict, str]:
    """The resolved config a checkpoint must match to be resumed, and its SHA-256."""
    hashed = {k: v for k, v in sorted(train_cfg.items()) if k not in UNHASHED_KEYS}
    resolved = {"train": hashed, "identity": dict(identity or {})}
    # round-trip through JSON so the stored config is plain (weights_only-loadable)
    resolved = json.loads(json.dumps(resolved, sort_keys=True, default=str))
    return resolved, sha256_json(resolved)


def _default_loss(kind: str, model) -> Callable:
    from dsm.objectives import denoising_score_matching_loss, dual_score_matching_loss

    if kind == "auto":
        kind = "dual" if hasattr(model, "energy") else "dsm"
    if kind == "dual":
        if not hasattr(model, "energy"):
            raise DsmError("train.loss: 'dual' needs a model with an energy (model.kind: energy)")
        return dual_score_matching_loss
    if kind == "dsm":
        return denoising_score_matching_loss
    raise DsmError(f"train.loss: unknown value {kind!r} (expected auto, dual or dsm)")


class _SignalFlag:
    """Record SIGTERM / SIGUSR1 instead of dying, so the loop can checkpoint and exit."""

    def __init__(self):
        self.signum = None
        self._old = {}

    def __enter__(self):
        for name in PREEMPT_SIGNALS:
            sig = getattr(signal, name, None)
            if sig is None:
                continue
            try:
                self._old[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread: leave signals alone
                pass
        return self

    def _handle(self, signum, frame):
        self.signum = signum

    def __exit__(self, *exc):
        for sig, old in self._old.items():
            signal.signal(sig, old)
        return False


@dataclass
class FitResult:
    step: int                     # completed optimizer steps (== cfg steps when finished)
    resumed_from: int | None      # step of the checkpoint resumed from, None for a fresh run
    config_sha256: str
    config: dict                  # the resolved config that was hashed
    last: dict = field(default_factory=dict)   # last metrics record
    seconds: float = 0.0          # cumulative training time over all segments


def _read_metrics(path: Path, up_to: int) -> list[str]:
    if not path.is_file():
        return []
    keep = []
    for line in path.read_text().splitlines():
        try:
            if json.loads(line)["step"] <= up_to:
                keep.append(line)
        except (ValueError, KeyError, TypeError):
            continue
    return keep



# --- the generic loop ------------------------------------------------------------------

def fit(model: torch.nn.Module,
        next_batch: Callable[[int, torch.Generator], torch.Tensor],
        cfg: Mapping,
        out_dir,
        *,
        device=None,
        loss_fn: Callable | None = None,
        identity: Mapping | None = None,
        desc: str = "train",
        replaces=()) -> FitResult:
    """Train ``model`` in place for ``cfg['steps']`` Adam steps, resumably. See docs/DESIGN.md.

    next_batch(step, generator) -> x (B, ...): the clean batch of 0-based step ``step``;
        all its randomness must come from ``generator`` (a seeded CPU generator whose state
        is checkpointed), so that a resumed run sees the same batches.
    cfg: steps, batch_size, lr, lr_halve_every (0/None: constant), t_min, t_max (noise
        variances), seed; optional checkpoint_every, log_every, flush_denormal, loss
        (auto|dual|dsm), keep_checkpoints, threads, deterministic, device, ema (decay of
        the weight EMA the run ends with; 0 = off).
    loss_fn(model, x, t, z) -> dict(loss, ...): overrides cfg['loss'].
    identity: extra plain data (model config, data hashes) that must match to resume.
    replaces: files of a previous run of another config (e.g. its model.pt): like its
        checkpoints, they are kept until this run writes its first checkpoint (or finishes),
        so a run that fails or is killed before that leaves the previous one intact.
    """
    cfg = dict(cfg)
    for key in REQUIRED_KEYS:
        if key not in cfg:
            raise DsmError(f"params: key 'train.{key}' missing")
    steps = int(cfg["steps"])
    t_min, t_max = float(cfg["t_min"]), float(cfg["t_max"])
    if steps < 0:
        raise DsmError(f"train.steps: expected >= 0, got {steps}")
    if not 0 < t_min <= t_max:
        raise DsmError(f"train.t_min/t_max: need 0 < t_min <= t_max, got {t_min}, {t_max}")

    dev = resolve_device(device if device is not None else cfg.get("device", "auto"))
    use_threads(cfg.get("threads"), "train.threads")
    torch.set_flush_denormal(bool(cfg.get("flush_denormal", True)))
    loss_fn = loss_fn or _default_loss(cfg.get("loss", "auto"), model)
    previous = set_determinism(dev, bool(cfg.get("deterministic", dev.type == "cpu")))
    try:
        # one writer per run directory: a second `dsm train` into the same --out would
        # interleave metrics.jsonl and race on the checkpoints
        with directory_lock(out_dir, "training"):
            return _fit(model, next_batch, cfg, out_dir, dev, loss_fn, identity, desc, tuple(replaces))
    finally:
        torch.use_deterministic_algorithms(previous[0], warn_only=previous[1])


def _fit(model, next_batch, cfg, out_dir, dev, loss_fn, identity, desc, replaces) -> FitResult:
    from dsm.objectives import sample_noise_levels

    steps, seed = int(cfg["steps"]), int(cfg["seed"])
    t_min, t_max = float(cfg["t_min"]), float(cfg["t_max"])
    log_every = max(1, int(cfg.get("log_every") or 1))
    checkpoint_every = int(cfg.get("checkpoint_every") or 0) or steps or 1
    keep = int(cfg.get("keep_checkpoints", 3))

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    resolved, chash = config_hash(cfg, identity)

    model.to(dev)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    # fused: one kernel for the whole update (CPU and CUDA); on the small CPU models of the
    # default scale it cuts the optimizer step from ~3.6 to ~0.85 ms of a ~30 ms step.
    fused = dev.type in ("cpu", "cuda") and all(p.dtype.is_floating_point for p in params)
    optimizer = torch.optim.Adam(params, lr=float(cfg["lr"]), fused=fused or None)
    # weight EMA (train.ema = decay; 0 = off): a running average of the parameters, the
    # weights the run ends with (model.pt); the raw weights stay in the checkpoints
    ema_decay = float(cfg.get("ema") or 0.0)
    ema = [p.detach().clone() for p in params] if ema_decay > 0 else None
    gens = {"data": torch.Generator().manual_seed(derived_seed(seed, "data")),
            "noise": torch.Generator().manual_seed(derived_seed(seed, "noise"))}
    seed_everything(derived_seed(seed, "global"))

    start, seconds, resumed_from = 0, 0.0, None
    # running sums of the loss terms since the last metrics record: checkpointed, so the
    # records of a resumed run are those of an uninterrupted one
    accum = {"sums": {}, "n": 0}
    for tdir in (out_dir, ckpt.checkpoint_dir(out_dir)):
        remove_stale_temps(tdir)            # left by a killed run
    # Resume from the newest readable checkpoint of this config (a corrupt newest one is
    # skipped with a warning). Checkpoints of another config (and ``replaces``) are the
    # previous run: kept, untouched, until this run has its first checkpoint.
    previous = []        # (path, config hash) of readable checkpoints of another config
    for path in ckpt.candidates(out_dir):
        try:
            payload = ckpt.load_checkpoint(path)
        except DsmError as e:
            print(f"{desc}: warning: {e}; falling back to an older checkpoint", file=sys.stderr)
            continue
        if payload.get("config_sha256") != chash:
            previous.append((path, payload.get("config_sha256")))
            continue
        model.load_state_dict(payload["model"])
        optimizer.load_state_dict(payload["optimizer"])
        if ema is not None:
            if "ema" not in payload:
                raise DsmError(f"{path}: checkpoint has no EMA weights but train.ema is {ema_decay}")
            for e, v in zip(ema, payload["ema"]):
                e.copy_(v)
        ckpt.set_rng_state(payload["rng"], gens)
        start = resumed_from = int(payload["step"])
        seconds = float(payload.get("seconds", 0.0))
        accum = payload.get("log_accum") or accum
        if start < steps:
            print(f"{desc}: resuming from {path} (step {start}/{steps})", file=sys.stderr)
        break
    replaced = [Path(f) for f in replaces if Path(f).exists()]
    stale = bool(previous or replaced)
    if previous and resumed_from is None:
        print(f"{desc}: config changed (hash {str(previous[0][1])[:12]} in {previous[0][0]} != "
              f"{chash[:12]}): starting fresh; the previous run's {len(previous)} checkpoint(s) "
              f"are kept until this run writes its first one", file=sys.stderr)
    metrics_path = out_dir / "metrics.jsonl"
    kept = _read_metrics(metrics_path, start) if not stale or resumed_from is not None else []
    pending: list[str] = []     # metrics records held back while the previous run is kept

    def start_log():
        write_json(out_dir / "config.json", {"config_sha256": chash, **resolved})
        write_text(metrics_path, "".join(line + "\n" for line in kept + pending))
        pending.clear()

    def drop_previous(new=None):
        """This run has its first checkpoint ``new`` (or is finished): the previous run's
        files go (a checkpoint of the same step was replaced by ``new`` already)."""
        nonlocal stale
        for old in [p for p, _ in previous] + replaced:
            if old != new:
                old.unlink(missing_ok=True)
        if ckpt.latest_checkpoint(out_dir) is None:
            (ckpt.checkpoint_dir(out_dir) / ckpt.POINTER).unlink(missing_ok=True)
        stale = False
        start_log()
        print(f"{desc}: removed the previous run of another config "
              f"({len(previous)} checkpoint(s){', ' if replaced else ''}"
              f"{', '.join(str(p) for p in replaced)})", file=sys.stderr)

    def last_good():
        return ("none of this config yet (the previous run is kept)" if stale
                else ckpt.latest_checkpoint(out_dir))

    if not stale:
        start_log()
    result = FitResult(step=start, resumed_from=resumed_from, config_sha256=chash, config=resolved,
                       last=json.loads(kept[-1]) if kept else {}, seconds=seconds)
    if start >= steps:
        if stale:
            drop_previous()
        _use_ema(params, ema)
        return result

    def save(step_done: int) -> Path:
        state = model.state_dict()
        if not (ckpt.all_finite(state) and ckpt.all_finite(optimizer.state_dict()["state"])):
            raise DsmError(f"step {step_done}: non-finite parameters; checkpoint not written "
                           f"(last good: {last_good()})")
        path = ckpt.save_checkpoint(out_dir, step_done, {
            "model": state, "optimizer": optimizer.state_dict(),
            "schedule": {"kind": "step_halving", "lr": float(cfg["lr"]),
                         "halve_every": int(cfg["lr_halve_every"] or 0)},
            "rng": ckpt.rng_state(gens), "config": resolved, "config_sha256": chash,
            "seconds": seconds, "log_accum": {"sums": dict(sums), "n": n_sum},
            **({"ema": [e.detach().clone() for e in ema]} if ema is not None else {}),
        }, keep=keep)
        if stale:
            drop_previous(path)
        return path

    def log(record: dict) -> None:
        line = json.dumps(record)
        if stale:
            pending.append(line)
        else:
            try:
                with open(metrics_path, "a") as f:
                    f.write(line + "\n")
            except OSError as e:
                if is_no_space(e):
                    raise DsmError(f"no space left on the device of {out_dir} (appending to "
                                   f"{metrics_path.name}); checkpoints written so far are intact"
                                   ) from None
                raise

    from tqdm import tqdm

    bar = tqdm(total=steps, initial=start, desc=desc, file=sys.stderr, dynamic_ncols=True,
               disable=None if cfg.get("progress", True) else True, leave=False)
    sums: dict[str, float] = {k: float(v) for k, v in accum["sums"].items()}
    n_sum, images, t_log = int(accum["n"]), 0, time.perf_counter()
    non_blocking = dev.type == "cuda"
    try:
        with _SignalFlag() as flag:
            for step in range(start, steps):
                t0 = time.perf_counter()
                # batch, noise levels and noise: all drawn from checkpointed generators
                lr = lr_at(step, cfg["lr"], cfg["lr_halve_every"])
                for group in optimizer.param_groups:
                    group["lr"] = lr
                x = next_batch(step, gens["data"])
                b = x.shape[0]
                t = sample_noise_levels(b, t_min, t_max, gens["noise"]).to(dev, non_blocking=non_blocking)
                z = torch.randn(x.shape, generator=gens["noise"], dtype=x.dtype)
                x = x.to(dev, non_blocking=non_blocking)
                z = z.to(dev, non_blocking=non_blocking)

                # forward, backward, and the guard before the update
                optimizer.zero_grad(set_to_none=True)
                terms = loss_fn(model, x, t, z)
                terms["loss"].backward()
                grads = [p.grad for p in params if p.grad is not None]
                gn = torch.nn.utils.get_total_norm(grads) if grads else torch.zeros((), device=dev)
                # one device->host transfer per step for all logged scalars and the guard
                host = torch.stack([v.detach().float().reshape(()) for v in terms.values()]
                                   + [gn.detach().float().to(dev)]).tolist()
                values, gnorm = dict(zip(terms, host[:-1])), host[-1]
                if not math.isfinite(values["loss"]):
                    raise DsmError(
                        f"step {step + 1}: loss is {values['loss']} (non-finite; check the data and "
                        f"train.lr); stopped before the update, last good checkpoint: "
                        f"{last_good()}")
                if not math.isfinite(gnorm):
                    raise DsmError(
                        f"step {step + 1}: gradient norm is {gnorm} (loss {values['loss']:.4g}); "
                        f"stopped before the update, last good checkpoint: "
                        f"{last_good()}")
                # update
                optimizer.step()
                if ema is not None:
                    with torch.no_grad():
                        torch._foreach_lerp_(ema, [p.detach() for p in params], 1.0 - ema_decay)
                done = step + 1
                seconds += time.perf_counter() - t0
                images += b
                n_sum += 1
                for k, v in values.items():
                    sums[k] = sums.get(k, 0.0) + v
                bar.update(1)

                # a signal during the last step just lets the run finish (nothing to resume)
                stop = flag.signum is not None and done < steps
                # logging
                if done % log_every == 0 or done == steps:
                    now = time.perf_counter()
                    record = {"step": done, **{k: v / n_sum for k, v in sums.items()},
                              "grad_norm": gnorm, "lr": lr,
                              "images_per_s": images / max(now - t_log, 1e-9) if images else None,
                              "seconds": seconds}
                    log(record)
                    bar.set_postfix(loss=f"{record['loss']:.4g}", refresh=False)
                    result.last = record
                    sums, n_sum, images, t_log = {}, 0, 0, now
                # checkpoint and termination
                if done % checkpoint_every == 0 or done == steps or stop:
                    path = save(done)
                result.step, result.seconds = done, seconds
                if stop:
                    name = signal.Signals(flag.signum).name
                    print(f"{desc}: {name} received: checkpoint {path} written at step {done}/{steps}; "
                          f"rerun the same command to resume", file=sys.stderr)
                    raise SystemExit(128 + flag.signum)
    finally:
        bar.close()
    _use_ema(params, ema)
    return result


def _use_ema(params, ema) -> None:
    """Load the EMA weights into the model (the weights a finished run ends with)."""
    if ema is not None:
        with torch.no_grad():
            for p, e in zip(params, ema):
                p.copy_(e)


