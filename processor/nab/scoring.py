"""Numenta Anomaly Benchmark scoring rules, as pure functions over arrays.

NAB rewards the earliest detection inside each labelled window, charges every detection
outside windows by how far it lies past the preceding window, and charges a miss per window.
One threshold per detector and profile is chosen for the whole corpus. Everything here
mirrors NAB's sweeper so that our numbers can be compared with the published scoreboard.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike, NDArray

FloatArray = NDArray[np.float64]
IntArray = NDArray[np.int64]

#: Inclusive row-index range ``(first, last)`` of one anomaly window.
Window = tuple[int, int]

#: Share of a file's rows used for learning only; NAB caps it at 15 % of 5000 rows.
PROBATION_PERCENT = 0.15
PROBATION_CAP_ROWS = 5000
#: NAB starts its sweep above every score so that "never detect" is a candidate.
NO_DETECTION_THRESHOLD = 1.1
#: Positions this far past a window (in window widths) cost the full FP weight.
FAR_PAST_WINDOW = 3.0
OUTSIDE = -1


@dataclass(frozen=True)
class CostMatrix:
    """Weights of one NAB profile; tn_weight is carried but, as in NAB, never used."""

    tp_weight: float
    fp_weight: float
    fn_weight: float
    tn_weight: float = 1.0


@dataclass(frozen=True)
class PreparedFile:
    """One file's scorable rows with their as-if-detected value, so sweeps reuse it.

    ``credit`` is the unweighted value a detection at that row would earn: inside a window
    ``sigma(position) / sigma(-1)`` (in (0, 1]), outside ``sigma(distance)`` (in [-1, 0)).
    ``window_id`` is the file-local window of each row, or ``OUTSIDE``.
    """

    scores: FloatArray
    window_id: IntArray
    credit: FloatArray
    n_windows: int
    n_rows: int


@dataclass(frozen=True)
class FileScore:
    """Raw NAB score and row counts, as in the published ``*_scores.csv`` files."""

    threshold: float
    score: float
    tp: int
    tn: int
    fp: int
    fn: int
    total_count: int


@dataclass(frozen=True)
class ThresholdSweep:
    """Corpus totals for every candidate threshold, highest threshold first."""

    thresholds: FloatArray
    scores: FloatArray
    tp: IntArray
    tn: IntArray
    fp: IntArray
    fn: IntArray
    total_count: int

    def best(self) -> FileScore:
        """Best total; on ties the highest threshold wins, as NAB's stable sort does."""
        return self._row(int(np.argmax(self.scores)))

    def at(self, threshold: float) -> FileScore:
        """Totals when detecting every score >= threshold."""
        k = int(np.searchsorted(-self.thresholds, -threshold, side="right")) - 1
        return self._row(max(k, 0))

    def _row(self, k: int) -> FileScore:
        return FileScore(
            threshold=float(self.thresholds[k]),
            score=float(self.scores[k]),
            tp=int(self.tp[k]),
            tn=int(self.tn[k]),
            fp=int(self.fp[k]),
            fn=int(self.fn[k]),
            total_count=self.total_count,
        )


def probation_length(n_rows: int, percent: float = PROBATION_PERCENT) -> int:
    """Rows at the start of a file that are for learning and never scored."""
    return min(math.floor(percent * n_rows), math.floor(percent * PROBATION_CAP_ROWS))


def scaled_sigmoid(position: ArrayLike) -> FloatArray:
    """NAB's ``2 / (1 + exp(5 y)) - 1``: +0.987 at a window's left edge, 0 at its right."""
    y = np.asarray(position, dtype=np.float64)
    with np.errstate(over="ignore"):
        value = 2.0 / (1.0 + np.exp(5.0 * y)) - 1.0
    return np.where(y > FAR_PAST_WINDOW, -1.0, value)


