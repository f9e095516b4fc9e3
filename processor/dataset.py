"""Reading series and their labels from files, with errors a person can act on."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pandas as pd

from schemas.records import FLOAT32_MAX, MAX_TIMESTAMP_MS, MIN_TIMESTAMP_MS


class DataError(Exception):
    """Input data cannot be used; the message says what and where."""


@dataclass(frozen=True)
class Series:
    """One key's observations in time order; `labels` marks known anomalous rows."""

    key: str
    timestamps: npt.NDArray[np.int64]  # epoch milliseconds, in file/arrival order
    values: npt.NDArray[np.float64]
    labels: npt.NDArray[np.bool_] | None = None

    def __len__(self) -> int:
        return len(self.values)

    def slice(self, start: int, stop: int | None = None) -> Series:
        lab = None if self.labels is None else self.labels[start:stop]
        return Series(self.key, self.timestamps[start:stop], self.values[start:stop], lab)


Windows = list[tuple[int, int]]

#: Numeric timestamps that all lie below this (1973-03-03 as epoch milliseconds) are
#: epoch seconds far more often than data from 1970-1973.
EPOCH_SECONDS_ABOVE_MS = 100_000_000_000


def read_csv(path: Path, key: str | None = None, label_column: str = "label") -> Series:
    """Load `timestamp,value[,label]`. Naive timestamps are taken as UTC."""
    try:
        frame = pd.read_csv(path)
    except FileNotFoundError as exc:
        raise DataError(f"{path}: no such file") from exc
    except IsADirectoryError as exc:
        raise DataError(f"{path}: is a directory, not a CSV file") from exc
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError,
            OSError) as exc:
        raise DataError(f"{path}: not a readable CSV ({' '.join(str(exc).split())})") from exc
    missing = {"timestamp", "value"} - set(frame.columns)
    if missing:
        raise DataError(
            f"{path}: missing column(s) {sorted(missing)}; expected a header "
            f"'timestamp,value' (found {list(frame.columns)})"
        )
    if frame.empty:
        raise DataError(f"{path}: no rows")
    if pd.api.types.is_bool_dtype(frame["timestamp"]):
        raise DataError(f"{path}: timestamps are true/false, not times")
    if pd.api.types.is_numeric_dtype(frame["timestamp"]):
        # Numbers are epoch milliseconds, as on the input topic.
        if len(frame) and frame["timestamp"].max() < EPOCH_SECONDS_ABOVE_MS:
            raise DataError(f"{path}: numeric timestamps are read as epoch milliseconds, and "
                            f"these all fall before 1973 (the largest is "
                            f"{frame['timestamp'].max()}); epoch seconds? multiply by 1000")
        ts = pd.to_datetime(frame["timestamp"], unit="ms", utc=True, errors="coerce")
    else:
        ts = pd.to_datetime(frame["timestamp"], utc=True, errors="coerce", format="mixed")
    bad_ts = ts.isna()
    if bad_ts.any():
        row = int(np.argmax(bad_ts.to_numpy())) + 2
        raise DataError(f"{path}:{row}: timestamp {frame['timestamp'].iloc[row - 2]!r} "
                        "does not parse")
    if pd.api.types.is_bool_dtype(frame["value"]):
        raise DataError(f"{path}: values are true/false, not numbers")
    values = pd.to_numeric(frame["value"], errors="coerce")
    as_float = values.to_numpy(dtype=np.float64, na_value=np.nan)
    bad_v = ~np.isfinite(as_float) | (np.abs(as_float) > FLOAT32_MAX)
    if bad_v.any():
        row = int(np.argmax(bad_v)) + 2
        raise DataError(f"{path}:{row}: value {str(frame['value'].iloc[row - 2])!r} is not a "
                        "finite number within the float32 range")
    ms = ts.dt.tz_localize(None).to_numpy().astype("datetime64[ms]").astype(np.int64)
    outside = (ms < MIN_TIMESTAMP_MS) | (ms > MAX_TIMESTAMP_MS)
    if outside.any():  # the stream refuses these too
        row = int(np.argmax(outside)) + 2
        raise DataError(f"{path}:{row}: timestamp {frame['timestamp'].iloc[row - 2]!r} is "
                        "outside 1970-01-01 .. 2200-01-01")
    labels = None
    if label_column in frame.columns:
        labels = _labels(frame[label_column], path, label_column)
    return Series(key or path.stem, ms, values.to_numpy(np.float64), labels)


_LABEL_TEXT = {"0": False, "1": True, "false": False, "true": True}


def _labels(column: pd.Series, path: Path, name: str) -> npt.NDArray[np.bool_]:
    """A 0/1 (or true/false) column; anything else is refused, not read as 'anomalous'."""
    text = column.astype(str).str.strip().str.lower().str.removesuffix(".0")
    known = text.isin(list(_LABEL_TEXT))
    if not known.all():
        row = int(np.argmax(~known.to_numpy())) + 2
        raise DataError(f"{path}:{row}: {name} {str(column.iloc[row - 2])!r} is not 0 or 1")
    return text.map(_LABEL_TEXT).to_numpy(bool)


