"""The anomaly flow: Kafka telemetry in, labeled events and dead letters out.

Read top to bottom, this is the whole data path::

    kafka-in      batches of raw messages, one item per poll of a Kafka partition
    parse         each batch → valid readings grouped by device shard, and dead letters
    detect        per shard, a bank of device models: score, label, learn (snapshotted per epoch)
    kafka-out     labeled events → labeled topic (key = device id), dead letters → dead-letter topic
    iothub-out    (optional) labeled events → IoT Hub, eventhubs-out → Event Hubs, store-and-forward

Run it with ``edgewatch run`` or ``python -m bytewax.run edgewatch.flows.anomaly:flow``
(settings from ``EDGEWATCH_*`` variables).
"""

from __future__ import annotations

import functools
import gc
import threading
import zlib
from collections import defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import bytewax.operators as op
from bytewax.dataflow import Dataflow
from bytewax.inputs import Source
from bytewax.outputs import Sink

from edgewatch.config import FlowSettings
from edgewatch.connectors.kafka import KafkaBatchSink, KafkaBatchSource, OutRecord
from edgewatch.online_models import artifact as artifact_module
from edgewatch.online_models.bank import ModelBank, new_bank
from edgewatch.online_models.registry import resolve_detector
from edgewatch.schema import (
    DeadLetter,
    LabeledEvent,
    RawMessage,
    Reading,
    dead_letter_headers,
    labeled_event_json,
    parse_batch,
)
from edgewatch.state.limits import StateLimits
from edgewatch.state.pages import ShardPages, manifest
from edgewatch.telemetry import FLOW_METRICS

DEAD = "dead-letters"


def shard_of(device_id: str, shards: int) -> str:
    """The shard key of a device: a stable hash, the same in every process and run."""
    return f"shard-{zlib.crc32(device_id.encode()) % shards:04d}"


def split_batch(raws: list[RawMessage], shards: int) -> Iterable[tuple[str, list]]:
    """Parse a batch; emit ``(shard, readings)`` per shard and ``(DEAD, dead letters)``."""
    readings, dead = parse_batch(raws)
    FLOW_METRICS.received.inc(len(raws))
    by_shard: dict[str, list[Reading]] = defaultdict(list)
    for reading in readings:
        by_shard[shard_of(reading.device_id, shards)].append(reading)
    yield from by_shard.items()
    if dead:
        yield DEAD, dead


@dataclass
class LiveControls:
    """What an operator changes while the flow runs (e.g. an IoT Edge module twin's desired properties).

    ``threshold`` replaces the label threshold from the next batch on; :meth:`use_artifact` makes
    every shard start its devices over from a new warm-start artifact (a model rollout).
    """

    threshold: float | None = None
    artifact: artifact_module.ModelArtifact | None = None
    generation: int = 0

    def use_artifact(self, fitted: artifact_module.ModelArtifact) -> None:
        self.artifact = fitted
        self.generation += 1


class ModelBankLogic(op.StatefulBatchLogic[list[Reading], list, bytes]):
    """Bytewax glue for one shard's bank: never discarded.

    With a recovery directory, a snapshot writes the pages that changed to the shard's page
    store and gives Bytewax a small manifest (:mod:`edgewatch.state.pages`); without one,
    nothing (Bytewax snapshots every epoch even when it keeps nothing)."""

    def __init__(
        self,
        bank: ModelBank,
        controls: LiveControls | None = None,
        rebuild=None,
        recovery_dir: Path | None = None,
        shards: int = 1,
        pages: ShardPages | None = None,
    ):
        self.bank = bank
        self._controls = controls
        self._rebuild = rebuild
        self._generation = controls.generation if controls is not None else 0
        self._recovery_dir, self._shards, self._pages = recovery_dir, shards, pages

    def on_batch(self, values: list[list[Reading]]) -> tuple[list[list], bool]:
        controls = self._controls
        if self._pages is None and self._recovery_dir is not None and hasattr(self.bank, "dirty_pages"):
            # a new shard of a paged bank: its key, from one of its devices
            self._pages = ShardPages(self._recovery_dir, shard_of(values[0][0].device_id, self._shards))
        if controls is not None:
            if controls.generation != self._generation:
                self.bank, self._generation = self._rebuild(controls.artifact), controls.generation
                if self._pages is not None:  # the old devices' pages belong to the old model
                    self._pages = ShardPages(self._recovery_dir, self._pages.shard)
            if controls.threshold is not None:
                self.bank.threshold = controls.threshold
        # one call for everything that arrived (polls of several partitions): the bank's kernel
        # then runs once per activation; each device's order is kept
        readings = values[0] if len(values) == 1 else [reading for batch in values for reading in batch]
        events, dead, _, _ = self.bank.label(readings)
        return ([events, dead] if dead else [events]), op.StatefulBatchLogic.RETAIN

    def snapshot(self) -> bytes:
        if self._recovery_dir is None:
            return b""
        dirty_pages = getattr(self.bank, "dirty_pages", None)
        if dirty_pages is None or self._pages is None:  # River objects: the whole bank, as before
            return self.bank.snapshot()
        return self._pages.snapshot(dirty_pages())


