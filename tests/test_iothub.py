"""The IoT Hub sink against a real MQTT broker, with the real azure-iot-device SDK.

The set-up (:mod:`tests.support.iothub`): amqtt with TLS on 127.0.0.1:8883, a CA made in the test,
anonymous access, and a plugin recording every PUBLISH and CONNECT, so what the SDK put on the
wire is checked exactly, across broker restarts; an MQTT subscriber on ``#`` checks what consumers
see. Module mode runs ``IoTHubModuleClient.create_from_edge_environment()`` for real against the
fake IoT Edge workload API. The restart test runs the sink in :mod:`tests.support.iothub_flow`.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import re
import time
from collections import Counter
from urllib.parse import quote, unquote

import pytest

from edgewatch.azure.iothub import IoTHubSender, IoTHubSink, IoTHubTarget
from edgewatch.azure.messages import labeled_envelope
from edgewatch.schema import LabeledEvent, labeled_event_json
from edgewatch.store_forward import BufferPolicy, Forwarder, StoreAndForward
from tests.support.events import labeled_event, run_sink
from tests.support.iothub import (
    DEVICE_CONNECTION_STRING,
    EDGE_DEVICE,
    GATEWAY_DEVICE,
    GENERATION,
    HUB,
    KEY,
    MODULE,
    FakeWorkloadApi,
    device_of,
)
from tests.support.processes import PythonProcess


def expected_topic(base: str, event: LabeledEvent, output: str | None = None) -> str:
    """The topic azure-iot-device builds: system properties first, then custom ones sorted."""
    on = f"%24.on={output}&" if output else ""
    offset, device = event.reading.raw.offset, event.reading.device_id
    anomaly = "true" if event.is_anomaly else "false"
    return (
        f"{base}/messages/events/{on}%24.mid=telemetry%3A0%3A{offset}&%24.ct=application%2Fjson&%24.ce=utf-8"
        f"&anomaly={anomaly}&deviceId={device}&model=robust-zscore"
    )


def offsets_in(publishes: list[dict]) -> list[int]:
    """Source offsets, in arrival order, from the ``$.mid`` in each published topic."""
    return [int(unquote(re.search(r"%24\.mid=([^&]+)", p["topic"]).group(1)).rsplit(":", 1)[1]) for p in publishes]


def check_sas(connect: dict, resource: str) -> None:
    """The password is a SAS token for ``resource`` signed with KEY (by the SDK or the workload API)."""
    match = re.fullmatch(r"SharedAccessSignature sr=([^&]+)&sig=([^&]+)&se=(\d+)", connect["password"])
    assert match, connect["password"]
    sr, sig, expiry = match.groups()
    assert sr == quote(resource, safe="")
    expected = hmac.new(base64.b64decode(KEY), f"{sr}\n{expiry}".encode(), hashlib.sha256).digest()
    assert unquote(sig) == base64.b64encode(expected).decode()


FAST = BufferPolicy(retry_max_seconds=1.0, drain_seconds=30.0)


# -- tests ----------------------------------------------------------------------------------------


def test_module_mode_from_the_edge_environment(mqtt_broker, mqtt_subscriber, pki, tmp_path, monkeypatch):
    """create_from_edge_environment → workload API → SAS token; anomalies leave on output 'labeled'."""
    events = [labeled_event(offset, device_of(offset), anomaly=offset % 3 == 0) for offset in range(12)]
    with FakeWorkloadApi(pki.ca.read_text(), KEY) as workload:
        for name, value in workload.environment().items():
            monkeypatch.setenv(name, value)
        sink = IoTHubSink(tmp_path / "buffer", output="labeled", send="anomalies", policy=FAST)
        assert sink.target.mode == "edge-module"
        run_sink(sink, [events[:5], events[5:]])
        requests = [(method, path) for method, path, _ in workload.requests]
    anomalies = [event for event in events if event.is_anomaly]
    received = mqtt_subscriber.wait_for(len(anomalies))
    base = f"devices/{EDGE_DEVICE}/modules/{MODULE}"
    assert [topic for topic, _ in received] == [expected_topic(base, event, "labeled") for event in anomalies]
    assert [payload for _, payload in received] == [labeled_event_json(event) for event in anomalies]
    assert [p["qos"] for p in mqtt_broker.publishes()] == [1] * len(anomalies)
    # the identity came from the edge runtime: trust bundle, then the module key signs the token
    assert requests[:2] == [("GET", "/trust-bundle"), ("POST", f"/modules/{MODULE}/genid/{GENERATION}/sign")]
    (connect,) = mqtt_broker.records("connect")[1:]  # [0] is the subscriber
    assert connect["client_id"] == f"{EDGE_DEVICE}/{MODULE}"
    assert connect["username"].startswith(f"{HUB}/{EDGE_DEVICE}/{MODULE}/?api-version=")
    check_sas(connect, f"{HUB}/devices/{EDGE_DEVICE}/modules/{MODULE}")
    with StoreAndForward(tmp_path / "buffer" / "iothub.sqlite3", "check") as buffer:
        assert len(buffer) == 0


def test_device_mode_through_a_transparent_gateway(mqtt_broker, mqtt_subscriber, pki, tmp_path):
    """A device connection string with GatewayHostName and the gateway's CA; every event is sent."""
    events = [labeled_event(offset, device_of(offset), anomaly=offset == 4) for offset in range(8)]
    sink = IoTHubSink(tmp_path, DEVICE_CONNECTION_STRING, send="all", ca_cert=pki.ca, policy=FAST)
    assert sink.target.mode == "device"
    run_sink(sink, [events])
    received = mqtt_subscriber.wait_for(len(events))
    assert [topic for topic, _ in received] == [expected_topic(f"devices/{GATEWAY_DEVICE}", e) for e in events]
    assert [payload for _, payload in received] == [labeled_event_json(event) for event in events]
    (connect,) = mqtt_broker.records("connect")[1:]
    assert connect["client_id"] == GATEWAY_DEVICE
    assert connect["username"].startswith(f"{HUB}/{GATEWAY_DEVICE}/?api-version=")
    check_sas(connect, f"{HUB}/devices/{GATEWAY_DEVICE}")


