"""Reading and writing a folder laid out like the NAB repository.

Layout: ``data/<category>/<name>.csv`` (timestamp,value), ``labels/combined_windows.json``,
``config/profiles.json`` and ``results/<detector>/<category>/<detector>_<name>.csv``
(timestamp,value,anomaly_score,label,...). Files are named by their data path relative to
``data/`` (``"realKnownCause/nyc_taxi.csv"``), as NAB's labels and score tables do.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike, NDArray

from processor.nab.scoring import (
    CostMatrix,
    FloatArray,
    Window,
    normalise,
    null_score,
    perfect_score,
)

RESULTS_COLUMNS = ("timestamp", "value", "anomaly_score", "label")
#: NAB writes timestamps without zone or fraction; its labeller parses them back this way.
TIMESTAMP_FORMAT = "%Y-%m-%d %H:%M:%S"

WindowLimits = tuple[pd.Timestamp, pd.Timestamp]


@dataclass(frozen=True)
class CorpusFile:
    """One series with its windows already turned into inclusive row ranges."""

    name: str
    timestamps: NDArray[np.datetime64]
    values: FloatArray
    windows: list[Window]


def data_files(nab_dir: Path) -> list[str]:
    """Names of the series present under ``data/``, sorted for stable ordering."""
    data_dir = nab_dir / "data"
    return sorted(p.relative_to(data_dir).as_posix() for p in data_dir.glob("*/*.csv"))


def load_profiles(nab_dir: Path) -> dict[str, CostMatrix]:
    """NAB's scoring profiles keyed by name (standard, reward_low_FP_rate, ...)."""
    raw = json.loads((nab_dir / "config" / "profiles.json").read_text())
    return {name: _cost_matrix(body["CostMatrix"]) for name, body in raw.items()}


def _cost_matrix(weights: dict[str, float]) -> CostMatrix:
    return CostMatrix(
        tp_weight=float(weights["tpWeight"]),
        fp_weight=float(weights["fpWeight"]),
        fn_weight=float(weights["fnWeight"]),
        tn_weight=float(weights.get("tnWeight", 1.0)),
    )


def load_window_limits(nab_dir: Path) -> dict[str, list[WindowLimits]]:
    """Labelled windows as (start, end) timestamps, per series name."""
    raw = json.loads((nab_dir / "labels" / "combined_windows.json").read_text())
    return {
        name: [(pd.Timestamp(start), pd.Timestamp(end)) for start, end in limits]
        for name, limits in raw.items()
    }


def window_indices(timestamps: ArrayLike, limits: Iterable[WindowLimits]) -> list[Window]:
    """Row ranges of rows with start <= timestamp <= end; windows holding no row are dropped.

    NAB's labels put both edges on row timestamps, so this equals NAB's exact matching.
    """
    stamps = np.asarray(timestamps, dtype="datetime64[ns]")
    windows: list[Window] = []
    for start, end in limits:
        first = int(np.searchsorted(stamps, start.to_datetime64(), side="left"))
        last = int(np.searchsorted(stamps, end.to_datetime64(), side="right")) - 1
        if first <= last:
            windows.append((first, last))
    return windows


def load_series(nab_dir: Path, name: str) -> pd.DataFrame:
    """One data file as a frame with parsed timestamps and float values."""
    frame = pd.read_csv(nab_dir / "data" / name)
    frame["timestamp"] = pd.to_datetime(frame["timestamp"])
    frame["value"] = frame["value"].astype(np.float64)
    return frame


def load_corpus(nab_dir: Path, names: Sequence[str] | None = None) -> dict[str, CorpusFile]:
    """Series and their window row ranges; all series under ``data/`` by default."""
    limits = load_window_limits(nab_dir)
    corpus: dict[str, CorpusFile] = {}
    for name in data_files(nab_dir) if names is None else names:
        frame = load_series(nab_dir, name)
        stamps = frame["timestamp"].to_numpy(dtype="datetime64[ns]")
        windows = window_indices(stamps, limits.get(name, []))
        values = frame["value"].to_numpy(dtype=np.float64)
        corpus[name] = CorpusFile(name, stamps, values, windows)
    return corpus


def results_path(results_dir: Path, detector: str, name: str) -> Path:
    """Where NAB keeps a detector's per-row output for one series."""
    category, file_name = name.split("/")
    return results_dir / detector / category / f"{detector}_{file_name}"


def load_results(path: Path) -> pd.DataFrame:
    """A per-row results file; extra columns (such as NAB's ``S(t)_*``) are kept."""
    frame = pd.read_csv(path)
    frame["timestamp"] = pd.to_datetime(frame["timestamp"])
    frame["anomaly_score"] = frame["anomaly_score"].astype(np.float64)
    return frame


def load_anomaly_scores(
    results_dir: Path, detector: str, names: Iterable[str]
) -> dict[str, FloatArray]:
    """Each series' per-row anomaly scores from a detector's results folder."""
    return {
        name: load_results(results_path(results_dir, detector, name))["anomaly_score"].to_numpy()
        for name in names
    }


def window_labels(n_rows: int, windows: Iterable[Window]) -> NDArray[np.int64]:
    """NAB's ``label`` column: 1 for rows inside a window, else 0."""
    labels = np.zeros(n_rows, dtype=np.int64)
    for first, last in windows:
        labels[first : last + 1] = 1
    return labels


def write_results(
    path: Path,
    timestamps: ArrayLike,
    values: ArrayLike,
    anomaly_scores: ArrayLike,
    windows: Iterable[Window] = (),
) -> None:
    """Write per-row output in NAB's results format so NAB's own tools can score it."""
    stamps = pd.to_datetime(np.asarray(timestamps))
    frame = pd.DataFrame(
        {
            "timestamp": stamps.strftime(TIMESTAMP_FORMAT),
            "value": np.asarray(values, dtype=np.float64),
            "anomaly_score": np.asarray(anomaly_scores, dtype=np.float64),
            "label": window_labels(len(stamps), windows),
        },
        columns=list(RESULTS_COLUMNS),
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    frame.to_csv(path, index=False)


def load_published_table(nab_dir: Path, detector: str, profile: str) -> pd.DataFrame:
    """A published ``<detector>_<profile>_scores.csv`` without its ``Totals`` row."""
    path = nab_dir / "results" / detector / f"{detector}_{profile}_scores.csv"
    table = pd.read_csv(path)
    return table[table["Detector"] != "Totals"].reset_index(drop=True)


def published_scores(nab_dir: Path, detector: str, names: list[str] | None = None
                     ) -> dict[str, float]:
    """A published detector's normalised score per profile over the series present here
    (or over `names`, a subset of them).

    The published tables cover NAB's full corpus; summing only our files' raw scores and
    normalising by only our files' windows gives a scoreboard comparable to ours.
    """
    names = data_files(nab_dir) if names is None else names
    limits = load_window_limits(nab_dir)
    n_windows = sum(len(limits.get(name, [])) for name in names)
    result: dict[str, float] = {}
    for profile, cost in load_profiles(nab_dir).items():
        table = load_published_table(nab_dir, detector, profile)
        missing = set(names) - set(table["File"])
        if missing:
            raise ValueError(f"{detector}/{profile} has no published score for {sorted(missing)}")
        raw = float(table.loc[table["File"].isin(names), "Score"].sum())
        null, perfect = null_score(n_windows, cost), perfect_score(n_windows, cost)
        result[profile] = normalise(raw, null, perfect)
    return result
