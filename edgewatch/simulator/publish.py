"""Send a simulated fleet to a JSONL file or IoT Hub (Kafka: :func:`edgewatch.connectors.kafka.publish`;
pacing: :func:`edgewatch.connectors.files.paced`), and tally its ground truth."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import orjson

from edgewatch.connectors.kafka import PublishStats
from edgewatch.simulator.fleet import MALFORMED, SimRecord


@dataclass
class FaultTally:
    """The ground truth of what a simulated fleet sent: messages inside fault episodes, and
    deliberately malformed payloads (the records carry their label in ``fault``)."""

    fault_messages: int = 0
    malformed: int = 0

    def count(self, record: SimRecord) -> None:
        if record.fault == MALFORMED:
            self.malformed += 1
        elif record.fault:
            self.fault_messages += 1


def write_jsonl(records: Iterable[SimRecord], path: Path, on_record: Callable | None = None) -> PublishStats:
    """Record the stream: one JSON object per line with key, value, headers and timestamp."""
    stats = PublishStats()
    started = time.monotonic()
    with open(path, "wb") as out:
        for record in records:
            out.write(orjson.dumps(record.to_json()) + b"\n")
            stats.messages += 1
            if on_record is not None:
                on_record(record)
    stats.seconds = time.monotonic() - started
    return stats


def publish_iothub(
    records: Iterable[SimRecord],
    connection_string: str | None,
    output: str = "temperatureOutput",
    ca_cert: Path | None = None,
    on_record: Callable | None = None,
) -> PublishStats:
    """Send the records as Azure's SimulatedTemperatureSensor module does: its JSON body, content
    type ``application/json`` and encoding ``utf-8``, properties ``sequenceNumber`` and
    ``batchId`` (plus the ground truth and, for a fleet behind one identity, ``deviceId``).

    With a device (or module) connection string it is a device sending telemetry; without
    one, inside IoT Edge, the module itself, on ``output``."""
    from azure.iot.device import Message

    from edgewatch.azure.iothub import IoTHubTarget

    target = IoTHubTarget(connection_string, output, ca_cert)
    client = target.create_client()
    stats = PublishStats()
    started = time.monotonic()
    try:
        client.connect()
        for record in records:
            message = Message(record.value, content_encoding="utf-8", content_type="application/json")
            message.custom_properties.update({name: value.decode() for name, value in record.headers})
            message.custom_properties["deviceId"] = record.key.decode()
            if target.mode == "device":
                client.send_message(message)
            else:
                client.send_message_to_output(message, output)
            stats.messages += 1
            if on_record is not None:
                on_record(record)
    finally:
        client.shutdown()
    stats.seconds = time.monotonic() - started
    return stats
