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


def input_width(window: int, season: int = 0, steps: int = 1) -> int:
    """Values one forward pass reads to predict the next `steps` values.

    Without a season, the last `window` values. With a seasonal lag of `season` rows (one
    day, say) the network also reads the `window` values one season earlier, aligned so
    that the last of them is the seasonal counterpart of the last value predicted: the
    values from `window + season - steps` rows back. The two stretches overlap or touch,
    so they are one contiguous window whose first and last `window` values the network
    takes apart (`processor.network`).
    """
    if season and season <= max(steps, 1):
        raise ValueError(f"a season of {season} rows must be longer than the {steps} "
                         "predicted steps (and at least 2)")
    return window if not season else window + season - steps


def sliding_windows(series: npt.ArrayLike, width: int, copy: bool = True
                    ) -> tuple[FloatArray, FloatArray]:
    """All (window, next value) pairs of a series: X[i] = s[i:i+width], y[i] = s[i+width].

    Row i predicts series position i + width. With `copy=False` X is a read-only view of
    the series: no memory however wide the windows (a seasonal window is hundreds).
    """
    s = np.asarray(series, dtype=np.float32)
    if width < 1:
        raise ValueError("window width must be at least 1")
    if s.ndim != 1:
        raise ValueError("series must be one-dimensional")
    if len(s) <= width:
        return np.empty((0, width), np.float32), np.empty(0, np.float32)
    view = np.lib.stride_tricks.sliding_window_view(s[:-1], width)
    return (np.ascontiguousarray(view) if copy else view), s[width:].copy()


@dataclass(frozen=True)
class WindowBatch:
    """Windows for the records of one batch that have a full window before them.

    `record_index[j]` is the position (in the batch given to `WindowStore.advance`) of the
    record that `windows[j]` predicts.
    """

    windows: FloatArray
    record_index: IntArray


@dataclass(frozen=True)
class KeyState:
    """One key's window as it travels to and from the changelog."""

    values: FloatArray  # at most `width` values, oldest first
    count: int  # values seen since the window last (re)started
    last_ts: int
    partition: int


@dataclass(frozen=True)
class StateColumns:
    """Several keys' states at once: row i of `values` is right-aligned, and only its last
    min(count[i], width) values are real."""

    keys: list[str]
    values: FloatArray
    count: IntArray
    last_ts: IntArray
    partition: npt.NDArray[np.int32]


