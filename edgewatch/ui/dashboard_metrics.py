"""The Prometheus metrics the Grafana dashboard (``k8s/grafana/edgewatch-dashboard.json``) reads.

This is the contract between the dashboard and the flow's exporter: every panel query names
only metrics listed here (``tests/test_grafana_dashboard.py`` checks it), and the flow exports
each of them under this name, kind and labels. Names are metric *families* as
``prometheus_client`` declares them; Prometheus exposes a counter ``x`` as ``x_total``, a
histogram as ``x_bucket``/``x_sum``/``x_count`` and an info metric as ``x_info``
(:func:`exposed_series`).

>>> "edgewatch_consumer_lag_messages" in DASHBOARD_METRICS
True
>>> exposed_series("edgewatch_dead_letters")
('edgewatch_dead_letters_total',)
>>> family_of("edgewatch_event_label_latency_seconds_bucket")
'edgewatch_event_label_latency_seconds'
"""

from __future__ import annotations

from typing import Literal, NamedTuple

Kind = Literal["counter", "gauge", "histogram", "info"]


class MetricSpec(NamedTuple):
    """One metric family: its kind, its labels (bounded sets of values only) and its help text."""

    kind: Kind
    labels: tuple[str, ...]
    help: str


METRICS: dict[str, MetricSpec] = {
    # is the input keeping up?
    "edgewatch_messages_received": MetricSpec("counter", (), "Messages read from the input topic"),
    "edgewatch_events_labeled": MetricSpec("counter", (), "Labeled events written"),
    "edgewatch_consumer_lag_messages": MetricSpec(
        "gauge", ("topic", "partition"), "Messages between the consumer's position and the partition's end"
    ),
    "edgewatch_last_message_age_seconds": MetricSpec(
        "gauge", ("topic",), "Seconds since this process last read a message from the topic"
    ),
    "edgewatch_event_label_latency_seconds": MetricSpec(
        "histogram", (), "Seconds from a message's Kafka timestamp to its labeled event being written"
    ),
    # what does it find?
    "edgewatch_anomalies": MetricSpec("counter", (), "Labeled events with is_anomaly true"),
    "edgewatch_active_alarms": MetricSpec("gauge", (), "Devices whose alarm is raised now"),
    "edgewatch_alarms_raised": MetricSpec("counter", (), "Alarms raised"),
    "edgewatch_drift_events": MetricSpec(
        "counter", ("reason",), "New normals accepted, by reason (consistent-shift, timeout, operator)"
    ),
    "edgewatch_model": MetricSpec("info", ("detector", "version"), "The detector and model version labeling"),
    # what does it refuse or hold back?
    "edgewatch_dead_letters": MetricSpec(
        "counter", ("reason",), "Messages sent to the dead-letter topic, by reason class (a short, bounded name)"
    ),
    "edgewatch_forward_buffered": MetricSpec("gauge", ("buffer",), "Messages waiting in a store-and-forward buffer"),
    "edgewatch_forward_oldest_age_seconds": MetricSpec(
        "gauge", ("buffer",), "Age of the oldest message waiting in a store-and-forward buffer"
    ),
    "edgewatch_forward_dropped": MetricSpec(
        "counter", ("buffer", "reason"), "Messages dropped from a store-and-forward buffer"
    ),
    # state snapshots (Bytewax recovery)
    "edgewatch_snapshot_duration_seconds": MetricSpec("histogram", (), "Seconds to write one state snapshot"),
}

#: The metric families the dashboard reads (the flow must export exactly these names).
DASHBOARD_METRICS: tuple[str, ...] = tuple(METRICS)

_SUFFIXES: dict[Kind, tuple[str, ...]] = {
    "counter": ("_total",),
    "gauge": ("",),
    "histogram": ("_bucket", "_sum", "_count"),
    "info": ("_info",),
}


def exposed_series(family: str) -> tuple[str, ...]:
    """The series names Prometheus scrapes for a family (``_created`` samples left out)."""
    return tuple(family + suffix for suffix in _SUFFIXES[METRICS[family].kind])


def family_of(series: str) -> str | None:
    """The listed family a scraped series name belongs to, or ``None``."""
    for family in METRICS:
        if series in exposed_series(family):
            return family
    return None


def exporter_problems(registry) -> list[str]:
    """What a ``prometheus_client`` registry exports differently from :data:`METRICS` (``[]``: none).

    Checks that every listed family is registered with its kind and, where it already has
    samples, exactly its labels (a labelled family shows its labels only once it has children).

    >>> from prometheus_client import CollectorRegistry, Gauge
    >>> registry = CollectorRegistry()
    >>> _ = Gauge("edgewatch_active_alarms", "Devices whose alarm is raised now", registry=registry)
    >>> exporter_problems(registry)[:2]
    ['edgewatch_messages_received: not exported', 'edgewatch_events_labeled: not exported']
    """
    exported = {family.name: family for family in registry.collect()}
    problems = []
    for name, spec in METRICS.items():
        family = exported.get(name)
        if family is None:
            problems.append(f"{name}: not exported")
            continue
        if family.type != spec.kind:
            problems.append(f"{name}: a {family.type}, the dashboard reads a {spec.kind}")
        for sample in family.samples:
            if sample.name not in exposed_series(name):
                continue  # _created
            labels = set(sample.labels) - {"le"}
            if labels != set(spec.labels):
                problems.append(f"{name}: labels {sorted(labels)}, the dashboard reads {sorted(spec.labels)}")
                break
    return problems
