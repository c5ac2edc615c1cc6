"""The anomaly flow: telemetry in; labeled events, dead letters, alarms and drift events out.

Read top to bottom, this is the whole data path::

    in            batches of raw messages: one poll of a Kafka partition, a file, edgeHub
    parse         each batch → valid readings, and dead letters (with the reason)
    shard         readings grouped by device shard (a stable hash of the device id)
    detect        per shard, a bank of device models: score, label, learn (snapshotted per epoch)
    fleet drift   per batch, counts in the reference bins of the model in effect → one window
    outputs       typed streams — labeled, dead_letters, alarms, drift, shadow, fleet_drift — each a
                  list per item

:func:`build_flow` returns the dataflow and its :class:`AnomalyStreams`; the caller attaches one
``op.output`` per destination (:mod:`edgewatch.flows.outputs`: Kafka, JSONL files, IoT Hub,
Event Hubs, edgeHub outputs), so no sink ever looks at item types. Flow metrics are counted here.

Run it with ``edgewatch run`` or ``python -m bytewax.run edgewatch.flows.anomaly:flow``
(settings from ``EDGEWATCH_*`` variables).
"""

from __future__ import annotations

import logging
import threading
import zlib
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import bytewax.operators as op
from bytewax.dataflow import Dataflow, Stream
from bytewax.inputs import Source

from edgewatch.config import FlowSettings
from edgewatch.flows.fleet_drift import FLEET_DRIFT_REPORT, FleetDriftEvent, FleetDriftLogic, bin_counts
from edgewatch.flows.lifecycle import SHADOW_METRICS, SHADOW_REPORT, RecentReadings, ShadowEvent, ShadowTally, warmed
from edgewatch.online_models import artifact as artifact_module
from edgewatch.online_models.bank import ModelBank, new_bank
from edgewatch.online_models.reference import checked_reference
from edgewatch.online_models.registry import resolve_detector
from edgewatch.schema import (
    AlarmEvent,
    BankResult,
    DeadLetter,
    DriftEvent,
    LabeledEvent,
    RawMessage,
    Reading,
    format_timestamp,
    parse_iso_utc,
)
from edgewatch.schema import parse_batch as parse_messages
from edgewatch.state import codec
from edgewatch.state.limits import DEVICES_HELD
from edgewatch.state.pages import ShardPages, manifest, prefixed
from edgewatch.telemetry import FLOW_METRICS

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class AnomalyStreams:
    """The flow's outputs, one typed stream each; every item is a non-empty list."""

    labeled: Stream[list[LabeledEvent]]
    dead_letters: Stream[list[DeadLetter]]
    alarms: Stream[list[AlarmEvent]]
    drift: Stream[list[DriftEvent]]
    shadow: Stream[list[ShadowEvent]]  # the challenger's labels (``--shadow``), beside the champion's
    fleet_drift: Stream[list[FleetDriftEvent]]  # features whose fleet distribution left the training reference


class ShadowResult(NamedTuple):
    """A shard's shadow events for one batch (beside the champion's :class:`BankResult`)."""

    events: list[ShadowEvent]


def build_flow(
    settings: FlowSettings,
    source: Source,
    controls: LiveControls | None = None,
    artifact: artifact_module.ModelArtifact | None = None,
) -> tuple[Dataflow, AnomalyStreams]:
    """The anomaly dataflow reading ``source``. Devices warm-start from ``artifact`` (default:
    ``settings.model_dir``); ``controls`` change the threshold or the model while it runs."""
    flow = Dataflow("edgewatch-anomaly")
    if artifact is None and settings.model_dir is not None:
        artifact = artifact_module.load(settings.model_dir, settings.model_public_key)
    SHADOW_METRICS.report = settings.model_cache_dir / SHADOW_REPORT  # what `edgewatch retrain` watches
    batches = op.input("in", flow, source)
    parsed = op.map("parse", batches, parse)
    bad_input = op.filter_map("bad-input", parsed, lambda batch: batch[1] or None)
    by_shard = op.flat_map("shard", parsed, lambda batch: shard_readings(batch[0], settings.shard_count))
    detected = op.stateful_batch("detect", by_shard, bank_builder(settings, controls, artifact))
    split = op.branch("shadow-split", op.key_rm("unshard", detected), lambda item: isinstance(item, ShadowResult))
    results = split.falses
    op.inspect("count", results, lambda _step, result: FLOW_METRICS.count_results(result))
    streams = AnomalyStreams(
        labeled=op.filter_map("labeled", results, lambda result: result.events or None),
        dead_letters=op.merge(
            "dead-letters",
            bad_input,
            op.filter_map("detect-errors", results, lambda result: result.dead_letters or None),
        ),
        alarms=op.filter_map("alarms", results, lambda result: result.alarms or None),
        drift=op.filter_map("drift", results, lambda result: result.drift or None),
        shadow=op.filter_map("shadow", split.trues, lambda result: result.events or None),
        fleet_drift=fleet_drift(settings, parsed, controls, artifact),
    )
    return flow, streams


