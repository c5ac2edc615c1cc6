"""The IoT Hub sink against a real MQTT broker, with the real azure-iot-device SDK.

The broker is amqtt with TLS on 127.0.0.1:8883 (the SDK always connects to 8883), a server
certificate for localhost/127.0.0.1 signed by a CA made in the test, and anonymous access (it
takes the SDK's SAS-token username/password as they are). A broker plugin records every PUBLISH
it receives and every CONNECT to a JSON-lines file, so what the SDK put on the wire is checked
exactly, across broker restarts; an MQTT subscriber on ``#`` checks what consumers see.

Module mode runs ``IoTHubModuleClient.create_from_edge_environment()`` for real: the ``IOTEDGE_*``
variables point at a fake IoT Edge workload API on a Unix socket (trust bundle + HMAC signing,
as the edge runtime serves them), so the module's identity, SAS token and CA come from the edge
environment exactly as in a deployment.

Run as a script, this module is the broker (``broker``) or an edgewatch flow process (``flow``)
for the restart test.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import datetime
import hashlib
import hmac
import http.server
import ipaddress
import json
import logging
import re
import signal
import socket
import socketserver
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs, quote, unquote, urlsplit

import bytewax.operators as op
import pytest
from amqtt.plugins.base import BasePlugin
from bytewax.dataflow import Dataflow
from bytewax.inputs import DynamicSource, StatelessSourcePartition
from bytewax.testing import TestingSource, run_main

from edgewatch.azure.iothub import IoTHubSender, IoTHubSink, IoTHubTarget
from edgewatch.azure.messages import labeled_envelope
from edgewatch.connectors.broker import _die_with_parent
from edgewatch.schema import LabeledEvent, RawMessage, Reading, labeled_event_json
from edgewatch.store_forward import BufferPolicy, Forwarder, StoreAndForward

REPO = Path(__file__).resolve().parents[1]
BROKER_PORT = 8883  # fixed by azure-iot-device: MQTT over TLS always goes to 8883
HUB = "test-hub.azure-devices.net"
EDGE_DEVICE, MODULE, GENERATION = "edge-gw-1", "edgewatch", "gen-7"
GATEWAY_DEVICE = "pump-gw-1"
KEY = base64.b64encode(b"edgewatch test key, 32 bytes ok").decode()
DEVICE_CONNECTION_STRING = f"HostName={HUB};DeviceId={GATEWAY_DEVICE};SharedAccessKey={KEY};GatewayHostName=localhost"


# -- a test PKI ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Pki:
    """A CA and a server certificate for localhost and 127.0.0.1, as PEM files."""

    ca: Path
    cert: Path
    key: Path


def make_test_pki(folder: Path) -> Pki:
    """Generate the CA and the server certificate (ECDSA P-256, valid for a day)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    folder.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "edgewatch test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
        )  # keyCertSign, cRLSign
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    pki = Pki(folder / "ca.pem", folder / "server.pem", folder / "server.key")
    pki.ca.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    pki.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    pki.key.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return pki


# -- the MQTT broker ------------------------------------------------------------------------------


class PublishRecorder(BasePlugin):
    """amqtt plugin: appends every CONNECT and every received PUBLISH to a JSON-lines file."""

    @dataclass
    class Config:
        path: str = ""

    def _append(self, record: dict) -> None:
        with open(self.config.path, "a") as out:
            out.write(json.dumps({"time": time.time(), **record}) + "\n")

    async def on_broker_client_connected(self, *, client_id, client_session) -> None:
        self._append(
            {
                "event": "connect",
                "client_id": client_id,
                "username": client_session.username,
                "password": client_session.password,
                "clean_session": client_session.clean_session,
            }
        )

    async def on_broker_message_received(self, *, client_id, message) -> None:
        self._append(
            {
                "event": "publish",
                "client_id": client_id,
                "topic": message.topic,
                "qos": message.qos,
                "dup": bool(message.publish_packet and message.publish_packet.dup_flag),
                "payload": bytes(message.data).decode("utf-8", "replace"),
            }
        )


