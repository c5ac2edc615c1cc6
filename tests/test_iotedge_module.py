"""edgewatch as an IoT Edge module (``edgewatch iotedge``) against a real MQTT broker, with the real SDK.

The broker is the IoT Hub tests' amqtt with TLS on 127.0.0.1:8883 and its recording plugin, plus
what edgeHub does for a module twin (``twin-broker`` in :mod:`tests.support.mqtt_broker`): it
answers twin requests and turns a test's control message into a desired-properties patch. The
module runs as a subprocess whose identity comes from the fake IoT Edge workload API; the test
publishes to its input topic what edgeHub routes from SimulatedTemperatureSensor,
``devices/{device}/modules/{module}/inputs/telemetry/<properties>``, and reads what the module
publishes on its outputs from the broker's record.
"""

from __future__ import annotations

import json
import math
import os
import random
import signal
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import quote, unquote, urlencode

import pytest
from azure.iot.device import IoTHubModuleClient, Message
from bytewax.testing import run_main

from edgewatch.azure.edgehub import EdgeHubInput, EdgeHubSource, raw_message
from edgewatch.azure.messages import LabeledEventSink, dead_letter_envelope
from edgewatch.azure.module import build_module_flow
from edgewatch.azure.twin import TwinControls
from edgewatch.config import FlowSettings
from edgewatch.flows.anomaly import LiveControls
from edgewatch.online_models import artifact
from edgewatch.online_models.registry import resolve_detector
from edgewatch.schema import DeadLetter, RawMessage, Reading, parse_message
from tests.support.iothub import (
    EDGE_DEVICE,
    KEY,
    MODULE,
    FakeWorkloadApi,
    MqttBroker,
    MqttClient,
    skip_unless_broker_port_is_free,
)
from tests.support.mqtt_broker import REPORTED_TOPIC, TWIN_CONTROL_TOPIC
from tests.support.processes import EdgewatchProcess

SENSOR = "SimulatedTemperatureSensor"
SENSOR_ID = f"{EDGE_DEVICE}/{SENSOR}"
MODULE_CLIENT = f"{EDGE_DEVICE}/{MODULE}"
INPUT_TOPIC = f"devices/{EDGE_DEVICE}/modules/{MODULE}/inputs"
EVENTS_TOPIC = f"devices/{EDGE_DEVICE}/modules/{MODULE}/messages/events/"


# -- the broker with the twin service ------------------------------------------------------------


class TwinBroker(MqttBroker):
    """The test MQTT broker, started with the twin service and an initial twin."""

    def __init__(self, pki, workdir: Path, desired: dict):
        super().__init__(pki, workdir)
        self.twin_file = workdir / "twin.json"
        self.twin_file.write_text(json.dumps({"desired": {**desired, "$version": 1}, "reported": {"$version": 1}}))

    def broker_args(self) -> list[str]:
        return ["twin-broker", self.pki.cert, self.pki.key, self.record, self.twin_file]

    def subscribed(self, client_id: str, topic: str) -> bool:
        return any(r["client_id"] == client_id and r["topic"] == topic for r in self.records("subscribe"))

    def reported(self) -> list[dict]:
        """Every reported-properties patch the module sent, in order."""
        return [
            json.loads(p["payload"]) for p in self.publishes(MODULE_CLIENT) if p["topic"].startswith(REPORTED_TOPIC)
        ]

    def outputs(self, output: str) -> list[Output]:
        """What the module sent on a module output, in order."""
        found = []
        for publish in self.publishes(MODULE_CLIENT):
            if publish["topic"].startswith(EVENTS_TOPIC):
                properties = dict(
                    tuple(unquote(part) for part in pair.split("=", 1))
                    for pair in publish["topic"][len(EVENTS_TOPIC) :].split("&")
                )
                if properties.get("$.on") == output:
                    found.append(Output(properties, publish["payload"]))
        return found


@dataclass(frozen=True)
class Output:
    properties: dict[str, str]
    payload: str

    @property
    def body(self) -> dict:
        return json.loads(self.payload)

    @property
    def offset(self) -> int:
        return int(self.properties["$.mid"].rsplit(":", 1)[1])