def test_simulator_sends_as_the_simulated_temperature_sensor_module_does(mqtt_broker, mqtt_subscriber, pki):
    """`edgewatch simulate --iothub-connection-string`: the module's body, content type and encoding,
    sequenceNumber/batchId properties (plus the ground truth and the machine as deviceId)."""
    from urllib.parse import quote

    from edgewatch.simulator import Fleet
    from edgewatch.simulator.publish import publish_iothub

    records = list(Fleet(devices=2, seed=1, fault_rate=0.0, start_time=1_767_225_600.0).records(4))
    stats = publish_iothub(records, DEVICE_CONNECTION_STRING, ca_cert=pki.ca)
    assert stats.messages == 4
    received = mqtt_subscriber.wait_for(4)
    expected = []
    for record in records:
        properties = {**{name: value.decode() for name, value in record.headers}, "deviceId": record.key.decode()}
        custom = "&".join(
            f"{quote(name, safe='')}={quote(value, safe='')}" for name, value in sorted(properties.items())
        )
        expected.append(f"devices/{GATEWAY_DEVICE}/messages/events/%24.ct=application%2Fjson&%24.ce=utf-8&{custom}")
    assert [topic for topic, _ in received] == expected
    assert [payload for _, payload in received] == [record.value for record in records]
    assert b'"timeCreated":"2026-01-01T00:00:00.000000Z"' in received[0][1]


def test_an_untrusted_broker_gets_nothing(mqtt_broker, mqtt_subscriber, tmp_path):
    """Without the gateway's CA the TLS check fails: nothing is published, everything stays buffered."""
    events = [labeled_event(offset, device_of(offset), anomaly=True) for offset in range(3)]
    policy = BufferPolicy(retry_max_seconds=0.5, drain_seconds=3.0)
    run_sink(IoTHubSink(tmp_path, DEVICE_CONNECTION_STRING, send="all", policy=policy), [events])
    assert mqtt_subscriber.wait_for(1, timeout=1.0) == []
    assert mqtt_broker.publishes() == []
    with StoreAndForward(tmp_path / "iothub.sqlite3", "check") as buffer:
        assert [s.envelope.message_id for s in buffer.peek(10)] == [f"telemetry:0:{n}" for n in range(3)]


