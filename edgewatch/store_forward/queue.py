"""The store-and-forward queue: a bounded SQLite FIFO of messages waiting for a cloud link.

The anomaly flow must never wait for the network. Cloud sinks (IoT Hub, Event Hubs) therefore
only append to a :class:`StoreAndForward` buffer — a SQLite FIFO on local disk — and a
forwarder thread (:mod:`edgewatch.store_forward.forwarder`) drains it through a sender
whenever the link is up::

    Bytewax worker ──put──► SQLite FIFO (bounded: bytes, age) ──peek/ack──► Forwarder thread ──► Sender ──► cloud

Guarantees:

* **ordered**: one FIFO and one sender per buffer file, so each device's events leave in the
  order they were labeled;
* **at least once, nothing lost while there is room**: a message leaves the buffer only when
  the sender acknowledged it; the file survives a restart (or a crash) of edgewatch and the
  next run drains it first. A crash between "sent" and "acknowledged in the file" resends that
  message: every envelope carries a stable ``message_id`` so consumers can drop duplicates;
* **bounded**: past ``max_bytes`` the oldest messages are dropped, and so are messages older
  than ``max_age_seconds``; each drop is logged in one line that says how many and why.

Durability: SQLite in WAL mode with ``synchronous=NORMAL`` keeps every committed write across a
process crash; an OS crash or power cut may lose the last commits.
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import sqlite3
import threading
import time
from collections import Counter as Tally
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import orjson
from prometheus_client import Counter, Gauge

log = logging.getLogger(__name__)

#: most ``?`` parameters per statement (SQLite's historical limit is 999)
_SQL_CHUNK = 500

#: Azure limits message ids to 128 characters; longer source positions are hashed.
MAX_MESSAGE_ID = 128

QUEUED = Counter("edgewatch_forward_queued", "Messages put into a store-and-forward buffer", ["buffer"])
SENT = Counter("edgewatch_forward_sent", "Messages a cloud link acknowledged", ["buffer"])
DROPPED = Counter("edgewatch_forward_dropped", "Messages dropped from a store-and-forward buffer", ["buffer", "reason"])
BUFFERED = Gauge("edgewatch_forward_buffered", "Messages waiting in a store-and-forward buffer", ["buffer"])
BUFFERED_BYTES = Gauge("edgewatch_forward_buffered_bytes", "Bytes waiting in a store-and-forward buffer", ["buffer"])
OLDEST_AGE = Gauge(
    "edgewatch_forward_oldest_age_seconds",
    "Age of the oldest message waiting in a store-and-forward buffer",
    ["buffer"],
)


@dataclass(frozen=True, slots=True)
class Envelope:
    """One message for a cloud endpoint: the body and the properties routing rules can read.

    ``device_id`` orders and partitions the stream (IoT Hub: a property; Event Hubs: the
    partition key); ``message_id`` is stable across resends so consumers can deduplicate.
    """

    device_id: str
    body: bytes
    properties: dict[str, str]
    message_id: str | None = None

    @property
    def is_anomaly(self) -> bool:
        return self.properties.get("anomaly") == "true"


def source_message_id(topic: str, partition: int, offset: int) -> str:
    """A message id that names the input message: the same on every resend and replay."""
    return bounded_message_id(f"{topic}:{partition}:{offset}")


def bounded_message_id(message_id: str) -> str:
    """``message_id`` as it is, or hashed (sha256, hex) if longer than Azure's limit of 128 characters."""
    return message_id if len(message_id) <= MAX_MESSAGE_ID else hashlib.sha256(message_id.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class Stored:
    """An envelope in the buffer: ``seq`` is its place in the FIFO (ack and discard take it)."""

    seq: int
    enqueued_at: float
    envelope: Envelope


class BufferInUse(RuntimeError):
    """Another StoreAndForward (this or another process) holds the buffer file."""


class _DropLog:
    """One log line per drop, at most one per ``interval`` seconds per reason (the rest add up)."""

    def __init__(self, name: str, interval: float = 10.0, clock: Callable[[], float] = time.monotonic):
        self._name = name
        self._interval = interval
        self._clock = clock
        self._pending: Tally[str] = Tally()
        self._explain: dict[str, str] = {}
        self._last: dict[str, float] = {}

    def record(self, reason: str, count: int, why: str) -> None:
        DROPPED.labels(self._name, reason).inc(count)
        self._pending[reason] += count
        self._explain[reason] = why
        self.flush(force=False)

    def flush(self, force: bool = True) -> None:
        now = self._clock()
        for reason in [reason for reason, count in self._pending.items() if count]:
            last = self._last.get(reason)
            if force or last is None or now - last >= self._interval:
                log.warning(
                    "store-and-forward %s: dropped %d message(s): %s",
                    self._name,
                    self._pending.pop(reason),
                    self._explain[reason],
                )
                self._last[reason] = now


class StoreAndForward:
    """A bounded, persistent FIFO of :class:`Envelope` in one SQLite file.

    Args:
        path: the SQLite file (created with its folder); ``<path>.lock`` keeps a second
            process (or a second instance here) from draining the same file.
        name: label of the Prometheus series and of the log lines (``iothub``, ``eventhubs``).
        max_bytes: most bytes of messages kept (bodies, properties and ids); past it the
            oldest are dropped. The file itself is somewhat larger (SQLite pages, WAL).
        max_age_seconds: messages older than this are dropped instead of sent.
        clock: wall-clock seconds (tests move time forward).
    """

    def __init__(
        self,
        path: Path | str,
        name: str = "cloud",
        max_bytes: int = 256 * 2**20,
        max_age_seconds: float = 24 * 3600.0,
        clock: Callable[[], float] = time.time,
    ):
        if max_bytes <= 0 or max_age_seconds <= 0:
            raise ValueError("max_bytes and max_age_seconds must be positive")
        self.path = Path(path)
        self.name = name
        self.max_bytes = max_bytes
        self.max_age_seconds = max_age_seconds
        self._clock = clock
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock_file = open(self.path.with_name(self.path.name + ".lock"), "a")  # noqa: SIM115 (held until close)
        try:
            fcntl.flock(self._lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lock_file.close()
            raise BufferInUse(f"{self.path} is in use by another edgewatch sink or process") from None
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._db.executescript(
            """
            PRAGMA journal_mode = WAL;
            PRAGMA synchronous = NORMAL;
            CREATE TABLE IF NOT EXISTS messages (
                seq INTEGER PRIMARY KEY AUTOINCREMENT,
                enqueued_at REAL NOT NULL,
                device_id TEXT NOT NULL,
                message_id TEXT,
                properties BLOB NOT NULL,
                body BLOB NOT NULL,
                size INTEGER NOT NULL
            );
            CREATE INDEX IF NOT EXISTS messages_by_age ON messages (enqueued_at);
            """
        )
        self._changed = threading.Condition()
        self._closed = False
        self._drops = _DropLog(name)
        self._count, self._bytes = self._db.execute("SELECT COUNT(*), COALESCE(SUM(size), 0) FROM messages").fetchone()
        self._publish_gauges()
        OLDEST_AGE.labels(name).set_function(self.oldest_age)
        if self._count:
            log.info("store-and-forward %s: %d message(s) from an earlier run wait in %s", name, self._count, path)

    # -- writing (Bytewax workers) ------------------------------------------------------

    def put(self, envelopes: Iterable[Envelope]) -> int:
        """Append envelopes in one transaction, then enforce the limits; returns how many."""
        now = self._clock()
        rows = [(now, e.device_id, e.message_id, orjson.dumps(e.properties), e.body, _size_of(e)) for e in envelopes]
        if not rows:
            return 0
        with self._changed:
            self._check_open()
            with self._transaction():
                self._db.executemany(
                    "INSERT INTO messages (enqueued_at, device_id, message_id, properties, body, size)"
                    " VALUES (?, ?, ?, ?, ?, ?)",
                    rows,
                )
                self._count += len(rows)
                self._bytes += sum(row[-1] for row in rows)
                self._drop_expired(now)
                self._drop_oldest_over_limit()
            QUEUED.labels(self.name).inc(len(rows))
            self._publish_gauges()
            self._changed.notify_all()
        return len(rows)

    # -- reading (the forwarder thread) -------------------------------------------------

    def peek(self, limit: int = 100) -> list[Stored]:
        """The oldest ``limit`` messages, oldest first, after dropping expired ones."""
        with self._changed:
            self._check_open()
            now = self._clock()
            (oldest,) = self._db.execute("SELECT MIN(enqueued_at) FROM messages").fetchone()
            if oldest is not None and oldest < now - self.max_age_seconds:
                with self._transaction():
                    self._drop_expired(now)
            self._drops.flush(force=False)
            rows = self._db.execute(
                "SELECT seq, enqueued_at, device_id, message_id, properties, body FROM messages ORDER BY seq LIMIT ?",
                (limit,),
            ).fetchall()
        return [
            Stored(seq, enqueued_at, Envelope(device_id, body, orjson.loads(properties), message_id))
            for seq, enqueued_at, device_id, message_id, properties, body in rows
        ]

    def ack(self, seqs: Sequence[int]) -> None:
        """The link took these messages: remove them."""
        removed = self._remove(seqs)
        if removed:
            SENT.labels(self.name).inc(removed)

    def discard(self, seqs: Sequence[int], reason: str, why: str) -> None:
        """Remove messages the link will never take (e.g. too large), with a log line."""
        removed = self._remove(seqs)
        if removed:
            self._drops.record(reason, removed, why)

    def record_drop(self, reason: str, count: int, why: str) -> None:
        """Count and log messages lost before they reached the buffer."""
        with self._changed:
            self._drops.record(reason, count, why)

    def wait_for_messages(self, timeout: float) -> bool:
        """Block until the buffer holds a message (True) or ``timeout`` passes (False)."""
        with self._changed:
            return self._changed.wait_for(lambda: self._count > 0 or self._closed, timeout) and not self._closed

    def __len__(self) -> int:
        return self._count

    def oldest_age(self) -> float:
        """Seconds the oldest message has waited (0 when empty); read at each metrics scrape."""
        with self._changed:
            if self._closed or not self._count:
                return 0.0
            (oldest,) = self._db.execute("SELECT MIN(enqueued_at) FROM messages").fetchone()
        return max(0.0, self._clock() - oldest) if oldest is not None else 0.0

    def count_stored(self) -> int:
        """Messages the file holds, counted in the file (the shutdown report; ``len`` is the cache)."""
        with self._changed:
            self._check_open()
            (count,) = self._db.execute("SELECT COUNT(*) FROM messages").fetchone()
            return count

    @property
    def size_bytes(self) -> int:
        """Bytes of the messages held (what ``max_bytes`` limits)."""
        return self._bytes

    def close(self) -> None:
        """Report pending drops, close the file and release the lock (messages stay on disk)."""
        with self._changed:
            if self._closed:
                return
            self._closed = True
            self._drops.flush()
            self._db.close()
            self._lock_file.close()
            self._changed.notify_all()

    def __enter__(self) -> StoreAndForward:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    # -- internals ------------------------------------------------------------------------

    def _remove(self, seqs: Sequence[int]) -> int:
        if not seqs:
            return 0
        removed = bytes_removed = 0
        with self._changed:
            self._check_open()
            with self._transaction():
                for start in range(0, len(seqs), _SQL_CHUNK):
                    chunk = list(seqs[start : start + _SQL_CHUNK])
                    marks = ",".join("?" * len(chunk))
                    count, size = self._db.execute(
                        f"SELECT COUNT(*), COALESCE(SUM(size), 0) FROM messages WHERE seq IN ({marks})", chunk
                    ).fetchone()
                    self._db.execute(f"DELETE FROM messages WHERE seq IN ({marks})", chunk)
                    removed += count
                    bytes_removed += size
                self._count -= removed
                self._bytes -= bytes_removed
            self._publish_gauges()
        return removed

    def _drop_expired(self, now: float) -> None:
        why = f"older than the {_duration(self.max_age_seconds)} age limit: the link did not take them in time"
        self._drop("enqueued_at < ?", now - self.max_age_seconds, "expired", why)

    def _drop_oldest_over_limit(self) -> None:
        excess = self._bytes - self.max_bytes
        if excess <= 0:
            return
        size = last_seq = 0
        oldest_first = self._db.execute("SELECT seq, size FROM messages ORDER BY seq")
        try:
            for seq, row_size in oldest_first:
                size, last_seq = size + row_size, seq
                if size >= excess:
                    break
        finally:
            oldest_first.close()
        why = f"the oldest, to stay within the {_megabytes(self.max_bytes)} limit while the link is down or slow"
        self._drop("seq <= ?", last_seq, "full", why)

    def _drop(self, where: str, bound: float, reason: str, why: str) -> None:
        """Delete the messages ``where`` selects (inside the caller's transaction), count and log them."""
        count, size = self._db.execute(
            f"SELECT COUNT(*), COALESCE(SUM(size), 0) FROM messages WHERE {where}", (bound,)
        ).fetchone()
        if count:
            self._db.execute(f"DELETE FROM messages WHERE {where}", (bound,))
            self._count -= count
            self._bytes -= size
            self._drops.record(reason, count, why)

    @contextmanager
    def _transaction(self) -> Iterator[None]:
        """``BEGIN IMMEDIATE`` … ``COMMIT``; on error ``ROLLBACK`` and recount what is held."""
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield
            # inside the guard: a COMMIT that fails (e.g. SQLITE_FULL while writing the WAL) leaves
            # nothing stored, and the in-memory count must say so
            self._db.execute("COMMIT")
        except BaseException:
            if self._db.in_transaction:  # SQLite already rolled back after e.g. SQLITE_FULL
                self._db.execute("ROLLBACK")
            self._count, self._bytes = self._db.execute(
                "SELECT COUNT(*), COALESCE(SUM(size), 0) FROM messages"
            ).fetchone()
            raise

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError(f"store-and-forward {self.name} is closed")

    def _publish_gauges(self) -> None:
        BUFFERED.labels(self.name).set(self._count)
        BUFFERED_BYTES.labels(self.name).set(self._bytes)


def _size_of(envelope: Envelope) -> int:
    properties = sum(len(k) + len(v) for k, v in envelope.properties.items())
    return len(envelope.body) + properties + len(envelope.device_id) + len(envelope.message_id or "")


def _megabytes(size: int) -> str:
    return f"{size / 2**20:.4g} MiB"


def _duration(seconds: float) -> str:
    if seconds >= 3600:
        return f"{seconds / 3600:.4g} h"
    return f"{seconds:.4g} s"
