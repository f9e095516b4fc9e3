"""Helpers for tests that run the processor against a real broker.

Inputs are identified by where they landed (partition, offset), which every scored record
and dead letter names, so a run can be reconciled exactly: each input must have exactly
one output, and each scored record must equal what the offline engine computes for it.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    KafkaError,
    Message,
    Producer,
    TopicPartition,
)

from processor.config import Settings
from processor.dataset import Series
from processor.engine import Engine, Observation
from processor.model_store import LoadedModel
from schemas.records import DeadLetter, DeadLetterReason, ScoredRecord

REPO_ROOT = Path(__file__).resolve().parents[1]
#: The processor's default; the reference engine must reset windows exactly like it.
GAP_RESET_INTERVALS = Settings.model_fields["gap_reset_intervals"].default
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

Position = tuple[int, int]  # (partition, offset) of an input record


@dataclass(frozen=True)
class Row:
    """One valid observation to produce."""

    key: str
    ts: int
    value: float

    def message(self) -> tuple[bytes, bytes]:
        body = {"key": self.key, "timestamp": self.ts, "value": self.value}
        return self.key.encode(), json.dumps(body).encode()


def epoch_ms(dt: datetime) -> int:
    """Exact epoch milliseconds (float seconds could round a millisecond away)."""
    return (dt - _EPOCH) // timedelta(milliseconds=1)


def free_ports(count: int) -> list[int]:
    """Distinct ports the OS just handed out (all held open together)."""
    socks = [socket.socket(socket.AF_INET, socket.SOCK_STREAM) for _ in range(count)]
    try:
        for sock in socks:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in socks]
    finally:
        for sock in socks:
            sock.close()


def interleaved_rows(series: Series, keys: int, per_key: int,
                     first_key: str | None = None) -> list[Row]:
    """`keys` series cut from different stretches of a real series, interleaved round-robin.

    Timestamps are five minutes apart (the file's own interval) so none repeats; the file
    itself repeats an hour, which would turn valid-looking rows into dead letters.
    """
    span = len(series) - per_key
    rows: list[list[Row]] = []
    for k in range(keys):
        start = k * span // max(keys - 1, 1)
        name = first_key if k == 0 and first_key else f"machine-{k:02d}"
        t0 = int(series.timestamps[start])
        rows.append([Row(name, t0 + j * 300_000, float(series.values[start + j]))
                     for j in range(per_key)])
    return [rows[k][j] for j in range(per_key) for k in range(keys)]


def scratch_settings(bootstrap: str, store: Path, state_dir: Path,
                     **overrides: Any) -> Settings:
    """Settings with topics and a group no other test uses."""
    run = uuid.uuid4().hex[:10]
    base: dict[str, Any] = {
        "bootstrap_servers": bootstrap, "input_topic": f"in-{run}",
        "scored_topic": f"scored-{run}", "alert_topic": f"alerts-{run}",
        "dead_letter_topic": f"dlq-{run}", "model_topic": f"models-{run}",
        "group_id": f"g-{run}", "partitions": 4, "model_store": store, "model_name": "m",
        "state_dir": state_dir, "batch_max_wait_s": 0.05,
    }
    return Settings(**{**base, **overrides})


def processor_env(settings: Settings, **changes: Any) -> dict[str, str]:
    """The environment that makes `anomaly run` use exactly these settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ANOMALY_")}
    values = settings.model_copy(update=changes).model_dump(mode="json")
    for name, value in values.items():
        if value is None:
            continue
        text = json.dumps(value) if isinstance(value, dict | list) else (
            str(value).lower() if isinstance(value, bool) else str(value))
        env[f"ANOMALY_{name.upper()}"] = text
    env["KAFKA_BOOTSTRAP_SERVERS"] = env["ANOMALY_BOOTSTRAP_SERVERS"]
    env["TF_CPP_MIN_LOG_LEVEL"] = "2"
    return env


class ProcessorProcess:
    """`anomaly run` as a child process, its JSON log (stderr) in a file the test reads."""

    def __init__(self, env: dict[str, str], log_path: Path) -> None:
        self.log_path = log_path
        self.started = time.monotonic()
        with log_path.open("wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "processor.cli", "run"], env=env, cwd=REPO_ROOT,
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)

    def events(self) -> list[dict[str, Any]]:
        out = []
        for line in self.log_path.read_text(errors="replace").splitlines():
            if line.startswith("{"):
                with contextlib.suppress(ValueError):
                    out.append(json.loads(line))
        return out

    def wait_for(self, predicate: Callable[[dict[str, Any]], bool],
                 timeout: float) -> dict[str, Any]:
        """The first log event that satisfies `predicate`."""
        deadline = time.monotonic() + timeout
        while True:
            for event in self.events():
                if predicate(event):
                    return event
            if self.proc.poll() is not None:
                raise AssertionError(f"processor exited ({self.proc.returncode}) before the "
                                     f"awaited event; log tail:\n{self.tail()}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"awaited event not logged in {timeout} s; log tail:\n"
                                   f"{self.tail()}")
            time.sleep(0.05)

    def wait_ready(self, timeout: float = 90) -> float:
        """Wait until it has restored its partitions; return seconds since start."""
        self.wait_for(lambda e: e.get("event") == "state_restored", timeout)
        return time.monotonic() - self.started

    def assigned(self) -> set[int]:
        """Partitions it holds according to its own log."""
        held: set[int] = set()
        for e in self.events():
            if e.get("event") == "partitions_assigned":
                held |= set(e["partitions"])
            elif e.get("event") in ("partitions_revoked", "partitions_lost"):
                held -= set(e["partitions"])
        return held

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(30)

    def terminate(self, timeout: float = 60) -> int:
        """SIGTERM, then the exit status (the process is killed if it hangs)."""
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f"processor ignored SIGTERM; log tail:\n{self.tail()}") from None

    def close(self) -> None:
        """Make sure nothing outlives the test."""
        if self.proc.poll() is None:
            self.kill()

    def tail(self, lines: int = 30) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])


