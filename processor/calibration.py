"""From a key's prediction errors to an anomaly score comparable across keys, and incidents.

The log-PD of an error under the key's Gaussian says how unusual the error is if the
Gaussian were right. Real errors have heavier tails, and how much heavier differs from
key to key, so one alert threshold on log-PD fires all day on one key and never on
another; and successive model versions fit different Gaussians, so their log-PDs do not
compare either. Per key, in order:

- deviation d: how far the error lies from the Gaussian's mean, in value units,
  |error - mean * scale| (for l steps, the Mahalanobis distance of the error vector in
  the same units). The log-PD falls as d grows, so what follows is a monotone map of the
  log-PD at any one time, and deviations of successive versions compare;
- reference: the key's recent one-in-a-thousand deviation, the second largest of its last
  1,000 to 1,100 deviations (the largest while it has seen fewer than 1,000);
- anomaly score s = r / (1 + r), r = d / reference: 0.5 is an error as large as that, 0.9
  nine times as large. None until the key has `min_rows` deviations;
- peak: s is above every score of the key's previous 200 to 220 records, so an incident
  (a burst of large errors, a level shift that stays) peaks once rather than on every row;
- alert: a peak whose score is above the alert score (0.5: r > 1, an error larger than
  the reference), unless the key alerted in its previous 100 records: an incident that
  grows over a few rows alerts once, as alerting systems group repeats.

State is a few dozen numbers per key, whatever the history length: the history is kept
in panes (as hopping windows are), each pane holding the two largest deviations of its
rows, or its largest score. The same code scores the stream and the offline evaluation.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

F32 = npt.NDArray[np.float32]
F64 = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]
BoolArray = npt.NDArray[np.bool_]
EMPTY = -np.inf
NEVER = -(2**62)  # `alerted` of a key that has not alerted
#: Keys a round of `ScoreStore.update` needs to be done as one array operation.
ARRAY_ROUND = 8


@dataclass(frozen=True)
class ScoreRule:
    """How far back the reference and the peaks look; the defaults are the documented ones."""

    pane: int = 100  # deviations per reference pane
    panes: int = 10  # complete panes behind the current one: the last 1,000-1,100 rows
    min_rows: int = 100  # deviations seen before a key is scored
    group_pane: int = 20  # scores per peak pane
    group_panes: int = 10  # complete peak panes: the previous 200-220 rows
    alert_score: float = 0.5  # a peak above this alerts
    quiet: int = 100  # records after an alert in which the key does not alert again
    needs_band: bool = False  # alert only where the model flags the row (outside its band)

    @property
    def warm_rows(self) -> int:
        """Deviations after which the reference is the second largest, not the largest."""
        return self.pane * self.panes


@dataclass(frozen=True)
class KeyScoreState:
    """One key's score history, as it travels to and from the changelog."""

    seen: int  # deviations seen
    top: F32  # (panes + 1, 2): the two largest deviations per pane, -inf when empty
    peaks: F32  # (group_panes + 1,): the largest score per pane, -inf when empty
    alerted: int = NEVER  # the value of `seen` at the key's last alert

    @staticmethod
    def empty(rule: ScoreRule) -> KeyScoreState:
        return KeyScoreState(0, np.full((rule.panes + 1, 2), EMPTY, np.float32),
                             np.full(rule.group_panes + 1, EMPTY, np.float32))


@dataclass(frozen=True)
class ScoreColumns:
    """Per scored record: its anomaly score (NaN while the key warms up), peak and alert."""

    score: F64
    peak: BoolArray
    alert: BoolArray


