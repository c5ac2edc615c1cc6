"""Recorded streams and history files: read them, replay them to Kafka, or run the flow on them.

* ``.jsonl`` — what ``edgewatch simulate --out`` writes: one object per line with ``key``,
  ``value`` (or ``value_b64`` when it is not UTF-8), ``headers`` and ``timestamp_ms``.
* ``.csv`` — a header row; a ``timestamp`` column (ISO-8601, naive = UTC, or epoch
  seconds), an optional ``device_id`` (or ``deviceId``) column, and numeric columns that
  become the features: generic-shape messages. NAB data files (``timestamp,value``) are this.
* ``.txt`` — NASA CMAPSS rows (``unit cycle setting1..3 sensor1..21``): CMAPSS-shape messages
  keyed ``engine-<unit>``, the engines running side by side, one cycle every
  ``cycle_seconds``.

Every row becomes a :class:`~edgewatch.schema.RawMessage` whose ``timestamp_ms`` is its
source time, so files go through the same parsing and validation as Kafka messages.
"""

from __future__ import annotations

import base64
import csv
import time
from collections.abc import Callable, Iterable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import orjson
from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition
from bytewax.outputs import DynamicSink, StatelessSinkPartition

from edgewatch.schema import (
    CMAPSS_FEATURES,
    DeadLetter,
    RawMessage,
    Reading,
    dead_letter_headers,
    parse_iso_utc,
    parse_message,
)

DEVICE_COLUMNS = ("device_id", "deviceId")
#: start of a replayed CMAPSS fleet's clock (CMAPSS counts cycles, not time)
CMAPSS_EPOCH = datetime(2024, 1, 1, tzinfo=UTC).timestamp()


def read_jsonl(path: Path) -> Iterator[RawMessage]:
    """Messages of a recorded stream (``edgewatch simulate --out``). A line that is not such a
    record (broken, truncated, not UTF-8, or a bare message) is taken as the message itself: the
    flow then labels it, or dead-letters it with the reason, instead of stopping at it."""
    topic = Path(path).name
    with open(path, "rb") as lines:
        for number, line in enumerate(lines):
            if not line.strip():
                continue
            try:
                yield _recorded(orjson.loads(line), topic, number)
            except (orjson.JSONDecodeError, AttributeError, KeyError, TypeError, ValueError):
                yield RawMessage(None, line.rstrip(b"\r\n"), [], topic, 0, number, None)


def _recorded(record: dict, topic: str, number: int) -> RawMessage:
    """One ``simulate --out`` record (``key``, ``value`` or ``value_b64``, ``headers``, ``timestamp_ms``)."""
    value = base64.b64decode(record["value_b64"], validate=True) if "value_b64" in record else record["value"].encode()
    key, stamp = record.get("key"), record.get("timestamp_ms")
    if stamp is not None and not isinstance(stamp, int):
        raise TypeError("timestamp_ms is not an integer")
    headers = [(name, str(v).encode()) for name, v in (record.get("headers") or {}).items()]
    return RawMessage(key.encode() if key is not None else None, value, headers, topic, 0, number, stamp)


def read_csv(path: Path, default_device: str | None = None) -> Iterator[RawMessage]:
    """Rows of a CSV file as generic-shape messages (``deviceId``, ``timestamp``, ``values``)."""
    path = Path(path)
    topic = path.name
    device = default_device or path.stem
    with open(path, newline="", errors="replace") as handle:  # a bad byte: a bad value, dead-lettered
        rows = csv.DictReader(handle)
        if rows.fieldnames is None or "timestamp" not in rows.fieldnames:
            raise ValueError(f"{path}: a CSV history needs a header row with a 'timestamp' column")
        device_column = next((c for c in DEVICE_COLUMNS if c in rows.fieldnames), None)
        for number, row in enumerate(rows):
            stamp = _csv_time(row.pop("timestamp"))
            extra = row.pop(None, None)  # fields beyond the header: refused by validation, named
            body = {
                "deviceId": row.pop(device_column) if device_column else device,
                "timestamp": stamp,
                "values": {name: _csv_number(value) for name, value in row.items()},
            }
            if extra is not None:
                body["values"]["(fields beyond the header)"] = extra
            yield RawMessage(None, orjson.dumps(body), [], topic, 0, number, _epoch_ms(stamp))