def wait_until(condition, timeout: float, what: str):
    """Poll ``condition()`` until it returns something truthy; fail after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while not (result := condition()):
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(0.05)
    return result


# -- what edgeHub routes to the module ------------------------------------------------------------


class EdgeHubStub(MqttClient):
    """An MQTT client that publishes what edgeHub would: routed input messages and twin changes."""

    def __init__(self, ca: Path):
        super().__init__(ca, "test-edgehub")
        self._sequence = 0

    def route(self, body: bytes, properties: dict[str, str] | None = None, input_name: str = "telemetry") -> None:
        """One message to the module's input, with the system properties edgeHub stamps on a message
        from SimulatedTemperatureSensor (unless ``properties`` replaces them)."""
        self._sequence += 1
        if properties is None:
            properties = {
                "$.cdid": EDGE_DEVICE,
                "$.cmid": SENSOR,
                "$.ct": "application/json",
                "$.ce": "utf-8",
                "sequenceNumber": str(self._sequence),
                "batchId": "b-1",
            }
        topic = f"{INPUT_TOPIC}/{input_name}/{urlencode(list(properties.items()), quote_via=quote)}"
        self._client.publish(topic, body, qos=1).wait_for_publish(5)

    def patch_desired(self, patch: dict) -> None:
        self._client.publish(TWIN_CONTROL_TOPIC, json.dumps(patch), qos=1).wait_for_publish(5)


def sensor_body(n: int, temperature: float = 21.0) -> bytes:
    """A SimulatedTemperatureSensor message body."""
    created = datetime(2026, 11, 23, 1, 0, tzinfo=UTC) + timedelta(seconds=n)
    body = {
        "machine": {"temperature": temperature + 0.01 * n, "pressure": 1.02},
        "ambient": {"temperature": 20.8, "humidity": 25},
        "timeCreated": created.strftime("%Y-%m-%dT%H:%M:%S.%f0Z"),
    }
    return json.dumps(body).encode()


def train_model(model_dir: Path, drift: float = 0.0) -> str:
    """A warm-start artifact for the sensor in ``model_dir``; returns its version."""
    readings = []
    for n in range(48):
        raw = RawMessage(SENSOR_ID.encode(), b"{}", [], "history", 0, n)
        features = {"machine.temperature": 21.0 + drift + 0.05 * (n % 5), "machine.pressure": 1.02}
        features |= {"ambient.temperature": 20.8, "ambient.humidity": 25.0}
        readings.append(Reading(SENSOR_ID, 1_795_000_000.0 + n, features, raw))
    return artifact.save(artifact.train(resolve_detector("compact-novelty"), readings), model_dir).version


# -- unit tests: no broker ------------------------------------------------------------------------


def sdk_message(body: bytes, properties: dict[str, str], input_name: str = "telemetry") -> Message:
    """A message as azure-iot-device hands it to ``on_message_received`` (system properties it does
    not know, such as ``$.cdid``, land among the custom properties)."""
    message = Message(body, content_type="application/json", content_encoding="utf-8")
    message.custom_properties.update(properties)
    message.input_name = input_name
    return message


def test_an_input_message_becomes_a_raw_message_from_its_sender():
    properties = {"$.cdid": EDGE_DEVICE, "$.cmid": SENSOR, "$.ctime": "2026-11-23T01:05:00.1234567Z"}
    message = sdk_message(sensor_body(0), properties | {"sequenceNumber": "7"})
    raw = raw_message(message, "telemetry", 42, 1_000)
    assert (raw.key, raw.value, raw.topic, raw.partition, raw.offset) == (
        SENSOR_ID.encode(),
        sensor_body(0),
        "telemetry",
        0,
        42,
    )
    assert raw.headers == [
        ("sequenceNumber", b"7"),
        ("content-type", b"application/json"),
        ("content-encoding", b"utf-8"),
    ]
    assert raw.timestamp_ms == int(datetime(2026, 11, 23, 1, 5, 0, 123456, tzinfo=UTC).timestamp() * 1000)
    assert parse_message(raw).device_id == SENSOR_ID
    # a device (not a module) is named alone; without a creation time, the receive time counts
    device_message = raw_message(sdk_message(sensor_body(0), {"$.cdid": "pump-3"}), "telemetry", 43, 1_000)
    assert (device_message.key, device_message.timestamp_ms) == (b"pump-3", 1_000)


def test_a_body_that_names_its_device_wins_over_the_sender():
    body = b'{"deviceId": "pump-7", "values": {"rpm": 1450}}'
    received_ms = 1_795_395_900_000  # 2026-11-23: a plausible receive time (the body has no time of its own)
    raw = raw_message(sdk_message(body, {"$.cdid": EDGE_DEVICE, "$.cmid": SENSOR}), "telemetry", 1, received_ms)
    assert raw.key is None
    assert parse_message(raw).device_id == "pump-7"


def test_a_full_queue_makes_the_handler_wait_then_hands_the_message_back():
    rejected = []
    queue = EdgeHubInput("telemetry", capacity=2, wait_seconds=10.0, on_reject=lambda *args: rejected.append(args))
    for n in range(2):
        queue.handle(sdk_message(sensor_body(n), {"$.cdid": "d"}))
    # the third waits for room: the flow takes a batch 0.2 s later and it gets in
    taken: list[RawMessage] = []
    threading.Timer(0.2, lambda: taken.extend(queue.take(10, 1.0))).start()
    started = time.monotonic()
    queue.handle(sdk_message(sensor_body(2), {"$.cdid": "d"}))
    assert time.monotonic() - started > 0.15
    assert len(taken) == 2 and len(queue) == 1 and rejected == []
    # now nobody takes: after wait_seconds the message goes to on_reject with the reason
    queue.wait_seconds = 0.2
    queue.handle(sdk_message(sensor_body(3), {"$.cdid": "d"}))
    queue.handle(sdk_message(sensor_body(4), {"$.cdid": "d"}))
    (raw, reason, why), *_ = rejected
    assert (reason, raw.value) == ("queue-full", sensor_body(4)) and "stayed full" in why
    offsets = [r.offset for r in taken] + [r.offset for r in queue.take(10, 0)] + [raw.offset]
    assert offsets == list(range(offsets[0], offsets[0] + 5)), "one sequence over queued and rejected messages"
    # other inputs are refused at once; after close, the queue drains and then reports finished
    queue.handle(sdk_message(b"{}", {}, input_name="other"))
    assert rejected[-1][1] == "unknown-input"
    queue.close()
    queue.handle(sdk_message(sensor_body(5), {"$.cdid": "d"}))
    assert rejected[-1][1] == "stopping" and queue.finished


def test_the_source_is_one_partition_that_ends_when_the_input_is_closed_and_drained():
    queue = EdgeHubInput("telemetry")
    source = EdgeHubSource(queue, batch_size=2, poll_seconds=0.01)
    assert source.list_parts() == ["edgehub-telemetry"]
    partition = source.build_part("in", "edgehub-telemetry", None)
    for n in range(3):
        queue.handle(sdk_message(sensor_body(n), {"$.cdid": "d"}))
    assert [len(batch) for batch in partition.next_batch()] == [2]
    assert partition.next_batch() != [] and partition.next_batch() == []
    queue.close()
    with pytest.raises(StopIteration):
        partition.next_batch()
    assert partition.snapshot() is None


def test_a_dead_letter_becomes_an_output_message():
    raw = RawMessage(SENSOR_ID.encode(), b"\xff not json", [("sequenceNumber", b"3")], "telemetry", 0, 17)
    envelope = dead_letter_envelope(DeadLetter(raw, "not JSON"))
    assert envelope.body == b"\xff not json" and envelope.message_id == "telemetry:0:17"
    assert envelope.properties["deviceId"] == SENSOR_ID and envelope.properties["edgewatch.error.reason"] == "not JSON"
    assert envelope.properties["sequenceNumber"] == "3" and envelope.properties["edgewatch.error.stage"] == "parse"


class RecordingModuleClient(IoTHubModuleClient):
    """A module client that records what the module sends on each output (no connection)."""

    def __init__(self):  # the SDK's needs a pipeline; nothing here is sent anywhere
        self.sent: list[tuple[str, Message]] = []

    def send_message_to_output(self, message, output_name):
        self.sent.append((output_name, message))

    def on_output(self, output: str) -> list[Output]:
        sent = [m for name, m in list(self.sent) if name == output]
        return [Output(m.custom_properties | {"$.mid": m.message_id}, m.data.decode()) for m in sent]


def test_alarms_and_drift_events_leave_on_their_module_outputs(tmp_path):
    """An alarm raised and cleared, and an operator's acceptance through the twin's control (an
    alarm cleared and a drift event, reason operator) go out on the outputs ``alarms`` and ``drift``."""
    client, queue, controls = RecordingModuleClient(), EdgeHubInput("telemetry"), LiveControls()
    module = f"HostName=127.0.0.1;DeviceId={EDGE_DEVICE};ModuleId={MODULE};SharedAccessKey={KEY}"
    settings = FlowSettings(buffer_dir=tmp_path, batch_size=100, iothub_connection_string=module)
    flow, _ = build_module_flow(settings, client, queue, controls)

    noise = random.Random(3)

    def reading(device: str, n: int, temperature: float, pressure: float) -> Message:
        values = {"temp": temperature + noise.gauss(0, 0.3), "pressure": pressure + noise.gauss(0, 0.01)}
        body = {"deviceId": device, "timestamp": 1_795_000_000 + n, "values": values}
        return sdk_message(json.dumps(body).encode(), {"$.cdid": EDGE_DEVICE})

    def feed() -> None:
        for n in range(600):  # pump-1: a 10-reading spike; pump-2: its pressure leaves its relation for good
            queue.handle(reading("pump-1", n, 120.0 if 500 <= n < 510 else 50.0, 5.0))
            queue.handle(reading("pump-2", n, 50.0, 9.0 if n >= 500 else 5.0))
        wait_until(lambda: ("pump-2", "alarm-raised") in alarms_sent(), 30, "pump-2's alarm")
        controls.accept("pump-2")
        for n in range(600, 610):
            queue.handle(reading("pump-2", n, 50.0, 9.0))
        queue.close()

    def alarms_sent() -> list[tuple[str, str]]:
        return [(a.properties["deviceId"], a.properties["event"]) for a in client.on_output("alarms")]

    feeder = threading.Thread(target=feed)
    feeder.start()
    run_main(flow)
    feeder.join(30)
    wait_until(lambda: alarms_sent()[-1:] == [("pump-2", "alarm-cleared")], 30, "the operator's clearing")
    alarms = client.on_output("alarms")
    for device in ("pump-1", "pump-2"):  # each alarm raised once, then cleared once (a cold start has its own)
        kinds = [a.body["event"] for a in alarms if a.body["device_id"] == device]
        assert kinds and kinds == ["raised", "cleared"] * (len(kinds) // 2), (device, kinds)
    spike = [a.body for a in alarms if a.body["device_id"] == "pump-1"][-2:]
    assert spike[0]["features"]["temp"] > 100 and spike[1]["end"] is not None and spike[1]["peak_score"] > 0.9
    accepted = alarms[-1]
    assert accepted.body["source"] is None and accepted.properties["deviceId"] == "pump-2"
    (drift,) = wait_until(lambda: client.on_output("drift"), 10, "the drift event")
    assert drift.body["reason"] == drift.properties["reason"] == "operator" and drift.body["device_id"] == "pump-2"
    assert set(drift.body["level_before"]) == {"pressure", "temp"}
    raised = [a for a in alarms if a.body["event"] == "raised"]
    assert all(a.properties["$.mid"].startswith("telemetry:0:") for a in raised), "ids name the input reading"


@pytest.fixture
def twin_controls(tmp_path):
    """TwinControls over a model directory, with the flow's controls and a real sink."""
    version = train_model(tmp_path / "model")
    settings = FlowSettings(model_dir=tmp_path / "model", iothub_send="anomalies")
    controls = LiveControls()
    sink = LabeledEventSink("test", tmp_path, lambda: None)
    return TwinControls(settings, controls, sink), controls, sink, version


