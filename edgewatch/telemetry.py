"""Prometheus metrics of the flow (served by ``edgewatch run --metrics-port``), counted in one place:
the flow's parse and detect steps call :class:`FlowMetrics`; sinks count nothing."""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import Counter

from edgewatch.schema import BankResult, DeadLetter


@dataclass(frozen=True)
class FlowMetrics:
    received: Counter
    labeled: Counter
    anomalies: Counter
    dead_letters: Counter
    alarms: Counter
    drift_events: Counter

    def count_parsed(self, received: int, dead: list[DeadLetter]) -> None:
        """A parsed batch: ``received`` messages, of which ``dead`` were refused."""
        self.received.inc(received)
        self._count_dead(dead)

    def count_results(self, result: BankResult) -> None:
        """What a model bank returned for a batch."""
        events = result.events
        self.labeled.inc(len(events))
        self.anomalies.inc(sum(event.is_anomaly for event in events))
        self._count_dead(result.dead_letters)
        for alarm in result.alarms:
            self.alarms.labels(alarm.kind).inc()
        if result.drift:
            self.drift_events.inc(len(result.drift))

    def _count_dead(self, dead: list[DeadLetter]) -> None:
        for letter in dead:
            self.dead_letters.labels(letter.stage).inc()


FLOW_METRICS = FlowMetrics(
    received=Counter("edgewatch_messages_received", "Messages read from the input"),
    labeled=Counter("edgewatch_events_labeled", "Readings labeled"),
    anomalies=Counter("edgewatch_anomalies", "Labeled readings with is_anomaly true"),
    dead_letters=Counter("edgewatch_dead_letters", "Messages sent to the dead-letter output", ["stage"]),
    alarms=Counter("edgewatch_alarm_events", "Device alarms raised or cleared", ["event"]),
    drift_events=Counter("edgewatch_drift_events", "New normals accepted (drift events)"),
)
