"""The energy's y-independent term c(t) (dsm.nets.offset) and the κ(t) diagnostic
(dsm.analysis.timescore): closed forms, finite differences, the model file."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from dsm.analysis.timescore import homogeneity_defect, kappa_curve
from dsm.errors import DsmError
from dsm.nets import build_model
from dsm.objectives import denoising_score_matching_loss

D = 64   # 1 x 8 x 8


def tiny(offset="learned", grad_mode="autograd", impl="autograd", seed=0, **over):
    torch.manual_seed(seed)
    cfg = dict(kind="energy", widths=[4, 8], mid_width=8, layers_per_block=2, embedding="log",
               log_t_floor=1e-5, offset=offset, offset_variance=0.05, grad_mode=grad_mode, impl=impl)
    cfg.update(over)
    return build_model(cfg, 1, 8).double()


def perturb_offset(model, seed=1):
    """A learned offset starts at zero; give it a non-trivial c(t) for the tests."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.offset.parameters():
            p.copy_(0.3 * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return model


def inputs(seed=0):
    g = torch.Generator().manual_seed(seed)
    y = torch.randn(3, 1, 8, 8, generator=g, dtype=torch.float64)
    return y, torch.tensor([1e-4, 0.3, 20.0], dtype=torch.float64)


PATHS = [(gm, impl) for gm in ("autograd", "embedding") for impl in ("autograd", "fused")]


@pytest.mark.parametrize("offset", ["learned", "analytic"])
@pytest.mark.parametrize("grad_mode,impl", PATHS)
def test_time_score_includes_the_offset(offset, grad_mode, impl):
    model = tiny(offset, grad_mode, impl)
    if offset == "learned":
        perturb_offset(model)
    y, t = inputs()
    _, gy, gt = model.energy_and_scores(y, t)
    h = 1e-6
    fd = (model.energy(y, t * (1 + h)) - model.energy(y, t * (1 - h))) / (2 * h * t)
    assert torch.allclose(gt, fd, rtol=1e-6, atol=1e-6 * fd.abs().max().item())
    # the offset's own share of the time score is not negligible here (the test can fail)
    c = lambda tt: model.offset_energy(tt, D)  # noqa: E731
    dc = (c(t * (1 + h)) - c(t * (1 - h))) / (2 * h * t)
    assert dc.abs().max() > 1e-3 * gt.abs().max()


@pytest.mark.parametrize("offset", ["learned", "analytic"])
def test_the_offset_leaves_the_space_score_and_denoiser_alone(offset):
    with_offset = perturb_offset(tiny(offset)) if offset == "learned" else tiny(offset)
    without = tiny("off")
    without.net.load_state_dict(with_offset.net.state_dict())
    y, t = inputs()
    u1, gy1, _ = with_offset.energy_and_scores(y, t)
    u0, gy0, _ = without.energy_and_scores(y, t)
    assert torch.allclose(gy1, gy0, rtol=1e-12, atol=1e-12)
    assert torch.allclose(with_offset.denoise(y, t), without.denoise(y, t), atol=1e-12)
    assert torch.allclose(u1 - u0, with_offset.offset_energy(t, D), rtol=1e-10, atol=1e-10)


def test_analytic_offset_closed_form():
    model = tiny("analytic")
    t = torch.tensor([0.0, 1e-3, 1.0, 100.0], dtype=torch.float64)
    expected = 0.5 * D * torch.log(t + 0.05)
    assert torch.allclose(model.offset_energy(t, D), expected, rtol=1e-12)


def test_learned_offset_starts_at_zero():
    y, t = inputs()
    with_offset, without = tiny("learned"), tiny("off")
    without.net.load_state_dict(with_offset.net.state_dict())
    assert torch.equal(with_offset.offset_energy(t, D), torch.zeros_like(t))
    assert torch.allclose(with_offset.energy(y, t), without.energy(y, t), rtol=0, atol=0)


def test_analytic_offset_needs_a_positive_variance():
    with pytest.raises(DsmError, match="offset_variance"):
        tiny("analytic", offset_variance=0.0)


def test_model_file_records_the_offset(tmp_path):
    from dsm.modelfile import load_model, write_model_file

    model = perturb_offset(tiny("learned")).float()
    cfg = dict(kind="energy", widths=[4, 8], mid_width=8, layers_per_block=2, embedding="log",
               log_t_floor=1e-5, offset="learned", grad_mode="autograd", impl="autograd")
    path = write_model_file(tmp_path / "model.pt", model, cfg, (1, 8, 8), {}, "h", {})
    back, payload = load_model(path)
    assert payload["model_cfg"]["offset"] == "learned"
    assert any(k.startswith("offset.") for k in payload["model"])
    y, t = (v.float() for v in inputs())
    with torch.no_grad():
        assert torch.equal(back.energy(y, t), model.energy(y, t))


def test_dsm_loss_trains_an_energy_model():
    """train.loss: dsm on an energy model: the loss is the DSM term of the dual loss and
    its parameter gradient is that of the same expression written out by hand."""
    model = tiny("off")
    x, t = inputs()
    z = torch.randn_like(x)
    terms = denoising_score_matching_loss(model, x, t, z)
    terms["loss"].backward()
    got = [p.grad.clone() for p in model.parameters() if p.grad is not None]
    assert got and all(torch.isfinite(g).all() for g in got)
    assert sum(float(g.abs().sum()) for g in got) > 0
    model.zero_grad()
    y = (x + t.sqrt()[:, None, None, None] * z).requires_grad_(True)
    (gy,) = torch.autograd.grad(model.energy(y, t).sum(), y, create_graph=True)
    manual = ((t.sqrt()[:, None, None, None] * gy - z).flatten(1).pow(2).sum(1) / D).mean()
    assert torch.allclose(terms["loss"], manual, rtol=1e-12)
    manual.backward()
    ref = [p.grad for p in model.parameters() if p.grad is not None]
    assert all(torch.allclose(a, b, rtol=1e-9, atol=1e-12) for a, b in zip(got, ref))


# --- kappa ------------------------------------------------------------------------------

class GaussianEnergy(torch.nn.Module):
    """Exact energy of N(mu, diag(lam) + t I): -log p, with or without its log-det term."""

    def __init__(self, lam, mu=0.0, with_logdet=True):
        super().__init__()
        self.lam, self.mu, self.with_logdet = torch.as_tensor(lam, dtype=torch.float64), mu, with_logdet
        self._p = torch.nn.Parameter(torch.zeros((), dtype=torch.float64))  # device/dtype probe

    def energy(self, y, t):
        v = self.lam + t[:, None]
        r = (y.flatten(1) - self.mu)
        u = 0.5 * (r ** 2 / v).sum(1)
        if self.with_logdet:
            u = u + 0.5 * torch.log(2 * math.pi * v).sum(1)
        return u

    def energy_and_scores(self, y, t):
        with torch.enable_grad():
            y = y.detach().requires_grad_(True)
            t = t.detach().requires_grad_(True)
            u = self.energy(y, t)
            gy, gt = torch.autograd.grad(u.sum(), (y, t))
        return u.detach(), gy, gt


LAM = np.geomspace(1e-3, 1.0, D)


def gaussian_images(n=200, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((n, D)) * np.sqrt(LAM)).reshape(n, 1, 8, 8).astype(np.float32)


def test_kappa_is_one_for_the_exact_energy_and_zero_for_a_homogeneous_one():
    exact = GaussianEnergy(LAM)
    x = gaussian_images()
    grid = [1e-3, 1e-1, 10.0]
    same = kappa_curve(exact, exact, x, grid)
    assert np.allclose(same["kappa"], 1.0, atol=1e-12)
    assert np.allclose(same["time_err_nats_per_dim"], 0.0, atol=1e-12)
    homogeneous = kappa_curve(GaussianEnergy(LAM, with_logdet=False), exact, x, grid)
    assert np.allclose(homogeneous["kappa"], 0.0, atol=1e-9)
    # the exact slope is d/d ln t of ½ Σ ln(λ + t) = ½ Σ t / (λ + t): a closed form
    for t, slope in zip(grid, same["slope_exact"]):
        assert slope == pytest.approx(0.5 * np.sum(t / (LAM + t)), rel=1e-3)


def test_homogeneity_defect_of_a_homogeneous_part_plus_analytic_offset_is_the_offset():
    model = tiny("analytic", activation="relu", norm_eps_mode="relative")
    y, t = inputs()
    # ReLU + relative eps: ½⟨y, f⟩ is exactly homogeneous of degree 2 in y, so S = c(t)
    s = homogeneity_defect(model, y, t)
    assert torch.allclose(s, model.offset_energy(t, D), rtol=1e-6, atol=1e-6)
