"""Azure connection strings: ``Key=value;Key=value`` (IoT Hub devices/modules, Event Hubs namespaces)."""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlsplit


def parse_connection_string(connection_string: str, *, what: str = "connection string") -> dict[str, str]:
    """The fields of a connection string (values may contain ``=``, as base64 keys do).

    >>> parse_connection_string("HostName=h.azure-devices.net;DeviceId=d1;SharedAccessKey=YWJj=")["SharedAccessKey"]
    'YWJj='
    >>> parse_connection_string("HostName", what="IoT Hub connection string")
    Traceback (most recent call last):
    ValueError: IoT Hub connection string part 'HostName' is not Key=value
    """
    fields = {}
    for part in connection_string.strip().split(";"):
        if part.strip():
            key, sep, value = part.partition("=")
            if not sep:
                raise ValueError(f"{what} part {key.strip()!r} is not Key=value")
            fields[key.strip()] = value.strip()
    return fields


#: Event Hubs serves the Kafka protocol on this port of the namespace host.
KAFKA_PORT = 9093

#: librdkafka settings Microsoft recommends for Event Hubs: the service closes idle
#: connections after 240 s, so refresh metadata and recycle connections before that.
RECOMMENDED_KAFKA_SETTINGS = {
    "socket.keepalive.enable": "true",
    "metadata.max.age.ms": "180000",
    "connections.max.idle.ms": "180000",
}


@dataclass(frozen=True)
class EventHubsConnectionString:
    """The parts of an Event Hubs connection string edgewatch uses.

    ``Endpoint=sb://<namespace>.servicebus.windows.net/;SharedAccessKeyName=<rule>;
    SharedAccessKey=<key>[;EntityPath=<event hub>]`` (keys are case-insensitive, as in the SDK).
    An explicit port in the endpoint (``sb://host:port/``) is kept: private endpoints behind a
    port forward, and tests.
    """

    raw: str
    host: str
    port: int | None
    entity_path: str | None

    @classmethod
    def parse(cls, connection_string: str) -> EventHubsConnectionString:
        """
        >>> cs = EventHubsConnectionString.parse(
        ...     "Endpoint=sb://factory.servicebus.windows.net/;SharedAccessKeyName=send;SharedAccessKey=a2V5;EntityPath=t"
        ... )
        >>> cs.kafka_bootstrap, cs.entity_path
        ('factory.servicebus.windows.net:9093', 't')
        """
        # keys are case-insensitive, as in the SDK
        fields = {
            key.lower(): value
            for key, value in parse_connection_string(connection_string, what="Event Hubs connection string").items()
        }
        endpoint = urlsplit(fields.get("endpoint", ""))
        if endpoint.scheme != "sb" or not endpoint.hostname:
            raise ValueError("Event Hubs connection string needs Endpoint=sb://<namespace>.servicebus.windows.net/")
        has_key = fields.get("sharedaccesskeyname") and fields.get("sharedaccesskey")
        if not has_key and not fields.get("sharedaccesssignature"):
            raise ValueError(
                "Event Hubs connection string needs SharedAccessKeyName and SharedAccessKey (or SharedAccessSignature)"
            )
        return cls(connection_string.strip(), endpoint.hostname, endpoint.port, fields.get("entitypath") or None)

    @property
    def kafka_bootstrap(self) -> str:
        """``host:9093`` (or the endpoint's explicit port)."""
        return f"{self.host}:{self.port or KAFKA_PORT}"


def eventhubs_bootstrap(connection_string: str) -> str:
    """The Kafka bootstrap server of the namespace in a connection string."""
    return EventHubsConnectionString.parse(connection_string).kafka_bootstrap


def eventhubs_kafka_config(
    connection_string: str, ssl_ca_location: str | None = None, bootstrap: str | None = None
) -> dict[str, str]:
    """librdkafka settings for Event Hubs' Kafka endpoint, for consumers, producers and admin clients.

    Args:
        connection_string: namespace (or event hub) connection string.
        ssl_ca_location: PEM file of CAs to trust instead of the system store (tests, proxies).
        bootstrap: override the bootstrap derived from the endpoint.

    >>> config = eventhubs_kafka_config("Endpoint=sb://f.servicebus.windows.net/;SharedAccessKeyName=r;SharedAccessKey=k")
    >>> config["bootstrap.servers"], config["security.protocol"], config["sasl.username"]
    ('f.servicebus.windows.net:9093', 'SASL_SSL', '$ConnectionString')
    """
    parsed = EventHubsConnectionString.parse(connection_string)
    config = {
        "bootstrap.servers": bootstrap or parsed.kafka_bootstrap,
        "security.protocol": "SASL_SSL",
        "sasl.mechanism": "PLAIN",
        "sasl.username": "$ConnectionString",
        "sasl.password": parsed.raw,
        **RECOMMENDED_KAFKA_SETTINGS,
    }
    if ssl_ca_location:
        config["ssl.ca.location"] = ssl_ca_location
    return config