class PacedProducer:
    """Produces messages on a thread at a steady rate, remembering where each one landed."""

    def __init__(self, bootstrap: str, topic: str,
                 messages: Sequence[tuple[bytes | None, bytes | None]],
                 rate_per_s: float = 0.0) -> None:
        self.topic = topic
        self.messages = list(messages)
        self.rate = rate_per_s
        self.positions: list[Position | None] = [None] * len(self.messages)
        self.errors: list[str] = []
        self.sent = 0
        self._producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True,
                                   "acks": "all", "linger.ms": 5,
                                   "message.timeout.ms": 300_000})
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._failure: BaseException | None = None

    def start(self) -> PacedProducer:
        self._thread.start()
        return self

    def _deliver(self, index: int) -> Callable[[KafkaError | None, Message], None]:
        def on_delivery(err: KafkaError | None, msg: Message) -> None:
            if err is not None:
                self.errors.append(str(err))
            else:
                self.positions[index] = (msg.partition() or 0, msg.offset() or 0)
        return on_delivery

    def _run(self) -> None:
        try:
            started = time.monotonic()
            for i, (key, value) in enumerate(self.messages):
                if self.rate:
                    due = started + i / self.rate
                    while (wait := due - time.monotonic()) > 0:
                        self._producer.poll(min(wait, 0.05))
                while True:
                    try:
                        self._producer.produce(self.topic, value, key=key,
                                               on_delivery=self._deliver(i))
                        break
                    except BufferError:
                        self._producer.poll(0.1)
                self.sent = i + 1
                self._producer.poll(0)
            deadline = time.monotonic() + 300
            while self._producer.flush(1.0) and time.monotonic() < deadline:
                pass
        except BaseException as exc:  # surfaced by join()
            self._failure = exc

    def join(self, timeout: float) -> list[Position]:
        """Wait for every delivery report; return each message's position."""
        self._thread.join(timeout)
        assert not self._thread.is_alive(), "producing did not finish in time"
        if self._failure is not None:
            raise self._failure
        assert not self.errors, f"delivery failed: {self.errors[:3]}"
        missing = [i for i, p in enumerate(self.positions) if p is None]
        assert not missing, f"{len(missing)} messages were never acknowledged"
        return [p for p in self.positions if p is not None]


def produce_all(bootstrap: str, topic: str,
                messages: Sequence[tuple[bytes | None, bytes | None]]) -> list[Position]:
    """Produce at once and return where each message landed."""
    return PacedProducer(bootstrap, topic, messages).start().join(120)


class TopicTail:
    """Reads a topic read_committed from its start on a thread, as any downstream would."""

    def __init__(self, bootstrap: str, topic: str, partitions: int) -> None:
        self._consumer = Consumer({"bootstrap.servers": bootstrap,
                                   "group.id": f"tail-{uuid.uuid4()}",
                                   "enable.auto.commit": False,
                                   "isolation.level": "read_committed"})
        self._consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING)
                               for p in range(partitions)])
        self.values: list[bytes] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            got = [m.value() for m in self._consumer.consume(1000, 0.2) if not m.error()]
            if got:
                with self._lock:
                    self.values.extend(v for v in got if v is not None)

    def __len__(self) -> int:
        with self._lock:
            return len(self.values)

    def snapshot(self) -> list[bytes]:
        with self._lock:
            return list(self.values)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(10)
        self._consumer.close()