def test_desired_properties_change_the_flow_and_bad_values_are_reported(twin_controls, tmp_path):
    twin, controls, sink, version = twin_controls
    assert (twin.threshold, controls.threshold, twin.model_version) == (0.3426, 0.3426, version)

    reported = twin.apply({"threshold": 0.9, "sendMode": "all", "modelVersion": version, "$version": 2}, True)
    assert reported == {
        "threshold": 0.9,
        "sendMode": "all",
        "modelVersion": version,
        "detector": "compact-novelty",
        "status": "ok",
        "error": None,
        "desiredVersion": 2,
        "accepted": None,
        "modelUri": str(tmp_path / "model"),
        "shadowVersion": None,
        "promotedShadow": None,
    }
    assert (controls.threshold, sink.send, controls.generation) == (0.9, "all", 0), "same model: no restart"

    for bad in ("high", 1.5, -0.1, True, float("nan"), [0.5]):
        reported = twin.apply({"threshold": bad}, False)
        assert reported["status"] == "error" and reported["error"].startswith("threshold: must"), bad
        assert controls.threshold == 0.9, f"{bad!r} must not change the threshold"
    reported = twin.apply({"sendMode": "some", "$version": 4}, False)
    assert "sendMode: must be one of anomalies, all" in reported["error"] and sink.send == "all"
    assert "threshold" in reported["error"], "errors stay until the property is set right"

    assert twin.apply({"sendMode": "all", "$version": 3}, False) is None, "an older patch is ignored"
    assert twin.apply({"sendMode": "all", "$version": 3}, True) is None, "and so is an older whole twin"
    reported = twin.apply({"threshold": None, "sendMode": None, "$version": 5}, False)
    assert (reported["status"], reported["threshold"], reported["sendMode"]) == ("ok", 0.3426, "anomalies")
    assert math.isclose(controls.threshold, 0.3426)


