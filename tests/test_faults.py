"""Fault injection against a real broker: crashes, a lost member, a broker restart, a slow
model and hostile input, each checked for exactly-once output with bit-exact scores.

The reference for every run is the offline engine fed the same inputs in one go; a crash
and replay must not change a single bit of any score, lose an input or emit one twice.
Set FAULT_SEED to replay the random kill moments of a failed run.
"""

from __future__ import annotations

import base64
import dataclasses
import itertools
import json
import os
import random
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import TopicPartition

from processor import localbroker
from processor.config import Settings
from processor.dataset import Series, read_csv
from processor.model_store import LoadedModel, load_version, read_metadata, save_version
from processor.stream.app import Processor
from processor.stream.clients import ensure_topics
from processor.stream.model_topic import announce, announcement_for
from processor.train import TrainConfig, train
from schemas.records import DeadLetterReason, Status
from tests.conftest import FaultReport
from tests.kafka_helpers import (
    Expected,
    Outputs,
    PacedProducer,
    ProcessorProcess,
    Reconciliation,
    Row,
    count_uncommitted,
    epoch_ms,
    free_ports,
    interleaved_rows,
    processor_env,
    produce_all,
    reconcile,
    reference,
    scratch_settings,
)
from tests.nab_data import MACHINE_TEMP

pytestmark = [pytest.mark.broker, pytest.mark.fault]

TRAINED_KEY = "machine_temperature_system_failure"
KILLS = 20
SEED = int(os.environ.get("FAULT_SEED", time.time_ns() % 1_000_000))


@pytest.fixture(scope="module")
def series() -> Series:
    return read_csv(MACHINE_TEMP)