def fleet_drift(settings: FlowSettings, parsed: Stream, controls: LiveControls | None, artifact) -> Stream:
    """Fleet drift events: each batch's readings counted into the reference bins of the model in
    effect where it was parsed; one step sums the counts of a window and measures it."""

    def in_effect():
        return (controls.plan.artifact if controls is not None else None) or artifact

    def reference_of(version: str):
        model = in_effect()
        return checked_reference(model.metadata) if model is not None and model.version == version else None

    counts = op.filter_map("fleet-drift-counts", parsed, lambda batch: bin_counts(batch[0], in_effect()))
    report = settings.model_cache_dir / FLEET_DRIFT_REPORT
    window = op.stateful_batch(
        "fleet-drift",
        op.key_on("fleet", counts, lambda _counts: "fleet"),
        lambda _state: FleetDriftLogic(
            reference_of, settings.fleet_drift_window, settings.fleet_drift_psi, report, settings.fleet_drift_confirm
        ),
    )
    return op.key_rm("fleet-drift-events", window)


def parse(raws: list[RawMessage]) -> tuple[list[Reading], list[DeadLetter]]:
    """A batch of raw messages → valid readings and dead letters, each in arrival order."""
    readings, dead = parse_messages(raws)
    FLOW_METRICS.count_parsed(len(raws), dead)
    return readings, dead


def shard_of(device_id: str, shards: int) -> str:
    """The shard key of a device: a stable hash, the same in every process and run."""
    return f"shard-{zlib.crc32(device_id.encode()) % shards:04d}"


def shard_readings(readings: list[Reading], shards: int) -> Iterable[tuple[str, list[Reading]]]:
    """``(shard, readings)`` for every shard that has readings, each device's order kept."""
    if shards == 1:  # one shard (one worker, the default): no hashing
        return [(shard_of("", 1), readings)] if readings else []
    by_shard: dict[str, list[Reading]] = defaultdict(list)
    known = _SHARDS.setdefault(shards, {})
    if len(known) > 100_000:  # remembered per device: bounded
        known.clear()
    for reading in readings:
        device = reading.device_id
        shard = known.get(device)
        if shard is None:
            shard = known[device] = shard_of(device, shards)
        by_shard[shard].append(reading)
    return by_shard.items()


_SHARDS: dict[int, dict[str, str]] = {}  # shard count → device → shard key


@dataclass
class ModelPlan:
    """The models a shard should run: the champion (``generation`` counts its changes) and the
    challenger in its shadow (``shadow_generation``); ``promoted``: the generation at which the
    challenger of ``promoted_shadow`` became the champion (its bank takes over as it is)."""

    artifact: artifact_module.ModelArtifact | None = None
    generation: int = 0
    shadow: artifact_module.ModelArtifact | None = None
    shadow_generation: int = 0
    promoted: int = -1
    promoted_shadow: int = -1


