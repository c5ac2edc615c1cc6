"""The edge's training data: readings the champion labeled normal, per device, bounded by age and size.

A small SQLite file (``--training-store``) fed from the labeled stream by :class:`TrainingStoreSink`:
each normal reading's original message (key, value, headers, source time) is kept, so retraining
parses exactly what the flow parsed. Bounds: readings older than ``max_age_hours`` before the
newest one, and beyond the newest ``rows_per_device`` of a device, are deleted as new ones come.
``edgewatch retrain`` (:mod:`edgewatch.registry.retrain`) reads it.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import orjson
from bytewax.outputs import DynamicSink, StatelessSinkPartition

from edgewatch.schema import LabeledEvent, RawMessage

_SCHEMA = """
CREATE TABLE IF NOT EXISTS readings (
    device TEXT NOT NULL, time REAL NOT NULL, key BLOB, value BLOB NOT NULL, headers BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS readings_by_device ON readings (device, time);
CREATE INDEX IF NOT EXISTS readings_by_time ON readings (time);
"""


class TrainingStore:
    """Readings labeled normal, in SQLite (WAL: the flow writes while ``retrain`` reads).

    >>> import tempfile
    >>> store = TrainingStore(Path(tempfile.mkdtemp()) / "train.db", rows_per_device=2)
    >>> raw = RawMessage(b"pump-1", b"{}", [], "t", 0, 0, None)
    >>> store.add([("pump-1", float(t), raw) for t in range(3)])
    >>> [m.timestamp_ms for m in store.messages()]
    [1000, 2000]
    """

    def __init__(self, path: Path, max_age_hours: float = 168.0, rows_per_device: int = 5000):
        self.path = Path(path)
        self.max_age_seconds = max_age_hours * 3600
        self.rows_per_device = rows_per_device
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.path, timeout=30.0, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.executescript(_SCHEMA)

    def add(self, rows: list[tuple[str, float, RawMessage]]) -> None:
        """Keep ``(device, source time, raw message)`` rows, then apply the bounds to their devices."""
        if not rows:
            return
        with self._db:
            self._db.executemany(
                "INSERT INTO readings VALUES (?, ?, ?, ?, ?)",
                [
                    (device, time, raw.key, raw.value or b"", orjson.dumps([[n, v.hex()] for n, v in raw.headers]))
                    for device, time, raw in rows
                ],
            )
            newest = max(time for _, time, _ in rows)
            self._db.execute("DELETE FROM readings WHERE time < ?", (newest - self.max_age_seconds,))
            for device in {device for device, _, _ in rows}:
                self._db.execute(
                    "DELETE FROM readings WHERE rowid IN (SELECT rowid FROM readings WHERE device = ? "
                    "ORDER BY time DESC LIMIT -1 OFFSET ?)",
                    (device, self.rows_per_device),
                )

    def __len__(self) -> int:
        return self._db.execute("SELECT COUNT(*) FROM readings").fetchone()[0]

    def messages(self) -> list[RawMessage]:
        """Every kept message in source-time order (offsets number them)."""
        rows = self._db.execute("SELECT key, value, headers, time FROM readings ORDER BY time, rowid").fetchall()
        return [
            RawMessage(key, value, [(n, bytes.fromhex(v)) for n, v in orjson.loads(headers)], "training-store",
                       0, offset, round(time * 1000))
            for offset, (key, value, headers, time) in enumerate(rows)
        ]  # fmt: skip

    def close(self) -> None:
        self._db.close()


class TrainingStoreSink(DynamicSink[list[LabeledEvent]]):
    """Labeled events → the training store: the readings labeled normal."""

    def __init__(self, path: Path, max_age_hours: float, rows_per_device: int):
        self.path, self.max_age_hours, self.rows_per_device = Path(path), max_age_hours, rows_per_device

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _StorePartition:
        return _StorePartition(TrainingStore(self.path, self.max_age_hours, self.rows_per_device))


class _StorePartition(StatelessSinkPartition[list[LabeledEvent]]):
    def __init__(self, store: TrainingStore):
        self._store = store

    def write_batch(self, items: list[list[LabeledEvent]]) -> None:
        self._store.add(
            [
                (event.reading.device_id, event.reading.timestamp, event.reading.raw)
                for events in items
                for event in events
                if not event.is_anomaly and event.reading.raw.value is not None
            ]
        )

    def close(self) -> None:
        self._store.close()
