import math

import numpy as np
import pytest
from scipy import stats

from processor.gaussian import (
    MIN_VARIANCE,
    Gaussian,
    MultivariateGaussian,
    band_half_width,
    line_band,
    log_pdf,
    mv_log_pdf,
    whitening,
)


def test_fit_is_the_closed_form_mle():
    rng = np.random.default_rng(1)
    e = rng.normal(0.3, 2.0, size=5000)
    g = Gaussian.fit(e)
    assert g.mean == pytest.approx(np.sum(e) / len(e), rel=1e-12)
    # The MLE divides by n, not n - 1.
    assert g.var == pytest.approx(np.sum((e - e.mean()) ** 2) / len(e), rel=1e-12)


def test_fit_ignores_non_finite_and_needs_two_points():
    g = Gaussian.fit([1.0, 3.0, np.nan, np.inf])
    assert (g.mean, g.var) == (2.0, 1.0)
    with pytest.raises(ValueError):
        Gaussian.fit([1.0])


def test_log_pdf_equals_scipy():
    x = np.linspace(-10, 10, 101)
    for mean, var in [(0.0, 1.0), (0.5, 0.01), (-3.0, 7.5)]:
        ours = Gaussian(mean, var).log_pdf(x)
        np.testing.assert_allclose(ours, stats.norm.logpdf(x, mean, math.sqrt(var)), rtol=1e-12)


def test_log_pdf_broadcasts_per_element_parameters():
    x = np.array([0.0, 1.0, 2.0])
    mean = np.array([0.0, 0.5, 1.0])
    var = np.array([1.0, 2.0, 3.0])
    expected = [stats.norm.logpdf(a, m, math.sqrt(v)) for a, m, v in zip(x, mean, var)]
    np.testing.assert_allclose(log_pdf(x, mean, var), expected, rtol=1e-12)


def test_band_edge_scores_exactly_the_threshold():
    g = Gaussian(0.2, 0.5)
    thr = -4.0
    d = g.band(thr)
    assert d > 0
    np.testing.assert_allclose(g.log_pdf([g.mean - d, g.mean + d]), [thr, thr], rtol=1e-12)
    # Above the density's peak nothing is normal: the band collapses.
    assert band_half_width(np.float64(0.5), np.float64(10.0)) == 0.0


# -- l-step error vectors --------------------------------------------------------------

def _correlated(n=3000, seed=2):
    rng = np.random.default_rng(seed)
    mix = np.array([[1.0, 0.0, 0.0], [0.8, 0.6, 0.0], [0.5, 0.4, 0.7]])
    return rng.normal(size=(n, 3)) @ mix.T + [0.1, -0.2, 0.3]


def test_multivariate_fit_is_the_closed_form_mle():
    e = _correlated()
    g = MultivariateGaussian.fit(np.vstack([e, [np.nan, 0.0, 0.0]]))  # a NaN row is skipped
    np.testing.assert_allclose(g.mean, e.mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(g.cov, np.cov(e.T, bias=True), rtol=1e-12)  # 1/n, not 1/(n-1)
    with pytest.raises(ValueError):
        MultivariateGaussian.fit(e[:1])


def test_multivariate_log_pdf_equals_scipy():
    e = _correlated()
    g = MultivariateGaussian.fit(e[:2000])
    ref = stats.multivariate_normal(g.mean, g.cov).logpdf(e)
    np.testing.assert_allclose(g.log_pdf(e), ref, rtol=1e-12, atol=1e-12)


def test_multivariate_log_pdf_takes_per_row_parameters():
    e = _correlated(6)
    gs = [MultivariateGaussian.fit(_correlated(50, seed)) for seed in range(6)]
    whiten, logdet = whitening(np.array([g.cov for g in gs]))
    ours = mv_log_pdf(e, np.array([g.mean for g in gs]), whiten, logdet)
    ref = [stats.multivariate_normal(g.mean, g.cov).logpdf(x) for g, x in zip(gs, e)]
    np.testing.assert_allclose(ours, ref, rtol=1e-12)
    # Shared and per-row parameters round alike: training and streaming agree exactly.
    np.testing.assert_array_equal(gs[0].log_pdf(e), mv_log_pdf(
        e, np.tile(gs[0].mean, (6, 1)), np.tile(whitening(gs[0].cov)[0], (6, 1, 1)),
        np.full(6, whitening(gs[0].cov)[1])))


def test_degenerate_error_vectors_still_score():
    flat = MultivariateGaussian.fit(np.ones((20, 3)))  # a perfectly predicted series
    assert np.all(np.diag(flat.cov) >= MIN_VARIANCE)
    x = np.random.default_rng(3).normal(size=(100, 2))
    tied = MultivariateGaussian.fit(np.c_[x[:, 0], x[:, 0], x[:, 1]])  # singular covariance
    for g in (flat, tied):
        lpd = g.log_pdf(np.array([[1.0, 1.0, 1.0], [1.0, 1.5, 1.0]]))
        assert np.all(np.isfinite(lpd)) and lpd[0] > lpd[1]


def test_line_band_edges_score_exactly_the_threshold():
    """Along e = x * 1 - p, the band's edges are where log-PD crosses the threshold."""
    g = MultivariateGaussian.fit(_correlated())
    whiten, logdet = whitening(g.cov)
    pred = np.array([[0.3, 0.1, -0.4], [2.0, 2.5, 1.0]])
    thr = np.array([-4.5, -6.0])
    middle, half = line_band(pred + g.mean, np.stack([whiten] * 2), np.full(2, logdet), thr)
    assert np.all(half > 0)
    for sign in (-1, 1):
        x = middle + sign * half
        np.testing.assert_allclose(g.log_pdf(x[:, None] - pred), thr, rtol=1e-10)
    # The middle is the best value; above the peak density nothing is normal.
    inside = g.log_pdf(middle[:, None] - pred)
    assert np.all(inside > thr)
    assert np.all(g.log_pdf((middle + 1e-3)[:, None] - pred) < inside)
    _, none = line_band(pred + g.mean, np.stack([whiten] * 2), np.full(2, logdet),
                        np.full(2, 50.0))
    assert np.all(none == 0.0)
