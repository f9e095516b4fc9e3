"""Model versions on the compacted model topic: announcing them and watching for them.

The topic's key is the model name, so compaction keeps the latest announcement per model.
The newest announcement wins (not the greatest version), so re-announcing an older version
rolls back.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from pathlib import Path

import structlog
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, Producer, TopicPartition

from processor.config import Settings
from processor.model_store import ModelMetadata
from processor.stream.clients import base_config, producer_config
from schemas.records import ModelAnnouncement

log = structlog.get_logger(__name__)


class AnnounceError(Exception):
    pass


def announcement_for(metadata: ModelMetadata, version_dir: Path) -> ModelAnnouncement:
    return ModelAnnouncement(
        name=metadata.name, version=metadata.version, created_at=datetime.now(UTC),
        artifact_uri=str(version_dir.resolve()), checksum=metadata.checksum,
        window=metadata.window, keys=sorted(metadata.profiles),
        threshold_method=metadata.threshold_method, metrics=metadata.metrics,
    )


def announce(settings: Settings, announcement: ModelAnnouncement, timeout_s: float = 30) -> None:
    """Publish and wait until the broker has it."""
    producer = Producer(producer_config(settings))
    errors: list[str] = []

    def on_delivery(err: KafkaError | None, _msg: object) -> None:
        if err is not None:
            errors.append(str(err))

    producer.produce(settings.model_topic, announcement.model_dump_json().encode(),
                     key=announcement.name.encode(), on_delivery=on_delivery)
    remaining = producer.flush(timeout_s)
    if remaining or errors:
        raise AnnounceError(f"announcing {announcement.version} on {settings.model_topic} "
                            f"failed: {errors or 'not delivered in time'}")
    log.info("model_announced", version=announcement.version, topic=settings.model_topic)


class ModelWatcher:
    """Follows the model topic from its start; `poll` returns a newly announced version."""

    def __init__(self, settings: Settings) -> None:
        self.name = settings.model_name
        self.topic = settings.model_topic
        self._consumer = Consumer({
            **base_config(settings),
            "group.id": f"model-watch-{uuid.uuid4()}",
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
            "isolation.level": "read_committed",
        })
        self._consumer.assign([TopicPartition(self.topic, 0, OFFSET_BEGINNING)])
        self.latest: ModelAnnouncement | None = None

    def catch_up(self, timeout_s: float = 10.0) -> ModelAnnouncement | None:
        """Read to the end of the topic as it is now; return the newest announcement."""
        _low, high = self._consumer.get_watermark_offsets(
            TopicPartition(self.topic, 0), timeout=timeout_s)
        position = 0
        while position < high:
            msg = self._consumer.poll(timeout_s)
            if msg is None:
                break
            if not msg.error():
                position = (msg.offset() or 0) + 1
            self._take(msg)
        return self.latest

    def poll(self) -> ModelAnnouncement | None:
        """Non-blocking: the newest announcement arrived since the last call, if any."""
        before = self.latest
        while (msg := self._consumer.poll(0)) is not None:
            self._take(msg)
        return self.latest if self.latest is not before else None

    def _take(self, msg: object) -> None:
        err = msg.error()  # type: ignore[attr-defined]
        if err is not None:
            if err.code() != KafkaError._PARTITION_EOF:
                log.warning("model_topic_error", error=str(err))
            return
        if msg.key() != self.name.encode():  # type: ignore[attr-defined]
            return
        value = msg.value()  # type: ignore[attr-defined]
        if value is None:
            return
        try:
            self.latest = ModelAnnouncement.model_validate_json(value)
        except ValueError as exc:
            log.warning("model_announcement_invalid", offset=msg.offset(),  # type: ignore[attr-defined]
                        error=str(exc)[:300])

    def close(self) -> None:
        self._consumer.close()
