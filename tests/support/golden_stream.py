"""A fixed telemetry stream that exercises every output of the anomaly flow, and the flow run on it.

The stream is made here (not by :mod:`edgewatch.simulator`, which changes with the product) from
one seeded generator: machines in the SimulatedTemperatureSensor shape (a spike, a broken
temperature/pressure relation, a stuck sensor, a fast load ramp along the relation, a fault that
lasts past ``accept_after``), generic devices with one and two features (their keys in either
order, device id in the body, no Kafka key), and malformed messages; batches of varied sizes.
:func:`flow_outputs` runs the real flow on it in this process and returns every record it wrote:
Kafka records as the sinks produce them (a recording producer stands in for librdkafka) and the
replay path's JSONL files.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import ClassVar

import numpy as np
import orjson
from bytewax.testing import TestingSource, run_main

from edgewatch.config import FlowSettings
from edgewatch.flows.anomaly import build_flow
from edgewatch.flows.wiring import sibling, to_files, to_kafka
from edgewatch.schema import RawMessage, format_timestamp

START = 1_767_225_600.0  # 2026-01-01T00:00:00Z
TICK_SECONDS = 10.0
TICKS = 700
MACHINES = 8
BATCH_SIZES = (1, 13, 250, 2000, 5, 600, 97)
PARTITIONS = 3
MALFORMED = (b"not json", b'{"values": {"x": NaN}}', b'{"machine": {"temperature": "hot"}}', b"", b"[1, 2]")


def golden_messages(seed: int = 11) -> list[RawMessage]:
    """The stream, in arrival order (partition and offset as a 3-partition topic would give them)."""
    rng = np.random.default_rng(seed)
    temp = rng.uniform(40.0, 90.0, MACHINES)
    slope = rng.uniform(0.05, 0.12, MACHINES)
    setpoint = temp.copy()
    bodies: list[tuple[bytes | None, bytes, list[tuple[str, bytes]]]] = []
    for tick in range(TICKS):
        now = START + tick * TICK_SECONDS
        stamp = format_timestamp(now + 0.1234567 * (tick % 3))  # with and without a fraction
        if 350 <= tick < 390:
            setpoint[5] += 2.0  # a fast load ramp: temperature and pressure climb together (along the relation)
            temp[5] += 2.0
        temp += 0.5 * (setpoint + 3.0 * math.sin(tick / 30.0) - temp) + rng.normal(0.0, 0.2, MACHINES)
        for m in range(MACHINES):
            t = float(temp[m])
            pressure = 1.0 + float(slope[m]) * t + float(rng.normal(0.0, 0.01))
            if m == 1 and 300 <= tick < 303:
                t += 25.0  # spike
            if m == 2 and 400 <= tick < 460:
                pressure += 1.5  # the relation breaks, both sensors in their ranges
            if m == 3 and 350 <= tick < 390:
                t = 55.5  # stuck
            if m == 4 and tick >= 250:
                t += 30.0  # lasts longer than accept_after: accepted on timeout
            body = {
                "machine": {"temperature": t, "pressure": pressure},
                "ambient": {"temperature": 20.0 + math.sin(tick / 50.0), "humidity": int(rng.integers(20, 30))},
                "timeCreated": stamp,
            }
            headers = [("sequenceNumber", str(tick).encode()), ("edgewatch.error.reason", b"spoofed")][: 1 + (m == 6)]
            bodies.append((f"machine-{m:04d}".encode(), orjson.dumps(body), headers))
        rpm = 1450.0 + 10.0 * math.sin(tick / 20.0) + float(rng.normal(0.0, 1.0)) + (300.0 if 500 <= tick < 520 else 0)
        generic = {"deviceId": "pump-1", "timestamp": now, "values": {"rpm": rpm}}
        bodies.append((None, orjson.dumps(generic), []))
        a = 5.0 + math.sin(tick / 30.0) + float(rng.normal(0.0, 0.05))
        values = {"b": 2.0 * a + float(rng.normal(0.0, 0.05)), "a": a} if tick % 2 else {"a": a, "b": 2.0 * a}
        bodies.append((b"pair-1", orjson.dumps({"timestamp": now, "values": values}), []))
        if tick % 97 == 0:
            bodies.append((b"machine-0007", MALFORMED[(tick // 97) % len(MALFORMED)], []))
    offsets = [0] * PARTITIONS
    messages = []
    for index, (key, value, headers) in enumerate(bodies):
        partition = index % PARTITIONS
        timestamp_ms = round((START + (index // (MACHINES + 2)) * TICK_SECONDS) * 1000)
        messages.append(RawMessage(key, value, headers, "telemetry", partition, offsets[partition], timestamp_ms))
        offsets[partition] += 1
    return messages


def golden_batches(messages: list[RawMessage]) -> list[list[RawMessage]]:
    batches, start, turn = [], 0, 0
    while start < len(messages):
        size = BATCH_SIZES[turn % len(BATCH_SIZES)]
        batches.append(messages[start : start + size])
        start, turn = start + size, turn + 1
    return batches


class RecordingProducer:
    """Stands in for confluent_kafka.Producer in the flow's Kafka sinks: keeps what is produced."""

    produced: ClassVar[list[tuple[str, bytes | None, bytes | None, list]]] = []

    def __init__(self, config: dict):
        self.config = config

    def produce(self, topic, value=None, key=None, headers=None, on_delivery=None, **_options) -> None:
        RecordingProducer.produced.append((topic, key, value, list(headers or [])))

    def poll(self, _timeout: float = 0.0) -> int:
        return 0

    def flush(self, _timeout: float = 0.0) -> int:
        return 0

    def __len__(self) -> int:
        return 0


def flow_outputs(monkeypatch, directory: Path, seed: int = 11) -> dict[str, list[bytes]]:
    """Run the anomaly flow on the golden stream; every record of every output, in order.

    Kafka topics as ``kafka:<topic>`` (each record: key, value and headers in one JSON line) and
    the replay files as ``file:<name>`` (their lines)."""
    import edgewatch.connectors.kafka as kafka

    monkeypatch.setattr(kafka, "Producer", RecordingProducer)
    monkeypatch.setattr(RecordingProducer, "produced", [])
    settings = FlowSettings(_env_file=None, bootstrap="127.0.0.1:1", model_dir=None, recovery_dir=None)
    flow, streams = build_flow(settings, TestingSource(golden_batches(golden_messages(seed))))
    to_kafka(streams, settings)
    labeled_path = directory / "labeled.jsonl"
    to_files(streams, labeled_path)
    run_main(flow)
    outputs: dict[str, list[bytes]] = {}
    for topic, key, value, headers in RecordingProducer.produced:
        record = {"key": key.decode() if key is not None else None, "value": (value or b"").decode(),
                  "headers": [[name, bytes(v).decode("utf-8", "replace")] for name, v in headers]}  # fmt: skip
        outputs.setdefault(f"kafka:{topic}", []).append(orjson.dumps(record))
    for kind in ("labeled", "deadletter", "alarms", "drift"):
        path = labeled_path if kind == "labeled" else sibling(labeled_path, kind)
        outputs[f"file:{kind}"] = path.read_bytes().splitlines() if path.exists() else []
    return outputs
