"""What the web view knows about the fleet: bounded, in memory, fed by the flow's outputs.

A :class:`FleetState` takes the flow's three outputs as their JSON bodies (the ``labeled``,
``alarms`` and ``drift`` topics) and keeps, per device, the last ``readings_per_device``
readings with their score, the alarm state and the device's last alarm with its
explanation; plus the last ``max_alarms`` alarms and ``max_drift`` drift events of the
whole fleet. Memory is bounded by these numbers and ``max_devices`` (the device seen
longest ago is forgotten first), whatever the stream does.

The three topics are read independently, so their messages may arrive out of order with
respect to each other: a device's alarm state follows the newest *source time* among its
labeled readings (``is_anomaly`` is the alarm state at that reading) and its raised and
cleared alarms.

>>> state = FleetState(readings_per_device=2)
>>> state.apply("labeled", b'{"device_id": "pump-1", "timestamp": "2026-11-30T10:00:00Z", '
...     b'"features": {"rpm": 1450.0}, "score": 0.9, "is_anomaly": true, "explanation": {"rpm": 1.0}, '
...     b'"model": {"name": "robust-zscore", "version": "3"}}')
True
>>> [(d["device_id"], d["alarm"], d["score"]) for d in state.fleet()["devices"]]
[('pump-1', True, 0.9)]
>>> state.apply("labeled", b'{"device_id": 7}')
False
>>> state.rejected, state.last_rejection
(1, 'labeled: device_id must be a non-empty string')
"""

from __future__ import annotations

import functools
import math
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

import numpy as np
import orjson

KINDS = ("labeled", "alarms", "drift")
#: features kept per device (as the parser accepts at most); later new names are not drawn
MAX_FEATURES = 64


class BadMessage(ValueError):
    """A message the view cannot use; counted and skipped, never raised out of :meth:`FleetState.apply`."""


class ReadingRing:
    """The last ``capacity`` readings of one device, column by column in fixed numpy arrays
    (a ring: the oldest reading is overwritten). Missing feature values are NaN.

    >>> ring = ReadingRing(capacity=2, features=1)
    >>> for t in (1.0, 2.0, 3.0):
    ...     ring.append(t, 0.5, False, [t * 10])
    >>> ring.columns()["timestamp"], ring.columns()["values"]
    ([2.0, 3.0], [[20.0, 30.0]])
    """

    __slots__ = ("is_anomaly", "score", "size", "start", "timestamp", "values")

    def __init__(self, capacity: int, features: int):
        self.timestamp = np.zeros(capacity)
        self.score = np.zeros(capacity)
        self.is_anomaly = np.zeros(capacity, dtype=bool)
        self.values = np.full((capacity, features), np.nan)
        self.start = 0
        self.size = 0

    def __len__(self) -> int:
        return self.size

    def add_features(self, count: int) -> None:
        self.values = np.hstack([self.values, np.full((len(self.timestamp), count), np.nan)])

    def append(self, timestamp: float, score: float, is_anomaly: bool, values: list[float]) -> None:
        capacity = len(self.timestamp)
        at = (self.start + self.size) % capacity
        if self.size == capacity:
            self.start = (self.start + 1) % capacity
        else:
            self.size += 1
        self.timestamp[at], self.score[at], self.is_anomaly[at] = timestamp, score, is_anomaly
        self.values[at] = values

    def last(self) -> tuple[float, float] | None:
        """Time and score of the newest reading."""
        if not self.size:
            return None
        at = (self.start + self.size - 1) % len(self.timestamp)
        return float(self.timestamp[at]), float(self.score[at])

    def columns(self) -> dict[str, list]:
        """Oldest first; ``values`` one list per feature, ``None`` where a reading lacked it."""
        order = (self.start + np.arange(self.size)) % len(self.timestamp)
        values = self.values[order].T
        return {
            "timestamp": self.timestamp[order].tolist(),
            "score": self.score[order].tolist(),
            "is_anomaly": self.is_anomaly[order].tolist(),
            "values": [[None if v != v else v for v in column] for column in values.tolist()],  # NaN → None
        }


