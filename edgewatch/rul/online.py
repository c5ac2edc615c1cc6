"""The fleet's RUL, online: every reading updates its device's state and returns an estimate;
every failure makes the fleet model better.

:class:`RulFleet` owns one fleet :class:`~edgewatch.rul.model.RulModel` and, per device, the
online feature state of the current run (one row of a state matrix) and that run's raw rows.
``update_many`` advances a batch of readings with one numba call for the features and one per
quantile for the forests (the flow's path); ``update`` is the River-style one-reading form.

When a run ends (:class:`~edgewatch.rul.events.RunEnd`): a ``failure`` turns the run into
labeled data (the RUL at each reading is the number of readings left), kept in a bounded store
of the last ``max_runs`` runs and ``max_rows`` readings (seeded with ``history``, e.g. the
training runs). Every ``refit_every`` failures the fleet model is refit on that store (bounded
periodic refit, LightGBM from the ``train`` extra), inline or in a background thread, once the
store holds as many runs as the model it replaces was trained on (a refit never learns from
less); when the new model is ready, every active device's state is rebuilt by replaying its
run, so estimates continue without a gap.

With a :class:`~edgewatch.rul.store.RefitStore` (the flow's recovery directory), the failed
runs, the counters and the refit model survive a restart: a fleet built on the same deployed
model resumes with them; one built on another model (a new champion) keeps the runs and serves
the new model.

>>> from edgewatch.rul.train import Run
>>> import numpy as np
>>> from edgewatch.rul.model import RulModel
>>> from edgewatch.rul.features import FeatureSpec
>>> from edgewatch.rul.trees import Forest
>>> leaf = Forest(np.array([0]), np.array([np.inf]), np.array([0]), np.array([40.0]), np.array([0]))
>>> forests = {"p10": leaf, "p50": leaf, "p90": leaf}
>>> model = RulModel(FeatureSpec.identity(2), forests, columns=("a", "b", "c", "x", "y"))
>>> fleet = RulFleet(model, horizon=50.0)
>>> from edgewatch.schema import Reading
>>> estimate = fleet.update(Reading("pump-1", 0.0, {"a": 0, "b": 0, "c": 0, "x": 1.0, "y": 2.0}, None))
>>> (estimate.cycle, estimate.p50, estimate.alert)
(1, 40.0, True)

API for the RUL flow (``flows/rul.py``)::

    fleet = RulFleet(artifact.load(model_dir), horizon=30.0, refit_every=10, history=runs_or_none)
    batch = fleet.update_many(readings)          # RulBatch(estimates, rejected)
    for estimate in batch.estimates:             # one per accepted reading, in order
        emit("rul", rul_estimate_json(estimate))
        if estimate.alert:
            emit("alarms", maintenance_alert_json(estimate))
    for dead in batch.rejected:                  # DeadLetter(raw, reason, stage="rul")
        emit("deadletter", dead)
    fleet.end_run(parse_run_end(message.value))  # from the maintenance topic, or at the end of a replayed file
    fleet.model.version                          # changes when a refit lands
"""

from __future__ import annotations

import hashlib
import importlib.util
import itertools
import logging
import operator
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import NamedTuple

import numpy as np

from edgewatch.rul.events import RulEstimate, RunEnd
from edgewatch.rul.model import RulModel
from edgewatch.rul.store import RefitStore
from edgewatch.rul.train import Run, TrainConfig, train_runs
from edgewatch.schema import DeadLetter, Reading
from edgewatch.state import codec

log = logging.getLogger(__name__)


class RulBatch(NamedTuple):
    """What ``update_many`` returns: estimates in reading order, and readings it could not use."""

    estimates: list[RulEstimate]
    rejected: list[DeadLetter]


def lightgbm_refit(model: RulModel, runs: Sequence[Run]) -> RulModel:
    """The default refit: retrain on ``runs`` with the model's settings, keeping its band margins
    (a refit stays bounded: no cross-validation, three forests)."""
    config = TrainConfig(**{**model.metadata.get("config", {}), "folds": 0})
    refit = train_runs(runs, config, source="online refit")
    refit.lower_margin, refit.upper_margin = model.lower_margin, model.upper_margin
    return refit