#: Share of a series' rows that may be skipped for not moving forward in time before the
#: file is refused as unsorted (NAB's own files have 11 or 12 such rows in four series).
MAX_SKIPPED_SHARE = 0.01


def check_sorted(timestamps: npt.NDArray[np.int64], source: object) -> int:
    """Rows not later than every row before them, refused above `MAX_SKIPPED_SHARE`.

    The engine skips such rows, as the processor dead-letters them; a file sorted the
    wrong way round would otherwise shrink to a handful of rows without a word.
    """
    skipped = int((~in_order_mask(timestamps)).sum())
    if skipped > MAX_SKIPPED_SHARE * len(timestamps):
        raise DataError(f"{source}: {skipped} of {len(timestamps)} rows are not later than "
                        "the rows before them; sort the file by timestamp")
    return skipped


def writable_file(out: Path, what: str = "results") -> Path:
    """Fail before the long work if `out` cannot be written: one line, not a traceback
    after training."""
    blocking = next((d for d in out.parents if d.exists() and not d.is_dir()), None)
    if blocking is not None:
        raise DataError(f"cannot write {what} to {out}: {blocking} is a file, not a folder")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DataError(f"cannot write {what} to {out}: {exc.strerror or exc}") from None
    if out.is_dir() or not os.access(out.parent, os.W_OK) or (
            out.exists() and not os.access(out, os.W_OK)):
        raise DataError(f"cannot write {what} to {out}: not a writable file")
    return out


def in_order_mask(timestamps: npt.NDArray[np.int64]) -> npt.NDArray[np.bool_]:
    """True for rows whose timestamp is after every earlier row's.

    The stream processor dead-letters a record that is not newer than the last one of its
    key (duplicate or late); files are filtered by the same rule so that scoring a file
    offline and streaming it give the same rows the same scores.
    """
    if len(timestamps) == 0:
        return np.zeros(0, bool)
    previous_max = np.maximum.accumulate(np.r_[np.iinfo(np.int64).min, timestamps[:-1]])
    return np.asarray(timestamps > previous_max)


def keep_in_order(series: Series) -> tuple[Series, int]:
    """The series without its duplicate or late rows, and how many were dropped."""
    mask = in_order_mask(series.timestamps)
    dropped = int((~mask).sum())
    if not dropped:
        return series, 0
    lab = None if series.labels is None else series.labels[mask]
    return Series(series.key, series.timestamps[mask], series.values[mask], lab), dropped


def _parse_time(text: str) -> int:
    if text.isdigit():  # epoch milliseconds, as in a CSV
        return int(text)
    t = pd.Timestamp(text)
    t = t.tz_localize("UTC") if t.tzinfo is None else t.tz_convert("UTC")
    return int(t.value // 1_000_000)


def read_windows(path: Path, csv_path: Path | None = None) -> Windows:
    """Anomaly windows as (start_ms, end_ms), inclusive.

    Accepts NAB's `combined_windows.json` (a dict keyed by `<category>/<file>.csv`; the
    entry is found by the CSV's name) or a plain list of `[start, end]` pairs.
    """
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError as exc:
        raise DataError(f"{path}: no such file") from exc
    except IsADirectoryError as exc:
        raise DataError(f"{path}: is a directory, not a labels file") from exc
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 text, so not JSON") from exc
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}: not JSON ({exc.msg} at line {exc.lineno})") from exc
    if isinstance(raw, dict):
        if csv_path is None:
            raise DataError(f"{path}: a windows dict needs the CSV it belongs to")
        matches = [k for k in raw if Path(k).name == csv_path.name]
        if not matches:
            raise DataError(f"{path}: no windows for {csv_path.name}")
        raw = raw[matches[0]]
    if not isinstance(raw, list):
        raise DataError(f"{path}: expected a list of [start, end] pairs")
    windows: Windows = []
    for pair in raw:
        if not (isinstance(pair, list) and len(pair) == 2):
            raise DataError(f"{path}: window {pair!r} is not a [start, end] pair")
        try:
            start, end = _parse_time(str(pair[0])), _parse_time(str(pair[1]))
        except ValueError as exc:
            raise DataError(f"{path}: window {pair!r} has a bad timestamp") from exc
        if end < start:
            raise DataError(f"{path}: window {pair!r} ends before it starts")
        windows.append((start, end))
    return windows


def label_rows(timestamps: npt.NDArray[np.int64], windows: Windows) -> npt.NDArray[np.bool_]:
    """True for rows inside any window (edges included)."""
    labels = np.zeros(len(timestamps), bool)
    for start, end in windows:
        labels |= (timestamps >= start) & (timestamps <= end)
    return labels


def with_windows(series: Series, windows: Windows) -> Series:
    return Series(series.key, series.timestamps, series.values,
                  label_rows(series.timestamps, windows))
