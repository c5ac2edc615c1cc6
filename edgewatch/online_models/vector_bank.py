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

from edgewatch.online_models.artifact import ModelArtifact
from edgewatch.online_models.registry import DetectorSpec
from edgewatch.schema import BankResult, LabeledEvent, RawMessage, Reading

GROWTH_STEP = 256  # rows


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

    def by_field(self, blocks: list[np.ndarray]) -> dict[str, np.ndarray]:
        """Each field's name mapped to the block that holds it (what a detector's kernel takes)."""
        return {name: block for block, names in zip(blocks, self.blocks.values(), strict=True) for name, _ in names}


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
        scores = np.empty(len(readings))
        by_features: dict[tuple[str, ...], list[int]] = {}
        for index, reading in enumerate(readings):
            by_features.setdefault(tuple(sorted(reading.features)), []).append(index)
        for features, indices in by_features.items():
            scores[indices] = self._label_group(features, [readings[i] for i in indices])
        name, version, threshold = self.spec.name, self.version, self.threshold
        flags = (scores >= threshold).tolist()
        events = [
            LabeledEvent(reading, score, flag, name, version)
            for reading, score, flag in zip(readings, scores.tolist(), flags, strict=True)
        ]
        return BankResult(events, [], [], [])

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
        return self.detector.score_learn_rows(self.layout.by_field(group.blocks), rows, values, times)

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