@dataclass(slots=True)
class Alarm:
    """A raised (``end is None``) or cleared alarm, keyed by device and start."""

    device_id: str
    start: float
    end: float | None
    peak_score: float
    explanation: dict[str, float]
    features: dict[str, float]
    model: str
    version: str
    received_at: float  # wall clock: when the view learned of it (raised or cleared)

    def as_json(self) -> dict:
        return {
            "device_id": self.device_id,
            "start": self.start,
            "end": self.end,
            "duration_seconds": None if self.end is None else self.end - self.start,
            "peak_score": self.peak_score,
            "explanation": self.explanation,
            "features": self.features,
            "model": {"name": self.model, "version": self.version},
            "received_at": self.received_at,
        }


@dataclass(slots=True)
class Device:
    device_id: str
    readings: ReadingRing | None = None  # allocated at the first reading, with its features
    feature_names: tuple[str, ...] = ()
    alarm: bool = False
    alarm_since: float | None = None
    state_time: float = -math.inf  # source time of the newest evidence of the alarm state
    last_alarm: Alarm | None = None
    explanation: dict[str, float] | None = None  # of the newest abnormal reading or alarm
    model: str = ""
    version: str = ""
    threshold: float | None = None
    drift_events: int = 0

    def summary(self) -> dict:
        timestamp, score = (self.readings and self.readings.last()) or (None, None)
        return {
            "device_id": self.device_id,
            "alarm": self.alarm,
            "alarm_since": self.alarm_since if self.alarm else None,
            "timestamp": timestamp,
            "score": score,
            "threshold": self.threshold,
            "model": {"name": self.model, "version": self.version},
            "explanation": self.explanation,
            "last_alarm": self.last_alarm.as_json() if self.last_alarm else None,
            "drift_events": self.drift_events,
        }


@dataclass
class FeedStatus:
    """What the feed last said about itself, shown on every page."""

    ok: bool = False
    text: str = "starting"
    messages: int = 0
    last_message_at: float | None = None
    extra: dict = field(default_factory=dict)


def default_threshold(model_name: str) -> float | None:
    """The label threshold of a built-in detector (what the flow labels with unless told otherwise).

    Only asked when the events carry no threshold and ``--threshold`` is not given: importing
    the detectors costs the view about 75 MB of memory."""
    return _builtin_thresholds().get(model_name)


@functools.cache
def _builtin_thresholds() -> dict[str, float]:
    from edgewatch.online_models.registry import BUILTIN  # imported once, on the first device

    return {name: spec.threshold for name, spec in BUILTIN.items()}


