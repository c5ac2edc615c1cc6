"""Fleet-level drift: every feature's distribution over the fleet against the model's training reference.

The artifact carries a reference histogram per feature (:func:`reference_histograms`, written by
``edgewatch train``: bins at the training history's quantiles, the share of readings in each,
and how far the history's own windows strayed from it). The flow counts each batch's readings
into those bins where the batch is parsed (small arrays, not readings, travel to the one step
that keeps the window), and every ``window`` readings compares the window's shares with the
reference by the population stability index

    PSI = Σ (window − reference) · ln(window / reference)

(0: the same distribution; 0.1–0.25: a moderate shift; above 0.25: a large one, the usual rule
of thumb). A feature drifts when its PSI stays at or above its threshold — the policy's
(``fleet_drift_psi``) or, if larger, the PSI windows of that size showed on the training history
itself — for ``fleet_drift_confirm`` windows in a row; that yields one :class:`FleetDriftEvent`
(reason ``fleet-psi``), and the drift ends at the first window below. Every feature's PSI is a
Prometheus gauge, and the last window's figures are written to a small JSON report that
``edgewatch models status`` shows and ``edgewatch retrain --auto`` watches.
``bench/fleet_drift.py`` measures false drift on a stationary fleet and the time to detect a
drifting one.

These events go to their own stream and topic (``fleet-drift``), not to the per-device drift
stream: a device's drift event says an operator (or the detector) accepted that device's new
normal, and carries its levels before and after; a fleet drift event says the world moved away
from what the model was trained on — no device, a different consumer (the retraining loop).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import bytewax.operators as op
import numpy as np
import orjson
from prometheus_client import Counter, Gauge

from edgewatch.flows.reports import write_report
from edgewatch.online_models.reference import checked_reference, null_bound, psi
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


MIN_READINGS_PER_BIN = 20  # fewer readings of a feature in a window than this per bin: not measured


class FleetDriftLogic(op.StatefulBatchLogic):
    """The fleet's window: bin counts summed until ``window`` readings, then PSI per feature.

    A feature's window is *above* when its PSI reaches the larger of ``threshold`` (the policy)
    and what windows of that size showed on the training history itself
    (:func:`~edgewatch.online_models.reference.null_bound`: a fleet that random-walks or cycles
    daily strays that far with no drift). A feature *drifts* after ``confirm`` windows above in a
    row — one :class:`FleetDriftEvent` then, not one per window — and stops drifting at the
    first window below (hysteresis: a drift is reported once, a noisy window is not a drift).

    The window is not snapshotted (a restart starts a new one); a new model starts one too."""

    def __init__(self, reference_of, window: int, threshold: float, report: Path | None, confirm: int = 2):
        self._reference_of = reference_of  # model version → its reference (the model in effect)
        self.window, self.threshold, self.report, self.confirm = window, threshold, report, confirm
        self._version: str | None = None
        self._counts: dict[str, np.ndarray] = {}
        self._readings = 0
        self.windows = 0  # windows measured
        self._above: dict[str, int] = {}  # windows above in a row, per feature
        self.drifting: dict[str, float] = {}  # feature → wall-clock time its drift was reported

    def on_batch(self, values):
        events: list[FleetDriftEvent] = []
        for version, counts, readings, last_time in values:
            if version != self._version:
                self._version, self._counts, self._readings = version, {}, 0
                self._above, self.drifting = {}, {}
            for name, added in counts.items():
                self._counts[name] = self._counts.get(name, 0) + added
            self._readings += readings
            if self._readings >= self.window:
                events.extend(self._close(last_time))
        return ([events] if events else []), op.StatefulBatchLogic.RETAIN

    def _close(self, last_time: float) -> list[FleetDriftEvent]:
        reference = self._reference_of(self._version) or {}
        events, figures, thresholds = [], {}, {}
        self.windows += 1
        for name, counts in sorted(self._counts.items()):
            ref = reference.get(name)
            if ref is None or counts.sum() < MIN_READINGS_PER_BIN * len(counts):
                continue
            shares = counts / counts.sum()
            value = psi(ref["shares"], shares)
            figures[name] = round(value, 4)
            thresholds[name] = limit = round(max(self.threshold, null_bound(ref, int(counts.sum()))), 4)
            FLEET_DRIFT_METRICS.psi.labels(name).set(value)
            if value < limit:
                self._above.pop(name, None)
                self.drifting.pop(name, None)
                continue
            self._above[name] = self._above.get(name, 0) + 1
            if self._above[name] >= self.confirm and name not in self.drifting:
                self.drifting[name] = time.time()
                FLEET_DRIFT_METRICS.events.labels(name).inc()
                events.append(
                    FleetDriftEvent(name, last_time, value, self._readings, self._version, ref["shares"],
                                    shares.round(6).tolist())
                )  # fmt: skip
        self._write_report(last_time, figures, thresholds)
        self._counts, self._readings = {}, 0
        return events

    def _write_report(self, last_time: float, figures: dict, thresholds: dict) -> None:
        if self.report is None:
            return
        report = {
            "model_version": self._version,
            "window_end": _utc_datetime(last_time).isoformat(),
            "readings": self._readings,
            "threshold": self.threshold,
            "thresholds": thresholds,
            "psi": figures,
            "drifted": sorted(self.drifting),
            "drift_reported": {name: round(at, 3) for name, at in sorted(self.drifting.items())},
        }
        write_report(self.report, report, "fleet drift")

    def snapshot(self) -> bytes:
        return b""
