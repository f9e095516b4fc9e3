"""Thread scheduling policies: the model's threads keep the default, the rest yield."""

from __future__ import annotations

import os
import threading

import pytest

from processor.stream import scheduling

pytestmark = pytest.mark.skipif(not scheduling.supported(), reason="Linux only")


def _in_thread(fn):
    """Run `fn` on a fresh thread (policies are per thread; keep pytest's own as it is)."""
    out: list[object] = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            out.append(fn())
        except BaseException as exc:
            errors.append(exc)

    t = threading.Thread(target=run)
    t.start()
    t.join(30)
    if errors:
        raise errors[0]
    return out[0]


def test_threads_started_after_yielding_inherit_the_batch_policy():
    def body():
        assert scheduling.yield_to_inference()
        seen: list[int] = []
        child = threading.Thread(target=lambda: seen.append(os.sched_getscheduler(0)))
        child.start()
        child.join()
        return os.sched_getscheduler(0), seen[0]

    assert _in_thread(body) == (os.SCHED_BATCH, os.SCHED_BATCH)


def test_the_calling_thread_can_take_the_default_policy_back():
    def body():
        scheduling.yield_to_inference()
        scheduling.favour_calling_thread()
        return os.sched_getscheduler(0)

    assert _in_thread(body) == os.SCHED_OTHER


def test_inference_pool_threads_get_the_default_policy_back(monkeypatch):
    """Threads named like TensorFlow's pool are put back; other threads are left alone."""
    ready, done = threading.Event(), threading.Event()
    tids: dict[str, int] = {}

    def worker(name: str) -> None:
        tids[name] = threading.get_native_id()
        ready.wait()
        done.wait(30)

    def body():
        scheduling.yield_to_inference()
        threads = [threading.Thread(target=worker, args=(n,)) for n in ("tf_Compute", "io")]
        for t in threads:
            t.start()
        while len(tids) < 2:
            pass
        names = {tids["tf_Compute"]: "tf_Compute", tids["io"]: "io"}
        monkeypatch.setattr(scheduling, "thread_names", lambda: names)
        ready.set()
        try:
            changed = scheduling.favour_inference_pool()
            return changed, {n: os.sched_getscheduler(tid) for n, tid in tids.items()}
        finally:
            done.set()
            for t in threads:
                t.join()

    changed, policies = _in_thread(body)
    assert changed == 1
    assert policies == {"tf_Compute": os.SCHED_OTHER, "io": os.SCHED_BATCH}


def test_thread_names_lists_this_process_threads():
    names = scheduling.thread_names()
    assert threading.get_native_id() in names and all(isinstance(n, str) for n in names.values())
