"""Read a topic from a point in time to its current end (training and plotting inputs)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

from confluent_kafka import OFFSET_END, Consumer, KafkaError, TopicPartition

from processor.config import Settings
from processor.stream.clients import base_config
from processor.stream.codec import RawRecord


class TopicReadError(Exception):
    pass


def read_range(
    settings: Settings,
    topic: str,
    since_ms: int | None = None,
    until_ms: int | None = None,
    timeout_s: float = 30.0,
) -> Iterator[RawRecord]:
    """Records whose Kafka timestamp is in [since_ms, until_ms], partition by partition.

    Start offsets are looked up by time (`offsets_for_times`); the end is each partition's
    high watermark when reading starts, so a busy topic still ends.
    """
    consumer = Consumer({
        **base_config(settings),
        "group.id": f"reader-{uuid.uuid4()}",
        "enable.auto.commit": False,
        "isolation.level": "read_committed",
        "enable.partition.eof": True,
    })
    try:
        meta = consumer.list_topics(topic, timeout=timeout_s).topics.get(topic)
        if meta is None or meta.error is not None:
            raise TopicReadError(f"topic {topic!r} not found on {settings.bootstrap_servers}")
        parts = [TopicPartition(topic, p, since_ms if since_ms is not None else 0)
                 for p in sorted(meta.partitions)]
        starts = consumer.offsets_for_times(parts, timeout=timeout_s)
        for tp in starts:
            _low, high = consumer.get_watermark_offsets(TopicPartition(topic, tp.partition),
                                                        timeout=timeout_s)
            start = high if tp.offset in (OFFSET_END, -1) else tp.offset
            if start >= high:
                continue
            consumer.assign([TopicPartition(topic, tp.partition, start)])
            position = start
            while position < high:
                msg = consumer.poll(timeout_s)
                if msg is None:
                    raise TopicReadError(f"timed out reading {topic}[{tp.partition}] at "
                                         f"offset {position} (end {high})")
                err = msg.error()
                if err is not None:
                    if err.code() == KafkaError._PARTITION_EOF:
                        break
                    raise TopicReadError(str(err))
                position = (msg.offset() or 0) + 1
                _kind, ts = msg.timestamp()
                if until_ms is not None and ts > until_ms:
                    break
                yield RawRecord(topic, tp.partition, msg.offset() or 0, msg.key(), msg.value())
    finally:
        consumer.close()
