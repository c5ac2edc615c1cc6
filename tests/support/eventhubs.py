"""Event Hubs for the tests, both connectors.

The Kafka endpoint: an Event Hubs-like listener, ``SASL_SSL://127.0.0.1:<port>``, mechanism PLAIN,
the only user ``$ConnectionString`` whose password is the connection string, TLS from a PKCS12
keystore signed by the test CA — the way Event Hubs' Kafka endpoint authenticates. The session's
Apache Kafka broker carries this listener next to its plaintext one (one JVM to start, not two);
with another broker kind the fixture starts an Apache Kafka of its own for it.

The AMQP sink: a stand-in for ``EventHubProducerClient`` with the SDK's own batches (real size
accounting, real "batch full" ``ValueError``) and events, the sends recorded.
"""

from __future__ import annotations

import base64
import threading
from dataclasses import dataclass
from pathlib import Path

import pytest
from azure.eventhub import EventData, EventDataBatch
from azure.eventhub.exceptions import ConnectError

from edgewatch.connectors.broker import free_port

KEY = base64.b64encode(b"event hubs test key 0123456789ab").decode()


@dataclass(frozen=True)
class EventHubsLikeKafka:
    connection_string: str
    ca: Path


@dataclass(frozen=True)
class EventHubsListener:
    """What a broker needs for the endpoint: ``server.properties`` lines and a listener entry."""

    endpoint: EventHubsLikeKafka
    properties: dict[str, str]
    listeners: list[str]


def eventhubs_listener(workdir: Path, pki) -> EventHubsListener:
    """The SASL_SSL listener's settings on a free port, its keystore written to ``workdir``."""
    workdir.mkdir(parents=True, exist_ok=True)
    keystore, password = workdir / "broker.p12", "keystore-secret"
    write_pkcs12(pki.key, pki.cert, pki.ca, keystore, password)
    port = free_port()
    cs = f"Endpoint=sb://127.0.0.1:{port}/;SharedAccessKeyName=RootManageSharedAccessKey;SharedAccessKey={KEY}"
    listener = "listener.name.sasl_ssl."
    properties = {
        "sasl.enabled.mechanisms": "PLAIN",
        # JAAS: user_<name>="<password>"; '$' is a word character for Kafka's JAAS parser, and the
        # connection string has no '"' or '\', so it needs no escaping in the JAAS or .properties syntax
        f"{listener}plain.sasl.jaas.config": (
            f'org.apache.kafka.common.security.plain.PlainLoginModule required user_$ConnectionString="{cs}";'
        ),
        f"{listener}ssl.keystore.type": "PKCS12",
        f"{listener}ssl.keystore.location": str(keystore),
        f"{listener}ssl.keystore.password": password,
        f"{listener}ssl.key.password": password,
    }
    return EventHubsListener(EventHubsLikeKafka(cs, pki.ca), properties, [f"SASL_SSL://127.0.0.1:{port}"])


def write_pkcs12(key_pem: Path, cert_pem: Path, ca_pem: Path, out: Path, password: str) -> None:
    """A PKCS12 keystore (key, certificate, CA chain) the JDK can read."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.serialization import pkcs12

    key = serialization.load_pem_private_key(key_pem.read_bytes(), None)
    data = pkcs12.serialize_key_and_certificates(
        b"localhost",
        key,
        x509.load_pem_x509_certificate(cert_pem.read_bytes()),
        [x509.load_pem_x509_certificate(ca_pem.read_bytes())],
        serialization.BestAvailableEncryption(password.encode()),
    )
    out.write_bytes(data)


@pytest.fixture(scope="session")
def eventhubs_kafka(request, broker_kind, tmp_path_factory, pki) -> EventHubsLikeKafka:
    """The Event Hubs-like endpoint: the session broker's (Apache Kafka), else a broker of its own."""
    if broker_kind == "kafka":
        request.getfixturevalue("kafka_bootstrap")  # the session's broker, running with the listener
        yield request.getfixturevalue("kafka_eventhubs_listener").endpoint
        return
    from tests.kafka.apache_kafka import ApacheKafka

    workdir = tmp_path_factory.mktemp("eventhubs-kafka")
    endpoint = eventhubs_listener(workdir, pki)
    with ApacheKafka(workdir / "kafka", endpoint.properties, endpoint.listeners):
        yield endpoint.endpoint


# -- the AMQP sink's producer ------------------------------------------------------------------------


class RecordingBatch(EventDataBatch):
    """The SDK's batch, also remembering what was added (EventDataBatch keeps that private)."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.events: list[EventData] = []

    def add(self, event_data) -> None:
        super().add(event_data)  # raises ValueError when full, before we record
        self.events.append(event_data)


class FakeProducer:
    """Stands in for EventHubProducerClient: real batches, sends recorded, failures on demand."""

    def __init__(self, max_size_in_bytes: int = 1_048_576, failures: int = 0, stall_first_send: bool = False):
        self.max_size_in_bytes = max_size_in_bytes
        self.failures = failures
        self.stall_first_send = stall_first_send
        self.sent: list[tuple[str, list[EventData]]] = []
        self.closed = False
        self._release = threading.Event()

    def create_batch(self, *, partition_key: str | None = None) -> RecordingBatch:
        if self.failures:
            self.failures -= 1
            raise ConnectError("namespace unreachable")
        return RecordingBatch(max_size_in_bytes=self.max_size_in_bytes, partition_key=partition_key)

    def send_batch(self, batch: RecordingBatch, *, timeout: float | None = None) -> None:
        if self.stall_first_send:
            self.stall_first_send = False
            self._release.wait(60)  # a send the SDK never finishes
            raise ConnectError("too late")
        self.sent.append((batch._partition_key, list(batch.events)))

    def close(self) -> None:
        self.closed = True
        self._release.set()