class ScoreStore:
    """Every key's score history in preallocated arrays, updated a batch at a time.

    Thread-safe: the stream scores on its commit thread while the main thread restores,
    spills or drops keys.
    """

    def __init__(self, rule: ScoreRule | None = None, initial_capacity: int = 1024) -> None:
        self.rule = rule or ScoreRule()
        cap = max(initial_capacity, 1)
        self._slots: dict[str, int] = {}
        self._free: list[int] = []
        self._seen = np.zeros(cap, np.int64)
        self._alerted = np.full(cap, NEVER, np.int64)
        self._top = np.full((cap, self.rule.panes + 1, 2), EMPTY, np.float32)
        self._peaks = np.full((cap, self.rule.group_panes + 1), EMPTY, np.float32)
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._slots)

    def __contains__(self, key: object) -> bool:
        return key in self._slots

    @property
    def nbytes(self) -> int:
        return int(self._seen.nbytes + self._alerted.nbytes + self._top.nbytes
                   + self._peaks.nbytes)

    def state(self, key: str) -> KeyScoreState | None:
        with self._lock:
            slot = self._slots.get(key)
            return None if slot is None else self._state(slot)

    def states(self, keys: Sequence[str]) -> list[KeyScoreState]:
        """The states of `keys`, an empty one for a key never scored (for the changelog)."""
        with self._lock:
            empty = KeyScoreState.empty(self.rule)
            return [empty if (slot := self._slots.get(key)) is None else self._state(slot)
                    for key in keys]

    def _state(self, slot: int) -> KeyScoreState:
        return KeyScoreState(int(self._seen[slot]), self._top[slot].copy(),
                             self._peaks[slot].copy(), int(self._alerted[slot]))

    def put(self, key: str, state: KeyScoreState) -> None:
        """Install a key's history (restore); one of another shape starts afresh."""
        with self._lock:
            slot = self._slot_for(key)
            if state.top.shape == self._top.shape[1:] and state.peaks.shape == \
                    self._peaks.shape[1:]:
                self._seen[slot] = state.seen
                self._alerted[slot] = state.alerted
                self._top[slot] = state.top
                self._peaks[slot] = state.peaks
            else:
                self._clear(slot)

    def remove(self, keys: Sequence[str]) -> None:
        with self._lock:
            for key in keys:
                slot = self._slots.pop(key, None)
                if slot is not None:
                    self._clear(slot)
                    self._free.append(slot)

    def update(self, keys: Sequence[str], deviation: F64, floor: F64,
               outside: BoolArray | None = None) -> ScoreColumns:
        """Score records in arrival order (a key may come several times) and learn them.

        `floor` is the smallest reference each record's key is scored against: errors
        below it are rounding, not behaviour (a constant series predicted exactly).
        `outside` is the model's own per-row flag (log-PD below its threshold): with
        `rule.needs_band` only such records alert. NaN deviations (nothing predicted)
        score NaN and leave the history alone.
        """
        n = len(keys)
        score = np.full(n, np.nan)
        peak = np.zeros(n, bool)
        alert = np.zeros(n, bool)
        valid = np.flatnonzero(np.isfinite(deviation))
        if not len(valid):
            return ScoreColumns(score, peak, alert)
        flagged = np.ones(n, bool) if outside is None or not self.rule.needs_band else outside
        with self._lock:
            slot_for = self._slot_for
            slots = np.fromiter((slot_for(keys[i]) for i in valid.tolist()), np.int64,
                                len(valid))
            # Records of one key are taken in rounds: round j holds every key's j-th record,
            # so each round is one array operation over distinct keys. Rounds of a few keys
            # (one busy key in a batch) go record by record: an array operation costs more
            # than the scalar arithmetic for one key.
            order = np.argsort(slots, kind="stable")
            by_key = slots[order]
            first = np.r_[True, by_key[1:] != by_key[:-1]]
            starts = np.flatnonzero(first)
            rank = np.arange(len(order)) - starts[np.cumsum(first) - 1]
            for j in range(int(rank.max()) + 1):
                at = order[rank == j]
                rows = valid[at]
                if len(at) >= ARRAY_ROUND:
                    s, g, a = self._step(slots[at], deviation[rows], floor[rows],
                                         flagged[rows])
                    score[rows], peak[rows], alert[rows] = s, g, a
                    continue
                for slot, row in zip(slots[at].tolist(), rows.tolist(), strict=True):
                    score[row], peak[row], alert[row] = self._step_one(
                        slot, float(deviation[row]), float(floor[row]), bool(flagged[row]))
        return ScoreColumns(score, peak, alert)

    def _step(self, slots: IntArray, d: F64, floor: F64, flagged: BoolArray
              ) -> tuple[F64, BoolArray, BoolArray]:
        """One record for each of `slots` (distinct keys); `_step_one` is the same for
        one key, and the two must agree to the bit."""
        rule, m = self.rule, len(slots)
        seen = self._seen[slots]
        ranked = np.sort(self._top[slots].reshape(m, -1), axis=1)
        k = np.where(seen >= rule.warm_rows, 2, 1)
        reference = np.maximum(ranked[np.arange(m), ranked.shape[1] - k].astype(np.float64),
                               floor)
        scored = seen >= rule.min_rows
        r = d / reference
        s = np.where(scored, r / (1.0 + r), np.nan)
        s32 = s.astype(np.float32)  # compared as stored, so a tie is no new peak
        peak = scored & (s32 > self._peaks[slots].max(axis=1))
        alert = (peak & flagged & (s > rule.alert_score)
                 & (seen - self._alerted[slots] > rule.quiet))
        self._alerted[slots[alert]] = seen[alert]

        pane = (seen // rule.pane) % (rule.panes + 1)
        fresh = seen % rule.pane == 0
        self._top[slots[fresh], pane[fresh]] = EMPTY
        top = self._top[slots, pane]  # (m, 2), largest first
        d32 = d.astype(np.float32)
        self._top[slots, pane, 1] = np.where(d32 > top[:, 0], top[:, 0],
                                             np.maximum(top[:, 1], d32))
        self._top[slots, pane, 0] = np.maximum(top[:, 0], d32)

        gpane = (seen // rule.group_pane) % (rule.group_panes + 1)
        gfresh = seen % rule.group_pane == 0
        self._peaks[slots[gfresh], gpane[gfresh]] = EMPTY
        if scored.any():
            at, sp = slots[scored], gpane[scored]
            self._peaks[at, sp] = np.maximum(self._peaks[at, sp], s32[scored])
        self._seen[slots] = seen + 1
        return s, peak, alert

    def _step_one(self, slot: int, d: float, floor: float, flagged: bool
                  ) -> tuple[float, bool, bool]:
        """`_step` for one record of one key, in scalar arithmetic."""
        rule = self.rule
        seen = int(self._seen[slot])
        flat = self._top[slot].ravel()
        k = 2 if seen >= rule.warm_rows else 1
        reference = max(float(np.partition(flat, flat.size - k)[flat.size - k]), floor)
        scored = seen >= rule.min_rows
        s, peak, alert = math.nan, False, False
        if scored:
            r = d / reference
            s = r / (1.0 + r)
            peak = bool(np.float32(s) > self._peaks[slot].max())
            alert = (peak and flagged and s > rule.alert_score
                     and seen - int(self._alerted[slot]) > rule.quiet)
            if alert:
                self._alerted[slot] = seen
        pane = (seen // rule.pane) % (rule.panes + 1)
        if seen % rule.pane == 0:
            self._top[slot, pane] = EMPTY
        t0, t1 = self._top[slot, pane]
        d32 = np.float32(d)
        self._top[slot, pane, 1] = t0 if d32 > t0 else max(t1, d32)
        self._top[slot, pane, 0] = max(t0, d32)
        gpane = (seen // rule.group_pane) % (rule.group_panes + 1)
        if seen % rule.group_pane == 0:
            self._peaks[slot, gpane] = EMPTY
        if scored:
            self._peaks[slot, gpane] = max(self._peaks[slot, gpane], np.float32(s))
        self._seen[slot] = seen + 1
        return s, peak, alert

    def _clear(self, slot: int) -> None:
        self._seen[slot] = 0
        self._alerted[slot] = NEVER
        self._top[slot] = EMPTY
        self._peaks[slot] = EMPTY

    def _slot_for(self, key: str) -> int:
        slot = self._slots.get(key)
        if slot is not None:
            return slot
        if self._free:
            slot = self._free.pop()
        else:
            slot = len(self._slots)
            if slot == len(self._seen):
                self._grow()
        self._slots[key] = slot
        return slot

    def _grow(self) -> None:
        old = len(self._seen)
        self._seen = np.concatenate([self._seen, np.zeros(old, np.int64)])
        self._alerted = np.concatenate([self._alerted, np.full(old, NEVER, np.int64)])
        self._top = np.concatenate([self._top, np.full_like(self._top, EMPTY)])
        self._peaks = np.concatenate([self._peaks, np.full_like(self._peaks, EMPTY)])


def nab_score(columns: ScoreColumns) -> F64:
    """NAB's per-row anomaly score: the score where the stream alerts, 0 elsewhere. NAB's
    threshold sweep then chooses among the alerts (the detector's own threshold is the
    alert score), one detection per incident."""
    return np.where(columns.alert, np.nan_to_num(columns.score), 0.0)
