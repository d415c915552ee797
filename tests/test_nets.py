"""Networks: architecture contract, homogeneity, Euler's identity, autograd scores.

Tiny float64 nets on 8x8 images keep this file fast on one CPU thread.
"""

import math

import pytest
import torch

from dsm.errors import DsmError
from dsm.nets import EnergyModel, ScoreModel, build_model, build_network
from dsm.nets.embedding import NoiseEmbedding

torch.set_num_threads(1)

TINY = {"widths": [4, 8], "mid_width": 8, "layers_per_block": 3}


def tiny_net(seed=0, channels=1, **over):
    torch.manual_seed(seed)
    return build_network({**TINY, **over}, channels, 8).double()


def batch(seed=1, b=3, channels=1, size=8):
    g = torch.Generator().manual_seed(seed)
    y = torch.randn(b, channels, size, size, generator=g, dtype=torch.float64)
    t = torch.exp(torch.randn(b, generator=g, dtype=torch.float64))
    return y, t


def rel(a, b):
    return ((a - b).norm() / b.norm()).item()


def test_released_parameter_count():
    # docs/theory.md#the-unet: widths 64/128/256, mid 512, 3 layers per block: about 8.65 M at 64x64.
    net = build_network({"widths": [64, 128, 256], "mid_width": 512}, 3, 64)
    n = sum(p.numel() for p in net.parameters())
    assert abs(n - 8.65e6) / 8.65e6 < 0.005, n


def test_shapes_and_channels():
    for c in (1, 3):
        net = tiny_net(channels=c)
        y, t = batch(channels=c)
        assert net(y, t).shape == y.shape


def test_image_size_not_divisible_is_a_clear_error():
    with pytest.raises(DsmError, match=r"image_size: 12 is not divisible by 2\*\*3 = 8"):
        build_network({"widths": [4, 8, 16]}, 1, 12)
    net = tiny_net()  # 2 scales -> multiples of 4
    y = torch.zeros(1, 1, 6, 6, dtype=torch.float64)
    with pytest.raises(DsmError, match="not divisible by 2\\*\\*2 = 4"):
        net(y, torch.ones(1, dtype=torch.float64))


def test_bad_config_values_name_the_key():
    with pytest.raises(DsmError, match="model.activation"):
        build_network({**TINY, "activation": "tanh"}, 1, 8)
    with pytest.raises(DsmError, match="model.embedding"):
        build_network({**TINY, "embedding": "sqrt"}, 1, 8)
    with pytest.raises(DsmError, match="model.kind"):
        build_model({**TINY, "kind": "flow"}, 1, 8)
    with pytest.raises(DsmError, match="data.channels"):
        build_network(TINY, 2, 8)


def test_build_model_kinds():
    assert isinstance(build_model({**TINY, "kind": "energy"}, 1, 8), EnergyModel)
    assert isinstance(build_model({**TINY, "kind": "score"}, 1, 8), ScoreModel)


def test_zero_input_has_zero_energy_and_score():
    # Bias-free everywhere in the image path: s(0, t) = 0 and U(0, t) = 0 exactly.
    model = EnergyModel(tiny_net())
    y = torch.zeros(2, 1, 8, 8, dtype=torch.float64)
    t = torch.tensor([1e-9, 10.0], dtype=torch.float64)
    assert torch.equal(model.net(y, t), torch.zeros_like(y))
    assert torch.equal(model.energy(y, t), torch.zeros(2, dtype=torch.float64))


HOMOGENEOUS = [
    {"activation": "relu", "norm_eps": 0.0},
    {"activation": "relu", "norm_eps": 1e-5, "norm_eps_mode": "relative"},
]


@pytest.mark.parametrize("over", HOMOGENEOUS, ids=["eps0", "relative-eps"])
def test_exact_homogeneity_and_euler(over):
    net = tiny_net(**over)
    model = EnergyModel(net)
    y, t = batch()
    s = net(y, t)
    for lam in (0.01, 0.5, 7.0):
        assert rel(net(lam * y, t), lam * s) < 1e-12
    # Euler's identity for a degree-2 homogeneous U: <y, grad U> = 2U.
    u = model.energy(y, t)
    g = model.score(y, t)
    lhs = (y * g).flatten(1).sum(1)
    torch.testing.assert_close(lhs, 2 * u, rtol=1e-12, atol=0)


