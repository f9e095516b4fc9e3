"""The benchmark's own measuring helpers."""

from __future__ import annotations

import os
import time

from processor.bench import thread_cpu_seconds


def test_thread_cpu_seconds_counts_this_process_busy_threads():
    before = thread_cpu_seconds(os.getpid()).get("python", 0.0)
    end = time.process_time() + 0.3
    while time.process_time() < end:
        pass
    after = thread_cpu_seconds(os.getpid())
    assert after["python"] - before >= 0.2  # clock ticks: 10 ms resolution


def test_thread_cpu_seconds_of_a_gone_process_is_empty():
    assert thread_cpu_seconds(2**22 + 12345) == {}
