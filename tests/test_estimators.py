"""Estimators of -log p (dsm/estimators.py) against exact densities.

The exact ``field`` density (8x8, the smoke scale's) is used as the model: the
probability-flow ODE with the exact trace and the denoising bound must recover its
exact -log p within their stated tolerances, the bound never below it beyond Monte-Carlo
error; the stochastic estimator too; Hutchinson's trace must be unbiased. A Gaussian
checks the closed-form Gaussian prior term, the Laplacian is checked against the
field's closed form, and the model adapter against the exact adapter.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from dsm.data.field import FieldDensity
from dsm.errors import DsmError
from dsm.estimators import (ESTIMATORS, EnergyField, ExactEnergy, ModelEnergy, Prior, estimate,
                            mse_bound, ode, sde)

T_MAX, T_MIN = 10.0, 1e-6          # the smoke scale's training range


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Small float64 tensors: one thread is fastest (and spares the shared cores)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def field():
    dens = FieldDensity(8)
    x = torch.from_numpy(dens.sample(4, seed=0, part=1)).double()
    return dens, x, dens.energy(x, 0.0).numpy()


def test_ode_exact_trace_recovers_the_exact_field_density(field):
    dens, x, truth = field
    est = ode(ExactEnergy(dens, T_MAX, T_MIN), x, trace="exact", rtol=1e-5, atol=1e-5)
    # stated: the solver tolerance; measured |error| ≲ 0.02 nats at rtol 1e-5 (d = 64)
    assert np.abs(est.nll_nats - truth).max() < 0.05, est.nll_nats - truth
    assert est.options["trace"] == "exact" and np.all(est.se_nats == 0)
    assert est.nfe == 64 * est.options["nfev"] + 1       # d Hessian-vector products per step, U(y_T, T)


@pytest.mark.parametrize("prior", ["model", "gaussian"])
def test_mse_bound_recovers_the_exact_field_density_and_is_never_below(field, prior):
    dens, x, truth = field
    pr = Prior("model") if prior == "model" else Prior("gaussian", dens.mean, _field_variance(dens))
    est = mse_bound(ExactEnergy(dens, T_MAX, T_MIN), x, n_t=48, n_noise=16, prior=pr)
    err, se = est.nll_nats - truth, est.se_nats
    assert np.all(se > 0) and np.all(se < 2.0)                 # ≈ 1.2 nats (0.08 dB/dim) here
    # never below the exact value beyond Monte-Carlo error (4 standard errors per image)
    assert np.all(err > -4 * se), err / se
    # unbiased for the exact denoiser: mean error within the quadrature tolerance + 3 SE
    assert abs(err.mean()) < 0.1 + 3 * math.sqrt((se ** 2).sum()) / len(se), (err, se)
    assert np.all(np.abs(err) < 0.1 + 4 * se)


def test_mse_bound_variance_reduction_keeps_the_mean(field):
    dens, x, truth = field
    fld = ExactEnergy(dens, T_MAX, T_MIN)
    plain = mse_bound(fld, x, n_t=24, n_noise=32, control_variate=False)
    reduced = mse_bound(fld, x, n_t=24, n_noise=32)
    anti = mse_bound(fld, x, n_t=24, n_noise=16, antithetic=True, control_variate=False)
    for other in (reduced, anti):
        diff = plain.nll_nats - other.nll_nats
        assert np.all(np.abs(diff) < 4 * np.hypot(plain.se_nats, other.se_nats))
    assert reduced.se_nats.mean() < 0.7 * plain.se_nats.mean()      # measured ≈ 0.5
    assert anti.nfe == plain.nfe == reduced.nfe


def test_sde_recovers_the_exact_field_density(field):
    dens, x, truth = field
    est = sde(ExactEnergy(dens, T_MAX, T_MIN), x, n_t=96, paths=16)
    err, se = est.nll_nats - truth, est.se_nats
    assert np.all(np.abs(err) < 0.1 + 4 * se), (err, se)
    assert abs(err.mean()) < 0.1 + 3 * math.sqrt((se ** 2).sum()) / len(se)
    assert np.all(se < 3.0)


def test_hutchinson_ode_is_unbiased(field):
    dens, x, truth = field
    fld = ExactEnergy(dens, T_MAX, T_MIN)
    hutch = ode(fld, x, trace="hutchinson", probes=8, rtol=1e-5, atol=1e-5)
    assert hutch.options["probes"] == 8 and np.all(hutch.se_nats > 0)
    assert np.all(np.abs(hutch.nll_nats - truth) < 4 * hutch.se_nats + 0.05)
    assert hutch.nfe == 8 * hutch.options["nfev"] + 1


def _field_variance(dens):
    return float(dens.weights @ dens.scales ** 2) * dens.std ** 2


class Gaussian:
    """N(m, v I): energy -log N(y; m, (v + t) I), torch, differentiable."""

    def __init__(self, m, v):
        self.m, self.v = m, v

    def energy(self, y, t):
        t = torch.as_tensor(t, dtype=torch.float64).expand(y.shape[0])
        vt = self.v + t
        d = y[0].numel()
        return ((y.double() - self.m) ** 2).flatten(1).sum(1) / (2 * vt) + 0.5 * d * torch.log(2 * math.pi * vt)


def test_gaussian_prior_closed_form_makes_every_estimator_exact_for_a_gaussian():
    g = Gaussian(0.3, 0.05)
    x = 0.3 + math.sqrt(0.05) * torch.randn(4, 1, 4, 4, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    truth = g.energy(x, 0.0).numpy()
    fld = ExactEnergy(g, t_max=0.5, t_min=1e-6)       # T comparable to v: the prior must be exact
    pr = Prior("gaussian", 0.3, 0.05)
    for name, opts in [("ode", dict(trace="exact", rtol=1e-7, atol=1e-7)),
                       ("mse-bound", dict(n_t=64, n_noise=16)), ("sde", dict(n_t=96, paths=16))]:
        est = estimate(name, fld, x, prior=pr, **opts)
        assert np.all(np.abs(est.nll_nats - truth) < 0.02 + 4 * est.se_nats), (name, est.nll_nats - truth)


def test_the_t_to_zero_end_is_integrated():
    """[0, t_lo] matters when t_lo is not tiny against the data variance: here it holds
    ½ ln(1 + t_lo/v) ≈ 0.048 nats per dimension; with it, every estimator is exact."""
    g = Gaussian(0.0, 0.01)
    x = torch.tensor([0.05, -0.03], dtype=torch.float64).reshape(2, 1, 1, 1)
    truth = g.energy(x, 0.0).numpy()
    fld = ExactEnergy(g, t_max=1.0, t_min=1e-6)
    pr = Prior("gaussian", 0.0, 0.01)
    for name, opts, tol in [("ode", dict(trace="exact", rtol=1e-9, atol=1e-9), 1e-4),
                            ("mse-bound", dict(n_t=64, n_noise=20000), 4e-3),   # rectangle: 2e-3
                            ("sde", dict(n_t=64, paths=20000), 1e-3)]:
        est = estimate(name, fld, x, prior=pr, t_lo=1e-3, **opts)
        assert np.all(np.abs(est.nll_nats - truth) < tol + 4 * est.se_nats), (name, est.nll_nats - truth)
        assert np.all(est.se_nats < 5e-3)


def test_exact_trace_and_hutchinson_against_the_field_laplacian(field):
    dens, x, _ = field
    t = 1e-3
    y = x + math.sqrt(t) * torch.randn(x.shape, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    # closed form: ΔU = Σ_j r_j Σ_k 1/v_jk + |∇U|² - Σ_j r_j |c/v_j|²  (orthonormal DCT keeps traces)
    c = dens._coef(y)
    logs, v = dens._terms(c, torch.full((len(y),), t, dtype=torch.float64))
    r = torch.softmax(logs, 1)
    g = dens.score(y, t).flatten(1)
    lap = (r * (1 / v).sum((-2, -1))).sum(1) + (g ** 2).sum(1) - (r * ((c[:, None] / v) ** 2).sum((-2, -1))).sum(1)
    fld = ExactEnergy(dens, T_MAX, T_MIN)
    grad, quad = fld.grad_and_laplacian(y, t, None, max_batch=100)   # chunked: 100 // 6 basis vectors per pass
    assert torch.allclose(quad[:, 0], lap, rtol=1e-10)
    assert torch.allclose(grad, dens.score(y, t), rtol=1e-10)
    rng = np.random.default_rng(0)
    probes = torch.from_numpy(rng.integers(0, 2, (len(y), 4000, 1, 8, 8)) * 2.0 - 1.0)
    _, q = fld.grad_and_laplacian(y, t, probes)
    se = q.std(1) / math.sqrt(q.shape[1])
    assert torch.all((q.mean(1) - lap).abs() < 4 * se)


class FieldModule(torch.nn.Module):
    """The exact field energy behind the model interface (float64; c = 0)."""

    def __init__(self, dens):
        super().__init__()
        self.dens = dens
        self.dummy = torch.nn.Parameter(torch.zeros((), dtype=torch.float64))

    def energy(self, y, t):
        return self.dens.energy(y, t) + 0 * self.dummy


def test_model_adapter_matches_the_exact_adapter(field):
    dens, x, truth = field
    model, exact = ModelEnergy(FieldModule(dens), 0.0, T_MAX, T_MIN), ExactEnergy(dens, T_MAX, T_MIN)
    assert model.dtype == torch.float64
    for name, opts in [("one-shot", {}), ("mse-bound", dict(n_t=8, n_noise=2)), ("sde", dict(n_t=8, paths=2)),
                       ("ode", dict(trace="hutchinson", probes=2, rtol=1e-3, atol=1e-3))]:
        a = estimate(name, model, x, seed=3, **opts)
        b = estimate(name, exact, x, seed=3, **opts)
        np.testing.assert_allclose(a.nll_nats, b.nll_nats, rtol=1e-9, err_msg=name)
        assert a.nfe == b.nfe
    np.testing.assert_allclose(estimate("one-shot", model, x).nll_nats, truth, rtol=1e-12)


def test_one_shot_adds_c_and_costs_one_evaluation():
    class Shifted(FieldModule):
        def energy(self, y, t):
            return super().energy(y, t) - 5.0

    dens = FieldDensity(8)
    x = torch.from_numpy(dens.sample(3, seed=1, part=1))
    est = estimate("one-shot", ModelEnergy(Shifted(dens), 5.0, T_MAX, T_MIN), x)
    np.testing.assert_allclose(est.nll_nats, dens.energy(x.double(), 0.0).numpy(), rtol=1e-12)
    assert est.nfe == 1 and est.seconds >= 0 and np.all(est.se_nats == 0)


def test_noise_is_per_image_so_batching_does_not_matter(field):
    dens, x, _ = field
    fld = ExactEnergy(dens, T_MAX, T_MIN)
    keys = np.arange(10, 10 + len(x))
    for name, opts in [("mse-bound", dict(n_t=8, n_noise=2)), ("sde", dict(n_t=8, paths=2))]:
        whole = estimate(name, fld, x, keys=keys, seed=5, **opts).nll_nats
        parts = np.concatenate([estimate(name, fld, x[a:a + 3], keys=keys[a:a + 3], seed=5, **opts).nll_nats
                                for a in (0, 3)])     # batches of 3 and 1
        np.testing.assert_allclose(whole, parts, rtol=1e-12)
        other = estimate(name, fld, x, keys=keys, seed=6, **opts).nll_nats
        assert not np.allclose(whole, other)


def test_bad_names_and_options_are_errors(field):
    dens, x, _ = field
    fld = ExactEnergy(dens, T_MAX, T_MIN)
    assert ESTIMATORS == ("one-shot", "mse-bound", "ode", "sde")
    with pytest.raises(DsmError, match="unknown value 'dde'"):
        estimate("dde", fld, x)
    with pytest.raises(DsmError, match="unknown option.*n_paths"):
        estimate("sde", fld, x, n_paths=3)
    with pytest.raises(DsmError, match="t_lo"):
        estimate("sde", fld, x, t_lo=20.0)
    with pytest.raises(DsmError, match="gaussian needs"):
        Prior("gaussian")
    with pytest.raises(DsmError, match="no energy"):
        ModelEnergy(torch.nn.Linear(2, 2), 0.0, 1.0, 1e-3)
    assert isinstance(fld, EnergyField)


# --- the comparison table and figure ------------------------------------------------------

def _per_image(exact: bool):
    """Two images, one-shot (deterministic) and sde (2 repeats), known numbers in dB/dim."""
    import pandas as pd

    rows = []
    for density in ("model", "exact") if exact else ("model",):
        for img, truth in ((0, 1.0), (1, 3.0)):
            one = truth + (0.5 if density == "model" else 0.0)
            rows.append(dict(density=density, estimator="one-shot", repeat=0, image_index=img, logp_db_per_dim=one,
                             seconds=0.001, cpu_seconds=0.0005, nfe=1.0, se_nats=0.0))
            for r, dev in ((0, -0.1), (1, 0.3)):
                rows.append(dict(density=density, estimator="sde", repeat=r, image_index=img,
                                 logp_db_per_dim=truth + dev, seconds=0.5, cpu_seconds=0.2, nfe=40.0, se_nats=2.0))
    df = pd.DataFrame(rows)
    df["exact_logp_db_per_dim"] = df["image_index"].map({0: 1.0, 1: 3.0}) if exact else np.nan
    one = df[df.estimator == "one-shot"][["density", "image_index", "logp_db_per_dim"]]
    df = df.merge(one.rename(columns={"logp_db_per_dim": "one_shot_logp_db_per_dim"}), on=["density", "image_index"])
    return df.assign(d=64, options="", image_id=df["image_index"].astype(str))


def test_summary_columns_from_known_numbers(tmp_path):
    from dsm.analysis.estimators import summarize
    from dsm.figures.estimators import fig_estimators
    from dsm.figures.output import save_figure

    s = summarize(_per_image(True), tolerance_db=0.05).set_index(["density", "estimator"])
    sde, one = s.loc[("model", "sde")], s.loc[("model", "one-shot")]
    assert one["bias_db_per_dim"] == pytest.approx(0.5) and one["sd_repeats_db_per_dim"] == 0
    assert sde["bias_db_per_dim"] == pytest.approx(0.1)               # mean of -0.1 and 0.3
    assert sde["bias_se_db_per_dim"] == pytest.approx(0.0)            # both images err 0.1 on average
    assert sde["rms_error_db_per_dim"] == pytest.approx(math.sqrt((0.01 + 0.09) / 2))
    assert sde["sd_repeats_db_per_dim"] == pytest.approx(math.sqrt(0.08))   # sd of (-0.1, 0.3)
    assert sde["diff_one_shot_db_per_dim"] == pytest.approx(-0.4)
    assert sde["one_shot_speedup"] == pytest.approx(500) and sde["one_shot_speedup_cpu"] == pytest.approx(400)
    assert sde["mc_se_db_per_dim"] == pytest.approx(2.0 * 10 / (64 * math.log(10)))
    assert sde["repeats"] == 2 and sde["n_images"] == 2 and sde["images_per_second"] == pytest.approx(2.0)
    assert s.loc[("exact", "sde"), "within_tolerance"] is False                 # 0.1 > 0.05 + 3·0
    assert s.loc[("exact", "one-shot"), "within_tolerance"] is True
    assert sde["within_tolerance"] is None and np.isnan(sde["tolerance_db_per_dim"])
    assert save_figure(fig_estimators(s.reset_index(), _per_image(True)), tmp_path / "a.pdf").stat().st_size > 0
    # a source without an exact density: no bias columns, the figure against the one-shot value
    s2 = summarize(_per_image(False), tolerance_db=0.05)
    assert "bias_db_per_dim" not in s2 and "within_tolerance" not in s2 and set(s2["density"]) == {"model"}
    assert save_figure(fig_estimators(s2, _per_image(False)), tmp_path / "b.pdf").stat().st_size > 0


# --- the pipeline stage at the smoke scale ------------------------------------------------

@pytest.mark.slow
def test_estimators_stage_builds_at_the_smoke_scale(smoke_all):
    """`snakemake all` at the smoke scale (tests/conftest.py) builds figures/estimators.pdf:
    prepare, the full model, its normalization, the comparison and the figure; the exact
    rows recover the exact log p."""
    import pandas as pd

    repo = smoke_all
    assert (repo / "figures/estimators.pdf").read_bytes()[:5] == b"%PDF-"
    csv = pd.read_csv(repo / "results/smoke/estimators.csv")
    assert sorted(zip(csv.density, csv.estimator)) == sorted((d, e) for d in ("model", "exact") for e in ESTIMATORS)
    exact, model = csv[csv.density == "exact"], csv[csv.density == "model"]
    # the deterministic rows must meet the stated tolerance; the random ones (4 images, a few
    # draws: a standard error of 3 degrees of freedom) within 5 of their standard errors
    det = exact[exact.estimator.isin(["one-shot", "ode"])]
    assert det["within_tolerance"].astype(bool).all(), exact.to_string()
    rnd = exact[exact.estimator.isin(["mse-bound", "sde"])]
    assert (rnd["bias_db_per_dim"].abs() <= rnd["tolerance_db_per_dim"] + 5 * rnd["bias_se_db_per_dim"]).all()
    assert model["within_tolerance"].isna().all() and model["bias_db_per_dim"].notna().all()
    one = csv[csv.estimator == "one-shot"]
    assert (one["nfe_per_image"] == 1).all() and (one["sd_repeats_db_per_dim"] == 0).all()
    ode_model = model[model.estimator == "ode"].iloc[0]
    assert ode_model["one_shot_speedup"] > 10 and ode_model["nfe_per_image"] > 10
    assert "trace=hutchinson" in ode_model["options"] and "trace=exact" in exact[exact.estimator == "ode"].iloc[0]["options"]
    per_image = pd.read_parquet(repo / "results/smoke/estimators-images.parquet")
    assert set(per_image["repeat"]) == {0, 1} and per_image["exact_logp_db_per_dim"].notna().all()
