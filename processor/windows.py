"""Rolling windows: the one implementation shared by training, evaluation and streaming.

The model predicts value t from the `width` values before it. Offline, a whole series is
cut into such windows at once (`sliding_windows`); online, `WindowStore` keeps the last
`width` values of every key in one preallocated float32 matrix, so memory is bounded by
the number of keys and a batch of windows for one forward pass is a single gather.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float32]
IntArray = npt.NDArray[np.int64]


def sliding_windows(series: npt.ArrayLike, width: int) -> tuple[FloatArray, FloatArray]:
    """All (window, next value) pairs of a series: X[i] = s[i:i+width], y[i] = s[i+width].

    Row i predicts series position i + width.
    """
    s = np.asarray(series, dtype=np.float32)
    if width < 1:
        raise ValueError("window width must be at least 1")
    if s.ndim != 1:
        raise ValueError("series must be one-dimensional")
    if len(s) <= width:
        return np.empty((0, width), np.float32), np.empty(0, np.float32)
    view = np.lib.stride_tricks.sliding_window_view(s[:-1], width)
    return np.ascontiguousarray(view), s[width:].copy()


@dataclass(frozen=True)
class WindowBatch:
    """Windows for the records of one batch that have a full window before them.

    `record_index[j]` is the position (in the batch given to `WindowStore.advance`) of the
    record that `windows[j]` predicts.
    """

    windows: FloatArray
    record_index: IntArray


class WindowStore:
    """Last `width` values per key, right-aligned in one float32 matrix.

    Row `slot` holds a key's most recent values in time order, newest last; `count[slot]`
    says how many of them are real (the rest, on the left, are padding while it fills).
    """

    def __init__(self, width: int, initial_capacity: int = 1024) -> None:
        if width < 1:
            raise ValueError("window width must be at least 1")
        self.width = width
        self._slots: dict[str, int] = {}
        self._values = np.zeros((max(initial_capacity, 1), width), np.float32)
        self._count = np.zeros(max(initial_capacity, 1), np.int64)
        self._last_ts = np.zeros(max(initial_capacity, 1), np.int64)

    def __len__(self) -> int:
        return len(self._slots)

    def __contains__(self, key: object) -> bool:
        return key in self._slots

    @property
    def nbytes(self) -> int:
        return int(self._values.nbytes + self._count.nbytes + self._last_ts.nbytes)

    def window(self, key: str) -> FloatArray:
        """The key's stored values in time order (at most `width`)."""
        slot = self._slots.get(key)
        if slot is None:
            return np.empty(0, np.float32)
        n = int(min(self._count[slot], self.width))
        return self._values[slot, self.width - n :].copy()

    def last_timestamp(self, key: str) -> int | None:
        slot = self._slots.get(key)
        return None if slot is None else int(self._last_ts[slot])

    def advance(
        self, keys: Sequence[str], timestamps: Sequence[int], values: npt.ArrayLike
    ) -> WindowBatch:
        """Append a batch of records (in arrival order) and return the windows before each.

        A key may appear several times in a batch: each occurrence gets the window ending
        just before it, including earlier values of the same batch, exactly as if the
        records had come one at a time. Callers must already have dropped records whose
        timestamp is not after the key's last one (see `is_in_order`).
        """
        vals = np.asarray(values, dtype=np.float32)
        if not len(keys) == len(timestamps) == len(vals):
            raise ValueError("keys, timestamps and values must have the same length")
        positions: dict[str, list[int]] = {}
        for i, key in enumerate(keys):
            positions.setdefault(key, []).append(i)

        windows: list[FloatArray] = []
        index: list[IntArray] = []
        w = self.width
        for key, pos in positions.items():
            slot = self._slot_for(key)
            have = int(min(self._count[slot], w))
            new = vals[pos]
            ext = np.concatenate([self._values[slot, w - have :], new])
            # Record j (0-based within `new`) has ext[:have + j] before it.
            first = max(w - have, 0)
            if first < len(new):
                starts = np.arange(have + first - w, have + len(new) - w)
                view = np.lib.stride_tricks.sliding_window_view(ext, w)
                windows.append(view[starts])
                index.append(np.asarray(pos, np.int64)[first:])
            tail = ext[-w:]
            self._values[slot, w - len(tail) :] = tail
            self._count[slot] += len(new)
            self._last_ts[slot] = timestamps[pos[-1]]

        if not windows:
            return WindowBatch(np.empty((0, w), np.float32), np.empty(0, np.int64))
        order_windows = np.concatenate(windows)
        order_index = np.concatenate(index)
        order = np.argsort(order_index, kind="stable")
        return WindowBatch(order_windows[order], order_index[order])

    def is_in_order(self, key: str, timestamp: int) -> bool:
        """True when `timestamp` is strictly after the key's last stored one."""
        last = self.last_timestamp(key)
        return last is None or timestamp > last

    def resized(self, width: int) -> WindowStore:
        """A copy for a model of another window width, keeping each key's newest values."""
        other = WindowStore(width, initial_capacity=max(len(self._slots), 1))
        keep = min(width, self.width)
        n = len(self._slots)
        other._slots = dict(self._slots)
        other._values[:n, width - keep :] = self._values[:n, self.width - keep :]
        other._count[:n] = np.minimum(self._count[:n], keep)
        other._last_ts[:n] = self._last_ts[:n]
        return other

    def _slot_for(self, key: str) -> int:
        slot = self._slots.get(key)
        if slot is not None:
            return slot
        slot = len(self._slots)
        if slot == len(self._count):
            self._grow()
        self._slots[key] = slot
        return slot

    def _grow(self) -> None:
        cap = len(self._count) * 2
        self._values = np.resize(self._values, (cap, self.width))
        self._values[len(self._count) :] = 0
        self._count = np.concatenate([self._count, np.zeros(cap - len(self._count), np.int64)])
        self._last_ts = np.concatenate(
            [self._last_ts, np.zeros(cap - len(self._last_ts), np.int64)]
        )
