"""The exact-likelihood `field` source: its density, scores, denoiser, entropy and d_eff."""

import math

import numpy as np
import pytest
import scipy.fft
import scipy.stats
import torch

from dsm.data.field import BLOCK, FieldDensity, dct_matrix
from dsm.errors import DsmError


@pytest.fixture(scope="module")
def mix():
    # scales close enough that the responsibilities are mixed at moderate t
    return FieldDensity(8, alpha=2.0, f0=1.0, std=0.1, scales=[0.7, 1.0, 1.4],
                        weights=[0.3, 0.4, 0.3], mean=0.5)


@pytest.fixture(scope="module")
def single():
    return FieldDensity(8, alpha=1.5, f0=0.5, std=0.2, scales=[1.3], weights=[1.0], mean=0.4)


def noisy(dens, n, t, seed=0):
    x = torch.as_tensor(dens.sample(n, seed=seed, part=7), dtype=torch.float64)
    g = torch.Generator().manual_seed(seed)
    return x, x + math.sqrt(t) * torch.randn(x.shape, generator=g, dtype=torch.float64)


def test_dct_matrix_is_scipy_orthonormal_dct():
    D = dct_matrix(8)
    x = np.random.default_rng(0).standard_normal((8, 8))
    np.testing.assert_allclose(D @ x @ D.T, scipy.fft.dctn(x, norm="ortho"), atol=1e-12)
    np.testing.assert_allclose(D @ D.T, np.eye(8), atol=1e-12)


def test_energy_is_normalized_gaussian_logpdf(single):
    """K = 1: U(y, t) equals -log N(y; μ, s² Dᵀ diag(λ) D + t I) computed independently."""
    D = dct_matrix(8)
    B = np.kron(D, D)                      # vec(D X Dᵀ) = (D ⊗ D) vec(X) (row-major)
    s2 = single.scales[0] ** 2
    for t in (0.0, 0.03):
        cov = s2 * B.T @ np.diag(single.lam.ravel()) @ B + t * np.eye(64)
        _, y = noisy(single, 5, t)
        want = -scipy.stats.multivariate_normal(np.full(64, single.mean), cov).logpdf(
            y.reshape(5, -1).numpy())
        np.testing.assert_allclose(single.energy(y, t).numpy(), want, rtol=1e-10)


def test_mixture_energy_is_logsumexp_of_components(mix):
    _, y = noisy(mix, 4, 0.01)
    comps = [FieldDensity(8, 2.0, 1.0, 0.1, [s], [1.0], 0.5) for s in mix.scales]
    logs = torch.stack([math.log(w) - c.energy(y, 0.01) for w, c in zip(mix.weights, comps)], 1)
    torch.testing.assert_close(mix.energy(y, 0.01), -torch.logsumexp(logs, 1))


@pytest.mark.parametrize("K", [1, 3])
@pytest.mark.parametrize("t", [0.0, 0.01, 1.0])
def test_entropy_matches_monte_carlo_mean_energy(mix, single, K, t):
    """MC mean of U over 10^4 fresh samples = reported entropy within 3 standard errors."""
    dens = mix if K == 3 else single
    H, se_H = dens.entropy(t, seed=1)
    _, y = noisy(dens, 10_000, t, seed=2)
    U = dens.energy(y, t).numpy()
    se = math.sqrt(U.var(ddof=1) / len(U) + se_H ** 2)
    assert abs(U.mean() - H) < 3 * se, (U.mean(), H, se)
    if K == 1:
        assert se_H == 0.0