def read_cmapss(path: Path, cycle_seconds: float = 1.0) -> Iterator[RawMessage]:
    """A CMAPSS file as its engines would stream it: cycle 1 of every engine, then cycle 2, ..."""
    path = Path(path)
    rows = []
    with open(path) as lines:
        for number, line in enumerate(lines):
            fields = line.split()
            if not fields:
                continue
            if len(fields) != 2 + len(CMAPSS_FEATURES):
                raise ValueError(f"{path}:{number + 1}: expected {2 + len(CMAPSS_FEATURES)} columns, got {len(fields)}")
            try:
                unit, cycle = int(fields[0]), int(fields[1])
                rows.append((cycle, unit, number, [float(v) for v in fields[2:]]))
            except ValueError:
                raise ValueError(f"{path}:{number + 1}: expected an engine, a cycle and numbers") from None
    rows.sort()
    for cycle, unit, number, values in rows:
        source_time = CMAPSS_EPOCH + cycle * cycle_seconds
        body = {"CycleTime": cycle, **dict(zip(CMAPSS_FEATURES, values, strict=True))}
        yield RawMessage(
            f"engine-{unit:03d}".encode(), orjson.dumps(body), [], path.name, 0, number, round(source_time * 1000)
        )


def read_messages(path: Path, cycle_seconds: float = 1.0) -> Iterator[RawMessage]:
    """The messages of a ``.jsonl``, ``.csv`` or CMAPSS ``.txt`` file."""
    suffix = Path(path).suffix.lower()
    if suffix == ".jsonl":
        return read_jsonl(path)
    if suffix == ".csv":
        return read_csv(path)
    if suffix == ".txt":
        return read_cmapss(path, cycle_seconds)
    raise ValueError(f"{path}: expected a .jsonl, .csv or CMAPSS .txt file")


def read_history(path: Path) -> tuple[list[Reading], list[DeadLetter]]:
    """Valid readings of a file, and what could not be used (with reasons)."""
    readings, dead = [], []
    for raw in read_messages(path):
        parsed = parse_message(raw)
        (readings if isinstance(parsed, Reading) else dead).append(parsed)
    return readings, dead


def paced(
    records: Iterable[RawMessage],
    speed: float | None = 1.0,
    stop: Callable[[], bool] | None = None,
    *,
    rate: float | None = None,
) -> Iterator[RawMessage]:
    """Yield records at their recorded pace divided by ``speed`` (``None``: as fast as possible),
    or evenly at ``rate`` records per second when given, until ``stop()`` says so.

    The recorded pace follows the records' source times (``timestamp_ms``); one without a time
    goes out right after the previous one. A simulated fleet, whose machines all read at the
    same instant, is sent evenly with ``rate`` instead of in bursts.
    """
    start = first = None
    for sent, record in enumerate(records):
        if stop is not None and stop():
            return
        if start is None:
            start = time.monotonic()
        if rate is not None:
            due = sent / rate
        elif speed is not None and record.timestamp_ms is not None:
            first = record.timestamp_ms if first is None else first
            due = (record.timestamp_ms - first) / 1000.0 / speed
        else:
            due = 0.0
        ahead = start + due - time.monotonic()
        if ahead > 0.0005:
            time.sleep(ahead)
        yield record


