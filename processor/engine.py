"""The streaming step, free of Kafka: observations in, scored records and rejects out.

The processor hands it one poll batch at a time; `anomaly detect` hands it a file in
batches. Both therefore window, predict and score through exactly the same code.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

import numpy as np

from processor.model_store import LoadedModel
from processor.scoring import score_windows
from processor.windows import WindowStore
from schemas.records import Alert, DeadLetterReason, ScoredRecord, Status, ms_to_datetime


@dataclass(frozen=True)
class Observation:
    """A decoded, valid input record and where it came from."""

    key: str
    timestamp_ms: int
    value: float
    partition: int = 0
    offset: int = 0


@dataclass(frozen=True)
class Rejected:
    observation: Observation
    reason: DeadLetterReason
    detail: str


@dataclass(frozen=True)
class BatchResult:
    scored: list[ScoredRecord]
    rejected: list[Rejected]

    @property
    def alerts(self) -> list[Alert]:
        now = datetime.now(UTC)
        return [to_alert(r, now) for r in self.scored if r.anomaly]


class Engine:
    """Per-key windows plus the active model version.

    `gap_reset_intervals`: a value arriving more than this many sampling intervals (the
    key's median interval in training) after the previous one restarts the key's window;
    0 disables resets.
    """

    def __init__(self, model: LoadedModel, initial_capacity: int = 1024,
                 gap_reset_intervals: float = 0.0) -> None:
        self.model = model
        self.windows = WindowStore(model.window, initial_capacity)
        self.gap_reset_intervals = gap_reset_intervals

    def set_model(self, model: LoadedModel) -> None:
        """Switch versions between batches; windows carry over (resized if needed)."""
        if model.window != self.windows.width:
            self.windows = self.windows.resized(model.window)
        self.model = model

    def process(self, batch: Sequence[Observation], now: float = 0.0) -> BatchResult:
        accepted, rejected, resets = self._in_order(batch)
        keys = [o.key for o in accepted]
        values = np.array([o.value for o in accepted], np.float64)
        wb = self.windows.advance(keys, [o.timestamp_ms for o in accepted], values,
                                  partitions=[o.partition for o in accepted],
                                  resets=resets, now=now)
        version = self.model.version
        out: list[ScoredRecord | None] = [None] * len(accepted)
        if len(wb.record_index):
            table = self.model.table
            scored_keys = [keys[i] for i in wb.record_index]
            profile = table.lookup(scored_keys)
            s = score_windows(wb.windows, values[wb.record_index], profile, table,
                              self.model.predictor)
            for j, i in enumerate(wb.record_index.tolist()):
                o = accepted[i]
                out[i] = ScoredRecord(
                    key=o.key, timestamp=ms_to_datetime(o.timestamp_ms), value=o.value,
                    status=Status.SCORED, prediction=float(s.prediction[j]),
                    error=float(s.error[j]), log_pd=float(s.log_pd[j]),
                    threshold=float(s.threshold[j]), anomaly=bool(s.anomaly[j]),
                    band_low=float(s.band_low[j]), band_high=float(s.band_high[j]),
                    profile="default" if profile[j] == table.default_index else "key",
                    model_version=version, source_partition=o.partition,
                    source_offset=o.offset,
                )
        scored = [
            r if r is not None else ScoredRecord(
                key=o.key, timestamp=ms_to_datetime(o.timestamp_ms), value=o.value,
                status=Status.WINDOW_RESET if reset else Status.WINDOW_FILLING,
                model_version=version, source_partition=o.partition, source_offset=o.offset,
            )
            for r, o, reset in zip(out, accepted, resets, strict=True)
        ]
        return BatchResult(scored, rejected)

    def _in_order(
        self, batch: Sequence[Observation]
    ) -> tuple[list[Observation], list[Rejected], list[bool]]:
        """Split off records not newer than the key's last one; flag long gaps."""
        last: dict[str, int | None] = {}
        accepted: list[Observation] = []
        rejected: list[Rejected] = []
        resets: list[bool] = []
        factor = self.gap_reset_intervals
        table = self.model.table
        for o in batch:
            prev = last[o.key] if o.key in last else self.windows.last_timestamp(o.key)
            if prev is not None and o.timestamp_ms <= prev:
                reason = (DeadLetterReason.DUPLICATE_TIMESTAMP if o.timestamp_ms == prev
                          else DeadLetterReason.OUT_OF_ORDER)
                rejected.append(Rejected(o, reason, f"timestamp {o.timestamp_ms} is not after "
                                         f"the key's last accepted timestamp {prev}"))
                continue
            resets.append(
                prev is not None and factor > 0 and o.timestamp_ms - prev
                > factor * table.interval_ms[table.index.get(o.key, table.default_index)])
            last[o.key] = o.timestamp_ms
            accepted.append(o)
        return accepted, rejected, resets


def to_alert(r: ScoredRecord, detected_at: datetime) -> Alert:
    assert r.prediction is not None and r.error is not None and r.log_pd is not None
    assert r.threshold is not None and r.model_version is not None
    assert r.band_low is not None and r.band_high is not None
    return Alert(
        key=r.key, timestamp=r.timestamp, value=r.value, expected=r.prediction,
        expected_low=r.band_low, expected_high=r.band_high, error=r.error, log_pd=r.log_pd,
        threshold=r.threshold, model_version=r.model_version, detected_at=detected_at,
    )
