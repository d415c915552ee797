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
   the MMSE itself.
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
    fig, axes = plt.subplots(1, 3, figsize=(11, 3.4), constrained_layout=True)
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
    for a in axes:
        a.tick_params(labelsize=7)
    if title:
        fig.suptitle(title, fontsize=9)
    save_figure(fig, path)


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