def test_score_is_not_the_network_output_at_init():
    # grad U = ½(s + Jᵀy) equals s only for a symmetric Jacobian, which a random
    # network does not have (docs/theory.md#energy-from-a-score-network: relative difference ≈ 0.9; here 0.85, and
    # 1.07 for a 3-scale width-16 net), although Euler's identity holds exactly above.
    net = tiny_net(**HOMOGENEOUS[0])
    y, t = batch()
    g = EnergyModel(net).score(y, t)
    assert rel(g, net(y, t)) > 0.5


def test_gelu_net_is_not_exactly_homogeneous():
    # GELU(x) = x Φ(x) is not homogeneous: features of size O(1) see its curvature, so
    # at random init s(3y) is far from 3 s(y) (measured ≈ 0.95 relative) and Euler's
    # identity fails by a similar amount. Homogeneity is then only what training
    # approaches, not a property of the architecture; the tests above use ReLU.
    net = tiny_net(activation="gelu")
    y, t = batch()
    assert rel(net(3.0 * y, t), 3.0 * net(y, t)) > 1e-3
    model = EnergyModel(net)
    u, g = model.energy(y, t), model.score(y, t)
    assert rel((y * g).flatten(1).sum(1), 2 * u) > 1e-3


@pytest.mark.parametrize("embedding", ["linear", "log", "release", "log-release"])
def test_scores_match_finite_differences(embedding):
    model = EnergyModel(tiny_net(embedding=embedding))
    y, t = batch()
    g = torch.Generator().manual_seed(5)
    v = torch.randn(y.shape, generator=g, dtype=torch.float64)
    h = 1e-5
    fd_y = (model.energy(y + h * v, t) - model.energy(y - h * v, t)) / (2 * h)
    an_y = (model.score(y, t) * v).flatten(1).sum(1)
    torch.testing.assert_close(an_y, fd_y, rtol=1e-6, atol=1e-9)
    ht = 1e-6 * t
    fd_t = (model.energy(y, t + ht) - model.energy(y, t - ht)) / (2 * ht)
    torch.testing.assert_close(model.time_score(y, t), fd_t, rtol=1e-5, atol=1e-8)


def test_energy_and_scores_agree_with_separate_calls_and_denoiser():
    model = EnergyModel(tiny_net())
    y, t = batch()
    u, gy, gt = model.energy_and_scores(y, t)
    torch.testing.assert_close(u, model.energy(y, t))
    torch.testing.assert_close(gy, model.score(y, t))
    torch.testing.assert_close(gt, model.time_score(y, t))
    torch.testing.assert_close(model.denoise(y, t), y - t[:, None, None, None] * gy)


@pytest.mark.parametrize("embedding", ["linear", "log", "release", "log-release"])
def test_embedding_grad_mode_gives_the_same_partials(embedding):
    ref = EnergyModel(tiny_net(embedding=embedding))
    alt = EnergyModel(tiny_net(embedding=embedding), grad_mode="embedding")
    y, t = batch()
    for a, b in zip(alt.energy_and_scores(y, t), ref.energy_and_scores(y, t)):
        assert not a.requires_grad
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-13)


def test_energy_works_under_inference_mode_and_score_under_no_grad():
    model = EnergyModel(tiny_net())
    y, t = batch()
    with torch.inference_mode():
        u = model.energy(y, t)
    assert u.shape == (3,) and not u.requires_grad
    with torch.no_grad():
        g = model.score(y, t)
    assert g.shape == y.shape
    with torch.inference_mode():  # e.g. an evaluator that wraps everything in it
        yi, ti = y.clone(), t.clone()
        g2, gt2, xh = model.score(yi, ti), model.time_score(yi, ti), model.denoise(yi, ti)
    torch.testing.assert_close(g2, g)
    torch.testing.assert_close(gt2, model.time_score(y, t))
    torch.testing.assert_close(xh, model.denoise(y, t))


