import math

import numpy as np
import pytest
from scipy import stats

from processor.gaussian import Gaussian, band_half_width, log_pdf


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
