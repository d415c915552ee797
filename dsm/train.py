"""The training loop: Adam with a step-halving learning rate, exact resume, signals, NaN guard.

Two layers:

* :func:`fit` trains any model (an ``EnergyModel``, a ``ScoreModel``, the Figure-1 MLP) on
  batches from any ``next_batch(step, generator)``; it owns the optimizer, the seeds, the
  checkpoints, the metrics log and the progress bar.
* :func:`train_from_params` is the image pipeline's stage: it reads a prepared store and a
  split, samples batches (cycling small sets, optional horizontal flips), builds the model
  from ``model:`` and writes ``OUT/model.pt``.

Exact resume: every source of randomness is a seeded generator whose state is checkpointed
(the data generator handed to ``next_batch``, the noise generator that draws t and z, and
the global torch / numpy / python states); the learning rate is a function of the step; on
CPU ``torch.use_deterministic_algorithms`` is on. A run killed by SIGTERM and rerun ends
with bitwise the same parameters as an uninterrupted run (tests/test_train.py).
"""

from __future__ import annotations

import json
import math
import os
import random
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping

import numpy as np
import torch

from dsm import checkpoint as ckpt
from dsm.errors import DsmError
from dsm.io import atomic_path, code_version, sha256_file, sha256_json, write_json, write_text

REQUIRED_KEYS = ("steps", "batch_size", "lr", "lr_halve_every", "t_min", "t_max", "seed")
# Bookkeeping keys: they do not change the trained parameters, so they are left out of the
# config hash (changing how often to log or checkpoint must not throw away a resumable run).
UNHASHED_KEYS = ("log_every", "checkpoint_every", "keep_checkpoints", "threads", "device",
                 "progress")
MODEL_FORMAT = "dsm-model/1"
PREEMPT_SIGNALS = ("SIGTERM", "SIGUSR1")


# --- small helpers ---------------------------------------------------------------------

def resolve_device(spec=None) -> torch.device:
    """'auto' (or None) -> cuda if available else cpu; 'cpu', 'cuda', 'cuda:N' as given."""
    if isinstance(spec, torch.device):
        return spec
    spec = "auto" if spec in (None, "") else str(spec)
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(spec)
    except RuntimeError:
        raise DsmError(f"device: unknown value {spec!r} (expected auto, cpu, cuda or cuda:N)") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise DsmError(f"device: {spec!r} requested but CUDA is not available (use auto or cpu)")
    if dev.type not in ("cpu", "cuda"):
        raise DsmError(f"device: unsupported device type {dev.type!r} (expected auto, cpu, cuda)")
    return dev


def configure_threads(threads=None) -> int:
    """Set torch's intra-op threads from ``threads``, else $DSM_THREADS, else $OMP_NUM_THREADS.

    Snakemake passes its ``threads:`` through the rule's environment; the same count must
    be used when resuming for bitwise-identical CPU results.
    """
    for value, where in ((threads, "train.threads"), (os.environ.get("DSM_THREADS"), "DSM_THREADS"),
                         (os.environ.get("OMP_NUM_THREADS"), "OMP_NUM_THREADS")):
        if value in (None, ""):
            continue
        try:
            n = int(value)
        except (TypeError, ValueError):
            raise DsmError(f"{where}: expected a positive integer, got {value!r}") from None
        if n < 1:
            raise DsmError(f"{where}: expected a positive integer, got {value!r}")
        if torch.get_num_threads() != n:
            torch.set_num_threads(n)
        return n
    return torch.get_num_threads()


def seed_everything(seed: int) -> None:
    """Seed the global torch, numpy and python RNGs (model initialization uses torch's)."""
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)


def derived_seed(seed: int, *stream) -> int:
    """An independent 63-bit seed for a named stream of a run (data, noise, epoch k)."""
    words = [int(seed)] + [int(s) if isinstance(s, int) else int.from_bytes(str(s).encode()[:8], "little")
                           for s in stream]
    return int(np.random.SeedSequence(words).generate_state(1, np.uint64)[0] >> np.uint64(1))


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


