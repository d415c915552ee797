"""The bias budget figure (figures/bias.pdf): where a model's log p error comes from.

Plotting only; reads the per-t table and totals of :mod:`dsm.analysis.bias` (``dsm bias``).
Three panels against the noise variance t (log axis), for the full model against the
exact density of the `field` source:

1. the time-score error (t/d) E[∂_t U_θ - ∂_t U] and the space-score term
   (√t/2d) E<∇U_θ - ∇U, z>, with ±2 SE bands;
2. their running integrals from T (the normalization level) down to t, in dB/dim of log p:
   the log p offset accumulated by t; at the left edge, the score part of the bias; the
   normalization's own error and the directly measured error are marked;
3. the denoiser's MSE per pixel: the model's excess over the exact (MMSE) denoiser, and
   the MMSE itself;
4. κ(t) (dsm.analysis.timescore): the share of the y-independent part of
   dE[log p(y, t)]/d ln t that the model carries (1 = as the exact density), ±2 SE, the
   band [0.9, 1.1], the checked range of t shaded.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from dsm.errors import DsmError
from dsm.figures.output import save_figure
from dsm.io import read_json


def plot_bias(df: pd.DataFrame, totals: dict, path, title: str = "") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = df["t"].to_numpy()
    kappa = pd.DataFrame(totals.get("kappa") or [])
    ncols = 4 if len(kappa) else 3
    fig, axes = plt.subplots(1, ncols, figsize=(3.7 * ncols, 3.4), constrained_layout=True)
    ax = axes[0]
    for col, label, color in (("ts_err", "time score (t/d)(∂tUθ − ∂tU)", "tab:red"),
                              ("ss_err", "space score (√t/2d)⟨∇Uθ − ∇U, z⟩", "tab:blue")):
        y, se = df[col].to_numpy(), df[f"{col}_se"].to_numpy()
        ax.plot(t, y, color=color, lw=1.2, label=label)
        ax.fill_between(t, y - 2 * se, y + 2 * se, color=color, alpha=0.2, lw=0)
    ax.axhline(0, color="k", lw=0.5)
    ax.set_xscale("log")
    ax.set_xlabel("noise variance t")
    ax.set_ylabel("error per unit ln t (nats/dim)")
    ax.set_title("score errors along the noise levels", fontsize=9)
    ax.legend(fontsize=7)

    ax = axes[1]
    for col, label, color in (("cum_time_db", "time score", "tab:red"),
                              ("cum_space_db", "space score", "tab:blue"),
                              ("cum_total_db", "both", "k")):
        ax.plot(t, df[col], color=color, lw=1.2, label=label)
    se = df["cum_total_se_db"].to_numpy()
    ax.fill_between(t, df["cum_total_db"] - 2 * se, df["cum_total_db"] + 2 * se, color="k", alpha=0.15, lw=0)
    ax.axhline(0, color="k", lw=0.5)
    ax.set_xscale("log")
    ax.set_xlabel("noise variance t")
    ax.set_ylabel("log p error accumulated from T down to t (dB/dim)")
    ax.set_title(f"normalization {totals['norm_err_db']:+.3f}, score {totals['score_total_db']:+.3f}"
                 f"\n= predicted {totals['predicted_err_db']:+.3f}; measured {totals['direct_err_db']:+.3f}"
                 f" ± {totals['direct_err_se_db']:.3f} dB/dim", fontsize=8)
    ax.legend(fontsize=7)

    ax = axes[2]
    ax.plot(t, df["mmse_per_dim"], color="tab:green", lw=1.2, label="exact denoiser (MMSE)")
    ax.plot(t, df["excess_mse_per_dim"], color="tab:purple", lw=1.2, label="model's excess over MMSE")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("noise variance t")
    ax.set_ylabel("squared error per pixel")
    ax.set_title("denoising error", fontsize=9)
    ax.legend(fontsize=7)
    if len(kappa):
        _plot_kappa(axes[3], kappa, totals.get("kappa_check") or {})
    for a in axes:
        a.tick_params(labelsize=7)
    if title:
        fig.suptitle(title, fontsize=9)
    save_figure(fig, path)


def _plot_kappa(ax, kappa: pd.DataFrame, check: dict) -> None:
    t, k, se = (kappa[c].to_numpy(dtype=float) for c in ("t", "kappa", "kappa_se"))
    ax.axhspan(0.9, 1.1, color="0.9", lw=0, label="0.9 ... 1.1")
    if check.get("from_t") and check.get("to_t"):
        ax.axvspan(check["from_t"], check["to_t"], color="tab:orange", alpha=0.08, lw=0,
                   label="checked range")
    ax.plot(t, k, "o-", color="k", ms=3, lw=1.2, label="κ(t) of the model")
    ax.fill_between(t, k - 2 * se, k + 2 * se, color="k", alpha=0.15, lw=0)
    ax.axhline(1, color="k", lw=0.5, ls=":")
    ax.axhline(0, color="k", lw=0.5)
    ax.set_xscale("log")
    ax.set_ylim(min(-0.1, np.nanmin(k - 2 * se) - 0.05), max(1.3, np.nanmax(k + 2 * se) + 0.05))
    ax.set_xlabel("noise variance t")
    ax.set_ylabel("κ = slope of E[U − ½⟨y, ∇U⟩], model / exact")
    lo, hi = check.get("min"), check.get("max")
    rng = f"\nover the checked range: {lo:.2f} ... {hi:.2f}" if lo is not None else ""
    ax.set_title("the y-independent part carried by the time score" + rng, fontsize=8)
    ax.legend(fontsize=7, loc="lower left")


def fig_bias_from_params(cfg: dict, table, totals, out) -> None:
    """`dsm fig-bias`: the figure from ``dsm bias``'s CSV and JSON."""
    table, totals = Path(table), Path(totals)
    for p in (table, totals):
        if not p.is_file():
            raise DsmError(f"{p}: not found (run `dsm bias`)")
    tot = read_json(totals, "bias totals (dsm bias)")
    if not isinstance(tot, dict) or (tot.get("available", True) and "t_norm" not in tot):
        raise DsmError(f"{totals}: not the totals JSON of `dsm bias` (key 't_norm' missing)")
    if not tot.get("available", True):
        _not_available(str(tot.get("reason", "no exact density")), out)
        return
    try:
        df = pd.read_csv(table)
    except (ValueError, UnicodeDecodeError, pd.errors.ParserError) as e:
        raise DsmError(f"{table}: not a CSV table of `dsm bias` ({type(e).__name__})") from None
    if "t" not in df.columns:
        raise DsmError(f"{table}: not the table of `dsm bias` (column 't' missing)")
    if not np.isfinite(df["t"]).all():
        raise DsmError(f"{table}: non-finite noise levels")
    title = (f"{cfg.get('name')}: bias budget of the full model against the exact density "
             f"(constant at T = {tot['t_norm']:g}, {tot.get('norm_entropy')})")
    plot_bias(df, tot, out, title=title)


def _not_available(reason: str, path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig = plt.figure(figsize=(6, 1.5))
    fig.text(0.5, 0.5, f"No bias budget: {reason}", ha="center", va="center", wrap=True, fontsize=9)
    save_figure(fig, path)
