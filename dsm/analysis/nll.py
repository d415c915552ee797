"""Test-set negative log-likelihood with its conventions explicit (Table 2; docs/theory.md#units).

From the full model's per-image table of the whole test set
(``results/<scale>/full/logp-test.parquet``: ``energy_nats`` = -log p(x) in nats, ``d``),
each quantity is a mean over the test images with its standard error (sd / sqrt(n)):

* ``model_8bit_shift`` — **continuous density + 8-bit shift**: ``8 + (-log p(x)) / (d ln 2)``
  bits/dim, pixels in [0, 1]. It reads the density as constant within each 8-bit bin of
  width 1/256, so P(bin) ~ p(x) / 256^d. This is the paper's convention ([paper] 3.36
  bits/dim, color ImageNet64).
* ``model_dequantized`` — **uniform dequantization**, for 8-bit sources only:
  ``8 + E_u[-log p(x + u)] / (d ln 2)``, ``u ~ U[0, 1/256)^d`` (``table2.dequantize_draws``
  draws per image, image i's draw k from ``numpy.random.default_rng([table2.seed, i, k])``).
  The bins ``[x, x + 1/256)`` of distinct 8-bit values are disjoint, so
  ``P(x) = ∫_bin p`` is a (sub-)probability and, by Jensen's inequality,
  ``-log2 P(x) / d <= 8 + E_u[-log p(x + u)] / (d ln 2)``: an upper bound on a true discrete
  NLL (with one draw: an unbiased estimate of the bound). A continuous source (``field``,
  float pixels) has no bins: the row says it does not apply.
* On a source with an exact density: ``exact_test`` — the exact -log p of the same test
  images in the same convention (their mean estimates the entropy H(p)); ``exact_entropy``
  — the source's entropy from its density (``FieldDensity.entropy``: exact Gaussian parts
  plus a Monte-Carlo term, whose standard error is given); ``model_excess`` — the per-image
  difference model - exact, averaged (paired standard error). The 8 cancels: it is in
  bits/dim of -log p, and its expectation is KL(p || p_model) / (d ln 2) >= 0.

* With the peers (:mod:`dsm.analysis.peers`: a full-covariance Gaussian mixture and a single
  Gaussian fit on the training images, exact log p of the same test images): ``gmm`` and
  ``gaussian`` — their NLL in the 8-bit-shift convention; ``model_minus_gmm`` and
  ``model_minus_gaussian`` — the per-image difference model - peer, averaged with its paired
  standard error (no shift; negative: the model gives the test images more probability);
  on an exact source also ``gmm_excess`` and ``gaussian_excess`` (peer - exact, >= 0 in
  expectation).

Rows: dicts with key, quantity, convention, nats_per_dim (-log p / d, no shift),
se_nats_per_dim, bits_per_dim, se_bits_per_dim, n_images, applies, note, and the costs of
a model's row: n_parameters, fit_cpu_seconds, eval_cpu_seconds (None where unknown).
"""

from __future__ import annotations

import math

import numpy as np

from dsm.errors import DsmError

LN2 = math.log(2.0)
SHIFT = 8.0     # log2(256): bits of one 8-bit bin of width 1/256 on [0, 1]
PAPER_BITS = 3.36  # [paper] color ImageNet64 test set, continuous density + 8-bit shift


def mean_se(v) -> tuple[float, float]:
    """Mean and standard error of the mean (sd with ddof 1 over sqrt(n); 0 for n = 1)."""
    v = np.asarray(v, np.float64)
    if not len(v):
        raise DsmError("no values to average")
    se = float(np.std(v, ddof=1) / math.sqrt(len(v))) if len(v) > 1 else 0.0
    return float(np.mean(v)), se


def is_8bit(meta: dict) -> bool:
    """Whether a store holds 8-bit pixels (uint8, scaled by 1/255 on read)."""
    return str(meta.get("dtype")) == "uint8"


def dequantization_noise(seed: int, image_index: int, draw: int, shape) -> np.ndarray:
    """u ~ U[0, 1/256)^shape for one image and draw (float32), independent of batching."""
    return (np.random.default_rng([int(seed), int(image_index), int(draw)])
            .random(tuple(shape), dtype=np.float64) / 256.0).astype(np.float32)