def _set_determinism(device: torch.device, enabled: bool) -> tuple[bool, bool]:
    """Turn on deterministic algorithms; return the previous (enabled, warn_only) to restore."""
    previous = (torch.are_deterministic_algorithms_enabled(),
                torch.is_deterministic_algorithms_warn_only_enabled())
    if not enabled:
        return previous
    if device.type == "cuda":
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True
    torch.use_deterministic_algorithms(True, warn_only=True)
    return previous


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
        desc: str = "train") -> FitResult:
    """Train ``model`` in place for ``cfg['steps']`` Adam steps, resumably. See docs/DESIGN.md.

    next_batch(step, generator) -> x (B, ...): the clean batch of 0-based step ``step``;
        all its randomness must come from ``generator`` (a seeded CPU generator whose state
        is checkpointed), so that a resumed run sees the same batches.
    cfg: steps, batch_size, lr, lr_halve_every (0/None: constant), t_min, t_max (noise
        variances), seed; optional checkpoint_every, log_every, flush_denormal, loss
        (auto|dual|dsm), keep_checkpoints, threads, deterministic, device.
    loss_fn(model, x, t, z) -> dict(loss, ...): overrides cfg['loss'].
    identity: extra plain data (model config, data hashes) that must match to resume.
    """
    cfg = dict(cfg)
    for key in REQUIRED_KEYS:
        if key not in cfg:
            raise DsmError(f"params: key 'train.{key}' missing")
    steps, seed = int(cfg["steps"]), int(cfg["seed"])
    t_min, t_max = float(cfg["t_min"]), float(cfg["t_max"])
    if steps < 0:
        raise DsmError(f"train.steps: expected >= 0, got {steps}")
    if not 0 < t_min <= t_max:
        raise DsmError(f"train.t_min/t_max: need 0 < t_min <= t_max, got {t_min}, {t_max}")

    dev = resolve_device(device if device is not None else cfg.get("device", "auto"))
    configure_threads(cfg.get("threads"))
    torch.set_flush_denormal(bool(cfg.get("flush_denormal", True)))
    loss_fn = loss_fn or _default_loss(cfg.get("loss", "auto"), model)
    previous = _set_determinism(dev, bool(cfg.get("deterministic", dev.type == "cpu")))
    try:
        return _fit(model, next_batch, cfg, out_dir, dev, loss_fn, identity, desc)
    finally:
        torch.use_deterministic_algorithms(previous[0], warn_only=previous[1])


def _fit(model, next_batch, cfg, out_dir, dev, loss_fn, identity, desc) -> FitResult:
    from dsm.objectives import sample_noise_levels

    steps, seed = int(cfg["steps"]), int(cfg["seed"])
    t_min, t_max = float(cfg["t_min"]), float(cfg["t_max"])
    log_every = max(1, int(cfg.get("log_every") or 1))
    checkpoint_every = int(cfg.get("checkpoint_every") or 0) or steps or 1
    keep = int(cfg.get("keep_checkpoints", 3))

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    resolved, chash = config_hash(cfg, identity)
    write_json(out_dir / "config.json", {"config_sha256": chash, **resolved})

    model.to(dev)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    # fused: one kernel for the whole update (CPU and CUDA); on the small CPU models of the
    # default scale it cuts the optimizer step from ~3.6 to ~0.85 ms of a ~30 ms step.
    fused = dev.type in ("cpu", "cuda") and all(p.dtype.is_floating_point for p in params)
    optimizer = torch.optim.Adam(params, lr=float(cfg["lr"]), fused=fused or None)
    gens = {"data": torch.Generator().manual_seed(derived_seed(seed, "data")),
            "noise": torch.Generator().manual_seed(derived_seed(seed, "noise"))}
    seed_everything(derived_seed(seed, "global"))

    start, seconds, resumed_from = 0, 0.0, None
    # running sums of the loss terms since the last metrics record: checkpointed, so the
    # records of a resumed run are those of an uninterrupted one
    accum = {"sums": {}, "n": 0}
    latest = ckpt.latest_checkpoint(out_dir)
    if latest is not None:
        payload = ckpt.load_checkpoint(latest)
        if payload.get("config_sha256") == chash:
            model.load_state_dict(payload["model"])
            optimizer.load_state_dict(payload["optimizer"])
            ckpt.set_rng_state(payload["rng"], gens)
            start = resumed_from = int(payload["step"])
            seconds = float(payload.get("seconds", 0.0))
            accum = payload.get("log_accum") or accum
            if start < steps:
                print(f"{desc}: resuming from {latest} (step {start}/{steps})", file=sys.stderr)
        else:
            n = ckpt.remove_checkpoints(out_dir)
            print(f"{desc}: config changed (hash {str(payload.get('config_sha256'))[:12]} in "
                  f"{latest} != {chash[:12]}): removed {n} stale checkpoint(s), starting fresh",
                  file=sys.stderr)
    metrics_path = out_dir / "metrics.jsonl"
    kept = _read_metrics(metrics_path, start)   # drop records past the resumed step
    write_text(metrics_path, "".join(line + "\n" for line in kept))
    result = FitResult(step=start, resumed_from=resumed_from, config_sha256=chash, config=resolved,
                       last=json.loads(kept[-1]) if kept else {}, seconds=seconds)
    if start >= steps:
        return result

    def save(step_done: int) -> Path:
        state = model.state_dict()
        if not (ckpt.all_finite(state) and ckpt.all_finite(optimizer.state_dict()["state"])):
            raise DsmError(f"step {step_done}: non-finite parameters; checkpoint not written "
                           f"(last good: {ckpt.latest_checkpoint(out_dir)})")
        return ckpt.save_checkpoint(out_dir, step_done, {
            "model": state, "optimizer": optimizer.state_dict(),
            "schedule": {"kind": "step_halving", "lr": float(cfg["lr"]),
                         "halve_every": int(cfg["lr_halve_every"] or 0)},
            "rng": ckpt.rng_state(gens), "config": resolved, "config_sha256": chash,
            "seconds": seconds, "log_accum": {"sums": dict(sums), "n": n_sum},
        }, keep=keep)

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
                lr = lr_at(step, cfg["lr"], cfg["lr_halve_every"])
                for group in optimizer.param_groups:
                    group["lr"] = lr
                x = next_batch(step, gens["data"])
                b = x.shape[0]
                t = sample_noise_levels(b, t_min, t_max, gens["noise"]).to(dev, non_blocking=non_blocking)
                z = torch.randn(x.shape, generator=gens["noise"], dtype=x.dtype)
                x = x.to(dev, non_blocking=non_blocking)
                z = z.to(dev, non_blocking=non_blocking)

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
                        f"{ckpt.latest_checkpoint(out_dir)}")
                if not math.isfinite(gnorm):
                    raise DsmError(
                        f"step {step + 1}: gradient norm is {gnorm} (loss {values['loss']:.4g}); "
                        f"stopped before the update, last good checkpoint: "
                        f"{ckpt.latest_checkpoint(out_dir)}")
                optimizer.step()
                done = step + 1
                seconds += time.perf_counter() - t0
                images += b
                n_sum += 1
                for k, v in values.items():
                    sums[k] = sums.get(k, 0.0) + v
                bar.update(1)

                # a signal during the last step just lets the run finish (nothing to resume)
                stop = flag.signum is not None and done < steps
                if done % log_every == 0 or done == steps:
                    now = time.perf_counter()
                    record = {"step": done, **{k: v / n_sum for k, v in sums.items()},
                              "grad_norm": gnorm, "lr": lr,
                              "images_per_s": images / max(now - t_log, 1e-9) if images else None,
                              "seconds": seconds}
                    with open(metrics_path, "a") as f:
                        f.write(json.dumps(record) + "\n")
                    bar.set_postfix(loss=f"{record['loss']:.4g}", refresh=False)
                    result.last = record
                    sums, n_sum, images, t_log = {}, 0, 0, now
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
    return result


