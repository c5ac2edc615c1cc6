"""Fuzz the real flow on the session's real broker: hostile messages in, nothing stops it.

3,000 generated messages (``tests/fuzzing.py``, fixed seeds: the same on every run), and one
whose dead letter is too large for the broker, are produced to the input topic; the anomaly
flow (``build_flow``, run in this process until it reaches the end of the topic) must finish
without an exception, and every input offset must come out exactly once: labeled, or
dead-lettered with a reason (the too-large one truncated, with its size and sha256).
"""

from __future__ import annotations

import gc
import hashlib
import time
from collections import Counter

import orjson
import pytest
from bytewax.testing import run_main

from edgewatch.config import FlowSettings
from edgewatch.connectors.kafka import KafkaBatchSource, ensure_topics
from edgewatch.flows.anomaly import build_flow
from edgewatch.flows.wiring import to_kafka
from tests.support.fuzzing import seeded_messages
from tests.support.kafka import consume_all, produce

PARTITIONS = 2
MESSAGES = 3000


def position_of(message, dead_letter_topic: str) -> tuple[int, int]:
    if message.topic == dead_letter_topic:
        return int(message.headers["edgewatch.error.partition"]), int(message.headers["edgewatch.error.offset"])
    source = orjson.loads(message.value)["source"]
    return source["partition"], source["offset"]


def kafka_records(messages):
    """The generated messages as the test producer sends them. The broker, not the flow, refuses
    creation times far in the future, so those (and missing ones) are sent as "now"."""
    now_ms = int(time.time() * 1000)
    for key, value, headers, timestamp_ms in messages:
        yield key, value, headers, timestamp_ms if timestamp_ms and 0 < timestamp_ms <= now_ms else 0


@pytest.mark.timeout(300)
def test_hostile_messages_never_stop_the_flow_and_all_come_out(kafka_bootstrap, topic_names):
    topics = {"in": topic_names("telemetry"), "out": topic_names("labeled"), "dlq": topic_names("deadletter")}
    config = {"bootstrap.servers": kafka_bootstrap}
    ensure_topics(config, topics.values(), PARTITIONS)
    messages = [m for seed in range(MESSAGES // 50) for m in seeded_messages(seed, 50)]
    # one that fits the broker but whose dead letter (its headers added) would not: stored truncated
    huge = b"x" * 998_000
    messages.append((b"machine-1", huge, [("pad", b"y" * 1900)], None))
    positions = produce(kafka_bootstrap, topics["in"], kafka_records(messages))
    stop_offsets = {}
    for partition, offset in positions:
        stop_offsets[(topics["in"], partition)] = max(stop_offsets.get((topics["in"], partition), 0), offset + 1)

    settings = FlowSettings(
        _env_file=None,
        bootstrap=kafka_bootstrap,
        in_topic=topics["in"],
        out_topic=topics["out"],
        dlq_topic=topics["dlq"],
    )
    source = KafkaBatchSource(settings.client_config(), [topics["in"]], batch_size=500, stop_offsets=stop_offsets)
    flow, streams = build_flow(settings, source)
    to_kafka(streams, settings)
    run_main(flow)  # raises if anything in the flow does
    gc.collect()  # the flow's producer: gone before the session's broker stops

    out = consume_all(kafka_bootstrap, [topics["out"], topics["dlq"]])  # the flow has ended: all it wrote
    answered = Counter(position_of(message, topics["dlq"]) for message in out)
    assert set(answered) == set(positions), "every input offset comes out"
    assert max(answered.values()) == 1, "and only once"
    dead = [message for message in out if message.topic == topics["dlq"]]
    labeled = len(out) - len(dead)
    assert labeled + len(dead) == len(messages)
    assert all(message.headers["edgewatch.error.reason"].strip() for message in dead)
    # a sender's edgewatch.error.* headers never mark a labeled event as a dead letter
    assert not any(name.startswith("edgewatch.error.") for m in out if m.topic == topics["out"] for name in m.headers)
    assert labeled >= 100 and len(dead) >= 1000, (labeled, len(dead))
    print(f"fuzz flow: {len(messages)} in, {labeled} labeled, {len(dead)} dead-lettered")  # with pytest -s
    (truncated,) = [m for m in dead if "edgewatch.error.truncated" in m.headers]
    assert truncated.headers["edgewatch.error.original_size"] == b"998000"
    assert truncated.headers["edgewatch.error.original_sha256"] == hashlib.sha256(huge).hexdigest().encode()
    assert huge.startswith(truncated.value) and b"message too large" in truncated.headers["edgewatch.error.reason"]
