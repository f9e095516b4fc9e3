import numpy as np
import pytest

from processor.windows import WindowStore, sliding_windows


def test_sliding_windows_pairs_each_window_with_the_next_value():
    x, y = sliding_windows(np.arange(6), 3)
    np.testing.assert_array_equal(x, [[0, 1, 2], [1, 2, 3], [2, 3, 4]])
    np.testing.assert_array_equal(y, [3, 4, 5])
    x, y = sliding_windows(np.arange(3), 3)
    assert x.shape == (0, 3) and y.shape == (0,)


def test_store_keeps_order_and_length():
    store = WindowStore(width=3, initial_capacity=1)
    for t, v in enumerate([1.0, 2.0, 3.0, 4.0, 5.0]):
        store.advance(["a"], [t], [v])
        expected = np.arange(1.0, v + 1)[-3:]
        np.testing.assert_array_equal(store.window("a"), expected)
    assert len(store.window("a")) == 3
    assert store.last_timestamp("a") == 4


def test_batch_windows_equal_one_at_a_time():
    rng = np.random.default_rng(0)
    keys = rng.choice(["a", "b", "c", "d"], size=200).tolist()
    values = rng.normal(size=200)
    ts = list(range(200))

    one = WindowStore(4, initial_capacity=1)
    expected = {}
    for i, (k, v) in enumerate(zip(keys, values)):
        before = one.window(k)
        if len(before) == 4:
            expected[i] = before
        one.advance([k], [ts[i]], [v])

    batched = WindowStore(4, initial_capacity=1)  # also exercises growth
    got = {}
    for lo in range(0, 200, 37):
        wb = batched.advance(keys[lo:lo + 37], ts[lo:lo + 37], values[lo:lo + 37])
        assert list(wb.record_index) == sorted(wb.record_index)
        for w, j in zip(wb.windows, wb.record_index):
            got[lo + int(j)] = w
    assert got.keys() == expected.keys()
    for i in expected:
        np.testing.assert_allclose(got[i], expected[i].astype(np.float32))
    for k in "abcd":
        np.testing.assert_array_equal(batched.window(k), one.window(k))


def test_windows_are_the_offline_sliding_windows():
    series = np.arange(50, dtype=float)
    x, _ = sliding_windows(series, 5)
    store = WindowStore(5)
    wb = store.advance(["k"] * 50, list(range(50)), series)
    np.testing.assert_array_equal(wb.windows, x)
    np.testing.assert_array_equal(wb.record_index, np.arange(5, 50))


def test_resized_keeps_newest_values():
    store = WindowStore(4)
    store.advance(["a"] * 6, list(range(6)), np.arange(6.0))
    small = store.resized(2)
    np.testing.assert_array_equal(small.window("a"), [4.0, 5.0])
    big = store.resized(8)
    np.testing.assert_array_equal(big.window("a"), [2.0, 3.0, 4.0, 5.0])
    assert big.last_timestamp("a") == 5


def test_in_order_check():
    store = WindowStore(2)
    assert store.is_in_order("a", 10)
    store.advance(["a"], [10], [1.0])
    assert not store.is_in_order("a", 10)
    assert not store.is_in_order("a", 9)
    assert store.is_in_order("a", 11)


def test_rejects_bad_width():
    with pytest.raises(ValueError):
        WindowStore(0)


def test_array_path_matches_the_per_key_path() -> None:
    """Batches without resets take the array path; it must equal the general one."""
    rng = np.random.default_rng(7)
    fast, slow = WindowStore(5, initial_capacity=2), WindowStore(5, initial_capacity=2)
    ts: dict[str, int] = {}
    for _ in range(60):
        n = int(rng.integers(0, 40))
        keys = [f"k{int(k)}" for k in rng.integers(0, 12, n)]
        stamps = []
        for k in keys:
            ts[k] = ts.get(k, 0) + int(rng.integers(1, 5))
            stamps.append(ts[k])
        values = rng.normal(size=n).astype(np.float32)
        parts = [int(p) for p in rng.integers(0, 4, n)]
        a = fast.advance(keys, stamps, values, partitions=parts, now=1.0)
        b = slow._advance_per_key(keys, stamps, values, parts, [False] * n, 1.0)
        np.testing.assert_array_equal(a.windows, b.windows)
        np.testing.assert_array_equal(a.record_index, b.record_index)
        if rng.random() < 0.1 and keys:
            fast.remove(keys[0])
            slow.remove(keys[0])
            ts.pop(keys[0])
    assert sorted(fast.keys()) == sorted(slow.keys())
    for key in sorted(fast.keys()):
        sa, sb = fast.state(key), slow.state(key)
        assert sa is not None and sb is not None
        np.testing.assert_array_equal(sa.values, sb.values)
        assert (sa.count, sa.last_ts, sa.partition) == (sb.count, sb.last_ts, sb.partition)