# --- the image pipeline stage ------------------------------------------------------------

def _store_part(data, part: str):
    from dsm.data.store import open_store

    data = Path(data)
    return open_store(data / part) if (data / part).exists() else open_store(data)


def _images_digest(store, idx: np.ndarray) -> str:
    """SHA-256 over the content hashes of the selected images, in order."""
    index = store.index
    if "content_hash" not in index:
        raise DsmError(f"{store.path}/index.parquet: column 'content_hash' missing")
    hashes = index.set_index("image_index").loc[idx, "content_hash"].astype(str).tolist()
    return sha256_json(hashes)


class ImageBatches:
    """``next_batch`` for a training set of ``n`` store images.

    The set is visited epoch by epoch in a fresh permutation per epoch (seeded by
    (seed, epoch), a pure function of the step, so nothing but the step is needed to
    resume); sets smaller than the batch are cycled. Horizontal flips, if on, draw from
    the trainer's data generator.
    """

    def __init__(self, store, idx: np.ndarray, batch_size: int, seed: int, hflip: bool,
                 device: torch.device, cache_bytes: int = 1 << 30):
        self.store, self.idx = store, np.asarray(idx, dtype=np.int64)
        self.n, self.batch_size, self.seed, self.hflip = len(self.idx), int(batch_size), seed, hflip
        self.device = device
        self._perms: dict[int, np.ndarray] = {}
        self.cache = None
        if self.n * store.d * 4 <= cache_bytes:
            cache = torch.from_numpy(store.images(self.idx))
            self.cache = cache.to(device) if device.type == "cuda" else cache

    def _perm(self, epoch: int) -> np.ndarray:
        if epoch not in self._perms:
            if len(self._perms) > 64:
                self._perms.clear()
            rng = np.random.default_rng(derived_seed(self.seed, "epoch", epoch))
            self._perms[epoch] = rng.permutation(self.n)
        return self._perms[epoch]

    def __call__(self, step: int, generator: torch.Generator) -> torch.Tensor:
        pos = np.arange(step * self.batch_size, (step + 1) * self.batch_size, dtype=np.int64)
        epochs, within = pos // self.n, pos % self.n
        rows = np.empty_like(pos)
        for e in np.unique(epochs):
            sel = epochs == e
            rows[sel] = self._perm(int(e))[within[sel]]
        if self.cache is not None:
            x = self.cache[torch.from_numpy(rows).to(self.cache.device)]
        else:
            x = torch.from_numpy(self.store.images(self.idx[rows]))
            if self.device.type == "cuda":
                x = x.pin_memory()
        if self.hflip:
            flip = (torch.rand(len(rows), generator=generator) < 0.5).to(x.device)
            x = torch.where(flip[:, None, None, None], x.flip(-1), x)
        return x


