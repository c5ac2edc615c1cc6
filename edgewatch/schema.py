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

The device id is the Kafka key, else the body's ``deviceId`` field, else the message's
``deviceId`` header (IoT Hub application property) or IoT Hub sender headers.

What is refused, before or while decoding (each with a one-line reason in the dead letter):

* messages over :data:`MAX_MESSAGE_BYTES`, or nested deeper than :data:`MAX_NESTING` (a byte
  scan before any decoder runs: deep nesting makes decoders recurse);
* anything that is not one UTF-8 JSON object; duplicate keys (JSON decoders keep the last one
  silently, so two senders' ideas of a field would be merged);
* a device id that is not 1..256 printable UTF-8 characters (key, body or header: never replaced
  with U+FFFD, which would merge unrelated senders);
* a time outside :data:`EARLIEST_TIME` (1990-01-01) .. now + :data:`FUTURE_TOLERANCE` (one day):
  old enough for replays of recordings years old (NAB 2013-2015, SKAB 2020), strict enough to
  refuse unset clocks (1970, .NET ``DateTime.MinValue`` 0001-01-01, ``MaxValue`` 9999-12-31) and
  epoch milliseconds sent as seconds; one day ahead absorbs clock skew and a local time
  mislabeled as UTC (at most 14 h). ISO-8601 times must have a calendar date and a time of day
  (``YYYY-MM-DD[T ]HH:MM...``; week dates and date-only strings are refused);
* an explicit ``"timeCreated": null`` (or ``"timestamp": null``): the sender says it has no
  time, and the Kafka time (when the broker got it, possibly hours later for a backlog) would
  silently stand in for it. A body *without* the field uses the Kafka timestamp (checked
  against the same window).

Nothing raises out of :func:`parse_message`: any other exception (a decoder's
``RecursionError`` or ``MemoryError``, a bug) becomes a dead letter naming it.
"""

from __future__ import annotations

import hashlib
import json
import math
import operator
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from itertools import chain, repeat
from typing import NamedTuple

import msgspec
import numpy as np
import orjson

#: Readings beyond this magnitude are refused: no industrial sensor reports them, and
#: they would poison every running statistic they touch.
MAX_ABS_VALUE = 1e9
MAX_DEVICE_ID_LENGTH = 256
MAX_FEATURE_NAME_LENGTH = 128
MAX_FEATURES = 64
#: Largest message parsed: telemetry bodies are ~150 B, a generic one with 64 features < 4 KB.
MAX_MESSAGE_BYTES = 64 * 1024
#: Deepest nesting of JSON arrays and objects parsed (telemetry needs 2 or 3).
MAX_NESTING = 32
#: Earliest plausible source time: 1990-01-01T00:00:00Z (epoch seconds).
EARLIEST_TIME = 631_152_000.0
#: How far past the wall clock a source time may be (clock skew, local time sent as UTC).
FUTURE_TOLERANCE = 86_400.0
#: Largest dead-letter record produced (librdkafka's default ``message.max.bytes``; the
#: broker's default limit is a little higher): larger ones are truncated, see :func:`dead_letter_record`.
DEAD_LETTER_MAX_BYTES = 1_000_000
#: Longest reason written into a dead letter.
MAX_REASON_LENGTH = 500

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

    ``score`` is how abnormal this reading is (0..1, the detector's threshold marks abnormal);
    ``is_anomaly`` is the device's alarm state at this reading; ``explanation`` names the
    features that drove the score, with their shares (summing to 1), when the reading is abnormal.
    ``detection`` (not sent) is the score debounced, where the detector debounces in an alarm
    layer: 0 for a reading that adds nothing to the evidence the device showed just before (a
    fault's every reading after the one that raised the alarm, unless it grows). Benchmarks that
    count detections (NAB, SKAB's changepoints) take it; ``None``: the same as ``score``.
    """

    reading: Reading
    score: float
    is_anomaly: bool
    model_name: str
    model_version: str
    explanation: dict[str, float] | None = None
    detection: float | None = None

    @property
    def detection_score(self) -> float:
        """The score as a detection (``detection``, or ``score`` where the detector has none)."""
        return self.score if self.detection is None else self.detection


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
        return DeadLetter(raw, _clip(str(exc)))
    except RecursionError:  # the nesting scan should make this impossible; keep the flow alive anyway
        return DeadLetter(raw, "not JSON: nested too deeply to decode")
    except MemoryError:
        return DeadLetter(raw, f"out of memory decoding a {_size(raw.value)}-byte message")
    except Exception as exc:  # one message must never stop the flow: a parser bug costs that message only
        return DeadLetter(raw, _clip(f"cannot parse: {type(exc).__name__}: {exc}"))


def _clip(reason: str) -> str:
    return reason if len(reason) <= MAX_REASON_LENGTH else reason[: MAX_REASON_LENGTH - 1] + "…"


def _size(value: object) -> int:
    return len(value) if isinstance(value, bytes | bytearray) else 0


def parse_batch(raws: list[RawMessage]) -> tuple[list[Reading], list[DeadLetter]]:
    """Parse a batch, keeping the order of the good and of the bad messages: the same result as
    :func:`parse_message` on each, with the well-formed SimulatedTemperatureSensor bodies decoded
    together (:func:`_parse_simulated_batch`) and well-formed CMAPSS rows in one typed decode each
    (:func:`_parse_cmapss_row`), and flat generic bodies likewise (:func:`_parse_generic`)."""
    fast, missed = _parse_simulated_batch(raws)
    if not missed:
        return fast, []
    readings: list[Reading] = []
    dead: list[DeadLetter] = []
    latest = time.time() + FUTURE_TOLERANCE  # once per batch: a batch spans milliseconds
    for raw, parsed in zip(raws, fast, strict=True):
        if parsed is None:
            parsed = _parse_cmapss_row(raw, latest) or _parse_generic(raw, latest) or parse_message(raw)
        (readings if type(parsed) is Reading else dead).append(parsed)
    return readings, dead


class _Machine(msgspec.Struct, gc=False):
    temperature: float
    pressure: float


class _Ambient(msgspec.Struct, gc=False):
    temperature: float
    humidity: float


class _SimulatedSensorBody(msgspec.Struct, gc=False):
    machine: _Machine
    ambient: _Ambient
    # the module's field names; an explicit null is told from a missing field by the colon count
    timeCreated: str | None = None
    deviceId: str | None = None


_SIMULATED_SENSOR = msgspec.json.Decoder(_SimulatedSensorBody)


_SIMULATED_SENSOR_LIST = msgspec.json.Decoder(list[_SimulatedSensorBody])
_SIMULATED_SENSOR_PREFIX = b'{"machine"'
_STARTS_AS_SENSOR = operator.methodcaller("startswith", _SIMULATED_SENSOR_PREFIX)
_VALUE = operator.attrgetter("value")
#: Kafka keys already checked as device ids (UTF-8, printable, not too long): most batches
#: repeat the same devices
_DEVICE_IDS: dict[bytes, str] = {}
_DEVICE_IDS_KEPT = 65_536


def _parse_simulated_batch(raws: list[RawMessage]) -> tuple[list, int]:
    """The batch's well-formed SimulatedTemperatureSensor bodies as :func:`_parse_simulated_sensor`
    reads them, in one typed decode of all of them (a JSON array of the bodies): ``(one Reading or
    None per message, how many None)``; None leaves the message to :func:`parse_message`.

    The checks of the one-message path hold for the whole array: no escapes; each body starts
    with ``{"machine"``, so the array's items are the messages (that substring cannot occur inside
    a body of the expected shape, nor in a string without escapes); and the colons of the array
    are exactly those of the bodies' known keys and strings, so no body has an unknown, duplicate
    or null key. When the array fails any of them, each message goes its own way."""
    values = list(map(_VALUE, raws))
    if values and set(map(type, values)) == {bytes} and all(map(_STARTS_AS_SENSOR, values)):
        shaped = None  # every message (checked in C loops: most batches are all of this shape)
    else:
        prefix = _SIMULATED_SENSOR_PREFIX
        shaped = [type(value) is bytes and value.startswith(prefix) for value in values]
    if shaped is None and max(map(len, values)) <= MAX_MESSAGE_BYTES:
        candidates = raws
    else:
        if shaped is None:
            shaped = [True] * len(raws)
        shaped = [ok and len(value) <= MAX_MESSAGE_BYTES for ok, value in zip(shaped, values, strict=True)]
        candidates = [raw for raw, ok in zip(raws, shaped, strict=True) if ok]
    misses = [None] * len(raws)
    if not candidates:
        return misses, len(raws)
    joined = b"[" + b",".join(values if candidates is raws else map(_VALUE, candidates)) + b"]"
    if b"\\" in joined:
        return misses, len(raws)
    try:
        bodies = _SIMULATED_SENSOR_LIST.decode(joined)
    except Exception:  # one body of another shape: each message goes its own way
        return misses, len(raws)
    if len(bodies) != len(candidates):
        return misses, len(raws)
    latest = time.time() + FUTURE_TOLERANCE  # once per batch: a batch spans milliseconds
    device_ids, stamps = _DEVICE_IDS, {}
    colons = 6 * len(bodies)
    found: list[Reading | None] = []
    missed = 0
    for raw, body in zip(candidates, bodies, strict=True):
        created, device = body.timeCreated, body.deviceId
        if device is not None:
            colons += 1 + device.count(":")
        machine, ambient = body.machine, body.ambient
        temperature, pressure = machine.temperature, machine.pressure
        ambient_temperature, humidity = ambient.temperature, ambient.humidity
        key = raw.key
        device_id = device_ids.get(key) if key else None
        if device_id is None and key:
            device_id = _key_device_id(key)
        timestamp = None
        if created is not None:
            stamp = stamps.get(created)
            if stamp is None:  # the time (0.0: refused below) and the colons of its key and string
                stamp = stamps[created] = (_iso_seconds(created) or 0.0, 1 + created.count(":"))
            timestamp = stamp[0]
            colons += stamp[1]
        if (
            device_id is None
            or timestamp is None
            or not EARLIEST_TIME <= timestamp <= latest
            or not (
                -MAX_ABS_VALUE <= temperature <= MAX_ABS_VALUE
                and -MAX_ABS_VALUE <= pressure <= MAX_ABS_VALUE
                and -MAX_ABS_VALUE <= ambient_temperature <= MAX_ABS_VALUE
                and -MAX_ABS_VALUE <= humidity <= MAX_ABS_VALUE
            )
        ):  # no key, no time, a key or time refused, a value out of range: the one-message path says
            found.append(None)
            missed += 1
            continue
        features = {
            "machine.temperature": temperature,
            "machine.pressure": pressure,
            "ambient.temperature": ambient_temperature,
            "ambient.humidity": humidity,
        }
        found.append(Reading(device_id, timestamp, features, raw))
    if joined.count(b":") != colons:
        return misses, len(raws)
    if candidates is raws:
        return found, missed
    readings = iter(found)
    return [next(readings) if ok else None for ok in shaped], missed + len(raws) - len(candidates)


#: A CMAPSS row as :func:`~edgewatch.connectors.files.read_cmapss` writes it: every field a number,
#: no other field (an unknown, a null or a string one: the one-message path decides)
_CmapssRow = msgspec.defstruct(
    "_CmapssRow",
    [
        ("CycleTime", float),
        *((name, float) for name in CMAPSS_FEATURES),
        ("timestamp", float | msgspec.UnsetType, msgspec.UNSET),
    ],
    forbid_unknown_fields=True,
    gc=False,
)
_CMAPSS_ROW = msgspec.json.Decoder(_CmapssRow)
_CMAPSS_PREFIX = b'{"CycleTime"'
_CMAPSS_COLONS = 1 + len(CMAPSS_FEATURES)


def _parse_cmapss_row(raw: RawMessage, latest: float) -> Reading | None:
    """A well-formed CMAPSS row in one typed decode (C), read as :func:`_parse` reads it; ``None``
    for anything else (``latest``: the newest plausible time), left to :func:`parse_message`.

    The typed decode takes numbers only and no unknown field, so the bytes' colons (no escapes) are
    exactly those of the keys: one more than the fields decoded means a duplicate key."""
    value = raw.value
    if type(value) is not bytes or not value.startswith(_CMAPSS_PREFIX) or len(value) > MAX_MESSAGE_BYTES:
        return None
    if b"\\" in value:
        return None
    try:
        row = _CMAPSS_ROW.decode(value)
    except Exception:  # another shape, a null, a string, not UTF-8: the one-message path says
        return None
    fields = msgspec.structs.astuple(row)
    stamp = fields[-1]
    if value.count(b":") != _CMAPSS_COLONS + (stamp is not msgspec.UNSET):
        return None
    numbers = fields[:-1]
    if not (min(numbers) >= -MAX_ABS_VALUE and max(numbers) <= MAX_ABS_VALUE):  # inf: out of range
        return None
    key = raw.key
    if not key:  # the body has no deviceId: the headers name the device, the one-message path reads them
        return None
    device_id = _DEVICE_IDS.get(key) or _key_device_id(key)
    if device_id is None:
        return None
    if stamp is msgspec.UNSET:
        if raw.timestamp_ms is None:
            return None
        stamp = raw.timestamp_ms / 1000.0
    if not EARLIEST_TIME <= stamp <= latest:
        return None
    return Reading(device_id, stamp, dict(zip(CMAPSS_FEATURES, numbers[1:], strict=True)), raw)


class _GenericBody(msgspec.Struct, forbid_unknown_fields=True, gc=False):
    """A generic body of numbers (``ts`` and the others: the one-message path)."""

    values: dict[str, float]
    timestamp: float | str | msgspec.UnsetType = msgspec.UNSET
    deviceId: str | msgspec.UnsetType = msgspec.UNSET


_GENERIC = msgspec.json.Decoder(_GenericBody)


def _parse_generic(raw: RawMessage, latest: float) -> Reading | None:
    """A well-formed generic body (``values`` of numbers, keyed by device) in one typed decode (C),
    read as :func:`_parse` reads it; ``None`` for anything else, left to :func:`parse_message`.

    Without escapes, the bytes' colons are those of the keys and those inside the strings: any
    other count means a duplicate key (the decoder keeps the last one)."""
    value = raw.value
    key = raw.key
    if not key or type(value) is not bytes or b'"values"' not in value or len(value) > MAX_MESSAGE_BYTES:
        return None
    if b"\\" in value:
        return None
    try:
        body = _GENERIC.decode(value)
    except Exception:  # another shape, a null, not UTF-8, a number out of range: the one-message path says
        return None
    values, stamp, device = body.values, body.timestamp, body.deviceId
    if not values or len(values) > MAX_FEATURES:
        return None
    colons = 1 + len(values)
    for name in values:
        if not name or len(name) > MAX_FEATURE_NAME_LENGTH or not name.isprintable():
            return None
        colons += name.count(":")
    if device is not msgspec.UNSET:
        colons += 1 + device.count(":")
    if stamp is msgspec.UNSET:
        if raw.timestamp_ms is None:
            return None
        stamp = raw.timestamp_ms / 1000.0
    else:
        if type(stamp) is str:
            colons += stamp.count(":")
            stamp = _iso_seconds(stamp)
            if stamp is None:
                return None
        colons += 1
    if value.count(b":") != colons or not EARLIEST_TIME <= stamp <= latest:
        return None
    numbers = values.values()
    if not (min(numbers) >= -MAX_ABS_VALUE and max(numbers) <= MAX_ABS_VALUE):  # inf: out of range
        return None
    device_id = _DEVICE_IDS.get(key) or _key_device_id(key)
    if device_id is None:
        return None
    return Reading(device_id, stamp, values, raw)


def _key_device_id(key: bytes) -> str | None:
    """A Kafka key as a device id (remembered), or None when it is not one."""
    try:
        device_id = key.decode("utf-8")
    except UnicodeDecodeError:
        return None
    if not device_id or len(device_id) > MAX_DEVICE_ID_LENGTH or not device_id.isprintable():
        return None
    if len(_DEVICE_IDS) >= _DEVICE_IDS_KEPT:
        _DEVICE_IDS.clear()
    _DEVICE_IDS[key] = device_id
    return device_id


def _parse_simulated_sensor(raw: RawMessage) -> Reading | None:
    """The common case in one typed decode (C): a well-formed SimulatedTemperatureSensor body.
    ``None`` for anything else, which the general parser then explains or handles."""
    value = raw.value
    # not this shape as the module writes it (a failed typed decode costs an exception), or
    # escapes (left, with the duplicate-key check they need, to the general path)
    if not value.startswith(b'{"machine"') or b"\\" in value:
        return None
    try:
        body = _SIMULATED_SENSOR.decode(value)
    except Exception:  # DecodeError, or UnicodeDecodeError for a string that is not UTF-8
        return None
    created, device = body.timeCreated, body.deviceId
    # one ':' per key (6 fields, and the optional ones) plus those inside the strings: any other
    # count means duplicate, unknown or null keys, which the general path refuses or accepts
    colons = 6
    if created is not None:
        colons += 1 + created.count(":")
    if device is not None:
        colons += 1 + device.count(":")
    if value.count(b":") != colons:
        return None
    machine, ambient = body.machine, body.ambient
    values = (machine.temperature, machine.pressure, ambient.temperature, ambient.humidity)
    if not (min(values) >= -MAX_ABS_VALUE and max(values) <= MAX_ABS_VALUE):  # JSON numbers: never NaN
        return None
    if raw.key:
        try:
            device_id = raw.key.decode("utf-8")
        except UnicodeDecodeError:
            return None
    elif device is not None:
        device_id = device
    else:
        device_id = _iothub_sender(raw.headers)
    if not device_id or len(device_id) > MAX_DEVICE_ID_LENGTH or not device_id.isprintable():
        return None
    if created is None:
        if raw.timestamp_ms is None:
            return None
        timestamp = raw.timestamp_ms / 1000.0
    else:
        timestamp = _iso_seconds(created)
    if timestamp is None or not EARLIEST_TIME <= timestamp <= time.time() + FUTURE_TOLERANCE:
        return None
    features = {
        "machine.temperature": values[0],
        "machine.pressure": values[1],
        "ambient.temperature": values[2],
        "ambient.humidity": values[3],
    }
    return Reading(device_id, timestamp, features, raw)


def _parse(raw: RawMessage) -> Reading:
    value = raw.value
    if not value:
        raise InvalidMessage("empty message")
    if not isinstance(value, bytes):
        raise InvalidMessage(f"message value must be bytes, got {type(value).__name__}")
    if len(value) > MAX_MESSAGE_BYTES:
        raise InvalidMessage(f"message too large: {len(value)} bytes (limit {MAX_MESSAGE_BYTES})")
    # the typed decoder is safe to try first: it raises (no crash) on deep nesting, and only
    # accepts a body of exactly the expected fields
    fast = _parse_simulated_sensor(raw)
    if fast is not None:
        return fast
    _check_nesting(value)
    body = _decode_json(value)
    if not isinstance(body, dict):
        raise InvalidMessage(f"not a JSON object: got {_json_type(body)}")
    _refuse_duplicate_keys(value, body)
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
        timestamp = _body_time(body, ("timeCreated",), raw.timestamp_ms)
    elif "CycleTime" in body:
        _number(body["CycleTime"], "CycleTime")
        features = {name: _number(_field(body, name), name) for name in CMAPSS_FEATURES}
        timestamp = _body_time(body, ("timestamp",), raw.timestamp_ms)
    elif "values" in body:
        values = body["values"]
        if not isinstance(values, dict) or not values:
            raise InvalidMessage("values must be a non-empty object of name: number")
        if len(values) > MAX_FEATURES:
            raise InvalidMessage(f"too many values: {len(values)} (limit {MAX_FEATURES})")
        features = {_feature_name(name): _number(value, f"values.{name}") for name, value in values.items()}
        timestamp = _body_time(body, ("timestamp", "ts"), raw.timestamp_ms)
    else:
        raise InvalidMessage(
            "unrecognized message shape: expected SimulatedTemperatureSensor "
            "(machine/ambient), CMAPSS (CycleTime) or generic (values)"
        )
    return Reading(device_id, timestamp, features, raw)


# +1 for an opening bracket, -1 for a closing one, 0 for any other byte
_BRACKET_STEP = np.zeros(256, dtype=np.int32)
_BRACKET_STEP[[ord("["), ord("{")]] = 1
_BRACKET_STEP[[ord("]"), ord("}")]] = -1
_QUOTE, _BACKSLASH = ord('"'), ord("\\")


def _check_nesting(value: bytes) -> None:
    """Refuse a message nested too deeply before a recursive decoder sees it."""
    # the depth is at most the number of opening brackets: the exact scan only runs past the limit
    if value.count(b"[") + value.count(b"{") > MAX_NESTING:
        depth = nesting_depth(value)
        if depth > MAX_NESTING:
            raise InvalidMessage(f"not JSON: nested {depth} levels deep (limit {MAX_NESTING})")


def nesting_depth(value: bytes) -> int:
    """Deepest nesting of JSON arrays and objects in ``value``, brackets inside strings ignored.

    Linear numpy passes, no decoding: a quote is a string delimiter unless an odd run of
    backslashes precedes it; brackets count where an even number of delimiters precede them.
    Exact for JSON up to its first syntax error (where every decoder stops).

    >>> nesting_depth(b'{"a": [1, {"b": "[[[["}]}')
    3
    """
    codes = np.frombuffer(value, dtype=np.uint8)
    index = np.arange(len(codes))
    # for each byte, the length of the run of backslashes right before it
    last_other = np.maximum.accumulate(np.where(codes != _BACKSLASH, index, -1))
    run_before = np.empty(len(codes), dtype=np.int64)
    run_before[0] = 0
    run_before[1:] = index[:-1] - last_other[:-1]
    delimiters = np.cumsum((codes == _QUOTE) & (run_before % 2 == 0))
    steps = np.where(delimiters % 2 == 0, _BRACKET_STEP[codes], 0)
    return int(np.cumsum(steps).max(initial=0))


def _refuse_duplicate_keys(value: bytes, body: dict) -> None:
    """Refuse an object with a key twice (decoders keep the last one silently).

    Cheap in the usual case: without backslashes in the bytes, every ``:`` of the message is
    a key's or one inside a string, and the decoded body re-encoded keeps both kinds, so
    fewer colons after re-encoding means keys were lost. Otherwise (escapes, or numbers
    orjson cannot re-encode) the keys are checked one by one."""
    if b"\\" not in value:
        try:
            if orjson.dumps(body).count(b":") == value.count(b":"):
                return
        except orjson.JSONEncodeError:
            pass
    duplicate = _first_duplicate_key(value)
    if duplicate is not None:
        raise InvalidMessage(f"not JSON: duplicate key {duplicate[:60]!r} in an object")


def _first_duplicate_key(value: bytes) -> str | None:
    found: list[str] = []

    def pairs(items: list[tuple[str, object]]) -> dict:
        if not found and len({key for key, _ in items}) != len(items):
            seen: set[str] = set()
            found.append(next(key for key, _ in items if key in seen or seen.add(key)))
        return dict(items)

    try:
        json.loads(value, object_pairs_hook=pairs)
    except ValueError as exc:  # e.g. an integer beyond Python's digit limit, which orjson read as a float
        raise InvalidMessage(f"not JSON: {exc}") from None
    return found[0] if found else None


def _decode_json(value: bytes) -> object:
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
        return _header_text(found, "deviceId")
    device = _header_text(found, "iothub-connection-device-id")
    if device is None:
        return None
    module = _header_text(found, "iothub-connection-module-id")
    return f"{device}/{module}" if module else device


def _header_text(headers: dict[str, bytes | None], name: str) -> str | None:
    """A header's UTF-8 text; a header that is not UTF-8 is refused, never patched with U+FFFD
    (unrelated senders would become one device)."""
    value = headers.get(name)
    if value is None:
        return None
    try:
        return bytes(value).decode("utf-8")
    except (UnicodeDecodeError, TypeError):
        raise InvalidMessage(f"header {name} is not UTF-8") from None


def _feature_name(name: str) -> str:
    if not name or len(name) > MAX_FEATURE_NAME_LENGTH or not name.isprintable():
        raise InvalidMessage(
            f"feature names must be 1..{MAX_FEATURE_NAME_LENGTH} printable characters, got {name[:40]!r}"
        )
    return name


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


def _body_time(body: dict, names: tuple[str, ...], kafka_timestamp_ms: int | None) -> float:
    """Source time in epoch seconds from the first of ``names`` in the body; the Kafka
    timestamp when the body has none of them (an explicit null is refused)."""
    for name in names:
        if name in body:
            value = body[name]
            if value is None:
                raise InvalidMessage(
                    f"{name} is null: send the source time, or leave the field out to use the Kafka timestamp"
                )
            return _timestamp(value, name)
    if kafka_timestamp_ms is None:
        raise InvalidMessage(f"missing field {names[0]} and no Kafka timestamp")
    seconds = kafka_timestamp_ms / 1000.0
    if not EARLIEST_TIME <= seconds <= time.time() + FUTURE_TOLERANCE:
        raise InvalidMessage(f"no {names[0]} in the body and the Kafka timestamp {kafka_timestamp_ms} ms {_window()}")
    return seconds


def _timestamp(value: object, name: str) -> float:
    """A body's time (ISO-8601 or epoch seconds) in epoch seconds, inside the plausible window."""
    latest = time.time() + FUTURE_TOLERANCE
    kind = type(value)
    if (kind is float or kind is int) and EARLIEST_TIME <= value <= latest:  # the common case, in one test
        return float(value)
    if isinstance(value, str):
        seconds = _iso_seconds(value)
        if seconds is None:
            raise InvalidMessage(
                f"{name} is not an ISO-8601 time (date and time of day, YYYY-MM-DDTHH:MM...): {value[:40]!r}"
            )
        if not EARLIEST_TIME <= seconds <= latest:
            raise InvalidMessage(f"{name} {value[:40]!r} {_window()}")
        return seconds
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidMessage(f"{name} must be an ISO-8601 string or epoch seconds, got {_json_type(value)}")
    seconds = float(value)
    if EARLIEST_TIME <= seconds <= latest:
        return seconds
    if EARLIEST_TIME * 1000 <= seconds <= latest * 1000:
        raise InvalidMessage(
            f"{name} {value!r:.20} is not epoch seconds in the plausible window "
            f"{EARLIEST_TIME:.0f}..{latest:.0f}; it looks like epoch milliseconds: send seconds"
        )
    raise InvalidMessage(f"{name} {value!r:.20} (epoch seconds, limits {EARLIEST_TIME:.0f}..{latest:.0f}) {_window()}")


def _window() -> str:
    def iso(seconds: float) -> str:
        return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")

    latest = iso(time.time() + FUTURE_TOLERANCE)
    return f"is outside the plausible window {iso(EARLIEST_TIME)} .. now + 1 day ({latest})"


def _iso_seconds(text: str) -> float | None:
    """Epoch seconds of an ISO-8601 date and time (naive = UTC); None when it is not one.

    A calendar date and a time of day are required (``YYYY-MM-DD[T ]HH:MM``...): Python
    also reads week dates and bare dates, which no telemetry sender means."""
    if len(text) < 16 or text[4] != "-" or text[7] != "-" or text[10] not in "Tt " or text[13] != ":":
        return None
    try:
        return parse_iso_utc(text).timestamp()
    except (ValueError, OverflowError):
        return None


def parse_iso_utc(text: str) -> datetime:
    """An ISO-8601 time; one without a zone is UTC (as Azure services and most devices mean it).

    >>> parse_iso_utc("2026-11-23T01:05:00.1234567Z").isoformat()
    '2026-11-23T01:05:00.123456+00:00'
    >>> parse_iso_utc("2026-11-23 01:05").tzinfo
    datetime.timezone.utc
    """
    parsed = datetime.fromisoformat(text)
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def format_timestamp(seconds: float) -> str:
    """ISO-8601 UTC with microseconds and a ``Z``, as Azure services write it."""
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _utc_datetime(seconds: float) -> datetime | None:
    """The time as a UTC datetime, or None beyond what a datetime holds (years 1..9999, finite):
    a serializer must not raise on a reading made without :func:`parse_message`."""
    try:
        return datetime.fromtimestamp(seconds, UTC)
    except (ValueError, OverflowError, OSError):
        return None


def _source(raw: RawMessage | None) -> dict | None:
    return None if raw is None else {"topic": raw.topic, "partition": raw.partition, "offset": raw.offset}


def labeled_event_json(event: LabeledEvent) -> bytes:
    """The labeled-event JSON written to the out topic (schema in the README): ``explanation`` maps
    each feature to its share of the evidence (shares sum to 1; docs/architecture.md, "Explanations")
    when ``is_anomaly``, else null."""
    reading = event.reading
    return orjson.dumps(
        {
            "device_id": reading.device_id,
            "timestamp": _utc_datetime(reading.timestamp),
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


def labeled_event_lines(events: list[LabeledEvent]) -> list[bytes]:
    """:func:`labeled_event_json` of each event, byte for byte, for a batch (what the flow's sinks
    write).

    The batch is serialized column by column, in C loops, and each line put together by one
    ``bytes %`` template. The parts events share (device, time, model, topic) are serialized once
    per distinct value; the others by one orjson call per column, a JSON array then split into
    its items: the scores, flags and source numbers at the commas, the feature objects at
    ``},{`` (an object's items are then the template's). A split that does not give one item per
    event means an item holding the separator: that column is serialized event by event. A batch
    with shared parts of unusual types (not made by the flow) goes through
    :func:`labeled_event_json`, event by event."""
    if not events:
        return []
    count = len(events)
    readings = list(map(_READING, events))
    raws = list(map(_RAW, readings))
    device_ids, seconds = list(map(_DEVICE_ID, readings)), list(map(_TIMESTAMP, readings))
    topics = list(map(_TOPIC, raws))
    models = list(zip(map(_MODEL_NAME, events), map(_MODEL_VERSION, events), strict=True))
    distinct_devices, distinct_models, distinct_topics = set(device_ids), set(models), set(topics)
    if not _only_str(distinct_devices, distinct_topics, chain.from_iterable(distinct_models)):
        # a dict of JSON per value would take 1 and True for one another: the one-event path
        return list(map(labeled_event_json, events))
    dumps = orjson.dumps
    devices = _JSON_DEVICES
    new_devices = distinct_devices.difference(devices)
    if len(devices) + len(new_devices) > 100_000:  # bounded
        devices.clear()
        new_devices = distinct_devices
    devices.update(zip(new_devices, map(dumps, new_devices), strict=True))
    stamps = {second: dumps(_utc_datetime(second), option=orjson.OPT_UTC_Z) for second in set(seconds)}
    model_json = {model: dumps({"name": model[0], "version": model[1]}) for model in distinct_models}
    topic_json = {topic: dumps(topic) for topic in distinct_topics}
    features = list(map(_FEATURES, readings))
    # (dicts only: any other value between two would hide a boundary)
    feature_objects = _json_split(features, b"},{", 2) if set(map(type, features)) == {dict} else None
    explanations = list(map(_EXPLANATION, events))
    numbers = list(map(_SCORE, events)) + list(map(_IS_ANOMALY, events))
    numbers += list(map(_PARTITION, raws)) + list(map(_OFFSET, raws))
    number_items = _json_split(numbers, b",", 1)
    if number_items is None:
        number_items = list(map(dumps, numbers))
    if explanations.count(None) == count:  # as a rule: no abnormal reading in the batch
        explained = repeat(b"null")
    else:
        explained = [b"null" if explanation is None else dumps(explanation) for explanation in explanations]
    columns = zip(
        map(devices.get, device_ids),  # (``get``, a fast call, where ``__getitem__`` is a slow one)
        map(stamps.get, seconds),
        map(dumps, features) if feature_objects is None else feature_objects,
        number_items[:count],
        number_items[count : 2 * count],
        explained,
        _each(model_json, models),
        _each(topic_json, topics),
        number_items[2 * count : 3 * count],
        number_items[3 * count :],
        strict=False,  # repeat(): endless
    )
    template = _LABELED_TEMPLATE if feature_objects is None else _LABELED_TEMPLATE_OBJECTS
    return list(map(template.__mod__, columns))


def _json_split(values: list, separator: bytes, edge: int) -> list[bytes] | None:
    """Each value's JSON (as orjson writes it inside an object, less ``edge`` bytes each side for a
    ``},{`` split) from one call; None when a value's JSON holds the separator or orjson refuses one."""
    try:
        parts = orjson.dumps(values)[edge:-edge].split(separator)
    except TypeError:
        return None
    return parts if len(parts) == len(values) else None


def _each(json_of: dict, values: list):
    """The JSON of each value, from ``json_of`` (one value, as a rule: repeated)."""
    return repeat(next(iter(json_of.values()))) if len(json_of) == 1 else map(json_of.get, values)


def _only_str(*groups) -> bool:
    """Whether every value of the groups is a ``str``."""
    return set(map(type, chain(*groups))) <= {str}


_READING = operator.attrgetter("reading")
_RAW = operator.attrgetter("raw")
_TIMESTAMP = operator.attrgetter("timestamp")
_DEVICE_ID = operator.attrgetter("device_id")
_FEATURES = operator.attrgetter("features")
_MODEL_NAME = operator.attrgetter("model_name")
_MODEL_VERSION = operator.attrgetter("model_version")
_TOPIC = operator.attrgetter("topic")
_PARTITION = operator.attrgetter("partition")
_OFFSET = operator.attrgetter("offset")
_SCORE = operator.attrgetter("score")
_IS_ANOMALY = operator.attrgetter("is_anomaly")
_EXPLANATION = operator.attrgetter("explanation")
#: the labeled-event JSON as ``bytes %`` templates: with the features object, or with its items
_LABELED_TEMPLATE = (
    b'{"device_id":%b,"timestamp":%b,"features":%b,"score":%b,"is_anomaly":%b,"explanation":%b,'
    b'"model":%b,"source":{"topic":%b,"partition":%b,"offset":%b}}'
)
_LABELED_TEMPLATE_OBJECTS = _LABELED_TEMPLATE.replace(b'"features":%b', b'"features":{%b}')
_JSON_DEVICES: dict[str, bytes] = {}  # device id → its JSON string (bounded)


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
            "start": _utc_datetime(event.start),
            "end": None if event.end is None else _utc_datetime(event.end),
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
            "timestamp": _utc_datetime(event.timestamp),
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
    """The original headers plus the reason and where the message came from.

    Input headers named ``edgewatch.error.*`` are renamed ``original.edgewatch.error.*``: a
    sender cannot put a reason of its own in front of the real one."""
    src = dead.raw
    return [
        *forwarded_headers(src.headers),
        (_ERROR + "reason", _clip(dead.reason).encode("utf-8", "backslashreplace")),
        (_ERROR + "stage", dead.stage.encode()),
        (_ERROR + "topic", str(src.topic).encode("utf-8", "backslashreplace")),
        (_ERROR + "partition", str(src.partition).encode()),
        (_ERROR + "offset", str(src.offset).encode()),
    ]


_ERROR = "edgewatch.error."
_ORIGINAL = "original."


def forwarded_headers(headers: Headers) -> Headers:
    """Input headers as edgewatch passes them on: ``edgewatch.error.*`` ones renamed
    ``original.edgewatch.error.*``, so only edgewatch's own mark a message as a dead letter.

    >>> forwarded_headers([("edgewatch.error.reason", b"SPOOFED"), ("trace", b"t1")])
    [('original.edgewatch.error.reason', b'SPOOFED'), ('trace', b't1')]
    """
    for name, _ in headers:  # a loop, not any(): this runs for every labeled event
        if name.startswith(_ERROR):
            return [(_ORIGINAL + name if name.startswith(_ERROR) else name, value) for name, value in headers]
    return headers


#: Bytes a Kafka record needs beyond its key, value and headers (lengths, attributes, batch
#: header), counted generously so a record within the limit is always accepted.
_RECORD_OVERHEAD = 128
_HEADER_OVERHEAD = 10
_KEPT_KEY_BYTES = 1024
_KEPT_HEADER_BYTES = 16 * 1024


def dead_letter_record(
    dead: DeadLetter, max_bytes: int = DEAD_LETTER_MAX_BYTES
) -> tuple[bytes | None, bytes | None, Headers]:
    """The dead letter's Kafka record ``(key, value, headers)``, at most ``max_bytes`` in all.

    A record too large for the broker (``message.max.bytes``: 1 MB by default) would make
    the producer fail, and the flow with it; it is stored truncated instead, never dropped:
    the value (then a key over 1 KiB, then original headers beyond 16 KiB) is cut, and
    ``edgewatch.error.truncated`` plus ``edgewatch.error.original_size`` /
    ``original_sha256`` (and ``original_key_size`` / ``original_key_sha256``,
    ``dropped_headers``) say what the original was, so it can be recognized in the source.

    >>> raw = RawMessage(b"m1", b"x" * 5000, [], "telemetry", 0, 7)
    >>> key, value, headers = dead_letter_record(DeadLetter(raw, "not JSON"), max_bytes=2048)
    >>> len(value) < 2048, dict(headers)["edgewatch.error.original_size"]
    (True, b'5000')
    """
    raw = dead.raw
    key, value = raw.key, raw.value
    headers = dead_letter_headers(dead)
    if _record_size(key, value, headers) <= max_bytes:
        return key, value, headers
    essential = headers[len(raw.headers) :]
    notes: Headers = [(_ERROR + "truncated", b"true")]
    if key is not None and len(key) > _KEPT_KEY_BYTES:
        notes += [
            (_ERROR + "original_key_size", str(len(key)).encode()),
            (_ERROR + "original_key_sha256", hashlib.sha256(key).hexdigest().encode()),
        ]
        key = key[:_KEPT_KEY_BYTES]
    if value is not None:
        notes += [
            (_ERROR + "original_size", str(len(value)).encode()),
            (_ERROR + "original_sha256", hashlib.sha256(value).hexdigest().encode()),
        ]
    kept, budget = [], _KEPT_HEADER_BYTES
    for header in headers[: len(raw.headers)]:
        size = _headers_size([header])
        if size > budget:
            break
        kept.append(header)
        budget -= size
    if len(kept) < len(raw.headers):
        notes.append((_ERROR + "dropped_headers", str(len(raw.headers) - len(kept)).encode()))
    headers = kept + essential + notes
    if value is not None:
        room = max_bytes - _record_size(key, b"", headers)
        value = value[: max(room, 0)]
    return key, value, headers


def _record_size(key: bytes | None, value: bytes | None, headers: Headers) -> int:
    return _RECORD_OVERHEAD + len(key or b"") + len(value or b"") + _headers_size(headers)


def _headers_size(headers: Headers) -> int:
    return sum(_HEADER_OVERHEAD + len(name.encode("utf-8", "surrogatepass")) + len(v or b"") for name, v in headers)
