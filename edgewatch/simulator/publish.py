"""Pace a simulated fleet, or record it to a JSONL file (Kafka: :func:`edgewatch.connectors.kafka.publish`)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from pathlib import Path

import orjson

from edgewatch.connectors.kafka import PublishStats
from edgewatch.simulator.fleet import SimRecord


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


def publish_iothub(
    records: Iterable[SimRecord],
    connection_string: str | None,
    output: str = "temperatureOutput",
    ca_cert: Path | None = None,
) -> PublishStats:
    """Send the records as Azure's SimulatedTemperatureSensor module does: its JSON body, content
    type ``application/json`` and encoding ``utf-8``, properties ``sequenceNumber`` and
    ``batchId`` (plus the ground truth and, for a fleet behind one identity, ``deviceId``).

    With a device (or module) connection string it is a device sending telemetry; without
    one, inside IoT Edge, the module itself, on ``output``."""
    from azure.iot.device import Message

    from edgewatch.connectors.iothub import IoTHubTarget

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
            stats.count(record)
    finally:
        client.shutdown()
    stats.seconds = time.monotonic() - started
    return stats
