"""The Kafka sink on the session's broker: records as made, batch by batch; a failed delivery stops the flow.

The sink's producer asks librdkafka for delivery reports of failures only (no Python call per
delivered message): a record the broker refuses must still surface as an error."""

from __future__ import annotations

import gc

import pytest
from confluent_kafka.admin import AdminClient, NewTopic

from edgewatch.connectors.kafka import KafkaSink, OutRecord
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
