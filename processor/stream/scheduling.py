"""Let the forward pass keep its core: every other thread of the processor yields to it.

The processor's Python threads and librdkafka's threads wake up thousands of times a
second, each for a few microseconds. Under Linux's default policy a waking thread may
preempt the one running the forward pass, and on 2 cores the model then ran about a
third slower than alone (its thread on the CPU 72% of the time a pass took). A thread
under SCHED_BATCH does not preempt on wake-up: it takes a free core, or waits for the
running thread's slice to end (a few milliseconds). It is still scheduled fairly, so
polling and committing are not starved. So the processor runs its own threads under
SCHED_BATCH and keeps the scoring thread and TensorFlow's pool under the default policy.

Linux only, and needs no privilege (both are normal, non-real-time policies); elsewhere,
or where a sandbox refuses the call, nothing changes and a warning is logged.
"""

from __future__ import annotations

import os
from pathlib import Path

import structlog

log = structlog.get_logger(__name__)

#: TensorFlow names the threads of its pools tf_<pool>.
_INFERENCE_THREAD_PREFIX = "tf_"


def _set_policy(tid: int, policy: int) -> bool:
    try:
        os.sched_setscheduler(tid, policy, os.sched_param(0))
        return True
    except OSError as exc:
        log.warning("scheduling_policy_unavailable", thread=tid, error=str(exc))
        return False


def supported() -> bool:
    return hasattr(os, "SCHED_BATCH") and Path("/proc/self/task").is_dir()


def yield_to_inference() -> bool:
    """Run the calling thread, and every thread it starts from now on, under SCHED_BATCH.

    Call it before the Kafka clients and worker threads exist: they inherit the policy.
    """
    return supported() and _set_policy(0, os.SCHED_BATCH)


def favour_calling_thread() -> None:
    """Back to the default policy, for the thread that calls the model."""
    if supported():
        _set_policy(0, os.SCHED_OTHER)


def favour_inference_pool() -> int:
    """Put TensorFlow's pool threads (those that run the forward pass) back on the default
    policy; they may have been started by a thread under SCHED_BATCH. Returns how many."""
    if not supported():
        return 0
    n = 0
    for tid, name in thread_names().items():
        if not name.startswith(_INFERENCE_THREAD_PREFIX):
            continue
        try:
            if os.sched_getscheduler(tid) == os.SCHED_OTHER:
                continue
        except OSError:
            continue  # the thread ended meanwhile
        n += _set_policy(tid, os.SCHED_OTHER)
    return n


def thread_names() -> dict[int, str]:
    """This process's threads by id, with their names (empty where /proc is missing)."""
    out: dict[int, str] = {}
    task = Path("/proc/self/task")
    if not task.is_dir():
        return out
    for entry in task.iterdir():
        try:
            out[int(entry.name)] = (entry / "comm").read_text().strip()
        except (OSError, ValueError):
            continue  # the thread ended meanwhile
    return out