def window_positions(n_rows: int, windows: Sequence[Window]) -> tuple[IntArray, FloatArray]:
    """Window id and unweighted detection credit of every row of a file.

    Inside a window ending at row R with width W rows: ``y = -(R - i + 1) / W``, so the left
    edge gives exactly -1. After a window: ``y = (i - R) / (W - 1)`` from the latest window;
    before the first window the credit is -1.
    """
    window_id = np.full(n_rows, OUTSIDE, dtype=np.int64)
    position = np.full(n_rows, np.inf)
    rows = np.arange(n_rows, dtype=np.float64)
    for k, (first, last) in enumerate(_checked(windows, n_rows)):
        width = float(last - first + 1)
        window_id[first : last + 1] = k
        position[first : last + 1] = -(last - rows[first : last + 1] + 1) / width
        end = windows[k + 1][0] if k + 1 < len(windows) else n_rows
        # A one-row window has no width to measure by; treat what follows as far past it.
        past = (rows[last + 1 : end] - last) / (width - 1) if width > 1 else np.inf
        position[last + 1 : end] = past
    credit = scaled_sigmoid(position)
    inside = window_id != OUTSIDE
    credit[inside] /= float(scaled_sigmoid(-1.0))
    return window_id, credit


def _checked(windows: Sequence[Window], n_rows: int) -> Sequence[Window]:
    """Windows must be in order, disjoint and inside the file, as NAB's labeller makes them."""
    previous_last = -1
    for first, last in windows:
        if not previous_last < first <= last < n_rows:
            raise ValueError(f"window {(first, last)} is out of order or outside {n_rows} rows")
        previous_last = last
    return windows


def prepare_file(
    anomaly_scores: ArrayLike, windows: Sequence[Window], probation: int | None = None
) -> PreparedFile:
    """Drop probationary rows and attach each remaining row's window and credit."""
    scores = np.asarray(anomaly_scores, dtype=np.float64)
    n_rows = len(scores)
    skip = probation_length(n_rows) if probation is None else probation
    window_id, credit = window_positions(n_rows, windows)
    kept_ids = window_id[skip:]
    n_windows = len(np.unique(kept_ids[kept_ids != OUTSIDE]))
    return PreparedFile(scores[skip:], kept_ids, credit[skip:], n_windows, n_rows)


def score_prepared(prepared: PreparedFile, threshold: float, cost: CostMatrix) -> FileScore:
    """Score one prepared file, detecting every score >= threshold."""
    detected = prepared.scores >= threshold
    inside = prepared.window_id != OUTSIDE
    fp_score = cost.fp_weight * float(prepared.credit[detected & ~inside].sum())
    hit = detected & inside
    hit_windows = np.unique(prepared.window_id[hit])
    best = np.full(int(prepared.window_id.max(initial=OUTSIDE)) + 1, -np.inf)
    np.maximum.at(best, prepared.window_id[hit], cost.tp_weight * prepared.credit[hit])
    tp_score = float(best[hit_windows].sum())
    fn_score = -cost.fn_weight * (prepared.n_windows - len(hit_windows))
    return FileScore(
        threshold=threshold,
        score=tp_score + fp_score + fn_score,
        tp=int(hit.sum()),
        tn=int((~detected & ~inside).sum()),
        fp=int((detected & ~inside).sum()),
        fn=int((~detected & inside).sum()),
        total_count=prepared.n_rows,
    )


def score_file(
    anomaly_scores: ArrayLike,
    windows: Sequence[Window],
    threshold: float,
    cost: CostMatrix,
    probation: int | None = None,
) -> FileScore:
    """Score one file's per-row anomaly scores at a given threshold.

    ``windows`` are inclusive row ranges; ``probation`` defaults to NAB's rule.
    """
    return score_prepared(prepare_file(anomaly_scores, windows, probation), threshold, cost)