def test_an_operator_accepts_a_device_once_per_request(twin_controls):
    """``accept`` is state in the twin, a command to the flow: each higher request number accepts once,
    also across a full resync and a restart (the reported ``accepted`` seeds what was applied)."""
    twin, controls, _sink, _version = twin_controls
    reported = twin.apply({"accept": {"pump-1": 1}, "$version": 2}, False)
    assert reported["accepted"] == {"pump-1": 1} and controls.accepted_since(0) == (1, ["pump-1"])
    twin.apply({"accept": {"pump-1": 1}, "$version": 3}, True)  # a resync: the same request again
    assert controls.accepted_since(0)[1] == ["pump-1"]
    twin.apply({"accept": {"pump-1": 2, "pump-2": 1}, "$version": 4}, False)
    assert controls.accepted_since(1) == (3, ["pump-1", "pump-2"])
    assert twin.apply({"accept": ["pump-1"], "$version": 5}, False)["error"].startswith("accept: must be")
    restarted = TwinControls(twin._settings, LiveControls(), None)
    restarted.remember_accepted({"accepted": {"pump-1": 2, "pump-2": 1}})
    restarted.apply({"accept": {"pump-1": 2, "pump-2": 1}, "$version": 4}, True)
    assert restarted._controls.accepted == [], "nothing applied twice after a restart"


