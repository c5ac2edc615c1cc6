"""Recorded streams and history files as edgewatch messages.

* ``.jsonl`` — what ``edgewatch simulate --out`` writes: one object per line with ``key``,
  ``value`` (or ``value_b64`` when it is not UTF-8), ``headers`` and ``timestamp_ms``.
* ``.csv`` — a header row; a ``timestamp`` column (ISO-8601, naive = UTC, or epoch
  seconds), an optional ``device_id`` (or ``deviceId``) column, and numeric columns that
  become the features. NAB data files (``timestamp,value``) are this shape.

Every row becomes a :class:`~edgewatch.schema.RawMessage`, so files go through the same
parsing and validation as Kafka messages; offsets are line numbers.
"""

from __future__ import annotations

import base64
import csv
from collections.abc import Iterator
from pathlib import Path

import orjson

from edgewatch.schema import DeadLetter, RawMessage, Reading, parse_message

DEVICE_COLUMNS = ("device_id", "deviceId")


def read_jsonl(path: Path) -> Iterator[RawMessage]:
    """Messages of a recorded stream (``edgewatch simulate --out``)."""
    topic = Path(path).name
    with open(path, "rb") as lines:
        for number, line in enumerate(lines):
            if not line.strip():
                continue
            record = orjson.loads(line)
            value = base64.b64decode(record["value_b64"]) if "value_b64" in record else record["value"].encode("utf-8")
            key = record.get("key")
            headers = [(name, str(v).encode()) for name, v in (record.get("headers") or {}).items()]
            yield RawMessage(
                key.encode() if key is not None else None, value, headers, topic, 0, number, record.get("timestamp_ms")
            )


def read_csv(path: Path, default_device: str | None = None) -> Iterator[RawMessage]:
    """Rows of a CSV file as generic-shape messages (``deviceId``, ``timestamp``, ``values``)."""
    path = Path(path)
    topic = path.name
    device = default_device or path.stem
    with open(path, newline="") as handle:
        rows = csv.DictReader(handle)
        if rows.fieldnames is None or "timestamp" not in rows.fieldnames:
            raise ValueError(f"{path}: a CSV history needs a header row with a 'timestamp' column")
        device_column = next((c for c in DEVICE_COLUMNS if c in rows.fieldnames), None)
        for number, row in enumerate(rows):
            body = {
                "deviceId": row.pop(device_column) if device_column else device,
                "timestamp": _csv_time(row.pop("timestamp")),
                "values": {name: _csv_number(value) for name, value in row.items()},
            }
            yield RawMessage(None, orjson.dumps(body), [], topic, 0, number, None)


def read_messages(path: Path) -> Iterator[RawMessage]:
    """The messages of a ``.jsonl`` or ``.csv`` file."""
    suffix = Path(path).suffix.lower()
    if suffix == ".jsonl":
        return read_jsonl(path)
    if suffix == ".csv":
        return read_csv(path)
    raise ValueError(f"{path}: expected a .jsonl or .csv file")


def read_history(path: Path) -> tuple[list[Reading], list[DeadLetter]]:
    """Valid readings of a file, and what could not be used (with reasons)."""
    readings, dead = [], []
    for raw in read_messages(path):
        parsed = parse_message(raw)
        (readings if isinstance(parsed, Reading) else dead).append(parsed)
    return readings, dead


def _csv_time(text: str) -> float | str:
    try:
        return float(text)
    except ValueError:
        return text.strip()  # ISO-8601 (naive = UTC) is checked by the schema like any message


def _csv_number(text: str) -> float | str:
    try:
        return float(text)
    except ValueError:
        return text  # left for validation to refuse, with the column's name
