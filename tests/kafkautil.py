"""Produce to and read back from the test broker, with bounded waits."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient

from edgewatch.connectors.broker import _die_with_parent, stop_process


@dataclass
class Consumed:
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: dict[str, bytes]


def produce(bootstrap: str, topic: str, records) -> list[tuple[int, int]]:
    """Produce ``(key, value, headers[, timestamp_ms])`` records; returns their (partition, offset) in order.
    Without a timestamp (or 0) the producer stamps the time of sending."""
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": "5"})
    positions: list[tuple[int, int] | None] = []

    def delivered_at(index):
        def callback(error, msg):
            if error is not None:
                raise AssertionError(f"delivery failed: {error}")
            positions[index] = (msg.partition(), msg.offset())

        return callback

    for index, (key, value, headers, *timestamp) in enumerate(records):
        positions.append(None)
        while True:
            try:
                producer.produce(
                    topic, value, key, headers=headers, timestamp=timestamp[0] if timestamp else 0,
                    on_delivery=delivered_at(index),
                )  # fmt: skip
                break
            except BufferError:
                producer.poll(0.05)
        producer.poll(0)
    assert producer.flush(30) == 0, "messages not delivered"
    return positions


def consume(
    bootstrap: str,
    topics: list[str],
    expected: int | None = None,
    timeout: float = 60.0,
    settle: float = 1.0,
    until=None,
):
    """Read the topics from the start until ``expected`` messages arrived (or ``until(found)``
    holds, or ``timeout``), then ``settle`` seconds more to catch any extra message."""
    if until is None:
        until = lambda found: len(found) >= expected  # noqa: E731
    metadata = AdminClient({"bootstrap.servers": bootstrap}).list_topics(timeout=10)
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "tests", "enable.auto.commit": "false"})
    consumer.assign([TopicPartition(t, p, 0) for t in topics for p in metadata.topics[t].partitions])
    found: list[Consumed] = []
    deadline = time.monotonic() + timeout
    settle_until = None
    try:
        while time.monotonic() < (settle_until or deadline):
            for msg in consumer.consume(1000, 0.2):
                if msg.error() is None:
                    found.append(
                        Consumed(
                            msg.topic(),
                            msg.partition(),
                            msg.offset(),
                            msg.key(),
                            msg.value(),
                            dict(msg.headers() or []),
                        )
                    )
            if settle_until is None and until(found):
                settle_until = time.monotonic() + settle
    finally:
        consumer.close()
    return found


class FlowProcess:
    """``python -m edgewatch run ...`` as a child process that dies with the test."""

    def __init__(self, args: list[str], log: Path):
        self.args = args
        self.log = log
        self.process: subprocess.Popen | None = None

    def start(self) -> FlowProcess:
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "edgewatch", "run", *self.args],
                stdout=log,
                stderr=subprocess.STDOUT,
                preexec_fn=_die_with_parent,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
        return self

    def kill(self) -> None:
        """SIGKILL: no shutdown, no final snapshot."""
        self.process.kill()
        self.process.wait(10)

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM, as Kubernetes does; the flow drains and exits."""
        return stop_process(self.process, timeout)

    def __enter__(self) -> FlowProcess:
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()
