"""Figure 1: single vs dual score matching on a Gaussian scale mixture (docs/theory.md#figure-1-a-gaussian-scale-mixture).

The experiment and its figure in one place, because it is small: sample the d = 1000
two-Gaussian scale mixture (:mod:`dsm.data.gsm`), train the mixture-of-quadratics
energy (:mod:`dsm.nets.gsm_mlp`) twice from the same seed, once by single score
matching (the DSM term alone, on the energy's gradient) and once by dual score
matching (DSM + TSM), normalize both with the constant of docs/theory.md#normalization-constant at t_max,
and compare the learned log p(x), read at the smallest trained noise level
t = ``t_eval`` (default t_min = 1e-2), with the exact log p(x) (t = 0).

Why not the model at t = 0: its feature ln(0 + t_min) lies 0.69 below the trained range
[ln 2 t_min, ln(t_max + t_min)], and the MLP's extrapolation there cost accuracy
(paper setting, dual SM: max |error| 0.215 / 0.093 dB/dim at t = 0 against 0.133 / 0.052
at t = t_min for seeds 0 / 1, while the truth itself moves by at most 0.04 dB/dim between
t = 0 and 1e-2 in the window); details.json reports both (``model_at_t0``).

Outputs of :func:`fig1_from_params` in OUT:
  fig1.pdf      left: log p in dB/dim against r/√d with the data's radial histogram
                behind; middle: radial score d log p / d(r/√d) in dB/dim; right: the
                exact energy landscape U(y, t) of a 1-D two-Gaussian mixture
                (``fig1.landscape``) over (y, ln t), with the t = 0 path between the
                modes (a barrier) and a path through larger t (no barrier): no training.
  metrics/      the headline numbers (DVC metrics, dsm.headline): max and RMS |error| of
                log p in dB/dim over r/√d ∈ r_range, raw, for dual and single score
                matching, one file each (:data:`HEADLINE`; no timings, so the files are
                byte-reproducible).
  details.json  everything: per method, |error| of log p in dB/dim over r/√d ∈ r_range
                (uniform grid): max and RMS raw, and after the best constant shift (the
                minimax shift (max+min)/2 for the max, the mean shift for the RMS); the
                other read-out conventions, normalization constants, training times and
                last training log, the resolved parameters; ``landscape``: the largest
                rise of U along each path (nats).
  curves.csv    the plotted curves.
  ssm/, dsm/    the two training runs (checkpoints; rerunning resumes).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from dsm import units
from dsm.data.gsm import GaussianScaleMixture
from dsm.errors import DsmError
from dsm.figures.output import save_figure
from dsm.headline import Metric, write_metrics_dir
from dsm.io import code_version, write_json, write_text
from dsm.nets.gsm_mlp import GSMMLPEnergy
from dsm.normalization import normalization_constant
from dsm.objectives import dual_score_matching_loss

METHODS = ("ssm", "dsm")
LABELS = {"true": "Ground truth", "ssm": "Single SM", "dsm": "Dual SM"}
# metrics/<name>.json (DVC metrics): headline name -> (method, key of its error metrics)
HEADLINE = {"dual_max_abs_err_db_per_dim": ("dsm", "max_abs"),
            "dual_rms_err_db_per_dim": ("dsm", "rms"),
            "single_max_abs_err_db_per_dim": ("ssm", "max_abs"),
            "single_rms_err_db_per_dim": ("ssm", "rms")}


def fig1_params(cfg: dict) -> dict:
    """The resolved `fig1` parameters: cfg['fig1'] validated, with the schema's defaults
    (the paper's setting, docs/theory.md#figure-1-a-gaussian-scale-mixture; workflow/schemas/params.schema.yaml)."""
    from dsm.config import resolve_section

    p = resolve_section((cfg or {}).get("fig1"), "fig1", "fig1")
    if not (0 < p["t_min"] < p["t_max"]):
        raise DsmError(f"fig1.t_min/t_max: need 0 < t_min < t_max, got {p['t_min']}, {p['t_max']}")
    if not p["r_range"][0] < p["r_range"][1]:
        raise DsmError(f"fig1.r_range: expected [lo, hi] with lo < hi, got {p['r_range']!r}")
    if p["t_eval"] is None:
        p["t_eval"] = p["t_min"]
    ls = p["landscape"]
    for key in ("y_range", "log10_t_range"):
        if not ls[key][0] < ls[key][1]:
            raise DsmError(f"fig1.landscape.{key}: expected [lo, hi] with lo < hi, got {ls[key]!r}")
    if ls["means"][0] == ls["means"][1]:
        raise DsmError(f"fig1.landscape.means: the two modes must differ, got {ls['means']!r}")
    return p


# --- losses ------------------------------------------------------------------------

def single_score_matching_loss(model, x, t, z) -> dict:
    """DSM term alone on an energy model's ∇_y U (the TSM term is reported, not trained).

    Thin wrapper over :func:`dsm.objectives.dual_score_matching_loss`, so both methods
    share one computation of the terms.
    """
    terms = dual_score_matching_loss(model, x, t, z)
    return {"loss": terms["dsm"], "dsm": terms["dsm"], "tsm": terms["tsm"].detach()}


LOSSES = {"ssm": single_score_matching_loss, "dsm": dual_score_matching_loss}


# --- experiment --------------------------------------------------------------------

def build_model(p: dict) -> GSMMLPEnergy:
    """The Figure 1 model, initialized from p['seed'] (identical for both methods)."""
    torch.manual_seed(p["seed"])
    return GSMMLPEnergy(d=p["d"], components=len(p["sigmas"]), width=p["width"],
                        layers=p["layers"], t_min=p["t_min"])


def train_method(method: str, x_train: torch.Tensor, p: dict, out_dir, device=None):
    """Train one model by ``method`` ('ssm' or 'dsm') with dsm.train.fit; returns (model, result)."""
    from dsm.fit import fit

    model = build_model(p)
    train_cfg = {k: p[k] for k in ("steps", "batch_size", "lr", "lr_halve_every", "t_min", "t_max",
                                   "seed", "checkpoint_every", "log_every", "flush_denormal")}
    n, b = x_train.shape[0], p["batch_size"]

    def next_batch(step: int, generator: torch.Generator) -> torch.Tensor:
        return x_train[torch.randint(n, (b,), generator=generator)]

    identity = {"figure": "fig1", "method": method,
                **{k: p[k] for k in ("d", "sigmas", "weights", "n", "width", "layers")}}
    result = fit(model, next_batch, train_cfg, out_dir, device=device, loss_fn=LOSSES[method],
                 identity=identity, desc=f"fig1 {method}")
    return model, result


def error_metrics(rho: np.ndarray, logp: np.ndarray, logp_true: np.ndarray, r_range) -> dict:
    """|logp - logp_true| (dB/dim) on the points of ``rho`` within ``r_range``.

    max_abs, rms: raw. shift_minimax = (max e + min e)/2 minimizes the max, giving
    max_abs_shifted; shift_mean = mean e minimizes the RMS, giving rms_shifted
    (e = logp - logp_true; shifts are subtracted from logp).
    """
    sel = (rho >= r_range[0]) & (rho <= r_range[1])
    if not sel.any():
        raise DsmError(f"fig1.r_range: no grid point in {r_range}")
    e = np.asarray(logp, np.float64)[sel] - np.asarray(logp_true, np.float64)[sel]
    s_max, s_mean = 0.5 * (e.max() + e.min()), e.mean()
    return {"max_abs": float(np.abs(e).max()), "rms": float(np.sqrt(np.mean(e**2))),
            "shift_minimax": float(s_max), "max_abs_shifted": float(np.abs(e - s_max).max()),
            "shift_mean": float(s_mean), "rms_shifted": float(np.sqrt(np.mean((e - s_mean) ** 2))),
            "n_points": int(sel.sum())}


@torch.no_grad()
def radial_curves(model, gsm: GaussianScaleMixture, rho: np.ndarray, t: float, c: float | None):
    """log p (dB/dim) and radial score d log p / dρ (dB/dim per unit of ρ = r/√d) on rho.

    ``model=None`` gives the exact curves (then ``c`` is ignored: the truth is normalized).
    The score is the derivative of the plotted log p: -(√d / (d ln 10 / 10)) ∂U/∂r.
    """
    d = gsm.d
    r = torch.as_tensor(rho * math.sqrt(d), dtype=torch.float64)
    if model is None:
        u, du = gsm.radial_energy(r, t), gsm.radial_score(r, t)
    else:
        dev = next(model.parameters()).device
        rr = r.to(device=dev, dtype=torch.float32)
        tt = torch.full_like(rr, t)
        u = model.radial_energy(rr, tt).double().cpu() + c
        du = model.radial_score(rr, tt).double().cpu()
    logp = units.logp_db_per_dim(u.numpy(), d)
    score = units.logp_db_per_dim(du.numpy(), d) * math.sqrt(d)  # chain rule: dr/dρ = √d
    return logp, score


def run_fig1(p: dict, out, device=None) -> dict:
    """Run the experiment with resolved parameters ``p``; write OUT/{fig1.pdf, metrics/,
    details.json, curves.csv}; return the details."""
    out = Path(out)
    gsm = GaussianScaleMixture(p["d"], tuple(p["sigmas"]), tuple(p["weights"]))
    x_train = torch.from_numpy(gsm.sample(p["n"], p["seed"]))
    x_norm = torch.from_numpy(gsm.sample(p["n_norm"], p["seed"] + 1))

    rho_plot = np.linspace(0.0, 5.0, 501)
    rho_metric = np.linspace(p["r_range"][0], p["r_range"][1], p["grid"])
    t_eval = float(p["t_eval"])
    true_plot = radial_curves(None, gsm, rho_plot, 0.0, None)       # exact log p(x): t = 0
    true_metric = radial_curves(None, gsm, rho_metric, 0.0, None)[0]

    other = {"isotropic": "data_variance", "data_variance": "isotropic"}[p["norm_entropy"]]
    metrics = {"t_eval": t_eval, "t_true": 0.0, "r_range": list(p["r_range"]),
               "units": "log p in dB/dim",
               "evaluation": "learned energy at t = t_eval (+ c) against the exact log p(x) at t = 0",
               "normalization": f"docs/theory.md#normalization-constant at t_max on n_norm held-out samples, entropy "
                                f"'{p['norm_entropy']}' ('{other}' under normalization_alternative)",
               "shifts": "max_abs_shifted uses the minimax shift (max+min)/2; rms_shifted the mean shift",
               "params": p, "code_version": code_version()}
    curves = {"rho": rho_plot, "logp_true": true_plot[0], "score_true": true_plot[1]}
    for m in METHODS:
        model, result = train_method(m, x_train, p, out / m, device)
        model.eval()
        c = normalization_constant(model, x_norm, p["t_max"], seed=p["seed"] + 2,
                                   entropy=p["norm_entropy"], batch_size=4096)["c_nats"]
        c_other = normalization_constant(model, x_norm, p["t_max"], seed=p["seed"] + 2,
                                         entropy=other, batch_size=4096)["c_nats"]
        logp_m, score_m = radial_curves(model, gsm, rho_plot, t_eval, c)
        logp_metric = radial_curves(model, gsm, rho_metric, t_eval, c)[0]
        logp_other = radial_curves(model, gsm, rho_metric, t_eval, c_other)[0]
        logp_t0 = radial_curves(model, gsm, rho_metric, 0.0, c)[0]
        with torch.no_grad():
            dev = next(model.parameters()).device
            log_z = model.log_normalizer(torch.tensor([t_eval, p["t_max"]], device=dev)).cpu()
        # both read-out conventions, each against the exact log p(x) at t = 0:
        # the release's (learned energy at t = t_min, isotropic entropy at t_max) and
        # t = 0 (the energy at t = 0 itself, data-variance entropy)
        c_iso = c if p["norm_entropy"] == "isotropic" else c_other
        c_var = c if p["norm_entropy"] == "data_variance" else c_other
        release = radial_curves(model, gsm, rho_metric, p["t_min"], c_iso)[0]
        at_zero = radial_curves(model, gsm, rho_metric, 0.0, c_var)[0]
        conventions = {
            "release": {"t_eval": p["t_min"], "entropy": "isotropic",
                        **error_metrics(rho_metric, release, true_metric, p["r_range"])},
            "t0": {"t_eval": 0.0, "entropy": "data_variance",
                   **error_metrics(rho_metric, at_zero, true_metric, p["r_range"])}}
        metrics[m] = {**error_metrics(rho_metric, logp_metric, true_metric, p["r_range"]),
                      "conventions": conventions,
                      "c_nats": c,
                      "normalization_alternative": {
                          "entropy": other, "c_nats": c_other,
                          **error_metrics(rho_metric, logp_other, true_metric, p["r_range"])},
                      # the model read at t = 0 itself (feature ln t_min, outside the trained range)
                      "model_at_t0": error_metrics(rho_metric, logp_t0, true_metric, p["r_range"]),
                      # closed-form log ∫exp(-U) of the learned (unnormalized) energy, per dim:
                      # -c/d if the model's normalization were t-independent and §5 were exact.
                      "log_normalizer_per_dim": {"t_eval": float(log_z[0]) / p["d"],
                                                 "t_max": float(log_z[1]) / p["d"]},
                      "train_seconds": result.seconds, "steps": result.step,
                      "last_log": result.last}
        curves[f"logp_{m}"], curves[f"score_{m}"] = logp_m, score_m
        curves[f"logp_{m}_shifted"] = logp_m - metrics[m]["shift_mean"]
    metrics["threads"] = torch.get_num_threads()  # resources.train.threads (dsm.runtime)

    landscape = energy_landscape(p["landscape"])
    metrics["landscape"] = {k: landscape[k] for k in ("barrier_direct_nats", "barrier_detour_nats")}
    metrics["landscape"]["units"] = "nats: largest rise of the exact U along each path above its start mode"
    _write_curves(out / "curves.csv", curves)
    plot_fig1(curves, x_train, p, out / "fig1.pdf", landscape=landscape)
    write_json(out / "details.json", metrics)
    write_metrics_dir(out / "metrics", {name: Metric(metrics[m][key]) for name, (m, key) in HEADLINE.items()})
    return metrics


def fig1_from_params(cfg: dict, out, device=None) -> dict:
    """`dsm fig1`: parameters from cfg['fig1'] (paper values by default)."""
    from dsm.runtime import stage_threads

    from dsm.outputs import check_place

    p = fig1_params(cfg)
    # OUT holds the run directories ssm/ and dsm/: never `.` (a checkout's dsm/ package), a
    # repository or a parent of an argument
    check_place(out)
    stage_threads(cfg, "train")
    if device is None:
        device = (cfg or {}).get("device", "auto")
    return run_fig1(p, out, device)


# --- right panel: the exact energy landscape of a 1-D two-Gaussian mixture ----------------

def mixture_energy(y, t, means, stds, weights) -> np.ndarray:
    """Exact U(y, t) = -log Σ_i w_i N(y; m_i, s_i² + t) (nats) of a 1-D Gaussian mixture
    under noise of variance t; y and t broadcast (numpy, float64)."""
    y, t = np.asarray(y, np.float64), np.asarray(t, np.float64)
    w = np.asarray(weights, np.float64) / np.sum(weights)
    terms = [np.log(wi) - 0.5 * ((y - m) ** 2 / (s ** 2 + t) + np.log(2 * math.pi * (s ** 2 + t)))
             for m, s, wi in zip(means, stds, w)]
    return -np.logaddexp(terms[0], terms[1])


def energy_landscape(lp: dict) -> dict:
    """U(y, t) on the grid of ``fig1.landscape`` and along the two paths between the modes.

    ``direct``: y from mode 1 to mode 2 at t = 0 (through the barrier between the modes);
    ``detour``: up from (mode 1, 0) to (mode 1, path_t) in t, across at t = path_t, down to
    (mode 2, 0). ``barrier_*``: the largest rise of U along each path above its start (nats).
    """
    args = (lp["means"], lp["stds"], lp["weights"])
    n = int(lp["grid"])
    y = np.linspace(*lp["y_range"], n)
    t = np.logspace(*lp["log10_t_range"], n)
    grid = mixture_energy(y[None, :], t[:, None], *args)                 # (t, y)
    m1, m2 = sorted(lp["means"])
    ys = np.linspace(m1, m2, n)
    up = np.concatenate([[0.0], np.logspace(lp["log10_t_range"][0], math.log10(lp["path_t"]), n)])
    direct = mixture_energy(ys, 0.0, *args)
    detour_y = np.concatenate([np.full(len(up), m1), ys, np.full(len(up), m2)])
    detour_t = np.concatenate([up, np.full(n, float(lp["path_t"])), up[::-1]])
    detour = mixture_energy(detour_y, detour_t, *args)
    return {"y": y, "t": t, "U": grid, "direct_y": ys, "direct_U": direct,
            "detour_y": detour_y, "detour_t": detour_t, "detour_U": detour,
            "barrier_direct_nats": float(direct.max() - direct[0]),
            "barrier_detour_nats": float(detour.max() - detour[0])}


# --- output ------------------------------------------------------------------------

def _write_curves(path, curves: dict) -> None:
    keys = list(curves)
    rows = np.stack([np.asarray(curves[k], np.float64) for k in keys], axis=1)
    lines = [",".join(keys)] + [",".join(f"{v:.6g}" for v in row) for row in rows]
    write_text(path, "\n".join(lines) + "\n")


def plot_fig1(curves: dict, x_train: torch.Tensor, p: dict, path, landscape: dict | None = None) -> None:
    """The paper's three panels, written atomically (format from the suffix: .pdf, .png):
    log p and radial score of the learned models, and the exact energy landscape
    (``landscape``: :func:`energy_landscape`, computed from ``p['landscape']`` if None)."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    colors = {"true": "tab:blue", "ssm": "tab:green", "dsm": "tab:red"}
    dashes = (0, (2.5, 2.5))
    rho = curves["rho"]
    r_data = (torch.linalg.vector_norm(x_train[:100_000], dim=1) / math.sqrt(p["d"])).numpy()
    if landscape is None:
        from dsm.config import section_defaults

        landscape = energy_landscape(p.get("landscape") or section_defaults("fig1")["landscape"])
    fig, axs = plt.subplots(figsize=(10.5, 3), ncols=3, layout="constrained")
    _plot_landscape(axs[2], landscape, fig)
    for ax, kind in zip(axs[:2], ("logp", "score")):
        ax.plot(rho, curves[f"{kind}_true"], color=colors["true"], lw=3, label=LABELS["true"])
        ax.plot(rho, curves[f"{kind}_ssm"], color=colors["ssm"], lw=2, ls=dashes, label=LABELS["ssm"])
        if kind == "logp":
            ax.plot(rho, curves["logp_ssm_shifted"], color=colors["ssm"], lw=2, ls=":",
                    label=LABELS["ssm"] + " (shifted)")
        ax.plot(rho, curves[f"{kind}_dsm"], color=colors["dsm"], lw=2, ls=dashes, label=LABELS["dsm"])
        ax.set_xlim(0, 5)
        ax.set_xlabel(r"$\|x\|/\sqrt{d}$")
        twin = ax.twinx()
        twin.hist(r_data, bins=100, range=(0, 5), density=True, color=colors["true"], alpha=0.3,
                  zorder=-1, label="Data", rasterized=True)
        twin.set_ylim(0, 10)
        twin.tick_params(axis="y", right=False, labelright=False)
        ax.set_zorder(twin.get_zorder() + 1)
        ax.patch.set_visible(False)
        if kind == "logp":
            lo = min(np.min(curves[f"logp_{k}"][rho >= p["r_range"][0]]) for k in ("true", "dsm", "ssm_shifted"))
            hi = max(np.max(curves[f"logp_{k}"]) for k in ("true", "dsm", "ssm_shifted"))
            ax.set_ylim(math.floor(lo) - 1, math.ceil(hi) + 1)
            ax.set_ylabel("log probability (dB/dim)")
            ax.set_title(f"models at t = {p['t_eval']:g}, truth at t = 0", fontsize=9)
            h1, l1 = ax.get_legend_handles_labels()
            h2, l2 = twin.get_legend_handles_labels()
            ax.legend(h2 + h1, l2 + l1, loc="upper right", fontsize=7)
        else:
            ax.set_ylabel("radial score (dB/dim)")
    save_figure(fig, path, bbox_inches="tight", dpi=150)


def _plot_landscape(ax, ls: dict, fig) -> None:
    """U(y, t) over (y, ln t) with the two paths between the modes."""
    y, t, U = ls["y"], ls["t"], ls["U"]
    lo, hi = np.percentile(U, [0, 97])
    mesh = ax.pcolormesh(y, np.log(t), U, shading="nearest", cmap="viridis", vmin=lo, vmax=hi, rasterized=True)
    ax.contour(y, np.log(t), U, levels=np.linspace(lo, hi, 12), colors="w", linewidths=0.4, alpha=0.6)
    bottom = math.log(t[0])
    ax.plot(ls["direct_y"], np.full(len(ls["direct_y"]), bottom), color="tab:red", lw=3, clip_on=False,
            label=f"t = 0: barrier {ls['barrier_direct_nats']:.1f} nats")
    dt = np.log(np.clip(ls["detour_t"], t[0], None))
    ax.plot(ls["detour_y"], dt, color="tab:orange", lw=2, ls=(0, (3, 1.5)),
            label=f"through t = {ls['detour_t'].max():g}: rise {ls['barrier_detour_nats']:.1f} nats")
    ax.set_xlabel("y")
    ax.set_ylabel("ln t")
    ax.set_title("exact U(y, t), two-Gaussian mixture", fontsize=9)
    ax.legend(fontsize=6, loc="upper right")
    fig.colorbar(mesh, ax=ax, label="U (nats)")