def records(items: list[LabeledEvent] | list[DeadLetter], settings: FlowSettings) -> Iterator[OutRecord]:
    """Kafka records for a list of labeled events or of dead letters, made one at a time as the
    sink produces them (the Kafka and JSONL sinks call it; no intermediate list per batch)."""
    if items and isinstance(items[0], DeadLetter):
        FLOW_METRICS.dead_letters.inc(len(items))
        for dead in items:
            yield OutRecord(settings.dlq_topic, dead.raw.key, dead.raw.value, dead_letter_headers(dead))
        return
    FLOW_METRICS.labeled.inc(len(items))
    FLOW_METRICS.anomalies.inc(sum(event.is_anomaly for event in items))
    topic = settings.out_topic
    for event in items:
        raw = event.reading.raw
        yield OutRecord(topic, raw.key or event.reading.device_id.encode(), labeled_event_json(event), raw.headers)


def bank_builder(settings: FlowSettings, controls: LiveControls | None = None):
    """A function Bytewax calls to create (``state is None``) or resume a shard's bank."""
    spec, artifact = resolve_detector(settings.detector), None
    if settings.model_dir is not None:
        artifact = artifact_module.load(Path(settings.model_dir))
        spec = artifact.spec

    def rebuild(new_artifact):
        return new_bank(
            new_artifact.spec if new_artifact else spec, settings.threshold, new_artifact, limits, settings.shards
        )

    warm_up = getattr(new_bank(spec), "warm_up", None)
    if warm_up is not None:  # compile the bank's kernel before the first message, not on it
        warm_up()

    limits = StateLimits()

    def build(state: bytes | None) -> ModelBankLogic:
        bank = new_bank(spec, settings.threshold, artifact, limits, settings.shards)
        pages = None
        if state:
            found = manifest(state)
            if found is None:
                bank.restore(state)
            else:  # the shard's pages as of the manifest Bytewax resumes from
                pages = ShardPages.resume(settings.recovery_dir, found)
                bank.load_pages(pages.read())
        return ModelBankLogic(bank, controls, rebuild, settings.recovery_dir, settings.shards, pages)

    return build


def build_flow(
    settings: FlowSettings,
    source: Source | None = None,
    sink: Sink | None = None,
    stop: threading.Event | None = None,
    controls: LiveControls | None = None,
) -> Dataflow:
    """The anomaly dataflow. ``source``/``sink`` replace Kafka (replay files, edgeHub, tests);
    setting ``stop`` ends the Kafka input so the flow drains and returns; ``controls`` changes
    the threshold or the warm-start model while it runs."""
    kafka = settings.client_config()
    flow = Dataflow("edgewatch-anomaly")
    batches = op.input(
        "kafka-in",
        flow,
        source or KafkaBatchSource(kafka, [settings.in_topic], settings.batch_size, settings.from_beginning, stop=stop),
    )
    parsed = op.flat_map("parse", batches, lambda raws: split_batch(raws, settings.shards))
    routed = op.branch("route", parsed, lambda item: item[0] == DEAD)
    dead = op.map("dead-letters", routed.trues, lambda item: item[1])
    detected = op.stateful_batch("detect", routed.falses, bank_builder(settings, controls))
    results = op.merge("results", dead, op.key_rm("unshard", detected))
    serialize = functools.partial(records, settings=settings)
    op.output("kafka-out", results, sink or KafkaBatchSink(kafka, serialize))
    for name, cloud_sink in cloud_sinks(settings):  # each skips dead letters itself
        op.output(name, results, cloud_sink)
    return flow


