"""Azure Event Hubs, both connectors.

(a) Kafka endpoint, against a real broker: the session's Apache Kafka also has an Event Hubs-like
listener (:mod:`tests.support.eventhubs`) — ``SASL_SSL://127.0.0.1:<port>``, mechanism PLAIN, the
only user ``$ConnectionString`` whose password is the connection string, TLS from a PKCS12 keystore
signed by a CA made in the test. edgewatch's Kafka source and sink talk to it with the settings derived
from that one connection string, exactly as in Azure, only with ``ssl.ca.location`` = the test CA.

(b) AMQP sink, at the SDK boundary: there is no local Event Hubs server without Docker, so the
producer client is a fake, but the batches are the SDK's own ``EventDataBatch`` (real size
accounting, real "batch full" ``ValueError``) and the events the SDK's ``EventData``; one test
uses the real ``EventHubProducerClient`` against a namespace that does not answer.
"""

from __future__ import annotations

import base64
import logging
import time

import bytewax.operators as op
import pytest
from azure.eventhub import EventHubProducerClient
from bytewax.dataflow import Dataflow
from bytewax.testing import TestingSink, TestingSource, run_main
from confluent_kafka.admin import AdminClient

from edgewatch.azure.connection_string import EventHubsConnectionString, eventhubs_bootstrap, eventhubs_kafka_config
from edgewatch.azure.eventhubs import EventHubsSender, EventHubsSink, to_event_data
from edgewatch.azure.messages import labeled_envelope
from edgewatch.config import KafkaSettings
from edgewatch.connectors.broker import free_port
from edgewatch.connectors.kafka import KafkaBatchSource, KafkaSink, OutRecord, ensure_topics
from edgewatch.schema import labeled_event_json
from edgewatch.store_forward import BufferPolicy, Envelope, StoreAndForward
from tests.support.eventhubs import KEY, FakeProducer
from tests.support.events import labeled_event, run_sink

NAMESPACE = "Endpoint=sb://factory-7.servicebus.windows.net/;SharedAccessKeyName=RootManageSharedAccessKey;"


# -- (a) the Kafka endpoint ------------------------------------------------------------------------


def test_settings_from_one_connection_string():
    cs = NAMESPACE + f"SharedAccessKey={KEY}"
    config = eventhubs_kafka_config(cs)
    assert config == {
        "bootstrap.servers": "factory-7.servicebus.windows.net:9093",
        "security.protocol": "SASL_SSL",
        "sasl.mechanism": "PLAIN",
        "sasl.username": "$ConnectionString",
        "sasl.password": cs,
        "socket.keepalive.enable": "true",
        "metadata.max.age.ms": "180000",
        "connections.max.idle.ms": "180000",
    }
    # the settings users already have (KafkaSettings + --bootstrap) agree on the security part
    existing = KafkaSettings(bootstrap=eventhubs_bootstrap(cs), eventhubs_connection_string=cs).client_config()
    assert {k: config[k] for k in existing} == existing
    hub = EventHubsConnectionString.parse(
        "endpoint=sb://ns.servicebus.windows.net/;sharedaccesskeyname=r;sharedaccesskey=k;entitypath=labeled"
    )
    assert (hub.kafka_bootstrap, hub.entity_path) == ("ns.servicebus.windows.net:9093", "labeled")
    assert (
        eventhubs_bootstrap("Endpoint=sb://127.0.0.1:39093/;SharedAccessKeyName=r;SharedAccessKey=k")
        == "127.0.0.1:39093"
    )
    assert eventhubs_kafka_config(cs, ssl_ca_location="/ca.pem", bootstrap="h:1")["bootstrap.servers"] == "h:1"
    for bad in (
        "",
        "Endpoint=https://x/;SharedAccessKeyName=r;SharedAccessKey=k",
        "Endpoint=sb://x/;SharedAccessKeyName=r",
    ):
        with pytest.raises(ValueError):
            eventhubs_kafka_config(bad)