def dequantized_energy(model, store, image_index, c_nats: float, draws: int, seed: int, *,
                       batch_size: int = 256, device=None) -> np.ndarray:
    """Per-image mean over ``draws`` of the normalized energy -log p(x + u) (nats), (n,),
    for the store's images ``image_index`` (x in [0, 1], u ~ U[0, 1/256)^d)."""
    import torch

    from dsm.evaluate import energy
    from dsm.normalization import device_of

    dev = device_of(model) if device is None else torch.device(device)
    idx = np.asarray(image_index, np.int64)
    out = np.zeros(len(idx))
    for a in range(0, len(idx), batch_size):
        sel = idx[a:a + batch_size]
        x = store.images(sel)
        for k in range(int(draws)):
            u = np.stack([dequantization_noise(seed, i, k, x.shape[1:]) for i in sel])
            e = energy(model, torch.from_numpy(x + u).to(dev), 0.0).double().cpu().numpy()
            if not np.isfinite(e).all():
                raise DsmError(f"dequantization: non-finite model energy for test image "
                               f"{int(sel[int(np.flatnonzero(~np.isfinite(e))[0])])}")
            out[a:a + len(sel)] += e + float(c_nats)
    return out / int(draws)


def source_entropy(meta: dict) -> tuple[float, float] | None:
    """(H nats, standard error) of an exact source's density at t = 0, else None."""
    exact = meta.get("exact") or {}
    if "entropy_nats" in exact:
        return float(exact["entropy_nats"]), float(exact.get("entropy_se", 0.0))
    from dsm.data.exact import exact_density

    dens = exact_density(meta)
    if dens is None or not hasattr(dens, "entropy"):
        return None
    h = dens.entropy(0.0)
    return (float(h[0]), float(h[1])) if isinstance(h, tuple) else (float(h), 0.0)


COSTS = ("n_parameters", "fit_cpu_seconds", "eval_cpu_seconds")
PEER_NAMES = {"gmm": "Gaussian mixture", "gaussian": "single Gaussian"}


def _row(key, quantity, convention, nats, se_nats, n, shift=SHIFT, note="", costs=None):
    applies = nats is not None
    return {"key": key, "quantity": quantity, "convention": convention,
            "bits_per_dim": shift + nats / LN2 if applies else None,
            "se_bits_per_dim": se_nats / LN2 if applies else None,
            "nats_per_dim": nats, "se_nats_per_dim": se_nats if applies else None,
            "n_images": n, "applies": applies, "note": note,
            **{k: (costs or {}).get(k) for k in COSTS}}


def nll_rows(table, meta: dict, dequantized=None, draws: int = 1, peers=None, peers_info=None,
             model_costs=None) -> list[dict]:
    """Table 2's rows from the per-image table (columns energy_nats, d, and on exact sources
    exact_energy_nats), the store's ``meta`` and, for 8-bit sources, the per-image
    dequantized energies (nats, same order as ``table``); with ``peers`` (the peers stage's
    per-image table: image_index, model, energy_nats) also the peers' rows (their costs
    from ``peers_info``); ``model_costs`` the model's (keys of :data:`COSTS`)."""
    for col in ("energy_nats", "d"):
        if col not in table.columns:
            raise DsmError(f"per-image table: column {col!r} missing")
    if table["d"].nunique() != 1:
        raise DsmError(f"per-image table: mixed dimensions d = {sorted(table['d'].unique())}")
    d, n = int(table["d"].iloc[0]), len(table)
    e = table["energy_nats"].to_numpy(np.float64)
    if not np.isfinite(e).all():
        raise DsmError("per-image table: non-finite energy_nats")
    source = meta.get("source", "?")
    shift_conv = "continuous density + 8-bit shift: 8 + (-log p(x)) / (d ln 2), pixels in [0, 1]"
    m, se = mean_se(e / d)
    rows = [_row("model_8bit_shift", "model NLL, test set", shift_conv, m, se, n, costs=model_costs)]
    deq_conv = (f"uniform dequantization: 8 + E_u[-log p(x + u)] / (d ln 2), u ~ U[0, 1/256)^d, "
                f"{draws} draw(s) per image; an upper bound on the NLL of the disjoint bins [x, x + 1/256)")
    if is_8bit(meta):
        if dequantized is None:
            raise DsmError(f"{source}: 8-bit source but no dequantized energies given")
        m, se = mean_se(np.asarray(dequantized, np.float64) / d)
        rows.append(_row("model_dequantized", "model NLL, test set, dequantized", deq_conv, m, se, n))
    else:
        rows.append(_row("model_dequantized", "model NLL, test set, dequantized", deq_conv, None, None, n,
                         note=f"does not apply: {source} is a continuous source (float pixels, no 8-bit bins)"))
    ex = table["exact_energy_nats"] if "exact_energy_nats" in table.columns else None
    if ex is not None and ex.notna().all():
        ex = ex.to_numpy(np.float64)
        m, se = mean_se(ex / d)
        rows.append(_row("exact_test", "exact NLL, test set (mean exact -log p)", shift_conv, m, se, n,
                         note="the exact density of the source at the same images"))
        h = source_entropy(meta)
        if h is not None:
            rows.append(_row("exact_entropy", f"exact entropy of the source ({source} density)",
                             "8 + H / (d ln 2), H = E[-log p] of the source", h[0] / d, h[1] / d, None,
                             note="Gaussian parts exact, the mixture term by Monte Carlo (its standard error)"))
        m, se = mean_se((e - ex) / d)
        rows.append(_row("model_excess", "model excess: model - exact, per image",
                         "difference of -log p / (d ln 2), no shift; expectation KL(p || p_model) / (d ln 2)",
                         m, se, n, shift=0.0, note="paired over the same test images"))
    if peers is not None:
        rows += peer_rows(table, peers, peers_info or {}, shift_conv)
    return rows


