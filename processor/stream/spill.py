"""A local on-disk home for the windows of idle keys, so memory holds only active ones.

It is a cache of the changelog, never the source of truth: it is emptied at start-up and
for partitions this instance loses, and every state in it was committed to the changelog
before it was spilled.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Sequence
from pathlib import Path


class SpillStore:
    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=OFF")  # a cache: a torn file is just rebuilt
        self._db.execute("DROP TABLE IF EXISTS spill")
        self._db.execute("CREATE TABLE spill (key TEXT PRIMARY KEY, part INTEGER, data BLOB)")
        self._db.execute("CREATE INDEX spill_part ON spill (part)")

    def put_many(self, items: Iterable[tuple[str, int, bytes]]) -> None:
        with self._db:
            self._db.execute("BEGIN")
            self._db.executemany("INSERT OR REPLACE INTO spill VALUES (?, ?, ?)", items)

    def take_many(self, keys: Sequence[str]) -> dict[str, bytes]:
        """Remove and return the spilled states of those keys that have one."""
        found: dict[str, bytes] = {}
        for i in range(0, len(keys), 500):
            chunk = list(keys[i : i + 500])
            marks = ",".join("?" * len(chunk))
            rows = self._db.execute(f"SELECT key, data FROM spill WHERE key IN ({marks})", chunk)
            found.update(rows.fetchall())
        if found:
            with self._db:
                self._db.execute("BEGIN")
                self._db.executemany("DELETE FROM spill WHERE key = ?", [(k,) for k in found])
        return found

    def drop_partitions(self, partitions: Iterable[int]) -> None:
        with self._db:
            self._db.execute("BEGIN")
            self._db.executemany("DELETE FROM spill WHERE part = ?", [(p,) for p in partitions])

    def __len__(self) -> int:
        return int(self._db.execute("SELECT count(*) FROM spill").fetchone()[0])

    def close(self) -> None:
        self._db.close()
