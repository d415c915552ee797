"""Across noise levels: Table 1 (dsm.analysis.denoising), Figure 5's effective
dimensionality (dsm.analysis.dimensionality), Figure 4's contrast and sparsity
(dsm.analysis.contrast, dsm.analysis.sparsity) and Figure 1's energy landscape, against
closed forms, finite differences and known numbers.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from dsm import units
from dsm.analysis import contrast, denoising, dimensionality, sparsity
from dsm.data.exact import ExactModel
from dsm.data.field import FieldDensity
from dsm.errors import DsmError

pywt = pytest.importorskip("pywt")


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def gaussian_field(size=8):
    """A field with one contrast scale: a plain Gaussian N(μ, D diag(λ) Dᵀ)."""
    return FieldDensity(size, scales=[1.0], weights=[1.0])


# --- Table 1 ------------------------------------------------------------------------------

def test_psnr_conversions():
    assert units.psnr_db(1e-3) == pytest.approx(30.0)
    assert denoising.noise_variance(90) == pytest.approx(1e-9)
    assert denoising.noise_variance(-30) == pytest.approx(1e3)
    assert denoising.noise_variance(0) == 1.0
    s = denoising.psnr_summary(np.full(10, 1e-4))
    assert s["psnr_db"] == pytest.approx(40.0) and s["se_db"] == 0.0 and s["n_images"] == 10


def test_psnr_standard_error_matches_the_spread_of_replicates():
    """The delta-method SE of the PSNR of a mean MSE equals the spread of that PSNR over
    independent replicates (here MSEs ~ t χ²_d / d, as for an identity denoiser)."""
    rng = np.random.default_rng(0)
    t, d, n = 0.01, 16, 50

    def sample():
        return t * rng.chisquare(d, n) / d

    predicted = denoising.psnr_summary(sample())["se_db"]
    spread = np.std([denoising.psnr_summary(sample())["psnr_db"] for _ in range(2000)])
    assert predicted == pytest.approx(spread, rel=0.1)
    assert predicted == pytest.approx(10 / math.log(10) * math.sqrt(2 / d) / math.sqrt(n), rel=0.15)


def test_paired_difference_and_its_standard_error():
    rng = np.random.default_rng(1)
    b = rng.gamma(2.0, 1.0, 400)
    d = denoising.psnr_difference(2 * b, b)       # exactly half the PSNR... by 10 log10 2
    assert d["diff_db"] == pytest.approx(-10 * math.log10(2)) and d["se_db"] == pytest.approx(0.0, abs=1e-12)
    # correlated pairs: the paired SE is the spread of the difference over replicates
    diffs, ses = [], []
    for _ in range(1000):
        common = rng.gamma(2.0, 1.0, 200)
        a, b = common * rng.uniform(0.9, 1.1, 200), common * rng.uniform(0.85, 1.15, 200)
        r = denoising.psnr_difference(a, b)
        diffs.append(r["diff_db"])
        ses.append(r["se_db"])
    assert np.mean(ses) == pytest.approx(np.std(diffs), rel=0.1)


class Identity:
    def denoise(self, y, t):
        return y


def test_identity_denoiser_has_the_input_psnr():
    x = np.full((500, 1, 4, 4), 0.5, np.float32)
    z = np.random.default_rng(0).standard_normal(x.shape).astype(np.float32)
    for p in (40.0, 10.0, -10.0):
        s = denoising.psnr_summary(denoising.denoising_mse(Identity(), x, denoising.noise_variance(p), z))
        assert abs(s["psnr_db"] - p) < 3 * s["se_db"]


def test_optimal_denoiser_psnr_matches_the_closed_form():
    """On a Gaussian source the MMSE per pixel is (1/d) Σ_k λ_k t / (λ_k + t); Table 1's
    'optimal' row (the exact denoiser run like a model) must equal it within its SE."""
    f = gaussian_field()
    x = f.sample(3000, seed=3, part=1)
    z = np.random.default_rng(5).standard_normal(x.shape).astype(np.float32)
    psnrs = [45, 30, 15, 0, -15]
    mse = denoising.denoising_table({"optimal": ExactModel(f)}, x, z, psnrs, batch_size=1000, progress=False)
    summary = denoising.summarize(mse, psnrs)
    for e in summary["by_psnr"]:
        t = e["t"]
        closed = units.psnr_db(float(np.mean(f.lam * t / (f.lam + t))))
        s = e["optimal"]
        assert abs(s["psnr_db"] - closed) < 3 * s["se_db"], (e["input_psnr_db"], s, closed)
        assert s["se_db"] < 0.1


def test_tables_and_claim():
    rng = np.random.default_rng(2)
    psnrs = [90, 45, 0]
    mse = {"energy": {90.0: 1.1e-9 * rng.uniform(0.9, 1.1, 50), 45.0: 1e-5 * rng.uniform(0.9, 1.1, 50),
                      0.0: 0.01 * rng.uniform(0.9, 1.1, 50)},
           "score": {90.0: 1e-9 * rng.uniform(0.9, 1.1, 50), 45.0: 1.2e-5 * rng.uniform(0.9, 1.1, 50),
                     0.0: 0.02 * rng.uniform(0.9, 1.1, 50)}}
    s = denoising.summarize(mse, psnrs)
    assert s["claim"]["holds"] and s["claim"]["excluded_input_psnr_db"] == 90.0
    assert s["by_psnr"][0]["energy_minus_score"]["diff_db"] < 0
    md = denoising.table_markdown(s, ["energy", "score"])
    assert md.count("\n") == 5 and "| 90 | 45 | 0 |" in md and "energy − score" in md
    tex = denoising.table_latex(s, ["energy", "score"])
    assert tex.startswith(r"\begin{tabular}{lrrr}") and tex.count(r"\\") == 4
    lines = denoising.table_csv(s).splitlines()
    assert lines[0].startswith("model,input_psnr_db,t,psnr_db,se_db") and len(lines) == 7
    mse["energy"][45.0] = mse["score"][45.0] * 1.5          # energy worse at 45 dB: the claim fails
    assert not denoising.summarize(mse, psnrs)["claim"]["holds"]


# --- Figure 5: effective dimensionality -----------------------------------------------------

def per_image_closed_form(f: FieldDensity, x: np.ndarray, t: float):
    """For one Gaussian scale: E_z ||x - x̂||²/t = Σ_k (t c_k² + λ_k²)/(λ_k + t)² and
    E_z U(x + √t z, t) = ½ Σ_k [(c_k² + t)/(λ_k + t) + log 2π(λ_k + t)], c = DCT(x - μ)."""
    c = f._coef(torch.as_tensor(x, dtype=torch.float64)).numpy().reshape(len(x), -1)
    lam = f.lam.reshape(-1)
    d_eff = ((t * c ** 2 + lam ** 2) / (lam + t) ** 2).sum(1)
    energy = 0.5 * ((c ** 2 + t) / (lam + t) + np.log(2 * np.pi * (lam + t))).sum(1)
    return d_eff, energy


def test_eq11_and_eq12_agree_with_the_closed_form_on_the_exact_density():
    f = gaussian_field()
    x = f.sample(3, seed=1, part=1)
    ts = np.logspace(-6, 1, 8)
    noises = [dimensionality.draw_noise(0, i, 300, x.shape[1:]) for i in range(len(x))]
    st = dimensionality.image_curves(ExactModel(f), x, noises, ts, batch_size=900)
    for j, t in enumerate(ts):
        closed, energy = per_image_closed_form(f, x, t)
        for key in ("eq11", "eq12"):
            err = np.abs(st[key][:, j] - closed)
            assert (err <= 4 * st[key + "_se"][:, j] + 1e-9 * f.d).all(), (key, t, err, st[key + "_se"][:, j])
        assert (np.abs(st["gap"][:, j]) <= 4 * st["gap_se"][:, j] + 1e-9).all()
        assert (np.abs(st["energy"][:, j] - energy) <= 4 * st["energy_se"][:, j] + 1e-9).all()
    assert per_image_closed_form(f, x, ts[0])[0] == pytest.approx(np.full(3, f.d), rel=1e-2)  # d at t → 0
    assert (per_image_closed_form(f, x, ts[-1])[0] < 0.05 * f.d).all()                         # 0 at t → ∞


def test_average_over_images_matches_the_population_d_eff_of_the_mixture():
    """Three contrast scales: the test-set average of eq. 11 and of eq. 12 equals
    FieldDensity.d_eff (itself Monte Carlo) within the combined standard errors."""
    f = FieldDensity(8)
    x = f.sample(400, seed=2, part=1)
    ts = np.array([1e-4, 1e-3, 1e-2, 1e-1])
    noises = [dimensionality.draw_noise(7, i, 1, x.shape[1:]) for i in range(len(x))]
    avg = dimensionality.average_curve(dimensionality.image_curves(ExactModel(f), x, noises, ts, batch_size=400))
    for j, t in enumerate(ts):
        pop, pop_se = f.d_eff(float(t), n=6000, seed=1)
        for key in ("eq11", "eq12"):
            tol = 4 * math.hypot(avg[key + "_se"][j], pop_se)
            assert abs(avg[key][j] - pop) <= tol, (key, t, avg[key][j], pop, tol)


def test_eq12_is_the_log_t_derivative_of_the_energy_by_finite_differences():
    """Eq. 12 from the scores equals d - 2 dE_z[U(x + √t z, t)]/d ln t (fixed z) computed
    by finite differences, for a network that is not a true density."""
    from dsm.nets import build_model

    torch.manual_seed(0)
    model = build_model({"widths": [4, 8], "mid_width": 8, "layers_per_block": 2, "embedding": "log",
                         "log_t_floor": 1e-4}, channels=1, image_size=8).double()
    x = torch.rand(3, 1, 8, 8, dtype=torch.float64)
    z = torch.randn(3, 1, 8, 8, dtype=torch.float64)
    for t in (1e-3, 0.05, 2.0):
        vals = dimensionality.per_draw(model, x, z, t)
        h = 1e-4

        def u(log_t):
            tt = math.exp(log_t)
            with torch.no_grad():
                return model.energy(x + math.sqrt(tt) * z, torch.full((3,), tt, dtype=torch.float64)).numpy()

        deriv = (u(math.log(t) + h) - u(math.log(t) - h)) / (2 * h)
        assert vals["eq12"] == pytest.approx(64 - 2 * deriv, rel=1e-5, abs=1e-5)
        with torch.no_grad():
            xhat = model.denoise(x + math.sqrt(t) * z, torch.full((3,), t, dtype=torch.float64))
        direct = ((x - xhat) ** 2).flatten(1).sum(1).numpy() / t
        assert vals["eq11"] == pytest.approx(direct, rel=1e-6)


def test_agreement_intervals():
    ts = np.logspace(-3, 0, 4)
    ok = dimensionality.agreement(np.array([0.1, 5.0, 0.2, 10.0]), np.array([0.1, 0.1, 0.1, 0.1]), d=100,
                                  rel_tol=0.06)
    assert ok["statistical"].tolist() == [True, False, True, False]
    assert ok["practical"].tolist() == [True, True, True, False]
    assert dimensionality._intervals(ts, ok["practical"]) == [[ts[0], ts[2]]]


# --- Figure 4: sparsity and contrast ----------------------------------------------------------

def test_participation_ratio_of_a_single_coefficient_is_one_over_n():
    coeffs = pywt.wavedec2(np.zeros((16, 16)), "haar", mode="periodization", level=4)
    coeffs[2][1][0, 1] = 3.0
    img = pywt.waverec2(coeffs, "haar", mode="periodization")[None, None] + 0.5
    n = 16 * 16 - 1
    assert sparsity.image_participation_ratio(img, levels=6)[0] == pytest.approx(1 / n)
    assert sparsity.weighted_details(img, 4).shape == (1, n)


def test_participation_ratio_of_constant_magnitudes_is_one():
    rng = np.random.default_rng(0)
    coeffs = pywt.wavedec2(np.zeros((16, 16)), "haar", mode="periodization", level=4)
    # level l coefficients of magnitude 2^l: after the weighting 1/2^l all have magnitude 1
    new = [coeffs[0]] + [tuple(rng.choice([-1.0, 1.0], size=a.shape) * 0.3 * 2.0 ** (4 - k) for a in det)
                         for k, det in enumerate(coeffs[1:])]
    img = pywt.waverec2(new, "haar", mode="periodization")[None, None]
    assert sparsity.image_participation_ratio(img, levels=4)[0] == pytest.approx(1.0)
    assert sparsity.participation_ratio(np.ones((2, 7)))[1] == pytest.approx(1.0)
    assert np.isnan(sparsity.participation_ratio(np.zeros((1, 5)))[0])


def test_participation_ratio_ignores_contrast_and_brightness_and_caps_levels():
    x = FieldDensity(16).sample(5, seed=0, part=1)
    pr = sparsity.image_participation_ratio(x)
    for i in range(5):
        y = contrast.affine(x[i], [0.3, 2.0], [0.1, 0.9])
        assert sparsity.image_participation_ratio(y) == pytest.approx([pr[i], pr[i]], rel=1e-5)
    assert sparsity.wavelet_levels(16, 6) == 4 and sparsity.wavelet_levels(8, 6) == 3
    assert sparsity.wavelet_levels(64, 6) == 6 and sparsity.wavelet_levels(64, 2) == 2
    with pytest.raises(DsmError, match="wavelet"):
        sparsity.wavelet_levels(16, 3, "nonsense")


def test_affine_convention():
    x = np.random.default_rng(0).uniform(0, 1, (1, 8, 8)).astype(np.float32)
    y = contrast.affine(x, [1.0, 2.0, 0.5], [x.mean(), 0.5, 0.2])
    assert y[0] == pytest.approx(x, abs=1e-6)                       # (1, x̄) is the image itself
    for k, (a, b) in enumerate([(2.0, 0.5), (0.5, 0.2)], start=1):
        assert y[k].mean() == pytest.approx(b, abs=1e-6)            # b: the new mean
        assert y[k] - y[k].mean() == pytest.approx(a * (x - x.mean()), abs=1e-6)
    r = contrast.correlations([1, 2, 3, 4], [2, 4, 6, 100])
    assert r["pearson_r"] < 1 and r["spearman_rho"] == pytest.approx(1.0)
    assert contrast.correlations([1, 2], [1, 2])["pearson_r"] is None
    # Fisher's z interval: r = 0.5 at n = 103 -> atanh(0.5) ± 1.96 / 10
    rng = np.random.default_rng(0)
    a = rng.normal(size=103)
    b = 0.5 * a + rng.normal(size=103) * np.sqrt(0.75)
    got = contrast.correlations(a, b)
    z = np.arctanh(got["pearson_r"])
    assert got["pearson_ci95"] == pytest.approx([np.tanh(z - 0.1959964), np.tanh(z + 0.1959964)])
    assert got["pearson_ci95"][0] < got["pearson_r"] < got["pearson_ci95"][1]


# --- Figure 1: exact energy landscape --------------------------------------------------------

def test_mixture_landscape_is_exact_and_has_a_barrier_only_at_small_t():
    from scipy.stats import norm

    from dsm.figures.fig1 import energy_landscape, fig1_params, mixture_energy

    m, s, w = [-1.0, 1.0], [0.25, 0.5], [0.3, 0.7]
    y, t = np.linspace(-2, 2, 9), 0.2
    truth = -np.log(0.3 * norm.pdf(y, -1, math.sqrt(0.0625 + t)) + 0.7 * norm.pdf(y, 1, math.sqrt(0.25 + t)))
    assert mixture_energy(y, t, m, s, w) == pytest.approx(truth, rel=1e-12)
    lp = fig1_params({})["landscape"]
    ls = energy_landscape(lp)
    assert ls["U"].shape == (lp["grid"], lp["grid"])
    assert ls["barrier_direct_nats"] > 5 and ls["barrier_detour_nats"] < 0.3 * ls["barrier_direct_nats"]
    with pytest.raises(DsmError, match="fig1.landscape.means"):
        fig1_params({"fig1": {"landscape": {"means": [0.0, 0.0]}}})


# --- the command line: bad input --------------------------------------------------------------

def test_cli_errors_name_the_file_and_write_nothing(tmp_path, capsys):
    from dsm.cli import main
    from test_pipeline_util import REPO

    out = tmp_path / "table1"
    code = main(["table1", "--params", str(REPO / "params.yaml"), "--scale", "smoke", "--energy",
                 str(tmp_path / "missing.pt"), "--score", str(tmp_path / "missing.pt"), "--data",
                 str(tmp_path), "--out", str(out)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err[-1].startswith("dsm table1: error: ") and "missing.pt" in err[-1]
    assert not list(tmp_path.glob("table1*"))
    bad = tmp_path / "examples.json"
    bad.write_text(json.dumps({"rows": []}))
    with pytest.raises(DsmError, match="not an examples file"):
        dimensionality.read_examples(bad)
    with pytest.raises(DsmError, match="figures.fig5.log10_t"):
        dimensionality.fig5_params({"figures": {"fig5": {"log10_t": [1.0, -1.0]}}})
    with pytest.raises(DsmError, match="figures.fig4.contrast"):
        contrast.fig4_params({"figures": {"fig4": {"contrast": [0.0, 1.0]}}})


# --- the headline numbers (DVC metrics) of Table 1, Figures 4 and 5 --------------------------

def test_table1_headline_rows_per_input_psnr(tmp_path):
    from dsm.headline import Metric, write_metrics_dir
    from test_analysis import check_headline_dir

    rng = np.random.default_rng(2)
    mse = {name: {p: scale * rng.uniform(0.9, 1.1, 20) for p, scale in ((90.0, 1e-9), (0.0, 0.01), (-30.0, 0.2))}
           for name in ("energy", "score", "optimal")}
    s = denoising.summarize(mse, [90, 0, -30])
    h = denoising.headline(s)
    assert list(h) == ["psnr+90", "psnr+0", "psnr-30"]
    for e in s["by_psnr"]:
        row = h[denoising.row_name(e["input_psnr_db"])]
        assert row == {f"{name}_psnr_db": Metric(e[name]["psnr_db"], se=e[name]["se_db"], n=20)
                       for name in ("energy", "score", "optimal")} | {
            "energy_minus_score_psnr_db": Metric(e["energy_minus_score"]["diff_db"],
                                                 se=e["energy_minus_score"]["se_db"], n=20)}
        assert row["energy_minus_score_psnr_db"].value == pytest.approx(
            row["energy_psnr_db"].value - row["score_psnr_db"].value)
    write_metrics_dir(tmp_path / "m", h)
    files = check_headline_dir(tmp_path / "m")
    assert {str(f.relative_to(tmp_path / "m")) for f in files} >= {"psnr+90/energy_psnr_db.json",
                                                                  "psnr-30/energy_minus_score_psnr_db.json"}


def _curves(gaps, ts, inside):
    import pandas as pd

    rows = []
    for curve, kind, g in (("image 3", "reference", gaps[0]), ("test average", "average", gaps[1])):
        for t, gap, ok in zip(ts, g, inside):
            rows.append({"curve": curve, "kind": kind, "t": t, "gap": gap, "gap_se": 1.0, "d_eff_eq11": 10.0 + gap,
                         "d_eff_eq12": 10.0, "in_training_range": ok})
    return pd.DataFrame(rows)


def test_fig5_headline_and_d_eff_table(tmp_path):
    """The largest |eq.11 - eq.12| over every curve and t, and within the training range."""
    from dsm.headline import write_metrics_dir
    from test_analysis import check_headline_dir

    ts = [1e-6, 1e-3, 1.0]
    inside = np.array([False, True, True])
    df = _curves(([0.5, -2.0, 9.0], [-30.0, 1.0, 0.5]), ts, inside)
    details = {"d": 64, "model_consistency": dimensionality.curve_summary(df, 64, 0.01)}
    h = dimensionality.headline(details, df["in_training_range"])
    assert h["max_abs_gap_dims"].value == 30.0 and h["trained_max_abs_gap_dims"].value == 9.0
    assert h["agreeing_fraction"].value == pytest.approx(4 / 6)           # |gap| <= 3 SE: 0.5, -2, 1, 0.5
    assert "exact_max_abs_gap_dims" not in h
    assert dimensionality.headline(details, np.ones(6, bool))["trained_max_abs_gap_dims"].value == 30.0
    assert dimensionality.headline(details, np.zeros(6, bool))["trained_max_abs_gap_dims"].value is None
    details |= {"exact_consistency": {"largest_disagreement": {"gap": -0.25}},
                "model_vs_exact_within_training_range": {"max_abs_d_eff_eq11_error_over_d": 0.125}}
    h = dimensionality.headline(details, df["in_training_range"])
    assert h["exact_max_abs_gap_dims"].value == 0.25 and h["d_eff_max_abs_err_dims"].value == 8.0
    write_metrics_dir(tmp_path / "m", h)
    assert len(check_headline_dir(tmp_path / "m")) == 5
    table = dimensionality.d_eff_table(df.iloc[::-1])
    assert list(table.columns) == ["t", *dimensionality.D_EFF_COLUMNS] and list(table["t"]) == ts
    assert list(table["d_eff_eq11"]) == [-20.0, 11.0, 10.5] and table["exact_d_eff_eq11"].isna().all()


def test_fig4_headline(tmp_path):
    from dsm.headline import Metric, write_metrics_dir
    from test_analysis import check_headline_dir

    details = {"sparsity": {"model": {"n": 9, "pearson_r": -0.5, "spearman_rho": -0.4},
                            "exact": {"n": 9, "pearson_r": -0.6, "spearman_rho": -0.45}},
               "grid_model_minus_exact_db": {"mean": 0.1, "max_abs": 0.7}}
    assert contrast.headline(details) == {
        "pearson_r": Metric(-0.5, n=9), "spearman_rho": Metric(-0.4, n=9), "exact_pearson_r": Metric(-0.6, n=9),
        "exact_spearman_rho": Metric(-0.45, n=9), "affine_max_abs_err_db_per_dim": Metric(0.7)}
    real = {"sparsity": {"model": {"n": 2, "pearson_r": None, "spearman_rho": None}, "exact": None}}
    assert contrast.headline(real) == {"pearson_r": Metric(None, n=2), "spearman_rho": Metric(None, n=2)}
    write_metrics_dir(tmp_path / "m", contrast.headline(details))
    assert len(check_headline_dir(tmp_path / "m")) == 5
