"""Message schemas: parse and validate telemetry, serialize labeled events.

Every byte string that reaches edgewatch ends as exactly one of two things: a
:class:`Reading` (valid telemetry) or a :class:`DeadLetter` (the original bytes and the
reason they were refused). Nothing raises out of :func:`parse_message`.

Accepted telemetry bodies (JSON objects, UTF-8):

* SimulatedTemperatureSensor (Azure IoT Edge sample module)::

    {"machine": {"temperature": 21.3, "pressure": 1.02},
     "ambient": {"temperature": 20.8, "humidity": 25},
     "timeCreated": "2026-11-23T01:05:00.1234567Z"}

* CMAPSS turbofan rows: ``{"CycleTime": 1, "OperationalSetting1": ..3, "Sensor1": ..21}``
* generic: ``{"deviceId": "pump-7", "timestamp": "ISO-8601" | epoch_seconds, "values": {"name": number}}``

The device id is the Kafka key, else the body's ``deviceId`` field.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import NamedTuple

import msgspec
import orjson

#: Readings beyond this magnitude are refused: no industrial sensor reports them, and
#: they would poison every running statistic they touch.
MAX_ABS_VALUE = 1e9
MAX_DEVICE_ID_LENGTH = 256
MAX_FEATURES = 64

SIMULATED_SENSOR_FEATURES = (
    ("machine.temperature", "machine", "temperature"),
    ("machine.pressure", "machine", "pressure"),
    ("ambient.temperature", "ambient", "temperature"),
    ("ambient.humidity", "ambient", "humidity"),
)
SIMULATED_SENSOR_NAMES = tuple(name for name, _, _ in SIMULATED_SENSOR_FEATURES)
CMAPSS_FEATURES = tuple(f"OperationalSetting{i}" for i in range(1, 4)) + tuple(f"Sensor{i}" for i in range(1, 22))

Headers = list[tuple[str, bytes]]


class SourceRef(NamedTuple):
    """Where a message came from: enough to find it again in Kafka or in a file."""

    topic: str
    partition: int
    offset: int
    timestamp_ms: int | None = None


@dataclass(slots=True)
class RawMessage:
    """A message as it left Kafka (or a replay file), before any parsing.

    The position is kept flat (no :class:`SourceRef` per message on the hot path):
    ``RawMessage(key, value, headers, *source_ref)`` builds one from a SourceRef.
    """

    key: bytes | None
    value: bytes | None
    headers: Headers
    topic: str
    partition: int
    offset: int
    timestamp_ms: int | None = None

    @property
    def source(self) -> SourceRef:
        return SourceRef(self.topic, self.partition, self.offset, self.timestamp_ms)


@dataclass(slots=True)
class Reading:
    """One valid telemetry message (and the raw message it came from)."""

    device_id: str
    timestamp: float  # source time, seconds since the Unix epoch (UTC)
    features: dict[str, float]
    raw: RawMessage

    @property
    def source(self) -> SourceRef:
        return self.raw.source


@dataclass(slots=True)
class DeadLetter:
    """A message edgewatch could not use, with the reason."""

    raw: RawMessage
    reason: str
    stage: str = "parse"


@dataclass(slots=True)
class LabeledEvent:
    """A reading with the detector's verdict.

    ``is_anomaly`` is the device's alarm state at this reading; ``explanation`` names the
    features that drove the score, with their shares (summing to 1), when the reading is abnormal.
    """

    reading: Reading
    score: float
    is_anomaly: bool
    model_name: str
    model_version: str
    explanation: dict[str, float] | None = None


@dataclass(slots=True)
class AlarmEvent:
    """A device's alarm was raised or cleared (the alarms output).

    ``start`` is the source time of the reading that raised it; ``end`` that of the reading
    that cleared it (``None`` while raised); ``peak_score`` the highest score in between.
    """

    kind: str  # "raised" | "cleared"
    device_id: str
    start: float
    end: float | None
    peak_score: float
    features: dict[str, float]
    explanation: dict[str, float]
    model_name: str
    model_version: str
    raw: RawMessage | None  # the reading that raised or cleared it (None: an operator cleared it)

    @property
    def duration_seconds(self) -> float:
        return 0.0 if self.end is None else self.end - self.start


@dataclass(slots=True)
class DriftEvent:
    """A device's new normal was accepted (the drift output).

    ``reason``: ``consistent-shift`` (the change kept the device's sensor relations),
    ``timeout`` (abnormal for longer than ``accept_after``) or ``operator``.
    """

    device_id: str
    timestamp: float
    features: list[str]
    level_before: dict[str, float]
    level_after: dict[str, float]
    reason: str
    model_name: str
    model_version: str
    raw: RawMessage | None = None


class BankResult(NamedTuple):
    """What a model bank returns for a batch of readings, one list per output of the flow."""

    events: list[LabeledEvent]
    dead_letters: list[DeadLetter]
    alarms: list[AlarmEvent]
    drift: list[DriftEvent]


class InvalidMessage(ValueError):
    """Raised inside the parser; always turned into a :class:`DeadLetter`."""


def parse_message(raw: RawMessage) -> Reading | DeadLetter:
    """Parse one message into a :class:`Reading`, or say why it cannot be used.

    >>> src = SourceRef("telemetry", 0, 7, 1_700_000_000_000)
    >>> ok = parse_message(RawMessage(b"pump-1", b'{"values": {"rpm": 1450}}', [], *src))
    >>> ok.device_id, ok.features
    ('pump-1', {'rpm': 1450.0})
    >>> parse_message(RawMessage(b"pump-1", b'{"values": {"rpm": NaN}}', [], *src)).reason
    'not JSON: NaN is not a number JSON allows'
    """
    try:
        return _parse(raw)
    except InvalidMessage as exc:
        return DeadLetter(raw, str(exc))


def parse_batch(raws: list[RawMessage]) -> tuple[list[Reading], list[DeadLetter]]:
    """Parse a batch, keeping the order of the good and of the bad messages."""
    readings: list[Reading] = []
    dead: list[DeadLetter] = []
    for raw in raws:
        parsed = parse_message(raw)
        (readings if isinstance(parsed, Reading) else dead).append(parsed)
    return readings, dead


class _Machine(msgspec.Struct):
    temperature: float
    pressure: float


class _Ambient(msgspec.Struct):
    temperature: float
    humidity: float


class _SimulatedSensorBody(msgspec.Struct):
    machine: _Machine
    ambient: _Ambient
    timeCreated: str | None = None  # the module's field names; parsed as the general path does
    deviceId: str | None = None


_SIMULATED_SENSOR = msgspec.json.Decoder(_SimulatedSensorBody)


def _parse_simulated_sensor(raw: RawMessage) -> Reading | None:
    """The common case in one typed decode (C): a well-formed SimulatedTemperatureSensor body.
    ``None`` for anything else, which the general parser then explains or handles."""
    try:
        body = _SIMULATED_SENSOR.decode(raw.value)
    except (msgspec.DecodeError, TypeError):
        return None
    machine, ambient = body.machine, body.ambient
    values = (machine.temperature, machine.pressure, ambient.temperature, ambient.humidity)
    if not all(-MAX_ABS_VALUE <= value <= MAX_ABS_VALUE for value in values):
        return None
    if raw.key:
        try:
            device_id = raw.key.decode("utf-8")
        except UnicodeDecodeError:
            return None
    else:
        device_id = body.deviceId or _iothub_sender(raw.headers)
    if not device_id or len(device_id) > MAX_DEVICE_ID_LENGTH or not device_id.isprintable():
        return None
    if body.timeCreated is None:
        if raw.timestamp_ms is None:
            return None
        timestamp = raw.timestamp_ms / 1000.0
    else:
        try:
            created = datetime.fromisoformat(body.timeCreated)
        except ValueError:
            return None
        timestamp = (created if created.tzinfo else created.replace(tzinfo=UTC)).timestamp()
    features = dict(zip(SIMULATED_SENSOR_NAMES, values, strict=True))
    return Reading(device_id, timestamp, features, raw)


def _parse(raw: RawMessage) -> Reading:
    fast = _parse_simulated_sensor(raw)
    if fast is not None:
        return fast
    body = _decode_json(raw.value)
    if not isinstance(body, dict):
        raise InvalidMessage(f"not a JSON object: got {type(body).__name__}")
    device_id = _device_id(raw.key, body, raw.headers)
    if "machine" in body or "ambient" in body:
        try:  # the common, well-formed case, without the per-field walk
            machine, ambient = body["machine"], body["ambient"]
            values = (machine["temperature"], machine["pressure"], ambient["temperature"], ambient["humidity"])
        except (KeyError, TypeError):
            values = tuple(_field(body, group, leaf) for _, group, leaf in SIMULATED_SENSOR_FEATURES)
        features = {
            spec[0]: _number(value, spec[0]) for spec, value in zip(SIMULATED_SENSOR_FEATURES, values, strict=True)
        }
        timestamp = _timestamp(body.get("timeCreated"), "timeCreated", raw.timestamp_ms)
    elif "CycleTime" in body:
        _number(body["CycleTime"], "CycleTime")
        features = {name: _number(_field(body, name), name) for name in CMAPSS_FEATURES}
        timestamp = _timestamp(body.get("timestamp"), "timestamp", raw.timestamp_ms)
    elif "values" in body:
        values = body["values"]
        if not isinstance(values, dict) or not values:
            raise InvalidMessage("values must be a non-empty object of name: number")
        if len(values) > MAX_FEATURES:
            raise InvalidMessage(f"too many values: {len(values)} (limit {MAX_FEATURES})")
        features = {str(name): _number(value, f"values.{name}") for name, value in values.items()}
        timestamp = _timestamp(body.get("timestamp", body.get("ts")), "timestamp", raw.timestamp_ms)
    else:
        raise InvalidMessage(
            "unrecognized message shape: expected SimulatedTemperatureSensor "
            "(machine/ambient), CMAPSS (CycleTime) or generic (values)"
        )
    return Reading(device_id, timestamp, features, raw)


def _decode_json(value: bytes | None) -> object:
    if not value:
        raise InvalidMessage("empty message")
    try:
        return orjson.loads(value)
    except orjson.JSONDecodeError as exc:
        raise InvalidMessage(_explain_json_error(value, exc)) from None


def _explain_json_error(value: bytes, exc: orjson.JSONDecodeError) -> str:
    try:
        text = value.decode("utf-8")
    except UnicodeDecodeError as uexc:
        return f"not UTF-8: invalid byte at position {uexc.start}"
    if "infinity" in str(exc):
        return "not JSON: a number overflows to infinity"

    def refuse_constant(name: str) -> None:
        raise InvalidMessage(f"not JSON: {name} is not a number JSON allows")

    try:
        json.loads(text, parse_constant=refuse_constant)
    except InvalidMessage:
        raise
    except ValueError:
        pass
    return f"not JSON: {exc}"


def _device_id(key: bytes | None, body: dict, headers: Headers) -> str:
    if key:
        try:
            device_id = key.decode("utf-8")
        except UnicodeDecodeError:
            raise InvalidMessage("Kafka key is not UTF-8") from None
    else:
        device_id = body.get("deviceId") or _iothub_sender(headers)
        if not isinstance(device_id, str):
            raise InvalidMessage("no device id: set the Kafka key or a string deviceId field")
    if not device_id or len(device_id) > MAX_DEVICE_ID_LENGTH or not device_id.isprintable():
        raise InvalidMessage(f"device id must be 1..{MAX_DEVICE_ID_LENGTH} printable characters")
    return device_id


def _iothub_sender(headers: Headers) -> str | None:
    """The device a message names in its properties (``deviceId``), else its IoT Hub sender
    (device, and module), when it came through IoT Hub's Event Hubs-compatible endpoint (its
    system properties become headers)."""
    found = {name: value for name, value in headers if name == "deviceId" or name.startswith("iothub-connection-")}
    if "deviceId" in found:
        return found["deviceId"].decode("utf-8", "replace")
    device = found.get("iothub-connection-device-id")
    if device is None:
        return None
    module = found.get("iothub-connection-module-id")
    return (device + b"/" + module if module else device).decode("utf-8", "replace")


def _field(body: dict, *path: str) -> object:
    node: object = body
    for depth, name in enumerate(path):
        if not isinstance(node, dict):
            raise InvalidMessage(f"{'.'.join(path[:depth])} must be an object")
        if name not in node:
            raise InvalidMessage(f"missing field {'.'.join(path[: depth + 1])}")
        node = node[name]
    return node


def _number(value: object, name: str) -> float:
    kind = type(value)
    if kind is float and -MAX_ABS_VALUE <= value <= MAX_ABS_VALUE:  # fast path; NaN fails the range
        return value
    if kind is int and -MAX_ABS_VALUE <= value <= MAX_ABS_VALUE:
        return float(value)
    # bool is an int in Python, never a reading
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidMessage(f"{name} must be a number, got {_json_type(value)}")
    number = float(value)
    if not math.isfinite(number) or abs(number) > MAX_ABS_VALUE:
        raise InvalidMessage(f"{name} out of range: {value!r} (limit ±{MAX_ABS_VALUE:g})")
    return number


def _json_type(value: object) -> str:
    return {str: "string", bool: "boolean", type(None): "null", list: "array", dict: "object"}.get(
        type(value), type(value).__name__
    )


def _timestamp(value: object, name: str, kafka_timestamp_ms: int | None) -> float:
    """Source time in epoch seconds; the Kafka timestamp when the body has none."""
    if value is None:
        if kafka_timestamp_ms is None:
            raise InvalidMessage(f"missing field {name} and no Kafka timestamp")
        return kafka_timestamp_ms / 1000.0
    if isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value)
        except ValueError:
            raise InvalidMessage(f"{name} is not an ISO-8601 time: {value[:40]!r}") from None
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=UTC)
        return parsed.timestamp()
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value < 1e11:
        raise InvalidMessage(f"{name} must be an ISO-8601 string or epoch seconds, got {value!r:.40}")
    return float(value)


def format_timestamp(seconds: float) -> str:
    """ISO-8601 UTC with microseconds and a ``Z``, as Azure services write it."""
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _source(raw: RawMessage | None) -> dict | None:
    return None if raw is None else {"topic": raw.topic, "partition": raw.partition, "offset": raw.offset}


def labeled_event_json(event: LabeledEvent) -> bytes:
    """The labeled-event JSON written to the out topic (schema in the README): ``explanation`` maps
    each feature to its share of the surprise (shares sum to 1) when ``is_anomaly``, else null."""
    reading = event.reading
    return orjson.dumps(
        {
            "device_id": reading.device_id,
            "timestamp": datetime.fromtimestamp(reading.timestamp, UTC),
            "features": reading.features,
            "score": event.score,
            "is_anomaly": event.is_anomaly,
            "explanation": event.explanation,
            "model": {"name": event.model_name, "version": event.model_version},
            "source": {
                "topic": reading.raw.topic,
                "partition": reading.raw.partition,
                "offset": reading.raw.offset,
            },
        },
        option=orjson.OPT_UTC_Z,
    )


def alarm_event_json(event: AlarmEvent) -> bytes:
    """An alarm raised or cleared (topic ``alarms``).

    >>> raw = RawMessage(b"pump-1", b"", [], "telemetry", 0, 7)
    >>> alarm = AlarmEvent("cleared", "pump-1", 0.0, 90.0, 0.8, {"rpm": 1450.0}, {"rpm": 1.0}, "m", "1", raw)
    >>> alarm_event_json(alarm).decode()[:95]
    '{"event":"cleared","device_id":"pump-1","start":"1970-01-01T00:00:00Z","end":"1970-01-01T00:01:'
    """
    return orjson.dumps(
        {
            "event": event.kind,
            "device_id": event.device_id,
            "start": datetime.fromtimestamp(event.start, UTC),
            "end": None if event.end is None else datetime.fromtimestamp(event.end, UTC),
            "duration_seconds": event.duration_seconds,
            "peak_score": event.peak_score,
            "features": event.features,
            "explanation": event.explanation,
            "model": {"name": event.model_name, "version": event.model_version},
            "source": _source(event.raw),
        },
        option=orjson.OPT_UTC_Z,
    )


def drift_event_json(event: DriftEvent) -> bytes:
    """A new normal accepted (topic ``drift``); ``source`` is null when an operator accepted it."""
    return orjson.dumps(
        {
            "device_id": event.device_id,
            "timestamp": datetime.fromtimestamp(event.timestamp, UTC),
            "features": event.features,
            "level_before": event.level_before,
            "level_after": event.level_after,
            "reason": event.reason,
            "model": {"name": event.model_name, "version": event.model_version},
            "source": _source(event.raw),
        },
        option=orjson.OPT_UTC_Z,
    )


def dead_letter_headers(dead: DeadLetter) -> Headers:
    """The original headers plus the reason and where the message came from."""
    src = dead.raw
    return [
        *dead.raw.headers,
        ("edgewatch.error.reason", dead.reason.encode()),
        ("edgewatch.error.stage", dead.stage.encode()),
        ("edgewatch.error.topic", src.topic.encode()),
        ("edgewatch.error.partition", str(src.partition).encode()),
        ("edgewatch.error.offset", str(src.offset).encode()),
    ]
