"""A shard's detectors as arrays: one row per device, scored and learned a step at a time.

For detectors that offer ``score_learn_arrays`` (the built-ins), the state of every device
of a shard lives in a few numpy arrays (rows = devices, columns = features). A batch is cut
into *steps*: step k holds the k-th reading of every device in the batch, so one numpy call
scores and learns a reading for many devices at once, and each device still sees its readings
in order. The results equal those of one River object per device (:class:`ModelBank`).
"""

from __future__ import annotations

import operator
import pickle
from dataclasses import dataclass

import numpy as np

from edgewatch.online_models.artifact import ModelArtifact
from edgewatch.online_models.registry import DetectorSpec
from edgewatch.schema import DeadLetter, LabeledEvent, Reading


class StateLayout:
    """Where a detector's state fields live: fields of one dtype and shape share a block
    ``(devices, fields, features, *shape)`` (per-device fields: ``(devices, fields, *shape)``),
    so a step gathers and scatters each block with one numpy call instead of one per field.

    ``fields`` and ``device_fields`` map a name to ``(dtype, initial value)`` or
    ``(dtype, initial value, shape)``.
    """

    def __init__(self, fields: dict[str, tuple], device_fields: dict[str, tuple] | None = None):
        self.blocks: dict[tuple, list[tuple[str, float]]] = {}
        for per_feature, table in ((True, fields), (False, device_fields or {})):
            for name, (dtype, initial, *shape) in table.items():
                key = (np.dtype(dtype).str, tuple(shape[0]) if shape else (), per_feature)
                self.blocks.setdefault(key, []).append((name, initial))

    def allocate(self, devices: int, features: int) -> list[np.ndarray]:
        arrays = []
        for (dtype, shape, per_feature), fields in self.blocks.items():
            block = np.empty((devices, len(fields), *((features,) if per_feature else ()), *shape), dtype=dtype)
            for index, (_, initial) in enumerate(fields):
                block[:, index] = initial
            arrays.append(block)
        return arrays

    def write_row(self, blocks: list[np.ndarray], row: int, fields: dict[str, np.ndarray]) -> None:
        """Set one device's state (a warm start) from ``fields`` shaped ``(features, *shape)``."""
        for block, names in zip(blocks, self.blocks.values(), strict=True):
            for index, (name, _) in enumerate(names):
                block[row, index] = fields[name]

    def gather(self, blocks: list[np.ndarray], rows: np.ndarray) -> dict[str, np.ndarray]:
        """The fields of ``rows`` as a dict of ``(len(rows), features, *shape)`` arrays."""
        fields = {}
        for block, names in zip(blocks, self.blocks.values(), strict=True):
            taken = block[rows]
            for index, (name, _) in enumerate(names):
                fields[name] = taken[:, index]
        return fields

    def scatter(self, blocks: list[np.ndarray], rows: np.ndarray, fields: dict[str, np.ndarray]) -> None:
        for block, names in zip(blocks, self.blocks.values(), strict=True):
            block[rows] = np.stack([fields[name] for name, _ in names], axis=1)


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
        grown = layout.allocate(max(needed, 2 * capacity, 8), len(self.features))
        for old, new in zip(self.blocks, grown, strict=False):
            new[:capacity] = old
        self.blocks = grown


def step_order(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Order readings into steps: the k-th reading of every device goes to step k.

    Returns the reading indices sorted by (step, arrival) and the size of each step.

    >>> order, sizes = step_order(np.array([5, 5, 7, 5, 7]))
    >>> order.tolist(), sizes.tolist()
    ([0, 2, 1, 4, 3], [2, 2, 1])
    """
    by_row = np.argsort(rows, kind="stable")
    sorted_rows = rows[by_row]
    first = np.r_[True, sorted_rows[1:] != sorted_rows[:-1]]
    positions = np.arange(len(rows))
    start_of_run = np.maximum.accumulate(np.where(first, positions, 0))
    occurrence = np.empty(len(rows), dtype=np.int64)
    occurrence[by_row] = positions - start_of_run
    return np.argsort(occurrence, kind="stable"), np.bincount(occurrence)


class VectorBank:
    """The vectorized counterpart of :class:`~edgewatch.online_models.bank.ModelBank`.

    >>> from edgewatch.online_models.registry import BUILTIN
    >>> from edgewatch.schema import RawMessage, Reading, SourceRef
    >>> bank = VectorBank(BUILTIN["robust-zscore"])
    >>> raw = RawMessage(b"pump-1", b"", [], *SourceRef("telemetry", 0, 0))
    >>> events, dead = bank.label([Reading("pump-1", 0.0, {"rpm": 1450.0}, raw)])
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

    def label(self, readings: list[Reading]) -> tuple[list[LabeledEvent], list[DeadLetter]]:
        scores = np.empty(len(readings))
        by_features: dict[tuple[str, ...], list[int]] = {}
        for index, reading in enumerate(readings):
            by_features.setdefault(tuple(sorted(reading.features)), []).append(index)
        for features, indices in by_features.items():
            scores[indices] = self._label_group(features, [readings[i] for i in indices])
        name, version, threshold = self.spec.name, self.version, self.threshold
        flags = (scores >= threshold).tolist()
        return [
            LabeledEvent(reading, score, flag, name, version)
            for reading, score, flag in zip(readings, scores.tolist(), flags, strict=True)
        ], []

    def _label_group(self, features: tuple[str, ...], readings: list[Reading]) -> np.ndarray:
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
        order, sizes = step_order(rows)
        scores = np.empty(len(readings))
        start = 0
        layout, blocks = self.layout, group.blocks
        for size in sizes.tolist():
            step = order[start : start + size]
            start += size
            step_rows = rows[step]
            fields = layout.gather(blocks, step_rows)
            scores[step] = self.detector.score_learn_arrays(fields, values[step], times[step])
            layout.scatter(blocks, step_rows, fields)
        return scores

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
