"""What a shard does for the model lifecycle: warm a new model before it takes over, run a
challenger in the shadow of the champion.

* :class:`~edgewatch.state.recent.RecentReadings` keeps each device's last readings (a
  float32 ring of ``rollout_warm_readings`` rows per device, as many devices as the bank may
  hold, in the shard's snapshotted state). A rollout teaches them to each device's new model
  before it labels anything (:func:`warmed`): it has seen the device's recent behaviour, so
  there is no blind period and no burst of false alarms after a switch, also after a restart.
* :func:`compare` pairs the champion's and the challenger's results on the same readings:
  :class:`ShadowEvent` per reading (the challenger's label, the champion's, and the device's
  running agreement and alarm rates) and fleet-level Prometheus metrics.
"""

from __future__ import annotations

import itertools
import logging
import math
import threading
import time
import zlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np
import orjson
from prometheus_client import Counter, Gauge

from edgewatch.flows.reports import write_report
from edgewatch.online_models.artifact import ModelArtifact, continue_fit, fit_detector
from edgewatch.online_models.registry import DetectorSpec
from edgewatch.schema import BankResult, LabeledEvent, Reading, _source, _utc_datetime
from edgewatch.state import codec
from edgewatch.state.recent import RecentReadings

__all__ = ["RecentReadings", "ShadowEvent", "ShadowTally", "warmed"]
log = logging.getLogger(__name__)


