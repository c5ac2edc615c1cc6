"""Labeled events and dead letters as cloud messages, and the sinks that store them for a link.

Every cloud output of the flow is one :class:`~edgewatch.store_forward.ForwardingSink` over one
typed stream: :class:`LabeledEventSink` (IoT Hub, Event Hubs; filtered by a send mode an
operator may change while the flow runs) or :class:`DeadLetterSink` (an IoT Edge module's
dead-letter output). Each item becomes an :class:`~edgewatch.store_forward.Envelope`: the body
and the properties routing rules read, and a message id that names the input message.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Literal

from edgewatch.schema import DeadLetter, LabeledEvent, dead_letter_headers, labeled_event_json
from edgewatch.store_forward import BufferPolicy, Envelope, ForwardingSink, Sender, source_message_id

SendMode = Literal["anomalies", "all"]
SEND_MODES: tuple[SendMode, ...] = ("anomalies", "all")


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
    """Labeled events for a cloud link: every one (``send="all"``) or only anomalies.

    ``send`` may be changed while the flow runs (e.g. from an IoT Edge module twin): every
    event written after the change uses the new mode.
    """

    def __init__(
        self,
        name: str,
        buffer_dir: Path | str,
        sender_factory: Callable[[], Sender],
        send: SendMode = "anomalies",
        policy: BufferPolicy | None = None,
    ):
        self.send = send
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

    def _envelope(self, event: LabeledEvent) -> Envelope | None:
        return labeled_envelope(event) if event.is_anomaly or self._send == "all" else None


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
