"""Bytes on the wire to observations, and outputs back to bytes.

Decoding never raises: a record that cannot be used becomes a `DeadLetter` holding its
original bytes and a machine-readable reason, so nothing is lost and nothing crashes.
"""

from __future__ import annotations

import base64
import json
import time
from datetime import UTC, datetime
from typing import NamedTuple

from pydantic import BaseModel, ValidationError

from processor.engine import Observation, Rejected
from schemas.records import DeadLetter, DeadLetterReason, InputRecord


class RawRecord(NamedTuple):
    """What the consumer hands over, detached from the client library's message type."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    timestamp_ms: int = 0  # the Kafka record timestamp, when known


#: Larger originals are cut in the dead letter (it must fit the broker's message limit);
#: the whole record stays in the input topic at the partition and offset named.
MAX_EMBEDDED_BYTES = 256 * 1024


def _b64(data: bytes | None) -> str | None:
    return None if data is None else base64.b64encode(data[:MAX_EMBEDDED_BYTES]).decode("ascii")


def dead_letter(raw: RawRecord, reason: DeadLetterReason, detail: str) -> DeadLetter:
    size = None if raw.value is None else len(raw.value)
    return DeadLetter(
        reason=reason, detail=detail[:1000], source_topic=raw.topic,
        source_partition=raw.partition, source_offset=raw.offset,
        original_key_b64=_b64(raw.key), original_value_b64=_b64(raw.value),
        original_size=size,
        original_truncated=size is not None and size > MAX_EMBEDDED_BYTES,
        failed_at=datetime.now(UTC),
    )


def _validation_detail(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors(include_url=False, include_input=False):
        where = ".".join(str(p) for p in err["loc"]) or "record"
        parts.append(f"{where}: {err['msg']}")
    return "; ".join(parts)


def latest_accepted_ms(max_future_s: float) -> int | None:
    """The latest timestamp `decode` takes now: the clock plus `max_future_s` (0: any)."""
    return int((time.time() + max_future_s) * 1000) if max_future_s else None


def decode(raw: RawRecord, max_bytes: int, latest_ms: int | None = None
           ) -> Observation | DeadLetter:
    """Validate one input record against the contract (`schemas.InputRecord`); with
    `latest_ms`, a later timestamp is refused too: taken, one such record would put every
    later real record of its key out of order."""
    item = _decode(raw, max_bytes)
    if latest_ms is not None and isinstance(item, Observation) and item.timestamp_ms > latest_ms:
        return dead_letter(raw, DeadLetterReason.FUTURE_TIMESTAMP,
                           f"timestamp {item.timestamp_ms} is "
                           f"{(item.timestamp_ms - latest_ms) / 1000:.0f} s past the latest "
                           "this processor accepts (its clock plus max_future_s)")
    return item


def _decode(raw: RawRecord, max_bytes: int) -> Observation | DeadLetter:
    if raw.value is None:
        return dead_letter(raw, DeadLetterReason.INVALID_FIELD, "empty message (tombstone)")
    if len(raw.value) > max_bytes:
        return dead_letter(raw, DeadLetterReason.TOO_LARGE,
                           f"{len(raw.value)} bytes exceeds the limit of {max_bytes}")
    try:
        # Fast path: pydantic's own JSON parser; anything it refuses is classified below.
        fast = InputRecord.model_validate_json(raw.value)
    except ValidationError:
        pass
    else:
        if raw.key is not None and raw.key == fast.key.encode():
            return Observation(fast.key, fast.timestamp, fast.value, raw.partition, raw.offset)
    try:
        text = raw.value.decode("utf-8")
    except UnicodeDecodeError as exc:
        return dead_letter(raw, DeadLetterReason.NOT_UTF8, str(exc))
    try:
        payload = json.loads(text)
    except json.JSONDecodeError as exc:
        return dead_letter(raw, DeadLetterReason.NOT_JSON, f"{exc.msg} at position {exc.pos}")
    except RecursionError:
        return dead_letter(raw, DeadLetterReason.NOT_JSON, "JSON nested too deeply")
    except ValueError:  # an integer of more digits than Python converts
        return dead_letter(raw, DeadLetterReason.INVALID_FIELD,
                           "a number has more than 4300 digits")
    if not isinstance(payload, dict):
        return dead_letter(raw, DeadLetterReason.NOT_AN_OBJECT,
                           f"expected a JSON object, got {type(payload).__name__}")
    try:
        record = InputRecord.model_validate(payload)
    except ValidationError as exc:
        return dead_letter(raw, DeadLetterReason.INVALID_FIELD, _validation_detail(exc))
    kafka_key = None
    if raw.key is not None:
        try:
            kafka_key = raw.key.decode("utf-8")
        except UnicodeDecodeError:
            return dead_letter(raw, DeadLetterReason.KEY_MISMATCH, "message key is not UTF-8")
    if kafka_key != record.key:
        return dead_letter(raw, DeadLetterReason.KEY_MISMATCH,
                           f"message key {kafka_key!r} differs from record key {record.key!r}; "
                           "produce with the series key as the Kafka key")
    return Observation(record.key, record.timestamp, record.value, raw.partition, raw.offset)


def rejected_to_dead_letter(rej: Rejected, raw: RawRecord) -> DeadLetter:
    return dead_letter(raw, rej.reason, rej.detail)


def encode(model: BaseModel) -> bytes:
    return model.model_dump_json().encode("utf-8")
