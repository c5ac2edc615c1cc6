"""Fleet-level drift: every feature's distribution over the fleet against the model's training reference.

The artifact carries a reference histogram per feature (:func:`reference_histograms`, written by
``edgewatch train``: equal-width bins over the training history's range and the share of
readings in each). The flow counts each batch's readings into those bins where the batch is parsed (small
arrays, not readings, travel to the one step that keeps the window), and every ``window``
readings compares the window's shares with the reference by the population stability index

    PSI = Σ (window − reference) · ln(window / reference)

(0: the same distribution; 0.1–0.25: a moderate shift; above 0.25: a large one, the usual rule
of thumb). A feature at or above the threshold yields a :class:`FleetDriftEvent` (reason
``fleet-psi``); every feature's PSI is a Prometheus gauge, and the last window's figures are
written to a small JSON report that ``edgewatch models status`` shows.

These events go to their own stream and topic (``fleet-drift``), not to the per-device drift
stream: a device's drift event says an operator (or the detector) accepted that device's new
normal, and carries its levels before and after; a fleet drift event says the world moved away
from what the model was trained on — no device, a different consumer (the retraining loop).
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import bytewax.operators as op
import numpy as np
import orjson
from prometheus_client import Counter, Gauge

from edgewatch.online_models.reference import checked_reference, psi
from edgewatch.schema import Reading, _utc_datetime

log = logging.getLogger(__name__)

#: the last window's figures, in the model cache directory (``edgewatch models status`` reads it)
FLEET_DRIFT_REPORT = "fleet-drift.json"


@dataclass(slots=True)
class FleetDriftEvent:
    """A feature whose fleet-wide distribution moved away from the training reference."""

    feature: str
    timestamp: float  # source time of the window's last reading
    psi: float
    readings: int
    model_version: str
    reference: list[float]
    window: list[float]
    reason: str = "fleet-psi"


def fleet_drift_event_json(event: FleetDriftEvent) -> bytes:
    return orjson.dumps(
        {
            "feature": event.feature,
            "timestamp": _utc_datetime(event.timestamp),
            "psi": round(event.psi, 4),
            "readings": event.readings,
            "reason": event.reason,
            "model": {"version": event.model_version},
            "reference_shares": event.reference,
            "window_shares": event.window,
        },
        option=orjson.OPT_UTC_Z,
    )


class FleetDriftMetrics:
    def __init__(self):
        self.psi = Gauge("edgewatch_fleet_drift_psi", "PSI of the last fleet window against the reference", ["feature"])
        self.events = Counter(
            "edgewatch_fleet_drift_events", "Fleet windows whose PSI reached the threshold", ["feature"]
        )


FLEET_DRIFT_METRICS = FleetDriftMetrics()


def bin_counts(readings: list[Reading], model) -> tuple[str, dict[str, np.ndarray], int, float] | None:
    """``(model version, counts per feature, readings, last source time)`` of a batch, in the bins
    of ``model``'s reference; ``None`` without a model or a reference."""
    reference = checked_reference(model.metadata) if model is not None else None
    if reference is None or not readings:
        return None
    counts = {}
    for name, ref in reference.items():
        column = [r.features[name] for r in readings if name in r.features]
        if column:
            edges = np.asarray(ref["edges"], np.float64)
            counts[name] = np.bincount(np.searchsorted(edges, column, side="right"), minlength=len(edges) + 1)
    return model.version, counts, len(readings), max(r.timestamp for r in readings)


class FleetDriftLogic(op.StatefulBatchLogic):
    """The fleet's window: bin counts summed until ``window`` readings, then PSI per feature.

    The window is not snapshotted (a restart starts a new one); a new model starts one too."""

    def __init__(self, reference_of, window: int, threshold: float, report: Path | None):
        self._reference_of = reference_of  # model version → its reference (the model in effect)
        self.window, self.threshold, self.report = window, threshold, report
        self._version: str | None = None
        self._counts: dict[str, np.ndarray] = {}
        self._readings = 0

    def on_batch(self, values):
        events: list[FleetDriftEvent] = []
        for version, counts, readings, last_time in values:
            if version != self._version:
                self._version, self._counts, self._readings = version, {}, 0
            for name, added in counts.items():
                self._counts[name] = self._counts.get(name, 0) + added
            self._readings += readings
            if self._readings >= self.window:
                events.extend(self._close(last_time))
        return ([events] if events else []), op.StatefulBatchLogic.RETAIN

    def _close(self, last_time: float) -> list[FleetDriftEvent]:
        reference = self._reference_of(self._version) or {}
        events, figures = [], {}
        for name, counts in sorted(self._counts.items()):
            ref = reference.get(name)
            if ref is None or counts.sum() == 0:
                continue
            shares = counts / counts.sum()
            value = psi(ref["shares"], shares)
            figures[name] = round(value, 4)
            FLEET_DRIFT_METRICS.psi.labels(name).set(value)
            if value >= self.threshold:
                FLEET_DRIFT_METRICS.events.labels(name).inc()
                events.append(
                    FleetDriftEvent(name, last_time, value, self._readings, self._version, ref["shares"],
                                    shares.round(6).tolist())
                )  # fmt: skip
        self._write_report(last_time, figures, [e.feature for e in events])
        self._counts, self._readings = {}, 0
        return events

    def _write_report(self, last_time: float, figures: dict, drifted: list[str]) -> None:
        if self.report is None:
            return
        report = {
            "model_version": self._version,
            "window_end": _utc_datetime(last_time).isoformat(),
            "readings": self._readings,
            "threshold": self.threshold,
            "psi": figures,
            "drifted": drifted,
        }
        try:  # written whole, then renamed: a reader never sees half a report
            self.report.parent.mkdir(parents=True, exist_ok=True)
            partial = self.report.with_suffix(".partial")
            partial.write_text(json.dumps(report, indent=2))
            os.replace(partial, self.report)
        except OSError as exc:
            log.warning("fleet drift: could not write %s: %s", self.report, exc)

    def snapshot(self) -> bytes:
        return b""


def read_report(path: Path) -> dict | None:
    """The last fleet drift report, or ``None``."""
    try:
        report = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    return report if isinstance(report, dict) else None
