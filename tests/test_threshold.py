import numpy as np
import pytest

from processor.threshold import best_fbeta_threshold, evaluate, fbeta, quantile_threshold


def test_separable_case_finds_the_gap():
    # Anomalies have log-PD -20 .. -15, normal points -5 .. 0: any threshold in (-15, -5]
    # is perfect; the search must pick one there.
    scores = np.array([-20, -18, -15, -5, -3, -1, 0, -2, -4], float)
    labels = np.array([1, 1, 1, 0, 0, 0, 0, 0, 0], bool)
    choice = best_fbeta_threshold(scores, labels, beta=1.0)
    assert -15 < choice.threshold <= -5
    assert choice.validation is not None
    assert (choice.validation.precision, choice.validation.recall) == (1.0, 1.0)


def test_small_beta_prefers_precision_over_recall():
    # Flagging the 2 lowest gives precision 1, recall 2/4; flagging 5 gives recall 1 but
    # precision 4/5. beta=0.1 must take the first, beta=10 the second.
    scores = np.array([-30, -29, -10, -9, -8, 0, 1, 2], float)
    labels = np.array([1, 1, 0, 1, 1, 0, 0, 0], bool)
    precise = best_fbeta_threshold(scores, labels, beta=0.1)
    assert -29 < precise.threshold <= -10
    thorough = best_fbeta_threshold(scores, labels, beta=10)
    assert -8 < thorough.threshold <= 0


def test_matches_brute_force_on_random_data():
    rng = np.random.default_rng(3)
    scores = np.round(rng.normal(size=400), 1)  # many ties
    labels = rng.random(400) < 0.1
    choice = best_fbeta_threshold(scores, labels, beta=0.5)
    best = max(evaluate(scores < t, labels, 0.5).fbeta or 0
               for t in [*np.unique(scores).tolist(), np.inf])
    assert choice.validation is not None
    assert choice.validation.fbeta == pytest.approx(best)


def test_requires_an_anomaly():
    with pytest.raises(ValueError):
        best_fbeta_threshold([1.0, 2.0], [False, False], beta=0.1)


def test_quantile_threshold_flags_that_share():
    scores = np.arange(1000, dtype=float)
    choice = quantile_threshold(scores, 0.01)
    assert np.sum(scores < choice.threshold) == 10
    assert choice.validation is None


def test_fbeta_and_undefined_metrics():
    assert fbeta(1.0, 1.0, 0.1) == 1.0
    m = evaluate(np.array([False, False]), np.array([False, False]), 0.1)
    assert m.precision is None and m.recall is None and m.fbeta is None
