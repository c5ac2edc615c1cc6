"""What a shard does for the model lifecycle: warm a new model before it takes over, run a
challenger in the shadow of the champion.

* :class:`RecentReadings` keeps each device's last normal readings (bounded: ``per_device``
  each, and as many devices as the bank may hold). A rollout teaches them to each device's new
  model before it labels anything (:func:`warmed`): it has seen the device's recent behaviour,
  so there is no blind period and no burst of false alarms after a switch.
* :func:`compare` pairs the champion's and the challenger's results on the same readings:
  :class:`ShadowEvent` per reading (the challenger's label, the champion's, and the device's
  running agreement and alarm rates) and fleet-level Prometheus metrics.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime

import orjson
from prometheus_client import Counter, Gauge

from edgewatch.online_models.artifact import ModelArtifact, continue_fit, fit_detector
from edgewatch.online_models.registry import DetectorSpec
from edgewatch.schema import BankResult, LabeledEvent, RawMessage, Reading, _source, _utc_datetime

#: the raw message of a kept reading: it never reaches an output
_REPLAYED = RawMessage(None, None, [], "warm-up", 0, 0, None)


class RecentReadings:
    """The last ``per_device`` readings of each device (time, features), for warming a new model
    (the flow keeps those its champion labeled normal).

    At most ``max_devices`` devices are kept; beyond that the tenth seen least recently is dropped.

    >>> recent = RecentReadings(per_device=2)
    >>> raw = RawMessage(None, None, [], "t", 0, 0, None)
    >>> recent.add([LabeledEvent(Reading("pump-1", float(t), {"rpm": t}, raw), 0.0, False, "m", "1") for t in range(3)])
    >>> [(r.timestamp, r.features) for r in recent.by_device()["pump-1"]]
    [(1.0, {'rpm': 1}), (2.0, {'rpm': 2})]
    """

    def __init__(self, per_device: int = 256, max_devices: int = 100_000):
        self.per_device = per_device
        self.max_devices = max_devices
        self._by_device: dict[str, deque] = {}
        self._seen: dict[str, int] = {}
        self._tick = 0

    def __len__(self) -> int:
        return len(self._by_device)

    def add(self, events: list[LabeledEvent]) -> None:
        """Keep the readings of ``events``."""
        if self.per_device <= 0:
            return
        self._tick += 1
        by_device, seen, tick = self._by_device, self._seen, self._tick
        for event in events:
            reading = event.reading
            kept = by_device.get(reading.device_id)
            if kept is None:
                kept = by_device[reading.device_id] = deque(maxlen=self.per_device)
            kept.append((reading.timestamp, reading.features))
            seen[reading.device_id] = tick
        if len(by_device) > self.max_devices:
            oldest = sorted(seen, key=seen.__getitem__)[: len(by_device) - self.max_devices + self.max_devices // 10]
            for device in oldest:
                del by_device[device], seen[device]

    def by_device(self) -> dict[str, list[Reading]]:
        """The kept readings of each device, in time order."""
        return {
            device: [Reading(device, timestamp, features, _REPLAYED) for timestamp, features in kept]
            for device, kept in self._by_device.items()
        }

    def counts(self) -> dict[str, int]:
        """Readings kept per device."""
        return {device: len(kept) for device, kept in self._by_device.items()}


def warmed(rebuild, fitted: ModelArtifact | None, spec: DetectorSpec, recent: RecentReadings):
    """The bank of ``fitted`` (``rebuild(artifact)`` makes it), each device's model warmed on the
    device's recent normal readings before it labels anything:

    * a device ``fitted`` has its own model for continues that model's training on its readings
      since the end of the training history (what it learned in training, then what the device
      did since; nothing learned twice);
    * any other device (new since training, or no artifact at all) gets a model fitted on its
      recent readings, as training fits one on a device's history, instead of another device's
      model or an empty one.

    Either way the model learns them as history (``fit_history``: no alarm raised on them), so
    its first live reading is scored by a model that knows the device's present behaviour. All
    recent readings are learned, not only those labeled normal: the running model's labels are
    least trustworthy exactly when a rollout is needed (a latched alarm, a device it was not
    trained on; on the simulator, learning only normal ones doubled the false alarms); the
    price is that a fault in progress at the switch becomes part of the new model's history."""
    own = fitted.models if fitted is not None else {}
    trained_until = _training_end(fitted)
    models = {}
    for device, rows in recent.by_device().items():
        if device in own:
            rows = [reading for reading in rows if reading.timestamp > trained_until]
            if len(rows) >= MIN_WARM_READINGS:
                models[device] = continue_fit(fitted.model_for(device), rows)
        elif len(rows) >= MIN_WARM_READINGS:
            models[device] = fit_detector(spec, rows)
    if models:
        fitted = ModelArtifact(
            spec,
            _WarmedModels(models, fitted, spec),
            fitted.default_device if fitted is not None else "",
            fitted.version if fitted is not None else spec.version,
            fitted.metadata if fitted is not None else {},
            fitted.features if fitted is not None else {},
        )
    return rebuild(fitted)


#: fewer recent readings than this teach a device's new model nothing (it starts as trained)
MIN_WARM_READINGS = 8


def _training_end(fitted: ModelArtifact | None) -> float:
    """The source time of the last reading ``fitted`` was trained on (-inf: unknown)."""
    stamp = ((fitted.metadata if fitted is not None else {}).get("training") or {}).get("last_timestamp")
    try:
        return datetime.fromisoformat(stamp).timestamp()
    except (TypeError, ValueError):
        return -math.inf