def count_uncommitted(bootstrap: str, topic: str, partitions: int,
                      timeout: float = 60) -> int:
    """Messages in a topic including those of aborted transactions (read_uncommitted)."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"count-{uuid.uuid4()}",
                         "enable.auto.commit": False, "enable.partition.eof": True,
                         "isolation.level": "read_uncommitted"})
    consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in range(partitions)])
    pending, count = set(range(partitions)), 0
    deadline = time.monotonic() + timeout
    try:
        while pending:
            assert time.monotonic() < deadline, f"{topic} not read to its end in {timeout} s"
            for msg in consumer.consume(1000, 0.5):
                err = msg.error()
                if err is None:
                    count += 1
                elif err.code() == KafkaError._PARTITION_EOF:
                    pending.discard(msg.partition() or 0)
    finally:
        consumer.close()
    return count


class Outputs:
    """The scored and dead-letter topics of one run, tailed from the start."""

    def __init__(self, settings: Settings) -> None:
        s = settings
        self.scored = TopicTail(s.bootstrap_servers, s.scored_topic, s.partitions)
        self.dead = TopicTail(s.bootstrap_servers, s.dead_letter_topic, s.partitions)

    def __len__(self) -> int:
        return len(self.scored) + len(self.dead)

    def wait_for(self, count: int, timeout: float, settle_s: float = 2.0,
                 alive: Callable[[], bool] | None = None) -> None:
        """Until `count` outputs are visible, then a pause for any duplicates to show up."""
        deadline = time.monotonic() + timeout
        while len(self) < count:
            if alive is not None and not alive():
                raise AssertionError(f"processing stopped at {len(self)} of {count} outputs")
            if time.monotonic() > deadline:
                raise TimeoutError(f"{len(self)} of {count} outputs after {timeout} s")
            time.sleep(0.1)
        time.sleep(settle_s)

    def records(self) -> tuple[list[ScoredRecord], list[DeadLetter]]:
        return ([ScoredRecord.model_validate_json(v) for v in self.scored.snapshot()],
                [DeadLetter.model_validate_json(v) for v in self.dead.snapshot()])

    def close(self) -> None:
        self.scored.close()
        self.dead.close()


Expected = ScoredRecord | DeadLetterReason


def reference(model: LoadedModel,
              inputs: Iterable[tuple[Position, Row]]) -> dict[Position, Expected]:
    """What an uninterrupted run must emit for each valid-looking input, computed offline.

    One engine fed every input in order: only the per-key order matters, and the
    predictions do not depend on how records fall into batches.
    """
    engine = Engine(model, gap_reset_intervals=GAP_RESET_INTERVALS)
    observations = [Observation(r.key, r.ts, r.value, p, o) for (p, o), r in inputs]
    result = engine.process(observations)
    out: dict[Position, Expected] = {
        (r.source_partition, r.source_offset): r for r in result.scored}
    for rej in result.rejected:
        out[(rej.observation.partition, rej.observation.offset)] = rej.reason
    return out


@dataclass
class Reconciliation:
    """How a run's outputs compare with its inputs and the offline reference."""

    inputs: int
    scored: int
    dead_lettered: int
    duplicates: int
    lost: int
    score_mismatches: int
    reason_mismatches: int
    strays: int
    examples: list[str] = field(default_factory=list)

    @property
    def exact(self) -> bool:
        return not (self.duplicates or self.lost or self.score_mismatches
                    or self.reason_mismatches or self.strays)


def reconcile(expected: dict[Position, Expected], scored: Sequence[ScoredRecord],
              dead: Sequence[DeadLetter]) -> Reconciliation:
    """Exactly one output per input, equal (bit for bit) to the expected one."""
    per_input: Counter[Position] = Counter()
    examples: list[str] = []
    score_mismatches = reason_mismatches = strays = 0
    for r in scored:
        pos = (r.source_partition, r.source_offset)
        per_input[pos] += 1
        want = expected.get(pos)
        if want is None:
            strays += 1
        elif want != r:
            score_mismatches += 1
            if len(examples) < 5:
                examples.append(f"{pos}: got {r!r}, expected {want!r}")
    for d in dead:
        pos = (d.source_partition, d.source_offset)
        per_input[pos] += 1
        want = expected.get(pos)
        if want is None:
            strays += 1
        elif want != d.reason:
            reason_mismatches += 1
            if len(examples) < 5:
                examples.append(f"{pos}: dead letter {d.reason.value} ({d.detail}), "
                                f"expected {want!r}")
    duplicates = sum(n - 1 for n in per_input.values() if n > 1)
    lost = sum(1 for pos in expected if pos not in per_input)
    scored_inputs = {(r.source_partition, r.source_offset) for r in scored}
    dead_inputs = {(d.source_partition, d.source_offset) for d in dead}
    return Reconciliation(len(expected), len(scored_inputs), len(dead_inputs), duplicates, lost,
                          score_mismatches, reason_mismatches, strays, examples)