@dataclass
class LiveControls:
    """What an operator changes while the flow runs (e.g. an IoT Edge module twin's desired properties).

    ``threshold`` replaces the label threshold from the next batch on; :meth:`use_artifact` rolls
    out a new warm-start artifact (each device's new model first learns the device's recent
    readings, then takes over); :meth:`shadow` runs a challenger beside the champion on the same
    readings (its labels go to the shadow output), and :meth:`promote_shadow` makes it the
    champion with what it has learned; :meth:`accept` makes a device's current abnormal state its
    new normal (the operator's acceptance: its alarm clears, a drift event with reason
    ``operator`` says so) when its shard next runs. Each shard applies a change when it next runs.

    >>> controls = LiveControls()
    >>> controls.accept("pump-7")
    >>> controls.accepted_since(0)
    (1, ['pump-7'])
    """

    threshold: float | None = None
    artifact: artifact_module.ModelArtifact | None = None
    accepted: list[tuple[int, str]] = field(default_factory=list)  # (sequence, device), the last 1,000
    plan: ModelPlan = field(default_factory=ModelPlan)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def __post_init__(self) -> None:
        self.plan.artifact = self.plan.artifact or self.artifact

    @property
    def generation(self) -> int:
        return self.plan.generation

    def use_artifact(self, fitted: artifact_module.ModelArtifact) -> None:
        """Roll out ``fitted`` as the champion (warmed on each device's recent readings)."""
        with self._lock:
            self.artifact = fitted
            self.plan = ModelPlan(fitted, self.plan.generation + 1, self.plan.shadow, self.plan.shadow_generation)

    def shadow(self, challenger: artifact_module.ModelArtifact | None) -> None:
        """Run ``challenger`` in the shadow of the champion (``None``: stop the shadow)."""
        with self._lock:
            plan = self.plan
            self.plan = ModelPlan(plan.artifact, plan.generation, challenger, plan.shadow_generation + 1,
                                  plan.promoted, plan.promoted_shadow)  # fmt: skip

    @property
    def challenger(self) -> artifact_module.ModelArtifact | None:
        return self.plan.shadow

    def promote_shadow(self) -> artifact_module.ModelArtifact:
        """The challenger becomes the champion, in every shard with what it learned (no restart);
        the shadow stops. Raises ``ValueError`` when no challenger runs."""
        with self._lock:
            plan = self.plan
            if plan.shadow is None:
                raise ValueError("no challenger in the shadow to promote (start one with --shadow)")
            self.artifact = plan.shadow
            generation = plan.generation + 1
            self.plan = ModelPlan(plan.shadow, generation, None, plan.shadow_generation + 1, generation,
                                  plan.shadow_generation)  # fmt: skip
            return plan.shadow

    def accept(self, device_id: str) -> None:
        sequence = self.accepted[-1][0] + 1 if self.accepted else 1
        self.accepted = [*self.accepted[-999:], (sequence, device_id)]

    def accepted_since(self, sequence: int) -> tuple[int, list[str]]:
        """The devices accepted after ``sequence``, and the latest sequence (each shard keeps its own)."""
        latest = self.accepted[-1][0] if self.accepted else sequence
        return latest, [device for number, device in self.accepted if number > sequence]


