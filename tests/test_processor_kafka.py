"""The stream processor against a real Kafka broker with a real trained LSTM."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from confluent_kafka import Consumer, Producer, TopicPartition

from processor.config import Settings
from processor.dataset import read_csv
from processor.model_store import read_metadata, save_version
from processor.stream.app import Processor
from processor.stream.clients import ensure_topics
from processor.stream.model_topic import announce, announcement_for
from processor.train import TrainConfig, train
from schemas.records import Alert, DeadLetter, ScoredRecord, ms_to_datetime
from tests.nab_data import MACHINE_TEMP

pytestmark = [pytest.mark.broker, pytest.mark.slow]

WINDOW = 16


@pytest.fixture(scope="module")
def series():
    return read_csv(MACHINE_TEMP).slice(0, 4000)


@pytest.fixture(scope="module")
def outcome(series):
    # The stream's machinery, not the season, is under test here: the model reads its
    # window alone, so a key is scored after WINDOW values (test_nab_paths streams a
    # seasonal one).
    cfg = TrainConfig(name="m", window=WINDOW, units=16, epochs=3, batch_size=128,
                      quantile=0.001, season="none", verbose=0)
    return train([series], cfg, "test")


@pytest.fixture
def settings(kafka_bootstrap, tmp_path, outcome):
    run = uuid.uuid4().hex[:8]
    s = Settings(bootstrap_servers=kafka_bootstrap, input_topic=f"in-{run}",
                 scored_topic=f"scored-{run}", alert_topic=f"alerts-{run}",
                 dead_letter_topic=f"dlq-{run}", model_topic=f"models-{run}",
                 group_id=f"g-{run}", partitions=3, model_store=tmp_path / "store",
                 model_name="m", batch_max_wait_s=0.05)
    ensure_topics(s)
    path = save_version(s.model_store, outcome.metadata, outcome.network)
    announce(s, announcement_for(read_metadata(path), path))
    return s


class Running:
    """The processor on a thread, stopped (like SIGTERM would) at the end of the test."""

    def __init__(self, settings: Settings) -> None:
        self.stop = threading.Event()
        self.processor = Processor(settings, self.stop)
        self.error: BaseException | None = None
        self.policy_after: int | None = None  # the thread's scheduling policy after run()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            self.processor.run()
            self.policy_after = os.sched_getscheduler(0)
        except BaseException as exc:  # surfaced by close()
            self.error = exc

    def close(self) -> None:
        self.stop.set()
        self.thread.join(60)
        assert not self.thread.is_alive(), "processor did not stop"
        if self.error:
            raise self.error


@pytest.fixture
def processor(settings):
    running = Running(settings)
    yield running
    running.close()


def produce(settings: Settings, rows: list[tuple[str, int, float]],
            raw: list[tuple[bytes | None, bytes]] = ()) -> None:
    p = Producer({"bootstrap.servers": settings.bootstrap_servers})
    for key, ts, value in rows:
        body = {"key": key, "timestamp": ms_to_datetime(ts).isoformat(), "value": value}
        p.produce(settings.input_topic, json.dumps(body).encode(), key=key.encode())
    for key, value in raw:
        p.produce(settings.input_topic, value, key=key)
    assert p.flush(30) == 0


def read(settings: Settings, topic: str, expected: int, timeout: float = 120) -> list[bytes]:
    c = Consumer({"bootstrap.servers": settings.bootstrap_servers,
                  "group.id": f"reader-{uuid.uuid4()}", "auto.offset.reset": "earliest"})
    c.subscribe([topic])
    out: list[bytes] = []
    deadline = time.monotonic() + timeout
    try:
        while len(out) < expected and time.monotonic() < deadline:
            out += [m.value() for m in c.consume(500, 0.5) if not m.error()]
        # Anything beyond `expected` would be a duplicate: give it a moment to show up.
        end = time.monotonic() + 1.5
        while time.monotonic() < end:
            out += [m.value() for m in c.consume(500, 0.3) if not m.error()]
    finally:
        c.close()
    return out


def rows_for(series, key: str, start: int, n: int) -> list[tuple[str, int, float]]:
    return [(key, int(t), float(v)) for t, v in zip(series.timestamps[start:start + n],
                                                     series.values[start:start + n])]


def test_n_records_over_k_keys_give_exactly_n_scored(settings, processor, series):
    keys = ["machine_temperature_system_failure", "sensor-b", "sensor-c", "sensor-d"]
    rows = [r for i, k in enumerate(keys) for r in rows_for(series, k, 500 * i, 300)]
    produce(settings, rows)
    scored = [ScoredRecord.model_validate_json(v) for v in read(settings, settings.scored_topic,
                                                                 len(rows))]
    assert len(scored) == len(rows)
    seen = Counter((r.key, int(r.timestamp.timestamp() * 1000)) for r in scored)
    assert set(seen) == {(k, t) for k, t, _ in rows} and max(seen.values()) == 1
    per_key = Counter((r.key, r.status.value) for r in scored)
    for k in keys:
        assert per_key[(k, "window_filling")] == WINDOW
        assert per_key[(k, "scored")] == 300 - WINDOW
    trained = [r for r in scored if r.key == keys[0] and r.profile is not None]
    assert trained and all(r.profile == "key" for r in trained)
    assert all(r.profile == "default" for r in scored if r.key == "sensor-b" and r.profile)


def _planted(series, at: int) -> list[tuple[str, int, float]]:
    rows = rows_for(series, "machine_temperature_system_failure", 1000, 400)
    key, ts, value = rows[at]
    rows[at] = (key, ts, value + 40.0)
    return rows


def _offline_alerts(outcome, rows) -> list[int]:
    """Rows the engine alerts on when fed these rows in one go (no broker)."""
    from processor.detect import loaded_from_outcome
    from processor.engine import Engine, Observation

    engine = Engine(loaded_from_outcome(outcome, Path(".")))
    out = engine.process([Observation(k, t, v, 0, i) for i, (k, t, v) in enumerate(rows)])
    return [r.source_offset for r in out.scored if r.alert]


def test_planted_spike_raises_an_alert(settings, processor, series, outcome):
    # The series has incidents of its own, and an alert silences its key for 100 records:
    # plant the spike where the engine, offline, has no alert of the series' own in the
    # 100 rows before it (and the key has 100 scored values of history).
    spike_at = next((at for at in range(250, 400, 10)
                     if at in _offline_alerts(outcome, _planted(series, at))), None)
    assert spike_at is not None, "no row in 250..390 where a planted spike alerts offline"
    rows = _planted(series, spike_at)
    _, ts, value = rows[spike_at]
    produce(settings, rows)
    scored = [ScoredRecord.model_validate_json(v)
              for v in read(settings, settings.scored_topic, len(rows))]
    spike = [r for r in scored if int(r.timestamp.timestamp() * 1000) == ts]
    assert spike and spike[0].anomaly and spike[0].log_pd < spike[0].threshold
    assert spike[0].anomaly_score is not None and spike[0].anomaly_score > 0.5
    assert spike[0].peak and spike[0].alert
    flagged = [r for r in scored if r.alert]
    alerts = [Alert.model_validate_json(v)
              for v in read(settings, settings.alert_topic, len(flagged), timeout=30)]
    # One alert per record flagged `alert`, and no other.
    assert sorted((a.key, a.timestamp) for a in alerts) == sorted(
        (r.key, r.timestamp) for r in flagged)
    assert any(int(a.timestamp.timestamp() * 1000) == ts and a.value == value
               and a.anomaly_score == spike[0].anomaly_score
               and not a.expected_low <= a.value <= a.expected_high for a in alerts)


def test_malformed_records_are_dead_lettered_and_nothing_is_lost(settings, processor, series):
    good = rows_for(series, "k", 0, 40)
    bad = [(b"k", b"\xff\xfe not utf8"), (b"k", b"{oops"), (b"k", b'{"key":"k"}'),
           (b"other", json.dumps({"key": "k", "timestamp": 1, "value": 1.0}).encode()),
           (b"k", json.dumps({"key": "k", "timestamp": int(good[5][1]), "value": 2.0}).encode()),
           # Far in the future: taken, it would put every later record of "k" out of order.
           (b"k", json.dumps({"key": "k", "timestamp": "2199-01-01T00:00:00Z",
                              "value": 3.0}).encode())]
    produce(settings, good, bad)
    dead = [DeadLetter.model_validate_json(v)
            for v in read(settings, settings.dead_letter_topic, len(bad), timeout=60)]
    produce(settings, rows_for(series, "k", 40, 10))  # the key still takes real records
    scored = read(settings, settings.scored_topic, len(good) + 10)
    assert len(scored) == len(good) + 10
    assert len(dead) == len(bad)
    assert {d.reason.value for d in dead} >= {"not_utf8", "not_json", "invalid_field",
                                              "key_mismatch", "future_timestamp"}
    # The late duplicate (timestamp of row 5 again) is either a duplicate or out of order,
    # depending on how the batches fell; either way it is dead-lettered, not scored.
    assert {d.reason.value for d in dead} & {"duplicate_timestamp", "out_of_order"}
    assert all(d.source_topic == settings.input_topic for d in dead)


def test_new_model_version_is_picked_up_mid_stream(settings, processor, series, outcome):
    first = rows_for(series, "k", 0, 100)
    produce(settings, first)
    scored = [ScoredRecord.model_validate_json(v) for v in read(settings, settings.scored_topic,
                                                                 100)]
    v1 = outcome.metadata.version
    assert {r.model_version for r in scored} == {v1}

    v2 = "v99990101T000000000000Z"
    path = save_version(settings.model_store,
                        outcome.metadata.model_copy(update={"version": v2}), outcome.network)
    announce(settings, announcement_for(read_metadata(path), path))
    deadline = time.monotonic() + 30
    while processor.processor.counters.model_version != v2 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert processor.processor.counters.model_version == v2
    produce(settings, rows_for(series, "k", 100, 50))
    scored = [ScoredRecord.model_validate_json(v) for v in read(settings, settings.scored_topic,
                                                                 150)]
    assert len(scored) == 150
    later = [r for r in scored if int(r.timestamp.timestamp() * 1000) > first[-1][1]]
    assert len(later) == 50 and {r.model_version for r in later} == {v2}
    # Windows carried over the switch: no record after it was left unscored.
    assert all(r.status.value == "scored" for r in later)


def test_sigterm_stops_cleanly_with_offsets_committed(settings, series):
    env = {**os.environ, "KAFKA_BOOTSTRAP_SERVERS": settings.bootstrap_servers,
           "ANOMALY_INPUT_TOPIC": settings.input_topic,
           "ANOMALY_SCORED_TOPIC": settings.scored_topic,
           "ANOMALY_ALERT_TOPIC": settings.alert_topic,
           "ANOMALY_DEAD_LETTER_TOPIC": settings.dead_letter_topic,
           "ANOMALY_MODEL_TOPIC": settings.model_topic, "ANOMALY_GROUP_ID": settings.group_id,
           "ANOMALY_MODEL_STORE": str(settings.model_store), "ANOMALY_MODEL_NAME": "m"}
    proc = subprocess.Popen([sys.executable, "-m", "processor.cli", "run"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        rows = rows_for(series, "k", 0, 120)
        produce(settings, rows)
        assert len(read(settings, settings.scored_topic, len(rows))) == len(rows)
        policies = _thread_policies(proc.pid)
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0
    events = [json.loads(line) for line in out.decode().splitlines() if line.startswith("{")]
    stopped = [e for e in events if e.get("event") == "processor_stopped"]
    assert stopped and stopped[0]["records_in"] == len(rows)
    c = Consumer({"bootstrap.servers": settings.bootstrap_servers, "group.id": settings.group_id})
    try:
        parts = [TopicPartition(settings.input_topic, p) for p in range(settings.partitions)]
        committed = c.committed(parts, timeout=10)
        ends = [c.get_watermark_offsets(tp, timeout=10)[1] for tp in parts]
    finally:
        c.close()
    assert sum(max(tp.offset, 0) for tp in committed) == len(rows)
    assert [max(tp.offset, 0) for tp in committed] == ends
    # The Kafka clients' threads yield to the forward pass; TensorFlow's keep the default.
    kafka = {n: p for n, p in policies.items() if n.startswith("rdk:")}
    model = {n: p for n, p in policies.items() if n.startswith("tf_")}
    assert kafka and set(kafka.values()) == {os.SCHED_BATCH}, policies
    assert model and set(model.values()) == {os.SCHED_OTHER}, policies


def _thread_policies(pid: int) -> dict[str, int]:
    """Each thread's scheduling policy, by thread name and id."""
    out = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            name = Path(f"/proc/{pid}/task/{tid}/comm").read_text().strip()
            out[f"{name}/{tid}"] = os.sched_getscheduler(int(tid))
        except OSError:
            continue  # ended meanwhile
    return out


