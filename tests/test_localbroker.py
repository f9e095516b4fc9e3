"""The broker the other tests rely on really behaves like Kafka.

Round-tripping records and read_committed isolation together show the single-node settings
(internal topics at replication factor 1) are right: with a wrong transaction-state config,
init_transactions() times out instead of failing loudly.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest
from confluent_kafka import Consumer, Producer

from processor import localbroker
from tests.conftest import TopicFactory

TIMEOUT_S = 30.0


def _consume(
    bootstrap: str,
    topic: str,
    *,
    isolation: str,
    done: Callable[[list[tuple[bytes | None, bytes | None]]], bool],
    linger_s: float = 0.0,
) -> list[tuple[bytes | None, bytes | None]]:
    """Read ``topic`` from the start with a fresh group until ``done`` (then ``linger_s``
    more, so duplicates or leaked records would surface) or the timeout."""
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"test-{uuid.uuid4().hex[:8]}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
            "isolation.level": isolation,
        }
    )
    got: list[tuple[bytes | None, bytes | None]] = []
    try:
        consumer.subscribe([topic])
        deadline = time.monotonic() + TIMEOUT_S
        linger_until: float | None = None
        while time.monotonic() < (linger_until or deadline):
            for msg in consumer.consume(num_messages=500, timeout=0.2):
                assert msg.error() is None, msg.error()
                got.append((msg.key(), msg.value()))
            if linger_until is None and done(got):
                linger_until = time.monotonic() + linger_s
    finally:
        consumer.close()
    return got


@pytest.mark.broker
def test_produce_then_consume_every_message_exactly_once(
    kafka_bootstrap: str, topic_factory: TopicFactory
) -> None:
    topic = topic_factory(partitions=3)
    n = 1000
    sent = {(f"key-{i % 17}".encode(), f"value-{i}".encode()) for i in range(n)}
    producer = Producer({"bootstrap.servers": kafka_bootstrap, "enable.idempotence": True})
    for key, value in sorted(sent):
        producer.produce(topic, key=key, value=value)
    assert producer.flush(TIMEOUT_S) == 0

    got = _consume(
        kafka_bootstrap, topic, isolation="read_uncommitted",
        done=lambda g: len(g) >= n, linger_s=1.0,
    )

    assert len(got) == n
    assert set(got) == sent


@pytest.mark.broker
def test_read_committed_sees_only_committed_transactions(
    kafka_bootstrap: str, topic_factory: TopicFactory
) -> None:
    topic = topic_factory(partitions=1)
    producer = Producer(
        {
            "bootstrap.servers": kafka_bootstrap,
            "transactional.id": f"test-tx-{uuid.uuid4().hex[:8]}",
        }
    )
    producer.init_transactions(TIMEOUT_S)

    def transaction(label: str, count: int, commit: bool) -> None:
        producer.begin_transaction()
        for i in range(count):
            producer.produce(topic, key=b"k", value=f"{label}-{i}".encode())
        producer.flush(TIMEOUT_S)
        if commit:
            producer.commit_transaction(TIMEOUT_S)
        else:
            producer.abort_transaction(TIMEOUT_S)

    transaction("committed", 10, commit=True)
    transaction("aborted", 10, commit=False)
    # A commit after the abort forces the consumer to skip aborted data mid-log.
    transaction("later", 5, commit=True)

    expected = [f"committed-{i}".encode() for i in range(10)]
    expected += [f"later-{i}".encode() for i in range(5)]

    committed = _consume(
        kafka_bootstrap, topic, isolation="read_committed",
        done=lambda g: any(v == b"later-4" for _, v in g), linger_s=1.0,
    )
    assert [value for _, value in committed] == expected

    # The aborted records were written; only isolation hides them.
    everything = _consume(
        kafka_bootstrap, topic, isolation="read_uncommitted", done=lambda g: len(g) >= 25
    )
    assert sum(1 for _, v in everything if v and v.startswith(b"aborted-")) == 10


def test_status_of_absent_broker_and_usage_errors(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv(localbroker.HOME_ENV, str(tmp_path))
    state = tmp_path / "broker-1"
    state.mkdir()
    (state / "broker.pid").write_text("999999999\n")  # stale: no such process

    assert localbroker.cli(["status", "--port", "1"]) == 1
    assert "not running (127.0.0.1:1" in capsys.readouterr().out
    assert not (state / "broker.pid").exists()

    assert localbroker.cli(["stop", "--port", "1"]) == 0
    assert localbroker.cli(["restart"]) == 2
    assert localbroker.cli(["start", "--port", "x"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 2 and all(line.startswith("anomaly broker: error:") for line in err)
