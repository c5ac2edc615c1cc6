"""Store-and-forward: labeled events wait on disk until a cloud link takes them.

The anomaly flow must never wait for the network. Cloud sinks (IoT Hub, Event Hubs) therefore
only append to a :class:`StoreAndForward` buffer — a SQLite FIFO on local disk — and a
:class:`Forwarder` thread drains it through a :class:`Sender` whenever the link is up::

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
from typing import Literal, Protocol

import orjson
from bytewax.outputs import DynamicSink, StatelessSinkPartition
from prometheus_client import Counter, Gauge
from tenacity import RetryError, Retrying, retry_if_exception_type, wait_exponential_jitter

from edgewatch.schema import DeadLetter, LabeledEvent, labeled_event_json

log = logging.getLogger(__name__)

SendMode = Literal["anomalies", "all"]
SEND_MODES: tuple[SendMode, ...] = ("anomalies", "all")

#: most ``?`` parameters per statement (SQLite's historical limit is 999)
_SQL_CHUNK = 500

#: Azure limits message ids to 128 characters; longer source positions are hashed.
MAX_MESSAGE_ID = 128

QUEUED = Counter("edgewatch_forward_queued", "Messages put into a store-and-forward buffer", ["buffer"])
SENT = Counter("edgewatch_forward_sent", "Messages a cloud link acknowledged", ["buffer"])
DROPPED = Counter("edgewatch_forward_dropped", "Messages dropped from a store-and-forward buffer", ["buffer", "reason"])
BUFFERED = Gauge("edgewatch_forward_buffered", "Messages waiting in a store-and-forward buffer", ["buffer"])
BUFFERED_BYTES = Gauge("edgewatch_forward_buffered_bytes", "Bytes waiting in a store-and-forward buffer", ["buffer"])


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

    @classmethod
    def from_labeled_event(cls, event: LabeledEvent) -> Envelope:
        """The labeled-event JSON with ``anomaly``/``deviceId``/``model`` properties.

        >>> from edgewatch.schema import RawMessage, Reading
        >>> raw = RawMessage(b"pump-1", b"{}", [], "telemetry", 2, 41)
        >>> event = LabeledEvent(Reading("pump-1", 0.0, {"rpm": 1.0}, raw), 0.9, True, "robust-zscore", "0.1.0")
        >>> envelope = Envelope.from_labeled_event(event)
        >>> envelope.properties, envelope.message_id
        ({'anomaly': 'true', 'deviceId': 'pump-1', 'model': 'robust-zscore'}, 'telemetry:2:41')
        """
        reading = event.reading
        raw = reading.raw
        return cls(
            device_id=reading.device_id,
            body=labeled_event_json(event),
            properties={
                "anomaly": "true" if event.is_anomaly else "false",
                "deviceId": reading.device_id,
                "model": event.model_name,
            },
            message_id=source_message_id(raw.topic, raw.partition, raw.offset),
        )

    @property
    def is_anomaly(self) -> bool:
        return self.properties.get("anomaly") == "true"


def source_message_id(topic: str, partition: int, offset: int) -> str:
    """A message id that names the input message: the same on every resend and replay."""
    message_id = f"{topic}:{partition}:{offset}"
    if len(message_id) > MAX_MESSAGE_ID:
        message_id = hashlib.sha256(message_id.encode()).hexdigest()
    return message_id


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
        cutoff = now - self.max_age_seconds
        count, size = self._db.execute(
            "SELECT COUNT(*), COALESCE(SUM(size), 0) FROM messages WHERE enqueued_at < ?", (cutoff,)
        ).fetchone()
        if count:
            self._db.execute("DELETE FROM messages WHERE enqueued_at < ?", (cutoff,))
            self._count -= count
            self._bytes -= size
            self._drops.record(
                "expired",
                count,
                f"older than the {_duration(self.max_age_seconds)} age limit: the link did not take them in time",
            )

    def _drop_oldest_over_limit(self) -> None:
        excess = self._bytes - self.max_bytes
        if excess <= 0:
            return
        count = size = 0
        last_seq = None
        oldest_first = self._db.execute("SELECT seq, size FROM messages ORDER BY seq")
        try:
            for seq, row_size in oldest_first:
                count, size, last_seq = count + 1, size + row_size, seq
                if size >= excess:
                    break
        finally:
            oldest_first.close()
        self._db.execute("DELETE FROM messages WHERE seq <= ?", (last_seq,))
        self._count -= count
        self._bytes -= size
        self._drops.record(
            "full",
            count,
            f"the oldest, to stay within the {_megabytes(self.max_bytes)} limit while the link is down or slow",
        )

    @contextmanager
    def _transaction(self) -> Iterator[None]:
        """``BEGIN IMMEDIATE`` … ``COMMIT``; on error ``ROLLBACK`` and recount what is held."""
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            if self._db.in_transaction:  # SQLite already rolled back after e.g. SQLITE_FULL
                self._db.execute("ROLLBACK")
            self._count, self._bytes = self._db.execute(
                "SELECT COUNT(*), COALESCE(SUM(size), 0) FROM messages"
            ).fetchone()
            raise
        self._db.execute("COMMIT")

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


# -- sending -------------------------------------------------------------------------------


class SendTimeout(TimeoutError):
    """A send did not finish in time; the client may be wedged and is replaced."""


def call_with_timeout(function: Callable, timeout: float, *args):
    """``function(*args)`` on a daemon thread; raise :class:`SendTimeout` after ``timeout`` s.

    SDK calls that wait forever on a stalled broker cannot be cancelled; the caller
    abandons the thread (it ends when the SDK gives up or the client is shut down).
    """
    outcome: dict[str, object] = {}
    done = threading.Event()

    def run() -> None:
        try:
            outcome["value"] = function(*args)
        except BaseException as exc:
            outcome["error"] = exc
        finally:
            done.set()

    threading.Thread(target=run, name=f"edgewatch-call-{getattr(function, '__name__', 'send')}", daemon=True).start()
    if not done.wait(timeout):
        raise SendTimeout(f"{getattr(function, '__name__', 'call')} did not finish within {timeout:g} s")
    if "error" in outcome:
        raise outcome["error"]
    return outcome.get("value")


class Sender(Protocol):
    """Delivers buffered messages to one cloud endpoint.

    ``deliver`` acknowledges what was delivered (``buffer.ack``) as it goes, discards what can
    never be delivered (``buffer.discard``), and raises on anything that may work later: the
    forwarder then waits and tries again from the oldest message still in the buffer.
    """

    batch_size: int

    def deliver(self, batch: list[Stored], buffer: StoreAndForward) -> None: ...

    def close(self) -> None: ...


class Forwarder:
    """Drains a :class:`StoreAndForward` through a :class:`Sender` on a background thread.

    Failed deliveries are retried forever (tenacity, exponential backoff with jitter up to
    ``retry_max_seconds``); the first failure of an outage is logged as a warning, the recovery
    as info. :meth:`stop` may first give the sender ``drain_seconds`` to empty the buffer.
    """

    def __init__(self, buffer: StoreAndForward, sender: Sender, retry_max_seconds: float = 30.0):
        self.buffer = buffer
        self.sender = sender
        self._stopping = threading.Event()
        self._down_since: float | None = None
        self._retrying = Retrying(
            retry=retry_if_exception_type(Exception),
            wait=wait_exponential_jitter(multiplier=0.5, max=retry_max_seconds, jitter=0.5),
            stop=lambda _state: self._stopping.is_set(),
            sleep=self._stopping.wait,
            before_sleep=self._on_failure,
        )
        self._thread = threading.Thread(target=self._run, name=f"edgewatch-forward-{buffer.name}", daemon=True)

    def start(self) -> Forwarder:
        self._thread.start()
        return self

    def stop(self, drain_seconds: float = 0.0, join_seconds: float = 10.0) -> bool:
        """Stop sending (after up to ``drain_seconds`` of draining); True if the buffer is empty.

        What is left stays in the file for the next run.
        """
        deadline = time.monotonic() + drain_seconds
        while len(self.buffer) and time.monotonic() < deadline and self._thread.is_alive():
            time.sleep(0.05)
        self._stopping.set()
        self._thread.join(join_seconds)
        if self._thread.is_alive():
            log.warning("store-and-forward %s: sender still busy after stop; abandoning it", self.buffer.name)
        try:
            call_with_timeout(self.sender.close, join_seconds)
        except Exception as exc:  # the process is stopping: report, do not raise
            log.warning("store-and-forward %s: closing the sender failed: %s", self.buffer.name, exc)
        return len(self.buffer) == 0

    def _run(self) -> None:
        while not self._stopping.is_set():
            try:
                sent = self._retrying(self._forward_once)
            except RetryError:  # stopped while retrying
                return
            if self._down_since is not None:
                log.info(
                    "store-and-forward %s: link back after %.0f s; %d message(s) left to send",
                    self.buffer.name,
                    time.monotonic() - self._down_since,
                    len(self.buffer),
                )
                self._down_since = None
            if not sent:
                self.buffer.wait_for_messages(timeout=0.5)

    def _forward_once(self) -> int:
        batch = self.buffer.peek(self.sender.batch_size)
        if batch:
            self.sender.deliver(batch, self.buffer)
        return len(batch)

    def _on_failure(self, state) -> None:
        error = state.outcome.exception()
        if self._down_since is None:
            self._down_since = time.monotonic()
            log.warning(
                "store-and-forward %s: link down (%s: %s); buffering, %d message(s) waiting",
                self.buffer.name,
                type(error).__name__,
                error,
                len(self.buffer),
            )
        else:
            log.debug("store-and-forward %s: still down (%s: %s)", self.buffer.name, type(error).__name__, error)


# -- the Bytewax sink -------------------------------------------------------------------------


@dataclass(frozen=True)
class BufferPolicy:
    """Limits and timings of a store-and-forward link."""

    max_bytes: int = 256 * 2**20
    max_age_seconds: float = 24 * 3600.0
    retry_max_seconds: float = 30.0
    drain_seconds: float = 10.0  # at shutdown: how long to keep sending what is buffered


class _Link:
    """One buffer file and its forwarder, shared by every worker of this process."""

    def __init__(self, buffer: StoreAndForward, forwarder: Forwarder, drain_seconds: float):
        self.buffer = buffer
        self.forwarder = forwarder
        self.drain_seconds = drain_seconds
        self.users = 0


_LINKS: dict[Path, _Link] = {}
_LINKS_LOCK = threading.Lock()


def _acquire_link(path: Path, name: str, policy: BufferPolicy, sender_factory: Callable[[], Sender]) -> _Link:
    with _LINKS_LOCK:
        link = _LINKS.get(path)
        if link is None:
            buffer = StoreAndForward(path, name, policy.max_bytes, policy.max_age_seconds)
            try:
                sender = sender_factory()
            except BaseException:
                buffer.close()
                raise
            link = _Link(buffer, Forwarder(buffer, sender, policy.retry_max_seconds).start(), policy.drain_seconds)
            _LINKS[path] = link
        link.users += 1
        return link


def _release_link(path: Path, link: _Link) -> None:
    with _LINKS_LOCK:
        link.users -= 1
        if link.users:
            return
        del _LINKS[path]
    drained = link.forwarder.stop(link.drain_seconds)
    if not drained:
        log.info(
            "store-and-forward %s: %d message(s) kept in %s for the next run",
            link.buffer.name,
            len(link.buffer),
            link.buffer.path,
        )
    link.buffer.close()


def select_envelopes(items: Iterable[object], send: SendMode) -> list[Envelope]:
    """Envelopes for the items a sink was given: LabeledEvent and Envelope are sent
    (only anomalies in ``anomalies`` mode), DeadLetter is skipped (it has the dead-letter
    topic), anything else is a wiring mistake."""
    envelopes = []
    for item in items:
        if isinstance(item, LabeledEvent):
            if send == "all" or item.is_anomaly:
                envelopes.append(Envelope.from_labeled_event(item))
        elif isinstance(item, Envelope):
            if send == "all" or item.is_anomaly:
                envelopes.append(item)
        elif not isinstance(item, DeadLetter):
            raise TypeError(f"a cloud sink takes lists of LabeledEvent or Envelope, got {type(item).__name__}")
    return envelopes


class _ForwardingSinkPartition(StatelessSinkPartition[list]):
    def __init__(self, path: Path, link: _Link, sink: ForwardingSink):
        self._path = path
        self._link = link
        self._sink = sink

    def write_batch(self, items: list[list]) -> None:
        send = self._sink.send  # read per batch: an operator may switch it while the flow runs
        envelopes = [envelope for batch in items for envelope in select_envelopes(batch, send)]
        try:
            self._link.buffer.put(envelopes)
        except sqlite3.OperationalError as exc:
            # e.g. the disk is full: the cloud copy is lost, but labeling and the Kafka output go on
            self._link.buffer.record_drop("store-error", len(envelopes), f"could not be stored: {exc}")

    def close(self) -> None:
        _release_link(self._path, self._link)


class ForwardingSink(DynamicSink[list]):
    """A Bytewax sink that stores lists of LabeledEvent (or Envelope) for a cloud link.

    ``write_batch`` only appends to the buffer file ``<buffer_dir>/<name>.sqlite3``; one
    forwarder thread per process and file sends from it. Workers of one process share the
    buffer (so a device identity holds one connection); the file is locked against other
    processes.

    ``send`` may be changed while the flow runs (e.g. from an IoT Edge module twin): every
    batch written after the change uses the new mode.

    Args:
        name: buffer name (file stem, metrics label, log prefix).
        buffer_dir: where the buffer file lives; keep it on a persistent volume.
        sender_factory: builds the :class:`Sender` when the first worker starts.
        send: ``anomalies`` (only events labeled anomalous) or ``all``.
        policy: buffer limits and retry/drain timings.
    """

    def __init__(
        self,
        name: str,
        buffer_dir: Path | str,
        sender_factory: Callable[[], Sender],
        send: SendMode = "anomalies",
        policy: BufferPolicy | None = None,
    ):
        self.name = name
        self.path = (Path(buffer_dir) / f"{name}.sqlite3").resolve()
        self.send = send
        self.policy = policy or BufferPolicy()
        self._sender_factory = sender_factory

    @property
    def send(self) -> SendMode:
        """``anomalies`` or ``all``; settable while the flow runs."""
        return self._send

    @send.setter
    def send(self, mode: SendMode) -> None:
        if mode not in SEND_MODES:
            raise ValueError(f"send must be one of {SEND_MODES}, got {mode!r}")
        self._send = mode

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _ForwardingSinkPartition:
        link = _acquire_link(self.path, self.name, self.policy, self._sender_factory)
        return _ForwardingSinkPartition(self.path, link, self)