def test_produce_and_consume_through_the_eventhubs_endpoint(eventhubs_kafka, topic_names):
    """ensure_topics, KafkaSink and KafkaBatchSource with the connection string's settings."""
    config = eventhubs_kafka_config(eventhubs_kafka.connection_string, ssl_ca_location=str(eventhubs_kafka.ca))
    topic = topic_names("eh-labeled")
    ensure_topics(config, [topic], partitions=2)
    records = [
        OutRecord(topic, f"pump-{n % 3}".encode(), f'{{"n":{n}}}'.encode(), [("sequenceNumber", str(n).encode())])
        for n in range(30)
    ]
    produce = Dataflow("eh-produce")
    op.output(
        "out",
        op.input("in", produce, TestingSource([records[:10], records[10:]])),
        KafkaSink(config, lambda record: record),
    )
    run_main(produce)

    # read back with the settings edgewatch builds today from KafkaSettings (same security part)
    settings = KafkaSettings(
        bootstrap=eventhubs_bootstrap(eventhubs_kafka.connection_string),
        eventhubs_connection_string=eventhubs_kafka.connection_string,
        ssl_ca_location=str(eventhubs_kafka.ca),
    )
    metadata = AdminClient(config).list_topics(topic, timeout=15).topics[topic].partitions
    assert len(metadata) == 2
    ends = {}
    for partition in metadata:
        from confluent_kafka import Consumer, TopicPartition

        probe = Consumer({**config, "group.id": "probe"})
        ends[(topic, partition)] = probe.get_watermark_offsets(TopicPartition(topic, partition), timeout=15)[1]
        probe.close()
    got: list = []
    consume = Dataflow("eh-consume")
    source = KafkaBatchSource(settings.client_config(), [topic], stop_offsets=ends)
    op.output("collect", op.input("in", consume, source), TestingSink(got))
    run_main(consume)
    messages = [message for batch in got for message in batch]
    assert sorted((m.key, m.value, m.headers) for m in messages) == sorted((r.key, r.value, r.headers) for r in records)
    for key in {r.key for r in records}:  # a key lands in one partition, in order
        mine = [int(m.value[5:-1]) for m in messages if m.key == key]
        assert mine == sorted(mine)


def test_the_endpoint_checks_the_key_and_the_certificate(eventhubs_kafka):
    """The same settings with a wrong key, or without the CA, do not get in: the test broker really
    authenticates like Event Hubs and really verifies TLS."""
    cs = eventhubs_kafka.connection_string
    wrong_key = cs.replace(KEY, base64.b64encode(b"not the key").decode())
    for config, reason in (
        (eventhubs_kafka_config(wrong_key, ssl_ca_location=str(eventhubs_kafka.ca)), "Authentication failed"),
        (eventhubs_kafka_config(cs), "certificate verify failed"),
    ):
        errors: list[str] = []
        admin = AdminClient({**config, "error_cb": lambda error, errors=errors: errors.append(str(error))})
        with pytest.raises(Exception):  # noqa: B017 (librdkafka reports a timeout; error_cb says why)
            admin.list_topics(timeout=3)
        admin.poll(1)  # serve error_cb
        assert any(reason in error for error in errors), errors


# -- (b) the AMQP sink, at the SDK boundary ---------------------------------------------------------


def sent_offsets(producers: list[FakeProducer]) -> list[tuple[str, int]]:
    return [
        (key, int(event.message_id.rsplit(":", 1)[1]))
        for producer in producers
        for key, events in producer.sent
        for event in events
    ]


def test_event_data_carries_the_envelope():
    event = labeled_event(12, "pump-3", anomaly=True)
    data = to_event_data(labeled_envelope(event))
    assert data.body_as_str() == labeled_event_json(event).decode()
    assert data.content_type == "application/json"
    assert data.message_id == "telemetry:0:12"
    assert data.properties == {"anomaly": "true", "deviceId": "pump-3", "model": "robust-zscore"}


def test_one_batch_per_device_in_order(tmp_path):
    producer = FakeProducer()
    with StoreAndForward(tmp_path / "b.sqlite3", "eh-order") as buffer:
        buffer.put(labeled_envelope(labeled_event(n, f"pump-{n % 3}")) for n in range(12))
        EventHubsSender(lambda: producer).deliver(buffer.peek(100), buffer)
        assert len(buffer) == 0
    assert [key for key, _ in producer.sent] == ["pump-0", "pump-1", "pump-2"]
    for key, events in producer.sent:
        assert [int(e.message_id.rsplit(":", 1)[1]) for e in events] == [n for n in range(12) if f"pump-{n % 3}" == key]


def test_a_full_batch_is_sent_and_a_new_one_started(tmp_path):
    one = len(labeled_event_json(labeled_event(10, "pump-0")))
    producer = FakeProducer(max_size_in_bytes=3 * one + 200)  # room for two or three events, not ten
    with StoreAndForward(tmp_path / "b.sqlite3", "eh-full") as buffer:
        buffer.put(labeled_envelope(labeled_event(n, "pump-0")) for n in range(10, 20))
        EventHubsSender(lambda: producer).deliver(buffer.peek(100), buffer)
        assert len(buffer) == 0
    sizes = [len(events) for _, events in producer.sent]
    assert len(sizes) >= 4 and all(1 <= size <= 3 for size in sizes), sizes
    assert sent_offsets([producer]) == [("pump-0", n) for n in range(10, 20)]


