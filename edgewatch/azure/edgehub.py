"""edgeHub as the flow's input, and module outputs for dead letters (azure-iot-device).

Inside Azure IoT Edge, the telemetry of other modules reaches edgewatch through edgeHub's
routes, e.g. ``FROM /messages/modules/SimulatedTemperatureSensor/outputs/temperatureOutput INTO
BrokeredEndpoint("/modules/edgewatch/inputs/telemetry")``. The module client's
``on_message_received`` handler gets each message; :class:`EdgeHubInput` keeps them in a bounded
queue and :class:`EdgeHubSource` (one Bytewax partition) hands them to the flow as lists of
:class:`~edgewatch.schema.RawMessage`::

    edgeHub ──MQTT──► SDK (acks, then its handler pool) ──handle──► bounded queue ──next_batch──► flow

A message becomes ``RawMessage(key=sender, value=body, headers=custom properties + content
type/encoding, topic=input name, partition=0, offset=sequence, timestamp=creation time or now)``.
The sender is the device (``$.cdid``), or ``device/module`` (``$.cmid``) when a module sent it,
as edgeHub stamps them; a body with a ``deviceId`` field names its device itself (key ``None``).
Offsets start at the run's start time in microseconds, so they increase across restarts and the
message ids derived from them (``telemetry:0:<offset>``) stay unique.

**What a full queue means.** azure-iot-device acknowledges (PUBACK) every input message to edgeHub
as soon as it is read off the socket, *before* any handler runs; edgeHub's own store-and-forward
therefore keeps only what has not reached this process (while the module is down or
disconnected). A full queue cannot push back on edgeHub: the handler waits up to
``wait_seconds`` for room — messages that arrive meanwhile wait in the SDK's memory — and then
gives the message back to edgeHub on the dead-letter output (``on_reject``) with the reason,
where edgeHub's store-and-forward keeps it for its route. A message already acknowledged and
still queued is lost if the process dies (nothing upstream will resend it); a stop (SIGTERM)
first unsubscribes from the inputs, then drains the queue into the flow.

The SDK calls the handler from a pool of up to four threads, so two messages that arrive within
microseconds of each other may be queued in either order; at the rates of sensor modules (one
message per second per sensor) order is kept.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path

import orjson
from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition
from prometheus_client import Counter, Gauge

from edgewatch.azure.iothub import IoTHubClient, IoTHubTarget, iothub_sender_factory, to_message
from edgewatch.azure.messages import DeadLetterSink, dead_letter_envelope
from edgewatch.schema import DeadLetter, Headers, RawMessage, parse_iso_utc
from edgewatch.store_forward import BufferPolicy, call_with_timeout

log = logging.getLogger(__name__)

DEFAULT_INPUT = "telemetry"
DEFAULT_DEADLETTER_OUTPUT = "deadletter"

#: system properties edgeHub stamps on a routed message (the SDK hands them over as custom properties)
CONNECTION_DEVICE_ID = "$.cdid"
CONNECTION_MODULE_ID = "$.cmid"
CREATION_TIME = "$.ctime"
SYSTEM_PROPERTY_PREFIX = "$."

RECEIVED = Counter("edgewatch_edgehub_received", "Input messages edgeHub delivered", ["input"])
REJECTED = Counter("edgewatch_edgehub_rejected", "Input messages handed back to edgeHub or dropped", ["reason"])
QUEUED = Gauge("edgewatch_edgehub_queued", "Input messages waiting for the flow")

#: what a rejected message becomes: ``(message, reason_key, why)``
RejectHandler = Callable[[RawMessage, str, str], None]


# -- one SDK message → RawMessage ---------------------------------------------------------------


def sender_of(message) -> str | None:
    """``device`` or ``device/module`` that sent a routed message, as edgeHub names it.

    azure-iot-device 2.x keeps ``$.cdid``/``$.cmid`` among the custom properties; SDKs that
    expose ``connection_device_id``/``connection_module_id`` attributes are read too.
    """
    properties = message.custom_properties or {}
    device = getattr(message, "connection_device_id", None) or properties.get(CONNECTION_DEVICE_ID)
    module = getattr(message, "connection_module_id", None) or properties.get(CONNECTION_MODULE_ID)
    if not device:
        return None
    return f"{device}/{module}" if module else device


def names_its_device(body: bytes) -> bool:
    """Whether a JSON body has a string ``deviceId`` field (which then wins over the sender).

    >>> names_its_device(b'{"deviceId": "pump-7", "values": {"rpm": 1}}'), names_its_device(b'{"machine": {}}')
    (True, False)
    """
    if b'"deviceId"' not in body:  # the common case costs a substring search, not a parse
        return False
    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError:
        return False
    return isinstance(parsed, dict) and isinstance(parsed.get("deviceId"), str)


def creation_time_ms(message) -> int | None:
    """The message's creation time (``$.ctime``, ISO-8601) in epoch milliseconds, if it has a valid one.

    >>> class M: custom_properties = {"$.ctime": "2026-11-23T01:05:00.1234567Z"}
    >>> creation_time_ms(M())
    1795395900123
    """
    text = (message.custom_properties or {}).get(CREATION_TIME)
    if not text:
        return None
    try:  # Python 3.11 also reads the 7 fractional digits .NET writes
        return int(parse_iso_utc(text).timestamp() * 1000)
    except ValueError:
        return None


def message_headers(message) -> Headers:
    """Custom properties (not edgeHub's ``$.`` system ones) and the content type/encoding."""
    headers = [
        (name, (value or "").encode())
        for name, value in (message.custom_properties or {}).items()
        if not name.startswith(SYSTEM_PROPERTY_PREFIX)
    ]
    if message.content_type:
        headers.append(("content-type", message.content_type.encode()))
    if message.content_encoding:
        headers.append(("content-encoding", message.content_encoding.encode()))
    return headers


def raw_message(message, input_name: str, offset: int, received_ms: int) -> RawMessage:
    """The RawMessage the flow parses for one input message (see the module docstring)."""
    data = message.data
    body = bytes(data) if isinstance(data, bytes | bytearray) else str(data).encode()
    sender = None if names_its_device(body) else sender_of(message)
    return RawMessage(
        sender.encode() if sender else None,
        body,
        message_headers(message),
        input_name,
        0,
        offset,
        creation_time_ms(message) or received_ms,
    )


# -- the bounded queue between the SDK handler and the source ------------------------------------


class EdgeHubInput:
    """The module client's ``on_message_received`` handler and the queue it fills.

    Args:
        input_name: the module input to read (``telemetry``); messages on other inputs are
            rejected, since edgewatch does not know what they carry.
        capacity: most messages queued for the flow.
        wait_seconds: how long the handler waits for room before rejecting a message.
        on_reject: gets every message not queued, its reason key and an explanation; by
            default they are logged and counted as dropped.
        clock: wall clock in seconds (message timestamps and the first offset).
    """

    def __init__(
        self,
        input_name: str = DEFAULT_INPUT,
        capacity: int = 10_000,
        wait_seconds: float = 30.0,
        on_reject: RejectHandler | None = None,
        clock: Callable[[], float] = time.time,
    ):
        if capacity < 1 or wait_seconds < 0:
            raise ValueError("capacity must be at least 1 and wait_seconds not negative")
        self.input_name = input_name
        self.capacity = capacity
        self.wait_seconds = wait_seconds
        self._on_reject = on_reject or _log_rejected
        self._clock = clock
        self._queue: deque[RawMessage] = deque()
        self._changed = threading.Condition()
        self._closed = False
        self._next_offset = int(clock() * 1_000_000)

    def handle(self, message) -> None:
        """Queue one SDK message for the flow (blocks up to ``wait_seconds`` while full)."""
        name = message.input_name or self.input_name
        RECEIVED.labels(name).inc()
        received_ms = int(self._clock() * 1000)
        if name != self.input_name:
            raw = raw_message(message, name, self._take_offset(), received_ms)
            why = f"input {name!r} is not read by edgewatch (it reads {self.input_name!r}): check the routes"
            return self._reject(raw, "unknown-input", why)
        with self._changed:
            has_room = self._changed.wait_for(
                lambda: len(self._queue) < self.capacity or self._closed, timeout=self.wait_seconds
            )
            raw = raw_message(message, name, self._next_offset, received_ms)
            self._next_offset += 1
            if has_room and not self._closed:
                self._queue.append(raw)
                QUEUED.set(len(self._queue))
                self._changed.notify_all()
                return None
        if self._closed:
            return self._reject(raw, "stopping", "edgewatch is stopping and no longer takes input")
        why = f"the input queue stayed full ({self.capacity} messages) for {self.wait_seconds:g} s"
        return self._reject(raw, "queue-full", why)

    def take(self, max_items: int, timeout: float) -> list[RawMessage]:
        """Up to ``max_items`` queued messages, oldest first; waits up to ``timeout`` for the first."""
        with self._changed:
            self._changed.wait_for(lambda: self._queue or self._closed, timeout=timeout)
            count = min(max_items, len(self._queue))
            taken = [self._queue.popleft() for _ in range(count)]
            if taken:
                QUEUED.set(len(self._queue))
                self._changed.notify_all()
            return taken

    def close(self) -> None:
        """No more input: later messages are rejected; the source ends once the queue is empty."""
        with self._changed:
            self._closed = True
            self._changed.notify_all()

    @property
    def finished(self) -> bool:
        """Closed and drained."""
        with self._changed:
            return self._closed and not self._queue

    def __len__(self) -> int:
        return len(self._queue)

    def _take_offset(self) -> int:
        with self._changed:
            offset, self._next_offset = self._next_offset, self._next_offset + 1
            return offset

    def _reject(self, raw: RawMessage, reason: str, why: str) -> None:
        REJECTED.labels(reason).inc()
        try:
            self._on_reject(raw, reason, why)
        except Exception as exc:  # the SDK only logs handler errors; say what was lost
            log.error("edgehub: input message %s:%d lost (%s; %s)", raw.topic, raw.offset, why, exc)


def _log_rejected(raw: RawMessage, reason: str, why: str) -> None:
    log.warning("edgehub: dropped input message %s:%d: %s", raw.topic, raw.offset, why)


class EdgeHubSource(FixedPartitionedSource[list[RawMessage], None]):
    """Bytewax source: one partition that yields lists of RawMessage from an :class:`EdgeHubInput`.

    Nothing is resumed after a restart: edgeHub has been acknowledged for every message taken,
    so there is no position to go back to (the flow's detector state is still recovered).

    Args:
        queue: where the module client's handler puts messages.
        batch_size: most messages per item.
        poll_seconds: how long one ``next_batch`` waits for a first message.
    """

    def __init__(self, queue: EdgeHubInput, batch_size: int = 2000, poll_seconds: float = 0.05):
        self.queue = queue
        self.batch_size = batch_size
        self.poll_seconds = poll_seconds

    def list_parts(self) -> list[str]:
        return [f"edgehub-{self.queue.input_name}"]

    def build_part(self, step_id: str, for_part: str, resume_state: None) -> _EdgeHubPartition:
        return _EdgeHubPartition(self)


class _EdgeHubPartition(StatefulSourcePartition[list[RawMessage], None]):
    def __init__(self, source: EdgeHubSource):
        self._source = source

    def next_batch(self) -> list[list[RawMessage]]:
        queue = self._source.queue
        batch = queue.take(self._source.batch_size, self._source.poll_seconds)
        if batch:
            return [batch]
        if queue.finished:
            raise StopIteration
        return []

    def snapshot(self) -> None:
        return None


# -- dead letters to a module output -------------------------------------------------------------


class OutputRejecter:
    """``on_reject`` for :class:`EdgeHubInput`: sends the message back to edgeHub on a module output
    (the dead-letter output), so edgeHub's store-and-forward keeps it for that output's route.

    Runs on the SDK's handler thread and waits for edgeHub's acknowledgement (up to ``timeout``).
    """

    def __init__(self, client: IoTHubClient, output: str = DEFAULT_DEADLETTER_OUTPUT, timeout: float = 30.0):
        self._client = client
        self._output = output
        self._timeout = timeout

    def __call__(self, raw: RawMessage, reason: str, why: str) -> None:
        message = to_message(dead_letter_envelope(DeadLetter(raw, why, "input")))
        call_with_timeout(self._client.send_message_to_output, self._timeout, message, self._output)
        log.warning("edgehub: input message %s:%d sent to output %r: %s", raw.topic, raw.offset, self._output, why)


class DeadLetterOutputSink(DeadLetterSink):
    """Dead letters to a module output, through a store-and-forward file
    (``<buffer_dir>/edgehub-deadletter.sqlite3``) and the module's one shared client.

    Args:
        buffer_dir: folder of the buffer file (a persistent volume).
        client: the module client (never shut down here).
        output: the module output (``deadletter``); route it, e.g. ``FROM
            /messages/modules/edgewatch/outputs/deadletter INTO $upstream``.
        connection_string: the module connection string when not inside IoT Edge (development).
        send_timeout: longest wait for edgeHub's acknowledgement of one message.
        policy: buffer limits and retry/drain timings.
    """

    def __init__(
        self,
        buffer_dir: Path | str,
        client: IoTHubClient,
        output: str = DEFAULT_DEADLETTER_OUTPUT,
        connection_string: str | None = None,
        send_timeout: float = 30.0,
        policy: BufferPolicy | None = None,
    ):
        target = IoTHubTarget(connection_string, output)
        super().__init__("edgehub-deadletter", buffer_dir, iothub_sender_factory(target, send_timeout, client), policy)
