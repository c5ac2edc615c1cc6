"""The Bytewax side of store-and-forward: a sink that only appends to the queue.

Workers of one process share one queue file and one forwarder per link (``_LINKS``), so a
device identity holds one connection; the file is locked against other processes. What the
sink stores is decided by its ``to_envelope`` function (``None``: not for this link).
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Generic, TypeVar

from bytewax.outputs import DynamicSink, StatelessSinkPartition

from edgewatch.store_forward.forwarder import Forwarder, Sender
from edgewatch.store_forward.queue import Envelope, StoreAndForward

log = logging.getLogger(__name__)

X = TypeVar("X")


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
    link.forwarder.stop(link.drain_seconds)
    kept = link.buffer.count_stored()  # what the file truly holds, not the in-memory count
    if kept:
        log.info(
            "store-and-forward %s: %d message(s) kept in %s for the next run", link.buffer.name, kept, link.buffer.path
        )
    link.buffer.close()


class _ForwardingSinkPartition(StatelessSinkPartition[list[X]]):
    def __init__(self, path: Path, link: _Link, to_envelope: Callable[[X], Envelope | None]):
        self._path = path
        self._link = link
        self._to_envelope = to_envelope

    def write_batch(self, items: list[list[X]]) -> None:
        to_envelope = self._to_envelope
        envelopes = [envelope for batch in items for item in batch if (envelope := to_envelope(item)) is not None]
        try:
            self._link.buffer.put(envelopes)
        except sqlite3.OperationalError as exc:
            # e.g. the disk is full: the cloud copy is lost, but labeling and the Kafka output go on
            self._link.buffer.record_drop("store-error", len(envelopes), f"could not be stored: {exc}")

    def close(self) -> None:
        _release_link(self._path, self._link)


class ForwardingSink(DynamicSink[list[X]], Generic[X]):
    """A Bytewax sink that stores lists of items for a cloud link, as envelopes.

    ``write_batch`` only appends to the buffer file ``<buffer_dir>/<name>.sqlite3``; one
    forwarder thread per process and file sends from it. Workers of one process share the
    buffer (so a device identity holds one connection); the file is locked against other
    processes.

    Args:
        name: buffer name (file stem, metrics label, log prefix).
        buffer_dir: where the buffer file lives; keep it on a persistent volume.
        sender_factory: builds the :class:`~edgewatch.store_forward.forwarder.Sender` when the
            first worker starts.
        to_envelope: the envelope for one item, or ``None`` for items this link does not take.
            Called for every item as it is written, so a filter it reads (a send mode) may
            change while the flow runs.
        policy: buffer limits and retry/drain timings.
    """

    def __init__(
        self,
        name: str,
        buffer_dir: Path | str,
        sender_factory: Callable[[], Sender],
        to_envelope: Callable[[X], Envelope | None],
        policy: BufferPolicy | None = None,
    ):
        self.name = name
        self.path = (Path(buffer_dir) / f"{name}.sqlite3").resolve()
        self.policy = policy or BufferPolicy()
        self.sender_factory = sender_factory
        self.to_envelope = to_envelope

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _ForwardingSinkPartition[X]:
        link = _acquire_link(self.path, self.name, self.policy, self.sender_factory)
        return _ForwardingSinkPartition(self.path, link, self.to_envelope)
