"""Kafka client settings and topic set-up, in one place for every command."""

from __future__ import annotations

import time
from typing import Any

import structlog
from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewTopic

from processor.config import Settings

log = structlog.get_logger(__name__)


def base_config(settings: Settings) -> dict[str, Any]:
    return {"bootstrap.servers": settings.bootstrap_servers, **settings.kafka_config}


def producer_config(settings: Settings, **overrides: Any) -> dict[str, Any]:
    """Idempotent producer: retries never duplicate or reorder within a partition.

    `kafka_config` overrides the tuning defaults (linger, compression) but not what the
    delivery guarantees rest on (idempotence, acks=all)."""
    return {
        "linger.ms": 5,
        "compression.type": "lz4",
        **base_config(settings),
        "enable.idempotence": True,
        "acks": "all",
        **overrides,
    }


def consumer_config(settings: Settings, **overrides: Any) -> dict[str, Any]:
    """Manual commits: offsets move only after the outputs of those records are delivered.

    `kafka_config` overrides the defaults (offset reset, assignment strategy) but not
    manual commits or `read_committed`."""
    return {
        "auto.offset.reset": "earliest",
        "partition.assignment.strategy": "cooperative-sticky",
        **base_config(settings),
        "group.id": settings.group_id,
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        "isolation.level": "read_committed",
        **overrides,
    }


def check_broker(settings: Settings, timeout_s: float = 10.0) -> None:
    """Raise `KafkaException` unless a broker answers a metadata request in time: a
    command that ends by publishing checks this before its long work, not after."""
    try:
        AdminClient(base_config(settings)).list_topics(timeout=timeout_s)
    except KafkaException as exc:
        raise KafkaException(f"no Kafka broker answers at {settings.bootstrap_servers} "
                             f"within {timeout_s:g} s ({exc.args[0]})") from None


def ensure_topics(settings: Settings, timeout_s: float = 30.0) -> None:
    """Create the processor's topics if missing; the model topic is compacted."""
    admin = AdminClient(base_config(settings))
    wanted = {
        settings.input_topic: NewTopic(settings.input_topic, settings.partitions),
        settings.scored_topic: NewTopic(settings.scored_topic, settings.partitions),
        settings.alert_topic: NewTopic(settings.alert_topic, settings.partitions),
        settings.dead_letter_topic: NewTopic(settings.dead_letter_topic, settings.partitions),
        settings.model_topic: NewTopic(settings.model_topic, 1,
                                       config={"cleanup.policy": "compact"}),
    }
    _create_missing(admin, wanted, timeout_s)
    # The changelog must have exactly the input topic's partitions (co-partitioning).
    n_input = partition_count(admin, settings.input_topic, timeout_s)
    changelog = NewTopic(settings.changelog_topic, n_input, config={"cleanup.policy": "compact"})
    _create_missing(admin, {settings.changelog_topic: changelog}, timeout_s)
    n_changelog = partition_count(admin, settings.changelog_topic, timeout_s)
    if n_changelog != n_input:
        raise KafkaException(f"{settings.changelog_topic} has {n_changelog} partitions but "
                             f"{settings.input_topic} has {n_input}; they must match")


def partition_count(admin: AdminClient, topic: str, timeout_s: float) -> int:
    """Partitions of a topic once each has a leader (metadata lags just after creation)."""
    deadline = time.monotonic() + timeout_s
    while True:
        meta = admin.list_topics(topic, timeout=timeout_s).topics.get(topic)
        if (meta is not None and meta.error is None and meta.partitions
                and all(p.leader >= 0 for p in meta.partitions.values())):
            return len(meta.partitions)
        if time.monotonic() > deadline:
            raise KafkaException(f"topic {topic} has no partitions in the broker's metadata")
        time.sleep(0.1)


def _create_missing(admin: AdminClient, wanted: dict[str, NewTopic], timeout_s: float) -> None:
    existing = set(admin.list_topics(timeout=timeout_s).topics)
    missing = [t for name, t in wanted.items() if name not in existing]
    if not missing:
        return
    for name, future in admin.create_topics(missing, request_timeout=timeout_s).items():
        try:
            future.result()
            log.info("topic_created", topic=name)
        except KafkaException as exc:
            if "TOPIC_ALREADY_EXISTS" not in str(exc):
                raise
        partition_count(admin, name, timeout_s)  # usable only once every partition has a leader
