"""The NAB scorer must reproduce NAB's published numbers, or our scoreboard means nothing."""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from processor.nab import corpus, scoring
from processor.nab.scoring import CostMatrix

NAB_DIR = Path(
    os.environ.get(
        "NAB_DATA_DIR", Path(__file__).resolve().parents[1].parent / "shared" / "data" / "nab"
    )
)
PROFILES = ("standard", "reward_low_FP_rate", "reward_low_FN_rate")
STANDARD = CostMatrix(tp_weight=1.0, fp_weight=0.11, fn_weight=1.0)
STAMPS = np.array(["2020-01-01T00:00", "2020-01-01T00:05", "2020-01-01T00:10"], "datetime64[ns]")
SIGMA_LEFT_EDGE = 2.0 / (1.0 + math.exp(-5.0)) - 1.0

needs_data = pytest.mark.skipif(not NAB_DIR.is_dir(), reason=f"no NAB data at {NAB_DIR}")


@pytest.fixture(scope="module")
def nab_corpus() -> dict[str, corpus.CorpusFile]:
    return corpus.load_corpus(NAB_DIR)


@pytest.fixture(scope="module")
def profiles() -> dict[str, CostMatrix]:
    return corpus.load_profiles(NAB_DIR)


def _score(
    scores: list[float], windows: list[tuple[int, int]], cost: CostMatrix = STANDARD
) -> scoring.FileScore:
    return scoring.score_file(np.array(scores), windows, threshold=0.5, cost=cost, probation=0)


def _one_hot(n_rows: int, *rows: int) -> list[float]:
    scores = [0.0] * n_rows
    for row in rows:
        scores[row] = 1.0
    return scores


# --- published numbers -------------------------------------------------------------------


@needs_data
@pytest.mark.parametrize("profile", PROFILES)
def test_reproduces_published_windowed_gaussian_scores(nab_corpus, profiles, profile):
    table = corpus.load_published_table(NAB_DIR, "windowedGaussian", profile).set_index("File")
    scores = corpus.load_anomaly_scores(NAB_DIR / "results", "windowedGaussian", nab_corpus)
    assert len(nab_corpus) == 35
    for name, series in nab_corpus.items():
        row = table.loc[name]
        got = scoring.score_file(
            scores[name], series.windows, float(row["Threshold"]), profiles[profile]
        )
        assert got.score == pytest.approx(row["Score"], abs=1e-6), name
        counts = (got.tp, got.tn, got.fp, got.fn, got.total_count)
        assert counts == tuple(row[["TP", "TN", "FP", "FN", "Total_Count"]]), name


@needs_data
def test_window_labels_match_published_label_column(nab_corpus):
    for name, series in nab_corpus.items():
        path = corpus.results_path(NAB_DIR / "results", "windowedGaussian", name)
        expected = corpus.load_results(path)["label"].to_numpy()
        got = corpus.window_labels(len(series.values), series.windows)
        np.testing.assert_array_equal(got, expected, err_msg=name)


@needs_data
@pytest.mark.parametrize(
    ("detector", "expected"),
    [
        ("ARTime", (67.5, 56.6, 73.5)),
        ("numenta", (66.5, 60.0, 71.0)),
        ("contextOSE", (61.2, 56.9, 66.3)),
        ("randomCutForest", (48.0, 31.7, 55.2)),
        ("windowedGaussian", (21.9, 4.9, 29.2)),
    ],
)
def test_published_scores_on_local_files(detector, expected):
    got = corpus.published_scores(NAB_DIR, detector)
    assert [got[p] for p in PROFILES] == pytest.approx(list(expected), abs=0.1)


