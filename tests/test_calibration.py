"""The anomaly score, peaks and alerts (pure logic): the incremental panes against a
direct computation of their definition, and the properties users rely on."""

import numpy as np
import pytest

from processor.calibration import KeyScoreState, ScoreRule, ScoreStore, nab_score

RULE = ScoreRule()


def direct(keys, d, rule=RULE):
    """The definition, record by record, with whole histories (no panes)."""
    hist: dict[str, dict[str, list]] = {}
    score, peak, alert = [], [], []
    for k, v in zip(keys, d):
        h = hist.setdefault(k, {"devs": [], "scores": [], "alerted": [-(10**9)]})
        if np.isnan(v):
            score.append(np.nan), peak.append(False), alert.append(False)
            continue
        n = len(h["devs"])
        # the current pane and the `panes` before it (at a pane boundary: the last
        # panes + 1 complete ones)
        cur = n // rule.pane
        back = rule.panes if n % rule.pane else rule.panes + 1
        window = sorted(h["devs"][max(0, (cur - back) * rule.pane):n])
        k_th = 2 if n >= rule.warm_rows else 1
        ref = max(window[-k_th] if len(window) >= k_th else -np.inf, 1e-9)
        if n >= rule.min_rows:
            r = v / ref
            s = r / (1 + r)
            gcur = n // rule.group_pane
            gback = rule.group_panes if n % rule.group_pane else rule.group_panes + 1
            prev = [x for x in h["scores"][max(0, (gcur - gback) * rule.group_pane):n]
                    if not np.isnan(x)]
            # scores are kept (and compared) as float32: an equal score is no new peak
            pk = np.float32(s) > (max(np.float32(x) for x in prev) if prev else -np.inf)
            al = pk and s > rule.alert_score and n - h["alerted"][0] > rule.quiet
            if al:
                h["alerted"][0] = n
        else:
            s, pk, al = np.nan, False, False
        h["devs"].append(v)
        h["scores"].append(s)
        score.append(s), peak.append(pk), alert.append(al)
    return np.array(score), np.array(peak), np.array(alert)


@pytest.mark.parametrize("keys_in_stream", [3, 40])  # record by record / as arrays
@pytest.mark.parametrize("batch", [1, 7, 257, 10_000])
def test_panes_give_the_definition_exactly_whatever_the_batches(batch, keys_in_stream):
    rng = np.random.default_rng(0)
    n = 6000 if keys_in_stream == 3 else 40_000
    keys = [f"k{i}" for i in rng.integers(0, keys_in_stream, n)]
    d = np.abs(rng.standard_t(3, n)).astype(np.float32).astype(float)
    d[rng.random(n) < 0.01] = np.nan  # rows without a prediction
    d[rng.random(n) < 0.003] *= 30  # incidents
    want = direct(keys, d)
    store = ScoreStore()
    got = [store.update(keys[lo:lo + batch], d[lo:lo + batch], np.full(len(d[lo:lo + batch]),
                                                                        1e-9))
           for lo in range(0, n, batch)]
    score = np.concatenate([g.score for g in got])
    np.testing.assert_allclose(score, want[0], rtol=1e-6, equal_nan=True)
    np.testing.assert_array_equal(np.concatenate([g.peak for g in got]), want[1])
    np.testing.assert_array_equal(np.concatenate([g.alert for g in got]), want[2])
    assert 0 < want[2].sum() < want[1].sum()  # the quiet period and threshold matter


def test_equal_scores_are_no_new_peak():
    d = np.ones(300)
    d[[200, 210, 220]] = 3.0  # the same error thrice: one peak
    c = ScoreStore().update(["k"] * 300, d, np.full(300, 1e-9))
    assert c.peak[200] and not c.peak[210] and not c.peak[220]


def test_with_needs_band_only_rows_the_model_flags_alert():
    d = np.ones(400)
    d[200], d[350] = 50.0, 5000.0  # both peak and alert, 150 rows apart
    outside = np.zeros(400, bool)
    outside[350] = True  # the model's band holds row 200, not row 350
    floor = np.full(400, 1e-9)
    plain = ScoreStore().update(["k"] * 400, d, floor, outside)
    banded = ScoreStore(ScoreRule(needs_band=True)).update(["k"] * 400, d, floor, outside)
    assert np.flatnonzero(plain.alert).tolist() == [200, 350]
    assert np.flatnonzero(banded.alert).tolist() == [350]
    np.testing.assert_array_equal(plain.score, banded.score)


def test_scale_free_and_warming_up():
    rng = np.random.default_rng(1)
    d = np.abs(rng.normal(size=500))
    a = ScoreStore().update(["a"] * 500, d, np.full(500, 1e-12))
    b = ScoreStore().update(["b"] * 500, d * 1e6, np.full(500, 1e-12))
    np.testing.assert_allclose(a.score, b.score, equal_nan=True)
    assert np.isnan(a.score[:100]).all() and np.isfinite(a.score[100:]).all()


def test_one_alert_per_incident():
    d = np.full(600, 1.0)
    d[300:304] = [10, 12, 14, 16]  # an incident over four rows: its reference rises with it
    d[350] = 1000  # a bigger one, a peak, but within the quiet period after the alert
    d[550] = 2e5  # after it, and above the last peak
    c = ScoreStore().update(["k"] * 600, d, np.full(600, 1e-9))
    # Row 100, the first scored, equals its reference (r = 1, score 0.5): not above it.
    assert c.score[100] == 0.5 and c.peak[100] and not c.alert[100]
    assert np.flatnonzero(c.peak[200:]).tolist() == [100, 150, 350]  # rows 300, 350, 550
    assert np.flatnonzero(c.alert).tolist() == [300, 550]
    np.testing.assert_array_equal(nab_score(c) > 0, c.alert)


def test_a_constant_series_does_not_alert_on_rounding():
    d = np.full(400, 1e-9)
    d[300] = 1e-8  # ten times the usual, but both far below a millionth of the scale
    c = ScoreStore().update(["k"] * 400, d, np.full(400, 1e-6))
    assert not c.alert.any() and np.nanmax(c.score) < 0.02


def test_a_history_of_another_shape_starts_afresh():
    store = ScoreStore()
    store.put("k", KeyScoreState.empty(ScoreRule(panes=3)))
    state = store.state("k")
    assert state is not None and state.top.shape == (ScoreRule().panes + 1, 2)
