"""Probe images at the two ends of Figure 3's axis: how likely are noise and a flat image?

The full energy model (with its normalization constant, ``dsm normalize``) evaluates, at
t = 0:

* ``noise``: ``figures.fig3.noise_images`` images of i.i.d. uniform pixels in [0, 1]
  (image i from ``numpy.random.default_rng([figures.fig3.noise_seed, i])``, so the first
  images do not depend on how many there are);
* ``constant``: the flat image of value 0.5 everywhere.

Both have the test images' shape (C, H, W). ``dsm probes`` writes their log p (dB/dim),
normalized energy (nats) and 8-bit bits/dim as JSON (``results/<scale>/full/probes.json``);
on a source with an exact density (``field``) also the exact values. The paper's Figure 3
marks the same two images with arrows beside the histogram of test log p.
"""

from __future__ import annotations

import sys

import numpy as np

from dsm.errors import DsmError

CONSTANT = 0.5


def probe_images(shape, noise_images: int, seed: int) -> dict:
    """{"noise": (n, C, H, W), "constant": (1, C, H, W)} float32 images in [0, 1]."""
    shape = tuple(int(s) for s in shape)
    noise = np.stack([np.random.default_rng([int(seed), i]).random(shape, dtype=np.float32)
                      for i in range(int(noise_images))])
    return {"noise": noise, "constant": np.full((1, *shape), CONSTANT, np.float32)}


def probes_from_params(cfg: dict, model, norm, data, out, device=None) -> dict:
    """`dsm probes`: log p of the probe images under the model ``model`` (model.pt) with
    the constant of ``norm`` (JSON); the test part of the store ``data`` gives the shape
    and the exact density. Writes JSON ``out``."""
    from dsm.data.exact import exact_density
    from dsm.data.store import open_store
    from dsm.evaluate import read_norm, evaluate_images
    from dsm.io import code_version, sha256_file, write_json
    from dsm.modelfile import load_energy_model
    from dsm.runtime import stage_threads

    p = ((cfg.get("figures") or {}).get("fig3") or {})
    n_noise, seed = int(p.get("noise_images", 8)), int(p.get("noise_seed", 0))
    stage_threads(cfg, "evaluate")
    net, payload, dev = load_energy_model(model, device if device is not None else cfg.get("device", "auto"))
    model_sha = sha256_file(model)
    info = read_norm(norm, model_sha)
    test = open_store(data, "test")
    if tuple(test.shape) != tuple(payload["shape"]):
        raise DsmError(f"{test.path}: images {tuple(test.shape)} do not match the model's "
                       f"{tuple(payload['shape'])}")
    exact = exact_density(test.meta)
    images = probe_images(test.shape, n_noise, seed)
    result = {"d": int(np.prod(test.shape)), "shape": list(test.shape), "c_nats": float(info["c_nats"]),
              "dataset": test.meta.get("source"), "model": str(model), "model_sha256": model_sha,
              "code_version": code_version(),
              "noise": {"count": n_noise, "seed": seed,
                        "rule": "i.i.d. uniform pixels in [0, 1]; image i from default_rng([seed, i])"},
              "constant": {"value": CONSTANT}}
    for name, x in images.items():
        columns = {"index": np.arange(len(x))}
        (rows,) = list(evaluate_images(net, [(columns, x)], info["c_nats"], exact=exact, device=dev))
        per_image = [{"index": int(i), "logp_db_per_dim": float(lp), "energy_nats": float(e),
                      "nll_bits_per_dim": float(b)}
                     for i, lp, e, b in zip(rows["index"], rows["logp_db_per_dim"], rows["energy_nats"],
                                            rows["nll_bits_per_dim"])]
        if exact is not None:
            for r, ex in zip(per_image, rows["exact_logp_db_per_dim"]):
                r["exact_logp_db_per_dim"] = float(ex)
        block = result[name]
        block["images"] = per_image
        lp = rows["logp_db_per_dim"]
        block["logp_db_per_dim"] = float(lp[0])          # the image Figure 3 shows
        block["mean_logp_db_per_dim"] = float(np.mean(lp))
        block["sd_logp_db_per_dim"] = float(np.std(lp, ddof=1)) if len(lp) > 1 else 0.0
        if exact is not None:
            block["exact_logp_db_per_dim"] = float(rows["exact_logp_db_per_dim"][0])
            block["exact_mean_logp_db_per_dim"] = float(np.mean(rows["exact_logp_db_per_dim"]))
    write_json(out, result)
    ex = (f" (exact {result['noise']['exact_logp_db_per_dim']:.4g} and "
          f"{result['constant']['exact_logp_db_per_dim']:.4g})" if exact is not None else "")
    print(f"probes: log p of uniform noise {result['noise']['logp_db_per_dim']:.4g}, of a constant "
          f"{CONSTANT} image {result['constant']['logp_db_per_dim']:.4g} dB/dim{ex} -> {out}", file=sys.stderr)
    return result
