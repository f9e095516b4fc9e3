"""The streaming step, free of Kafka: observations in, scored records and rejects out.

The processor hands it one poll batch at a time; `anomaly detect` hands it a file in
batches. Both therefore window, predict and score through exactly the same code.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cached_property
from typing import NamedTuple

import numpy as np
import numpy.typing as npt
import orjson
import structlog

from processor.calibration import KeyScoreState, ScoreRule, ScoreStore
from processor.model_store import LoadedModel
from processor.scoring import predict_scaled, score_predictions
from processor.windows import KeyState, WindowStore
from schemas.records import Alert, DeadLetterReason, ScoredRecord, Status, ms_to_datetime

F64 = npt.NDArray[np.float64]
log = structlog.get_logger(__name__)


class Observation(NamedTuple):
    """A decoded, valid input record and where it came from (a tuple: one per record, and
    a frozen dataclass costs three times as much to create)."""

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


_STATUS = (Status.SCORED, Status.WINDOW_FILLING, Status.WINDOW_RESET)
SCORED, FILLING, RESET = 0, 1, 2
STATUS_NAMES = [s.value for s in _STATUS]


@dataclass(frozen=True)
class ScoredColumns:
    """One batch's scored records as parallel arrays, in arrival order.

    The processor serialises these straight to JSON (`to_json`); `records()` builds the
    pydantic models for code that wants objects. Unscored rows hold NaN predictions.
    """

    keys: list[str]
    timestamp_ms: npt.NDArray[np.int64]
    value: F64
    status: npt.NDArray[np.int8]  # index into _STATUS
    prediction: F64
    error: F64
    log_pd: F64
    threshold: F64
    band_low: F64
    band_high: F64
    anomaly: npt.NDArray[np.bool_]
    default_profile: npt.NDArray[np.bool_]
    partition: npt.NDArray[np.int64]
    offset: npt.NDArray[np.int64]
    version: str
    #: `processor.calibration`: the deviation scored (value units, not on the wire), the
    #: score (NaN while the key warms up), peaks and alerts.
    deviation: F64
    anomaly_score: F64
    peak: npt.NDArray[np.bool_]
    alert: npt.NDArray[np.bool_]
    #: Errors in scaled units, (n,) or (n, l) for l steps; NaN when unscored. Not on the
    #: wire: for evaluation, which post-processes the whole error vector.
    scaled_error: F64 | None = None

    def __len__(self) -> int:
        return len(self.keys)

    def record(self, i: int) -> ScoredRecord:
        common = {"key": self.keys[i], "timestamp": ms_to_datetime(int(self.timestamp_ms[i])),
                  "value": float(self.value[i]), "status": _STATUS[self.status[i]],
                  "model_version": self.version,
                  "source_partition": int(self.partition[i]),
                  "source_offset": int(self.offset[i])}
        if self.status[i] != SCORED:
            return ScoredRecord(**common)
        score = float(self.anomaly_score[i])
        return ScoredRecord(
            **common, prediction=float(self.prediction[i]), error=float(self.error[i]),
            log_pd=float(self.log_pd[i]), threshold=float(self.threshold[i]),
            anomaly=bool(self.anomaly[i]), band_low=float(self.band_low[i]),
            band_high=float(self.band_high[i]),
            profile="default" if self.default_profile[i] else "key",
            anomaly_score=None if np.isnan(score) else score, peak=bool(self.peak[i]),
            alert=bool(self.alert[i]))

    def records(self) -> list[ScoredRecord]:
        return [self.record(i) for i in range(len(self))]

    def to_json(self) -> list[bytes]:
        """The records as `ScoredRecord` JSON, without building a model per record.

        orjson writes a dict per record in half the time of Python's own formatting
        (its float printing is the difference): this runs for every scored record.
        """
        stamps = [f"{s}Z" for s in np.datetime_as_string(
            self.timestamp_ms.astype("datetime64[ms]"), unit="ms").tolist()]
        finite = (np.isfinite(self.prediction) & np.isfinite(self.log_pd)
                  & np.isfinite(self.band_low) & np.isfinite(self.band_high)).tolist()
        value, pred, err, lpd, thr, low, high = (
            c.tolist() for c in (self.value, self.prediction, self.error, self.log_pd,
                                 self.threshold, self.band_low, self.band_high))
        score = [None if v != v else v for v in self.anomaly_score.tolist()]  # NaN: None
        profile = np.where(self.default_profile, "default", "key").tolist()
        status, anomaly = self.status.tolist(), self.anomaly.tolist()
        peak, alert = self.peak.tolist(), self.alert.tolist()
        part, off = self.partition.tolist(), self.offset.tolist()
        version, dumps = self.version, orjson.dumps
        out: list[bytes] = []
        for i, key in enumerate(self.keys):
            st = status[i]
            if st != SCORED:
                out.append(dumps({
                    "key": key, "timestamp": stamps[i], "value": value[i],
                    "status": _STATUS[st].value, "prediction": None, "error": None,
                    "log_pd": None, "threshold": None, "anomaly": False, "band_low": None,
                    "band_high": None, "profile": None, "anomaly_score": None,
                    "peak": False, "alert": False, "model_version": version,
                    "source_partition": part[i], "source_offset": off[i]}))
            elif not finite[i]:  # pydantic's rules for infinities
                out.append(self.record(i).model_dump_json().encode())
            else:
                out.append(dumps({
                    "key": key, "timestamp": stamps[i], "value": value[i],
                    "status": "scored", "prediction": pred[i], "error": err[i],
                    "log_pd": lpd[i], "threshold": thr[i], "anomaly": anomaly[i],
                    "band_low": low[i], "band_high": high[i], "profile": profile[i],
                    "anomaly_score": score[i], "peak": peak[i], "alert": alert[i],
                    "model_version": version, "source_partition": part[i],
                    "source_offset": off[i]}))
        return out


@dataclass
class BatchResult:
    columns: ScoredColumns
    rejected: list[Rejected]

    @cached_property
    def scored(self) -> list[ScoredRecord]:
        return self.columns.records()

    def alerted(self) -> list[ScoredRecord]:
        """The records that raise an alert (see `processor.calibration`)."""
        return [self.columns.record(int(i)) for i in np.flatnonzero(self.columns.alert)]

    @property
    def alerts(self) -> list[Alert]:
        now = datetime.now(UTC)
        return [to_alert(r, now) for r in self.alerted()]


@dataclass(frozen=True)
class Pending:
    """A batch after `Engine.prepare`: its windows cut, the key states advanced."""

    model: LoadedModel
    keys: list[str]
    values: F64
    status: npt.NDArray[np.int8]  # FILLING or RESET; `finish` marks the scored ones
    windows: npt.NDArray[np.float32]
    record_index: npt.NDArray[np.int64]  # the record each window predicts
    profile: npt.NDArray[np.int64]  # the profile of each window's key
    timestamp_ms: npt.NDArray[np.int64]
    partition: npt.NDArray[np.int64]
    offset: npt.NDArray[np.int64]
    rejected: list[Rejected]

    @property
    def windows_to_score(self) -> int:
        return len(self.record_index)


#: Anomaly score at or above which a peak raises an alert: an error at least as large
#: as the key's recent one-in-a-thousand (`processor.calibration`).
ALERT_SCORE = ScoreRule().alert_score


class Engine:
    """Per-key windows and score histories, plus the active model version.

    `gap_reset_intervals`: a value arriving more than this many sampling intervals (the
    key's median interval in training) after the previous one restarts the key's window;
    0 disables resets. `rule`: how anomaly scores, peaks and alerts are made.
    """

    def __init__(self, model: LoadedModel, initial_capacity: int = 1024,
                 gap_reset_intervals: float = 0.0, rule: ScoreRule | None = None) -> None:
        self.model = model
        # An l-step model scores x_t from the l windows ending at t-1 .. t-l: w + l - 1
        # values (more with a season), recomputed each time.
        self.windows = WindowStore(model.history, initial_capacity)
        # Deviations are in value units, so the histories carry over a version switch.
        self.scores = ScoreStore(rule, initial_capacity)
        self.gap_reset_intervals = gap_reset_intervals

    def set_model(self, model: LoadedModel) -> None:
        """Switch versions between batches; windows carry over (resized if needed).

        A version that reads further back (a season where there was none) sends every
        key back to filling until it has that many values: a day of data for a daily
        season. The keys affected are logged.
        """
        if model.history != self.windows.width:
            wider = model.history > self.windows.width
            self.windows = self.windows.resized(model.history)
            if wider and len(self.windows):
                log.warning("model_reads_further_back", version=model.version,
                            values_before=self.model.history, values_now=model.history,
                            keys_refilling=len(self.windows))
        self.model = model

    # -- per-key state as a whole (changelog restore, spilling, rebalances) -------------
    def key_state(self, key: str) -> tuple[KeyState, KeyScoreState] | None:
        window = self.windows.state(key)
        if window is None:
            return None
        scores = self.scores.state(key)
        return window, scores or KeyScoreState.empty(self.scores.rule)

    def put_key(self, key: str, window: KeyState, scores: KeyScoreState | None,
                now: float = 0.0) -> None:
        """Install a key's state; without a score history (an older changelog) it starts
        one afresh."""
        self.windows.put(key, window, now)
        self.scores.put(key, scores or KeyScoreState.empty(self.scores.rule))

    def remove_keys(self, keys: Sequence[str]) -> None:
        for key in keys:
            self.windows.remove(key)
        self.scores.remove(keys)

    def drop_partitions(self, partitions: set[int]) -> int:
        """Forget every key of these input partitions (revoked or lost); return how many."""
        doomed = self.windows.keys_of(partitions)
        self.remove_keys(doomed)
        return len(doomed)

    def process(self, batch: Sequence[Observation], now: float = 0.0) -> BatchResult:
        return self.finish(self.prepare(batch, now))

    def prepare(self, batch: Sequence[Observation], now: float = 0.0) -> Pending:
        """Order checks and window updates: everything before the forward pass.

        The windows advance here, in arrival order; `finish` needs nothing but the
        returned `Pending`, so a stream can prepare the next batch while this one is
        still in the model.
        """
        accepted, rejected, resets = self._in_order(batch)
        keys = [o.key for o in accepted]
        values = np.array([o.value for o in accepted], np.float64)
        wb = self.windows.advance(keys, [o.timestamp_ms for o in accepted], values,
                                  partitions=[o.partition for o in accepted],
                                  resets=resets, now=now)
        status = np.where(np.asarray(resets, bool), RESET, FILLING).astype(np.int8)
        n = len(accepted)
        return Pending(
            self.model, keys, values, status, wb.windows, wb.record_index,
            self.model.table.lookup([keys[i] for i in wb.record_index]),
            np.fromiter((o.timestamp_ms for o in accepted), np.int64, n),
            np.fromiter((o.partition for o in accepted), np.int64, n),
            np.fromiter((o.offset for o in accepted), np.int64, n), rejected)

    def finish(self, pending: Pending) -> BatchResult:
        """The forward pass and scoring of a prepared batch, with the model it was
        prepared for (a version switch in between does not mix the two). Batches must
        be scored in the order they were prepared: each one learns the keys' scores."""
        return self.score(pending, self.forward(pending))

    @staticmethod
    def forward(pending: Pending) -> F64:
        """The forward pass alone (scaled predictions of the windows to score).

        The processor runs it on the model's thread and `score` on another: the array
        work of scoring needs the GIL a dozen times per batch, and each wait for it there
        would leave the model idle."""
        if not len(pending.record_index):
            return np.empty(0)
        return predict_scaled(pending.windows, pending.profile, pending.model.table,
                              pending.model.predictor)

    def score(self, pending: Pending, pred_scaled: F64) -> BatchResult:
        """Errors, log-PD, anomaly scores and alerts from `forward`'s output. Array work
        but for the score histories' per-key lookup."""
        model, keys, values, status = (pending.model, pending.keys, pending.values,
                                       pending.status.copy())
        n = len(keys)
        nan = np.full(n, np.nan)
        cols = {name: nan.copy() for name in ("prediction", "error", "log_pd", "threshold",
                                              "band_low", "band_high", "deviation")}
        anomaly = np.zeros(n, bool)
        anomaly_score = nan.copy()
        peak = np.zeros(n, bool)
        alert = np.zeros(n, bool)
        default_profile = np.zeros(n, bool)
        steps = model.table.steps
        scaled_error = np.full(n if steps == 1 else (n, steps), np.nan)
        idx = pending.record_index
        if len(idx):
            table, profile = model.table, pending.profile
            s = score_predictions(pred_scaled, values[idx], profile, table)
            status[idx] = SCORED
            for name in cols:
                cols[name][idx] = getattr(s, name)
            anomaly[idx] = s.anomaly
            default_profile[idx] = profile == table.default_index
            scaled_error[idx] = s.scaled_error
            calibrated = self.scores.update([keys[i] for i in idx], s.deviation,
                                            s.deviation_floor, s.anomaly)
            anomaly_score[idx] = calibrated.score
            peak[idx] = calibrated.peak
            alert[idx] = calibrated.alert
        columns = ScoredColumns(
            keys=keys, timestamp_ms=pending.timestamp_ms, value=values, status=status,
            anomaly=anomaly, default_profile=default_profile, partition=pending.partition,
            offset=pending.offset, version=model.version, scaled_error=scaled_error,
            anomaly_score=anomaly_score, peak=peak, alert=alert, **cols)
        return BatchResult(columns, pending.rejected)

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
    assert r.anomaly_score is not None
    return Alert(
        key=r.key, timestamp=r.timestamp, value=r.value, expected=r.prediction,
        expected_low=r.band_low, expected_high=r.band_high, error=r.error, log_pd=r.log_pd,
        threshold=r.threshold, anomaly_score=r.anomaly_score, model_version=r.model_version,
        detected_at=detected_at,
    )
