"""The RUL flow: telemetry in; per reading a remaining-useful-life estimate, maintenance alerts out.

Read top to bottom, this is the whole data path::

    in            batches of raw messages (Kafka, a replayed file), as in the anomaly flow
    run-ends      (optional) the maintenance topic: a device failed or was serviced
    parse         each batch → valid readings and dead letters (the anomaly flow's parse)
    estimate      one fleet model, one key: a batch of readings → one estimate each (P10/P50/P90),
                  a maintenance alert when P10 first falls below the horizon; a failure's run becomes
                  labeled data and, every ``refit_every`` failures, the fleet model is refit
    outputs       typed streams — estimates, alerts, dead_letters — each a list per item:
                  Kafka topics (rul, maintenance-alerts, deadletter), and IoT Hub / Event Hubs
                  as the anomaly flow's cloud settings ask (:func:`~edgewatch.flows.wiring.cloud_links`)

The model (``--model``: a directory or ``models:/NAME@ALIAS``) is resolved, verified and cached
by the process owner through the registry code, as the anomaly flow's (it must be an RUL model).
With ``--recovery-dir``, the fleet's state (each device's current run) is snapshotted as data at
every epoch (without it, not at all), and what it learned from failures (the failed runs, the refit model) is kept in
``<recovery_dir>/rul`` (:class:`~edgewatch.rul.store.RefitStore`). One key keeps the whole fleet
in one worker: a refit needs every run, and the model runs at tens of thousands of readings per
second in one process (``bench/rul_bench.py``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import bytewax.operators as op
from bytewax.dataflow import Dataflow, Stream
from bytewax.inputs import Source

from edgewatch.app import Application
from edgewatch.config import RulSettings
from edgewatch.connectors.files import FileSource, JsonlSink, dead_letter_line
from edgewatch.connectors.kafka import KafkaBatchSource, KafkaSink
from edgewatch.flows.anomaly import parse
from edgewatch.flows.wiring import cloud_links, dead_letter_records, device_records, sibling
from edgewatch.rul.events import RulEstimate, RunEnd, maintenance_alert_json, parse_run_end, rul_estimate_json
from edgewatch.rul.online import RulFleet
from edgewatch.rul.store import RefitStore
from edgewatch.schema import DeadLetter, RawMessage

FLEET = "fleet"


@dataclass(frozen=True)
class RulStreams:
    """The RUL flow's outputs, one typed stream each; every item is a non-empty list."""

    estimates: Stream[list[RulEstimate]]
    alerts: Stream[list[RulEstimate]]
    dead_letters: Stream[list[DeadLetter]]


@dataclass(frozen=True)
class RulResult:
    estimates: list[RulEstimate]
    dead_letters: list[DeadLetter]


def build_rul_flow(
    settings: RulSettings, source: Source, fleet: RulFleet, run_ends: Source | None = None
) -> tuple[Dataflow, RulStreams]:
    """The RUL dataflow reading ``source`` (and run ends from ``run_ends``), estimating with ``fleet``."""
    flow = Dataflow("edgewatch-rul")
    parsed = op.map("parse", op.input("in", flow, source), parse)
    bad_input = op.filter_map("bad-input", parsed, lambda batch: batch[1] or None)
    work = op.filter_map("readings", parsed, lambda batch: (FLEET, batch[0]) if batch[0] else None)
    if run_ends is not None:
        ends = op.map("run-ends", op.input("run-ends-in", flow, run_ends), lambda raws: (FLEET, run_end_items(raws)))
        work = op.merge("work", work, ends)
    results = op.key_rm("unkey", op.stateful_batch("estimate", work, fleet_builder(settings, fleet)))
    estimates = op.filter_map("estimates", results, lambda result: result.estimates or None)
    streams = RulStreams(
        estimates=estimates,
        alerts=op.filter_map("alerts", estimates, lambda batch: [e for e in batch if e.alert] or None),
        dead_letters=op.merge(
            "dead-letters", bad_input, op.filter_map("rul-errors", results, lambda r: r.dead_letters or None)
        ),
    )
    return flow, streams


def run_end_items(raws: list[RawMessage]) -> list[RunEnd | DeadLetter]:
    """Run-end messages, each a :class:`RunEnd` or a dead letter saying what is wrong with it."""
    items: list[RunEnd | DeadLetter] = []
    for raw in raws:
        try:
            items.append(parse_run_end(raw.value or b""))
        except ValueError as exc:
            items.append(DeadLetter(raw, str(exc), "run-end"))
    return items


