"""Figure 1: the exact Gaussian scale mixture, the mixture-of-quadratics model, the
metrics, and a tiny end-to-end `dsm fig1` (docs/theory.md#figure-1-a-gaussian-scale-mixture)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import stats
from scipy.special import logsumexp

from dsm.data import gsm as gsm_mod
from dsm.normalization import normalization_constant
from dsm.data.gsm import GaussianScaleMixture
from dsm.errors import DsmError
from dsm.figures import fig1
from dsm.nets.gsm_mlp import GSMMLPEnergy

REPO = Path(__file__).resolve().parent.parent
T_VALUES = [0.0, 1e-2, 1.0, 7.5, 100.0]


def _exact_log_density(y: np.ndarray, t: float, sigmas, weights) -> np.ndarray:
    """log Σ_i w_i Π_k N(y_k; 0, σ_i² + t) by scipy, float64, independent of dsm."""
    per = [np.log(w) + stats.norm.logpdf(y, scale=math.sqrt(s**2 + t)).sum(1)
           for s, w in zip(sigmas, weights)]
    return logsumexp(np.stack(per, 1), axis=1)


@pytest.fixture(scope="module")
def gsm():
    return GaussianScaleMixture()


# --- the exact density ----------------------------------------------------------------

@pytest.mark.parametrize("t", T_VALUES)
def test_gsm_energy_matches_scipy(gsm, t):
    rng = np.random.default_rng(1)
    # points near both shells and in between, where both components matter
    y = rng.standard_normal((12, gsm.d)) * np.array([1, 4, 2.05, 2.2, 0.5, 6] * 2)[:, None]
    y[-1] *= math.sqrt(1 + t)
    ref = -_exact_log_density(y, t, gsm.sigmas, gsm.weights)
    u = gsm.energy(torch.from_numpy(y), t).numpy()
    np.testing.assert_allclose(u, ref, rtol=1e-12, atol=1e-8)
    # the radial form is the same function of r = ||y||
    ur = gsm.radial_energy(torch.from_numpy(np.linalg.norm(y, axis=1)), t).numpy()
    np.testing.assert_allclose(ur, ref, rtol=1e-12, atol=1e-8)


def test_gsm_energy_per_sample_t_and_shapes(gsm):
    y = torch.randn(4, 1, 10, 100, dtype=torch.float64)  # image-shaped, d = 1000
    t = torch.tensor([0.0, 0.1, 1.0, 10.0], dtype=torch.float64)
    u = gsm.energy(y, t)
    each = torch.stack([gsm.energy(y[i:i + 1], float(t[i]))[0] for i in range(4)])
    torch.testing.assert_close(u, each)
    assert gsm.score(y, t).shape == y.shape
    with pytest.raises(DsmError, match="1000"):
        gsm.energy(torch.zeros(2, 999), 0.0)


@pytest.mark.parametrize("t", [0.0, 0.3, 5.0, 100.0])
def test_gsm_derivatives_against_finite_differences(gsm, t):
    r = torch.tensor([0.4, 1.0, 1.9, 2.05, 2.3, 4.0, 5.0], dtype=torch.float64) * math.sqrt(gsm.d)
    h = 1e-4 * r
    fd = (gsm.radial_energy(r + h, t) - gsm.radial_energy(r - h, t)) / (2 * h)
    torch.testing.assert_close(gsm.radial_score(r, t), fd, rtol=1e-6, atol=1e-6)
    ht = 1e-5 * (1 + t)
    f = lambda tt: gsm.radial_energy(r, tt)  # noqa: E731
    if t > ht:
        fdt = (f(t + ht) - f(t - ht)) / (2 * ht)
    else:  # t = 0 is the boundary: second-order one-sided difference
        fdt = (-3 * f(t) + 4 * f(t + ht) - f(t + 2 * ht)) / (2 * ht)
    torch.testing.assert_close(gsm.radial_time_score(r, t), fdt, rtol=1e-5, atol=1e-4)
    # space score and time score on vectors against autograd of the energy
    y = (torch.randn(5, gsm.d, dtype=torch.float64) * 2.0).requires_grad_(True)
    tt = torch.full((5,), t, dtype=torch.float64, requires_grad=True)
    gy, gt = torch.autograd.grad(gsm.energy(y, tt).sum(), (y, tt))
    torch.testing.assert_close(gsm.score(y.detach(), t), gy)
    torch.testing.assert_close(gsm.time_score(y.detach(), t), gt)
    torch.testing.assert_close(gsm.denoise(y.detach(), t), y.detach() - t * gy)


def test_gsm_sample(gsm):
    x = gsm_mod.sample(4000, seed=3)
    assert x.shape == (4000, 1000) and x.dtype == np.float32
    np.testing.assert_array_equal(gsm_mod.sample(50, seed=3), gsm_mod.sample(50, seed=3, chunk=7))
    assert not np.array_equal(gsm_mod.sample(50, seed=3), gsm_mod.sample(50, seed=4))
    rho2 = (x.astype(np.float64) ** 2).mean(1)
    small = rho2 < 4
    assert abs(small.mean() - 0.5) < 0.03                     # weights ½, ½
    assert abs(rho2[small].mean() - 1.0) < 0.01               # σ = 1
    assert abs(rho2[~small].mean() - 16.0) < 0.1              # σ = 4
    with pytest.raises(DsmError, match="weights"):
        GaussianScaleMixture(10, (1.0, 2.0), (0.5, 0.6))


def test_gsm_entropy(gsm):
    """Quadrature entropy: exact for one Gaussian, Σ w_i H_i + H(w) for separated shells,
    and the Monte-Carlo mean of the exact U at t_max; the isotropic entropy of docs/theory.md#normalization-constant is
    0.174 dB/dim off for this data (the reason for fig1.norm_entropy: data_variance)."""
    g1 = GaussianScaleMixture(1000, (2.0,), (1.0,))
    assert g1.entropy(3.0) == pytest.approx(500 * math.log(2 * math.pi * math.e * 7.0), rel=1e-12)
    separated = sum(w * 500 * math.log(2 * math.pi * math.e * s**2) for s, w in zip(gsm.sigmas, gsm.weights))
    assert gsm.entropy(0.0) == pytest.approx(separated + math.log(2), abs=1e-6)
    h = gsm.entropy(100.0)
    x = torch.from_numpy(gsm.sample(5000, seed=5)).double()
    u = gsm.energy(x + 10.0 * torch.randn(x.shape, generator=torch.Generator().manual_seed(6),
                                          dtype=torch.float64), 100.0)
    assert abs(float(u.mean()) - h) < 4 * float(u.std()) / math.sqrt(len(u))
    iso_db = 10 * (500 * math.log(2 * math.pi * math.e * 100.0) - h) / (1000 * math.log(10))
    var_db = 10 * (gsm.entropy_gaussian_bound(100.0) - h) / (1000 * math.log(10))
    assert -0.18 < iso_db < -0.17 and 0 < var_db < 0.005


# --- the model ------------------------------------------------------------------------

def _small_model(d=50, seed=0):
    torch.manual_seed(seed)
    return GSMMLPEnergy(d=d, width=32, layers=4).double()


def test_model_scores_against_finite_differences():
    m = _small_model()
    y = torch.randn(9, 50, dtype=torch.float64) * 3
    t = torch.exp(torch.linspace(-5, 5, 9, dtype=torch.float64))
    u, gy, gt = m.energy_and_scores(y, t)
    torch.testing.assert_close(u, m.energy(y, t))
    # directional finite difference in y, central difference in t
    v = torch.randn_like(y)
    h = 1e-5
    fdy = (m.energy(y + h * v, t) - m.energy(y - h * v, t)) / (2 * h)
    torch.testing.assert_close((gy * v).sum(1), fdy, rtol=1e-6, atol=1e-6)
    ht = 1e-6 * t
    fdt = (m.energy(y, t + ht) - m.energy(y, t - ht)) / (2 * ht)
    torch.testing.assert_close(gt, fdt, rtol=1e-5, atol=1e-6)
    # the closed-form radial score against autograd in r
    r = torch.linalg.vector_norm(y, dim=1).requires_grad_(True)
    (gr,) = torch.autograd.grad(m.radial_energy(r, t).sum(), r)
    torch.testing.assert_close(m.radial_score(r.detach(), t), gr)
    torch.testing.assert_close(m.score(y, t), gy)
    torch.testing.assert_close(m.time_score(y, t), gt)
    torch.testing.assert_close(m.denoise(y, t), y - t[:, None] * gy)
    # a_i > 0 always (softplus), whatever the raw output
    a, _ = m.coefficients(t)
    assert (a > 0).all()


def test_single_score_matching_trains_the_dsm_term_only():
    from dsm.objectives import dual_score_matching_loss

    m = _small_model()
    g = torch.Generator().manual_seed(0)
    x = torch.randn(16, 50, generator=g, dtype=torch.float64) * 2
    z = torch.randn(16, 50, generator=g, dtype=torch.float64)
    t = torch.exp(torch.rand(16, generator=g, dtype=torch.float64) * 9.2 - 4.6)
    params = list(m.parameters())
    ssm = fig1.single_score_matching_loss(m, x, t, z)
    dual = dual_score_matching_loss(m, x, t, z)
    assert torch.equal(ssm["loss"], ssm["dsm"]) and not ssm["tsm"].requires_grad
    torch.testing.assert_close(ssm["tsm"], dual["tsm"].detach())
    g_ssm = torch.autograd.grad(ssm["loss"], params)
    g_dsm = torch.autograd.grad(dual["dsm"], params, retain_graph=True)
    g_dual = torch.autograd.grad(dual["loss"], params)
    for a, b in zip(g_ssm, g_dsm):
        torch.testing.assert_close(a, b)
    # the TSM term does move the parameters (else "dual" would equal "single")
    assert max(float((a - b).abs().max()) for a, b in zip(g_ssm, g_dual)) > 1e-6


class ExactCoefficients(GSMMLPEnergy):
    """The model family with (a, b) set by hand to the truth of a GaussianScaleMixture."""

    def __init__(self, gsm: GaussianScaleMixture):
        super().__init__(d=gsm.d, components=len(gsm.sigmas), width=4, layers=2)
        self.sig2 = torch.tensor(gsm.sigmas, dtype=torch.float64) ** 2
        self.logw = torch.log(torch.tensor(gsm.weights, dtype=torch.float64))

    def coefficients(self, t):
        v = self.sig2 + t[:, None]
        a = 1 / (2 * v)                                                # a_i = 1/(2(σ_i²+t))
        b = 0.5 * self.d * torch.log(2 * math.pi * v) - self.logw      # b_i = (d/2)log(2πv_i) - log w_i
        return a, b


@pytest.mark.parametrize("t", T_VALUES)
def test_model_family_contains_the_truth(gsm, t):
    m = ExactCoefficients(gsm)
    y = torch.randn(8, gsm.d, dtype=torch.float64) * torch.tensor([1, 4, 2, 2.1, 0.3, 6, 3, 1.2],
                                                                   dtype=torch.float64)[:, None]
    tt = torch.full((8,), t, dtype=torch.float64)
    u, gy, gt = m.energy_and_scores(y, tt)
    torch.testing.assert_close(u, gsm.energy(y, t), rtol=1e-12, atol=1e-8)
    torch.testing.assert_close(gy, gsm.score(y, t), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(gt, gsm.time_score(y, t), rtol=1e-10, atol=1e-8)
    r = torch.linalg.vector_norm(y, dim=1)
    torch.testing.assert_close(m.radial_score(r, tt), gsm.radial_score(r, t))
    # exactly normalized at every t: log ∫ exp(-U) = 0
    torch.testing.assert_close(m.log_normalizer(tt), torch.zeros(8, dtype=torch.float64),
                               rtol=0, atol=1e-9)


def test_normalization_constant_of_an_exact_model():
    """Exact N(0, σ²I) model (normalized, so the right c is 0): the isotropic normalization (docs/theory.md#normalization-constant)
    gives c = (d/2) ln(t_max / (σ² + t_max)) ± MC error; with the data variance, c ≈ 0."""
    g1 = GaussianScaleMixture(1000, (1.0,), (1.0,))
    m = ExactCoefficients(g1).float()
    m.sig2, m.logw = m.sig2.float(), m.logw.float()
    x = torch.from_numpy(g1.sample(2000, seed=0))
    se = math.sqrt(1000 / 2) / math.sqrt(2000)  # std of U is sqrt(d/2) nats
    c_iso = normalization_constant(m, x, 100.0, seed=1, entropy="isotropic")["c_nats"]
    assert abs(c_iso - 500 * math.log(100.0 / 101.0)) < 4 * se + 0.05, c_iso
    r = normalization_constant(m, x, 100.0, seed=1, entropy="data_variance")
    c_var = r["c_nats"]
    assert abs(c_var) < 4 * se + 0.05 + 500 * 0.01 / 101, c_var  # v̂ within 1 % of σ² = 1
    xd = x.double()
    v = float(xd.var(0, unbiased=True).mean())       # per-dimension variance (ddof 1), averaged
    assert r["data_variance"] == pytest.approx(v, rel=1e-9)
    assert c_var - c_iso == pytest.approx(500 * math.log(1 + v / 100), rel=1e-9)
    with pytest.raises(DsmError, match="norm_entropy"):
        normalization_constant(m, x, 100.0, seed=1, entropy="gaussian")


# --- metrics --------------------------------------------------------------------------

def test_error_metrics_known_curves():
    rho = np.linspace(0.0, 6.0, 6001)
    truth = -3.0 - rho**2
    inside = (rho >= 0.5) & (rho <= 5.0)
    ramp = np.where(inside, (rho - 0.5) / 4.5, 0.0)             # 0 -> 1 across the window
    model = truth + 2.0 + ramp + np.where(inside, 0.0, 100.0)   # huge error outside: ignored
    m = fig1.error_metrics(rho, model, truth, (0.5, 5.0))
    assert m["n_points"] == inside.sum()
    assert m["max_abs"] == pytest.approx(3.0)
    assert m["shift_minimax"] == pytest.approx(2.5) and m["max_abs_shifted"] == pytest.approx(0.5)
    assert m["shift_mean"] == pytest.approx(2.5, abs=1e-9)
    assert m["rms_shifted"] == pytest.approx(1 / math.sqrt(12), rel=1e-3)  # uniform on [-½, ½]
    assert m["rms"] == pytest.approx(math.sqrt(2.5**2 + 1 / 12), rel=1e-3)
    exact = fig1.error_metrics(rho, truth, truth, (0.5, 5.0))
    assert exact["max_abs"] == 0 and exact["rms"] == 0
    with pytest.raises(DsmError, match="r_range"):
        fig1.error_metrics(rho, model, truth, (7.0, 8.0))


def test_fig1_params_defaults_and_errors():
    p = fig1.fig1_params({})
    assert (p["n"], p["steps"], p["batch_size"], p["lr"], p["lr_halve_every"]) == (100_000, 20_000, 512, 1e-4, 2000)
    assert (p["t_min"], p["t_max"], p["width"], p["layers"]) == (1e-2, 1e2, 256, 5)
    assert p["t_eval"] == p["t_min"] and p["norm_entropy"] == "data_variance"
    assert fig1.fig1_params({"fig1": {"t_eval": 0.0}})["t_eval"] == 0.0
    with pytest.raises(DsmError, match="fig1.stpes"):
        fig1.fig1_params({"fig1": {"stpes": 3}})
    with pytest.raises(DsmError, match="fig1.t_min"):
        fig1.fig1_params({"fig1": {"t_min": 10.0, "t_max": 1.0}})


# --- end to end -----------------------------------------------------------------------

TINY = ["fig1.n=500", "fig1.n_norm=200", "fig1.steps=6", "fig1.batch_size=32", "fig1.width=16",
        "fig1.layers=3", "fig1.grid=100", "fig1.lr_halve_every=3", "fig1.checkpoint_every=3",
        "fig1.log_every=1", "resources.train.threads=1"]


def test_dsm_fig1_end_to_end(tmp_path, capsys):
    from dsm.cli import main

    params = REPO / "params.yaml"
    if not params.is_file():
        pytest.skip("params.yaml not present")
    argv = ["fig1", "--params", str(params), "--scale", "smoke", "--out", str(tmp_path), "--device", "cpu"]
    for o in TINY:
        argv += ["--set", o]
    assert main(argv) == 0
    pdf = tmp_path / "fig1.pdf"
    assert pdf.read_bytes()[:5] == b"%PDF-" and pdf.stat().st_size > 5000
    metrics = json.loads((tmp_path / "details.json").read_text())
    for m in ("ssm", "dsm"):
        for key in ("max_abs", "rms", "max_abs_shifted", "rms_shifted", "shift_minimax", "shift_mean",
                    "c_nats", "train_seconds"):
            assert math.isfinite(metrics[m][key]), (m, key)
        assert math.isfinite(metrics[m]["normalization_alternative"]["max_abs"])
        assert math.isfinite(metrics[m]["model_at_t0"]["max_abs"])
        assert metrics[m]["steps"] == 6
    assert metrics["t_eval"] == 1e-2 and metrics["t_true"] == 0.0 and metrics["r_range"] == [0.5, 5.0]
    assert (tmp_path / "curves.csv").read_text().startswith("rho,logp_true,score_true")
    # same seed: both methods start from the same initialization and see the same batches
    first = [json.loads(line) for line in (tmp_path / "ssm" / "metrics.jsonl").read_text().splitlines()]
    first_d = [json.loads(line) for line in (tmp_path / "dsm" / "metrics.jsonl").read_text().splitlines()]
    assert first[0]["tsm"] == pytest.approx(first_d[0]["tsm"], rel=1e-6)  # step 1, before any update
    assert first[0]["dsm"] == pytest.approx(first_d[0]["dsm"], rel=1e-6)
    # the headline numbers (DVC metrics): the details' raw errors, one file each named with its unit
    from dsm.pipeline.report import load_json_tree
    from test_analysis import check_headline_dir

    assert load_json_tree(tmp_path / "metrics") == {
        "dual_max_abs_err_db_per_dim": {"value": metrics["dsm"]["max_abs"]},
        "dual_rms_err_db_per_dim": {"value": metrics["dsm"]["rms"]},
        "single_max_abs_err_db_per_dim": {"value": metrics["ssm"]["max_abs"]},
        "single_rms_err_db_per_dim": {"value": metrics["ssm"]["rms"]}}
    check_headline_dir(tmp_path / "metrics")
    # rerun: the finished trainings are reused, the headline rewritten byte for byte (no timings)
    files = sorted((tmp_path / "metrics").iterdir())
    before = [f.read_bytes() for f in files]
    assert main(argv) == 0
    assert [f.read_bytes() for f in sorted((tmp_path / "metrics").iterdir())] == before