class ModelBankLogic(op.StatefulBatchLogic[list[Reading], BankResult | ShadowResult, bytes]):
    """Bytewax glue for one shard's bank (and its challenger's, in the shadow): never discarded.

    With a recovery directory, a snapshot writes the pages that changed to the shard's page
    store and gives Bytewax a small manifest (:mod:`edgewatch.state.pages`); without one,
    nothing (Bytewax snapshots every epoch even when it keeps nothing). The pages hold the
    champion's bank, each device's recent readings (what warms a new model), and the
    challenger's bank and tally while one runs in the shadow: after a restart a rollout still
    warms every device, and the same challenger resumes where it was (a River-object bank is
    snapshotted whole, without them)."""

    def __init__(
        self,
        bank: ModelBank,
        controls: LiveControls | None = None,
        rebuild=None,
        recovery_dir: Path | None = None,
        shards: int = 1,
        pages: ShardPages | None = None,
        recent: RecentReadings | None = None,
        resumed_shadow: tuple[str, dict, dict] | None = None,
        history_end: float | None = None,
    ):
        self.bank = bank
        #: the end of the warm-start model's history (epoch s), checked against the first batch
        self._history_end = history_end
        self.shadow = None  # the challenger's bank
        self._controls = controls
        self._rebuild = rebuild
        plan = controls.plan if controls is not None else ModelPlan()
        self._generation = 0  # ``bank`` is the flow's first model: a shard built after a rollout follows it
        self._shadow_generation = -1 if plan.shadow is not None else plan.shadow_generation
        self._accepted = controls.accepted_since(0)[0] if controls is not None else 0
        self._recovery_dir, self._shards, self._pages = recovery_dir, shards, pages
        self.recent = recent if recent is not None else RecentReadings(0)
        self._tally = ShadowTally(self.recent.max_devices)
        # (challenger version, its bank's pages, its tally's pages) as of the manifest resumed from
        self._resumed_shadow = resumed_shadow
        self._rewrite = False  # a new lineage: the next snapshot writes every part whole
        self._stale_pages: list[str] = []  # pages of a challenger gone, deleted by the next snapshot
        self.last_warm: dict[str, int] = {}  # readings each device's new model learned at the last switch

    def on_batch(self, values: list[list[Reading]]) -> tuple[list[BankResult | ShadowResult], bool]:
        controls = self._controls
        if self._pages is None and self._recovery_dir is not None and hasattr(self.bank, "dirty_pages"):
            # a new shard of a paged bank: its key, from one of its devices
            self._pages = ShardPages(self._recovery_dir, shard_of(values[0][0].device_id, self._shards))
        if controls is not None:
            self._follow(controls.plan)
            if controls.threshold is not None:
                self.bank.threshold = controls.threshold
                if self.shadow is not None:
                    self.shadow.threshold = controls.threshold
        accepted = self._operator_accepts()
        # one call for everything that arrived (polls of several partitions): the bank's kernel
        # then runs once per activation; each device's order is kept
        readings = values[0] if len(values) == 1 else [reading for batch in values for reading in batch]
        if self._history_end is not None:  # the first batch only
            _say_before_history_end(readings, self._history_end)
            self._history_end = None
        result = self.bank.label(readings)
        out: list[BankResult | ShadowResult] = [*accepted, result]
        if self.shadow is not None:
            out.append(ShadowResult(self._tally.compare(result, self.shadow.label(readings), self.bank.version)))
        columns = getattr(self.bank, "batch_columns", None)
        if columns is not None:  # a vector bank: the readings it labeled, as the arrays it made of them
            self.recent.add_columns(columns)
        else:
            self.recent.add([event.reading for event in result.events])
        return out, op.StatefulBatchLogic.RETAIN

    def on_eof(self) -> tuple[list[BankResult | ShadowResult], bool]:
        if self.shadow is not None:  # the shadow's last figures, for `edgewatch retrain`
            SHADOW_METRICS.flush()
        return [], op.StatefulBatchLogic.RETAIN

    def _follow(self, plan: ModelPlan) -> None:
        """Switch to the models ``plan`` asks for; a new model learns the recent readings first."""
        if plan.generation != self._generation:
            if (
                plan.promoted == plan.generation
                and self.shadow is not None
                and (self._shadow_generation == plan.promoted_shadow)
            ):  # the challenger takes over with what it learned beside the champion
                new, self.shadow, self._shadow_generation = self.shadow, None, plan.shadow_generation
            else:
                new = warmed(self._rebuild, plan.artifact, self._spec(plan.artifact), self.recent.by_device())
                self.last_warm = self.recent.counts()
            self._retire(self.bank)
            self.bank, self._generation = new, plan.generation
            if self._pages is not None:  # the old devices' pages belong to the old model: a new lineage
                self._pages = ShardPages(self._recovery_dir, self._pages.shard)
                self._rewrite, self._resumed_shadow = True, None
        if plan.shadow_generation != self._shadow_generation:
            self._retire(self.shadow)
            self.shadow = None
            self._tally = ShadowTally(self.recent.max_devices)
            resumed, self._resumed_shadow = self._resumed_shadow, None
            if plan.shadow is not None and resumed is not None and resumed[0] == plan.shadow.version:
                # the challenger the shard ran before a restart: resume it as it was
                self.shadow = self._rebuild(plan.shadow)
                self.shadow.load_pages(resumed[1].values())
                self._tally.load_pages(resumed[2].values())
            else:
                self._drop_shadow_pages()
                if plan.shadow is not None:
                    self.shadow = warmed(self._rebuild, plan.shadow, self._spec(plan.shadow), self.recent.by_device())
            self._shadow_generation = plan.shadow_generation

    def _drop_shadow_pages(self) -> None:
        """Delete the pages of the challenger that ran before (none after a new lineage)."""
        if self._pages is not None and not self._rewrite:
            self._stale_pages = [page for part in ("shadow/", "tally/") for page in self._pages.ids(part)]

    def _spec(self, fitted):
        return fitted.spec if fitted is not None else self.bank.spec

    @staticmethod
    def _retire(bank) -> None:
        if bank is not None and hasattr(bank, "dirty_pages"):  # a vector bank counts the devices it holds
            DEVICES_HELD.dec(len(bank))

    def _operator_accepts(self) -> list[BankResult]:
        """Acceptances an operator asked for since this shard last ran (devices of other shards: nothing)."""
        if self._controls is None or not hasattr(self.bank, "accept"):
            return []
        self._accepted, devices = self._controls.accepted_since(self._accepted)
        results = [self.bank.accept(device) for device in devices]
        return [result for result in results if result.alarms or result.drift]

    def snapshot(self) -> bytes:
        if self._recovery_dir is None:
            return b""
        with FLOW_METRICS.snapshot_duration.time():
            dirty_pages = getattr(self.bank, "dirty_pages", None)
            if dirty_pages is None or self._pages is None:  # River objects: the whole bank, as before
                return self.bank.snapshot()
            every, self._rewrite = self._rewrite, False
            changed = dict.fromkeys(self._stale_pages)
            self._stale_pages = []
            changed.update(every_page(self.bank) if every else dirty_pages())
            changed.update(prefixed("recent/", self.recent.dirty_pages(every)))
            shadow = self.shadow if hasattr(self.shadow, "dirty_pages") else None
            if shadow is not None:
                changed.update(prefixed("shadow/", every_page(shadow) if every else shadow.dirty_pages()))
                changed.update(prefixed("tally/", self._tally.dirty_pages(every)))
            elif self._resumed_shadow is not None:  # a challenger resumed but not asked for yet: kept
                return self._pages.snapshot(changed, self._resumed_shadow[0])
            return self._pages.snapshot(changed, shadow.version if shadow is not None else None)


