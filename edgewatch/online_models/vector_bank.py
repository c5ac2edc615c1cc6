"""A shard's detectors as arrays: one row per device, a compiled kernel for the batch.

For detectors that offer ``score_learn_rows`` (the built-ins), the state of every device of
a shard lives in a few numpy arrays (rows = devices, columns = features, fields of one dtype
and shape stacked in one block). A batch of readings goes to the detector's compiled kernel
in one call, which scores and learns them in arrival order, each in its device's row: no
Python per reading, no object per device, and snapshots are the arrays' bytes. The results
equal those of one River object per device (:class:`ModelBank`; the tests compare them).
"""

from __future__ import annotations

import hashlib
import logging
import operator
from dataclasses import dataclass, field
from itertools import chain, repeat
from typing import NamedTuple

import numpy as np

from edgewatch.online_models import compact_novelty_kernel as kernel
from edgewatch.online_models.artifact import ModelArtifact
from edgewatch.online_models.registry import DetectorSpec
from edgewatch.online_models.state_layout import StateLayout
from edgewatch.schema import AlarmEvent, BankResult, DeadLetter, DriftEvent, LabeledEvent, RawMessage, Reading
from edgewatch.state import codec
from edgewatch.state.limits import DEVICES_EVICTED, DEVICES_HELD, StateLimits

log = logging.getLogger(__name__)

GROWTH_STEP = 256  # rows, once a group is that big
FIRST_ROWS = 4  # a new feature set starts this small and doubles: 1,000 one-device sets stay cheap
PAGE_ROWS = 64  # rows per page: the unit a snapshot rewrites
_FEATURES = operator.attrgetter("features")
_TIMESTAMP = operator.attrgetter("timestamp")
_DEVICE_ID = operator.attrgetter("device_id")


def group_key(features: tuple[str, ...]) -> str:
    """A stable short name for a feature set in page ids (feature names can be long)."""
    return hashlib.blake2b("\x1f".join(features).encode(), digest_size=8).hexdigest()