def _aligned(table, peers, name: str) -> np.ndarray:
    """The peer's energies (nats) in the order of ``table``'s images (by image_index)."""
    if "image_index" not in table.columns:
        raise DsmError("per-image table: column 'image_index' missing (needed to pair with the peers)")
    sub = peers[peers["model"] == name].set_index("image_index")["energy_nats"]
    if not sub.index.is_unique:
        raise DsmError(f"peers table: the {name} peer has duplicate image_index values")
    missing = np.setdiff1d(table["image_index"].to_numpy(), sub.index.to_numpy())
    if missing.size or len(sub) != len(table):
        raise DsmError(f"peers table: the {name} peer scored other test images than the model "
                       f"({len(sub)} rows for {len(table)} images; e.g. image {missing[:1].tolist()} missing)")
    out = sub.loc[table["image_index"].to_numpy()].to_numpy(np.float64)
    if not np.isfinite(out).all():
        raise DsmError(f"peers table: non-finite energy_nats of the {name} peer")
    return out


def peer_rows(table, peers, info: dict, shift_conv: str) -> list[dict]:
    """The peers' rows: NLL, model - peer (paired) and, on exact sources, peer - exact."""
    d, n = int(table["d"].iloc[0]), len(table)
    if "d" in peers.columns and set(peers["d"].unique()) != {d}:
        raise DsmError(f"peers table: dimension {sorted(peers['d'].unique())} differs from the model's d = {d}")
    e = table["energy_nats"].to_numpy(np.float64)
    ex = table["exact_energy_nats"] if "exact_energy_nats" in table.columns else None
    exact = ex is not None and ex.notna().all()
    rows = []
    for name in [p for p in PEER_NAMES if p in set(peers["model"])]:
        pe = _aligned(table, peers, name)
        meta = info.get(name) or {}
        what = PEER_NAMES[name]
        if name == "gmm" and "n_components" in meta:
            what += f" ({meta['n_components']} components, full covariance)"
        fit = (f"fit on {info['n_fit']} training images" if "n_fit" in info else "fit on training images")
        m, se = mean_se(pe / d)
        rows.append(_row(name, f"{what} NLL, test set", shift_conv, m, se, n,
                         note=f"exact log p; {fit}", costs=meta))
        m, se = mean_se((e - pe) / d)
        rows.append(_row(f"model_minus_{name}", f"model - {PEER_NAMES[name]}, per image",
                         "difference of -log p / (d ln 2), no shift; negative: the model is better",
                         m, se, n, shift=0.0, note="paired over the same test images"))
        if exact:
            m, se = mean_se((pe - ex.to_numpy(np.float64)) / d)
            rows.append(_row(f"{name}_excess", f"{PEER_NAMES[name]} excess: peer - exact, per image",
                             "difference of -log p / (d ln 2), no shift; expectation KL(p || p_peer) / (d ln 2)",
                             m, se, n, shift=0.0, note="paired over the same test images"))
    return rows
