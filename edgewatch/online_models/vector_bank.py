"""A shard's detectors as arrays: one row per device, a compiled kernel for the batch.

For detectors that offer ``score_learn_rows`` (the built-ins), the state of every device of
a shard lives in a few numpy arrays (rows = devices, columns = features, fields of one dtype
and shape stacked in one block). A batch of readings goes to the detector's compiled kernel
in one call, which scores and learns them in arrival order, each in its device's row: no
Python per reading, no object per device, and snapshots are the arrays' bytes. The results
equal those of one River object per device (:class:`ModelBank`; the tests compare them).
"""

from __future__ import annotations

import operator
import pickle
from dataclasses import dataclass

import numpy as np

from edgewatch.online_models import compact_novelty_kernel as kernel
from edgewatch.online_models.artifact import ModelArtifact
from edgewatch.online_models.registry import DetectorSpec
from edgewatch.online_models.state_layout import StateLayout
from edgewatch.schema import AlarmEvent, BankResult, DriftEvent, LabeledEvent, RawMessage, Reading

GROWTH_STEP = 256  # rows


@dataclass
class _Group:
    """Devices that send the same features: their state blocks and row numbers."""

    features: tuple[str, ...]
    rows: dict[str, int]
    blocks: list[np.ndarray]

    def grow(self, layout: StateLayout, needed: int) -> None:
        capacity = len(self.blocks[0]) if self.blocks else 0
        if needed <= capacity:
            return
        # grow by an eighth, in whole pages of rows: the slack stays small for a big fleet
        # (model state is what an edge node runs out of) and copies stay rare
        target = max(needed, capacity + capacity // 8)
        grown = layout.allocate(-(-target // GROWTH_STEP) * GROWTH_STEP, len(self.features))
        for old, new in zip(self.blocks, grown, strict=False):
            new[:capacity] = old
        self.blocks = grown


class VectorBank:
    """The vectorized counterpart of :class:`~edgewatch.online_models.bank.ModelBank`.

    >>> from edgewatch.online_models.registry import BUILTIN
    >>> from edgewatch.schema import RawMessage, Reading, SourceRef
    >>> bank = VectorBank(BUILTIN["robust-zscore"])
    >>> raw = RawMessage(b"pump-1", b"", [], *SourceRef("telemetry", 0, 0))
    >>> events = bank.label([Reading("pump-1", 0.0, {"rpm": 1450.0}, raw)]).events
    >>> events[0].score, events[0].is_anomaly, len(bank)
    (0.0, False, 1)
    """

    def __init__(self, spec: DetectorSpec, threshold: float | None = None, artifact: ModelArtifact | None = None):
        self.spec = spec
        self.threshold = spec.threshold if threshold is None else threshold
        self.version = artifact.version if artifact is not None else spec.version
        self.detector = spec.factory()
        self.layout = StateLayout(self.detector.ARRAY_STATE, getattr(self.detector, "ARRAY_DEVICE_STATE", None))
        self.groups: dict[tuple[str, ...], _Group] = {}
        self._artifact = artifact

    def __len__(self) -> int:
        return sum(len(group.rows) for group in self.groups.values())

    def warm_up(self) -> None:
        """Compile (or load from numba's cache) the detector's kernel now, on a throwaway bank,
        instead of on the flow's first message."""
        raw = RawMessage(None, None, [], "warm-up", 0, 0, None)
        VectorBank(self.spec).label([Reading("warm-up", 0.0, {"x": 0.0}, raw)])

    def label(self, readings: list[Reading]) -> BankResult:
        by_features: dict[tuple[str, ...], list[int]] = {}
        for index, reading in enumerate(readings):
            by_features.setdefault(tuple(sorted(reading.features)), []).append(index)
        if not self.alarms:
            scores = np.empty(len(readings))
            for features, indices in by_features.items():
                scores[indices] = self._label_group(features, [readings[i] for i in indices])
            name, version, threshold = self.spec.name, self.version, self.threshold
            flags = (scores >= threshold).tolist()
            events = [
                LabeledEvent(reading, score, flag, name, version)
                for reading, score, flag in zip(readings, scores.tolist(), flags, strict=True)
            ]
            return BankResult(events, [], [], [])
        labeled: list[LabeledEvent | None] = [None] * len(readings)
        alarms: list[AlarmEvent] = []
        drift: list[DriftEvent] = []
        for features, indices in by_features.items():
            group_readings = [readings[i] for i in indices]
            detection = self._label_group(features, group_readings)
            self._events(features, group_readings, indices, detection, labeled, alarms, drift)
        return BankResult(labeled, [], alarms, drift)

    @property
    def alarms(self) -> bool:
        """Whether the detector keeps alarm states (its kernel returns a Detection)."""
        return hasattr(self.detector, "accept_row")

    def _events(self, features, readings, indices, detection, labeled, alarms, drift) -> None:
        """LabeledEvents (with explanations), AlarmEvents and DriftEvents from a group's Detection."""
        name, version = self.spec.name, self.version
        bits = detection.events
        scores = detection.scores.tolist()
        for position, (reading, index, score, ev) in enumerate(
            zip(readings, indices, scores, bits.tolist(), strict=True)
        ):
            if not ev:
                labeled[index] = LabeledEvent(reading, score, False, name, version)
                continue
            shares = dict(zip(features, detection.shares[position].round(4).tolist(), strict=True))
            abnormal = bool(ev & kernel.ABNORMAL)
            labeled[index] = LabeledEvent(reading, score, abnormal, name, version, shares if abnormal else None)
            if ev & (kernel.RAISED | kernel.CLEARED):
                start, peak = detection.alarm_info[position].tolist()
                raised = bool(ev & kernel.RAISED)
                alarms.append(
                    AlarmEvent("raised" if raised else "cleared", reading.device_id, start,
                               None if raised else reading.timestamp, peak, reading.features, shares, name, version,
                               reading.raw)
                )  # fmt: skip
            if ev & (kernel.DRIFT_SHIFT | kernel.DRIFT_TIMEOUT):
                before, after = detection.drift_levels[position].tolist()
                reason = "consistent-shift" if ev & kernel.DRIFT_SHIFT else "timeout"
                level_before = dict(zip(features, before, strict=True))
                level_after = dict(zip(features, after, strict=True))
                drift.append(
                    DriftEvent(reading.device_id, reading.timestamp, list(features), level_before, level_after,
                               reason, name, version, reading.raw)
                )  # fmt: skip

    def accept(self, device_id: str, timestamp: float | None = None) -> BankResult:
        """An operator accepts the device's current state as its new normal: its alarm clears
        (an AlarmEvent) and a DriftEvent with reason ``operator`` is emitted, for each feature set
        of the device in alarm. Nothing happens for a device that is not in alarm."""
        alarms: list[AlarmEvent] = []
        drift: list[DriftEvent] = []
        if not self.alarms:
            return BankResult([], [], alarms, drift)
        for features, group in self.groups.items():
            row = group.rows.get(device_id)
            if row is None:
                continue
            blocks = self.layout.by_field(group.blocks)
            device = blocks["level"][row]
            start, peak, last_t = device[kernel.START], device[kernel.PEAK], device[kernel.LAST_T]
            shares = dict(zip(features, blocks["rel"][row, 0, :, kernel.PEAK_C].round(4).tolist(), strict=True))
            levels = self.detector.accept_row(blocks, row, len(features))
            if levels is None:
                continue
            when = last_t if timestamp is None else timestamp
            level_after = dict(zip(features, levels[1].tolist(), strict=True))
            name, version = self.spec.name, self.version
            alarms.append(AlarmEvent("cleared", device_id, start, when, peak, level_after, shares, name, version, None))
            drift.append(
                DriftEvent(device_id, when, list(features), dict(zip(features, levels[0].tolist(), strict=True)),
                           level_after, "operator", name, version, None)
            )  # fmt: skip
        return BankResult([], [], alarms, drift)

    def _label_group(self, features: tuple[str, ...], readings: list[Reading]):
        group = self.groups.get(features)
        if group is None:
            group = self.groups[features] = _Group(features, {}, [])
        rows_of = group.rows
        known = len(rows_of)
        rows = np.fromiter((rows_of.setdefault(r.device_id, len(rows_of)) for r in readings), np.int64, len(readings))
        group.grow(self.layout, len(rows_of))
        if self._artifact is not None and len(rows_of) > known:  # new devices start from their fitted models
            for device, row in list(rows_of.items())[known:]:
                model = self._artifact.model_for(device)
                self.layout.write_row(group.blocks, row, model.export_arrays(features))
        pick = operator.itemgetter(*features)
        if len(features) == 1:
            values = np.fromiter((pick(r.features) for r in readings), np.float64, len(readings))[:, None]
        else:
            values = np.array([pick(r.features) for r in readings], dtype=np.float64)
        times = np.fromiter((r.timestamp for r in readings), np.float64, len(readings))
        blocks = self.layout.by_field(group.blocks)
        if self.alarms:
            return self.detector.score_learn_rows(blocks, rows, values, times, threshold=self.threshold)
        return self.detector.score_learn_rows(blocks, rows, values, times)

    def snapshot(self) -> bytes:
        """Rows and arrays of every group: compact bytes (numpy buffers), cheap every epoch."""
        return pickle.dumps(
            {features: (group.rows, group.blocks) for features, group in self.groups.items()},
            protocol=pickle.HIGHEST_PROTOCOL,
        )

    def restore(self, state: bytes) -> None:
        self.groups = {
            features: _Group(features, rows, blocks) for features, (rows, blocks) in pickle.loads(state).items()
        }