@needs_data
@pytest.mark.parametrize("profile", PROFILES)
def test_null_and_perfect_detectors_normalise_to_0_and_100(nab_corpus, profiles, profile):
    null = {
        n: scoring.prepare_file(np.zeros(len(f.values)), f.windows) for n, f in nab_corpus.items()
    }
    perfect = {
        n: scoring.prepare_file(_one_hot(len(f.values), *(w[0] for w in f.windows)), f.windows)
        for n, f in nab_corpus.items()
    }
    assert sum(p.n_windows for p in perfect.values()) == 55
    assert scoring.score_corpus(null, profiles[profile]).normalised == pytest.approx(0.0)
    best = scoring.score_corpus(perfect, profiles[profile])
    assert best.normalised == pytest.approx(100.0)
    assert best.threshold == 1.0


@needs_data
def test_corpus_sweep_agrees_with_per_file_scoring(nab_corpus):
    scores = corpus.load_anomaly_scores(NAB_DIR / "results", "windowedGaussian", nab_corpus)
    files = [scoring.prepare_file(scores[n], f.windows) for n, f in nab_corpus.items()]
    sweep = scoring.sweep_thresholds(files, STANDARD)
    for threshold in (1.0, 0.99, 0.9, 0.5, 0.0):
        expected = sum(scoring.score_prepared(f, threshold, STANDARD).score for f in files)
        # prefix sums over ~150k rows drift by ~1e-12 relative from per-file sums
        assert sweep.at(threshold).score == pytest.approx(expected, rel=1e-9)


# --- hand-made cases ---------------------------------------------------------------------


def test_probation_length():
    assert scoring.probation_length(4032) == 604
    assert scoring.probation_length(22695) == 750
    assert scoring.probation_length(6) == 0


def test_scaled_sigmoid_landmarks():
    got = scoring.scaled_sigmoid([-1.0, 0.0, 1.0, 3.0, 3.01])
    expected = [SIGMA_LEFT_EDGE, 0.0, -SIGMA_LEFT_EDGE, 2 / (1 + math.exp(15)) - 1, -1.0]
    np.testing.assert_allclose(got, expected)


def test_detection_at_left_edge_earns_full_tp_weight():
    cost = CostMatrix(tp_weight=2.0, fp_weight=0.11, fn_weight=1.0)
    got = _score(_one_hot(40, 10), [(10, 19)], cost)
    assert got.score == pytest.approx(2.0)
    assert (got.tp, got.fn, got.fp, got.tn) == (1, 9, 0, 30)


def test_detection_at_right_edge_earns_little():
    got = _score(_one_hot(40, 19), [(10, 19)])
    sigma = 2 / (1 + math.exp(5 * -0.1)) - 1  # y = -(R - i + 1) / W = -1/10
    assert got.score == pytest.approx(sigma / SIGMA_LEFT_EDGE)


def test_only_earliest_detection_in_a_window_counts():
    assert _score(_one_hot(40, 12, 14, 18), [(10, 19)]).score == pytest.approx(
        _score(_one_hot(40, 12), [(10, 19)]).score
    )


def test_missed_window_costs_fn_weight():
    assert _score([0.0] * 40, [(10, 19), (25, 30)]).score == pytest.approx(-2.0)


def test_false_positive_just_after_window_costs_almost_fp_weight_scaled():
    got = _score(_one_hot(40, 10, 20), [(10, 19)])
    fp = 0.11 * (2 / (1 + math.exp(5 * 1 / 9)) - 1)  # y = (i - R) / (W - 1) = 1/9
    assert got.score == pytest.approx(1.0 + fp)


def test_false_positive_far_after_or_before_any_window_costs_full_fp_weight():
    assert _score(_one_hot(60, 10, 49), [(10, 19)]).score == pytest.approx(1.0 - 0.11)
    assert _score(_one_hot(40, 5, 10), [(10, 19)]).score == pytest.approx(1.0 - 0.11)


def test_probationary_rows_are_ignored():
    scores = _one_hot(100, 3, 50)
    got = scoring.score_file(scores, [(50, 59)], 0.5, STANDARD, probation=15)
    assert got.score == pytest.approx(1.0)
    assert got.tp + got.tn + got.fp + got.fn == 85
    assert got.total_count == 100