def broker_config(cert: str, key: str, record: str, recorder: str = "tests.test_iothub.PublishRecorder") -> dict:
    """amqtt settings: TLS on 127.0.0.1:8883, anonymous, every event recorded by `recorder` to `record`."""
    return {
        "listeners": {
            "default": {
                "type": "tcp",
                "bind": f"127.0.0.1:{BROKER_PORT}",
                "ssl": True,
                "certfile": cert,
                "keyfile": key,
            }
        },
        "plugins": {
            "amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True},
            recorder: {"path": record},
        },
    }


def serve_until_sigterm(make_broker) -> None:
    """Run the amqtt broker `make_broker()` builds (inside the event loop, as amqtt requires),
    print "ready" once it listens, shut it down on SIGTERM."""

    async def serve() -> None:
        broker = make_broker()
        await broker.start()
        stopping = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stopping.set)
        print("ready", flush=True)
        await stopping.wait()
        await broker.shutdown()

    asyncio.run(serve())


def run_broker(cert: str, key: str, record: str) -> None:
    """The broker process: TLS on 127.0.0.1:8883, anonymous, recording; SIGTERM stops it."""
    from amqtt.broker import Broker

    serve_until_sigterm(lambda: Broker(broker_config(cert, key, record)))


def port_is_free(port: int) -> bool:
    """Whether the broker could bind the port (as asyncio does: SO_REUSEADDR, so TIME_WAIT is fine)."""
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


class MqttBroker:
    """The amqtt broker as a child process; :meth:`stop` and :meth:`start` again keep the record."""

    def __init__(self, pki: Pki, workdir: Path):
        self.pki = pki
        self.record = workdir / "broker-record.jsonl"
        self.log = workdir / "broker.log"
        self.record.touch()
        self._process: subprocess.Popen | None = None

    def command(self) -> list[str]:
        """The broker process to start (`run_broker` through this module's `main`)."""
        files = [self.pki.cert, self.pki.key, self.record]
        return [sys.executable, "-m", "tests.test_iothub", "broker", *map(str, files)]

    def start(self, timeout: float = 30.0) -> MqttBroker:
        if not port_is_free(BROKER_PORT):
            raise RuntimeError(f"127.0.0.1:{BROKER_PORT} is taken; the IoT Hub SDK can only use that port")
        with open(self.log, "ab") as log:
            self._process = subprocess.Popen(
                self.command(),
                cwd=REPO,
                stdout=subprocess.PIPE,
                stderr=log,
                text=True,
                preexec_fn=_die_with_parent,
            )
        ready = threading.Event()
        threading.Thread(target=lambda: self._process.stdout.readline() == "ready\n" and ready.set()).start()
        if not ready.wait(timeout):
            self.stop()
            raise RuntimeError(f"the MQTT broker did not start; see {self.log}")
        return self

    def stop(self) -> None:
        process, self._process = self._process, None
        if process is None:
            return
        process.terminate()
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)

    def pause(self) -> None:
        """SIGSTOP: the TCP connections stay open, nothing is answered (a stalled broker)."""
        self._process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        self._process.send_signal(signal.SIGCONT)

    def records(self, event: str) -> list[dict]:
        # the broker may be writing the last line right now: only complete lines count
        complete = self.record.read_text().rpartition("\n")[0]
        return [record for record in map(json.loads, complete.splitlines()) if record["event"] == event]

    def publishes(self, client_id: str | None = None) -> list[dict]:
        return [p for p in self.records("publish") if client_id is None or p["client_id"] == client_id]

    def wait_for_publishes(self, count: int, timeout: float, client_id: str | None = None) -> list[dict]:
        deadline = time.monotonic() + timeout
        while len(found := self.publishes(client_id)) < count and time.monotonic() < deadline:
            time.sleep(0.1)
        return found


