"""The bias budget (dsm.analysis.bias) against the exact field density.

The exact density seen as a "model" has a zero budget (float precision); a wrong but
normalized density's budget adds up to its directly measured log p error (Monte Carlo
precision); the Gaussian entropy forms of the normalization have the closed-form errors.
"""

import math

import numpy as np
import pytest
import torch

from dsm.analysis.bias import ExactModel, bias_budget, normalization_error, summarize
from dsm.normalization import assumed_entropy as gaussian_entropy
from dsm.normalization import covariance_eigenvalues, mean_pixel_variance
from dsm.data.field import FieldDensity

torch.set_num_threads(1)

SIZE = 8
GRID = np.geomspace(1e-7, 10.0, 41)


@pytest.fixture(scope="module")
def field():
    dens = FieldDensity(SIZE, scales=[0.5, 1.0, 2.0], weights=[0.25, 0.5, 0.25])
    return dens, dens.sample(200, seed=3, part=1)


def test_exact_density_has_a_zero_budget(field):
    dens, x = field
    df = bias_budget(ExactModel(dens), dens, x, GRID, seed=1, n_noise=2, c_nats=0.0)
    assert list(df["t"]) == sorted(GRID)
    for col in ("ts_err", "ss_err", "cum_time_db", "cum_space_db", "cum_total_db",
                "excess_mse_per_dim", "dsm_excess", "tsm_excess", "err_mean_nats"):
        assert np.abs(df[col]).max() < 1e-12, col
    s = summarize(df)
    for key in ("time_total_db", "space_total_db", "score_total_db", "norm_err_db",
                "direct_err_db", "predicted_err_db"):
        assert abs(s[key]) < 1e-12, key
    assert s["d"] == SIZE ** 2 and s["n_images"] == 200 and s["n_noise"] == 2
    # the exact denoiser's MSE is the field's effective dimensionality: d_eff t / d
    i = int(np.argmin(np.abs(df["t"] - 1e-2)))
    deff, se = dens.d_eff(float(df["t"][i]), n=20_000)
    assert df["mmse_per_dim"][i] == pytest.approx(deff * df["t"][i] / dens.d, rel=0.1)


def test_budget_of_a_wrong_density_adds_up_to_its_error(field):
    """A normalized density with other contrast weights: c = 0 is its constant, and
    normalization + time + space terms equal the direct mean log p error at t = 0.
    The identity holds path by path (chain rule along y_t = x + √t z), so the only gap is
    the trapezoid rule in ln t and the grid's floor."""
    dens, x = field
    wrong = FieldDensity(SIZE, alpha=1.7, scales=[0.7, 1.3, 2.5], weights=[0.2, 0.3, 0.5])
    df = bias_budget(ExactModel(wrong), dens, x, GRID, seed=2, n_noise=4, c_nats=0.0)
    s = summarize(df)
    assert abs(s["direct_err_db"]) > 0.2                         # a visible error
    assert abs(s["time_total_db"]) > 0.1 and abs(s["space_total_db"]) > 0.1
    assert s["predicted_err_db"] == pytest.approx(s["direct_err_db"], abs=0.005)
    # the space term is the denoiser's doing: zero where the two denoisers agree
    assert (df["excess_mse_per_dim"] >= 0).all() and df["excess_mse_per_dim"].max() > 0


def test_normalization_error_forms():
    one = FieldDensity(SIZE, scales=[1.0], weights=[1.0])     # Gaussian: exact entropy in closed form
    t = 1.0
    h_exact = 0.5 * np.log(2 * np.pi * np.e * (one.lam + t)).sum()
    v_bar = float(one.lam.mean())
    df = normalization_error(one, t, v_bar=v_bar, cov_eigvals=one.lam.ravel()).set_index("form")
    assert df.loc["isotropic", "exact_entropy_nats"] == pytest.approx(h_exact, rel=1e-12)
    assert df.loc["isotropic", "approx_entropy_nats"] == pytest.approx(0.5 * one.d * math.log(2 * math.pi * math.e * t))
    err = df.loc["isotropic", "entropy_err_nats"]
    assert err < 0 and df.loc["isotropic", "logp_err_db_per_dim"] == pytest.approx(-10 / math.log(10) * err / one.d)
    # the data-variance form is much closer (Jensen: still not above the exact entropy)
    dv = df.loc["data_variance", "entropy_err_nats"]
    assert dv >= -1e-9 and dv < abs(err) / 10
    assert gaussian_entropy(one.d, t, "data_variance", v_bar) == pytest.approx(0.5 * one.d * math.log(2 * math.pi * math.e * (t + v_bar)))
    # v̄ from images: the field's mean pixel variance is std² E[s²]
    x = one.sample(20000, seed=0)
    assert mean_pixel_variance(x) == pytest.approx(one.std ** 2, rel=0.03)
    # the data-covariance form is exact for a Gaussian (given its covariance)
    dc = normalization_error(one, t, cov_eigvals=one.lam.ravel(), forms=("data_covariance",))
    assert abs(dc["entropy_err_nats"].iloc[0]) < 1e-9
    x = one.sample(5000, seed=1)
    est = covariance_eigenvalues(x)
    assert est.sum() == pytest.approx(one.lam.sum(), rel=0.05)
    with pytest.raises(Exception, match="norm_entropy"):
        gaussian_entropy(4, 1.0, "student")


def test_headline_rows_and_their_standard_errors(field, tmp_path):
    """The headline files (DVC metrics) are the totals, one row per term; the predicted
    error's standard error is over image-draws: as the budget holds path by path, each
    draw's predicted error is its image's direct error, so with n_noise draws per image the
    SE is the direct error's SE over sqrt(n_noise)."""
    from dsm.analysis.bias import HEADLINE_ROWS, headline
    from dsm.headline import Metric, write_metrics_dir
    from test_analysis import check_headline_dir

    dens, x = field
    wrong = FieldDensity(SIZE, alpha=1.7, scales=[0.7, 1.3, 2.5], weights=[0.2, 0.3, 0.5])
    s = summarize(bias_budget(ExactModel(wrong), dens, x, GRID, seed=2, n_noise=4, c_nats=0.0))
    h = {name.removesuffix("_err_db_per_dim"): m for name, m in headline(s).items()}
    assert set(h) == set(HEADLINE_ROWS) == {"norm", "time", "space", "score", "predicted", "direct"}
    assert h["predicted"].value == s["predicted_err_db"]
    assert h["time"].se > 0 and h["space"].se > 0
    assert h["predicted"].se == pytest.approx(s["direct_err_se_db"] / 2, rel=0.05)
    # both densities are normalized (c = 0 is the wrong one's constant): what is left at T is
    # their difference there, small as noise swamps the spectra
    assert h["norm"].value == pytest.approx(0.0, abs=1e-3)
    write_metrics_dir(tmp_path / "m", headline(s))
    assert len(check_headline_dir(tmp_path / "m")) == 6
    # a source without an exact density: the same rows, no numbers
    assert all(m == Metric(None, se=None) for m in headline({}).values())
