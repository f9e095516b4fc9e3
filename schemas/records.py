"""The wire contract: every message the system reads or writes on Kafka.

All messages are UTF-8 JSON objects. The Kafka message key of input, scored and alert
records is the series key (UTF-8), so one series always lands on one partition and is
seen in order.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import (
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    WithJsonSchema,
)

#: Timestamps before this are rejected: epoch milliseconds below zero are almost always
#: a unit mistake (seconds, or a negative sentinel).
MIN_TIMESTAMP_MS = 0
#: ...and far-future ones too (year 2200): usually nanoseconds or microseconds sent as ms.
MAX_TIMESTAMP_MS = 7_258_118_400_000

KEY_MAX_LENGTH = 256
#: Largest magnitude a value may have: windows hold float32.
FLOAT32_MAX = 3.4028234663852886e38


def _to_epoch_ms(raw: Any) -> int:
    """Accept epoch milliseconds or ISO-8601 text with a zone; return epoch milliseconds.

    Naive ISO text is refused: guessing a zone silently shifts a series by hours.
    """
    if isinstance(raw, bool):
        raise ValueError("timestamp must be epoch milliseconds or ISO-8601 text, not a boolean")
    if isinstance(raw, int):
        ms = raw
    elif isinstance(raw, float):
        if not math.isfinite(raw) or raw != int(raw):
            raise ValueError("timestamp in epoch milliseconds must be a whole number")
        ms = int(raw)
    elif isinstance(raw, str):
        try:
            parsed = datetime.fromisoformat(raw.replace("Z", "+00:00"))
        except ValueError as exc:
            raise ValueError(f"timestamp {raw!r} is not ISO-8601") from exc
        if parsed.tzinfo is None:
            raise ValueError(f"timestamp {raw!r} has no time zone (add Z or +00:00)")
        ms = int(parsed.timestamp() * 1000)
    elif isinstance(raw, datetime):
        if raw.tzinfo is None:
            raise ValueError("timestamp has no time zone")
        ms = int(raw.timestamp() * 1000)
    else:
        raise ValueError("timestamp must be epoch milliseconds or ISO-8601 text")
    if not MIN_TIMESTAMP_MS <= ms <= MAX_TIMESTAMP_MS:
        raise ValueError(f"timestamp {ms} ms is outside 1970-01-01 .. 2200-01-01")
    return ms


EpochMillis = Annotated[
    int,
    BeforeValidator(_to_epoch_ms),
    WithJsonSchema(
        {
            "oneOf": [
                {"type": "integer", "minimum": MIN_TIMESTAMP_MS, "maximum": MAX_TIMESTAMP_MS,
                 "description": "epoch milliseconds"},
                {"type": "string", "format": "date-time",
                 "description": "ISO-8601 with a zone, e.g. 2014-01-03T00:00:00Z"},
            ]
        }
    ),
]

UtcTime = Annotated[
    AwareDatetime,
    PlainSerializer(
        lambda dt: dt.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        return_type=str,
    ),
]

SeriesKey = Annotated[str, Field(min_length=1, max_length=KEY_MAX_LENGTH)]


def ms_to_datetime(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, tz=UTC)


class _Wire(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class InputRecord(_Wire):
    """One observation of one series, as users produce it to the input topic."""

    key: SeriesKey = Field(description="Series id; must equal the Kafka message key.")
    timestamp: EpochMillis = Field(description="When the value was observed.")
    value: float = Field(allow_inf_nan=False, strict=True, ge=-FLOAT32_MAX, le=FLOAT32_MAX,
                         description="The observation: a finite JSON number within the "
                         "float32 range (windows are stored as float32).")


class Status(StrEnum):
    """Why a scored record does or does not carry a score."""

    SCORED = "scored"
    #: The key has fewer than `window` earlier values: nothing to predict from yet.
    WINDOW_FILLING = "window_filling"
    #: The value came after a gap much longer than the key's sampling interval: the
    #: window restarts with it (the values before the gap no longer predict it).
    WINDOW_RESET = "window_reset"


class ScoredRecord(_Wire):
    """One per valid input record, written to the scored topic."""

    key: SeriesKey
    timestamp: UtcTime
    value: float
    status: Status
    prediction: float | None = Field(
        default=None, description="One-step prediction of `value` from the window before it."
    )
    error: float | None = Field(default=None, description="value - prediction, in value units.")
    log_pd: float | None = Field(
        default=None,
        description="Log probability density of the scaled error under the key's Gaussian "
        "(lower = more anomalous).",
    )
    threshold: float | None = Field(
        default=None, description="The model's threshold on log_pd, chosen on validation data.")
    anomaly: bool = Field(default=False, description="log_pd is below threshold: the value "
                          "lies outside [band_low, band_high].")
    band_low: float | None = Field(
        default=None, description="Lowest value that would not have been anomalous."
    )
    band_high: float | None = Field(
        default=None, description="Highest value that would not have been anomalous."
    )
    profile: Literal["key", "default"] | None = Field(
        default=None,
        description="'key' when the model was trained on this key, 'default' when the pooled "
        "fallback profile scored it.",
    )
    anomaly_score: float | None = Field(
        default=None, ge=0, le=1,
        description="How unusual the error is for this key, comparable across keys: r / (1 + "
        "r), r = the error's distance from the Gaussian's mean over the key's recent "
        "one-in-a-thousand such distance (0.5: as large as that). None until the key has "
        "100 scored records.")
    peak: bool = Field(default=False, description="anomaly_score is above every score of "
                       "the key's previous 200 records: an incident starts or grows.")
    alert: bool = Field(default=False, description="A peak whose anomaly_score is above the "
                        "processor's alert score, the key's first in 100 records; such "
                        "records also go to the alert topic.")
    model_version: str | None = None
    source_partition: int = Field(ge=0)
    source_offset: int = Field(ge=0)


class Alert(_Wire):
    """What an on-call subscriber needs to act on one incident: its peak observation."""

    key: SeriesKey
    timestamp: UtcTime
    value: float
    expected: float = Field(description="The model's one-step prediction.")
    expected_low: float
    expected_high: float
    error: float
    log_pd: float
    threshold: float
    anomaly_score: float = Field(ge=0, le=1, description="See ScoredRecord.anomaly_score.")
    model_version: str
    detected_at: UtcTime = Field(description="Wall-clock time the processor raised the alert.")


class ModelAnnouncement(_Wire):
    """Published on the compacted model topic (key: the model name) for each new version."""

    name: str
    version: str = Field(description="Sortable: newer versions compare greater.")
    created_at: UtcTime
    artifact_uri: str = Field(description="Directory of the version in the model store.")
    checksum: str = Field(description="sha256 of the version's files, as in its metadata.")
    window: int = Field(ge=1)
    keys: list[str] = Field(description="Keys with their own profile; others get the default.")
    threshold_method: str
    metrics: dict[str, float | int | None] = Field(default_factory=dict)


class DeadLetterReason(StrEnum):
    TOO_LARGE = "too_large"
    NOT_UTF8 = "not_utf8"
    NOT_JSON = "not_json"
    NOT_AN_OBJECT = "not_an_object"
    INVALID_FIELD = "invalid_field"
    KEY_MISMATCH = "key_mismatch"
    DUPLICATE_TIMESTAMP = "duplicate_timestamp"
    OUT_OF_ORDER = "out_of_order"
    #: Stamped further ahead of the processor's clock than `max_future_s` allows: taken,
    #: it would make every real record of its key after it out of order.
    FUTURE_TIMESTAMP = "future_timestamp"


class DeadLetter(_Wire):
    """An input record the processor could not use, kept whole with the reason."""

    reason: DeadLetterReason
    detail: str
    source_topic: str
    source_partition: int
    source_offset: int
    original_key_b64: str | None = Field(description="Kafka message key, base64; null if none.")
    original_value_b64: str | None = Field(
        description="Kafka message value, base64 (its first 256 KiB when larger).")
    original_size: int | None = Field(default=None, description="Bytes of the original value.")
    original_truncated: bool = Field(
        default=False, description="True when original_value_b64 holds only the start; the "
        "whole record stays in the source topic at source_partition/source_offset.")
    failed_at: UtcTime


WIRE_MODELS: dict[str, type[BaseModel]] = {
    "input_record": InputRecord,
    "scored_record": ScoredRecord,
    "alert": Alert,
    "model_announcement": ModelAnnouncement,
    "dead_letter": DeadLetter,
}
