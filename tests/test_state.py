"""Window state: the changelog encoding, the spill store and store bookkeeping (pure logic)."""

import struct

import numpy as np

from processor.calibration import KeyScoreState, ScoreRule, ScoreStore
from processor.stream.changelog import decode_state, encode_state, encode_states
from processor.stream.spill import SpillStore
from processor.windows import KeyState, WindowStore

EMPTY_SCORES = KeyScoreState.empty(ScoreRule())


def _scores_after(deviations):
    store = ScoreStore()
    store.update(["k"] * len(deviations), np.asarray(deviations, float),
                 np.full(len(deviations), 1e-9))
    state = store.state("k")
    assert state is not None
    return store, state


def test_changelog_state_round_trips_bit_for_bit():
    values = np.array([1.5, -2.25, np.float32(1) / 3], np.float32)
    state = KeyState(values, count=1234, last_ts=1388534400000, partition=3)
    _, scores = _scores_after(np.random.default_rng(1).exponential(size=357))
    back, back_scores = decode_state(encode_state(state, scores))
    assert back.values.tobytes() == values.tobytes()
    assert (back.count, back.last_ts, back.partition) == (1234, 1388534400000, 3)
    assert back_scores is not None and back_scores.seen == 357
    assert back_scores.alerted == scores.alerted
    assert back_scores.top.tobytes() == scores.top.tobytes()
    assert back_scores.peaks.tobytes() == scores.peaks.tobytes()


def test_a_changelog_entry_of_the_first_format_restores_without_score_history():
    values = np.array([1.0, 2.0], np.float32)
    old = struct.pack("<BqqiH", 1, 7, 99, 0, 2) + values.tobytes()
    state, scores = decode_state(old)
    assert state.count == 7 and scores is None


def test_restored_state_continues_exactly_like_the_original():
    a = WindowStore(4)
    a.advance(["k"] * 6, list(range(6)), np.arange(6.0), partitions=[2] * 6)
    b = WindowStore(4)
    st = a.state("k")
    assert st is not None
    b.put("k", decode_state(encode_state(st, EMPTY_SCORES))[0])
    wa = a.advance(["k"], [6], [6.0])
    wb = b.advance(["k"], [6], [6.0])
    np.testing.assert_array_equal(wa.windows, wb.windows)
    assert b.last_timestamp("k") == 6


def test_restored_score_history_scores_exactly_like_the_original():
    rng = np.random.default_rng(2)
    first, later = rng.exponential(size=1234), rng.exponential(size=300) * 2
    a, state = _scores_after(first)
    _, restored = decode_state(encode_state(KeyState(np.zeros(1, np.float32), 1, 1, 0),
                                            state))
    b = ScoreStore()
    assert restored is not None
    b.put("k", restored)
    floor = np.full(len(later), 1e-9)
    ca = a.update(["k"] * len(later), later, floor)
    cb = b.update(["k"] * len(later), later, floor)
    np.testing.assert_array_equal(ca.score, cb.score)
    np.testing.assert_array_equal(ca.peak, cb.peak)
    np.testing.assert_array_equal(ca.alert, cb.alert)
    assert ca.peak.any() and not ca.peak.all()


def test_drop_partitions_forgets_only_those_keys_and_reuses_slots():
    s = WindowStore(2, initial_capacity=2)
    s.advance(["a", "b", "c"], [1, 1, 1], [1.0, 2.0, 3.0], partitions=[0, 1, 0])
    assert s.drop_partitions({0}) == 2
    assert s.keys() == ["b"]
    s.advance(["d"], [1], [4.0], partitions=[1])
    assert sorted(s.keys()) == ["b", "d"]
    np.testing.assert_array_equal(s.window("d"), [4.0])  # a reused slot starts clean


def test_idle_keys_by_last_touch():
    s = WindowStore(2)
    s.advance(["a"], [1], [1.0], now=10.0)
    s.advance(["b"], [1], [1.0], now=20.0)
    assert s.idle_keys(older_than=15.0) == ["a"]


def test_resets_restart_the_window_mid_batch():
    s = WindowStore(2)
    wb = s.advance(["k"] * 5, [1, 2, 3, 100, 101], [1.0, 2.0, 3.0, 4.0, 5.0],
                   resets=[False, False, False, True, False])
    # Record 2 is predicted from [1, 2]; after the reset at record 3, record 4 has only
    # one value before it, so nothing is predicted until the window refills.
    assert wb.record_index.tolist() == [2]
    np.testing.assert_array_equal(s.window("k"), [4.0, 5.0])


def test_spill_store_takes_what_it_holds(tmp_path):
    spill = SpillStore(tmp_path / "spill.sqlite")
    spill.put_many([("a", 0, b"A"), ("b", 1, b"B"), ("c", 1, b"C")])
    assert spill.take_many(["a", "x"]) == {"a": b"A"}
    assert spill.take_many(["a"]) == {}
    spill.drop_partitions([1])
    assert len(spill) == 0
    spill.close()


def test_batch_encoding_equals_per_key_encoding():
    store = WindowStore(4)
    keys = ["a", "b", "c", "a", "a", "a", "a", "d"]
    store.advance(keys, list(range(1, 9)), np.arange(8, dtype=np.float32) / 3,
                  partitions=[0, 1, 2, 0, 0, 0, 0, 3])
    states = store.snapshot(["a", "missing", "b", "d"])
    assert states.keys == ["a", "b", "d"]
    _, scores = _scores_after([1.0, 3.0, 2.0])
    expected = []
    for k in states.keys:
        st = store.state(k)
        assert st is not None
        expected.append(encode_state(st, scores))
    assert encode_states(states, [scores] * len(states.keys)) == expected
    assert decode_state(expected[0])[0].count == 5
