"""The anomaly flow wired for each way it runs: one input, and one ``op.output`` per destination.

:func:`~edgewatch.flows.anomaly.build_flow` returns typed streams; here each stream gets its
destinations::

    kafka_flow    Kafka in → labeled / dead-letter / alarms / drift / shadow topics    edgewatch run
                  (+ IoT Hub, Event Hubs)
    replay_flow   a recorded file in → labeled.jsonl and its .deadletter / .alarms /  edgewatch run --replay
                  .drift / .shadow / .fleet-drift siblings

(the IoT Edge module wires edgeHub in and module outputs out: :mod:`edgewatch.azure.module`).
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Iterable
from itertools import chain, repeat
from pathlib import Path

import bytewax.operators as op
from bytewax.dataflow import Dataflow

from edgewatch.app import Application
from edgewatch.azure.messages import Selection, labeled_selection
from edgewatch.config import FlowSettings
from edgewatch.connectors.files import FileSource, JsonlSink, dead_letter_line
from edgewatch.connectors.kafka import KafkaBatchSource, KafkaSink, OutRecord
from edgewatch.flows.anomaly import AnomalyStreams, build_flow
from edgewatch.flows.fleet_drift import FleetDriftEvent, fleet_drift_event_json
from edgewatch.flows.lifecycle import ShadowEvent, shadow_event_json
from edgewatch.schema import (
    DeadLetter,
    LabeledEvent,
    alarm_event_json,
    dead_letter_record,
    drift_event_json,
    forwarded_headers,
    labeled_event_json,
    labeled_event_lines,
)
from edgewatch.store_forward import BufferPolicy, ForwardingSink


def kafka_flow(app: Application) -> Dataflow:
    """Kafka in, Kafka out (and the cloud sinks the settings ask for); ends when a stop is requested."""
    settings = app.settings
    source = KafkaBatchSource(
        settings.client_config(),
        [settings.in_topic],
        settings.batch_size,
        settings.start_from,
        stop=app.stop_requested,
        group=settings.consumer_group,
    )
    flow, streams = build_flow(settings, source, app.controls, app.artifact)
    to_kafka(streams, settings)
    to_cloud(streams, settings)
    to_training_store(streams, settings)
    return flow


def replay_flow(app: Application, path: Path, labeled_path: Path) -> Dataflow:
    """A recorded file in; labeled events to ``labeled_path``, dead letters beside it; no broker."""
    source = FileSource(path, app.settings.batch_size)
    flow, streams = build_flow(app.settings, source, app.controls, app.artifact)
    to_files(streams, labeled_path)
    to_training_store(streams, app.settings)
    return flow


# -- destinations ---------------------------------------------------------------------------------


def to_kafka(streams: AnomalyStreams, settings: FlowSettings) -> None:
    """Labeled events and dead letters to their topics; alarms and drift events to theirs when set."""
    config = settings.client_config()
    labeled = KafkaSink(config, labeled_records(settings.out_topic), labeled_batch_records(settings.out_topic))
    op.output("labeled-kafka", streams.labeled, labeled)
    op.output("dead-letters-kafka", streams.dead_letters, KafkaSink(config, dead_letter_records(settings.dlq_topic)))
    if settings.alarms_topic:
        op.output(
            "alarms-kafka", streams.alarms, KafkaSink(config, device_records(settings.alarms_topic, alarm_event_json))
        )
    if settings.drift_topic:
        op.output(
            "drift-kafka", streams.drift, KafkaSink(config, device_records(settings.drift_topic, drift_event_json))
        )
    if settings.shadow_topic:
        op.output("shadow-kafka", streams.shadow, KafkaSink(config, shadow_records(settings.shadow_topic)))
    if settings.fleet_drift_topic:
        records = fleet_drift_records(settings.fleet_drift_topic)
        op.output("fleet-drift-kafka", streams.fleet_drift, KafkaSink(config, records))


def output_topics(settings: FlowSettings) -> list[str]:
    """The topics :func:`to_kafka` writes."""
    topics = (
        settings.out_topic,
        settings.dlq_topic,
        settings.alarms_topic,
        settings.drift_topic,
        settings.shadow_topic,
    )
    return [t for t in topics if t]


#: the siblings of ``labeled.jsonl`` a replay writes (``labeled.<kind>.jsonl``)
OUTPUT_FILE_KINDS = ("deadletter", "alarms", "drift", "shadow", "fleet-drift")


def to_files(streams: AnomalyStreams, labeled_path: Path) -> None:
    """Labeled events to ``labeled_path`` (the topic's JSON, a line each), the other streams to its
    siblings (:data:`OUTPUT_FILE_KINDS`); every file is appended to."""
    labeled_path = Path(labeled_path)
    op.output("labeled-file", streams.labeled, JsonlSink(labeled_path, labeled_event_json, labeled_event_lines))
    lines = {
        "deadletter": (streams.dead_letters, dead_letter_line),
        "alarms": (streams.alarms, alarm_event_json),
        "drift": (streams.drift, drift_event_json),
        "shadow": (streams.shadow, shadow_event_json),
        "fleet-drift": (streams.fleet_drift, fleet_drift_event_json),
    }
    for kind in OUTPUT_FILE_KINDS:
        stream, to_line = lines[kind]
        step = "dead-letters-file" if kind == "deadletter" else f"{kind}-file"
        op.output(step, stream, JsonlSink(sibling(labeled_path, kind), to_line))


def sibling(labeled_path: Path, kind: str) -> Path:
    """``labeled.jsonl`` → ``labeled.<kind>.jsonl`` (dead letters, alarms, drift events)."""
    return Path(labeled_path).with_suffix(f".{kind}.jsonl")


def to_training_store(streams: AnomalyStreams, settings: FlowSettings) -> None:
    """Readings labeled normal to the training store (``--training-store``), bounded by age and size."""
    if settings.training_store is not None:
        from edgewatch.registry.training_store import TrainingStoreSink

        sink = TrainingStoreSink(
            settings.training_store, settings.training_store_max_age_hours, settings.training_store_rows_per_device
        )
        op.output("labeled-training-store", streams.labeled, sink)


def to_cloud(streams: AnomalyStreams, settings: FlowSettings) -> None:
    """Labeled events to IoT Hub and Event Hubs (AMQP) as the settings ask, each behind a
    store-and-forward buffer in ``settings.buffer_dir``."""
    for link, sink in cloud_links(settings).items():
        op.output(f"labeled-{link}", streams.labeled, sink(link, labeled_selection))


def cloud_links(settings: FlowSettings) -> dict[str, Callable[[str, Selection], ForwardingSink]]:
    """The cloud links the settings ask for (``iothub``, ``eventhubs``): each a function of a buffer
    name and a selection (which items go, as what) that builds a sink on that link. Sinks built with
    one buffer name share its file and connection (the RUL flow's estimates and alerts)."""
    policy = buffer_policy(settings)
    links: dict[str, Callable[[str, Selection], ForwardingSink]] = {}
    if settings.iothub or settings.iothub_connection_string:
        from edgewatch.azure.iothub import IoTHubSink

        def iothub(name: str, select: Selection) -> ForwardingSink:
            return IoTHubSink(
                settings.buffer_dir,
                secret(settings.iothub_connection_string),
                settings.iothub_output,
                settings.iothub_send,
                settings.iothub_ca_cert,
                policy=policy,
                name=name,
                select=select,
            )

        links["iothub"] = iothub
    if settings.eventhubs_sink_hub:
        from edgewatch.azure.eventhubs import EventHubsSink

        connection_string = secret(settings.eventhubs_sink_connection_string or settings.eventhubs_connection_string)
        if not connection_string:
            raise ValueError("eventhubs_sink_hub needs eventhubs_sink_connection_string or eventhubs_connection_string")

        def eventhubs(name: str, select: Selection) -> ForwardingSink:
            return EventHubsSink(
                settings.buffer_dir,
                connection_string,
                settings.eventhubs_sink_hub,
                settings.eventhubs_sink_send,
                policy=policy,
                name=name,
                select=select,
            )

        links["eventhubs"] = eventhubs
    return links


def buffer_policy(settings: FlowSettings) -> BufferPolicy:
    """The store-and-forward limits the settings give."""
    return BufferPolicy(
        max_bytes=int(settings.buffer_max_mb * 2**20), max_age_seconds=settings.buffer_max_age_hours * 3600
    )


def secret(value) -> str | None:
    """A ``SecretStr`` setting's value (or ``None``)."""
    return value.get_secret_value() if value is not None else None


# -- Kafka records --------------------------------------------------------------------------------


def labeled_records(topic: str) -> Callable[[LabeledEvent], OutRecord]:
    """A labeled event as a record: keyed by device, the input's headers carried over."""

    def record(event: LabeledEvent) -> OutRecord:
        raw = event.reading.raw
        headers = forwarded_headers(raw.headers)  # a sender's edgewatch.error.* headers renamed
        return OutRecord(topic, raw.key or event.reading.device_id.encode(), labeled_event_json(event), headers)

    return record


def labeled_batch_records(topic: str) -> Callable[[list[LabeledEvent]], Iterable[OutRecord]]:
    """:func:`labeled_records` for a whole batch (what the flow's Kafka sink uses): the same records,
    serialized together (:func:`~edgewatch.schema.labeled_event_lines`), keys and headers taken in
    C loops when, as usual, every message has a key and no sender wrote an ``edgewatch.error.*`` header."""

    def records(events: list[LabeledEvent]) -> Iterable[OutRecord]:
        raws = list(map(_RAW, events))
        keys = list(map(_KEY, raws))
        if None in keys or b"" in keys:
            keys = [key or event.reading.device_id.encode() for key, event in zip(keys, events, strict=True)]
        headers = list(map(_HEADERS, raws))
        names = "\x00".join(map(_NAME, chain.from_iterable(headers)))
        if _ERROR_HEADER in "\x00" + names:  # a header to rename: each event's own
            headers = list(map(forwarded_headers, headers))
        return zip(repeat(topic), keys, labeled_event_lines(events), headers, strict=False)  # repeat: endless

    return records


_RAW = operator.attrgetter("reading.raw")
_KEY = operator.attrgetter("key")
_HEADERS = operator.attrgetter("headers")
_NAME = operator.itemgetter(0)
_ERROR_HEADER = "\x00edgewatch.error."


def device_records(topic: str, to_json: Callable) -> Callable:
    """An alarm or drift event as a record keyed by its device (one partition per device: in order)."""

    def record(event) -> OutRecord:
        return OutRecord(topic, event.device_id.encode(), to_json(event), [])

    return record


def shadow_records(topic: str) -> Callable[[ShadowEvent], OutRecord]:
    """A shadow event as a record keyed by its device."""

    def record(shadow: ShadowEvent) -> OutRecord:
        return OutRecord(topic, shadow.event.reading.device_id.encode(), shadow_event_json(shadow), [])

    return record


def fleet_drift_records(topic: str) -> Callable[[FleetDriftEvent], OutRecord]:
    """A fleet drift event as a record keyed by its feature."""

    def record(event: FleetDriftEvent) -> OutRecord:
        return OutRecord(topic, event.feature.encode(), fleet_drift_event_json(event), [])

    return record


def dead_letter_records(topic: str) -> Callable[[DeadLetter], OutRecord]:
    """A dead letter as a record: the original key, value and headers, plus the error headers;
    truncated, with its original size and sha256, when too large for the broker."""

    def record(dead: DeadLetter) -> OutRecord:
        return OutRecord(topic, *dead_letter_record(dead))

    return record
