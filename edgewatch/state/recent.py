"""Each device's recent readings as a fixed ring of float32 rows: bounded, paged, data-only.

A rollout teaches a device's new model the device's recent readings before it takes over
(:func:`edgewatch.flows.lifecycle.warmed`); they are kept here, in the shard's snapshotted
state, so a rollout after a restart still warms every device.

Layout: devices that send the same feature set share a table; a device is one row of

========== ================================ ==============================================
``values``  float32 ``(per_device, F)``      the readings' values, a ring
``offset``  float32 ``(per_device,)``        each reading's source time minus ``base`` (s)
``base``    float64                          the device's time origin (moved to its newest
                                             reading when offsets would pass 2**16 s: times
                                             within 8 ms while a ring spans less than 18 h)
``written`` int64                            readings written (``% per_device``: the next slot)
========== ================================ ==============================================

so a four-feature device costs ``per_device x 20 + 24`` bytes (984 at the default 48 readings)
plus its entry in the row index, instead of a deque of Python tuples and dicts (~100 KB at 256). At most
``max_devices`` devices are held; beyond that the least recently seen tenth is dropped (like the
bank's). A snapshot writes the pages (64 rows) that changed, as
:mod:`~edgewatch.state.codec` bytes.

>>> from edgewatch.schema import RawMessage, Reading
>>> raw = RawMessage(None, None, [], "t", 0, 0, None)
>>> recent = RecentReadings(per_device=2)
>>> recent.add([Reading("pump-1", float(t), {"rpm": float(t)}, raw) for t in range(3)])
>>> [(r.timestamp, r.features) for r in recent.by_device()["pump-1"]]
[(1.0, {'rpm': 1.0}), (2.0, {'rpm': 2.0})]
"""

from __future__ import annotations

import hashlib
import operator
from collections.abc import Iterable
from itertools import chain, repeat

import numpy as np

from edgewatch.schema import RawMessage, Reading
from edgewatch.state import codec

PAGE_ROWS = 64  # rows per page: the unit a snapshot rewrites
REBASE_SECONDS = float(2**16)  # float32 offsets up to this keep 8 ms resolution
#: the raw message of a kept reading: it never reaches an output
REPLAYED = RawMessage(None, None, [], "warm-up", 0, 0, None)


def table_key(features: tuple[str, ...]) -> str:
    """A stable short name for a feature set in page ids."""
    return hashlib.blake2b("\x1f".join(features).encode(), digest_size=8).hexdigest()