def test_a_model_version_rolls_out_only_when_the_model_directory_holds_it(twin_controls, tmp_path):
    twin, controls, _sink, version = twin_controls
    reported = twin.apply({"modelVersion": "compact-novelty-nope", "$version": 2}, False)
    assert reported["modelVersion"] == version and controls.generation == 0
    assert f"holds {version!r}" in reported["error"] and "deploy that model first" in reported["error"]

    new_version = train_model(tmp_path / "model", drift=5.0)
    assert new_version != version
    reported = twin.apply({"modelVersion": new_version, "$version": 3}, False)
    assert (reported["status"], reported["modelVersion"]) == ("ok", new_version)
    assert controls.generation == 1 and controls.artifact.version == new_version

    (tmp_path / "model" / "arrays.npz").write_bytes(b"tampered")
    reported = twin.apply({"modelVersion": "compact-novelty-other", "$version": 4}, False)
    assert "does not match its sha256" in reported["error"] and controls.generation == 1


# -- the module against the broker ----------------------------------------------------------------


@pytest.fixture
def model_dir(tmp_path) -> tuple[Path, str]:
    return tmp_path / "model", train_model(tmp_path / "model")


@pytest.fixture
def broker(pki, tmp_path, model_dir):
    skip_unless_broker_port_is_free()
    desired = {"threshold": 1.0, "sendMode": "all", "modelVersion": model_dir[1]}
    with TwinBroker(pki, tmp_path, desired) as twin_broker:
        yield twin_broker


