"""Objectives against closed forms for Gaussian data N(mu, sigma² I) (docs/theory.md#objectives).

For Gaussian data the noisy energy is exact:
    U(y, t) = ||y - mu||² / (2 (sigma² + t)) + (d/2) log(2 pi (sigma² + t)),
and with s = sigma² + t the irreducible (minimum) expected values of the two terms are
    DSM*(t) = sigma² / s
    TSM*(t) = (2 sigma⁴ (sigma² + 2t)² + 2 t² sigma⁴ + 4 sigma² t³) / (4 d s⁴)
(write y - mu = sigma n + sqrt(t) z; the DSM residual is sigma (sqrt(t) n - sigma z)/s,
the TSM residual is a quadratic form in (n, z) of mean 0 whose variance gives TSM*).
"""

import math

import pytest
import torch
from torch import nn

from dsm.errors import DsmError
from dsm.nets import EnergyModel, ScoreModel, build_network
from dsm.objectives import denoising_score_matching_loss, dual_score_matching_loss, sample_noise_levels

torch.set_num_threads(1)
F64 = torch.float64


class GaussianEnergy(nn.Module):
    """U = ||y - mu||² / (2 (a + t)) + (d/2) log(2 pi (b + t)), a = e^p, b = e^q.

    Exact for N(mu, sigma² I) data when a = b = sigma². Only .energy is defined, so the
    objective's generic autograd route is what gets tested.
    """

    def __init__(self, d, mu, var_quad, var_log):
        super().__init__()
        self.d, self.mu = d, mu
        self.p = nn.Parameter(torch.tensor(math.log(var_quad), dtype=F64))
        self.q = nn.Parameter(torch.tensor(math.log(var_log), dtype=F64))

    def energy(self, y, t):
        r2 = (y - self.mu).flatten(1).pow(2).sum(1)
        return r2 / (2 * (self.p.exp() + t)) + 0.5 * self.d * torch.log(2 * math.pi * (self.q.exp() + t))

    def score(self, y, t):  # exact analytic score, for the score-only loss
        return (y - self.mu) / (self.p.exp() + t).reshape(-1, *([1] * (y.dim() - 1)))


def dsm_min(sig2, t):
    return sig2 / (sig2 + t)


def tsm_min(sig2, t, d):
    s = sig2 + t
    return (2 * sig2**2 * (sig2 + 2 * t) ** 2 + 2 * t**2 * sig2**2 + 4 * sig2 * t**3) / (4 * d * s**4)


def gaussian_batch(n, d, mu, sig2, t, seed):
    g = torch.Generator().manual_seed(seed)
    x = mu + math.sqrt(sig2) * torch.randn(n, d, generator=g, dtype=F64)
    z = torch.randn(n, d, generator=g, dtype=F64)
    return x, torch.full((n,), float(t), dtype=F64), z


D, MU, SIG2 = 8, 0.3, 0.5


def test_noise_levels_log_uniform_and_seeded():
    from scipy import stats

    t = sample_noise_levels(20000, 1e-9, 1e3, generator=torch.Generator().manual_seed(0))
    assert t.dtype == torch.float32 and t.shape == (20000,)
    assert t.min() >= 1e-9 * (1 - 1e-6) and t.max() <= 1e3 * (1 + 1e-6)
    u = (t.double().log() - math.log(1e-9)) / (math.log(1e3) - math.log(1e-9))
    assert stats.kstest(u.numpy(), "uniform").pvalue > 1e-3
    t2 = sample_noise_levels(20000, 1e-9, 1e3, generator=torch.Generator().manual_seed(0))
    assert torch.equal(t, t2)
    with pytest.raises(DsmError, match="t_min"):
        sample_noise_levels(4, 0.0, 1.0)


def test_exact_energy_partials_match_the_closed_form():
    model = GaussianEnergy(D, MU, SIG2, SIG2)
    x, t, z = gaussian_batch(5, D, MU, SIG2, 0.7, seed=0)
    y = (x + t.sqrt()[:, None] * z).requires_grad_(True)
    tt = t.clone().requires_grad_(True)
    gy, gt = torch.autograd.grad(model.energy(y, tt).sum(), (y, tt))
    s = SIG2 + 0.7
    torch.testing.assert_close(gy, (y - MU).detach() / s)
    r2 = (y.detach() - MU).pow(2).sum(1)
    torch.testing.assert_close(gt, -r2 / (2 * s**2) + D / (2 * s))


