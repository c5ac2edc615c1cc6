"""The IoT Hub test set-up: a test PKI, the TLS MQTT broker on 127.0.0.1:8883, MQTT clients, a fake
IoT Edge workload API, and their fixtures (``pki``, ``mqtt_broker``, ``mqtt_subscriber``).

The broker is amqtt with TLS on 127.0.0.1:8883 (the SDK always connects to 8883), a server
certificate for localhost/127.0.0.1 signed by a CA made in the test, and anonymous access (it
takes the SDK's SAS-token username/password as they are). A broker plugin records every PUBLISH
it receives and every CONNECT to a JSON-lines file, so what the SDK put on the wire is checked
exactly, across broker restarts (the process: :mod:`tests.support.mqtt_broker`).

The fake workload API serves what the IoT Edge security daemon serves a module, so that
``IoTHubModuleClient.create_from_edge_environment()`` runs for real: the module's identity, SAS
token and CA come from the edge environment exactly as in a deployment.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import hmac
import http.server
import ipaddress
import json
import shutil
import signal
import socket
import socketserver
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest

from tests.support.processes import PythonProcess

BROKER_PORT = 8883  # fixed by azure-iot-device: MQTT over TLS always goes to 8883
HUB = "test-hub.azure-devices.net"
EDGE_DEVICE, MODULE, GENERATION = "edge-gw-1", "edgewatch", "gen-7"
GATEWAY_DEVICE = "pump-gw-1"
KEY = base64.b64encode(b"edgewatch test key, 32 bytes ok").decode()
DEVICE_CONNECTION_STRING = f"HostName={HUB};DeviceId={GATEWAY_DEVICE};SharedAccessKey={KEY};GatewayHostName=localhost"


def device_of(offset: int) -> str:
    """The device of the test event at ``offset``: four pumps, round robin."""
    return f"pump-{offset % 4}"


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


def port_is_free(port: int) -> bool:
    """Whether the broker could bind the port (as asyncio does: SO_REUSEADDR, so TIME_WAIT is fine)."""
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def skip_unless_broker_port_is_free() -> None:
    if not port_is_free(BROKER_PORT):
        pytest.skip(f"127.0.0.1:{BROKER_PORT} is in use; the IoT Hub SDK cannot use another port")


class MqttBroker:
    """The amqtt broker as a child process; :meth:`stop` and :meth:`start` again keep the record."""

    def __init__(self, pki: Pki, workdir: Path):
        self.pki = pki
        self.record = workdir / "broker-record.jsonl"
        self.log = workdir / "broker.log"
        self.record.touch()
        self._process: PythonProcess | None = None

    def broker_args(self) -> list[str]:
        """The arguments of ``python -m tests.support.mqtt_broker``."""
        return ["broker", self.pki.cert, self.pki.key, self.record]

    def start(self, timeout: float = 30.0) -> MqttBroker:
        if not port_is_free(BROKER_PORT):
            raise RuntimeError(f"127.0.0.1:{BROKER_PORT} is taken; the IoT Hub SDK can only use that port")
        self._process = PythonProcess("tests.support.mqtt_broker", self.broker_args(), self.log).start()
        try:
            self._process.wait_for_output(r"^ready$", timeout)
        except AssertionError:
            self.stop()
            raise RuntimeError(f"the MQTT broker did not start; see {self.log}") from None
        return self

    def stop(self) -> None:
        process, self._process = self._process, None
        if process is not None:
            process.stop(15)

    def __enter__(self) -> MqttBroker:
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()

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


class MqttClient:
    """A paho MQTT client over TLS to the test broker; :meth:`start` returns once it is ready
    (a subclass sets ``self._ready`` when it is: on CONNACK by default)."""

    def __init__(self, ca: Path, client_id: str):
        import paho.mqtt.client as mqtt

        self.client_id = client_id
        self._ready = threading.Event()
        self._client = mqtt.Client(client_id=client_id, clean_session=True)
        self._client.tls_set(ca_certs=str(ca))
        self._client.on_connect = lambda *_: self._ready.set()

    def start(self, timeout: float = 15.0) -> MqttClient:
        self._client.connect("localhost", BROKER_PORT)
        self._client.loop_start()
        if not self._ready.wait(timeout):
            raise RuntimeError(f"the MQTT client {self.client_id} did not get ready")
        return self

    def stop(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()

    def __enter__(self) -> MqttClient:
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()


class Subscriber(MqttClient):
    """An MQTT client subscribed to ``#``: what a consumer of the broker sees (ready on its SUBACK)."""

    def __init__(self, ca: Path):
        super().__init__(ca, "test-subscriber")
        self.messages: list[tuple[str, bytes]] = []
        self._client.on_connect = lambda client, *_: client.subscribe("#", qos=1)
        self._client.on_subscribe = lambda *_: self._ready.set()
        self._client.on_message = lambda _c, _u, msg: self.messages.append((msg.topic, msg.payload))

    def wait_for(self, count: int, timeout: float = 20.0) -> list[tuple[str, bytes]]:
        deadline = time.monotonic() + timeout
        while len(self.messages) < count and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.3)  # catch any extra message
        return list(self.messages)


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


# -- fixtures -------------------------------------------------------------------------------------


_session_pki = pytest.StashKey[Pki]()


def session_pki(config: pytest.Config) -> Pki:
    """The session's PKI, made on first call (before any fixture when the session's Kafka is launched
    early: its Event Hubs-like listener serves the server certificate); removed with the session."""
    pki = config.stash.get(_session_pki, None)
    if pki is None:
        pki = config.stash[_session_pki] = make_test_pki(Path(tempfile.mkdtemp(prefix="edgewatch-pki-")))
    return pki


def pytest_unconfigure(config: pytest.Config) -> None:
    pki = config.stash.get(_session_pki, None)
    if pki is not None:
        shutil.rmtree(pki.ca.parent, ignore_errors=True)


@pytest.fixture(scope="session")
def pki(request) -> Pki:
    """The test CA and the server certificate of the session's TLS brokers."""
    return session_pki(request.config)


@pytest.fixture
def mqtt_broker(pki, tmp_path):
    """A fresh recording MQTT broker on 127.0.0.1:8883 (skips when the port is taken)."""
    skip_unless_broker_port_is_free()
    with MqttBroker(pki, tmp_path) as broker:
        yield broker


@pytest.fixture
def mqtt_subscriber(mqtt_broker, pki):
    """A client subscribed to everything on ``mqtt_broker``."""
    with Subscriber(pki.ca) as client:
        yield client
