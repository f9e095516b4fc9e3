"""The per-key state (window and score history) on a compacted changelog topic, and
restoring it.

The changelog is co-partitioned with the input topic: a key's state lives in the changelog
partition with the number of the input partition the key arrives on, so a processor that
is assigned input partition p restores exactly changelog partition p. With exactly-once
processing the state updates of a batch commit in the same transaction as its outputs and
offsets, so a restored window always matches the committed input position.
"""

from __future__ import annotations

import struct
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import structlog
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, TopicPartition

from processor.calibration import KeyScoreState
from processor.config import Settings
from processor.stream.clients import base_config
from processor.windows import KeyState, StateColumns

if TYPE_CHECKING:
    from processor.engine import Engine

log = structlog.get_logger(__name__)

#: Format 1 held the window alone; 2 appends the score history.
_FORMAT = 2
_HEADER = struct.Struct("<BqqiH")  # format, count, last_ts, partition, number of values
#: deviations seen, `seen` at the last alert, reference panes + 1, peak panes + 1
_SCORES = struct.Struct("<qqHH")


class RestoreError(Exception):
    """The changelog could not be read to its end in time."""


def _encode_scores(scores: KeyScoreState) -> bytes:
    return (_SCORES.pack(scores.seen, scores.alerted, len(scores.top), len(scores.peaks))
            + np.ascontiguousarray(scores.top, dtype="<f4").tobytes()
            + np.ascontiguousarray(scores.peaks, dtype="<f4").tobytes())


def encode_state(state: KeyState, scores: KeyScoreState) -> bytes:
    values = np.ascontiguousarray(state.values, dtype="<f4")
    return (_HEADER.pack(_FORMAT, state.count, state.last_ts, state.partition, len(values))
            + values.tobytes() + _encode_scores(scores))


def encode_states(states: StateColumns, scores: list[KeyScoreState]) -> list[bytes]:
    """`encode_state` for many keys at once, byte for byte the same."""
    rows = np.ascontiguousarray(states.values, dtype="<f4")
    width = rows.shape[1]
    pack = _HEADER.pack
    out = []
    for i, (count, last_ts, partition) in enumerate(zip(
            states.count.tolist(), states.last_ts.tolist(), states.partition.tolist(),
            strict=True)):
        n = min(count, width)
        out.append(pack(_FORMAT, count, last_ts, partition, n) + rows[i, width - n:].tobytes()
                   + _encode_scores(scores[i]))
    return out


def decode_state(data: bytes) -> tuple[KeyState, KeyScoreState | None]:
    """The window and, from format 2 on, the score history (None: start one afresh)."""
    fmt, count, last_ts, partition, n = _HEADER.unpack_from(data)
    if fmt not in (1, 2):
        raise ValueError(f"unknown changelog format {fmt}")
    values = np.frombuffer(data, dtype="<f4", count=n, offset=_HEADER.size).astype(np.float32)
    state = KeyState(values, count, last_ts, partition)
    if fmt == 1:
        return state, None
    at = _HEADER.size + 4 * n
    seen, alerted, panes, peaks = _SCORES.unpack_from(data, at)
    at += _SCORES.size
    top = np.frombuffer(data, "<f4", 2 * panes, at).reshape(panes, 2).astype(np.float32)
    at += 8 * panes
    peak = np.frombuffer(data, "<f4", peaks, at).astype(np.float32)
    return state, KeyScoreState(seen, top, peak, alerted)


@dataclass(frozen=True)
class RestoreStats:
    partitions: list[int]
    records: int
    keys: int
    seconds: float


def restore(settings: Settings, partitions: Iterable[int], engine: Engine,
            now: float = 0.0, on_progress: Callable[[], None] | None = None) -> RestoreStats:
    """Read the changelog partitions from the start to their current end into `engine`.

    Bounded by `settings.restore_timeout_s`; progress is logged every few seconds.
    """
    parts = sorted(set(partitions))
    topic = settings.changelog_topic
    started = time.monotonic()
    consumer = Consumer({
        **base_config(settings),
        "group.id": f"restore-{uuid.uuid4()}",
        "enable.auto.commit": False,
        "isolation.level": "read_committed",
        "enable.partition.eof": True,
        "fetch.max.bytes": 52_428_800,
    })
    records = 0
    keys: set[str] = set()
    try:
        pending = set()
        assignment = []
        for p in parts:
            low, high = consumer.get_watermark_offsets(TopicPartition(topic, p),
                                                       timeout=settings.restore_timeout_s)
            if high > low:
                pending.add(p)
                assignment.append(TopicPartition(topic, p, OFFSET_BEGINNING))
        consumer.assign(assignment)
        deadline = started + settings.restore_timeout_s
        last_log = started
        while pending:
            if time.monotonic() > deadline:
                raise RestoreError(f"restoring {topic} partitions {sorted(pending)} took longer "
                                   f"than {settings.restore_timeout_s} s ({records} records read)")
            for msg in consumer.consume(10_000, timeout=0.5):
                err = msg.error()
                if err is not None:
                    if err.code() == KafkaError._PARTITION_EOF:
                        pending.discard(msg.partition() or 0)
                        continue
                    raise RestoreError(f"reading {topic}: {err}")
                key = (msg.key() or b"").decode()
                value = msg.value()
                records += 1
                keys.add(key)
                if value is None:
                    engine.remove_keys([key])
                else:
                    engine.put_key(key, *decode_state(value), now=now)
            if on_progress is not None:
                on_progress()  # a long restore is progress, not a stalled loop
            if time.monotonic() - last_log > 5:
                log.info("restore_progress", topic=topic, records=records,
                         remaining_partitions=sorted(pending))
                last_log = time.monotonic()
    finally:
        consumer.close()
    stats = RestoreStats(parts, records, len(keys), round(time.monotonic() - started, 3))
    log.info("state_restored", topic=topic, partitions=parts, records=records, keys=len(keys),
             seconds=stats.seconds)
    return stats
