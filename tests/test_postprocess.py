"""Post-processing of error streams into NAB scores: pure, causal, monotone."""

from __future__ import annotations

import numpy as np

from processor.postprocess import (
    CALIBRATION_MIN_ROWS,
    PostProcess,
    calibrated_score,
    group_incidents,
    log_likelihood,
    scores,
    standardised,
    tail_score,
)


def test_tail_score_is_monotone_and_keeps_extremes_apart() -> None:
    z = np.array([0.0, 1.0, 2.0, 5.0, 9.0, 20.0, 40.0])
    s = tail_score(z)
    assert np.all(np.diff(s) > 0)
    assert s[0] == 0.0 and s[-1] < 1.0


def test_rolling_horizon_uses_only_past_errors() -> None:
    rng = np.random.default_rng(1)
    e = rng.normal(size=400)
    base = standardised(e, np.zeros(400), np.ones(400), 100)
    changed = e.copy()
    changed[300:] += 50.0
    after = standardised(changed, np.zeros(400), np.ones(400), 100)
    np.testing.assert_array_equal(base[:300], after[:300])
    assert abs(after[300]) > 20


def test_likelihood_is_causal() -> None:
    rng = np.random.default_rng(2)
    raw = rng.uniform(0, 0.3, 2000)
    base = log_likelihood(raw, 500, 10)
    changed = raw.copy()
    changed[1500:] = 0.99
    after = log_likelihood(changed, 500, 10)
    np.testing.assert_array_equal(base[:1500], after[:1500])


def test_likelihood_flags_a_run_unusual_for_the_key_not_a_key_that_is_always_high() -> None:
    rng = np.random.default_rng(3)
    quiet = rng.uniform(0.0, 0.2, 3000)
    quiet[2500:2510] = 0.8  # a run of large errors for this key
    q = log_likelihood(quiet, 1000, 10)
    assert q[2505:2515].max() > 0.5
    assert q[1000:2500].max() < 0.5
    noisy = rng.uniform(0.6, 0.9, 3000)  # always large: nothing unusual once learnt
    assert log_likelihood(noisy, 1000, 10)[1000:].max() < 0.5


def test_likelihood_of_a_constant_stream_stays_at_its_median() -> None:
    out = log_likelihood(np.full(1000, 0.3), 200, 10)
    assert np.all(np.isfinite(out))
    np.testing.assert_allclose(out[100:], np.log(0.5) / np.log(1e-10))


def test_group_keeps_only_new_maxima() -> None:
    s = np.array([0.1, 0.5, 0.4, 0.6, 0.2, 0.0, 0.1, 0.3])
    np.testing.assert_array_equal(group_incidents(s, 3),
                                  [0.1, 0.5, 0.0, 0.6, 0.0, 0.0, 0.0, 0.3])


def test_scores_with_likelihood_stay_in_unit_interval() -> None:
    rng = np.random.default_rng(4)
    e = rng.normal(size=3000)
    e[2000] = 30.0
    e[100] = np.nan
    pp = PostProcess(horizon=500, smooth=1, group=50, likelihood=1000, likelihood_avg=10)
    out = scores(e, np.zeros(3000), np.ones(3000), pp)
    assert np.all((out >= 0) & (out <= 1))
    assert out[2000:2010].max() > np.quantile(out[1000:2000], 0.99)


def test_calibrated_score_is_causal_scale_free_and_monotone() -> None:
    rng = np.random.default_rng(4)
    z = np.abs(rng.normal(size=3000))
    base = calibrated_score(z, 0.999, 1000)
    # Nothing before there is enough history; afterwards only past rows matter.
    assert np.all(base[: CALIBRATION_MIN_ROWS] == 0.0)
    changed = z.copy()
    changed[2000:] += 30.0
    np.testing.assert_array_equal(calibrated_score(changed, 0.999, 1000)[:2001] > 0.8,
                                  np.arange(2001) == 2000)
    # A key whose errors are all 7 times larger scores the same.
    np.testing.assert_allclose(calibrated_score(7 * z, 0.999, 1000), base, rtol=1e-12)
    # At one row, a larger error scores higher, and the recent 1-in-1000 error scores 0.5.
    ref = np.quantile(z[1999 - 1000 : 1999], 0.999)
    probe = z.copy()
    probe[1999] = ref
    assert abs(calibrated_score(probe, 0.999, 1000)[1999] - 0.5) < 1e-9
    probe[1999] = 2 * ref
    assert calibrated_score(probe, 0.999, 1000)[1999] > 0.66


def test_calibration_replaces_the_tail_score_in_the_pipeline() -> None:
    rng = np.random.default_rng(5)
    e = rng.normal(size=1500)
    mean, var = np.zeros(1500), np.ones(1500)
    plain = scores(e, mean, var, PostProcess())
    calibrated = scores(e, mean, var, PostProcess(calibrate=0.99, calibrate_rows=500))
    np.testing.assert_allclose(calibrated, calibrated_score(np.abs(e), 0.99, 500))
    assert not np.allclose(plain, calibrated)


def test_short_horizons_and_histories_work_rather_than_fail() -> None:
    rng = np.random.default_rng(7)
    e = rng.normal(size=300)
    mean, var = np.zeros(300), np.ones(300)
    for pp in (PostProcess(horizon=3), PostProcess(likelihood=5),
               PostProcess(likelihood=1, likelihood_avg=1)):
        out = scores(e, mean, var, pp)
        assert out.shape == (300,) and np.all(np.isfinite(out))
    # A 3-row horizon does refit: it differs from the trained Gaussian's scores.
    assert not np.allclose(scores(e, mean, var, PostProcess(horizon=3)),
                           scores(e, mean, var, PostProcess()))
