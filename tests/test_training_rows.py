"""Training pairs gathered a batch at a time equal the pairs cut out whole (pure logic)."""

import numpy as np
import pytest

from processor.dataset import Series
from processor.train import TrainConfig, TrainingRows, prepare


def _series(key: str, n: int, seed: int, labelled: tuple[int, int] | None = None) -> Series:
    rng = np.random.default_rng(seed)
    labels = np.zeros(n, bool)
    if labelled:
        labels[labelled[0]:labelled[1]] = True
    return Series(key, np.arange(n, dtype=np.int64) * 60_000,
                  100 + np.cumsum(rng.normal(size=n)) * (seed + 1), labels)


def _whole(kw, part):
    """The pairs as training used to cut them: every window of the part at once."""
    mask = (kw.part == part) & kw.clean
    mean, std = kw.scale
    x = ((np.ascontiguousarray(kw.windows)[mask] - mean) / std).astype(np.float32)
    y = ((kw.targets[mask] - mean) / std).astype(np.float32)
    if kw.steps == 1:
        return x, y
    w = x.shape[1] - kw.steps + 1
    return x[:, :w], np.concatenate([x[:, w:], y[:, None]], axis=1)


@pytest.mark.parametrize(("steps", "season"), [(1, 0), (3, 0), (1, 24), (2, 24)])
def test_batches_are_the_whole_pairs_in_any_order(steps, season):
    cfg = TrainConfig(window=6, steps=steps, season=season)
    keys = [prepare(_series("a", 400, 0, (150, 170)), cfg),
            prepare(_series("b", 300, 1), cfg)]
    for kw in keys:
        assert not kw.windows.flags.owndata  # a view of the series, not a copy
    for part in (0, 1):
        rows = TrainingRows(keys, part)
        want = [_whole(kw, part) for kw in keys]
        x_all = np.concatenate([w[0] for w in want])
        y_all = np.concatenate([w[1] for w in want])
        assert len(rows) == len(x_all) > 0
        order = np.random.default_rng(part).permutation(len(rows))
        for lo in range(0, len(order), 37):
            x, y = rows.batch(order[lo:lo + 37])
            np.testing.assert_array_equal(x, x_all[order[lo:lo + 37]])
            np.testing.assert_array_equal(y, y_all[order[lo:lo + 37]])


def test_the_season_is_settled_on_the_rows_training_will_use():
    from processor.train import MIN_SEASON_WINDOWS, resolve_season, stored_width

    cfg = TrainConfig(window=30, train_frac=0.7)  # season 'day'
    interval = 300_000  # 5 minutes: a day is 288 rows
    width = stored_width(cfg, 288)
    # Just enough rows for 100 training windows of a day and a window ...
    n = int(np.ceil((width + MIN_SEASON_WINDOWS) / 0.7)) + 1
    ts = np.arange(n, dtype=np.int64) * interval
    ok = Series("k", ts, np.sin(np.arange(n) / 10.0))
    assert resolve_season([ok], cfg) == 288
    # ... and 11 of them repeating a timestamp, which training drops: too few then.
    repeated = ts.copy()
    repeated[100:111] = repeated[99]
    assert resolve_season([Series("k", repeated, ok.values)], cfg) == 0
    assert resolve_season([ok], cfg.model_copy(update={"season": "none"})) == 0
    assert resolve_season([ok], cfg.model_copy(update={"season": 48})) == 48