class FleetState:
    """The fleet as the web view shows it; thread-safe (one feed thread writes, HTTP threads read).

    ``threshold`` overrides the threshold drawn on the charts (else a message's ``threshold``
    field, else the named built-in detector's).
    """

    def __init__(
        self,
        readings_per_device: int = 240,
        max_devices: int = 2000,
        max_alarms: int = 500,
        max_drift: int = 200,
        threshold: float | None = None,
        thresholds: Callable[[str], float | None] = default_threshold,
        clock: Callable[[], float] = time.time,
    ):
        if min(readings_per_device, max_devices, max_alarms, max_drift) < 1:
            raise ValueError("readings_per_device, max_devices, max_alarms and max_drift must be at least 1")
        self.readings_per_device = readings_per_device
        self.max_devices = max_devices
        self.threshold = threshold
        self._thresholds = thresholds
        self._clock = clock
        self._devices: OrderedDict[str, Device] = OrderedDict()  # least recently updated first
        self._alarms: OrderedDict[tuple[str, float], Alarm] = OrderedDict()  # oldest start first
        self._max_alarms = max_alarms
        self._drift: deque[dict] = deque(maxlen=max_drift)
        self._changed = threading.Condition()
        self.version = 0
        self.rejected = 0
        self.last_rejection: str | None = None
        self.feed = FeedStatus()

    # -- writing -------------------------------------------------------------------------

    def apply(self, kind: str, body: bytes | dict) -> bool:
        """Take one message of an output (``labeled``, ``alarms`` or ``drift``); ``False`` if
        it was refused (counted in ``rejected``, reason in ``last_rejection``)."""
        try:
            message = orjson.loads(body) if isinstance(body, bytes | bytearray | memoryview | str) else body
            if not isinstance(message, dict):
                raise BadMessage("not a JSON object")
            apply = {"labeled": self._apply_labeled, "alarms": self._apply_alarm, "drift": self._apply_drift}[kind]
            with self._changed:
                apply(message)
                self.feed.messages += 1
                self.feed.last_message_at = self._clock()
                self.version += 1
                self._changed.notify_all()
            return True
        except (ValueError, TypeError) as exc:  # BadMessage, orjson.JSONDecodeError, an odd JSON shape
            with self._changed:
                self.rejected += 1
                self.last_rejection = f"{kind}: {exc}"
            return False

    def set_feed_status(self, ok: bool, text: str, **extra) -> None:
        """What the feed says about itself ("reading labeled, alarms, drift at …", "cannot reach …")."""
        with self._changed:
            if (self.feed.ok, self.feed.text, self.feed.extra) != (ok, text, extra):
                self.feed.ok, self.feed.text, self.feed.extra = ok, text, extra
                self.version += 1
                self._changed.notify_all()

    def _device(self, device_id: str) -> Device:
        device = self._devices.get(device_id)
        if device is None:
            if len(self._devices) >= self.max_devices:
                self._devices.popitem(last=False)
            device = self._devices[device_id] = Device(device_id)
        else:
            self._devices.move_to_end(device_id)
        return device

    def _set_model(self, device: Device, model: object, threshold: object = None) -> None:
        if isinstance(model, dict):
            name, version = str(model.get("name", "")), str(model.get("version", ""))
            if name != device.model:
                device.threshold = None
            device.model, device.version = name, version
        if self.threshold is not None:
            device.threshold = self.threshold
        elif _is_number(threshold):
            device.threshold = float(threshold)
        elif device.threshold is None and device.model:
            device.threshold = self._thresholds(device.model)

    def _apply_labeled(self, message: dict) -> None:
        device_id = _device_id(message)
        t = _time(message.get("timestamp"), "timestamp")
        features = message.get("features")
        if not isinstance(features, dict):
            raise BadMessage("features must be an object")
        score = _number(message.get("score"), "score")
        is_anomaly = message.get("is_anomaly")
        if not isinstance(is_anomaly, bool):
            raise BadMessage("is_anomaly must be true or false")
        explanation = _explanation(message.get("explanation"))
        device = self._device(device_id)
        if features.keys() != set(device.feature_names):
            new = tuple(name for name in features if name not in device.feature_names)[
                : MAX_FEATURES - len(device.feature_names)
            ]
            device.feature_names += new
            if device.readings is not None:
                device.readings.add_features(len(new))
        if device.readings is None:
            device.readings = ReadingRing(self.readings_per_device, len(device.feature_names))
        values = [v if _is_number(v) else math.nan for v in map(features.get, device.feature_names)]
        device.readings.append(t, score, is_anomaly, values)
        model = _object(message.get("model"))
        self._set_model(device, model or None, message.get("threshold", model.get("threshold")))
        if t > device.state_time:
            if is_anomaly and not device.alarm:
                device.alarm_since = t
            device.alarm, device.state_time = is_anomaly, t
            if is_anomaly and explanation:
                device.explanation = explanation

    def _apply_alarm(self, message: dict) -> None:
        event = message.get("event")
        if event not in ("raised", "cleared"):
            raise BadMessage("event must be raised or cleared")
        device_id = _device_id(message)
        start = _time(message.get("start"), "start")
        end = None if event == "raised" else _time(message.get("end"), "end")
        peak_score = _number(message.get("peak_score", 0.0), "peak_score")
        explanation = _explanation(message.get("explanation"))
        model = _object(message.get("model"))
        device = self._device(device_id)
        key = (device.device_id, start)
        alarm = self._alarms.get(key)
        if alarm is None:
            alarm = Alarm(device.device_id, start, None, -math.inf, {}, {}, "", "", self._clock())
            self._alarms[key] = alarm
            if len(self._alarms) > self._max_alarms:
                self._alarms.popitem(last=False)
        alarm.end = end if end is not None else alarm.end
        alarm.peak_score = max(alarm.peak_score, peak_score)
        alarm.explanation = explanation or alarm.explanation
        alarm.features = _numbers(message.get("features")) or alarm.features
        alarm.model, alarm.version = str(model.get("name", "")), str(model.get("version", ""))
        alarm.received_at = self._clock()
        if device.last_alarm is None or start >= device.last_alarm.start:
            device.last_alarm = alarm
        self._set_model(device, model or None, model.get("threshold"))
        state_time = start if end is None else end
        if state_time >= device.state_time:
            if end is None and not device.alarm:
                device.alarm_since = start
            device.alarm, device.state_time = end is None, state_time
            if alarm.explanation:
                device.explanation = alarm.explanation

    def _apply_drift(self, message: dict) -> None:
        device_id = _device_id(message)
        t = _time(message.get("timestamp"), "timestamp")
        model = _object(message.get("model"))
        features = message.get("features")
        if not isinstance(features, list):
            raise BadMessage("features must be a list of names")
        levels = {name: _numbers(message.get(name)) for name in ("level_before", "level_after")}
        device = self._device(device_id)
        device.drift_events += 1
        self._drift.append(
            {
                "device_id": device.device_id,
                "timestamp": t,
                "features": [str(f) for f in features],
                **levels,
                "reason": str(message.get("reason", "")),
                "model": {"name": str(model.get("name", "")), "version": str(model.get("version", ""))},
                "received_at": self._clock(),
            }
        )

    # -- reading -------------------------------------------------------------------------

    def wait_for_change(self, seen: int, timeout: float) -> int:
        """Block until ``version`` differs from ``seen`` (or ``timeout``); the current version."""
        with self._changed:
            self._changed.wait_for(lambda: self.version != seen, timeout)
            return self.version

    def _header(self) -> dict:
        feed = self.feed
        return {
            "version": self.version,
            "now": self._clock(),
            "feed": {
                "ok": feed.ok,
                "text": feed.text,
                "messages": feed.messages,
                "last_message_at": feed.last_message_at,
                "rejected": self.rejected,
                "last_rejection": self.last_rejection,
                **feed.extra,
            },
        }

    def fleet(self, match: str = "", limit: int | None = None) -> dict:
        """Device summaries, devices in alarm first, then by name: those whose id contains
        ``match`` (any case), the first ``limit`` of them; ``matching`` counts them all."""
        with self._changed:
            needle = match.casefold()
            found = [d for d in self._devices.values() if needle in d.device_id.casefold()]
            found.sort(key=lambda d: (not d.alarm, d.device_id))
            return {
                **self._header(),
                "devices": [d.summary() for d in found[:limit]],
                "matching": len(found),
                "counts": {
                    "devices": len(self._devices),
                    "alarming": sum(d.alarm for d in self._devices.values()),
                    "alarms": len(self._alarms),
                    "drift": len(self._drift),
                },
            }

    def device(self, device_id: str) -> dict | None:
        """One device: its readings (columns), alarms and drift events; ``None`` if unknown."""
        with self._changed:
            device = self._devices.get(device_id)
            if device is None:
                return None
            empty = {"timestamp": [], "score": [], "is_anomaly": [], "values": []}
            return {
                **self._header(),
                **device.summary(),
                "feature_names": list(device.feature_names),
                "readings": device.readings.columns() if device.readings is not None else empty,
                "alarms": [a.as_json() for a in reversed(self._alarms.values()) if a.device_id == device_id],
                "drift": [d for d in reversed(self._drift) if d["device_id"] == device_id],
            }

    def alarms(self) -> dict:
        """The alarms, newest start first."""
        with self._changed:
            ordered = sorted(self._alarms.values(), key=lambda a: a.start, reverse=True)
            return {**self._header(), "alarms": [a.as_json() for a in ordered]}

    def drift(self) -> dict:
        """The drift events, newest first."""
        with self._changed:
            return {**self._header(), "drift": sorted(self._drift, key=lambda d: d["timestamp"], reverse=True)}


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _number(value: object, name: str) -> float:
    if not _is_number(value):
        raise BadMessage(f"{name} must be a finite number")
    return float(value)


def _object(value: object) -> dict:
    return value if isinstance(value, dict) else {}


def _numbers(value: object) -> dict[str, float]:
    """The finite numbers of a ``{name: value}`` object (``{}`` for anything else)."""
    return {str(k): float(v) for k, v in _object(value).items() if _is_number(v)}


def _device_id(message: dict) -> str:
    device_id = message.get("device_id")
    if not isinstance(device_id, str) or not device_id or len(device_id) > 256:
        raise BadMessage("device_id must be a non-empty string")
    return device_id


def _time(value: object, name: str) -> float:
    """Epoch seconds of an ISO-8601 time (the outputs' format) or of epoch seconds."""
    if _is_number(value):
        return float(value)
    if isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value)
        except ValueError:
            pass
        else:
            return (parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)).timestamp()
    raise BadMessage(f"{name} must be an ISO-8601 time")


def _explanation(value: object) -> dict[str, float] | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise BadMessage("explanation must be an object of feature: share, or null")
    return _numbers(value)