class _Table:
    """The rings of the devices that send one feature set (rows handed out, freed, grown)."""

    def __init__(self, features: tuple[str, ...], per_device: int, limit: int = 2**31):
        self.features, self.per_device, self.limit = features, per_device, limit
        self.values = np.zeros((0, per_device, len(features)), np.float32)
        self.offset = np.zeros((0, per_device), np.float32)
        self.base = np.zeros(0, np.float64)
        self.written = np.zeros(0, np.int64)
        self.last_seen = np.zeros(0, np.int64)  # tick of the last add (-1: a free row)
        self.rows: dict[str, int] = {}
        self.devices: list[str | None] = []
        self.free: list[int] = []
        self.dirty: set[int] = set()  # pages changed since the last snapshot

    def arrays(self) -> list[np.ndarray]:
        return [self.values, self.offset, self.base, self.written]

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in self.arrays()) + self.last_seen.nbytes

    def grow(self, needed: int) -> None:
        capacity = len(self.base)
        if needed <= capacity:
            return
        # small tables double; big ones grow by an eighth in whole pages (little slack at fleet scale)
        target = max(needed, 4, 2 * capacity) if capacity < 512 else max(needed, capacity + capacity // 8)
        target = target if target < PAGE_ROWS else -(-target // PAGE_ROWS) * PAGE_ROWS
        target = min(target, max(needed, self.limit))  # never past the device limit
        extra = target - capacity
        self.values = np.concatenate([self.values, np.zeros((extra, *self.values.shape[1:]), np.float32)])
        self.offset = np.concatenate([self.offset, np.zeros((extra, self.per_device), np.float32)])
        self.base = np.concatenate([self.base, np.zeros(extra)])
        self.written = np.concatenate([self.written, np.zeros(extra, np.int64)])
        self.last_seen = np.concatenate([self.last_seen, np.full(extra, -1, np.int64)])
        self.devices.extend([None] * extra)
        self.free.extend(range(target - 1, capacity - 1, -1))

    def add_device(self, device: str, tick: int) -> int:
        if not self.free:
            self.grow(len(self.base) + 1)
        row = self.free.pop()
        self.rows[device], self.devices[row] = row, device
        self.written[row], self.last_seen[row] = 0, tick
        return row

    def drop(self, rows: Iterable[int]) -> None:
        for row in rows:
            del self.rows[self.devices[row]]
            self.devices[row] = None
            self.written[row], self.last_seen[row] = 0, -1
            self.free.append(row)
            self.dirty.add(row // PAGE_ROWS)

    def ordered(self, row: int) -> tuple[np.ndarray, np.ndarray]:
        """A row's kept readings in write order: values ``(n, F)`` and source times ``(n,)``."""
        written = int(self.written[row])
        count = min(written, self.per_device)
        slots = (written - count + np.arange(count)) % self.per_device
        return self.values[row, slots], self.base[row] + self.offset[row, slots].astype(np.float64)

    def write(self, rows: np.ndarray, values: np.ndarray, times: np.ndarray) -> None:
        """Append each reading (in order) to its row's ring; rows may repeat."""
        cap = self.per_device
        order = np.argsort(rows, kind="stable")
        by_row = rows[order]
        starts = np.flatnonzero(np.r_[True, by_row[1:] != by_row[:-1]])
        lengths = np.diff(np.r_[starts, len(rows)])
        unique = by_row[starts]
        rank = np.empty(len(rows), np.int64)
        rank[order] = np.arange(len(rows)) - np.repeat(starts, lengths)
        # a device's time origin: its first reading; moved to the newest when offsets would lose resolution
        newest = np.maximum.reduceat(times[order], starts)
        fresh = self.written[unique] == 0
        self.base[unique[fresh]] = np.minimum.reduceat(times[order], starts)[fresh]
        far = newest - self.base[unique] > REBASE_SECONDS
        if far.any():
            shift = newest[far] - self.base[unique[far]]
            self.offset[unique[far]] -= shift[:, None].astype(np.float32)
            self.base[unique[far]] = newest[far]
        # only the last ``per_device`` readings of a device in this batch survive: write just those
        length = np.empty(len(rows), np.int64)
        length[order] = np.repeat(lengths, lengths)
        keep = rank >= length - cap
        slots = (self.written[rows] + rank) % cap
        self.values[rows[keep], slots[keep]] = values[keep]
        self.offset[rows[keep], slots[keep]] = (times[keep] - self.base[rows[keep]]).astype(np.float32)
        self.written[unique] += lengths
        self.dirty.update((unique // PAGE_ROWS).tolist())

    def page(self, page: int) -> bytes | None:
        stop = min((page + 1) * PAGE_ROWS, len(self.base))
        rows = np.arange(page * PAGE_ROWS, stop)
        rows = rows[self.last_seen[rows] >= 0]
        if not len(rows):
            return None
        header = {
            "kind": "recent",
            "features": list(self.features),
            "page": page,
            "rows": (rows - page * PAGE_ROWS).tolist(),
            "devices": [self.devices[row] for row in rows.tolist()],
        }
        return codec.pack(header, [array[rows] for array in self.arrays()], compress=True)


def _by_feature_set(readings: list[Reading]) -> dict[tuple[str, ...], list[Reading]]:
    """The readings of each feature set (names sorted), in arrival order; in C loops when, as a
    rule, every reading lists the same features in the same order."""
    orders = list(map(tuple, map(_FEATURES, readings)))
    if orders.count(orders[0]) == len(orders):
        return {tuple(sorted(orders[0])): readings}
    by_features: dict[tuple[str, ...], list[Reading]] = {}
    for reading, order in zip(readings, orders, strict=True):
        by_features.setdefault(tuple(sorted(order)), []).append(reading)
    return by_features


_FEATURES = operator.attrgetter("features")
_DEVICE_ID = operator.attrgetter("device_id")
_TIMESTAMP = operator.attrgetter("timestamp")


class RecentReadings:
    """The last ``per_device`` readings of each device (at most ``max_devices`` devices).

    ``per_device`` is the setting ``rollout_warm_readings``; 0 keeps nothing."""

    def __init__(self, per_device: int = 256, max_devices: int = 100_000):
        self.per_device = per_device
        self.max_devices = max_devices
        self.tables: dict[tuple[str, ...], _Table] = {}
        self._tick = 0
        self._deleted: set[str] = set()  # page ids of emptied tables

    def __len__(self) -> int:
        return sum(len(table.rows) for table in self.tables.values())

    @property
    def nbytes(self) -> int:
        """Bytes of the rings' arrays (what a device costs, beside its entry in the row index)."""
        return sum(table.nbytes for table in self.tables.values())

    def add(self, readings: Iterable[Reading]) -> None:
        """Keep ``readings`` (each device's order kept)."""
        if self.per_device <= 0:
            return
        readings = list(readings)
        if not readings:
            return
        columns = []
        for features, group in _by_feature_set(readings).items():
            count = len(group)
            picked = map(operator.itemgetter(*features), map(_FEATURES, group))
            if len(features) > 1:
                picked = chain.from_iterable(picked)
            values = np.fromiter(picked, np.float64, count * len(features)).reshape(count, len(features))
            times = np.fromiter(map(_TIMESTAMP, group), np.float64, count)
            columns.append((features, list(map(_DEVICE_ID, group)), values, times))
        self.add_columns(columns)

    def add_columns(self, columns: Iterable[tuple[tuple[str, ...], list[str], np.ndarray, np.ndarray]]) -> None:
        """Keep readings given as columns per feature set (names sorted): ``(features, device ids,
        values (readings, features), times)`` each, as a vector bank's ``batch_columns`` holds the
        readings it labeled (each device's order kept)."""
        columns = list(columns)
        if self.per_device <= 0 or not columns:
            return
        self._tick += 1
        for features, device_ids, values, times in columns:
            table = self.tables.get(features)
            if table is None:
                table = self.tables[features] = _Table(features, self.per_device, self.max_devices)
            rows_of, tick = table.rows, self._tick
            rows = np.fromiter(map(rows_of.get, device_ids, repeat(-1)), np.int64, len(device_ids))  # -1: new
            if (rows < 0).any():
                for index in np.flatnonzero(rows < 0).tolist():
                    device = device_ids[index]
                    row = rows_of.get(device)
                    rows[index] = row if row is not None else table.add_device(device, tick)
            table.last_seen[rows] = tick
            table.write(rows, values.astype(np.float32), times)
        if len(self) > self.max_devices:
            self._evict(len(self) - self.max_devices + self.max_devices // 10)

    def _evict(self, count: int) -> None:
        """Drop the ``count`` least recently seen devices (a tenth of the room at once: rarely)."""
        tables = list(self.tables.values())
        held = [np.flatnonzero(t.last_seen >= 0) for t in tables]
        seen = np.concatenate([t.last_seen[rows] for t, rows in zip(tables, held, strict=True)])
        oldest = np.zeros(len(seen), bool)
        oldest[np.argpartition(seen, min(count, len(seen)) - 1)[:count]] = True
        start = 0
        for table, rows in zip(tables, held, strict=True):
            table.drop(rows[oldest[start : start + len(rows)]].tolist())
            start += len(rows)
            if not table.rows:  # an emptied feature set frees its memory and its pages
                del self.tables[table.features]
                key = table_key(table.features)
                self._deleted.update(f"{key}/{page}" for page in range(-(-len(table.base) // PAGE_ROWS)))

    def by_device(self) -> dict[str, list[Reading]]:
        """The kept readings of each device, in time order."""
        found: dict[str, list[Reading]] = {}
        for features, table in self.tables.items():
            for device, row in table.rows.items():
                values, times = table.ordered(row)
                kept = [
                    Reading(device, t, dict(zip(features, v, strict=True)), REPLAYED)
                    for t, v in zip(times.tolist(), values.tolist(), strict=True)
                ]
                if device in found:  # a device that sent two feature sets: one history, by time
                    kept = sorted(found[device] + kept, key=operator.attrgetter("timestamp"))
                found[device] = kept
        return found

    def counts(self) -> dict[str, int]:
        """Readings kept per device."""
        counts: dict[str, int] = {}
        for table in self.tables.values():
            for device, row in table.rows.items():
                counts[device] = counts.get(device, 0) + min(int(table.written[row]), self.per_device)
        return counts

    # -- pages ----------------------------------------------------------------------------------

    def dirty_pages(self, every: bool = False) -> dict[str, bytes | None]:
        """Pages changed since the last call (``every``: all of them): ``page id → bytes``
        (``None``: the page is gone)."""
        pages: dict[str, bytes | None] = dict.fromkeys(self._deleted)
        self._deleted.clear()
        for table in self.tables.values():
            key = table_key(table.features)
            changed = range(-(-len(table.base) // PAGE_ROWS)) if every else sorted(table.dirty)
            pages.update((f"{key}/{page}", table.page(page)) for page in changed)
            table.dirty.clear()
        return pages

    def load_pages(self, blobs: Iterable[bytes]) -> None:
        """Add the devices of page ``blobs`` (from :meth:`dirty_pages`), checking every field; a
        page kept with another ``per_device`` keeps the newest readings that fit."""
        for blob in blobs:
            header, arrays = codec.unpack(blob)
            header = codec.expect(header, "recent")
            features, devices, kept = self._checked(header, arrays)
            table = self.tables.get(features)
            if table is None:
                table = self.tables[features] = _Table(features, self.per_device, self.max_devices)
            if any(device in table.rows for device in devices):
                raise codec.StateFormatError(f"a device of {features} appears in two recent-readings pages")
            rows = np.array([table.add_device(device, 0) for device in devices], np.int64)
            if kept == self.per_device:  # as written: copy the rings
                for mine, stored in zip(table.arrays(), arrays, strict=True):
                    mine[rows] = stored
                continue
            old = _Table(features, kept)  # another ring size: the newest readings that fit
            old.values, old.offset, old.base, old.written = arrays
            for index, row in enumerate(rows.tolist()):
                values, times = old.ordered(index)
                if len(times):
                    table.write(np.full(len(times), row, np.int64), values, times)
        for table in self.tables.values():
            table.dirty.clear()

    def _checked(self, header: dict, arrays: list[np.ndarray]) -> tuple[tuple[str, ...], list[str], int]:
        features, devices = header.get("features"), header.get("devices")
        if not (isinstance(features, list) and all(isinstance(f, str) for f in features) and features):
            raise codec.StateFormatError("recent-readings page features are not names")
        if not (isinstance(devices, list) and devices and all(isinstance(d, str) for d in devices)):
            raise codec.StateFormatError("recent-readings page devices are not names")
        if len(arrays) != 4:
            raise codec.StateFormatError(f"a recent-readings page holds 4 arrays, not {len(arrays)}")
        n, kept = len(devices), arrays[1].shape[1] if arrays[1].ndim == 2 else -1
        expected = [("<f4", (n, kept, len(features))), ("<f4", (n, kept)), ("<f8", (n,)), ("<i8", (n,))]
        found = [(a.dtype.str, a.shape) for a in arrays]
        if kept < 1 or found != expected:
            raise codec.StateFormatError(f"recent-readings page arrays {found} do not match {expected}")
        if (arrays[3] < 0).any():
            raise codec.StateFormatError("recent-readings page counts are negative")
        return tuple(features), devices, kept
