"""Idle keys leave memory for the spill cache and come back with their exact windows."""

import time

import numpy as np

from processor.config import Settings
from processor.engine import Engine
from processor.stream.app import Processor
from processor.stream.spill import SpillStore
from tests.test_engine import model, obs


def test_idle_keys_are_evicted_and_restored_exactly(tmp_path):
    p = Processor(Settings(idle_evict_s=0.05, state_dir=tmp_path, http_port=-1))
    p._engine = Engine(model())
    p._spill = SpillStore(tmp_path / "spill.sqlite")
    rng = np.random.default_rng(0)
    p._engine.process([obs("idle", t, 10.0 + rng.normal()) for t in range(150)],
                      now=time.monotonic())
    before = p._engine.windows.state("idle")
    scores_before = p._engine.scores.state("idle")
    assert scores_before is not None and scores_before.seen == 147
    time.sleep(0.1)
    p._engine.process([obs("busy", t, 1.0) for t in range(5)], now=time.monotonic())

    p._evict_idle()
    assert "idle" not in p._engine.windows and "busy" in p._engine.windows
    assert "idle" not in p._engine.scores
    assert p.counters.evicted_keys == 1 and len(p._spill) == 1

    p._unspill(["idle", "new"])
    after = p._engine.windows.state("idle")
    assert after is not None and before is not None
    np.testing.assert_array_equal(after.values, before.values)
    assert (after.count, after.last_ts, after.partition) == (
        before.count, before.last_ts, before.partition)
    scores_after = p._engine.scores.state("idle")
    assert scores_after is not None and scores_after.seen == scores_before.seen
    np.testing.assert_array_equal(scores_after.top, scores_before.top)
    np.testing.assert_array_equal(scores_after.peaks, scores_before.peaks)
    assert len(p._spill) == 0
    # The key continues exactly where it stopped: the next value is scored, against the
    # score history it had.
    out = p._engine.process([obs("idle", 150, 15.0)], now=time.monotonic())
    assert out.scored[0].status.value == "scored" and out.scored[0].anomaly_score is not None
    p._spill.close()