@dataclass
class _Group:
    """Devices that send the same features: their state blocks and row numbers.

    Rows are handed out from ``free`` (rows of dropped devices) or past ``used``; ``devices``
    names the device of each row (``None``: free), ``last_seen`` the bank tick it was last
    labeled at (-1: free), ``dirty`` the pages (``row // PAGE_ROWS``) changed since the last
    snapshot.
    """

    features: tuple[str, ...]
    rows: dict[str, int]
    blocks: list[np.ndarray]
    devices: list[str | None] = field(default_factory=list)
    free: list[int] = field(default_factory=list)
    last_seen: np.ndarray = field(default_factory=lambda: np.empty(0, np.int64))
    dirty: np.ndarray = field(default_factory=lambda: np.empty(0, bool))
    used: int = 0

    @property
    def key(self) -> str:
        return group_key(self.features)

    def grow(self, layout: StateLayout, needed: int) -> None:
        capacity = len(self.blocks[0]) if self.blocks else 0
        if needed <= capacity:
            return
        if needed <= GROWTH_STEP:  # small groups double: a one-device feature set holds 4 rows, not 256
            target = min(GROWTH_STEP, max(needed, FIRST_ROWS, 2 * capacity))
        else:
            # grow by an eighth, in whole pages of rows: the slack stays small for a big fleet
            # (model state is what an edge node runs out of) and copies stay rare
            target = max(needed, capacity + capacity // 8)
            target = -(-target // GROWTH_STEP) * GROWTH_STEP
        grown = layout.allocate(target, len(self.features))
        for old, new in zip(self.blocks, grown, strict=False):
            new[:capacity] = old
        self.blocks = grown
        self.devices.extend([None] * (target - capacity))
        self.last_seen = np.concatenate([self.last_seen, np.full(target - capacity, -1, np.int64)])
        pages = -(-target // PAGE_ROWS)
        self.dirty = np.concatenate([self.dirty, np.zeros(pages - len(self.dirty), bool)])

    def take_rows(self, layout: StateLayout, count: int) -> list[int]:
        taken = [self.free.pop() for _ in range(min(count, len(self.free)))]
        if len(taken) < count:
            start = self.used
            self.used += count - len(taken)
            self.grow(layout, self.used)
            taken.extend(range(start, self.used))
        return taken

    def page_rows(self, page: int) -> np.ndarray:
        """The occupied rows of ``page``."""
        stop = min((page + 1) * PAGE_ROWS, self.used)
        rows = np.arange(page * PAGE_ROWS, stop)
        return rows[self.last_seen[page * PAGE_ROWS : stop] >= 0]


class BatchColumns(NamedTuple):
    """Readings of one feature set as columns: device ids, values (features in sorted order) and times."""

    features: tuple[str, ...]
    device_ids: list[str]
    values: np.ndarray  # float64 (readings, features)
    times: np.ndarray  # float64 source times


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

    def __init__(
        self,
        spec: DetectorSpec,
        threshold: float | None = None,
        artifact: ModelArtifact | None = None,
        limits: StateLimits | None = None,
        shards: int = 1,
    ):
        self.spec = spec
        self.threshold = spec.threshold if threshold is None else threshold
        self.version = artifact.version if artifact is not None else spec.version
        self.detector = spec.factory()
        self.layout = StateLayout(self.detector.ARRAY_STATE, getattr(self.detector, "ARRAY_DEVICE_STATE", None))
        self.groups: dict[tuple[str, ...], _Group] = {}
        self._artifact = artifact
        limits = limits or StateLimits()
        self.max_features = limits.max_features_per_device
        self.max_feature_sets = limits.max_feature_sets
        self.max_devices = limits.devices_per_shard(shards)
        self._devices = 0  # held in memory
        self._tick = 0  # one per label call: "least recently seen" without clocks
        self._deleted_pages: set[str] = set()
        self._sorted_keys: dict[tuple[str, ...], tuple[str, ...]] = {}  # feature names as sent → sorted
        #: the readings the last :meth:`label` labeled, as columns per feature set: what the flow's
        #: recent readings keep (:meth:`~edgewatch.state.recent.RecentReadings.add_columns`)
        #: without going through the readings again
        self.batch_columns: list[BatchColumns] = []

    def __len__(self) -> int:
        return self._devices

    def warm_up(self) -> None:
        """Compile (or load from numba's cache) the detector's kernel now, on a throwaway bank,
        instead of on the flow's first message."""
        raw = RawMessage(None, None, [], "warm-up", 0, 0, None)
        throwaway = VectorBank(self.spec)
        throwaway.label([Reading("warm-up", 0.0, {"x": 0.0}, raw)])
        DEVICES_HELD.dec(len(throwaway))

    def label(self, readings: list[Reading]) -> BankResult:
        self.batch_columns = []
        by_features = self._by_features(readings)
        self._tick += 1
        dead: list[DeadLetter] = []
        refused: set[int] = set()
        planned = set(self.groups)  # the feature sets this batch will hold, in arrival order
        for features in list(by_features):
            reason = self._refusal(features, planned)
            if reason is not None:  # beyond a memory limit: a dead letter, not a new allocation
                indices = by_features.pop(features)
                dead.extend(DeadLetter(readings[i].raw, reason, "detect") for i in indices)
                refused.update(indices)
            else:
                planned.add(features)
        whole = len(by_features) == 1 and not refused  # one feature set: the batch is the group
        if not self.alarms:
            scores = np.empty(len(readings))
            for features, indices in by_features.items():
                scores[indices] = self._label_group(features, readings if whole else [readings[i] for i in indices])
            name, version, threshold = self.spec.name, self.version, self.threshold
            events = [
                LabeledEvent(reading, score, score >= threshold, name, version)
                for index, (reading, score) in enumerate(zip(readings, scores.tolist(), strict=True))
                if index not in refused
            ]
            return BankResult(events, dead, [], [])
        alarms: list[AlarmEvent] = []
        drift: list[DriftEvent] = []
        if whole:
            (features,) = by_features
            detection = self._label_group(features, readings)
            return BankResult(self._events(features, readings, detection, alarms, drift), dead, alarms, drift)
        labeled: list[LabeledEvent | None] = [None] * len(readings)
        for features, indices in by_features.items():
            group_readings = [readings[i] for i in indices]
            detection = self._label_group(features, group_readings)
            events = self._events(features, group_readings, detection, alarms, drift)
            for index, event in zip(indices, events, strict=True):
                labeled[index] = event
        events = [event for event in labeled if event is not None] if refused else labeled
        return BankResult(events, dead, alarms, drift)

    def _by_features(self, readings: list[Reading]) -> dict[tuple[str, ...], list[int]]:
        """Indices of the readings of each feature set (names sorted: the bank's column order), in
        arrival order. Readings list their features in the order their messages did: grouped by
        that first, then by set."""
        keys = list(map(tuple, map(_FEATURES, readings)))
        if keys and keys.count(keys[0]) == len(keys):  # the common case: one feature set, one order
            return {self._sorted(keys[0]): list(range(len(keys)))}
        by_keys: dict[tuple[str, ...], list[int]] = {}
        for index, key in enumerate(keys):
            by_keys.setdefault(key, []).append(index)
        by_features: dict[tuple[str, ...], list[int]] = {}
        for key, indices in by_keys.items():
            features = self._sorted(key)
            if features in by_features:  # the same set in another order: merged in arrival order
                by_features[features] = sorted(by_features[features] + indices)
            else:
                by_features[features] = indices
        return by_features

    def _sorted(self, key: tuple[str, ...]) -> tuple[str, ...]:
        features = self._sorted_keys.get(key)
        if features is None:
            if len(self._sorted_keys) >= 4096:  # feature names in many orders: start again
                self._sorted_keys.clear()
            features = self._sorted_keys[key] = tuple(sorted(key))
        return features

    @property
    def alarms(self) -> bool:
        """Whether the detector keeps alarm states (its kernel returns a Detection)."""
        return hasattr(self.detector, "accept_row")

    def _events(self, features, readings, detection, alarms, drift) -> list[LabeledEvent]:
        """A group's LabeledEvents (with explanations) from its Detection; its AlarmEvents and
        DriftEvents appended to ``alarms`` and ``drift``. Only the readings with an event bit
        (abnormal, an alarm raised or cleared, a drift) need more than a plain LabeledEvent."""
        name, version = self.spec.name, self.version
        scores, detections = detection.scores.tolist(), detection.detections.tolist()
        labeled = list(
            map(LabeledEvent, readings, scores, repeat(False), repeat(name), repeat(version), repeat(None), detections)
        )
        bits = detection.events
        flagged = np.flatnonzero(bits)
        if not len(flagged):
            return labeled
        shares_of = detection.shares[flagged].round(4).tolist()
        for position, ev, share_row in zip(flagged.tolist(), bits[flagged].tolist(), shares_of, strict=True):
            reading = readings[position]
            shares = dict(zip(features, share_row, strict=True))
            if ev & kernel.ABNORMAL:
                labeled[position] = LabeledEvent(
                    reading, scores[position], True, name, version, shares, detections[position]
                )
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
        return labeled

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
            # Python floats: the events' JSON (orjson) refuses numpy scalars
            start, peak, last_t = device[[kernel.START, kernel.PEAK, kernel.LAST_T]].tolist()
            shares = dict(zip(features, blocks["rel"][row, 0, :, kernel.PEAK_C].round(4).tolist(), strict=True))
            levels = self.detector.accept_row(blocks, row, len(features))
            if levels is None:
                continue
            group.dirty[row // PAGE_ROWS] = True  # the next snapshot keeps the acceptance
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
        devices = list(map(_DEVICE_ID, readings))
        rows = self._rows_for(group, devices)
        n = len(readings)
        pick = operator.itemgetter(*features)
        if len(features) == 1:
            values = np.fromiter(map(pick, map(_FEATURES, readings)), np.float64, n)[:, None]
        else:
            flat = chain.from_iterable(map(pick, map(_FEATURES, readings)))
            values = np.fromiter(flat, np.float64, n * len(features)).reshape(n, len(features))
        times = np.fromiter(map(_TIMESTAMP, readings), np.float64, n)
        self.batch_columns.append(BatchColumns(features, devices, values, times))  # (the kernel only reads them)
        blocks = self.layout.by_field(group.blocks)
        if self.alarms:
            return self.detector.score_learn_rows(blocks, rows, values, times, threshold=self.threshold)
        return self.detector.score_learn_rows(blocks, rows, values, times)

    # -- storage: rows, limits, eviction, pages -------------------------------------------------

    def _refusal(self, features: tuple[str, ...], planned: set[tuple[str, ...]]) -> str | None:
        """Why readings with ``features`` are refused (a memory limit), or ``None``; ``planned``:
        the feature sets held, with those this batch adds before these."""
        if len(features) > self.max_features:
            return (
                f"detect: {len(features)} features, more than the {self.max_features} a device may send "
                "(EDGEWATCH_MAX_FEATURES_PER_DEVICE)"
            )
        if features not in planned and len(planned) >= self.max_feature_sets:
            return (
                f"detect: a new feature set, and this shard already holds the {self.max_feature_sets} allowed "
                "(EDGEWATCH_MAX_FEATURE_SETS)"
            )
        return None

    def _rows_for(self, group: _Group, devices: list[str]) -> np.ndarray:
        """Each reading's state row (new devices get one), marked seen now and its page dirty."""
        rows_of = group.rows
        try:
            rows = np.fromiter(map(rows_of.__getitem__, devices), np.int64, len(devices))
        except KeyError:
            for device in devices:  # devices already here must not be evicted for the new ones
                if (row := rows_of.get(device)) is not None:
                    group.last_seen[row] = self._tick
            self._add_devices(group, [d for d in dict.fromkeys(devices) if d not in rows_of])
            rows = np.fromiter(map(rows_of.__getitem__, devices), np.int64, len(devices))
        group.last_seen[rows] = self._tick
        group.dirty[rows // PAGE_ROWS] = True
        return rows

    def _add_devices(self, group: _Group, devices: list[str]) -> None:
        if len(self.groups) > 1:
            self._say_moved(group, devices)
        excess = self._devices + len(devices) - self.max_devices
        if excess > 0:  # free a tenth of the room at once: evictions stay rare
            self._evict(excess + self.max_devices // 10, keep=group)
        rows = group.take_rows(self.layout, len(devices))
        for device, row in zip(devices, rows, strict=True):
            group.rows[device] = row
            group.devices[row] = device
        group.last_seen[rows] = self._tick
        if self._artifact is not None:  # new devices start from their fitted models
            for device, row in zip(devices, rows, strict=True):
                model = self._artifact.model_for(device)
                self.layout.write_row(group.blocks, row, model.export_arrays(group.features))
        self._devices += len(devices)
        DEVICES_HELD.inc(len(devices))

    def _say_moved(self, group: _Group, devices: list[str]) -> None:
        """A warning for devices that held a model for other features (a sensor added or removed):
        the new feature set gets a model of its own, started cold; the other keeps its state (and an
        alarm it holds) until the device sends those features again or is evicted."""
        for other in self.groups.values():
            moved = [device for device in devices if device in other.rows] if other is not group else []
            if moved:
                log.warning(
                    "%d device(s) switched features (%s → %s, e.g. %s): a new model, started cold; the "
                    "old one and any alarm it holds stay",
                    len(moved), ",".join(other.features), ",".join(group.features), moved[0],
                )  # fmt: skip

    def _evict(self, count: int, keep: _Group) -> None:
        """Drop the ``count`` least recently seen devices (none seen in the current call)."""
        groups = list(self.groups.values())
        seen_at = [g.last_seen[: g.used] for g in groups]
        candidates = [np.flatnonzero((at >= 0) & (at < self._tick)) for at in seen_at]
        seen = np.concatenate([g.last_seen[rows] for g, rows in zip(groups, candidates, strict=True)] or [[]])
        count = min(count, len(seen))
        if count <= 0:
            return
        oldest = np.zeros(len(seen), bool)
        oldest[np.argpartition(seen, count - 1)[:count]] = True
        start = 0
        for group, rows in zip(groups, candidates, strict=True):
            chosen = rows[oldest[start : start + len(rows)]]
            start += len(rows)
            if len(chosen):
                self._drop(group, chosen, keep)
        DEVICES_EVICTED.inc(count)

    def _drop(self, group: _Group, rows: np.ndarray, keep: _Group) -> None:
        for row in rows.tolist():
            del group.rows[group.devices[row]]
            group.devices[row] = None
        group.free.extend(rows.tolist())
        group.last_seen[rows] = -1
        group.dirty[rows // PAGE_ROWS] = True
        self.layout.reset_rows(group.blocks, rows)
        self._devices -= len(rows)
        DEVICES_HELD.dec(len(rows))
        if not group.rows and group is not keep:  # an emptied feature set frees its place and memory
            del self.groups[group.features]
            self._deleted_pages.update(f"{group.key}/{page}" for page in range(len(group.dirty)))

    def _page_blob(self, group: _Group, page: int) -> bytes | None:
        rows = group.page_rows(page)
        if not len(rows):
            return None
        header = {
            "kind": "page",
            "features": list(group.features),
            "page": page,
            "rows": (rows - page * PAGE_ROWS).tolist(),
            "devices": [group.devices[row] for row in rows.tolist()],
        }
        return codec.pack(header, [block[rows] for block in group.blocks], compress=True)

    def dirty_pages(self) -> dict[str, bytes | None]:
        """Pages changed since the last call: ``page id → bytes`` (``None``: the page is gone)."""
        pages: dict[str, bytes | None] = dict.fromkeys(self._deleted_pages)
        self._deleted_pages.clear()
        for group in self.groups.values():
            key = group.key
            for page in np.flatnonzero(group.dirty).tolist():
                pages[f"{key}/{page}"] = self._page_blob(group, page)
            group.dirty[:] = False
        return pages

    def load_pages(self, blobs) -> None:
        """Add the devices of page ``blobs`` (from :meth:`dirty_pages`), checking every field."""
        for blob in blobs:
            header, arrays = codec.unpack(blob)
            # a page written before fields were added to the state: those take their initial values
            arrays = self.layout.with_later_fields(arrays, getattr(self.detector, "LATER_FIELDS", frozenset()))
            features, page, rows, devices = self._checked_page(codec.expect(header, "page"), arrays)
            group = self.groups.get(features)
            if group is None:
                group = self.groups[features] = _Group(features, {}, [])
            absolute = page * PAGE_ROWS + np.asarray(rows, np.int64)
            group.used = max(group.used, int(absolute.max()) + 1)
            group.grow(self.layout, group.used)
            if (group.last_seen[absolute] >= 0).any():
                raise codec.StateFormatError(f"page {page} of {features} restored twice")
            for block, values in zip(group.blocks, arrays, strict=True):
                block[absolute] = values
            for device, row in zip(devices, absolute.tolist(), strict=True):
                group.rows[device] = row
                group.devices[row] = device
            group.last_seen[absolute] = 0
            self._devices += len(devices)
            DEVICES_HELD.inc(len(devices))
        for group in self.groups.values():
            group.free = np.flatnonzero(group.last_seen[: group.used] < 0)[::-1].tolist()

    def _checked_page(self, header: dict, arrays: list[np.ndarray]):
        features, page, rows, devices = (header.get(k) for k in ("features", "page", "rows", "devices"))
        if not (
            isinstance(features, list)
            and features
            and all(isinstance(f, str) for f in features)
            and features == sorted(set(features))
        ):
            raise codec.StateFormatError("page features are not a sorted list of names")
        if not (isinstance(page, int) and 0 <= page < 2**24 // PAGE_ROWS):
            raise codec.StateFormatError(f"page number {page!r} out of range")
        if not (isinstance(rows, list) and all(isinstance(r, int) and 0 <= r < PAGE_ROWS for r in rows)):
            raise codec.StateFormatError("page rows out of range")
        if not (isinstance(devices, list) and all(isinstance(d, str) for d in devices)):
            raise codec.StateFormatError("page devices are not names")
        if len(set(rows)) != len(rows) or len(devices) != len(rows) or not rows:
            raise codec.StateFormatError("page rows and devices do not match")
        features = tuple(features)
        if any(d in self.groups[features].rows for d in devices if features in self.groups):
            raise codec.StateFormatError("a device appears in two pages")
        expected = [(dtype, (len(rows), *shape)) for dtype, shape in self.layout.row_shapes(len(features))]
        found = [(a.dtype.str, a.shape) for a in arrays]
        if found != expected:
            raise codec.StateFormatError(f"page arrays {found} do not match the detector's state {expected}")
        return features, page, rows, devices

    def snapshot(self) -> bytes:
        """Every device's state as data (pages in a msgpack header): a self-contained snapshot,
        for tests and tools; the flow writes only changed pages (:meth:`dirty_pages`)."""
        pages = [
            blob
            for group in self.groups.values()
            for page in range(len(group.dirty))
            if (blob := self._page_blob(group, page)) is not None
        ]
        return codec.pack_header({"kind": "bank", "detector": self.spec.name, "pages": pages})

    def restore(self, state: bytes) -> None:
        """Replace every device's state with a :meth:`snapshot` (checked: a bad one raises
        :class:`~edgewatch.state.codec.StateFormatError` and leaves the bank empty)."""
        header, _ = codec.unpack(state)
        header = codec.expect(header, "bank")
        pages = header.get("pages")
        if header.get("detector") != self.spec.name or not isinstance(pages, list):
            raise codec.StateFormatError(f"snapshot of a {header.get('detector')!r} bank, not {self.spec.name!r}")
        DEVICES_HELD.dec(self._devices)
        self.groups, self._devices = {}, 0
        try:
            self.load_pages(pages)
        except Exception:
            DEVICES_HELD.dec(self._devices)
            self.groups, self._devices = {}, 0
            raise