def _model_identity(cfg: dict, shape, store, idx, n: int, split: str) -> dict:
    return {"model": cfg["model"], "shape": list(shape),
            "data": {"N": int(n), "split": split, "train_images_sha256": _images_digest(store, idx)}}


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


def resolve_model_cfg(model_cfg: Mapping, train_cfg: Mapping) -> dict:
    """The model section as trained: ``log_t_floor: null`` (or absent) of a log embedding
    becomes ``train.t_min``, so that t = 0 (the one-shot log p) maps to the edge of the
    trained noise range. The resolved value is stored in model.pt and hashed."""
    m = json.loads(json.dumps(dict(model_cfg)))
    if m.get("embedding", "linear") == "log" and m.get("log_t_floor") is None:
        m["log_t_floor"] = float(train_cfg["t_min"])
    return m


def train_from_params(cfg: dict, data, splits, n: int, split: str, out, device=None) -> Path:
    """Train one model on split ``split`` (A|B) of size ``n``; write ``OUT/model.pt``.

    cfg: one resolved scale section (keys model, train, device). data: prepared store
    directory (its ``train`` part is used). Rerunning resumes; a finished run with the same
    config hash does nothing. Returns the path of model.pt.
    """
    from dsm.data.splits import read_split
    from dsm.nets import build_model

    for key in ("model", "train"):
        if not isinstance(cfg.get(key), dict):
            raise DsmError(f"params: section '{key}' missing")
    tcfg = dict(cfg["train"])
    cfg = {**cfg, "model": resolve_model_cfg(cfg["model"], tcfg)}
    out = Path(out)
    model_path = out / "model.pt"

    store = _store_part(data, "train")
    idx = np.asarray(read_split(splits, n, split), dtype=np.int64)
    if len(idx) == 0:
        raise DsmError(f"{splits}: split {split} of N={n} is empty")
    shape = tuple(store.shape)
    if shape[1] != shape[2]:
        raise DsmError(f"{store.path}: images are {shape[1]}x{shape[2]}; only square images are supported")
    identity = _model_identity(cfg, shape, store, idx, n, split)
    resolved, chash = config_hash(tcfg, identity)

    if model_path.is_file():
        try:
            done = torch.load(model_path, map_location="cpu", weights_only=True)
        except Exception:  # noqa: BLE001 - unreadable: retrain
            done = {}
        if isinstance(done, dict) and done.get("config_sha256") == chash:
            print(f"train: {model_path} is up to date (config {chash[:12]}); nothing to do",
                  file=sys.stderr)
            return model_path
        print(f"train: {model_path} was trained with another config; retraining", file=sys.stderr)
        model_path.unlink()

    dev = resolve_device(device if device is not None else cfg.get("device", tcfg.get("device", "auto")))
    seed_everything(int(tcfg["seed"]))  # model initialization
    model = build_model(cfg["model"], channels=shape[0], image_size=shape[1])
    batches = ImageBatches(store, idx, tcfg["batch_size"], int(tcfg["seed"]), bool(tcfg.get("hflip", False)), dev)
    result = fit(model, batches, tcfg, out, device=dev, identity=identity,
                 desc=f"train N={n} {split}")

    payload = {
        "format": MODEL_FORMAT,
        "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "model_cfg": json.loads(json.dumps(cfg["model"])),
        "kind": cfg["model"].get("kind", "energy"),
        "shape": list(shape),
        "config": resolved,
        "config_sha256": chash,
        "provenance": {
            "code_version": code_version(),
            "params_sha256": sha256_json(cfg),
            "train_images_sha256": identity["data"]["train_images_sha256"],
            "splits_sha256": sha256_file(splits),
            "data": str(data), "splits": str(splits), "N": int(n), "split": split,
            "steps": result.step, "seconds": result.seconds, "device": str(dev),
            "torch": str(torch.__version__), "last_metrics": result.last,
        },
    }
    with atomic_path(model_path) as tmp:
        torch.save(payload, tmp)
    return model_path
