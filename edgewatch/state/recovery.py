"""Bytewax's recovery directory, read before Bytewax loads it.

Bytewax 0.21 keeps its recovery state in ``part-N.sqlite3`` files; table ``snaps`` holds
``(step_id, state_key, snap_epoch, ser_change)`` where ``ser_change`` is the pickle of what a
stateful step's ``snapshot()`` returned (``NULL`` for a discarded key). On resume Bytewax
unpickles every one of them: a planted pickle would run code. :func:`verify_recovery_dir`
reads every blob's opcodes first (``pickletools``, nothing is executed) and refuses the
directory unless each one only builds plain data; the ``detect`` step's blobs must be a
single ``bytes`` object (an edgewatch manifest).
"""

from __future__ import annotations

import pickletools
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import msgspec

from edgewatch.state import codec, store

DETECT_STEP_SUFFIX = ".detect"

# opcodes that only build numbers, strings, bytes, None/bools and containers of them: without
# GLOBAL/STACK_GLOBAL/INST/OBJ/REDUCE/NEWOBJ/BUILD/EXT*/PERSID a pickle cannot reach a callable
_DATA_OPCODES = frozenset(
    [
        "PROTO",
        "FRAME",
        "STOP",
        "MEMOIZE",
        "PUT",
        "BINPUT",
        "LONG_BINPUT",
        "GET",
        "BINGET",
        "LONG_BINGET",
        "MARK",
        "POP",
        "POP_MARK",
        "DUP",
        "NONE",
        "NEWTRUE",
        "NEWFALSE",
        "INT",
        "BININT",
        "BININT1",
        "BININT2",
        "LONG",
        "LONG1",
        "LONG4",
        "FLOAT",
        "BINFLOAT",
        "STRING",
        "BINSTRING",
        "SHORT_BINSTRING",
        "UNICODE",
        "SHORT_BINUNICODE",
        "BINUNICODE",
        "BINUNICODE8",
        "BINBYTES",
        "SHORT_BINBYTES",
        "BINBYTES8",
        "BYTEARRAY8",
        "EMPTY_TUPLE",
        "TUPLE",
        "TUPLE1",
        "TUPLE2",
        "TUPLE3",
        "EMPTY_LIST",
        "APPEND",
        "APPENDS",
        "LIST",
        "EMPTY_DICT",
        "DICT",
        "SETITEM",
        "SETITEMS",
        "EMPTY_SET",
        "ADDITEMS",
        "FROZENSET",
    ]
)
_BYTES_OPCODES = frozenset({"SHORT_BINBYTES", "BINBYTES", "BINBYTES8"})
_FRAMING = frozenset({"PROTO", "FRAME", "MEMOIZE", "STOP"})


class UnsafeRecoveryError(ValueError):
    """A recovery snapshot that is not plain data: loading it could run code."""


class MissingPagesError(ValueError):
    """A shard manifest whose page file is gone: resuming would silently forget devices."""


def bytes_of_pickle(blob: bytes) -> bytes | None:
    """The ``bytes`` a pickle holds if it holds exactly one ``bytes`` object and nothing else,
    else ``None``; read from its opcodes, never executed."""
    value, ops = None, []
    try:
        for opcode, arg, _ in pickletools.genops(blob):
            ops.append(opcode.name)
            if opcode.name in _BYTES_OPCODES:
                value = arg
            elif opcode.name not in _FRAMING:
                return None
    except Exception:
        return None
    return value if ops.count("SHORT_BINBYTES") + ops.count("BINBYTES") + ops.count("BINBYTES8") == 1 else None


def unsafe_opcode(blob: bytes) -> str | None:
    """The first opcode of ``blob`` that is not plain data (or why it is not a pickle), else ``None``."""
    try:
        for opcode, _, _ in pickletools.genops(blob):
            if opcode.name not in _DATA_OPCODES:
                return opcode.name
    except Exception as exc:
        return f"not a pickle ({exc})"
    return None


def _snaps(path: Path) -> Iterator[tuple[Path, str, str, int, bytes | None]]:
    for part in sorted(path.glob("part-*.sqlite3")):
        db = sqlite3.connect(f"file:{part}?mode=ro", uri=True)
        try:
            rows = db.execute("SELECT step_id, state_key, snap_epoch, ser_change FROM snaps")
            yield from ((part, *row) for row in rows)
        except sqlite3.OperationalError:  # a partition Bytewax has not initialised yet
            continue
        finally:
            db.close()


def verify_recovery_dir(path: Path, check_pages: bool = True) -> int:
    """Refuse (:class:`UnsafeRecoveryError`, one line) a recovery directory holding a snapshot
    that is not plain data, or (:class:`MissingPagesError`) one whose shard manifests name a
    page file that is gone; returns how many snapshots were checked.

    ``check_pages=False`` for a process of a cluster with a volume each: a manifest stored in this
    process's partition may describe a shard whose pages another process keeps (Bytewax stores a
    key's snapshot by its partition, and routes the key to the worker that runs it, whose volume
    holds the pages); a page file missing there is refused when that shard resumes."""
    checked = 0
    for part, step, key, epoch, blob in _snaps(path):
        if blob is None:
            continue
        checked += 1
        where = f"{part.name}: snapshot of step {step!r} key {key!r} (epoch {epoch})"
        if step.endswith(DETECT_STEP_SUFFIX):
            if bytes_of_pickle(blob) is None:
                raise UnsafeRecoveryError(
                    f"{where} is not an edgewatch manifest (a plain bytes pickle): refusing to load it; "
                    "restore the recovery directory from a backup or start a new one"
                )
        elif (opcode := unsafe_opcode(blob)) is not None:
            raise UnsafeRecoveryError(
                f"{where} is not plain data (pickle opcode {opcode}): refusing to load it; "
                "restore the recovery directory from a backup or start a new one"
            )
    for key, epoch, found in detect_manifests(path) if check_pages else ():
        page_file = path / store.STATE_DIR / f"{found['shard']}.{found['lineage']}.sqlite3"
        if found["generation"] > 0 and not page_file.exists():
            raise MissingPagesError(
                f"{page_file} is missing: the device state of {key} (epoch {epoch}) cannot be resumed; "
                "restore it from a backup or start a new recovery directory"
            )
    return checked


def detect_manifests(path: Path, shard: str | None = None) -> list[tuple[str, int, dict]]:
    """The manifests of the ``detect`` step Bytewax holds (it deletes those it can no longer
    resume from): ``(shard, epoch, manifest)``, of one ``shard`` or all."""
    found = []
    for _, step, key, epoch, blob in _snaps(path):
        if blob is None or not step.endswith(DETECT_STEP_SUFFIX) or (shard is not None and key != shard):
            continue
        data = bytes_of_pickle(blob)
        try:
            header, _ = codec.unpack(data) if data else ({}, [])
        except (codec.StateFormatError, msgspec.DecodeError):
            continue
        if header.get("kind") == "manifest":
            found.append((key, epoch, header))
    return found
