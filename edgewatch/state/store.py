"""A shard's device pages on disk: one SQLite file per shard and lineage, one row per page version.

Bytewax snapshots a stateful key only in the epochs it was awoken, and rewrites its whole
value when it does. A shard's bank is one key, so instead of handing Bytewax the bank, each
snapshot writes only the pages that changed since the last one (a new *generation*) here,
and hands Bytewax a manifest of a few dozen bytes: ``(shard, lineage, generation)``. Resuming
reads, for every page, its newest version at or before the manifest's generation, so the
pages always match the input offsets Bytewax resumes from. Versions no resumable manifest can
reach are deleted (:meth:`PageStore.collect`).

A *lineage* is one history of a shard: a shard that starts without Bytewax state starts a new
lineage (a new file), so pages of an abandoned history can never leak into a resumed one.

>>> import tempfile, pathlib
>>> store = PageStore(pathlib.Path(tempfile.mkdtemp()), "shard-0000", "a1")
>>> store.write(1, {"g/0": b"one", "g/1": b"two"}); store.write(2, {"g/0": b"three", "g/1": None})
>>> store.read(1), store.read(2)
({'g/0': b'one', 'g/1': b'two'}, {'g/0': b'three'})
"""

from __future__ import annotations

import re
import sqlite3
from pathlib import Path

STATE_DIR = "edgewatch-state"
_NAME = re.compile(r"^(?P<shard>[A-Za-z0-9_-]+)\.(?P<lineage>[0-9a-f]+)\.sqlite3$")


class PageStore:
    """Versions of a shard's pages (``page id → bytes``; ``None`` deletes a page)."""

    def __init__(self, directory: Path, shard: str, lineage: str):
        directory.mkdir(parents=True, exist_ok=True)
        self.shard, self.lineage = shard, lineage
        self.path = directory / f"{shard}.{lineage}.sqlite3"
        self.bytes_written = 0
        # isolation_level=None: explicit transactions; one per snapshot
        self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=TRUNCATE")
        self._db.execute("PRAGMA synchronous=FULL")  # a manifest Bytewax commits must find its pages
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS pages (page TEXT NOT NULL, generation INTEGER NOT NULL, blob BLOB, "
            "PRIMARY KEY (page, generation)) WITHOUT ROWID"
        )

    def write(self, generation: int, pages: dict[str, bytes | None]) -> None:
        """Store ``pages`` as of ``generation`` in one transaction."""
        if not pages:
            return
        with self._transaction():
            self._db.executemany(
                "INSERT OR REPLACE INTO pages VALUES (?, ?, ?)",
                ((page, generation, blob) for page, blob in pages.items()),
            )
        self.bytes_written += sum(len(blob) for blob in pages.values() if blob is not None)

    def read(self, generation: int) -> dict[str, bytes]:
        """Every page as of ``generation`` (its newest version at or before it)."""
        rows = self._db.execute(
            "SELECT page, blob FROM pages p WHERE generation = "
            "(SELECT max(generation) FROM pages q WHERE q.page = p.page AND q.generation <= ?)",
            (generation,),
        )
        return {page: blob for page, blob in rows if blob is not None}

    def ids(self, generation: int, prefix: str = "") -> list[str]:
        """The ids of the pages held as of ``generation`` that start with ``prefix``."""
        rows = self._db.execute(
            "SELECT page FROM pages p WHERE substr(page, 1, ?) = ? AND blob IS NOT NULL AND generation = "
            "(SELECT max(generation) FROM pages q WHERE q.page = p.page AND q.generation <= ?)",
            (len(prefix), prefix, generation),
        )
        return [page for (page,) in rows]

    def latest_generation(self) -> int:
        return self._db.execute("SELECT coalesce(max(generation), 0) FROM pages").fetchone()[0]

    def discard_after(self, generation: int) -> None:
        """Forget versions newer than ``generation`` (written by epochs a crash left uncommitted)."""
        with self._transaction():
            self._db.execute("DELETE FROM pages WHERE generation > ?", (generation,))

    def collect(self, oldest_resumable: int) -> None:
        """Delete versions no manifest at or after generation ``oldest_resumable`` can reach."""
        with self._transaction():
            self._db.execute(
                "DELETE FROM pages WHERE generation < (SELECT max(generation) FROM pages q "
                "WHERE q.page = pages.page AND q.generation <= ?)",
                (oldest_resumable,),
            )
            # a deleted page's tombstone is no longer needed once nothing older is left
            self._db.execute(
                "DELETE FROM pages WHERE blob IS NULL AND generation <= ? AND NOT EXISTS "
                "(SELECT 1 FROM pages q WHERE q.page = pages.page AND q.generation < pages.generation)",
                (oldest_resumable,),
            )

    def versions(self) -> int:
        return self._db.execute("SELECT count(*) FROM pages").fetchone()[0]

    def close(self) -> None:
        self._db.close()

    def _transaction(self):
        db = self._db

        class _Tx:
            def __enter__(self):
                db.execute("BEGIN IMMEDIATE")

            def __exit__(self, kind, exc, tb):
                db.execute("COMMIT" if kind is None else "ROLLBACK")

        return _Tx()


def lineages(directory: Path, shard: str | None = None) -> dict[tuple[str, str], Path]:
    """The page files in ``directory``: ``(shard, lineage) → path``."""
    found = {}
    for path in directory.glob("*.sqlite3") if directory.is_dir() else ():
        match = _NAME.match(path.name)
        if match and (shard is None or match["shard"] == shard):
            found[(match["shard"], match["lineage"])] = path
    return found


def remove(path: Path) -> None:
    """Delete a page file and its SQLite side files."""
    for suffix in ("", "-journal", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
