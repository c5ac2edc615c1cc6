"""Prometheus metrics of the flow, counted in one place, and the totals a run reports.

The flow's parse step and one ``inspect`` step after detection call :data:`FLOW_METRICS`; the
Kafka source reports lag and the time of the last message; the store-and-forward queue its depth
and oldest age; the banks their snapshot time. Names, kinds and labels are the contract with the
Grafana dashboard (:mod:`edgewatch.ui.dashboard_metrics`; ``tests/test_metrics.py`` checks the
registry against it). Served by ``--metrics-port`` (127.0.0.1 unless ``--metrics-host``).
"""

from __future__ import annotations

import operator
import threading
import time
from collections import Counter as Tally
from dataclasses import dataclass, field

from prometheus_client import Counter, Gauge, Histogram, Info

from edgewatch.schema import BankResult, DeadLetter

_IS_ANOMALY = operator.attrgetter("is_anomaly")
#: reason classes of dead letters: a bounded label set, from the reason's wording (first match wins)
REASON_CLASSES = (
    ("detect", ("detector error",)),
    ("too-large", ("too large", "too many", "nested", "too deep", "size")),
    ("encoding", ("utf-8", "not utf", "encoding")),
    ("not-json", ("not json", "json", "empty message")),
    ("bad-time", ("time", "timestamp", "epoch")),
    ("bad-device-id", ("device id", "deviceid", "kafka key")),
    ("bad-value", ("must be a number", "out of range", "number", "value")),
    ("missing-field", ("missing field", "must be an object")),
    ("bad-shape", ("shape", "json object", "not a json")),
    ("limits", ("limit", "evicted", "feature set")),
)


def reason_class(dead: DeadLetter) -> str:
    """A short, bounded name for why a message was refused (the metric label; the full reason
    stays in the dead letter's headers).

    >>> from edgewatch.schema import RawMessage
    >>> raw = RawMessage(None, b"", [], "t", 0, 0)
    >>> reason_class(DeadLetter(raw, "not JSON: unexpected character"))
    'not-json'
    >>> reason_class(DeadLetter(raw, "machine.temperature must be a number, got string"))
    'bad-value'
    """
    if dead.stage == "detect":
        return "detect"
    text = dead.reason.lower()
    for name, words in REASON_CLASSES:
        if any(word in text for word in words):
            return name
    return "other"


@dataclass
class RunTotals:
    """Plain totals of this process (what the status and summary lines print)."""

    received: int = 0
    labeled: int = 0
    anomalies: int = 0
    alarms_raised: int = 0
    active_alarms: int = 0
    drift_events: int = 0
    dead_letters: Tally = field(default_factory=Tally)
    lag: dict[tuple[str, int], int] = field(default_factory=dict)
    last_message: dict[str, float] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)


class FlowMetrics:
    """The flow's Prometheus metrics and this process's totals, updated together."""

    def __init__(self):
        self.received = Counter("edgewatch_messages_received", "Messages read from the input topic")
        self.labeled = Counter("edgewatch_events_labeled", "Labeled events written")
        self.anomalies = Counter("edgewatch_anomalies", "Labeled events with is_anomaly true")
        self.dead_letters = Counter(
            "edgewatch_dead_letters", "Messages sent to the dead-letter topic, by reason class", ["reason"]
        )
        self.alarms_raised = Counter("edgewatch_alarms_raised", "Alarms raised")
        self.active_alarms = Gauge("edgewatch_active_alarms", "Devices whose alarm is raised now")
        self.drift_events = Counter("edgewatch_drift_events", "New normals accepted, by reason", ["reason"])
        self.lag = Gauge(
            "edgewatch_consumer_lag_messages",
            "Messages between the consumer's position and the partition's end",
            ["topic", "partition"],
        )
        self.last_message_age = Gauge(
            "edgewatch_last_message_age_seconds", "Seconds since this process last read a message", ["topic"]
        )
        self.latency = Histogram(
            "edgewatch_event_label_latency_seconds",
            "Seconds from a message's Kafka timestamp to its label (the oldest message of each batch)",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
        )
        self.model = Info("edgewatch_model", "The detector and model version labeling")
        self.snapshot_duration = Histogram(
            "edgewatch_snapshot_duration_seconds",
            "Seconds to write one shard's state snapshot",
            buckets=(0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 30),
        )
        self.totals = RunTotals()

    # -- the flow -------------------------------------------------------------------------------

    def count_parsed(self, received: int, dead: list[DeadLetter]) -> None:
        """A parsed batch: ``received`` messages, of which ``dead`` were refused."""
        self.received.inc(received)
        with self.totals.lock:
            self.totals.received += received
        self._count_dead(dead)

    def count_results(self, result: BankResult) -> None:
        """What a model bank returned for a batch."""
        events = result.events
        anomalies = sum(map(_IS_ANOMALY, events))
        self.labeled.inc(len(events))
        self.anomalies.inc(anomalies)
        if events:
            sent_ms = events[0].reading.raw.timestamp_ms
            if sent_ms is not None:
                self.latency.observe(max(0.0, time.time() - sent_ms / 1000.0))
        raised = sum(alarm.kind == "raised" for alarm in result.alarms)
        cleared = len(result.alarms) - raised
        if raised:
            self.alarms_raised.inc(raised)
        if raised or cleared:
            self.active_alarms.inc(raised - cleared)
        for drift in result.drift:
            self.drift_events.labels(drift.reason).inc()
        with self.totals.lock:
            totals = self.totals
            totals.labeled += len(events)
            totals.anomalies += anomalies
            totals.alarms_raised += raised
            totals.active_alarms += raised - cleared
            totals.drift_events += len(result.drift)
        self._count_dead(result.dead_letters)

    def _count_dead(self, dead: list[DeadLetter]) -> None:
        if not dead:
            return
        classes = Tally(reason_class(letter) for letter in dead)
        for name, count in classes.items():
            self.dead_letters.labels(name).inc(count)
        with self.totals.lock:
            self.totals.dead_letters.update(classes)

    # -- the input --------------------------------------------------------------------------------

    def read_from(self, topic: str, partition: int, lag: int | None) -> None:
        """A Kafka partition returned messages; ``lag``: how many are left behind its end."""
        now = time.time()
        with self.totals.lock:
            first = topic not in self.totals.last_message
            self.totals.last_message[topic] = now
            if lag is not None:
                self.totals.lag[(topic, partition)] = lag
        if first:
            self.last_message_age.labels(topic).set_function(lambda: time.time() - self.totals.last_message[topic])
        if lag is not None:
            self.lag.labels(topic, str(partition)).set(lag)

    def use_model(self, detector: str, version: str) -> None:
        self.model.info({"detector": detector, "version": version})


FLOW_METRICS = FlowMetrics()
