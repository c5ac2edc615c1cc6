"""The Kafka sink on the session's broker: records as made, batch by batch; a failed delivery stops the flow.

The sink's producer asks librdkafka for delivery reports of failures only (no Python call per
delivered message): a record the broker refuses must still surface as an error."""

from __future__ import annotations

import gc
import json

import pytest
from confluent_kafka.admin import AdminClient, NewTopic

from edgewatch.connectors.kafka import SINK_BATCH_BYTES, KafkaSink, OutRecord
from tests.support.kafka import consume_all


def make_topic(bootstrap: str, name: str, **config: str) -> str:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    admin.create_topics([NewTopic(name, 1, 1, config=config)])[name].result(15)
    return name


def test_records_of_a_batch_function_are_produced_in_order(kafka_bootstrap, topic_names):
    topic = make_topic(kafka_bootstrap, topic_names("sink"))
    sink = KafkaSink(
        {"bootstrap.servers": kafka_bootstrap},
        lambda item: OutRecord(topic, b"k", item, []),
        lambda items: [OutRecord(topic, b"k", item.upper(), [("h", b"1")]) for item in items],
    ).build("out", 0, 1)
    sink.write_batch([[b"a", b"b"], [b"c"]])
    sink.close()
    del sink
    gc.collect()
    out = consume_all(kafka_bootstrap, [topic])  # the sink is closed: all it wrote
    assert [(m.value, m.headers) for m in out] == [(v, {"h": b"1"}) for v in (b"A", b"B", b"C")]


def test_a_record_the_broker_refuses_is_an_error(kafka_bootstrap, topic_names):
    topic = make_topic(kafka_bootstrap, topic_names("small"), **{"max.message.bytes": "1000"})
    sink = KafkaSink({"bootstrap.servers": kafka_bootstrap}, lambda item: OutRecord(topic, b"k", item, [])).build(
        "out", 0, 1
    )
    with pytest.raises(RuntimeError, match="Kafka delivery failed"):
        sink.write_batch([[b"x" * 5000]])
    del sink
    gc.collect()


def test_a_large_batch_is_sent_in_chunks_below_a_full_batch(kafka_bootstrap, topic_names):
    """All of a write batch to one partition (as a partition's labeled events go): the sink flushes
    before the producer holds a full batch, so librdkafka does not wake its broker thread for each
    message enqueued behind a full one (before: 1-3 wake-ups per message)."""
    topic = make_topic(kafka_bootstrap, topic_names("chunks"))
    stats: list[dict] = []
    config = {"bootstrap.servers": kafka_bootstrap, "statistics.interval.ms": 100, "stats_cb": _append_json(stats)}
    sink = KafkaSink(config, lambda item: OutRecord(topic, b"k", item, [("h", b"1")])).build("out", 0, 1)
    held: list[int] = []
    sink._flush = _noting_held(sink, held)
    values = [b"%06d" % n + b"x" * 444 for n in range(20_000)]  # 9 MB, a labeled event's size each
    sink.write_batch([values[:10_000], values[10_000:]])
    sink._producer.poll(0.3)  # one more statistics report, after the last flush
    sink.close()
    del sink
    gc.collect()
    assert len(held) == 19  # 18 chunks of 500 kB, then the rest
    assert max(held) * len(values[0]) < SINK_BATCH_BYTES  # held: less than a batch, even all to one partition
    assert [m.value for m in consume_all(kafka_bootstrap, [topic])] == values
    wakeups = sum(b["wakeups"] for b in stats[-1]["brokers"].values() if b["nodeid"] >= 0)
    assert wakeups < 2_000  # 337,906 when the producer was given the whole batch at once (linger.ms 2)


def _noting_held(sink, held: list[int]):
    """``sink._flush`` that first notes how many messages the producer holds."""
    flush, producer = sink._flush, sink._producer

    def noting() -> None:
        held.append(len(producer))
        flush()

    return noting


def _append_json(found: list[dict]):
    return lambda text: found.append(json.loads(text))
