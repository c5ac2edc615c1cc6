"""Pace a simulated fleet, or record it to a JSONL file (Kafka: :func:`edgewatch.connectors.kafka.publish`)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from pathlib import Path

import orjson

from edgewatch.connectors.kafka import PublishStats
from edgewatch.simulator.fleet import SimRecord


def paced(records: Iterable[SimRecord], rate: float, stop: Callable[[], bool] = lambda: False):
    """Yield records no faster than ``rate`` per second (sleeping in ~5 ms steps)."""
    start = time.monotonic()
    for sent, record in enumerate(records):
        if stop():
            return
        ahead = start + sent / rate - time.monotonic()
        if ahead > 0.005:
            time.sleep(ahead)
        yield record


def write_jsonl(records: Iterable[SimRecord], path: Path) -> PublishStats:
    """Record the stream: one JSON object per line with key, value, headers and timestamp."""
    stats = PublishStats()
    started = time.monotonic()
    with open(path, "wb") as out:
        for record in records:
            out.write(orjson.dumps(record.to_json()) + b"\n")
            stats.count(record)
    stats.seconds = time.monotonic() - started
    return stats