@pytest.mark.parametrize("t", [1e-3, 0.02, 0.5])
def test_scores_match_autograd_and_finite_differences(mix, t):
    _, y = noisy(mix, 6, t, seed=3)
    tt = torch.full((6,), t, dtype=torch.float64) * torch.linspace(0.5, 2.0, 6, dtype=torch.float64)
    yg, tg = y.clone().requires_grad_(True), tt.clone().requires_grad_(True)
    gy, gt = torch.autograd.grad(mix.energy(yg, tg).sum(), (yg, tg))
    score, tscore = mix.score(y, tt), mix.time_score(y, tt)
    torch.testing.assert_close(score, gy, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(tscore, gt, rtol=1e-9, atol=1e-9)
    # central finite differences, independent of autograd
    h_t = 1e-6 * tt
    fd_t = (mix.energy(y, tt + h_t) - mix.energy(y, tt - h_t)) / (2 * h_t)
    torch.testing.assert_close(tscore, fd_t, rtol=1e-5, atol=1e-4)
    v = torch.randn(y.shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    h = 1e-6
    fd_y = (mix.energy(y + h * v, tt) - mix.energy(y - h * v, tt)) / (2 * h)
    torch.testing.assert_close((score * v).sum((1, 2, 3)), fd_y, rtol=1e-5, atol=1e-4)


def test_responsibilities_are_mixed_at_moderate_t(mix):
    """Guard that the score tests above exercise the mixture, not one component."""
    _, y = noisy(mix, 200, 0.02, seed=3)
    r = mix.responsibilities(y, 0.02)
    assert ((r > 0.05) & (r < 0.95)).any()


def test_single_scale_denoiser_is_wiener_filter(single):
    t = 0.05
    x, y = noisy(single, 4, t)
    s2lam = single.scales[0] ** 2 * single.lam
    c = scipy.fft.dctn(y.numpy()[:, 0] - single.mean, axes=(1, 2), norm="ortho")
    wiener = single.mean + scipy.fft.idctn(c * s2lam / (s2lam + t), axes=(1, 2), norm="ortho")
    np.testing.assert_allclose(single.denoise(y, t).numpy()[:, 0], wiener, atol=1e-12)
    # Tweedie: E[x|y] = y - t ∇U
    torch.testing.assert_close(single.denoise(y, t), y - t * single.score(y, t))


def test_mixture_denoiser_is_tweedie_and_beats_components(mix):
    t = 0.02
    x, y = noisy(mix, 2000, t, seed=5)
    xhat = mix.denoise(y, t)
    torch.testing.assert_close(xhat, y - t * mix.score(y, t))
    mse = ((xhat - x) ** 2).mean()
    for s in mix.scales:
        comp = FieldDensity(8, 2.0, 1.0, 0.1, [s], [1.0], 0.5)
        assert mse <= ((comp.denoise(y, t) - x) ** 2).mean() * 1.001


def test_d_eff_limits_single(single):
    d = single.d
    assert single.d_eff(0.0) == (d, 0.0)
    assert abs(single.d_eff(1e-12)[0] - d) < 1e-6
    vals = [single.d_eff(t)[0] for t in 10.0 ** np.arange(-8, 5)]
    assert all(a > b for a, b in zip(vals, vals[1:]))
    assert vals[-1] < 1e-3 * d
    s2lam = single.scales[0] ** 2 * single.lam
    assert single.d_eff(0.1)[0] == pytest.approx((s2lam / (s2lam + 0.1)).sum())


def test_d_eff_limits_mixture_and_simulation(mix):
    assert abs(mix.d_eff(1e-10)[0] - mix.d) < 1e-3
    assert mix.d_eff(1e6)[0] < 1e-3
    # eq. 11 by direct simulation agrees with the semi-closed form
    t = 0.02
    val, se = mix.d_eff(t, seed=1)
    x, y = noisy(mix, 4000, t, seed=6)
    e = (((mix.denoise(y, t) - x) ** 2).sum((1, 2, 3)) / t).numpy()
    assert abs(e.mean() - val) < 3 * math.sqrt(e.var() / len(e) + se ** 2)
    # the per-image estimator averages to the same value
    m, s = mix.d_eff_image(x[:1], t, n_noise=50)
    assert np.isfinite(m).all() and (s > 0).all()


def test_sampling_deterministic_and_chunk_independent(mix):
    a = mix.sample(BLOCK + 100, seed=3)
    b = np.concatenate([mix.sample(70, seed=3), mix.sample(BLOCK + 30, seed=3, start=70)])
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(mix.sample(10, seed=3, part=0), mix.sample(10, seed=3, part=1))
    assert a.dtype == np.float32 and a.shape == (BLOCK + 100, 1, 8, 8)


def test_sample_spectrum_matches_lambda():
    dens = FieldDensity(8, 2.0, 1.0, 0.1, [1.0], [1.0], 0.5)
    x = dens.sample(20_000, seed=0)[:, 0].astype(np.float64)
    c = scipy.fft.dctn(x - 0.5, axes=(1, 2), norm="ortho")
    np.testing.assert_allclose(c.var(0), dens.lam, rtol=0.06)
    assert x.var(0).mean() == pytest.approx(0.01, rel=0.05)     # std = 0.1 per pixel


def test_numpy_inputs(mix):
    _, y = noisy(mix, 3, 0.1)
    out = mix.energy(y.numpy(), 0.1)
    assert isinstance(out, np.ndarray)
    np.testing.assert_allclose(out, mix.energy(y, 0.1).numpy())
    assert isinstance(mix.score(y.numpy().astype(np.float32), 0.1), np.ndarray)


def test_bad_parameters():
    with pytest.raises(DsmError, match="data.field.weights"):
        FieldDensity(8, scales=[1.0, 2.0], weights=[1.0])
    with pytest.raises(DsmError, match="data.field.scales"):
        FieldDensity(8, scales=[-1.0], weights=[1.0])
    with pytest.raises(DsmError, match="expected images"):
        FieldDensity(8).energy(torch.zeros(2, 1, 4, 4), 0.1)