def test_scored_values_match_the_input(settings, processor, series):
    rows = rows_for(series, "k", 2000, 80)
    produce(settings, rows)
    scored = sorted((ScoredRecord.model_validate_json(v)
                     for v in read(settings, settings.scored_topic, len(rows))),
                    key=lambda r: r.timestamp)
    np.testing.assert_allclose([r.value for r in scored], [v for _, _, v in rows])
    for r in scored:
        if r.prediction is not None:
            assert r.error == pytest.approx(r.value - r.prediction)



@pytest.mark.parametrize("guarantee", ["at_least_once", "exactly_once"])
def test_offsets_are_committed_while_the_processor_idles(settings, series, guarantee):
    """Once input stops, every consumed offset is committed without waiting for more
    input or a shutdown: a crash while idle must not replay what was already emitted."""
    running = Running(settings.model_copy(update={"processing_guarantee": guarantee}))
    c = Consumer({"bootstrap.servers": settings.bootstrap_servers,
                  "group.id": settings.group_id})
    try:
        rows = rows_for(series, "k", 0, 120)
        produce(settings, rows)
        assert len(read(settings, settings.scored_topic, len(rows))) == len(rows)
        parts = [TopicPartition(settings.input_topic, p) for p in range(settings.partitions)]
        ends = [c.get_watermark_offsets(tp, timeout=10)[1] for tp in parts]
        deadline = time.monotonic() + 10
        while True:
            committed = [max(tp.offset, 0) for tp in c.committed(parts, timeout=10)]
            if committed == ends or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert running.thread.is_alive()
        assert committed == ends
        assert running.processor.counters.records_in == len(rows)
    finally:
        c.close()
        running.close()
    # The processor ran its threads under SCHED_BATCH; the caller's thread is as it was.
    assert running.policy_after == os.SCHED_OTHER
