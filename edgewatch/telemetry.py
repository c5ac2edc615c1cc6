"""Prometheus metrics of the flow (served by ``edgewatch run --metrics-port``)."""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import Counter


@dataclass(frozen=True)
class FlowMetrics:
    received: Counter
    labeled: Counter
    anomalies: Counter
    dead_letters: Counter


FLOW_METRICS = FlowMetrics(
    received=Counter("edgewatch_messages_received", "Messages read from the input topic"),
    labeled=Counter("edgewatch_events_labeled", "Labeled events written"),
    anomalies=Counter("edgewatch_anomalies", "Labeled events with is_anomaly true"),
    dead_letters=Counter("edgewatch_dead_letters", "Messages sent to the dead-letter topic"),
)
