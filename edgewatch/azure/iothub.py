"""Labeled events to Azure IoT Hub, as an IoT Edge module or as a device (azure-iot-device).

Three ways to connect, chosen by :class:`IoTHubTarget`:

* **IoT Edge module** (no connection string): ``IoTHubModuleClient.create_from_edge_environment()``
  — the ``IOTEDGE_*`` variables and the workload API that the edge runtime gives every module.
  Messages leave on a module *output* (default ``labeled``); the deployment's routes send them
  on, e.g. ``FROM /messages/modules/edgewatch/outputs/labeled INTO $upstream``.
* **module identity** (a connection string with ``ModuleId=``): the same output semantics,
  with the module's own key (development, or a module outside the edge runtime).
* **device** (a device connection string): device-to-cloud telemetry; add
  ``GatewayHostName=<edge device>`` and ``ca_cert`` to go through a transparent gateway.

Every event is one MQTT message: the labeled-event JSON as body, ``content_type``
``application/json``, ``content_encoding`` ``utf-8`` (so IoT Hub routing queries can read the
body), ``message_id`` = the input's ``topic:partition:offset``, and the properties ``anomaly``
(``true``/``false``), ``deviceId`` and ``model``. ``send="anomalies"`` sends only anomalous
events, ``"all"`` sends every one.

The flow never waits for IoT Hub: :class:`IoTHubSink` stores events in a
:class:`~edgewatch.store_forward.StoreAndForward` file and one sender thread
publishes them, one at a time (QoS 1, in order). A send that does not finish within
``send_timeout`` replaces the client (the SDK waits forever for a broker that stalls); a
broker that is down fails fast with ``ConnectionFailedError``; both are retried with backoff
until the message is acknowledged. One message in flight means about one round trip per
message: thousands per second to a local edgeHub, tens per second straight to IoT Hub across
a WAN — which suits ``anomalies`` mode; use Event Hubs for bulk ``all`` traffic.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from azure.iot.device import IoTHubDeviceClient, IoTHubModuleClient, Message
from azure.iot.device.exceptions import ConnectionDroppedError, ConnectionFailedError, NoConnectionError

from edgewatch.azure.connection_string import parse_connection_string
from edgewatch.azure.messages import LabeledEventSink, Selection, SendMode, labeled_selection
from edgewatch.store_forward import BufferPolicy, Envelope, StoreAndForward, Stored, call_with_timeout
from edgewatch.store_forward.forwarder import close_in_background, close_quietly

log = logging.getLogger(__name__)

DEFAULT_OUTPUT = "labeled"

#: what the IoT Edge runtime sets in every module container
EDGE_VARIABLES = (
    "IOTEDGE_IOTHUBHOSTNAME",
    "IOTEDGE_DEVICEID",
    "IOTEDGE_MODULEID",
    "IOTEDGE_GATEWAYHOSTNAME",
    "IOTEDGE_MODULEGENERATIONID",
    "IOTEDGE_WORKLOADURI",
    "IOTEDGE_APIVERSION",
)
#: what VS Code / the IoT Edge simulator set instead, for local module debugging
EDGE_DEBUG_VARIABLES = ("EdgeHubConnectionString", "EdgeModuleCACertificateFile")

#: errors after which the same client can simply try again (it reconnects on the next send)
RECONNECTABLE = (ConnectionFailedError, ConnectionDroppedError, NoConnectionError)

IoTHubClient = IoTHubDeviceClient | IoTHubModuleClient


def in_iot_edge(environ: Mapping[str, str] = os.environ) -> bool:
    """True inside an IoT Edge module (or its local debugging environment)."""
    return all(name in environ for name in EDGE_VARIABLES) or all(name in environ for name in EDGE_DEBUG_VARIABLES)


@dataclass(frozen=True)
class IoTHubTarget:
    """Where labeled events go.

    Args:
        connection_string: device or module connection string (``HostName``, ``DeviceId``,
            optional ``ModuleId`` and ``GatewayHostName``, ``SharedAccessKey``); ``None``
            inside IoT Edge, where the module's identity comes from the edge runtime.
        output: module output name (module modes only).
        ca_cert: PEM file of a CA to trust, e.g. the edge device's root CA behind a
            transparent gateway (the edge runtime provides it itself in module mode).
    """

    connection_string: str | None = None
    output: str = DEFAULT_OUTPUT
    ca_cert: Path | None = None

    def __post_init__(self) -> None:
        if self.connection_string is None:
            if not in_iot_edge():
                raise ValueError(
                    "no IoT Hub connection string and not inside an IoT Edge module "
                    f"(none of {', '.join(EDGE_VARIABLES[:3])}… set): pass a device or module connection string"
                )
            return
        fields = parse_connection_string(self.connection_string, what="IoT Hub connection string")
        missing = [key for key in ("HostName", "DeviceId", "SharedAccessKey") if not fields.get(key)]
        if missing:
            raise ValueError(f"IoT Hub connection string lacks {', '.join(missing)} (x509 is not supported)")
        if self.ca_cert is not None and not Path(self.ca_cert).is_file():
            raise ValueError(f"CA certificate {self.ca_cert} not found")

    @property
    def mode(self) -> str:
        """``edge-module``, ``module`` or ``device``."""
        if self.connection_string is None:
            return "edge-module"
        return (
            "module"
            if parse_connection_string(self.connection_string, what="IoT Hub connection string").get("ModuleId")
            else "device"
        )

    def create_client(self, **options) -> IoTHubClient:
        """A new SDK client (it connects on its first send). ``options`` go to the SDK
        (``keep_alive``, ``connection_retry_interval``, …)."""
        options.setdefault("product_info", "edgewatch")
        if self.connection_string is None:
            return IoTHubModuleClient.create_from_edge_environment(**options)
        if self.ca_cert is not None:
            options["server_verification_cert"] = Path(self.ca_cert).read_text()
        client_class = IoTHubModuleClient if self.mode == "module" else IoTHubDeviceClient
        return client_class.create_from_connection_string(self.connection_string, **options)


def to_message(envelope: Envelope) -> Message:
    """The IoT Hub message for an envelope: JSON body, content type/encoding, properties."""
    message = Message(
        envelope.body,
        message_id=envelope.message_id,
        content_encoding="utf-8",
        content_type="application/json",
    )
    message.custom_properties.update(envelope.properties)
    return message


class IoTHubSender:
    """Publishes buffered envelopes one by one, in order, each acknowledged before the next.

    Args:
        target: where to send.
        send_timeout: longest wait for one acknowledgement before the client is replaced.
        client_factory: builds SDK clients (default: ``target.create_client``).
        owns_client: False when the factory hands out a client that others use too (an IoT
            Edge module's one connection, shared with its input and its twin): such a client is
            never shut down here, and after a timeout the next attempt uses it again (the SDK
            reconnects it itself) instead of replacing it.
    """

    batch_size = 100

    def __init__(
        self,
        target: IoTHubTarget,
        send_timeout: float = 30.0,
        client_factory: Callable[[], IoTHubClient] | None = None,
        owns_client: bool = True,
    ):
        self.target = target
        self.send_timeout = send_timeout
        self.owns_client = owns_client
        self._client_factory = client_factory or target.create_client
        self._client: IoTHubClient | None = None

    def deliver(self, batch: list[Stored], buffer: StoreAndForward) -> None:
        for stored in batch:
            message = to_message(stored.envelope)
            client = self._connected_client()
            try:
                call_with_timeout(self._send, self.send_timeout, client, message)
            except ValueError as exc:  # the SDK's size check: this message can never be sent
                buffer.discard([stored.seq], "too-large", f"IoT Hub refuses it: {exc}")
                continue
            except RECONNECTABLE:
                raise
            except BaseException as exc:
                # a timeout (the broker stalls) or an unexpected SDK state: start over with a
                # new client. The old one may still deliver the message it holds, so this is
                # the one place a duplicate can come from (same message_id).
                self._replace_client(exc)
                raise
            buffer.ack([stored.seq])

    def _send(self, client: IoTHubClient, message: Message) -> None:
        if isinstance(client, IoTHubModuleClient):
            client.send_message_to_output(message, self.target.output)
        else:
            client.send_message(message)

    def _connected_client(self) -> IoTHubClient:
        if self._client is None:
            self._client = call_with_timeout(self._client_factory, self.send_timeout)
        return self._client

    def _replace_client(self, reason: BaseException) -> None:
        client, self._client = self._client, None
        if client is not None and not self.owns_client:
            log.info("iothub: %s: %s; trying again on the shared client", type(reason).__name__, reason)
        elif client is not None:
            log.info("iothub: replacing the client after %s: %s", type(reason).__name__, reason)
            close_in_background(client.shutdown, "edgewatch-iothub-shutdown")

    def close(self) -> None:
        client, self._client = self._client, None
        if client is not None and self.owns_client:
            close_quietly(client.shutdown, "edgewatch-iothub-shutdown")


class IoTHubSink(LabeledEventSink):
    """Bytewax sink: lists of LabeledEvent to IoT Hub, through ``<buffer_dir>/<name>.sqlite3``.

    Args:
        buffer_dir: folder of the store-and-forward file (a persistent volume on IoT Edge).
        connection_string: device or module connection string; ``None`` inside IoT Edge.
        output: module output name.
        send: ``anomalies`` or ``all``.
        ca_cert: PEM file of a CA to trust (transparent gateway).
        send_timeout: longest wait for one acknowledgement.
        policy: buffer limits and retry timings.
        client_options: passed to the SDK client factory.
        client: send through this client instead of one of the sink's own. An IoT Edge module
            identity holds one MQTT connection (edgeHub drops the older of two), so a module that
            also reads inputs and its twin shares one client; the sink then neither replaces nor
            shuts it down.
        name: buffer name (file stem, metrics label); sinks of one name share a buffer and a client.
        select: which items go and as what (default: labeled events; see :mod:`edgewatch.azure.messages`).
    """

    def __init__(
        self,
        buffer_dir: Path | str,
        connection_string: str | None = None,
        output: str = DEFAULT_OUTPUT,
        send: SendMode = "anomalies",
        ca_cert: Path | str | None = None,
        send_timeout: float = 30.0,
        policy: BufferPolicy | None = None,
        client_options: dict | None = None,
        client: IoTHubClient | None = None,
        name: str = "iothub",
        select: Selection = labeled_selection,
    ):
        target = IoTHubTarget(connection_string, output, Path(ca_cert) if ca_cert else None)
        self.target = target
        super().__init__(
            name, buffer_dir, iothub_sender_factory(target, send_timeout, client, client_options), send, policy,
            select,
        )  # fmt: skip


def iothub_sender_factory(
    target: IoTHubTarget,
    send_timeout: float = 30.0,
    client: IoTHubClient | None = None,
    client_options: dict | None = None,
) -> Callable[[], IoTHubSender]:
    """What a store-and-forward sink calls to build its IoT Hub sender: with ``client``, one that
    shares that client (never replaced or shut down); else one with clients of its own."""
    if client is not None:
        return lambda: IoTHubSender(target, send_timeout, lambda: client, owns_client=False)
    options = dict(client_options or {})
    return lambda: IoTHubSender(target, send_timeout, lambda: target.create_client(**options))
