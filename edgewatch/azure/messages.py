"""Labeled events, alarm and drift events, RUL estimates, maintenance alerts and dead letters as
cloud messages, and the sinks that store them for a link.

Every cloud output of a flow is one :class:`~edgewatch.store_forward.ForwardingSink` over one
typed stream: :class:`LabeledEventSink` (IoT Hub, Event Hubs; filtered by a send mode an
operator may change while the flow runs, and a *selection* that turns an item into its envelope:
labeled events by default, :func:`alarm_selection` and :func:`drift_selection` for alarm and
drift events, :func:`rul_selection` and :func:`alert_selection` for the RUL flow's estimates and
alerts) or :class:`DeadLetterSink` (an IoT Edge module's dead-letter output). Each
item becomes an :class:`~edgewatch.store_forward.Envelope`: the body and the properties routing
rules read, and a message id that names the input message.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Literal

from edgewatch.rul.events import MODEL_NAME, RulEstimate, maintenance_alert_json, rul_estimate_json
from edgewatch.schema import (
    AlarmEvent,
    DeadLetter,
    DriftEvent,
    LabeledEvent,
    RawMessage,
    alarm_event_json,
    dead_letter_headers,
    drift_event_json,
    labeled_event_json,
)
from edgewatch.store_forward import BufferPolicy, Envelope, ForwardingSink, Sender, source_message_id
from edgewatch.store_forward.queue import bounded_message_id

SendMode = Literal["anomalies", "all"]
SEND_MODES: tuple[SendMode, ...] = ("anomalies", "all")
#: an item and the link's send mode → its envelope, or ``None`` when this link does not take it
Selection = Callable[[object, SendMode], Envelope | None]


def labeled_envelope(event: LabeledEvent) -> Envelope:
    """The labeled-event JSON with ``anomaly``/``deviceId``/``model`` properties.

    >>> from edgewatch.schema import RawMessage, Reading
    >>> raw = RawMessage(b"pump-1", b"{}", [], "telemetry", 2, 41)
    >>> event = LabeledEvent(Reading("pump-1", 0.0, {"rpm": 1.0}, raw), 0.9, True, "robust-zscore", "0.1.0")
    >>> envelope = labeled_envelope(event)
    >>> envelope.properties, envelope.message_id
    ({'anomaly': 'true', 'deviceId': 'pump-1', 'model': 'robust-zscore'}, 'telemetry:2:41')
    """
    reading = event.reading
    raw = reading.raw
    return Envelope(
        device_id=reading.device_id,
        body=labeled_event_json(event),
        properties={
            "anomaly": "true" if event.is_anomaly else "false",
            "deviceId": reading.device_id,
            "model": event.model_name,
        },
        message_id=source_message_id(raw.topic, raw.partition, raw.offset),
    )


def rul_envelope(estimate: RulEstimate) -> Envelope:
    """The RUL event JSON with ``event``/``deviceId``/``model``/``alert`` properties; the message id
    names the input reading (``:rul`` appended: the anomaly flow's event of that reading differs).

    >>> from edgewatch.schema import RawMessage
    >>> raw = RawMessage(b"engine-7", b"{}", [], "telemetry", 0, 41)
    >>> envelope = rul_envelope(RulEstimate("engine-7", 0.0, 12, 20.0, 35.0, 60.0, raw=raw))
    >>> envelope.properties, envelope.message_id
    ({'event': 'rul', 'deviceId': 'engine-7', 'model': 'rul', 'alert': 'false'}, 'telemetry:0:41:rul')
    """
    return _rul_event(estimate, "rul", rul_estimate_json(estimate))


def maintenance_alert_envelope(estimate: RulEstimate) -> Envelope:
    """The maintenance alert JSON (``event`` property ``maintenance-alert``, for routing queries)."""
    return _rul_event(estimate, "maintenance-alert", maintenance_alert_json(estimate))


def _rul_event(estimate: RulEstimate, event: str, body: bytes) -> Envelope:
    raw = estimate.raw
    position = source_message_id(raw.topic, raw.partition, raw.offset) if raw is not None else estimate.device_id
    return Envelope(
        device_id=estimate.device_id,
        body=body,
        properties={
            "event": event,
            "deviceId": estimate.device_id,
            "model": MODEL_NAME,
            "alert": "true" if estimate.alert else "false",
        },
        message_id=f"{position}:{event}",
    )


def alarm_envelope(event: AlarmEvent) -> Envelope:
    """The alarm event JSON with ``event`` (``alarm-raised`` | ``alarm-cleared``), ``deviceId`` and
    ``model`` properties; the message id names the reading that raised or cleared it (an operator's
    acceptance: the device and the alarm's start).

    >>> raw = RawMessage(b"pump-1", b"{}", [], "telemetry", 0, 7)
    >>> alarm = AlarmEvent("raised", "pump-1", 0.0, None, 0.8, {"rpm": 1450.0}, {"rpm": 1.0}, "m", "1", raw)
    >>> envelope = alarm_envelope(alarm)
    >>> envelope.properties, envelope.message_id
    ({'event': 'alarm-raised', 'deviceId': 'pump-1', 'model': 'm'}, 'telemetry:0:7:alarm-raised')
    """
    kind = f"alarm-{event.kind}"
    return Envelope(
        device_id=event.device_id,
        body=alarm_event_json(event),
        properties={"event": kind, "deviceId": event.device_id, "model": event.model_name},
        message_id=_event_message_id(event.raw, event.device_id, event.start, kind),
    )


def drift_envelope(event: DriftEvent) -> Envelope:
    """The drift event JSON with ``event`` (``drift``), ``reason``, ``deviceId`` and ``model`` properties.

    >>> drift = DriftEvent("pump-1", 60.0, ["rpm"], {"rpm": 1.0}, {"rpm": 2.0}, "operator", "m", "1")
    >>> envelope = drift_envelope(drift)
    >>> envelope.properties["reason"], envelope.message_id
    ('operator', 'pump-1:60.0:drift')
    """
    return Envelope(
        device_id=event.device_id,
        body=drift_event_json(event),
        properties={"event": "drift", "reason": event.reason, "deviceId": event.device_id, "model": event.model_name},
        message_id=_event_message_id(event.raw, event.device_id, event.timestamp, "drift"),
    )


def _event_message_id(raw: RawMessage | None, device_id: str, when: float, kind: str) -> str:
    """The input position of the reading an event came with (else its device and time), and its kind:
    the same on every resend; hashed beyond Azure's 128 characters."""
    position = source_message_id(raw.topic, raw.partition, raw.offset) if raw is not None else f"{device_id}:{when}"
    return bounded_message_id(f"{position}:{kind}")


def alarm_selection(event: AlarmEvent, send: SendMode) -> Envelope | None:
    """Alarm events go in either mode: few, and each one matters."""
    return alarm_envelope(event)


def drift_selection(event: DriftEvent, send: SendMode) -> Envelope | None:
    """Drift events go in either mode."""
    return drift_envelope(event)


def labeled_selection(event: LabeledEvent, send: SendMode) -> Envelope | None:
    """Anomalous labeled events, or every one with ``send="all"``."""
    return labeled_envelope(event) if event.is_anomaly or send == "all" else None


def rul_selection(estimate: RulEstimate, send: SendMode) -> Envelope | None:
    """RUL estimates go only with ``send="all"`` (``anomalies``: the alerts alone matter)."""
    return rul_envelope(estimate) if send == "all" else None


def alert_selection(estimate: RulEstimate, send: SendMode) -> Envelope | None:
    """Maintenance alerts go in either mode."""
    return maintenance_alert_envelope(estimate)


def dead_letter_envelope(dead: DeadLetter) -> Envelope:
    """A dead letter for a module output: the original body unchanged, the original and
    ``edgewatch.error.*`` headers as properties, the input position as message id.

    >>> from edgewatch.schema import RawMessage
    >>> envelope = dead_letter_envelope(DeadLetter(RawMessage(b"pump-1", b"{", [], "telemetry", 0, 7), "not JSON"))
    >>> envelope.properties["edgewatch.error.reason"], envelope.properties["deviceId"], envelope.message_id
    ('not JSON', 'pump-1', 'telemetry:0:7')
    """
    raw = dead.raw
    properties = {name: value.decode("utf-8", "replace") for name, value in dead_letter_headers(dead)}
    device_id = raw.key.decode("utf-8", "replace") if raw.key else ""
    if device_id:
        properties.setdefault("deviceId", device_id)
    return Envelope(device_id, raw.value or b"", properties, source_message_id(raw.topic, raw.partition, raw.offset))


class LabeledEventSink(ForwardingSink[LabeledEvent]):
    """Labeled events for a cloud link: every one (``send="all"``) or only anomalies; with another
    ``select``, other events (the RUL flow's estimates and alerts) under the same send mode.

    ``send`` may be changed while the flow runs (e.g. from an IoT Edge module twin): every
    event written after the change uses the new mode. Two sinks of one name share one buffer
    file and one link (the RUL flow's estimates and alerts: one connection per identity).
    """

    def __init__(
        self,
        name: str,
        buffer_dir: Path | str,
        sender_factory: Callable[[], Sender],
        send: SendMode = "anomalies",
        policy: BufferPolicy | None = None,
        select: Selection = labeled_selection,
    ):
        self.send = send
        self._select = select
        super().__init__(name, buffer_dir, sender_factory, self._envelope, policy)

    @property
    def send(self) -> SendMode:
        """``anomalies`` or ``all``; settable while the flow runs."""
        return self._send

    @send.setter
    def send(self, mode: SendMode) -> None:
        if mode not in SEND_MODES:
            raise ValueError(f"send must be one of {SEND_MODES}, got {mode!r}")
        self._send = mode

    def _envelope(self, item) -> Envelope | None:
        return self._select(item, self._send)


class DeadLetterSink(ForwardingSink[DeadLetter]):
    """Dead letters for a cloud link (an IoT Edge module's dead-letter output)."""

    def __init__(
        self,
        name: str,
        buffer_dir: Path | str,
        sender_factory: Callable[[], Sender],
        policy: BufferPolicy | None = None,
    ):
        super().__init__(name, buffer_dir, sender_factory, dead_letter_envelope, policy)
