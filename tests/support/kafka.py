"""Produce to and read back from the test broker, with bounded waits; what the flow answered."""

from __future__ import annotations

import time
from dataclasses import dataclass

import orjson
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient

from edgewatch.config import FlowSettings
from edgewatch.connectors import kafka
from edgewatch.online_models.bank import ModelBank
from edgewatch.online_models.registry import resolve_detector
from edgewatch.schema import RawMessage, Reading, SourceRef, parse_message


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
        kafka.produce(
            producer, topic, value, key, headers=headers, timestamp=timestamp[0] if timestamp else 0,
            on_delivery=delivered_at(index),
        )  # fmt: skip
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


def consume_all(bootstrap: str, topics: list[str], timeout: float = 60.0) -> list[Consumed]:
    """Everything the topics hold now, from the start up to their end offsets. Once whatever writes
    to them has stopped (a flow that ended, was stopped or killed), that is all it ever wrote: a
    check for extra messages (exactly once) needs no settle time then, and misses none that came
    late. (Offsets are one per message here: no producer in edgewatch is transactional.)"""
    metadata = AdminClient({"bootstrap.servers": bootstrap}).list_topics(timeout=10)
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "tests", "enable.auto.commit": "false"})
    try:
        held = 0
        for topic in topics:
            for partition in metadata.topics[topic].partitions:
                low, high = consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=10)
                held += high - low
    finally:
        consumer.close()
    found = consume(bootstrap, topics, held, timeout, settle=0)
    assert len(found) == held, f"read {len(found)} of the {held} messages in {topics} within {timeout} s"
    return found


# -- what the flow answered -------------------------------------------------------------------------


def flow_env(bootstrap: str, topics: dict[str, str]) -> dict[str, str]:
    """The ``EDGEWATCH_*`` settings of a flow between ``topics["in"]`` and ``topics["out"]``/``["dlq"]``."""
    return {
        "EDGEWATCH_BOOTSTRAP": bootstrap,
        "EDGEWATCH_IN_TOPIC": topics["in"],
        "EDGEWATCH_OUT_TOPIC": topics["out"],
        "EDGEWATCH_DLQ_TOPIC": topics["dlq"],
    }


def position_of(message: Consumed) -> tuple[int, int]:
    """The input (partition, offset) an output message answers: a labeled event's source, or a
    dead letter's error headers."""
    if "edgewatch.error.offset" in message.headers:
        return int(message.headers["edgewatch.error.partition"]), int(message.headers["edgewatch.error.offset"])
    source = orjson.loads(message.value)["source"]
    return source["partition"], source["offset"]


def expected_scores(records, positions) -> dict[tuple[int, int], float]:
    """Scores of an uninterrupted run: each device's messages in offset order through one bank."""
    bank = ModelBank(resolve_detector(FlowSettings().detector))  # the flow's default detector, per device
    ordered = sorted(zip(positions, records, strict=True))
    readings = [
        parse_message(RawMessage(key, value, headers, *SourceRef("t", p, o)))
        for (p, o), (key, value, headers) in ordered
    ]
    events, dead, _, _ = bank.label([r for r in readings if isinstance(r, Reading)])
    assert not dead
    return {(e.reading.source.partition, e.reading.source.offset): e.score for e in events}