def cloud_sinks(settings: FlowSettings) -> list[tuple[str, Sink]]:
    """IoT Hub and Event Hubs (AMQP) sinks the settings ask for, behind store-and-forward buffers."""
    from edgewatch.connectors.store_forward import BufferPolicy

    policy = BufferPolicy(
        max_bytes=int(settings.buffer_max_mb * 2**20), max_age_seconds=settings.buffer_max_age_hours * 3600
    )
    sinks: list[tuple[str, Sink]] = []
    if settings.iothub or settings.iothub_connection_string:
        from edgewatch.connectors.iothub import IoTHubSink

        sinks.append(
            (
                "iothub-out",
                IoTHubSink(
                    settings.buffer_dir,
                    settings.iothub_connection_string,
                    settings.iothub_output,
                    settings.iothub_send,
                    settings.iothub_ca_cert,
                    policy=policy,
                ),
            )
        )
    if settings.eventhubs_sink_hub:
        from edgewatch.connectors.eventhubs import EventHubsSink

        connection_string = settings.eventhubs_sink_connection_string or settings.eventhubs_connection_string
        if not connection_string:
            raise ValueError("eventhubs_sink_hub needs eventhubs_sink_connection_string or eventhubs_connection_string")
        sinks.append(
            (
                "eventhubs-out",
                EventHubsSink(
                    settings.buffer_dir,
                    connection_string,
                    settings.eventhubs_sink_hub,
                    settings.eventhubs_sink_send,
                    policy=policy,
                ),
            )
        )
    return sinks


def tune_gc_for_streaming() -> None:
    """Make Python's cyclic garbage collector run rarely in the flow's process.

    The flow allocates a few short-lived objects per message (parsed JSON, readings, output
    bytes); reference counting frees them all, yet every 700 allocations the default
    collector walks the young objects looking for cycles: up to a third of the parse time.
    Objects alive at start-up are frozen out of its way, and it runs every 100,000
    allocations instead.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(100_000, 50, 100)


def init_recovery_dir(path: Path, settings: FlowSettings, partitions: int = 1) -> None:
    """Create Bytewax's recovery partitions in ``path`` unless they are already there, after
    checking that every snapshot in them is plain data (a planted pickle would run code when
    Bytewax loads it: :func:`edgewatch.state.recovery.verify_recovery_dir`).

    The shard count is recorded there: device state is stored per shard, so resuming
    with another count would silently start devices from scratch; refuse instead (and
    point to :func:`edgewatch.state.reshard.reshard_recovery_dir`, which moves it).
    """
    from bytewax.recovery import init_db_dir

    from edgewatch.state.recovery import verify_recovery_dir

    path.mkdir(parents=True, exist_ok=True)
    if not any(path.glob("part-*.sqlite3")):
        init_db_dir(path, partitions)
    verify_recovery_dir(path)
    recorded = path / "edgewatch-shards"
    if recorded.exists() and int(recorded.read_text()) != settings.shards:
        held = recorded.read_text().strip()
        raise ValueError(
            f"{path} holds state for {held} shards, not {settings.shards}: run with --shards {held}, "
            f"reshard the directory offline to {settings.shards} shards, or use a new recovery directory"
        )
    recorded.write_text(str(settings.shards))


def __getattr__(name: str) -> Dataflow:
    # `python -m bytewax.run edgewatch.flows.anomaly:flow` builds the flow from EDGEWATCH_* only when asked
    if name == "flow":
        tune_gc_for_streaming()
        settings = FlowSettings()
        if settings.recovery_dir is not None:  # pass the same directory to bytewax.run's -r
            init_recovery_dir(settings.recovery_dir, settings)
        return build_flow(settings)
    raise AttributeError(name)
