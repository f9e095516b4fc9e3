"""Probe logic (pure): liveness follows the loop's heartbeat, readiness needs everything."""

import time

from processor.stream.metrics import Health


def test_a_stalled_loop_fails_liveness_and_readiness():
    h = Health(stall_after_s=0.2)
    h.model_loaded = h.restored = h.assigned = True
    h.beat()
    assert h.alive() and h.ready()
    time.sleep(0.3)
    assert not h.alive() and not h.ready()
    h.beat()
    assert h.alive()


def test_ready_needs_model_restore_and_partitions():
    h = Health(stall_after_s=60)
    h.beat()
    assert not h.ready()
    h.model_loaded = True
    assert not h.ready()
    h.assigned = True
    assert not h.ready()  # assigned but the changelog not yet restored
    h.restored = True
    assert h.ready()