@pytest.mark.parametrize("t", [1e-3, 0.1, 1.0, 30.0])
def test_exact_energy_reaches_the_irreducible_loss(t):
    n = 20000
    model = GaussianEnergy(D, MU, SIG2, SIG2)
    x, tt, z = gaussian_batch(n, D, MU, SIG2, t, seed=1)
    per = dual_score_matching_loss(model, x, tt, z, reduction="none")
    for key, expected in (("dsm", dsm_min(SIG2, t)), ("tsm", tsm_min(SIG2, t, D))):
        v = per[key].detach()
        se = v.std() / math.sqrt(n)
        assert abs(v.mean() - expected) < 4 * se, (key, v.mean().item(), expected, se.item())
    # The score-only loss with the exact score has the same DSM term.
    dsm_only = denoising_score_matching_loss(model, x, tt, z, reduction="none")["dsm"].detach()
    torch.testing.assert_close(dsm_only, per["dsm"].detach())


def test_perturbed_energy_has_larger_loss_and_constants_do_not_matter():
    n = 20000
    g = torch.Generator().manual_seed(2)
    x = MU + math.sqrt(SIG2) * torch.randn(n, D, generator=g, dtype=F64)
    z = torch.randn(n, D, generator=g, dtype=F64)
    t = sample_noise_levels(n, 1e-3, 1e2, generator=g, dtype=F64)

    def loss(model):
        return {k: v.detach() for k, v in dual_score_matching_loss(model, x, t, z, reduction="none").items()}

    def significantly_larger(a, b):  # paired over the same (x, t, z): mean(a - b) > 4 SE
        diff = a - b
        return diff.mean() > 4 * diff.std() / math.sqrt(n)

    best = loss(GaussianEnergy(D, MU, SIG2, SIG2))
    wrong_quad = loss(GaussianEnergy(D, MU, 1.3 * SIG2, SIG2))  # wrong space score
    wrong_log = loss(GaussianEnergy(D, MU, SIG2, 1.3 * SIG2))  # wrong t-dependent level
    assert significantly_larger(wrong_quad["dsm"], best["dsm"])
    assert significantly_larger(wrong_quad["loss"], best["loss"])
    torch.testing.assert_close(wrong_log["dsm"], best["dsm"])
    assert significantly_larger(wrong_log["tsm"], best["tsm"])
    assert significantly_larger(wrong_log["loss"], best["loss"])

    class Shifted(GaussianEnergy):  # U + const: same density up to normalization
        def energy(self, y, t):
            return super().energy(y, t) + 123.0

    shifted = loss(Shifted(D, MU, SIG2, SIG2))
    for k in best:
        torch.testing.assert_close(shifted[k], best[k], rtol=1e-12, atol=0)


def test_loss_trains_a_small_family_to_the_gaussian_optimum():
    # Both variances start 4x too large; DSM pins the quadratic one, TSM the log one.
    torch.manual_seed(0)
    model = GaussianEnergy(D, MU, 2.0, 2.0)
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=100, gamma=0.5)
    g = torch.Generator().manual_seed(3)
    for _ in range(400):
        x = MU + math.sqrt(SIG2) * torch.randn(256, D, generator=g, dtype=F64)
        z = torch.randn(256, D, generator=g, dtype=F64)
        t = sample_noise_levels(256, 1e-2, 1e1, generator=g, dtype=F64)
        opt.zero_grad()
        dual_score_matching_loss(model, x, t, z)["loss"].backward()
        opt.step()
        sched.step()
    assert model.p.exp().item() == pytest.approx(SIG2, rel=0.03)
    assert model.q.exp().item() == pytest.approx(SIG2, rel=0.03)