def test_sweep_ties_keep_highest_threshold():
    scores = _one_hot(40, 10)
    scores[15] = 0.5  # same window, later: lowering the threshold to 0.5 changes nothing
    file = scoring.prepare_file(scores, [(10, 19)], probation=0)
    sweep = scoring.sweep_thresholds([file], STANDARD)
    assert list(sweep.thresholds) == [1.1, 1.0, 0.5, 0.0]
    assert sweep.best().threshold == 1.0
    assert sweep.best().score == pytest.approx(1.0)


def test_sweep_matches_brute_force_on_random_files():
    rng = np.random.default_rng(7)
    files = []
    for n_rows in (300, 500, 800):
        scores = np.round(rng.random(n_rows), 2)  # coarse values make many ties
        windows = [(100, 129), (200, 219)] if n_rows > 300 else [(150, 170)]
        files.append(scoring.prepare_file(scores, windows))
    sweep = scoring.sweep_thresholds(files, STANDARD)
    for k, threshold in enumerate(sweep.thresholds):
        parts = [scoring.score_prepared(f, float(threshold), STANDARD) for f in files]
        assert sweep.scores[k] == pytest.approx(sum(p.score for p in parts), abs=1e-9)
        assert sweep.tp[k] == sum(p.tp for p in parts)
        assert sweep.fp[k] == sum(p.fp for p in parts)


def test_normalise():
    assert scoring.normalise(-10.0, null=-10.0, perfect=10.0) == 0.0
    assert scoring.normalise(10.0, null=-10.0, perfect=10.0) == 100.0
    assert scoring.normalise(0.0, null=-20.0, perfect=10.0) == pytest.approx(200 / 3)


def test_window_indices_are_inclusive_and_drop_empty_windows():
    limits = [
        (pd.Timestamp("2020-01-01 00:05"), pd.Timestamp("2020-01-01 00:10")),
        (pd.Timestamp("2020-01-01 00:11"), pd.Timestamp("2020-01-01 00:12")),
    ]
    assert corpus.window_indices(STAMPS, limits) == [(1, 2)]


def test_results_round_trip(tmp_path):
    path = corpus.results_path(tmp_path, "lstm", "realKnownCause/x.csv")
    corpus.write_results(path, STAMPS, [1.0, 2.0, 3.0], [0.1, 0.9, 0.2], windows=[(1, 1)])
    assert path == tmp_path / "lstm" / "realKnownCause" / "lstm_x.csv"
    assert path.read_text().splitlines()[:2] == [
        "timestamp,value,anomaly_score,label",
        "2020-01-01 00:00:00,1.0,0.1,0",
    ]
    frame = corpus.load_results(path)
    assert frame["label"].tolist() == [0, 1, 0]
    scores = corpus.load_anomaly_scores(tmp_path, "lstm", ["realKnownCause/x.csv"])
    np.testing.assert_array_equal(scores["realKnownCause/x.csv"], [0.1, 0.9, 0.2])


@needs_data
def test_published_scores_over_a_subset_use_only_its_files_and_windows():
    names = corpus.data_files(NAB_DIR)
    assert corpus.published_scores(NAB_DIR, "numenta", names) == \
        corpus.published_scores(NAB_DIR, "numenta")
    one = ["realKnownCause/nyc_taxi.csv"]
    got = corpus.published_scores(NAB_DIR, "numenta", one)
    n_windows = len(corpus.load_window_limits(NAB_DIR)[one[0]])
    for profile, cost in corpus.load_profiles(NAB_DIR).items():
        table = corpus.load_published_table(NAB_DIR, "numenta", profile)
        raw = float(table.loc[table["File"] == one[0], "Score"].iloc[0])
        expected = scoring.normalise(raw, scoring.null_score(n_windows, cost),
                                     scoring.perfect_score(n_windows, cost))
        assert got[profile] == pytest.approx(expected)
        assert got[profile] != pytest.approx(corpus.published_scores(NAB_DIR, "numenta")[profile])
