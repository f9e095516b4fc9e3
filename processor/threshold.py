"""Choosing the log-PD threshold, and the metrics used to judge it.

With labels, the threshold maximises F-beta on the validation part (beta < 1 weighs
precision more: few false alarms). Without labels there is nothing to maximise, so a low
quantile of validation log-PD is used: "this rare is anomalous".
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

BoolArray = npt.NDArray[np.bool_]


@dataclass(frozen=True)
class Metrics:
    precision: float | None
    recall: float | None
    fbeta: float | None
    true_positives: int
    false_positives: int
    false_negatives: int

    def as_dict(self, prefix: str = "") -> dict[str, float | int | None]:
        return {
            f"{prefix}precision": self.precision,
            f"{prefix}recall": self.recall,
            f"{prefix}fbeta": self.fbeta,
            f"{prefix}tp": self.true_positives,
            f"{prefix}fp": self.false_positives,
            f"{prefix}fn": self.false_negatives,
        }


def fbeta(precision: float, recall: float, beta: float) -> float:
    b2 = beta * beta
    denom = b2 * precision + recall
    return 0.0 if denom == 0 else (1 + b2) * precision * recall / denom


def evaluate(flagged: BoolArray, labels: BoolArray, beta: float) -> Metrics:
    """Point-wise precision / recall / F-beta; None where a ratio has no denominator."""
    flagged = np.asarray(flagged, bool)
    labels = np.asarray(labels, bool)
    tp = int(np.sum(flagged & labels))
    fp = int(np.sum(flagged & ~labels))
    fn = int(np.sum(~flagged & labels))
    precision = tp / (tp + fp) if tp + fp else None
    recall = tp / (tp + fn) if tp + fn else None
    f = fbeta(precision, recall, beta) if precision is not None and recall is not None else None
    return Metrics(precision, recall, f, tp, fp, fn)


@dataclass(frozen=True)
class ThresholdChoice:
    threshold: float
    method: str
    validation: Metrics | None


def best_fbeta_threshold(
    log_pd: npt.ArrayLike, labels: npt.ArrayLike, beta: float
) -> ThresholdChoice:
    """The threshold t (flag log_pd < t) that maximises F-beta on labelled data.

    Candidates are midpoints just above each distinct score, so every achievable split
    is tried once; ties in F-beta go to the lowest threshold (fewest flags). O(n log n).
    """
    scores = np.asarray(log_pd, np.float64)
    y = np.asarray(labels, bool)
    if scores.shape != y.shape or scores.size == 0:
        raise ValueError("log_pd and labels must be non-empty and of equal length")
    if not y.any():
        raise ValueError("labels contain no anomaly: cannot choose a threshold by F-beta")
    order = np.argsort(scores, kind="stable")
    s, lab = scores[order], y[order]
    # Flag the k lowest scores, for each k at a boundary between distinct values.
    last_of_run = np.r_[s[1:] != s[:-1], True]
    tp = np.cumsum(lab)[last_of_run]
    flagged = (np.nonzero(last_of_run)[0] + 1).astype(np.float64)
    precision = tp / flagged
    recall = tp / y.sum()
    b2 = beta * beta
    denom = b2 * precision + recall
    f = np.where(denom > 0, (1 + b2) * precision * recall / np.where(denom > 0, denom, 1), 0.0)
    best = int(np.argmax(f))
    cut_values = s[last_of_run]
    above = np.r_[cut_values[1:], np.inf][best]
    thr = float(np.nextafter(cut_values[best], np.inf)) if not np.isfinite(above) else float(
        (cut_values[best] + above) / 2
    )
    metrics = evaluate(scores < thr, y, beta)
    return ThresholdChoice(thr, f"max_fbeta(beta={beta:g})", metrics)


def quantile_threshold(log_pd: npt.ArrayLike, quantile: float) -> ThresholdChoice:
    """Flag the lowest `quantile` share of validation log-PD (no labels available)."""
    if not 0 < quantile < 1:
        raise ValueError("quantile must be in (0, 1)")
    scores = np.asarray(log_pd, np.float64)
    return ThresholdChoice(float(np.quantile(scores, quantile)), f"quantile(q={quantile:g})", None)