class RulFleet:
    """Per-device RUL estimates from one fleet model that learns from observed failures.

    ``horizon``: a device's maintenance alert is raised (once per run) when its P10 falls below it.
    ``refit_every``: refit after this many failures (``None``: never learn).
    ``max_runs``, ``max_rows``: the labeled-run store keeps the most recent runs only, at most
    this many runs and readings.
    ``max_run_length``: a run longer than this is not kept for learning (memory bound).
    ``background``: refit in a thread, serving the old model meanwhile.
    ``store``: keep the failed runs and the refit model there, and resume from what it holds.
    """

    def __init__(
        self,
        model: RulModel,
        horizon: float = 30.0,
        refit_every: int | None = None,
        history: Sequence[Run] = (),
        max_runs: int = 500,
        max_run_length: int = 5000,
        background: bool = False,
        refit: Callable[[RulModel, Sequence[Run]], RulModel] = lightgbm_refit,
        max_rows: int = 200_000,
        store: RefitStore | None = None,
    ):
        if refit_every is not None:
            if refit_every < 1:
                raise ValueError("refit_every must be at least 1 (or None: no learning)")
            if refit is lightgbm_refit and importlib.util.find_spec("lightgbm") is None:
                raise ValueError("learning from failures needs the train extra: pip install 'edgewatch[train]'")
        self.model = model
        self.base_version = model.version  # the deployed model the refits descend from
        self.horizon = float(horizon)
        self.refit_every = refit_every
        self.max_run_length = max_run_length
        self.max_runs, self.max_rows = max_runs, max_rows
        self.runs: deque[Run] = deque()
        self._kept: set[bytes] = set()  # digests of the runs in the store: a replayed failure is not new
        self._rows_kept = 0
        self.failures_since_refit = 0
        self.refits = 0
        # a refit never learns from fewer runs than the model it replaces (nor than the store can hold)
        self.min_refit_runs = min(int(model.metadata.get("training", {}).get("runs", 2)), max_runs)
        for run in history:
            self._keep(run)
        self._refit = refit
        self.store = store
        self._deferred_save = False
        self._pick = operator.itemgetter(*model.columns)  # a reading's row, in the model's column order
        self._slots: dict[str, int] = {}
        self._rows: dict[str, list[np.ndarray]] = {}
        self._alerted: dict[str, bool] = {}
        self._state = model.spec.new_state(64)
        self._free: list[int] = list(range(len(self._state) - 1, -1, -1))
        self._executor = ThreadPoolExecutor(max_workers=1) if background else None
        self._pending: Future | None = None
        if store is not None:
            self._resume(store)

    # -- estimates -------------------------------------------------------------------------

    def update(self, reading: Reading) -> RulEstimate:
        """Advance ``reading``'s device by one reading; its RUL estimate (``ValueError`` if unusable)."""
        batch = self.update_many([reading])
        if batch.rejected:
            raise ValueError(batch.rejected[0].reason)
        return batch.estimates[0]

    def update_many(self, readings: Sequence[Reading]) -> RulBatch:
        """Advance every reading's device, in order; one estimate per usable reading."""
        self._swap_in_refit()
        rows, slots, accepted, rejected = [], [], [], []
        pick = self._pick
        for reading in readings:
            try:
                row = pick(reading.features)
            except KeyError as exc:
                rejected.append(DeadLetter(reading.raw, f"RUL model needs feature {exc.args[0]!r}", "rul"))
                continue
            rows.append(row)
            slots.append(self._slot(reading.device_id))
            accepted.append(reading)
        if not accepted:
            return RulBatch([], rejected)
        width = len(self.model.columns)
        matrix = np.fromiter(itertools.chain.from_iterable(rows), np.float64, len(rows) * width).reshape(-1, width)
        slot_array = np.array(slots, dtype=np.int64)
        features = self.model.spec.update(self._state, slot_array, matrix)
        predicted = self.model.predict(features).tolist()
        cycles = features[:, 0].astype(np.int64).tolist()
        version, horizon = self.model.version, self.horizon
        estimates = []
        for i, reading in enumerate(accepted):
            device = reading.device_id
            history = self._rows[device]
            if len(history) < self.max_run_length:
                history.append(matrix[i])
            p10, p50, p90 = predicted[i]
            alert = False
            if p10 < horizon and not self._alerted[device]:
                alert = self._alerted[device] = True
            estimates.append(
                RulEstimate(device, reading.timestamp, cycles[i], p10, p50, p90, alert, horizon, version, reading.raw)
            )
        return RulBatch(estimates, rejected)

    # -- run ends and learning -------------------------------------------------------------

    def end_runs(self, events: Sequence[RunEnd]) -> list[Run | None]:
        """:meth:`end_run` for each event, the store written once for all of them (a replayed
        history ends every run at once; the store's write grows with the store)."""
        self._deferred_save, ended = True, []
        try:
            ended = [self.end_run(event) for event in events]
        finally:
            self._deferred_save = False
            if any(run is not None for run in ended):
                self._save_failures()
        return ended

    def end_run(self, event: RunEnd) -> Run | None:
        """End ``event.device_id``'s run; a failure's run as labeled data (``None`` otherwise).

        The device's next reading starts a new run (cycle 1)."""
        slot = self._slots.pop(event.device_id, None)
        history = self._rows.pop(event.device_id, [])
        self._alerted.pop(event.device_id, None)
        if slot is not None:
            self._state[slot] = 0.0
            self._free.append(slot)
        if event.kind != "failure" or len(history) < 2 or len(history) >= self.max_run_length:
            return None
        run = Run(event.device_id, np.array(history), failed=True)
        if not self._keep(run):
            return None  # a failure replayed after a restart: already learned from
        self.failures_since_refit += 1
        refits = self.refits
        if (
            self.refit_every is not None
            and self.failures_since_refit >= self.refit_every
            and len(self.runs) >= self.min_refit_runs
            and self._pending is None
        ):
            self._start_refit()
        if self.refits == refits and not self._deferred_save:  # an inline refit has saved them with its model
            self._save_failures()
        return run

    def _keep(self, run: Run) -> bool:
        """Add ``run`` to the bounded store (oldest runs go first); ``False`` if it is there already."""
        digest = _run_digest(run)
        if digest in self._kept:
            return False
        self.runs.append(run)
        self._kept.add(digest)
        self._rows_kept += len(run.rows)
        while len(self.runs) > 1 and (len(self.runs) > self.max_runs or self._rows_kept > self.max_rows):
            dropped = self.runs.popleft()
            self._kept.discard(_run_digest(dropped))
            self._rows_kept -= len(dropped.rows)
        return True

    def _save_failures(self) -> None:
        if self.store is not None:
            self.store.save_failures(list(self.runs), self.failures_since_refit, self.refits, self.base_version)

    def _resume(self, store: RefitStore) -> None:
        """Take up the failed runs, counters and refit model ``store`` kept (see the module doc)."""
        kept = store.load_failures()
        if kept is None:
            return
        for run in kept.runs:
            self._keep(run)
        self.failures_since_refit = kept.since_refit
        refit = store.load_model() if kept.base == self.base_version and kept.refits else None
        if refit is not None:
            self._install(refit, kept.refits, persist=False)
        elif kept.refits:
            log.info("RUL model %s deployed (the kept refit descends from %s): serving it, keeping the %d failed "
                     "runs", self.base_version, kept.base, len(kept.runs))  # fmt: skip
        log.info("RUL store %s: %d failed runs kept, %d failures since the last refit, serving %s",
                 store.folder, len(self.runs), self.failures_since_refit, self.model.version)  # fmt: skip

    def snapshot(self) -> bytes:
        """The devices' current runs as data (:mod:`edgewatch.state.codec`): their readings so far and
        whether their alert was raised. The feature state is rebuilt from them on restore. The failed
        runs and a refit model are not in it: the ``store`` keeps them, written when they change."""
        devices = [device for device, rows in self._rows.items() if rows]
        lengths = [len(self._rows[device]) for device in devices]
        width = len(self.model.columns)
        rows = np.concatenate([np.array(self._rows[d]) for d in devices]) if devices else np.empty((0, width))
        header = {"kind": "rul-fleet", "devices": devices, "alerted": [self._alerted[d] for d in devices]}
        return codec.pack({**header, "lengths": lengths, "width": width}, [rows.astype(np.float64)], compress=True)

    def restore(self, blob: bytes) -> None:
        """Resume the runs a :meth:`snapshot` holds (the feature state replayed under the current model)."""
        header, arrays = codec.unpack(blob)
        codec.expect(header, "rul-fleet")
        devices, lengths, alerted = header["devices"], header["lengths"], header["alerted"]
        (rows,) = arrays
        width = len(self.model.columns)
        if header["width"] != width or rows.shape != (sum(lengths), width) or len(devices) != len(lengths):
            raise codec.StateFormatError(f"RUL state of width {header['width']}, the model reads {width} columns")
        start = 0
        for device, length, raised in zip(devices, lengths, alerted, strict=True):
            slot = self._slot(device)
            run = rows[start : start + length]
            start += length
            self._rows[device] = list(run)
            self._alerted[device] = bool(raised)
            self.model.spec.update(self._state, np.full(length, slot, dtype=np.int64), run)

    def active_devices(self) -> list[str]:
        """Devices with a run in progress."""
        return [device for device, rows in self._rows.items() if rows]

    def wait_for_refit(self) -> None:
        """Block until a background refit (if any) has landed."""
        if self._pending is not None:
            self._pending.result()
            self._swap_in_refit()

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=True, cancel_futures=True)

    def _start_refit(self) -> None:
        self.failures_since_refit = 0
        runs = list(self.runs)
        if self._executor is None:
            self._install(self._refit(self.model, runs))
        else:
            self._pending = self._executor.submit(self._refit, self.model, runs)

    def _swap_in_refit(self) -> None:
        if self._pending is None or not self._pending.done():
            return
        pending, self._pending = self._pending, None
        try:
            self._install(pending.result())
        except Exception:  # keep serving the current model; the next failures try again
            log.exception("RUL refit failed; keeping model %s", self.model.version)

    def _install(self, model: RulModel, refits: int | None = None, persist: bool = True) -> None:
        """Serve ``model`` from now on (the ``refits``-th refit, by default the next): rebuild every
        active run's state under its features; keep it in the store."""
        refits = self.refits + 1 if refits is None else refits
        if not model.version:
            model.version = f"{self.model.version or 'rul'}+refit{refits}"
        self.model, self.refits = model, refits
        if persist and self.store is not None:
            self.store.save_model(model)
            self._save_failures()
        self._pick = operator.itemgetter(*model.columns)
        self._state = model.spec.new_state(len(self._state))
        for device, slot in self._slots.items():
            rows = self._rows[device]
            if rows:
                model.spec.update(self._state, np.full(len(rows), slot, dtype=np.int64), np.array(rows))
        log.info("RUL model %s installed (trained on %d runs)", model.version, len(self.runs))

    def _slot(self, device_id: str) -> int:
        slot = self._slots.get(device_id)
        if slot is None:
            if not self._free:
                grown = len(self._state)
                self._state = np.vstack([self._state, np.zeros_like(self._state)])
                self._free.extend(range(2 * grown - 1, grown - 1, -1))
            slot = self._slots[device_id] = self._free.pop()
            self._rows[device_id] = []
            self._alerted[device_id] = False
        return slot


def _run_digest(run: Run) -> bytes:
    """What identifies a run: its device and its readings."""
    digest = hashlib.blake2b(run.device_id.encode(), digest_size=16)
    digest.update(np.ascontiguousarray(run.rows, dtype=np.float64).tobytes())
    return digest.digest()