class _WarmedModels(Mapping):
    """Models fitted on recent readings, in front of an artifact's (or fresh ones without)."""

    def __init__(self, fitted: dict, base: ModelArtifact | None, spec: DetectorSpec):
        self._fitted, self._base, self._spec = fitted, base, spec

    def __getitem__(self, device: str):
        if device in self._fitted:
            return self._fitted[device]
        if self._base is not None:
            return self._base.models[device]
        return self._spec.factory()

    def __contains__(self, device: object) -> bool:
        return device in self._fitted or (self._base is not None and device in self._base.models)

    def __iter__(self) -> Iterator[str]:
        yield from self._fitted
        if self._base is not None:
            yield from (d for d in self._base.models if d not in self._fitted)

    def __len__(self) -> int:
        return sum(1 for _ in self)


# -- shadow ---------------------------------------------------------------------------------------


@dataclass(slots=True)
class ShadowEvent:
    """The challenger's label of a reading, beside the champion's (the shadow output).

    ``readings``, ``agreement``, ``champion_alarm_rate`` and ``challenger_alarm_rate`` are the
    device's figures since the challenger started in this process."""

    event: LabeledEvent  # the challenger's
    champion_score: float
    champion_anomaly: bool
    champion_version: str
    readings: int
    agreement: float
    champion_alarm_rate: float
    challenger_alarm_rate: float


def shadow_event_json(shadow: ShadowEvent) -> bytes:
    """A shadow event as JSON (topic ``shadow``)."""
    event = shadow.event
    return orjson.dumps(
        {
            "device_id": event.reading.device_id,
            "timestamp": _utc_datetime(event.reading.timestamp),
            "challenger": {
                "score": event.score,
                "is_anomaly": event.is_anomaly,
                "model": {"name": event.model_name, "version": event.model_version},
            },
            "champion": {
                "score": shadow.champion_score,
                "is_anomaly": shadow.champion_anomaly,
                "version": shadow.champion_version,
            },
            "agrees": shadow.champion_anomaly == event.is_anomaly,
            "device": {
                "readings": shadow.readings,
                "agreement": shadow.agreement,
                "champion_alarm_rate": shadow.champion_alarm_rate,
                "challenger_alarm_rate": shadow.challenger_alarm_rate,
            },
            "source": _source(event.reading.raw),
        },
        option=orjson.OPT_UTC_Z,
    )


class ShadowMetrics:
    """Fleet-level figures of the shadow comparison (Prometheus)."""

    def __init__(self):
        self.readings = Counter("edgewatch_shadow_readings", "Readings labeled by both champion and challenger")
        self.agreements = Counter("edgewatch_shadow_agreements", "Readings both models labeled alike")
        self.anomalies = Counter("edgewatch_shadow_anomalies", "Anomalous labels, by model role", ["role"])
        self.agreement = Gauge("edgewatch_shadow_agreement", "Share of readings both models labeled alike")
        self.alarm_rate = Gauge("edgewatch_shadow_alarm_rate", "Share of readings labeled anomalous", ["role"])
        self._totals = [0, 0, 0, 0]  # readings, agreements, champion anomalies, challenger anomalies

    def count(self, readings: int, agreements: int, champion: int, challenger: int) -> None:
        totals = self._totals
        for index, value in enumerate((readings, agreements, champion, challenger)):
            totals[index] += value
        self.readings.inc(readings)
        self.agreements.inc(agreements)
        self.anomalies.labels("champion").inc(champion)
        self.anomalies.labels("challenger").inc(challenger)
        if totals[0]:
            self.agreement.set(totals[1] / totals[0])
            self.alarm_rate.labels("champion").set(totals[2] / totals[0])
            self.alarm_rate.labels("challenger").set(totals[3] / totals[0])


SHADOW_METRICS = ShadowMetrics()


class ShadowTally:
    """Per-device counts of a shard's shadow comparison: readings, agreements, anomalies of each."""

    def __init__(self):
        self.devices: dict[str, list[int]] = {}

    def compare(self, champion: BankResult, challenger: BankResult, champion_version: str) -> list[ShadowEvent]:
        """Pair the two results reading by reading (by their raw messages: a reading one bank
        refused has no pair) and update the device and fleet figures."""
        by_raw = {id(event.reading.raw): event for event in champion.events}
        shadow: list[ShadowEvent] = []
        agreements = champion_anomalies = challenger_anomalies = 0
        for event in challenger.events:
            paired = by_raw.get(id(event.reading.raw))
            if paired is None:
                continue
            counts = self.devices.get(event.reading.device_id)
            if counts is None:
                counts = self.devices[event.reading.device_id] = [0, 0, 0, 0]
            agrees = paired.is_anomaly == event.is_anomaly
            counts[0] += 1
            counts[1] += agrees
            counts[2] += paired.is_anomaly
            counts[3] += event.is_anomaly
            agreements += agrees
            champion_anomalies += paired.is_anomaly
            challenger_anomalies += event.is_anomaly
            n = counts[0]
            shadow.append(
                ShadowEvent(event, paired.score, paired.is_anomaly, champion_version, n, counts[1] / n,
                            counts[2] / n, counts[3] / n)
            )  # fmt: skip
        SHADOW_METRICS.count(len(shadow), agreements, champion_anomalies, challenger_anomalies)
        return shadow