class WindowStore:
    """Last `width` values per key, right-aligned in one float32 matrix.

    Row `slot` holds a key's most recent values in time order, newest last; `count[slot]`
    says how many values it has seen since the window (re)started (only the last `width`
    are kept). Each key also remembers its input partition, so a rebalance can drop exactly
    the keys of revoked partitions, and when it was last touched, for idle eviction.
    """

    def __init__(self, width: int, initial_capacity: int = 1024) -> None:
        if width < 1:
            raise ValueError("window width must be at least 1")
        cap = max(initial_capacity, 1)
        self.width = width
        self._slots: dict[str, int] = {}
        self._free: list[int] = []
        self._values = np.zeros((cap, width), np.float32)
        self._count = np.zeros(cap, np.int64)
        self._last_ts = np.zeros(cap, np.int64)
        self._partition = np.full(cap, -1, np.int32)
        self._touched = np.zeros(cap, np.float64)

    def __len__(self) -> int:
        return len(self._slots)

    def __contains__(self, key: object) -> bool:
        return key in self._slots

    def keys(self) -> list[str]:
        return list(self._slots)

    @property
    def nbytes(self) -> int:
        return int(self._values.nbytes + self._count.nbytes + self._last_ts.nbytes
                   + self._partition.nbytes + self._touched.nbytes)

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

    def state(self, key: str) -> KeyState | None:
        slot = self._slots.get(key)
        if slot is None:
            return None
        return KeyState(self.window(key), int(self._count[slot]), int(self._last_ts[slot]),
                        int(self._partition[slot]))

    def snapshot(self, keys: Sequence[str]) -> StateColumns:
        """The states of those of `keys` held here, as arrays (for the changelog)."""
        present = [k for k in keys if k in self._slots]
        slots = np.fromiter((self._slots[k] for k in present), np.int64, len(present))
        return StateColumns(present, self._values[slots], self._count[slots],
                            self._last_ts[slots], self._partition[slots])

    def put(self, key: str, state: KeyState, now: float = 0.0) -> None:
        """Install a key's state (restore from the changelog)."""
        slot = self._slot_for(key)
        keep = state.values[-self.width :]
        self._values[slot] = 0
        if len(keep):
            self._values[slot, self.width - len(keep) :] = keep
        # A wider window than the state carries must refill: count only the values there.
        full = min(state.count, self.width)
        self._count[slot] = state.count if len(keep) >= full else len(keep)
        self._last_ts[slot] = state.last_ts
        self._partition[slot] = state.partition
        self._touched[slot] = now

    def remove(self, key: str) -> None:
        slot = self._slots.pop(key, None)
        if slot is not None:
            self._values[slot] = 0
            self._count[slot] = 0
            self._partition[slot] = -1
            self._free.append(slot)

    def keys_of(self, partitions: set[int]) -> list[str]:
        """The keys held here that arrived on these input partitions."""
        return [k for k, slot in self._slots.items() if int(self._partition[slot]) in partitions]

    def drop_partitions(self, partitions: set[int]) -> int:
        """Forget every key of these input partitions (revoked or lost); return how many."""
        doomed = self.keys_of(partitions)
        for key in doomed:
            self.remove(key)
        return len(doomed)

    def idle_keys(self, older_than: float) -> list[str]:
        """Keys not touched since `older_than` (same clock as `advance`'s `now`)."""
        return [k for k, slot in self._slots.items() if self._touched[slot] < older_than]

    def advance(
        self,
        keys: Sequence[str],
        timestamps: Sequence[int],
        values: npt.ArrayLike,
        *,
        partitions: Sequence[int] | None = None,
        resets: Sequence[bool] | None = None,
        now: float = 0.0,
    ) -> WindowBatch:
        """Append a batch of records (in arrival order) and return the windows before each.

        A key may appear several times in a batch: each occurrence gets the window ending
        just before it, including earlier values of the same batch, exactly as if the
        records had come one at a time. A record with `resets[i]` set starts its key's
        window afresh (after a long gap). Callers must already have dropped records whose
        timestamp is not after the key's last one (see `is_in_order`).
        """
        vals = np.asarray(values, dtype=np.float32)
        if not len(keys) == len(timestamps) == len(vals):
            raise ValueError("keys, timestamps and values must have the same length")
        if resets is None or not any(resets):
            return self._advance_arrays(keys, timestamps, vals, partitions, now)
        return self._advance_per_key(keys, timestamps, vals, partitions, resets, now)

    def _advance_arrays(self, keys: Sequence[str], timestamps: Sequence[int],
                        vals: FloatArray, partitions: Sequence[int] | None,
                        now: float) -> WindowBatch:
        """`advance` without resets, as array operations over the whole batch.

        The batch is grouped by key (stable, so arrival order holds within a key); each
        key gets a segment [stored row | its new values] in one buffer, and every window
        and new stored row is a gather from that buffer.
        """
        w, n = self.width, len(keys)
        if n == 0:
            return WindowBatch(np.empty((0, w), np.float32), np.empty(0, np.int64))
        slot_for = self._slot_for
        slots = np.fromiter((slot_for(k) for k in keys), np.int64, n)
        order = np.argsort(slots, kind="stable")
        by_key = slots[order]
        first = np.r_[True, by_key[1:] != by_key[:-1]]
        group_start = np.flatnonzero(first)
        group = np.cumsum(first) - 1  # group of each record, in key order
        key_slots = by_key[group_start]
        added = np.diff(np.r_[group_start, n])
        rank = np.arange(n) - group_start[group]  # position within its key's new values
        segment = group_start + np.arange(len(key_slots)) * w
        buf = np.empty(n + len(key_slots) * w, np.float32)
        cols = np.arange(w)
        buf[segment[:, None] + cols] = self._values[key_slots]
        at = segment[group] + w + rank
        buf[at] = vals[order]
        have = np.minimum(self._count[key_slots], w)
        full = have[group] + rank >= w  # a full window precedes the record
        windows = buf[at[full][:, None] - w + cols]
        index = order[full]
        back = np.argsort(index, kind="stable")

        end = segment + w + added
        self._values[key_slots] = buf[end[:, None] - w + cols]
        self._count[key_slots] += added
        last = order[group_start + added - 1]  # each key's last record in the batch
        self._last_ts[key_slots] = np.asarray(timestamps, np.int64)[last]
        self._touched[key_slots] = now
        if partitions is not None:
            self._partition[key_slots] = np.asarray(partitions, np.int32)[last]
        return WindowBatch(windows[back], index[back])

    def _advance_per_key(self, keys: Sequence[str], timestamps: Sequence[int],
                         vals: FloatArray, partitions: Sequence[int] | None,
                         resets: Sequence[bool], now: float) -> WindowBatch:
        """`advance` key by key: the general path, for batches with window resets."""
        positions: dict[str, list[int]] = {}
        for i, key in enumerate(keys):
            positions.setdefault(key, []).append(i)

        windows: list[FloatArray] = []
        index: list[IntArray] = []
        for key, pos in positions.items():
            slot = self._slot_for(key)
            for segment in _segments(pos, resets):
                if resets is not None and resets[segment[0]]:
                    self._count[slot] = 0
                self._append(slot, segment, vals, windows, index)
            self._last_ts[slot] = timestamps[pos[-1]]
            self._touched[slot] = now
            if partitions is not None:
                self._partition[slot] = partitions[pos[-1]]

        w = self.width
        if not windows:
            return WindowBatch(np.empty((0, w), np.float32), np.empty(0, np.int64))
        order_windows = np.concatenate(windows)
        order_index = np.concatenate(index)
        order = np.argsort(order_index, kind="stable")
        return WindowBatch(order_windows[order], order_index[order])

    def _append(self, slot: int, pos: list[int], vals: FloatArray,
                windows: list[FloatArray], index: list[IntArray]) -> None:
        w = self.width
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
        self._values[slot] = 0
        self._values[slot, w - len(tail) :] = tail
        self._count[slot] += len(new)

    def is_in_order(self, key: str, timestamp: int) -> bool:
        """True when `timestamp` is strictly after the key's last stored one."""
        last = self.last_timestamp(key)
        return last is None or timestamp > last

    def resized(self, width: int) -> WindowStore:
        """A copy for a model of another window width, keeping each key's newest values."""
        other = WindowStore(width, initial_capacity=max(len(self._slots), 1))
        for key in self._slots:
            st = self.state(key)
            assert st is not None
            other.put(key, st, float(self._touched[self._slots[key]]))
        return other

    def _slot_for(self, key: str) -> int:
        slot = self._slots.get(key)
        if slot is not None:
            return slot
        if self._free:
            slot = self._free.pop()
        else:
            slot = len(self._slots)
            if slot == len(self._count):
                self._grow()
        self._slots[key] = slot
        return slot

    def _grow(self) -> None:
        old = len(self._count)
        cap = old * 2
        values = np.zeros((cap, self.width), np.float32)
        values[:old] = self._values
        self._values = values
        self._count = np.concatenate([self._count, np.zeros(cap - old, np.int64)])
        self._last_ts = np.concatenate([self._last_ts, np.zeros(cap - old, np.int64)])
        self._partition = np.concatenate([self._partition, np.full(cap - old, -1, np.int32)])
        self._touched = np.concatenate([self._touched, np.zeros(cap - old, np.float64)])


def _segments(pos: list[int], resets: Sequence[bool] | None) -> list[list[int]]:
    """Split a key's positions where a record restarts the window."""
    if resets is None:
        return [pos]
    out: list[list[int]] = [[]]
    for p in pos:
        if resets[p] and out[-1]:
            out.append([])
        out[-1].append(p)
    return out
