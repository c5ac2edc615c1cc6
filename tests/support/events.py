"""Labeled events as the flow hands them to its outputs, and a flow that writes them to one sink."""

from __future__ import annotations

import bytewax.operators as op
from bytewax.dataflow import Dataflow
from bytewax.outputs import Sink
from bytewax.testing import TestingSource, run_main

from edgewatch.schema import LabeledEvent, RawMessage, Reading


def labeled_event(offset: int, device: str, anomaly: bool = False) -> LabeledEvent:
    """The event labeled from ``telemetry`` partition 0 at ``offset`` (message id ``telemetry:0:<offset>``),
    scored by robust-zscore 0.1.0."""
    raw = RawMessage(device.encode(), b"{}", [], "telemetry", 0, offset, 1_700_000_000_000 + offset)
    reading = Reading(device, 1_700_000_000.0 + offset, {"machine.temperature": 20.0 + offset}, raw)
    return LabeledEvent(reading, 0.97 if anomaly else 0.02, anomaly, "robust-zscore", "0.1.0")


def run_sink(sink: Sink, batches: list[list[LabeledEvent]]) -> None:
    """A Bytewax flow that writes ``batches`` (one list per item) to ``sink``, run to its end."""
    flow = Dataflow("sink-test")
    op.output("out", op.input("events", flow, TestingSource(batches)), sink)
    run_main(flow)