def test_an_event_too_large_for_any_batch_is_dropped_and_logged(tmp_path, caplog):
    producer = FakeProducer(max_size_in_bytes=1200)
    big = Envelope("pump-0", b"x" * 5000, {"anomaly": "true"}, "telemetry:0:1")
    small = [labeled_envelope(labeled_event(n, "pump-0")) for n in (0, 2)]
    with StoreAndForward(tmp_path / "b.sqlite3", "eh-big") as buffer, caplog.at_level(logging.WARNING):
        buffer.put([small[0], big, small[1]])
        EventHubsSender(lambda: producer).deliver(buffer.peek(100), buffer)
        assert len(buffer) == 0
    assert sent_offsets([producer]) == [("pump-0", 0), ("pump-0", 2)]
    assert any("dropped 1 message(s): larger than an Event Hubs batch" in r.getMessage() for r in caplog.records)


CS = NAMESPACE + f"SharedAccessKey={KEY};EntityPath=labeled"


def test_unreachable_namespace_buffers_then_drains_in_order(tmp_path, caplog):
    producer = FakeProducer(failures=5)
    events = [labeled_event(n, f"pump-{n % 4}", anomaly=n % 2 == 0) for n in range(40)]
    policy = BufferPolicy(retry_max_seconds=0.2, drain_seconds=30)
    with caplog.at_level(logging.INFO, logger="edgewatch"):
        run_sink(
            EventHubsSink(tmp_path, CS, policy=policy, producer_factory=lambda: producer), [events[:20], events[20:]]
        )
    sent = sent_offsets([producer])
    assert sorted(n for _, n in sent) == list(range(40))
    for device in {f"pump-{n}" for n in range(4)}:
        mine = [n for key, n in sent if key == device]
        assert mine == sorted(mine) and all(f"pump-{n % 4}" == device for n in mine)
    messages = [r.getMessage() for r in caplog.records]
    assert any("link down (ConnectError" in m for m in messages) and any("link back after" in m for m in messages)


def test_a_stalled_send_replaces_the_producer(tmp_path):
    producers = [FakeProducer(stall_first_send=True), FakeProducer()]
    factory = iter(producers).__next__
    policy = BufferPolicy(retry_max_seconds=0.2, drain_seconds=30)
    sink = EventHubsSink(tmp_path, CS, send="anomalies", send_timeout=0.5, policy=policy, producer_factory=factory)
    started = time.monotonic()
    run_sink(sink, [[labeled_event(n, "pump-0", anomaly=n != 3) for n in range(6)]])
    assert time.monotonic() - started < 30
    assert producers[0].closed, "the stalled producer is closed"
    assert sent_offsets(producers) == [("pump-0", n) for n in (0, 1, 2, 4, 5)]


def test_the_real_client_against_a_silent_namespace_loses_nothing(tmp_path, caplog):
    """EventHubProducerClient itself, pointed at a port where nothing listens: every event stays in
    the buffer file for the next run."""
    port = free_port()
    cs = f"Endpoint=sb://127.0.0.1:{port}/;SharedAccessKeyName=send;SharedAccessKey={KEY};EntityPath=labeled"

    def producer() -> EventHubProducerClient:
        return EventHubProducerClient.from_connection_string(
            cs, retry_total=0, custom_endpoint_address=f"sb://127.0.0.1:{port}"
        )

    policy = BufferPolicy(retry_max_seconds=0.5, drain_seconds=2.0)
    with caplog.at_level(logging.WARNING, logger="edgewatch"):
        run_sink(
            EventHubsSink(tmp_path, cs, policy=policy, producer_factory=producer),
            [[labeled_event(n, "pump-1") for n in range(7)]],
        )
    with StoreAndForward(tmp_path / "eventhubs.sqlite3", "check") as buffer:
        assert [s.envelope.message_id for s in buffer.peek(100)] == [f"telemetry:0:{n}" for n in range(7)]
    assert any("link down (ConnectError" in r.getMessage() for r in caplog.records)


def test_a_wrong_password_is_named_as_such(eventhubs_kafka):
    """Not librdkafka's "Broker transport failure": the credentials were refused."""
    from edgewatch.connectors.kafka import KafkaUnavailable, cluster_metadata

    wrong = eventhubs_kafka.connection_string.replace("SharedAccessKey=", "SharedAccessKey=x")
    config = eventhubs_kafka_config(wrong, ssl_ca_location=str(eventhubs_kafka.ca))
    with pytest.raises(KafkaUnavailable, match="refused the credentials"):
        cluster_metadata(config, timeout=10)