def sweep_thresholds(files: Sequence[PreparedFile], cost: CostMatrix) -> ThresholdSweep:
    """Corpus totals for every distinct score as threshold, in one sort and a few cumsums.

    Rows are taken highest score first; each row changes the total by its FP cost or by how
    much it raises its window's best TP credit, so totals are prefix sums of those changes,
    read at the last row of each run of equal scores.
    """
    scores, window_id, credit, n_windows = _concatenate(files)
    order = np.argsort(-scores, kind="stable")
    scores, window_id, credit = scores[order], window_id[order], credit[order]
    inside = window_id != OUTSIDE
    gain = np.where(inside, 0.0, cost.fp_weight * credit)
    gain[inside] = _window_gains(window_id[inside], cost.tp_weight * credit[inside], cost)
    ends = np.flatnonzero(np.append(scores[1:] != scores[:-1], True))
    base = -cost.fn_weight * n_windows
    n_in, n_out = int(inside.sum()), int((~inside).sum())
    tp = np.concatenate(([0], np.cumsum(inside)[ends])).astype(np.int64)
    fp = np.concatenate(([0], np.cumsum(~inside)[ends])).astype(np.int64)
    # NAB's fixed 1.1 only means "never" for scores in [0, 1]; stay above any larger score.
    top = float(scores[0]) if len(scores) else 0.0
    lead = max(NO_DETECTION_THRESHOLD, float(np.nextafter(top, np.inf)))
    return ThresholdSweep(
        thresholds=np.concatenate(([lead], scores[ends])),
        scores=base + np.concatenate(([0.0], np.cumsum(gain)[ends])),
        tp=tp,
        tn=n_out - fp,
        fp=fp,
        fn=n_in - tp,
        total_count=sum(f.n_rows for f in files),
    )


def _concatenate(files: Sequence[PreparedFile]) -> tuple[FloatArray, IntArray, FloatArray, int]:
    """Join files' rows, renumbering windows so that ids are unique across the corpus."""
    sizes = [int(f.window_id.max(initial=OUTSIDE)) + 1 for f in files]
    offsets = np.cumsum([0, *sizes])[:-1]
    ids = [
        np.where(f.window_id == OUTSIDE, OUTSIDE, f.window_id + offset)
        for f, offset in zip(files, offsets, strict=True)
    ]
    return (
        np.concatenate([f.scores for f in files] or [np.empty(0)]),
        np.concatenate(ids or [np.empty(0, dtype=np.int64)]).astype(np.int64),
        np.concatenate([f.credit for f in files] or [np.empty(0)]),
        sum(f.n_windows for f in files),
    )


def _window_gains(window_id: IntArray, value: FloatArray, cost: CostMatrix) -> FloatArray:
    """Rise of each window's best TP value as its rows are detected in the given order.

    A window starts at -fnWeight (a miss); NAB keeps the maximum over detected rows.
    """
    gains = np.empty_like(value)
    grouped = np.argsort(window_id, kind="stable")
    bounds = np.flatnonzero(np.diff(window_id[grouped])) + 1
    for rows in np.split(grouped, bounds):
        best = np.maximum.accumulate(np.concatenate(([-cost.fn_weight], value[rows])))
        gains[rows] = np.diff(best)
    return gains


@dataclass(frozen=True)
class CorpusScore:
    """A detector's result under one profile: NAB's threshold, totals and per-file rows."""

    threshold: float
    raw: float
    normalised: float
    files: dict[str, FileScore]


def score_corpus(files: Mapping[str, PreparedFile], cost: CostMatrix) -> CorpusScore:
    """Pick the corpus-wide threshold as NAB does, then score every file at it."""
    best = sweep_thresholds(list(files.values()), cost).best()
    n_windows = sum(f.n_windows for f in files.values())
    return CorpusScore(
        threshold=best.threshold,
        raw=best.score,
        normalised=normalise(
            best.score, null_score(n_windows, cost), perfect_score(n_windows, cost)
        ),
        files={name: score_prepared(f, best.threshold, cost) for name, f in files.items()},
    )


def null_score(n_windows: int, cost: CostMatrix) -> float:
    """Raw score of a detector that never fires: every window is a miss."""
    return -cost.fn_weight * n_windows


def perfect_score(n_windows: int, cost: CostMatrix) -> float:
    """Raw score of a detector firing once at each window's left edge and nowhere else."""
    return cost.tp_weight * n_windows


def normalise(raw: float, null: float, perfect: float) -> float:
    """NAB's 0-100 scale: 0 for the null detector, 100 for the perfect one."""
    return 100.0 * (raw - null) / (perfect - null)