def test_score_model_denoiser():
    model = ScoreModel(tiny_net())
    y, t = batch()
    torch.testing.assert_close(model.denoise(y, t), y - t[:, None, None, None] * model.net(y, t))


def test_log_embedding_is_finite_at_zero_and_resolves_small_t():
    lin, log = NoiseEmbedding("linear").double(), NoiseEmbedding("log").double()
    t = torch.tensor([0.0, 1e-9, 1e-6], dtype=torch.float64)
    for emb in (lin, log):
        assert torch.isfinite(emb(t)).all()
    # The released linear-t features barely change below t = 1e-3; the log-t ones do.
    f_lin, f_log = lin.features(t), log.features(t)
    assert (f_lin[1] - f_lin[2]).abs().max() < 1e-4
    assert (f_log[1] - f_log[2]).abs().max() > 0.1


def test_log_embedding_floor_maps_t0_into_the_trained_range():
    """t = 0 (the one-shot log p) must look like t_min, not like a t never trained on."""
    from dsm.nets import build_model
    from dsm.modelfile import resolve_model_cfg

    t_min = 1e-6
    emb = NoiseEmbedding("log", log_t_floor=t_min).double()
    f = emb.features(torch.tensor([0.0, t_min / 1000, t_min, 1e-3], dtype=torch.float64))
    assert (f[0] - f[1]).abs().max() < 0.01          # below the floor: all alike
    assert (f[2] - f[3]).abs().max() > 0.1           # still resolves the trained range
    old = NoiseEmbedding("log").double()             # the fixed 1e-12 floor: t = 0 sits at
    assert abs(old.features(torch.zeros(1, dtype=torch.float64))[0, 32].item()
               - math.sin(2 * math.pi * math.log(1e-12))) < 1e-3  # ln 1e-12, far below ln t_min
    with pytest.raises(DsmError):
        NoiseEmbedding("log", log_t_floor=0.0)
    # dsm train resolves a null floor to train.t_min (and leaves the linear embedding alone).
    m = resolve_model_cfg({"embedding": "log", "log_t_floor": None}, {"t_min": t_min})
    assert m["log_t_floor"] == t_min
    assert resolve_model_cfg({"embedding": "log", "log_t_floor": 1e-3}, {"t_min": t_min})["log_t_floor"] == 1e-3
    assert "log_t_floor" not in resolve_model_cfg({"embedding": "linear"}, {"t_min": t_min})
    net = build_model({**m, "widths": [4], "mid_width": 4, "layers_per_block": 2}, 1, 8).net
    assert net.embed.log_t_floor == t_min


def test_release_embedding_is_exactly_the_released_features():
    """release: cos(ω t), sin(ω t), ω = logspace(0, -2, 32) (1 down to 0.01), no 2π."""
    emb = NoiseEmbedding("release")
    omega = torch.logspace(0.0, -2.0, 32, dtype=torch.float64)
    assert omega[0].item() == 1.0 and abs(omega[-1].item() - 0.01) < 1e-15
    assert torch.equal(emb.freqs, omega.float())
    t = torch.tensor([0.0, 1e-3, 0.5, 7.0, 1e3])
    arg = t[:, None] * omega.float()
    assert torch.equal(emb.features(t), torch.cat([torch.cos(arg), torch.sin(arg)], dim=1))
    # log-release: the same frequencies of ln(t + floor); linear and log keep their 2π
    lr = NoiseEmbedding("log-release", log_t_floor=1e-5).double()
    u = torch.log(t.double() + 1e-5)[:, None] * omega.float().double()  # the buffer is float32
    torch.testing.assert_close(lr.features(t.double()), torch.cat([torch.cos(u), torch.sin(u)], dim=1))
    for kind in ("linear", "log"):
        torch.testing.assert_close(NoiseEmbedding(kind).freqs, (2 * math.pi * omega).float())


def test_log_release_floor_is_resolved_like_log():
    from dsm.train import resolve_model_cfg

    m = resolve_model_cfg({"embedding": "log-release", "log_t_floor": None}, {"t_min": 1e-5})
    assert m["log_t_floor"] == 1e-5
    assert "log_t_floor" not in resolve_model_cfg({"embedding": "release"}, {"t_min": 1e-5})
