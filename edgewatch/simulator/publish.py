"""Send a simulated fleet to Kafka at a steady rate, or record it to a JSONL file."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import orjson
from confluent_kafka import Producer

from edgewatch.simulator.fleet import MALFORMED, SimRecord


@dataclass
class PublishStats:
    """What a publisher sent: messages, fault episodes and malformed payloads."""

    messages: int = 0
    fault_messages: int = 0
    malformed: int = 0
    seconds: float = 0.0

    def count(self, record: SimRecord) -> None:
        self.messages += 1
        if record.fault == MALFORMED:
            self.malformed += 1
        elif record.fault:
            self.fault_messages += 1


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


def publish_kafka(
    records: Iterable[SimRecord],
    config: dict[str, str],
    topic: str,
    on_record: Callable[[SimRecord], None] | None = None,
) -> PublishStats:
    """Produce every record (key, value, headers, timestamp) and wait until all are acknowledged."""
    errors: list[str] = []

    def delivered(error, _msg) -> None:
        if error is not None:
            errors.append(str(error))

    producer = Producer({**config, "linger.ms": "5", "acks": "all"})
    stats = PublishStats()
    started = time.monotonic()
    for record in records:
        while True:
            try:
                producer.produce(
                    topic,
                    record.value,
                    record.key,
                    headers=record.headers,
                    timestamp=record.timestamp_ms,
                    on_delivery=delivered,
                )
                break
            except BufferError:
                producer.poll(0.05)
        producer.poll(0)
        stats.count(record)
        if on_record is not None:
            on_record(record)
    remaining = producer.flush(60)
    if remaining or errors:
        raise RuntimeError(f"{remaining} messages not delivered; errors: {errors[:3]}")
    stats.seconds = time.monotonic() - started
    return stats


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