class FleetLogic(op.StatefulBatchLogic[list, RulResult, bytes]):
    """Bytewax glue for the fleet: readings are estimated in order, run ends end runs."""

    def __init__(self, fleet: RulFleet, ends_at_eof: bool, recovery: bool):
        self.fleet = fleet
        self._ends_at_eof = ends_at_eof
        self._recovery = recovery

    def on_batch(self, values: list[list]) -> tuple[list[RulResult], bool]:
        results = []
        for items in values:
            readings = [item for item in items if not isinstance(item, RunEnd | DeadLetter)]
            if readings:
                batch = self.fleet.update_many(readings)
                results.append(RulResult(batch.estimates, batch.rejected))
            self.fleet.end_runs([item for item in items if isinstance(item, RunEnd)])
            bad = [item for item in items if isinstance(item, DeadLetter)]
            if bad:
                results.append(RulResult([], bad))
        return results, op.StatefulBatchLogic.RETAIN

    def on_eof(self) -> tuple[list[RulResult], bool]:
        # a replayed run-to-failure history: every run ended in a failure at its last reading
        if self._ends_at_eof:
            self.fleet.end_runs([RunEnd(device, "failure") for device in self.fleet.active_devices()])
            self.fleet.wait_for_refit()
        return [], op.StatefulBatchLogic.RETAIN

    def snapshot(self) -> bytes:
        # Bytewax asks at every epoch, recovery or not: without it the snapshot is thrown away
        return self.fleet.snapshot() if self._recovery else b""


def fleet_builder(settings: RulSettings, fleet: RulFleet):
    def build(state: bytes | None) -> FleetLogic:
        if state:
            fleet.restore(state)
        return FleetLogic(fleet, settings.replay_ends_in_failure, settings.recovery_dir is not None)

    return build


#: the folder of the recovery directory where the fleet keeps what it learned from failures
STORE_DIR = "rul"


def build_fleet(app: Application) -> RulFleet:
    """The fleet of the model ``app`` resolved (``--model``), resuming what ``<recovery_dir>/rul``
    kept; closed with the process (``ValueError``: it cannot learn as asked)."""
    settings: RulSettings = app.settings
    if app.artifact is None:
        raise ValueError("the RUL flow needs --model (an `edgewatch train --task rul` directory or models:/NAME@ALIAS)")
    store = RefitStore(Path(settings.recovery_dir) / STORE_DIR) if settings.recovery_dir is not None else None
    fleet = RulFleet(
        app.artifact, settings.horizon, settings.refit_every, max_rows=settings.refit_max_rows, store=store
    )
    app.closing(fleet.close)
    return fleet


# -- run modes ----------------------------------------------------------------------------------


def kafka_rul_flow(app: Application, fleet: RulFleet) -> Dataflow:
    """Kafka in (telemetry, and run ends from ``run_end_topic``), Kafka out."""
    settings: RulSettings = app.settings
    config = settings.client_config()

    def source(topic: str) -> KafkaBatchSource:
        return KafkaBatchSource(
            config,
            [topic],
            settings.batch_size,
            settings.start_from,
            stop=app.stop_requested,
            group=settings.consumer_group,
        )

    run_ends = source(settings.run_end_topic) if settings.run_end_topic else None
    flow, streams = build_rul_flow(settings, source(settings.in_topic), fleet, run_ends)
    op.output("rul-kafka", streams.estimates, KafkaSink(config, device_records(settings.rul_topic, rul_estimate_json)))
    alerts = device_records(settings.maintenance_alerts_topic, maintenance_alert_json)
    op.output("alerts-kafka", streams.alerts, KafkaSink(config, alerts))
    op.output("dead-letters-kafka", streams.dead_letters, KafkaSink(config, dead_letter_records(settings.dlq_topic)))
    to_cloud(streams, settings)
    return flow


def to_cloud(streams: RulStreams, settings: RulSettings) -> None:
    """Estimates and alerts to IoT Hub and Event Hubs, as the anomaly flow's cloud settings ask:
    per link one buffer (``<link>-rul``), alerts always, estimates with send mode ``all``."""
    from edgewatch.azure.messages import alert_selection, rul_selection

    for link, sink in cloud_links(settings).items():
        op.output(f"rul-{link}", streams.estimates, sink(f"{link}-rul", rul_selection))
        op.output(f"alerts-{link}", streams.alerts, sink(f"{link}-rul", alert_selection))


def replay_rul_flow(app: Application, fleet: RulFleet, path: Path, out: Path) -> Dataflow:
    """A recorded file in; estimates to ``out``, alerts and dead letters beside it; no broker."""
    flow, streams = build_rul_flow(app.settings, FileSource(path, app.settings.batch_size), fleet)
    op.output("rul-file", streams.estimates, JsonlSink(out, rul_estimate_json))
    op.output("alerts-file", streams.alerts, JsonlSink(sibling(out, "alerts"), maintenance_alert_json))
    op.output("dead-letters-file", streams.dead_letters, JsonlSink(sibling(out, "deadletter"), dead_letter_line))
    return flow