def warmed(rebuild, fitted: ModelArtifact | None, spec: DetectorSpec, recent: Mapping[str, list[Reading]]):
    """The bank of ``fitted`` (``rebuild(artifact)`` makes it), each device's model warmed on the
    device's recent readings (``recent``: by device, in time order, e.g.
    :meth:`RecentReadings.by_device`) before it labels anything:

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
    for device, rows in recent.items():
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
    """Fleet-level figures of the shadow comparison (Prometheus): counters over the process's life,
    gauges over the challenger in the shadow now (they start again when another one does)."""

    def __init__(self):
        self.readings = Counter("edgewatch_shadow_readings", "Readings labeled by both champion and challenger")
        self.agreements = Counter("edgewatch_shadow_agreements", "Readings both models labeled alike")
        self.anomalies = Counter("edgewatch_shadow_anomalies", "Anomalous labels, by model role", ["role"])
        self.agreement = Gauge("edgewatch_shadow_agreement", "Share of readings both models labeled alike")
        self.alarm_rate = Gauge("edgewatch_shadow_alarm_rate", "Share of readings labeled anomalous", ["role"])
        self.challenger: str | None = None
        self.totals = [0, 0, 0, 0]  # of ``challenger``: readings, agreements, champion/challenger anomalies
        self.report: Path | None = None  # where the figures go for `edgewatch retrain` (the flow sets it)
        self._started = 0.0
        self._flush: threading.Timer | None = None  # writes the report a moment after figures change
        self._lock = threading.Lock()

    def count(self, challenger: str, readings: int, agreements: int, champion: int, anomalies: int) -> None:
        with self._lock:  # shards of several workers count into one set of figures
            if challenger != self.challenger:
                self.challenger, self.totals, self._started = challenger, [0, 0, 0, 0], time.time()
            totals = self.totals
            for index, value in enumerate((readings, agreements, champion, anomalies)):
                totals[index] += value
            figures = list(totals)
            if self.report is not None and self._flush is None:  # at most one write a second, none lost
                self._flush = threading.Timer(REPORT_SECONDS, self._write)
                self._flush.daemon = True
                self._flush.start()
        self.readings.inc(readings)
        self.agreements.inc(agreements)
        self.anomalies.labels("champion").inc(champion)
        self.anomalies.labels("challenger").inc(anomalies)
        if figures[0]:
            self.agreement.set(figures[1] / figures[0])
            self.alarm_rate.labels("champion").set(figures[2] / figures[0])
            self.alarm_rate.labels("challenger").set(figures[3] / figures[0])

    def flush(self) -> None:
        """Write the report now (the input ended: a pending write would be lost with the process)."""
        with self._lock:
            pending, self._flush = self._flush, None
        if pending is not None:
            pending.cancel()
            self._write()

    def _write(self) -> None:
        with self._lock:
            challenger, figures, self._flush = self.challenger, list(self.totals), None
        readings = figures[0]
        report = {
            "challenger": challenger,
            "started": self._started,
            "updated": time.time(),
            "readings": readings,
            "agreement": figures[1] / readings if readings else None,
            "champion_alarm_rate": figures[2] / readings if readings else None,
            "challenger_alarm_rate": figures[3] / readings if readings else None,
        }
        write_report(self.report, report, "shadow")


SHADOW_METRICS = ShadowMetrics()
#: the shadow's figures, in the model cache directory (``edgewatch retrain`` reads them)
SHADOW_REPORT = "shadow.json"
REPORT_SECONDS = 1.0  # the report is rewritten at most this often


TALLY_PAGE_DEVICES = 64  # devices per page of the tally (on average: a device's page is a hash)


class ShadowTally:
    """Per-device counts of a shard's shadow comparison: readings, agreements, anomalies of each.

    Bounded like the bank: at most ``max_devices`` devices, the least recently compared tenth
    dropped beyond that (a device that comes back starts its figures again; the fleet figures,
    :data:`SHADOW_METRICS`, are counted per batch and lose nothing). Snapshotted in pages: a
    device's page is a hash of its id, a page changes when one of its devices was compared.

    >>> tally = ShadowTally(max_devices=10)
    >>> tally.devices["pump-1"] = [4, 3, 1, 0]
    >>> restored = ShadowTally(max_devices=10)
    >>> restored.load_pages(tally.dirty_pages(every=True).values())
    >>> restored.devices
    {'pump-1': [4, 3, 1, 0]}
    """

    def __init__(self, max_devices: int = 100_000):
        self.max_devices = max_devices
        self.devices: dict[str, list[int]] = {}  # in order of the last comparison: the oldest first
        self._pages = max(1, -(-max_devices // TALLY_PAGE_DEVICES))
        self._dirty: set[int] = set()

    def _page(self, device: str) -> int:
        return zlib.crc32(device.encode()) % self._pages

    def compare(self, champion: BankResult, challenger: BankResult, champion_version: str) -> list[ShadowEvent]:
        """Pair the two results reading by reading (by their raw messages: a reading one bank
        refused has no pair) and update the device and fleet figures."""
        by_raw = {id(event.reading.raw): event for event in champion.events}
        devices = self.devices
        shadow: list[ShadowEvent] = []
        seen: set[str] = set()
        agreements = champion_anomalies = challenger_anomalies = 0
        for event in challenger.events:
            paired = by_raw.get(id(event.reading.raw))
            if paired is None:
                continue
            device = event.reading.device_id
            if device in seen:
                counts = devices[device]
            else:  # the most recently compared go last: the oldest are dropped first
                seen.add(device)
                counts = devices[device] = devices.pop(device, None) or [0, 0, 0, 0]
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
        self._dirty.update(self._page(device) for device in seen)
        if len(devices) > self.max_devices:
            for device in list(itertools.islice(devices, len(devices) - self.max_devices + self.max_devices // 10)):
                del devices[device]
                self._dirty.add(self._page(device))
        version = challenger.events[0].model_version if challenger.events else ""
        SHADOW_METRICS.count(version, len(shadow), agreements, champion_anomalies, challenger_anomalies)
        return shadow

    def dirty_pages(self, every: bool = False) -> dict[str, bytes | None]:
        """Pages changed since the last call (``every``: all that hold devices); ``None``: emptied."""
        pages = set(range(self._pages)) if every else self._dirty
        by_page: dict[int, list[str]] = {page: [] for page in pages}
        for device in self.devices:
            page = self._page(device)
            if page in by_page:
                by_page[page].append(device)
        self._dirty = set()
        found: dict[str, bytes | None] = {}
        for page, devices in by_page.items():
            if devices:
                counts = np.array([self.devices[d] for d in devices], np.int64).reshape(len(devices), 4)
                found[str(page)] = codec.pack({"kind": "tally", "page": page, "devices": devices}, [counts])
            elif not every:
                found[str(page)] = None
        return found

    def load_pages(self, blobs) -> None:
        """Add the devices of page ``blobs`` (from :meth:`dirty_pages`), checked."""
        for blob in blobs:
            header, arrays = codec.unpack(blob)
            devices, page = codec.expect(header, "tally").get("devices"), header.get("page")
            if not (isinstance(devices, list) and all(isinstance(d, str) for d in devices)):
                raise codec.StateFormatError("shadow tally page devices are not names")
            if [(a.dtype.str, a.shape) for a in arrays] != [("<i8", (len(devices), 4))] or (arrays[0] < 0).any():
                raise codec.StateFormatError("shadow tally page counts do not match its devices")
            if not (isinstance(page, int) and 0 <= page < 2**24):
                raise codec.StateFormatError(f"shadow tally page number {page!r} out of range")
            for device, counts in zip(devices, arrays[0].tolist(), strict=True):
                self.devices[device] = counts
                if self._page(device) != page:  # paged for another device limit: page it again
                    self._dirty.update((self._page(device), page))