def test_a_stalled_broker_does_not_wedge_the_sender(mqtt_broker, pki, tmp_path, caplog):
    """SIGSTOP the broker mid-stream: the SDK would wait for the PUBACK forever; the send timeout
    replaces the client, and everything arrives once the broker runs again.

    Duplicates are possible here, and only here: the replaced client had already written the
    PUBLISH into the stalled broker's socket (and its MQTT layer may have re-sent it, DUP-flagged,
    on a reconnect the stopped broker's kernel accepted); the broker processes them when it resumes.
    Only the one message each replaced client had in flight can repeat. Copies carry the same
    message id, so a consumer drops them; order is checked on first arrivals.
    """
    target = IoTHubTarget(DEVICE_CONNECTION_STRING, ca_cert=pki.ca)
    sender = IoTHubSender(target, send_timeout=1.5)
    buffer = StoreAndForward(tmp_path / "stall.sqlite3", "stall")
    forwarder = Forwarder(buffer, sender, retry_max_seconds=0.5).start()
    events = [labeled_envelope(labeled_event(n, device_of(n), anomaly=True)) for n in range(60)]
    try:
        with caplog.at_level(logging.INFO, logger="edgewatch"):
            for n, envelope in enumerate(events):
                buffer.put([envelope])
                if n == 20:
                    mqtt_broker.wait_for_publishes(15, timeout=10)
                    mqtt_broker.pause()
                    stalled_at = time.monotonic()
                if n == 40:
                    time.sleep(max(0.0, stalled_at + 5.0 - time.monotonic()))
                    mqtt_broker.resume()
                time.sleep(0.05)
            assert forwarder.stop(drain_seconds=60) is True
    finally:
        mqtt_broker.resume()
        buffer.close()
    publishes = mqtt_broker.wait_for_publishes(len(events), timeout=10, client_id=GATEWAY_DEVICE)
    arrived = offsets_in(publishes)
    first_arrivals = list(dict.fromkeys(arrived))
    assert sorted(first_arrivals) == list(range(60)), "every event arrives"
    for device in {device_of(n) for n in range(60)}:
        mine = [n for n in first_arrivals if device_of(n) == device]
        assert mine == sorted(mine), f"{device} out of order: {mine}"
    replaced = sum("replacing the client after SendTimeout" in r.getMessage() for r in caplog.records)
    assert replaced >= 1, "the stall should have hit the send timeout"
    duplicates = {n: c for n, c in Counter(arrived).items() if c > 1}
    assert len(duplicates) <= replaced, (duplicates, replaced)


@pytest.mark.parametrize("outage", [pytest.param(5, id="5s"), pytest.param(60, id="60s", marks=pytest.mark.faults)])
def test_broker_down_and_edgewatch_restarted_meanwhile(mqtt_broker, pki, tmp_path, outage):
    """The issue's scenario: the broker stops mid-stream (for a minute under ``make faults``, 5 s in
    ``make test``); edgewatch is killed and started again while it is down, and the broker comes back
    only once the restarted edgewatch has found the link down. Every event arrives exactly once, in
    order per device."""
    buffer_dir = tmp_path / "buffer"

    def flow_process(start: int, count: int, drain: float, log_name: str) -> PythonProcess:
        args = ["--buffer-dir", buffer_dir, "--ca", pki.ca, "--start", start, "--count", count, "--drain", drain]
        return PythonProcess("tests.support.iothub_flow", args, tmp_path / log_name).start()

    first = flow_process(0, 10**9, 0, "flow-1.log")  # streams until killed
    second = None
    try:
        assert len(mqtt_broker.wait_for_publishes(40, timeout=60)) >= 40, "edgewatch never reached the broker"
        mqtt_broker.stop()
        down_at = time.monotonic()
        time.sleep(1.5)  # the stream goes on into the buffer (30 events)
        first.kill()  # edgewatch dies while the broker is down
        delivered = offsets_in(mqtt_broker.publishes(GATEWAY_DEVICE))
        with StoreAndForward(buffer_dir / "iothub.sqlite3", "inspect") as buffer:
            waiting = [int(s.envelope.message_id.rsplit(":", 1)[1]) for s in buffer.peek(10**6)]
        assert waiting, "events labeled during the outage should wait in the buffer"
        assert sorted(delivered + waiting) == list(range(max(waiting) + 1)), "nothing lost at the crash"

        resume_from = max(waiting) + 1
        # 20 ev/s for outage + 3 s from 1.5 s into the outage: still streaming when the broker comes back
        count = 20 * (outage + 3)
        second = flow_process(resume_from, count, 120, "flow-2.log")
        second.wait_for_output("link down", timeout=60)  # the restarted edgewatch met the outage
        time.sleep(max(0.0, down_at + outage - time.monotonic()))
        mqtt_broker.start()
        assert second.wait(150) == 0, second.tail()
    finally:
        for process in (first, second):
            if process is not None:
                process.kill()

    publishes = mqtt_broker.publishes(GATEWAY_DEVICE)
    arrived = offsets_in(publishes)
    last = resume_from + count - 1
    duplicates = {n: c for n, c in Counter(arrived).items() if c > 1}
    assert not duplicates, f"duplicates: {duplicates}"
    assert sorted(arrived) == list(range(last + 1)), "every event arrives"
    for device in {device_of(n) for n in range(4)}:
        mine = [n for n in arrived if device_of(n) == device]
        assert mine == sorted(mine), f"{device} out of order"
    second_log = second.output()
    assert "from an earlier run wait in" in second_log
    assert "link back after" in second_log