@pytest.fixture(scope="module")
def model_dir(series: Series, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One real model for the module: trained once, saved to a store every test shares."""
    cfg = TrainConfig(name="m", window=16, units=16, epochs=3, batch_size=128, season="none",
                      verbose=0)
    outcome = train([series.slice(0, 4000)], cfg, "test")
    return save_version(tmp_path_factory.mktemp("store"), outcome.metadata, outcome.network)


@pytest.fixture(scope="module")
def model(model_dir: Path) -> LoadedModel:
    return load_version(model_dir)


Deploy = Callable[..., Settings]


@pytest.fixture
def deploy(request: pytest.FixtureRequest, tmp_path: Path, model_dir: Path) -> Deploy:
    """Fresh topics and group (4 partitions) with the model announced on them."""

    def make(bootstrap: str | None = None, **overrides: Any) -> Settings:
        server = bootstrap or request.getfixturevalue("kafka_bootstrap")
        s = scratch_settings(server, model_dir.parent.parent, tmp_path / "state", **overrides)
        ensure_topics(s)
        announce(s, announcement_for(read_metadata(model_dir), model_dir))
        return s

    return make


@pytest.fixture
def spawn(tmp_path: Path) -> Iterator[Callable[..., ProcessorProcess]]:
    """Start `anomaly run` child processes; none outlives the test."""
    started: list[ProcessorProcess] = []

    def start(settings: Settings, name: str, **changes: Any) -> ProcessorProcess:
        proc = ProcessorProcess(processor_env(settings, **changes),
                                tmp_path / f"{name}-{len(started)}.log")
        started.append(proc)
        return proc

    yield start
    for proc in started:
        proc.close()


@pytest.fixture
def outputs_of() -> Iterator[Callable[[Settings], Outputs]]:
    opened: list[Outputs] = []

    def open_(settings: Settings) -> Outputs:
        opened.append(Outputs(settings))
        return opened[-1]

    yield open_
    for out in opened:
        out.close()


def record(report: FaultReport, rec: Reconciliation, restarts: int,
           label: str | None = None) -> None:
    report.add(inputs=rec.inputs, scored=rec.scored, dead_lettered=rec.dead_lettered,
               duplicates=rec.duplicates, lost=rec.lost, restarts=restarts,
               score_mismatches=rec.score_mismatches + rec.reason_mismatches, label=label)


def assert_exact(rec: Reconciliation) -> None:
    assert rec.exact, (f"{rec.duplicates} duplicated, {rec.lost} lost, {rec.score_mismatches} "
                       f"scores and {rec.reason_mismatches} reasons differ, {rec.strays} "
                       f"outputs for unknown inputs; e.g. {rec.examples}")
    assert rec.scored + rec.dead_lettered == rec.inputs


def messages(rows: list[Row]) -> list[tuple[bytes | None, bytes | None]]:
    return [r.message() for r in rows]


# -- (1) kill -9 ----------------------------------------------------------------------

def test_kill_9_at_random_moments_loses_and_duplicates_nothing(
        deploy: Deploy, spawn: Callable[..., ProcessorProcess],
        outputs_of: Callable[[Settings], Outputs], series: Series, model: LoadedModel,
        fault_report: FaultReport) -> None:
    s = deploy(static_membership=True, instance_id="solo", session_timeout_ms=6000)
    # Enough records (about 90/s) that the commit thread is rarely idle: most kills then
    # land while a transaction is open rather than between two short ones.
    rows = interleaved_rows(series, keys=40, per_key=500, first_key=TRAINED_KEY)
    out = outputs_of(s)
    rng = random.Random(SEED)

    proc = spawn(s, "solo")
    startup = proc.wait_ready()
    # Spread the stream over all the kills, so each lands while records still arrive.
    expected_s = KILLS * (startup + 1.35 + 1.5)
    producer = PacedProducer(s.bootstrap_servers, s.input_topic, messages(rows),
                             rate_per_s=len(rows) / expected_s).start()
    at_kill: list[tuple[int, int]] = []  # (scored visible, inputs sent) at each kill
    for i in range(KILLS):
        if i:
            proc = spawn(s, "solo")
            proc.wait_ready()
        time.sleep(rng.uniform(0.2, 2.5))
        proc.kill()
        at_kill.append((len(out.scored), producer.sent))

    final = spawn(s, "solo")
    final.wait_ready()
    expected = reference(model, zip(producer.join(timeout=300), rows, strict=True))
    out.wait_for(len(rows), timeout=180, alive=lambda: final.proc.poll() is None)
    status = final.terminate()
    rec = reconcile(expected, *out.records())
    record(fault_report, rec, restarts=KILLS, label=f"kill -9 x{KILLS} (seed {SEED})")
    # Outputs of transactions a kill left open stay in the log, aborted, invisible to
    # read_committed readers: proof that kills landed inside transactions.
    aborted = count_uncommitted(s.bootstrap_servers, s.scored_topic, s.partitions) - len(
        out.scored)

    assert_exact(rec)
    assert rec.dead_lettered == 0
    assert status == 0, final.tail()
    scored_at = [n for n, _ in at_kill]
    mid_stream = sum(n < len(rows) and sent < len(rows) for n, sent in at_kill)
    grew = sum(b > a for a, b in itertools.pairwise(scored_at))
    detail = (f"seed {SEED}, {aborted} scored records aborted, (scored, sent) at each "
              f"kill: {at_kill}")
    print(detail)
    assert scored_at == sorted(scored_at), detail
    assert mid_stream >= KILLS * 3 // 4, detail
    assert grew >= KILLS // 2, detail
    assert aborted > 0, detail


# -- (2) a member of a group dies ------------------------------------------------------

def test_survivor_takes_over_the_partitions_of_a_killed_member(
        deploy: Deploy, spawn: Callable[..., ProcessorProcess],
        outputs_of: Callable[[Settings], Outputs], series: Series, model: LoadedModel,
        fault_report: FaultReport) -> None:
    # A member killed mid-transaction holds back its partitions until the broker aborts
    # that transaction; 10 s (as Kafka Streams uses) instead of 60 keeps the test short.
    s = deploy(session_timeout_ms=6000, transaction_timeout_ms=10_000)
    rows = interleaved_rows(series, keys=40, per_key=50, first_key=TRAINED_KEY)
    out = outputs_of(s)
    survivor, victim = spawn(s, "a", instance_id="a"), spawn(s, "b", instance_id="b")
    survivor.wait_ready()
    victim.wait_ready()
    everything = set(range(s.partitions))
    deadline = time.monotonic() + 60
    while not (survivor.assigned() and victim.assigned()
               and survivor.assigned() | victim.assigned() == everything):
        assert time.monotonic() < deadline, (survivor.tail(), victim.tail())
        time.sleep(0.1)

    producer = PacedProducer(s.bootstrap_servers, s.input_topic, messages(rows),
                             rate_per_s=100).start()
    deadline = time.monotonic() + 60
    while len(out) < len(rows) // 3:
        assert time.monotonic() < deadline, victim.tail()
        time.sleep(0.05)
    taken = victim.assigned()
    mark = len(survivor.events())
    victim.kill()
    at_kill = len(out)

    expected = reference(model, zip(producer.join(timeout=120), rows, strict=True))
    out.wait_for(len(rows), timeout=180, alive=lambda: survivor.proc.poll() is None)
    later = survivor.events()[mark:]
    got = {p for e in later if e.get("event") == "partitions_assigned" for p in e["partitions"]}
    restored = {p for e in later if e.get("event") == "state_restored" for p in e["partitions"]}
    held = survivor.assigned()
    status = survivor.terminate()
    rec = reconcile(expected, *out.records())
    record(fault_report, rec, restarts=1, label="1 of 2 members killed")

    assert_exact(rec)
    assert 0 < at_kill < len(rows)
    assert taken and taken <= got and taken <= restored, survivor.tail()
    assert held == everything
    assert status == 0, survivor.tail()


# -- (3) the broker goes away and comes back ------------------------------------------

@dataclasses.dataclass(frozen=True)
class Broker:
    port: int
    controller_port: int
    state_dir: Path
    bootstrap: str

    def stop(self) -> None:
        localbroker.stop(self.port, state_dir=self.state_dir)

    def start(self) -> None:
        localbroker.start(self.port, self.controller_port, fresh=False, state_dir=self.state_dir)


@pytest.fixture
def own_broker(tmp_path: Path) -> Iterator[Broker]:
    """A broker for this test alone, since it gets stopped."""
    port, controller_port = free_ports(2)
    state = tmp_path / "broker"
    bootstrap = localbroker.start(port, controller_port, fresh=True, state_dir=state)
    try:
        yield Broker(port, controller_port, state, bootstrap)
    finally:
        localbroker.stop(port, state_dir=state)


def test_processor_rides_out_a_broker_restart(
        own_broker: Broker, deploy: Deploy, spawn: Callable[..., ProcessorProcess],
        outputs_of: Callable[[Settings], Outputs], series: Series, model: LoadedModel,
        fault_report: FaultReport) -> None:
    s = deploy(own_broker.bootstrap)
    rows = interleaved_rows(series, keys=40, per_key=50, first_key=TRAINED_KEY)
    out = outputs_of(s)
    proc = spawn(s, "p")
    proc.wait_ready()
    producer = PacedProducer(s.bootstrap_servers, s.input_topic, messages(rows),
                             rate_per_s=80).start()
    deadline = time.monotonic() + 60
    while len(out) < len(rows) // 4:
        assert time.monotonic() < deadline, proc.tail()
        time.sleep(0.05)
    own_broker.stop()
    at_stop = producer.sent
    time.sleep(5)
    own_broker.start()

    expected = reference(model, zip(producer.join(timeout=240), rows, strict=True))
    out.wait_for(len(rows), timeout=240, alive=lambda: proc.proc.poll() is None)
    still_running = proc.proc.poll() is None
    status = proc.terminate()
    rec = reconcile(expected, *out.records())
    record(fault_report, rec, restarts=1, label="broker stopped 5 s, restarted")

    assert_exact(rec)
    assert at_stop < len(rows), "the broker went away after the stream had ended"
    assert still_running and status == 0, proc.tail()


# -- (4) a model slower than the poll interval -----------------------------------------

class SlowPredictor:
    """The real predictor, taking `seconds` more per window (a heavy model, a busy CPU)."""

    def __init__(self, inner: Callable[[Any], Any], seconds: float) -> None:
        self.inner = inner
        self.seconds = seconds

    def __call__(self, windows: Any) -> Any:
        time.sleep(self.seconds * len(windows))
        return self.inner(windows)


class WatchedProcessor(Processor):
    """Remembers every rebalance callback, so a test can tell whether it left the group."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.rebalances: list[tuple[str, list[int]]] = []

    def _on_assign(self, consumer: Any, partitions: list[TopicPartition]) -> None:
        self.rebalances.append(("assigned", sorted(tp.partition for tp in partitions)))
        super()._on_assign(consumer, partitions)

    def _on_revoke(self, consumer: Any, partitions: list[TopicPartition]) -> None:
        self.rebalances.append(("revoked", sorted(tp.partition for tp in partitions)))
        super()._on_revoke(consumer, partitions)

    def _on_lost(self, consumer: Any, partitions: list[TopicPartition]) -> None:
        self.rebalances.append(("lost", sorted(tp.partition for tp in partitions)))
        super()._on_lost(consumer, partitions)


class OnThread:
    """A processor on a thread of the test process; `stop` does what SIGTERM does."""

    def __init__(self, settings: Settings, seconds_per_window: float = 0.004) -> None:
        self._stop = threading.Event()
        self.processor = WatchedProcessor(settings, self._stop, model_hook=lambda m: (
            dataclasses.replace(m, predictor=SlowPredictor(m.predictor, seconds_per_window))))
        self._failure: list[BaseException] = []
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            self.processor.run()
        except BaseException as exc:  # re-raised by stop()
            self._failure.append(exc)

    def alive(self) -> bool:
        return self._thread.is_alive()

    def wait_assigned(self, partitions: int, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while self.processor.assigned != set(range(partitions)):
            assert self.alive() and time.monotonic() < deadline, self._failure
            time.sleep(0.05)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(90)
        assert not self._thread.is_alive(), "processor did not stop"
        if self._failure:
            raise self._failure[0]


def _slow_settings(deploy: Deploy, budget_s: float) -> Settings:
    return deploy(session_timeout_ms=6000, max_poll_interval_ms=6000,
                  batch_time_budget_s=budget_s, batch_max_records=2000)


def test_slow_model_stays_in_the_group_by_sizing_batches(
        deploy: Deploy, outputs_of: Callable[[Settings], Outputs], series: Series,
        model: LoadedModel, fault_report: FaultReport) -> None:
    s = _slow_settings(deploy, budget_s=1.5)
    rows = interleaved_rows(series, keys=40, per_key=75, first_key=TRAINED_KEY)
    out = outputs_of(s)
    run = OnThread(s)
    try:
        run.wait_assigned(s.partitions)
        positions = produce_all(s.bootstrap_servers, s.input_topic, messages(rows))
        expected = reference(model, zip(positions, rows, strict=True))
        out.wait_for(len(rows), timeout=120, alive=run.alive)
        rebalances = list(run.processor.rebalances)
    finally:
        run.stop()
    rec = reconcile(expected, *out.records())
    record(fault_report, rec, restarts=0, label="slow model, 1.5 s batch budget")

    assert_exact(rec)
    counters = run.processor.counters
    assert counters.restores == 1, rebalances
    assert rebalances == [("assigned", list(range(s.partitions)))]
    assert counters.aborted_batches == 0


def test_slow_model_without_a_time_budget_is_kicked_out_yet_exact(
        deploy: Deploy, outputs_of: Callable[[Settings], Outputs], series: Series,
        model: LoadedModel, fault_report: FaultReport) -> None:
    """Negative control: whole batches overrun the poll interval and the group drops the
    consumer; its transactions abort, so nothing is emitted twice. A processor with the
    budget then takes over the group and finishes the stream."""
    s = _slow_settings(deploy, budget_s=1000)
    # 300 per key: after a first batch of filling windows (50 per key) come five batches
    # of 2,000 windows, 8 s of slow inference each. The pipeline keeps polling while at
    # most one batch waits for the model; the next one makes it wait for the model, 8 s
    # against a 6 s poll interval.
    rows = interleaved_rows(series, keys=40, per_key=300, first_key=TRAINED_KEY)
    out = outputs_of(s)
    naive = OnThread(s)
    try:
        naive.wait_assigned(s.partitions)
        positions = produce_all(s.bootstrap_servers, s.input_topic, messages(rows))
        expected = reference(model, zip(positions, rows, strict=True))
        deadline = time.monotonic() + 60
        while not _left_group(naive.processor):
            assert naive.alive() and time.monotonic() < deadline, naive.processor.rebalances
            time.sleep(0.1)
    finally:
        naive.stop()
    partial = reconcile(expected, *out.records())
    budgeted = OnThread(s.model_copy(update={"batch_time_budget_s": 1.5}))
    try:
        out.wait_for(len(rows), timeout=180, alive=budgeted.alive)
    finally:
        budgeted.stop()
    rec = reconcile(expected, *out.records())
    record(fault_report, rec, restarts=1, label="control: no batch budget, then budget")

    assert _left_group(naive.processor), naive.processor.rebalances
    assert naive.processor.counters.aborted_batches >= 1
    assert partial.lost > 0, "the naive processor was expected to stall"
    assert not (partial.duplicates or partial.score_mismatches or partial.strays), partial
    assert_exact(rec)


def _left_group(processor: WatchedProcessor) -> bool:
    kinds = {kind for kind, _ in processor.rebalances}
    return processor.counters.restores > 1 or bool(kinds & {"lost", "revoked"})


# -- (5) hostile input -----------------------------------------------------------------

def _planted(key: str, ts: int, limit: int) -> list[tuple[str, bytes | None, bytes | None,
                                                          DeadLetterReason]]:
    """Bad records of every kind, each with the dead-letter reason it must get."""
    kb = key.encode()
    invalid = DeadLetterReason.INVALID_FIELD

    def body(**fields: Any) -> bytes:
        return json.dumps({"key": key, "timestamp": ts, "value": 1.5, **fields}).encode()

    def text(value: str) -> bytes:
        return f'{{"key": "{key}", "timestamp": {ts}, "value": {value}}}'.encode()

    big = body()
    big = big[:-1] + b" " * (limit + 1000 - len(big)) + b"}"
    return [
        ("not json", kb, b'{"key": "' + kb + b'", oops', DeadLetterReason.NOT_JSON),
        ("not utf-8", kb, b'{"key": "\xff\xfe", "value": 1}', DeadLetterReason.NOT_UTF8),
        ("not an object", kb, b"[1, 2, 3]", DeadLetterReason.NOT_AN_OBJECT),
        ("tombstone", kb, None, invalid),
        ("empty value", kb, b"", DeadLetterReason.NOT_JSON),
        ("key too long", b"k" * 300, body(key="k" * 300), invalid),
        ("value as string", kb, body(value="71.3"), invalid),
        ("value as bool", kb, body(value=True), invalid),
        ("timestamp as list", kb, body(timestamp=[ts]), invalid),
        ("key as number", b"7", json.dumps({"key": 7, "timestamp": ts, "value": 1.0}).encode(),
         invalid),
        ("missing value", kb, json.dumps({"key": key, "timestamp": ts}).encode(), invalid),
        ("missing timestamp", kb, json.dumps({"key": key, "value": 1.0}).encode(), invalid),
        ("extra field", kb, body(unit="celsius"), invalid),
        ("empty key", b"", body(key=""), invalid),
        ("key differs", b"another-key", body(), DeadLetterReason.KEY_MISMATCH),
        ("no kafka key", None, body(), DeadLetterReason.KEY_MISMATCH),
        ("kafka key not UTF-8", b"\xff" + kb, body(), DeadLetterReason.KEY_MISMATCH),
        ("too large", kb, big, DeadLetterReason.TOO_LARGE),
        ("NaN", kb, text("NaN"), invalid),
        ("+Infinity", kb, text("Infinity"), invalid),
        ("-Infinity", kb, text("-Infinity"), invalid),
        ("1e999", kb, text("1e999"), invalid),
        ("beyond float32", kb, text("1e39"), invalid),
        ("timestamp unparseable", kb, body(timestamp="yesterday"), invalid),
        ("timestamp before 1970", kb, body(timestamp=-60_000), invalid),
        ("ISO before 1970", kb, body(timestamp="1969-12-31T23:00:00Z"), invalid),
        ("far future", kb, body(timestamp="2300-01-01T00:00:00Z"), invalid),
        ("naive ISO", kb, body(timestamp="2014-01-01T00:00:00"), invalid),
    ]


def test_awkward_input_is_dead_lettered_with_its_reason_and_the_rest_scored_exactly(
        deploy: Deploy, spawn: Callable[..., ProcessorProcess],
        outputs_of: Callable[[Settings], Outputs], series: Series, model: LoadedModel,
        fault_report: FaultReport) -> None:
    limit = 2000
    s = deploy(max_message_bytes=limit)
    keys, per_key, interval = 6, 60, 300_000
    rows = interleaved_rows(series, keys=keys, per_key=per_key, first_key=TRAINED_KEY)
    gap_key, dup_key, late_key, bad_key = (f"machine-{k:02d}" for k in (1, 2, 3, 4))
    # The gap key's 31st value comes 31 sampling intervals after its 30th: more than the 24
    # that restart a window.
    t0 = next(r.ts for r in rows if r.key == gap_key)
    shift = 30 * interval
    rows = [dataclasses.replace(r, ts=r.ts + shift)
            if r.key == gap_key and r.ts >= t0 + 30 * interval else r for r in rows]
    gap_ts = t0 + 30 * interval + shift
    valid_ts = next(r.ts for r in rows if r.key == bad_key)
    planted = _planted(bad_key, valid_ts, limit)

    # Interleave: every few good rows one bad record; the per-key duplicate and the late
    # record go right after the values they collide with.
    stream: list[tuple[str, bytes | None, bytes | None, Row | None, Expected | None]] = []
    seen: dict[str, list[Row]] = {}
    bad = iter(planted)
    for i, r in enumerate(rows):
        stream.append(("valid", *r.message(), r, None))
        mine = seen.setdefault(r.key, [])
        mine.append(r)
        if r.key == dup_key and len(mine) == 20:
            dup = Row(r.key, r.ts, r.value + 1.0)
            stream.append(("duplicate timestamp", *dup.message(), dup,
                           DeadLetterReason.DUPLICATE_TIMESTAMP))
        if r.key == late_key and len(mine) == 25:
            late = Row(r.key, mine[10].ts, r.value)
            stream.append(("late timestamp", *late.message(), late,
                           DeadLetterReason.OUT_OF_ORDER))
        if i % 12 == 5 and (nxt := next(bad, None)) is not None:
            label, key, value, reason = nxt
            stream.append((label, key, value, None, reason))
    assert next(bad, None) is None, "not every bad record was planted"

    out = outputs_of(s)
    proc = spawn(s, "p")
    proc.wait_ready()
    positions = produce_all(s.bootstrap_servers, s.input_topic,
                            [(k, v) for _, k, v, _, _ in stream])
    at = dict(zip(positions, stream, strict=True))
    expected = reference(model, [(p, item[3]) for p, item in at.items()
                                 if item[3] is not None])
    for pos, (label, _, _, row, reason) in at.items():
        if row is None:
            assert reason is not None
            expected[pos] = reason
        elif reason is not None:
            assert expected[pos] == reason, f"{label}: the reference disagrees"
    out.wait_for(len(stream), timeout=120, alive=lambda: proc.proc.poll() is None)
    status = proc.terminate()
    scored, dead = out.records()
    rec = reconcile(expected, scored, dead)
    record(fault_report, rec, restarts=0, label="awkward input mixed in")

    assert_exact(rec)
    assert status == 0, proc.tail()
    got = {(d.source_partition, d.source_offset): d for d in dead}
    for pos, (label, key, value, _row, reason) in at.items():
        if reason is None:
            continue
        letter = got.get(pos)
        assert letter is not None and letter.reason == reason, (label, letter)
        assert letter.source_topic == s.input_topic
        assert letter.original_key_b64 == (None if key is None
                                           else base64.b64encode(key).decode()), label
        assert letter.original_value_b64 == (None if value is None
                                             else base64.b64encode(value).decode()), label
    resets = [r for r in scored if r.status == Status.WINDOW_RESET]
    assert [(r.key, epoch_ms(r.timestamp)) for r in resets] == [(gap_key, gap_ts)]
    assert rec.inputs == len(stream) == rec.scored + rec.dead_lettered
    assert rec.dead_lettered == len(planted) + 2