@pytest.fixture
def edgehub(broker, pki):
    with EdgeHubStub(pki.ca) as stub:
        yield stub


@pytest.fixture
def module(broker, pki, tmp_path, model_dir):
    """``edgewatch iotedge``, the module process, with its identity from the fake workload API."""
    with FakeWorkloadApi(pki.ca.read_text(), KEY) as workload:
        environment = {
            **os.environ,
            **workload.environment(),
            "EDGEWATCH_MODEL_DIR": str(model_dir[0]),
            "EDGEWATCH_BUFFER_DIR": str(tmp_path / "buffer"),
            "EDGEWATCH_RECOVERY_DIR": str(tmp_path / "recovery"),
            "EDGEWATCH_SHARDS": "2",
            "EDGEWATCH_SNAPSHOT_SECONDS": "1",
        }
        process = EdgewatchProcess(["iotedge"], tmp_path / "module.log", env=environment).start()
        try:
            yield process
        finally:
            process.kill()


def test_the_module_labels_edgehub_input_and_follows_its_twin(broker, edgehub, module, model_dir):
    """SimulatedTemperatureSensor messages in on 'telemetry', labeled events out on 'labeled' and
    dead letters on 'deadletter'; the twin's threshold, sendMode and modelVersion apply live, bad
    values are refused and reported; SIGTERM drains and stops the module."""
    model_path, first_version = model_dir

    def reported_with(**expected):
        def matching():
            assert module.poll() is None, module.tail()
            return [r for r in broker.reported() if all(r.get(k) == v for k, v in expected.items())]

        return wait_until(matching, 30, f"reported properties {expected}\n{module.tail()}")[-1]

    def labeled_after(count: int, seen: int) -> list[Output]:
        wait_until(lambda: len(broker.outputs("labeled")) >= seen + count, 20, f"{count} labeled events")
        time.sleep(0.3)  # nothing more should come
        found = broker.outputs("labeled")
        assert len(found) == seen + count
        return found[seen:]

    # start: the whole twin is read and what is in effect reported before any input is read
    first = reported_with(desiredVersion=1)
    assert first == {
        "threshold": 1.0,
        "sendMode": "all",
        "modelVersion": first_version,
        "detector": "compact-novelty",
        "status": "ok",
        "error": None,
        "desiredVersion": 1,
        "accepted": None,
        "modelUri": str(model_path),
        "shadowVersion": None,
        "promotedShadow": None,
    }
    wait_until(lambda: broker.subscribed(MODULE_CLIENT, f"{INPUT_TOPIC}/#"), 20, "the input subscription")

    # threshold 1.0: nothing is anomalous; sendMode all: every event leaves on 'labeled'
    for n in range(4):
        edgehub.route(sensor_body(n))
    edgehub.route(b'{"deviceId": "pump-7", "values": {"rpm": 1450}}')
    edgehub.route(b"not json {", {"$.cdid": EDGE_DEVICE, "$.cmid": SENSOR, "sequenceNumber": "99"})
    # (the SDK runs the input handler on a pool of threads, so a burst may be sequenced in another
    # order than it was sent; the flow keeps each device's order, not a global one)
    events = labeled_after(5, 0)
    assert [e.properties["anomaly"] for e in events] == ["false"] * 5
    by_device = {device: [e for e in events if e.properties["deviceId"] == device] for device in (SENSOR_ID, "pump-7")}
    assert [len(found) for found in by_device.values()] == [4, 1], "the body's deviceId names the device"
    sensor_events = by_device[SENSOR_ID]
    assert [e.offset for e in sensor_events] == sorted(e.offset for e in sensor_events), "a device's order is kept"
    assert sorted(e.body["features"]["machine.temperature"] for e in sensor_events) == [21.0, 21.01, 21.02, 21.03]
    (sensor_event,) = [e for e in sensor_events if e.body["features"]["machine.temperature"] == 21.0]
    assert sensor_event.properties["$.ct"] == "application/json" and sensor_event.properties["$.ce"] == "utf-8"
    assert sensor_event.properties["model"] == "compact-novelty"
    assert sensor_event.properties["$.mid"] == f"telemetry:0:{sensor_event.offset}"
    assert sensor_event.body["device_id"] == SENSOR_ID
    assert sensor_event.body["timestamp"] == "2026-11-23T01:00:00Z"
    assert sensor_event.body["model"]["version"] == first_version
    assert sensor_event.body["source"] == {"topic": "telemetry", "partition": 0, "offset": sensor_event.offset}
    (dead,) = wait_until(lambda: broker.outputs("deadletter"), 20, "the dead letter")
    assert dead.payload == "not json {" and dead.properties["sequenceNumber"] == "99"
    assert dead.properties["edgewatch.error.stage"] == "parse"
    assert dead.properties["edgewatch.error.reason"].startswith("not JSON")
    offsets = sorted([e.offset for e in events] + [dead.offset])
    assert offsets == list(range(offsets[0], offsets[0] + 6)), "each message one offset, in one sequence"
    seen = 5

    # a message on an input edgewatch does not read goes back to edgeHub on 'deadletter' at once
    edgehub.route(sensor_body(0), {"$.cdid": EDGE_DEVICE, "$.cmid": "other-module"}, input_name="other")
    _, returned = wait_until(lambda: broker.outputs("deadletter")[1:] and broker.outputs("deadletter"), 20, "it")
    assert returned.payload == sensor_body(0).decode() and returned.properties["edgewatch.error.stage"] == "input"
    assert returned.properties["edgewatch.error.reason"].startswith("input 'other' is not read by edgewatch")
    assert returned.properties["deviceId"] == f"{EDGE_DEVICE}/other-module"

    # threshold 0.0, live: every event is an anomaly
    edgehub.patch_desired({"threshold": 0.0})
    reported_with(desiredVersion=2, threshold=0.0, status="ok")
    for n in range(4, 7):
        edgehub.route(sensor_body(n))
    assert [e.properties["anomaly"] for e in labeled_after(3, seen)] == ["true"] * 3
    seen += 3

    # sendMode anomalies with threshold 1.0: labeled, but nothing sent; back to 0.0: sent again
    edgehub.patch_desired({"sendMode": "anomalies", "threshold": 1.0})
    reported_with(desiredVersion=3, sendMode="anomalies", threshold=1.0)
    for n in range(7, 10):
        edgehub.route(sensor_body(n))
    time.sleep(1.0)
    assert len(broker.outputs("labeled")) == seen, "normal events stay home in anomalies mode"
    last_offset = max(e.offset for e in broker.outputs("labeled"))
    edgehub.patch_desired({"threshold": 0.0})
    reported_with(desiredVersion=4, threshold=0.0)
    for n in range(10, 12):
        edgehub.route(sensor_body(n))
    sent = labeled_after(2, seen)
    assert sorted(e.offset for e in sent) == [last_offset + 4, last_offset + 5], "the three normal ones were labeled"
    seen += 2

    # bad values: refused, reported, and what was in effect stays
    edgehub.patch_desired({"threshold": "high"})
    refused = reported_with(desiredVersion=5, status="error")
    assert refused["threshold"] == 0.0 and refused["error"].startswith("threshold: must be a number in [0, 1]")
    edgehub.patch_desired({"modelVersion": "compact-novelty-unknown"})
    refused = reported_with(desiredVersion=6, status="error")
    assert "threshold: " in refused["error"] and "modelVersion: 'compact-novelty-unknown' asked for" in refused["error"]
    assert refused["modelVersion"] == first_version
    edgehub.route(sensor_body(12))
    assert [e.properties["anomaly"] for e in labeled_after(1, seen)] == ["true"]
    seen += 1

    # a new model in the model directory, then its version in the twin: every device restarts from it
    second_version = train_model(model_path, drift=3.0)
    edgehub.patch_desired({"modelVersion": second_version, "threshold": 1.0, "sendMode": "all"})
    rolled = reported_with(desiredVersion=7, status="ok")
    assert (rolled["modelVersion"], rolled["threshold"], rolled["error"]) == (second_version, 1.0, None)
    edgehub.route(sensor_body(13))
    (event,) = labeled_after(1, seen)
    assert event.body["model"]["version"] == second_version and event.properties["anomaly"] == "false"

    # SIGTERM: the input is closed, what was taken is labeled, the module ends cleanly
    module.send_signal(signal.SIGTERM)
    assert module.wait(30) == 0, module.tail()
    assert "input closed" in module.output()