class FlatNet(nn.Module):
    """s(y, t) = W y / (1 + t) on vectors (B, d): a non-image model for the interface."""

    def __init__(self, d):
        super().__init__()
        self.w = nn.Parameter(torch.randn(d, d, dtype=F64) / math.sqrt(d))

    def forward(self, y, t):
        return (y @ self.w.T) / (1 + t[:, None])


def test_objectives_accept_flat_vectors():
    x, t, z = gaussian_batch(6, D, MU, SIG2, 0.5, seed=4)
    for loss_fn, model in ((dual_score_matching_loss, EnergyModel(FlatNet(D))),
                           (denoising_score_matching_loss, ScoreModel(FlatNet(D)))):
        terms = loss_fn(model, x, t, z)
        assert terms["loss"].shape == () and torch.isfinite(terms["loss"])
        terms["loss"].backward()
        assert model.net.w.grad is not None and model.net.w.grad.abs().sum() > 0


def tiny_energy_model(grad_mode="autograd", impl="autograd", **over):
    torch.manual_seed(0)
    cfg = {"widths": [4, 8], "mid_width": 8, "impl": impl, **over}
    return EnergyModel(build_network(cfg, 1, 8).double(), grad_mode=grad_mode)


def loss_and_grads(model, kind="energy", seed=6):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(4, 1, 8, 8, generator=g, dtype=F64)
    z = torch.randn(4, 1, 8, 8, generator=g, dtype=F64)
    t = sample_noise_levels(4, 1e-9, 1e3, generator=g, dtype=F64)
    loss_fn = dual_score_matching_loss if kind == "energy" else denoising_score_matching_loss
    terms = loss_fn(model, x, t, z)
    model.zero_grad()
    terms["loss"].backward()
    return {k: v.detach() for k, v in terms.items()}, [p.grad.clone() for p in model.parameters()]


FAST_PATHS = [("autograd", "fused"), ("embedding", "autograd"), ("embedding", "fused")]
NET_VARIANTS = [{"embedding": "linear"}, {"embedding": "log"},
                {"activation": "relu", "norm_eps": 0.0}, {"norm_eps_mode": "relative"}]


@pytest.mark.parametrize("grad_mode,impl", FAST_PATHS)
@pytest.mark.parametrize("over", NET_VARIANTS, ids=["linear", "log", "relu-eps0", "relative-eps"])
def test_optimised_paths_match_the_reference(grad_mode, impl, over):
    # Same loss terms and the same parameter gradients (through the double backward)
    # as plain autograd everywhere, to float64 precision.
    ref_terms, ref_grads = loss_and_grads(tiny_energy_model("autograd", "autograd", **over))
    terms, grads = loss_and_grads(tiny_energy_model(grad_mode, impl, **over))
    for k in ref_terms:
        torch.testing.assert_close(terms[k], ref_terms[k], rtol=1e-10, atol=1e-14)
    for a, b in zip(grads, ref_grads):
        torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-12)


def test_fused_norm_matches_reference_for_the_score_model():
    nets = [tiny_energy_model(impl=impl).net for impl in ("autograd", "fused")]
    (ref_terms, ref_grads), (terms, grads) = (loss_and_grads(ScoreModel(n), "score") for n in nets)
    torch.testing.assert_close(terms["loss"], ref_terms["loss"], rtol=1e-12, atol=0)
    for a, b in zip(grads, ref_grads):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-13)


def test_dual_loss_terms_for_the_unet():
    model = tiny_energy_model()
    g = torch.Generator().manual_seed(7)
    x = torch.rand(16, 1, 8, 8, generator=g, dtype=F64)
    z = torch.randn(16, 1, 8, 8, generator=g, dtype=F64)
    t = sample_noise_levels(16, 1e-9, 1e3, generator=g, dtype=F64)
    terms = dual_score_matching_loss(model, x, t, z)
    assert set(terms) == {"loss", "dsm", "tsm"}
    # DSM is O(1) at init (||z||²/d when the score is small); TSM need not be: with the
    # released linear-t embedding, ∂_t U grows with t (features sin(2π f t)).
    assert 0.1 < terms["dsm"].item() < 10 and torch.isfinite(terms["tsm"])
    torch.testing.assert_close(terms["loss"], terms["dsm"] + terms["tsm"])