class _FilePartition(StatefulSourcePartition[list[RawMessage], int]):
    def __init__(self, messages: Iterator[RawMessage], skip: int, batch_size: int):
        self._messages = messages
        self._position = skip
        self._batch_size = batch_size
        for _ in range(skip):  # resume after the messages a snapshot already covered
            next(self._messages, None)

    def next_batch(self) -> list[list[RawMessage]]:
        batch = [m for _, m in zip(range(self._batch_size), self._messages, strict=False)]
        if not batch:
            raise StopIteration
        self._position += len(batch)
        return [batch]

    def snapshot(self) -> int:
        return self._position


class FileSource(FixedPartitionedSource[list[RawMessage], int]):
    """A recorded file as a Bytewax source: batches of messages, then the end of the flow."""

    def __init__(self, path: Path, batch_size: int = 2000, speed: float | None = None):
        self._path = Path(path)
        self._batch_size = batch_size
        self._speed = speed

    def list_parts(self) -> list[str]:
        return [self._path.name]

    def build_part(self, step_id: str, for_part: str, resume_state: int | None) -> _FilePartition:
        return _FilePartition(paced(read_messages(self._path), self._speed), resume_state or 0, self._batch_size)


class _JsonlPartition(StatelessSinkPartition[list]):
    def __init__(self, path: Path, to_line: Callable[[object], bytes], to_lines: Callable | None = None):
        self._file = open(path, "ab")  # noqa: SIM115 (closed by close())
        self._to_lines = to_lines or (lambda items: map(to_line, items))

    def write_batch(self, items: list[list]) -> None:
        write = self._file.write
        for batch in items:
            if batch:
                write(b"\n".join(self._to_lines(batch)) + b"\n")
        self._file.flush()

    def close(self) -> None:
        self._file.close()


class JsonlSink(DynamicSink[list]):
    """Lists of items to ``path``, one JSON object per line (``to_line(item)``), appended.

    >>> import tempfile, orjson
    >>> from bytewax.testing import TestingSource, run_main
    >>> import bytewax.operators as op
    >>> from bytewax.dataflow import Dataflow
    >>> path = Path(tempfile.mkdtemp()) / "out.jsonl"
    >>> flow = Dataflow("jsonl")
    >>> op.output("out", op.input("in", flow, TestingSource([[{"a": 1}, {"a": 2}]])), JsonlSink(path, orjson.dumps))
    >>> run_main(flow)
    >>> path.read_text().splitlines()
    ['{"a":1}', '{"a":2}']
    """

    def __init__(
        self,
        path: Path,
        to_line: Callable[[object], bytes],
        to_lines: Callable[[list], Iterable[bytes]] | None = None,
    ):
        self.path = Path(path)
        self._to_line = to_line
        self._to_lines = to_lines  # the lines of a whole list at once (``to_line`` of each when not given)

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _JsonlPartition:
        return _JsonlPartition(self.path, self._to_line, self._to_lines)


def dead_letter_line(dead: DeadLetter) -> bytes:
    """A dead letter as one JSONL object: the original bytes in base64 and the error headers."""
    headers = {name: value.decode("utf-8", "replace") for name, value in dead_letter_headers(dead)}
    return orjson.dumps({"value_b64": base64.b64encode(dead.raw.value or b"").decode(), "headers": headers})


def _csv_time(text: str | None) -> float | str | None:
    if text is None:  # a short row: no time, refused by validation
        return None
    try:
        return float(text)
    except ValueError:
        return text.strip()  # ISO-8601 (naive = UTC) is checked by the schema like any message


def _epoch_ms(stamp: float | str | None) -> int | None:
    if stamp is None:
        return None
    if isinstance(stamp, float):
        return round(stamp * 1000)
    try:
        return round(parse_iso_utc(stamp).timestamp() * 1000)
    except ValueError:
        return None


def _csv_number(text: str | None) -> float | str | None:
    if text is None:  # a short row: the column has no value (null), refused by validation
        return None
    try:
        return float(text)
    except ValueError:
        return text  # left for validation to refuse, with the column's name