class Subscriber:
    """An MQTT client subscribed to ``#`` over TLS: what a consumer of the broker sees."""

    def __init__(self, ca: Path):
        import paho.mqtt.client as mqtt

        self.messages: list[tuple[str, bytes]] = []
        self._subscribed = threading.Event()
        self._client = mqtt.Client(client_id="test-subscriber", clean_session=True)
        self._client.tls_set(ca_certs=str(ca))
        self._client.on_connect = lambda client, *_: client.subscribe("#", qos=1)
        self._client.on_subscribe = lambda *_: self._subscribed.set()
        self._client.on_message = lambda _c, _u, msg: self.messages.append((msg.topic, msg.payload))

    def start(self, timeout: float = 15.0) -> Subscriber:
        self._client.connect("localhost", BROKER_PORT)
        self._client.loop_start()
        if not self._subscribed.wait(timeout):
            raise RuntimeError("the subscriber did not get its SUBACK")
        return self

    def wait_for(self, count: int, timeout: float = 20.0) -> list[tuple[str, bytes]]:
        deadline = time.monotonic() + timeout
        while len(self.messages) < count and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.3)  # catch any extra message
        return list(self.messages)

    def stop(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()


# -- a fake IoT Edge workload API -------------------------------------------------------------------


class FakeWorkloadApi:
    """What the IoT Edge security daemon serves a module on ``IOTEDGE_WORKLOADURI``: the trust
    bundle (the CA of edgeHub's server certificate) and HMAC-SHA256 signing with the module key."""

    def __init__(self, ca_pem: str, key_b64: str):
        self.folder = Path(tempfile.mkdtemp(prefix="ew-edge-"))  # Unix socket paths must stay short
        self.socket_path = self.folder / "workload.sock"
        self.requests: list[tuple[str, str, dict]] = []
        api = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                url = urlsplit(self.path)
                api.requests.append(("GET", url.path, parse_qs(url.query)))
                self._reply({"certificate": ca_pem} if url.path == "/trust-bundle" else None)

            def do_POST(self):
                url = urlsplit(self.path)
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                api.requests.append(("POST", url.path, parse_qs(url.query)))
                if url.path != f"/modules/{MODULE}/genid/{GENERATION}/sign" or body.get("algo") != "HMACSHA256":
                    return self._reply(None)
                digest = hmac.new(base64.b64decode(key_b64), base64.b64decode(body["data"]), hashlib.sha256).digest()
                self._reply({"digest": base64.b64encode(digest).decode()})

            def _reply(self, payload):
                data = json.dumps(payload or {"message": "not found"}).encode()
                self.send_response(200 if payload else 404)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def address_string(self):  # Unix sockets have no client address
                return "workload-client"

            def log_message(self, *args):
                pass

        self._server = socketserver.ThreadingUnixStreamServer(str(self.socket_path), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> FakeWorkloadApi:
        self._thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self._server.shutdown()
        self._server.server_close()
        self.socket_path.unlink(missing_ok=True)
        self.folder.rmdir()

    def environment(self) -> dict[str, str]:
        """The variables the edge runtime sets in the module's container."""
        return {
            "IOTEDGE_IOTHUBHOSTNAME": HUB,
            "IOTEDGE_DEVICEID": EDGE_DEVICE,
            "IOTEDGE_MODULEID": MODULE,
            "IOTEDGE_GATEWAYHOSTNAME": "localhost",
            "IOTEDGE_MODULEGENERATIONID": GENERATION,
            "IOTEDGE_WORKLOADURI": f"unix://{self.socket_path}",
            "IOTEDGE_APIVERSION": "2019-01-30",
        }


# -- events ---------------------------------------------------------------------------------------


def labeled(offset: int, device: str, anomaly: bool) -> LabeledEvent:
    raw = RawMessage(device.encode(), b"{}", [], "telemetry", 0, offset, 1_700_000_000_000 + offset)
    reading = Reading(device, 1_700_000_000.0 + offset, {"machine.temperature": 20.0 + offset}, raw)
    return LabeledEvent(reading, 0.97 if anomaly else 0.02, anomaly, "robust-zscore", "0.1.0")


def device_of(offset: int) -> str:
    return f"pump-{offset % 4}"


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


def run_sink(sink: IoTHubSink, batches: list[list[LabeledEvent]]) -> None:
    flow = Dataflow("iothub-test")
    op.output("iothub-out", op.input("events", flow, TestingSource(batches)), sink)
    run_main(flow)


# -- fixtures -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Pki:
    return make_test_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture
def broker(pki, tmp_path):
    if not port_is_free(BROKER_PORT):
        pytest.skip(f"127.0.0.1:{BROKER_PORT} is in use; the IoT Hub SDK cannot use another port")
    mqtt = MqttBroker(pki, tmp_path).start()
    yield mqtt
    mqtt.stop()


@pytest.fixture
def subscriber(broker, pki):
    client = Subscriber(pki.ca).start()
    yield client
    client.stop()


FAST = BufferPolicy(retry_max_seconds=1.0, drain_seconds=30.0)


# -- tests ----------------------------------------------------------------------------------------


def test_module_mode_from_the_edge_environment(broker, subscriber, pki, tmp_path, monkeypatch):
    """create_from_edge_environment → workload API → SAS token; anomalies leave on output 'labeled'."""
    events = [labeled(offset, device_of(offset), anomaly=offset % 3 == 0) for offset in range(12)]
    with FakeWorkloadApi(pki.ca.read_text(), KEY) as workload:
        for name, value in workload.environment().items():
            monkeypatch.setenv(name, value)
        sink = IoTHubSink(tmp_path / "buffer", output="labeled", send="anomalies", policy=FAST)
        assert sink.target.mode == "edge-module"
        run_sink(sink, [events[:5], events[5:]])
        requests = [(method, path) for method, path, _ in workload.requests]
    anomalies = [event for event in events if event.is_anomaly]
    received = subscriber.wait_for(len(anomalies))
    base = f"devices/{EDGE_DEVICE}/modules/{MODULE}"
    assert [topic for topic, _ in received] == [expected_topic(base, event, "labeled") for event in anomalies]
    assert [payload for _, payload in received] == [labeled_event_json(event) for event in anomalies]
    assert [p["qos"] for p in broker.publishes()] == [1] * len(anomalies)
    # the identity came from the edge runtime: trust bundle, then the module key signs the token
    assert requests[:2] == [("GET", "/trust-bundle"), ("POST", f"/modules/{MODULE}/genid/{GENERATION}/sign")]
    (connect,) = broker.records("connect")[1:]  # [0] is the subscriber
    assert connect["client_id"] == f"{EDGE_DEVICE}/{MODULE}"
    assert connect["username"].startswith(f"{HUB}/{EDGE_DEVICE}/{MODULE}/?api-version=")
    check_sas(connect, f"{HUB}/devices/{EDGE_DEVICE}/modules/{MODULE}")
    with StoreAndForward(tmp_path / "buffer" / "iothub.sqlite3", "check") as buffer:
        assert len(buffer) == 0


def test_device_mode_through_a_transparent_gateway(broker, subscriber, pki, tmp_path):
    """A device connection string with GatewayHostName and the gateway's CA; every event is sent."""
    events = [labeled(offset, device_of(offset), anomaly=offset == 4) for offset in range(8)]
    sink = IoTHubSink(tmp_path, DEVICE_CONNECTION_STRING, send="all", ca_cert=pki.ca, policy=FAST)
    assert sink.target.mode == "device"
    run_sink(sink, [events])
    received = subscriber.wait_for(len(events))
    assert [topic for topic, _ in received] == [expected_topic(f"devices/{GATEWAY_DEVICE}", e) for e in events]
    assert [payload for _, payload in received] == [labeled_event_json(event) for event in events]
    (connect,) = broker.records("connect")[1:]
    assert connect["client_id"] == GATEWAY_DEVICE
    assert connect["username"].startswith(f"{HUB}/{GATEWAY_DEVICE}/?api-version=")
    check_sas(connect, f"{HUB}/devices/{GATEWAY_DEVICE}")


def test_simulator_sends_as_the_simulated_temperature_sensor_module_does(broker, subscriber, pki):
    """`edgewatch simulate --iothub-connection-string`: the module's body, content type and encoding,
    sequenceNumber/batchId properties (plus the ground truth and the machine as deviceId)."""
    from urllib.parse import quote

    from edgewatch.simulator import Fleet
    from edgewatch.simulator.publish import publish_iothub

    records = list(Fleet(devices=2, seed=1, fault_rate=0.0, start_time=1_767_225_600.0).records(4))
    stats = publish_iothub(records, DEVICE_CONNECTION_STRING, ca_cert=pki.ca)
    assert stats.messages == 4
    received = subscriber.wait_for(4)
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


def test_an_untrusted_broker_gets_nothing(broker, subscriber, tmp_path):
    """Without the gateway's CA the TLS check fails: nothing is published, everything stays buffered."""
    events = [labeled(offset, device_of(offset), anomaly=True) for offset in range(3)]
    policy = BufferPolicy(retry_max_seconds=0.5, drain_seconds=3.0)
    run_sink(IoTHubSink(tmp_path, DEVICE_CONNECTION_STRING, send="all", policy=policy), [events])
    assert subscriber.wait_for(1, timeout=1.0) == []
    assert broker.publishes() == []
    with StoreAndForward(tmp_path / "iothub.sqlite3", "check") as buffer:
        assert [s.envelope.message_id for s in buffer.peek(10)] == [f"telemetry:0:{n}" for n in range(3)]


def test_a_stalled_broker_does_not_wedge_the_sender(broker, pki, tmp_path, caplog):
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
    events = [labeled_envelope(labeled(n, device_of(n), anomaly=True)) for n in range(60)]
    try:
        with caplog.at_level(logging.INFO, logger="edgewatch"):
            for n, envelope in enumerate(events):
                buffer.put([envelope])
                if n == 20:
                    broker.wait_for_publishes(15, timeout=10)
                    broker.pause()
                    stalled_at = time.monotonic()
                if n == 40:
                    time.sleep(max(0.0, stalled_at + 5.0 - time.monotonic()))
                    broker.resume()
                time.sleep(0.05)
            assert forwarder.stop(drain_seconds=60) is True
    finally:
        broker.resume()
        buffer.close()
    publishes = broker.wait_for_publishes(len(events), timeout=10, client_id=GATEWAY_DEVICE)
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


def test_broker_down_for_a_minute_and_edgewatch_restarted_meanwhile(broker, pki, tmp_path):
    """The issue's scenario: the broker stops for 60 s mid-stream; edgewatch is killed and started
    again while it is down. Every event arrives exactly once, in order per device."""
    buffer_dir = tmp_path / "buffer"

    def flow_process(start: int, count: int, drain: float, log_name: str) -> subprocess.Popen:
        command = [sys.executable, "-m", "tests.test_iothub", "flow", "--buffer-dir", str(buffer_dir)]
        command += ["--ca", str(pki.ca), "--start", str(start), "--count", str(count), "--drain", str(drain)]
        with open(tmp_path / log_name, "ab") as log:
            return subprocess.Popen(
                command,
                cwd=REPO,
                stdout=log,
                stderr=subprocess.STDOUT,
                preexec_fn=_die_with_parent,
            )

    first = flow_process(0, 10**9, 0, "flow-1.log")  # streams until killed
    second = None
    try:
        assert len(broker.wait_for_publishes(40, timeout=60)) >= 40, "edgewatch never reached the broker"
        broker.stop()
        down_at = time.monotonic()
        time.sleep(3)  # the stream goes on into the buffer
        first.kill()  # edgewatch dies while the broker is down
        first.wait(10)
        delivered = offsets_in(broker.publishes(GATEWAY_DEVICE))
        with StoreAndForward(buffer_dir / "iothub.sqlite3", "inspect") as buffer:
            waiting = [int(s.envelope.message_id.rsplit(":", 1)[1]) for s in buffer.peek(10**6)]
        assert waiting, "events labeled during the outage should wait in the buffer"
        assert sorted(delivered + waiting) == list(range(max(waiting) + 1)), "nothing lost at the crash"

        resume_from = max(waiting) + 1
        second = flow_process(resume_from, 20 * 66, 120, "flow-2.log")  # 20 ev/s, still streaming after 60 s
        time.sleep(max(0.0, down_at + 60 - time.monotonic()))
        broker.start()
        assert second.wait(150) == 0, (tmp_path / "flow-2.log").read_text()[-3000:]
    finally:
        for process in (first, second):
            if process is not None and process.poll() is None:
                process.kill()
                process.wait(10)

    publishes = broker.publishes(GATEWAY_DEVICE)
    arrived = offsets_in(publishes)
    last = resume_from + 20 * 66 - 1
    duplicates = {n: c for n, c in Counter(arrived).items() if c > 1}
    assert not duplicates, f"duplicates: {duplicates}"
    assert sorted(arrived) == list(range(last + 1)), "every event arrives"
    for device in {device_of(n) for n in range(4)}:
        mine = [n for n in arrived if device_of(n) == device]
        assert mine == sorted(mine), f"{device} out of order"
    second_log = (tmp_path / "flow-2.log").read_text()
    assert "from an earlier run wait in" in second_log
    assert "link back after" in second_log


# -- the flow process of the restart test -------------------------------------------------------------


class PacedSource(DynamicSource):
    """Labeled events ``start, start+1, …`` for four devices, ``per_second`` of them, in small lists."""

    def __init__(self, start: int, count: int, per_second: float, batch: int = 2):
        self.start, self.count, self.per_second, self.batch = start, count, per_second, batch

    def build(self, step_id, worker_index, worker_count):
        return _PacedPartition(self)


class _PacedPartition(StatelessSourcePartition):
    def __init__(self, spec: PacedSource):
        self.next, self.end, self.spec = spec.start, spec.start + spec.count, spec
        self.awake = datetime.datetime.now(datetime.UTC)

    def next_batch(self):
        if self.next >= self.end:
            raise StopIteration
        offsets = range(self.next, min(self.next + self.spec.batch, self.end))
        self.next = offsets[-1] + 1
        self.awake += datetime.timedelta(seconds=len(offsets) / self.spec.per_second)
        return [[labeled(n, device_of(n), anomaly=n % 5 == 0) for n in offsets]]

    def next_awake(self):
        return self.awake


def run_flow(args: argparse.Namespace) -> int:
    """edgewatch's IoT Hub sink in a Bytewax flow; exit 0 when the buffer drained at the end."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    logging.getLogger("azure").setLevel(logging.CRITICAL)  # the SDK logs every failed reconnect
    policy = BufferPolicy(retry_max_seconds=2.0, drain_seconds=args.drain)
    sink = IoTHubSink(
        args.buffer_dir, DEVICE_CONNECTION_STRING, send="all", ca_cert=args.ca, send_timeout=5.0, policy=policy
    )
    flow = Dataflow("iothub-restart")
    op.output("iothub-out", op.input("paced", flow, PacedSource(args.start, args.count, 20.0)), sink)
    run_main(flow)
    with StoreAndForward(Path(args.buffer_dir) / "iothub.sqlite3", "after") as buffer:
        left = len(buffer)
    print(f"flow done: {left} message(s) left in the buffer", flush=True)
    return 0 if left == 0 else 3


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.test_iothub")
    commands = parser.add_subparsers(dest="command", required=True)
    broker_cmd = commands.add_parser("broker")
    broker_cmd.add_argument("cert")
    broker_cmd.add_argument("key")
    broker_cmd.add_argument("record")
    flow_cmd = commands.add_parser("flow")
    flow_cmd.add_argument("--buffer-dir", required=True)
    flow_cmd.add_argument("--ca", required=True)
    flow_cmd.add_argument("--start", type=int, required=True)
    flow_cmd.add_argument("--count", type=int, required=True)
    flow_cmd.add_argument("--drain", type=float, required=True)
    args = parser.parse_args(argv)
    if args.command == "broker":
        run_broker(args.cert, args.key, args.record)
        return 0
    return run_flow(args)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
