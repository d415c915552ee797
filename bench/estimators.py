"""Images per second of the one-shot log p against each integrating estimator, side by side.

One run, the same images and batch for every estimator (dsm/estimators.py), with the
settings of a scale's ``estimators`` params (default: the default scale's): wall and CPU
seconds, images/s, network evaluations per image, and how many times faster the one-shot
value is. Each estimator is timed after an untimed warm-up call. On a shared CPU the
CPU-time ratio is the one to quote (other processes inflate wall time, not CPU time).

Without ``--model`` it trains a small model first (the scale's architecture and
recipe, ``--steps`` steps, on a fresh 16x16 ``field`` store in a temporary directory);
speed hardly depends on the weights, but the ODE's number of steps does, so a trained
model is used rather than a random one.

    .venv/bin/python bench/estimators.py                      # small model, CPU, 1 thread
    .venv/bin/python bench/estimators.py --model models/default/full/model.pt \\
        --norm results/default/full/norm.json --data data/default/images
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from dsm.analysis.estimators import estimator_options, gaussian_prior  # noqa: E402
from dsm.config import load_scale  # noqa: E402
from dsm.estimators import ESTIMATORS, ModelEnergy, Prior, estimate  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--params", default=str(Path(__file__).resolve().parent.parent / "params.yaml"))
    p.add_argument("--scale", default="default", help="scale whose model, train and estimators params are used")
    p.add_argument("--model", default=None, help="a trained model.pt (default: train a small one)")
    p.add_argument("--norm", default=None, help="its norm.json (with --model)")
    p.add_argument("--data", default=None, help="its prepared store (with --model)")
    p.add_argument("--steps", type=int, default=400, help="training steps of the small model")
    p.add_argument("--images", type=int, default=32, help="test images (one batch)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--device", default="cpu")
    return p.parse_args(argv)


def small_model(cfg: dict, steps: int, root: Path):
    """Prepare a small field store and train the scale's model on it for ``steps`` steps."""
    from dsm.data.prepare import prepare
    from dsm.evaluate import normalize_from_params
    from dsm.train import FULL, train_from_params

    cfg = {**cfg, "data": {**cfg["data"], "n_train": 4000, "n_test": 512},
           "train": {**cfg["train"], "steps": steps, "lr_halve_every": max(1, steps // 4),
                     "checkpoint_every": steps, "progress": False},
           "evaluate": {**cfg["evaluate"], "n_norm": 512}}
    t0 = time.perf_counter()
    prepare(cfg["data"], root / "images")
    model = train_from_params(cfg, data=root / "images", splits=None, n=None, split=FULL,
                              out=root / "full", seed=0, device="cpu")
    normalize_from_params(cfg, model=model, data=root / "images", out=root / "norm.json", device="cpu")
    print(f"# trained a small model: {steps} steps in {time.perf_counter() - t0:.1f} s wall", flush=True)
    return model, root / "norm.json", root / "images"


def main(argv=None):
    import json

    from dsm.data.store import open_store
    from dsm.modelfile import load_energy_model

    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)
    cfg = load_scale(args.params, args.scale)
    ecfg = cfg["estimators"]
    with tempfile.TemporaryDirectory() as tmp:
        if args.model is None:
            model_path, norm_path, data = small_model(cfg, args.steps, Path(tmp))
        else:
            if args.norm is None or args.data is None:
                sys.exit("--model needs --norm and --data")
            model_path, norm_path, data = Path(args.model), Path(args.norm), Path(args.data)
        net, payload, dev = load_energy_model(model_path, args.device)
        c = json.loads(Path(norm_path).read_text())["c_nats"]
        tcfg = payload["config"]["train"]
        field = ModelEnergy(net, c, float(tcfg["t_max"]), float(tcfg["t_min"]), dev)
        test = open_store(Path(data) / "test")
        n = min(args.images, len(test))
        x = torch.from_numpy(test.images(np.arange(n)))
        prior = (gaussian_prior(open_store(Path(data) / "train"), ecfg["n_prior"])
                 if ecfg["prior"] == "gaussian" else Prior("model"))
        d = int(np.prod(payload["shape"]))
        print(f"# {platform.node()} {platform.machine()} {os.cpu_count()} cores, {platform.processor() or ''} "
              f"torch {torch.__version__}, {args.threads} thread(s), device {dev}; load average before "
              f"{os.getloadavg()[0]:.2f}")
        print(f"# model {model_path}: shape {payload['shape']} (d = {d}), "
              f"{sum(p.numel() for p in net.parameters()):,} parameters; {n} test images in one batch; "
              f"estimator settings: scales.{args.scale}.estimators")
        rows = []
        for name in ESTIMATORS:
            opts = estimator_options(ecfg, name, exact=False)
            estimate(name, field, x[:2], prior=prior, **opts)            # warm-up, untimed
            runs = []
            for _ in range(21 if name == "one-shot" else 1):            # one-shot: median of 21
                c0 = time.process_time()
                est = estimate(name, field, x, prior=prior, **opts)
                runs.append((est.seconds, time.process_time() - c0, est))
            wall, cpu = float(np.median([r[0] for r in runs])), float(np.median([r[1] for r in runs]))
            est = runs[0][2]
            est.seconds = wall
            rows.append((name, est, cpu))
        base_wall, base_cpu = rows[0][1].seconds, rows[0][2]
        print(f"{'estimator':10s} {'NFE/img':>9s} {'wall s':>9s} {'CPU s':>9s} {'img/s (wall)':>13s} "
              f"{'img/s (CPU)':>12s} {'one-shot faster (wall)':>23s} {'(CPU)':>8s}  settings")
        for name, est, cpu in rows:
            opts = " ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}"
                            for k, v in est.options.items() if k != "nfev")
            print(f"{name:10s} {est.nfe:9.0f} {est.seconds:9.3f} {cpu:9.3f} {n / est.seconds:13.1f} "
                  f"{n / cpu:12.1f} {est.seconds / base_wall:23.0f} {cpu / base_cpu:8.0f}  {opts}")
        print(f"# load average after {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