_said_before_history_end = threading.Event()  # once per process, not once per shard


def _say_before_history_end(readings: list[Reading], history_end: float) -> None:
    """A warning when a freshly warm-started flow's first readings precede the end of the model's
    history (its own history replayed, or one recorded into the future): a device takes them as
    continuing that history, not as coming after a gap, and the step back alarms it at once."""
    first = min(reading.timestamp for reading in readings)
    if first < history_end and not _said_before_history_end.is_set():
        _said_before_history_end.set()
        log.warning(
            "readings from %s, before the end of the model's history (%s): warm-started devices take "
            "them as continuing it, and the step back may alarm them; give the model live data recorded "
            "after its history",
            format_timestamp(first), format_timestamp(history_end),
        )  # fmt: skip


def every_page(bank) -> dict[str, bytes | None]:
    """All of a paged bank's pages (its changed ones taken too): what a new lineage starts from."""
    from edgewatch.online_models.vector_bank import group_key

    pages = bank.dirty_pages()
    for blob in codec.unpack(bank.snapshot())[0]["pages"]:
        header = codec.unpack(blob)[0]
        pages[f"{group_key(tuple(header['features']))}/{header['page']}"] = blob
    return pages


def bank_builder(settings: FlowSettings, controls: LiveControls | None = None, artifact=None):
    """A function Bytewax calls to create (``state is None``) or resume a shard's bank."""
    spec = resolve_detector(settings.detector)
    if artifact is None and settings.model_dir is not None:
        artifact = artifact_module.load(settings.model_dir, settings.model_public_key)
    if artifact is not None:
        spec = artifact.spec

    def rebuild(new_artifact):
        return new_bank(new_artifact.spec if new_artifact else spec, settings.threshold, new_artifact, settings, shards)

    warm_up = getattr(new_bank(spec), "warm_up", None)
    if warm_up is not None:  # compile the bank's kernel before the first message, not on it
        warm_up()

    shards = settings.shard_count

    def build(state: bytes | None) -> ModelBankLogic:
        bank = new_bank(spec, settings.threshold, artifact, settings, shards)  # the settings hold the limits
        pages = resumed_shadow = None
        recent = RecentReadings(settings.rollout_warm_readings, settings.devices_per_shard(shards))
        if state:
            found = manifest(state)
            if found is None:
                bank.restore(state)
            else:  # the shard's pages as of the manifest Bytewax resumes from
                pages = ShardPages.resume(settings.recovery_dir, found)
                parts = pages.read_parts()
                bank.load_pages(parts[""].values())
                recent.load_pages(parts["recent/"].values())
                if found.get("shadow") is not None:
                    resumed_shadow = (found["shadow"], parts["shadow/"], parts["tally/"])
        history_end = None if state or artifact is None else _history_end(artifact)  # a resume has gone on since
        return ModelBankLogic(
            bank, controls, rebuild, settings.recovery_dir, shards, pages, recent, resumed_shadow, history_end
        )

    return build


def _history_end(fitted: artifact_module.ModelArtifact) -> float | None:
    """When the model's training history ended (epoch s), if its metadata says."""
    stamp = (fitted.metadata.get("training") or {}).get("last_timestamp")
    return parse_iso_utc(stamp).timestamp() if isinstance(stamp, str) else None


def __getattr__(name: str) -> Dataflow:
    # `python -m bytewax.run edgewatch.flows.anomaly:flow` builds the flow from EDGEWATCH_* only when asked
    if name == "flow":
        from edgewatch.app import Application
        from edgewatch.flows.wiring import kafka_flow

        # bytewax.run handles signals, and may run this process as one of a cluster
        app = Application(FlowSettings(), handle_signals=False, single_process=False).start()
        return kafka_flow(app)
    raise AttributeError(name)
