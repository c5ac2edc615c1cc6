"""The lifecycle's state in the snapshotted pages: each device's recent readings (a bounded
float32 ring), the challenger's bank and its per-device tally; restarts keep all three."""

import random
import tracemalloc
from collections import deque

import orjson
import pytest

from edgewatch.app import Application
from edgewatch.config import FlowSettings
from edgewatch.flows.anomaly import LiveControls, ShadowResult, bank_builder
from edgewatch.flows.lifecycle import ShadowTally
from edgewatch.flows.wiring import replay_flow
from edgewatch.online_models import artifact
from edgewatch.online_models.registry import BUILTIN
from edgewatch.schema import RawMessage, Reading, SourceRef, parse_message
from edgewatch.simulator import Fleet
from edgewatch.state import codec
from edgewatch.state.recent import RecentReadings
from edgewatch.state.reshard import reshard_recovery_dir

RAW = RawMessage(None, None, [], "t", 0, 0, None)
SPEC = BUILTIN["relational-novelty"]


def test_the_ring_keeps_each_devices_last_readings_in_order():
    rng = random.Random(3)
    recent, expected = RecentReadings(per_device=5, max_devices=1000), {}
    t = 1.7e9
    for _ in range(40):  # batches with repeats, two feature sets, a device over its ring within one batch
        batch = []
        for _ in range(rng.randint(1, 30)):
            device = f"d{rng.randint(0, 6)}"
            features = ("a", "b") if device != "d6" else ("x",)
            t += rng.uniform(0, 3000)  # up to an hour apart: the time origins move forward
            batch.append(Reading(device, t, {f: rng.uniform(-1e3, 1e3) for f in features}, RAW))
            expected.setdefault(device, deque(maxlen=5)).append(batch[-1])
        recent.add(batch)
    kept = recent.by_device()
    assert set(kept) == set(expected) and recent.counts() == {d: len(rows) for d, rows in expected.items()}
    for device, rows in expected.items():
        assert [r.timestamp for r in kept[device]] == pytest.approx([r.timestamp for r in rows], abs=0.01)
        for got, want in zip(kept[device], rows, strict=True):
            assert got.features == pytest.approx(want.features, rel=1e-6)

    restored = RecentReadings(per_device=5)
    restored.load_pages(recent.dirty_pages(every=True).values())
    assert restored.by_device() == kept
    smaller = RecentReadings(per_device=2)  # the setting changed between runs: the newest readings that fit
    smaller.load_pages(recent.dirty_pages(every=True).values())
    newest = smaller.by_device()
    assert set(newest) == set(kept)
    for device, rows in kept.items():  # (written again: the times within the ring's resolution)
        assert [r.features for r in newest[device]] == [r.features for r in rows[-2:]]
        assert [r.timestamp for r in newest[device]] == pytest.approx([r.timestamp for r in rows[-2:]], abs=0.01)


def test_the_ring_is_bounded_and_drops_the_least_recently_seen():
    recent = RecentReadings(per_device=4, max_devices=100)
    for start in range(0, 300, 50):
        recent.add([Reading(f"d{i}", float(start), {"a": 1.0}, RAW) for i in range(start, start + 50)])
    assert len(recent) <= 100 and "d299" in recent.counts() and "d0" not in recent.counts()
    dropped = recent.dirty_pages()
    assert any(blob is None for blob in dropped.values()) or len(dropped) >= 1


def test_a_damaged_recent_page_is_refused():
    recent = RecentReadings(per_device=3)
    recent.add([Reading("d", 1.0, {"a": 1.0}, RAW)])
    (blob,) = recent.dirty_pages().values()
    header, arrays = codec.unpack(blob)
    with pytest.raises(codec.StateFormatError):
        RecentReadings(3).load_pages([codec.pack(header, arrays[:3])])
    with pytest.raises(codec.StateFormatError):
        RecentReadings(3).load_pages([codec.pack({**header, "kind": "page"}, arrays)])


def test_ring_memory_for_ten_thousand_four_feature_devices():
    """The figure of the issue: bytes a device's ring costs at the default capacity (arrays and
    its entry in the row index), for 10,000 four-feature devices."""
    per_device = FlowSettings.model_fields["rollout_warm_readings"].default
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    recent = RecentReadings(per_device, max_devices=10_000)
    for start in range(0, 10_000, 2000):
        readings = [
            Reading(f"device-{i:05d}", float(i), dict.fromkeys("abcd", 1.0), RAW) for i in range(start, start + 2000)
        ]
        recent.add(readings)
        del readings
    total = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    per_device_bytes = total / 10_000
    print(f"\nrecent readings ring: {per_device} readings x 4 features, {per_device_bytes:.0f} bytes/device "
          f"({recent.nbytes / 10_000:.0f} of arrays), {total / 2**20:.1f} MB for 10,000 devices")  # fmt: skip
    assert recent.nbytes == 10_000 * (per_device * 20 + 24)  # float32 values and offsets (+ 3 numbers a device)
    assert per_device_bytes < per_device * 20 + 250  # and its entry in the row index


def test_a_bounded_tally_keeps_the_fleet_figures():
    from edgewatch.flows.lifecycle import SHADOW_METRICS
    from edgewatch.schema import BankResult, LabeledEvent

    tally = ShadowTally(max_devices=10)
    for round_ in range(3):
        readings = [Reading(f"d{i}", float(round_), {"a": 1.0}, RAW) for i in range(30)]
        champion = BankResult([LabeledEvent(r, 0.1, False, "m", "v1") for r in readings], [], [], [])
        challenger = BankResult(
            [LabeledEvent(r, 0.9, i % 3 == 0, "m", "tally-v2") for i, r in enumerate(readings)], [], [], []
        )
        events = tally.compare(champion, challenger, "v1")
        assert len(events) == 30
    assert len(tally.devices) <= 10 and SHADOW_METRICS.challenger == "tally-v2"
    assert SHADOW_METRICS.totals == [90, 60, 0, 30]  # every reading counted, evicted devices' too
    restored = ShadowTally(max_devices=10)
    restored.load_pages(tally.dirty_pages(every=True).values())
    assert restored.devices == tally.devices


# -- restarts --------------------------------------------------------------------------------------

DEVICES = 6


def fleet_readings(ticks, seed=11):
    fleet = Fleet(devices=DEVICES, seed=seed, fault_rate=0.0)
    return [
        parse_message(RawMessage(r.key, r.value, r.headers, *SourceRef("t", 0, i, r.timestamp_ms)))
        for i, r in enumerate(fleet.records(DEVICES * ticks))
    ]


@pytest.fixture(scope="module")
def models():
    readings = fleet_readings(900)
    v1 = artifact.train(SPEC, readings[: 300 * DEVICES])
    v1.version = "v1"
    v2 = artifact.train(SPEC, readings[: 500 * DEVICES])
    v2.version = "v2"
    return readings, v1, v2


def feed(logic, readings, batch=DEVICES * 10):
    labeled, shadow = [], []
    for start in range(0, len(readings), batch):
        results, _ = logic.on_batch([readings[start : start + batch]])
        for result in results:
            (shadow if isinstance(result, ShadowResult) else labeled).extend(result.events)
    return labeled, shadow


def test_a_restart_keeps_the_recent_readings_the_shadow_and_its_tally(tmp_path, models):
    """In process: a shard's logic snapshots, a new one is built from the manifest (what Bytewax
    does on resume); the challenger continues where it was, and a rollout warms every device."""
    readings, v1, v2 = models
    settings = FlowSettings(recovery_dir=tmp_path, rollout_warm_readings=64)
    controls = LiveControls(artifact=v1)
    controls.shadow(v2)
    build = bank_builder(settings, controls, v1)
    logic = build(None)
    feed(logic, readings[500 * DEVICES : 600 * DEVICES])
    manifest = logic.snapshot()
    shadow_rows = logic.shadow.snapshot()
    tally = {device: list(counts) for device, counts in logic._tally.devices.items()}
    assert set(tally) == {f"machine-{i:04d}" for i in range(DEVICES)} and all(c[0] == 100 for c in tally.values())

    resumed = build(manifest)  # the restart
    assert resumed.recent.by_device() == logic.recent.by_device()
    assert all(count == 64 for count in resumed.recent.counts().values())
    _, shadow = feed(resumed, readings[600 * DEVICES : 610 * DEVICES])
    assert resumed.shadow.snapshot() != shadow_rows  # it learned on, from where it was:
    assert {s.readings for s in shadow if s.event.reading.device_id == "machine-0000"} == set(range(101, 111))

    cold = build(None)  # the ablation: no state, the challenger starts again from its artifact
    _, shadow = feed(cold, readings[600 * DEVICES : 610 * DEVICES])
    assert max(s.readings for s in shadow) == 10

    controls.use_artifact(v2)  # a rollout after the restart warms every device on its kept readings
    labeled, _ = feed(resumed, readings[610 * DEVICES : 620 * DEVICES])
    assert resumed.last_warm == {f"machine-{i:04d}": 64 for i in range(DEVICES)}
    assert {e.model_version for e in labeled} == {"v2"}
    assert cold.recent.counts() and max(cold.recent.counts().values()) == 10  # (cold: only what it saw)


def run(settings, replay, out):
    shadow_file = out.with_suffix(".shadow.jsonl")
    out.unlink(missing_ok=True)
    shadow_file.unlink(missing_ok=True)
    app = Application(settings, handle_signals=False, input_name=replay.name).start()
    app.run(replay_flow(app, replay, out))
    return [orjson.loads(line) for line in shadow_file.read_bytes().splitlines()] if shadow_file.exists() else []


def test_the_flow_resumes_its_challenger_after_a_restart_and_reshards_it(tmp_path, models):
    """Through Bytewax's recovery: the second run's shadow events count on from the first's."""
    readings, v1, v2 = models
    for name, fitted in (("v1", v1), ("v2", v2)):
        artifact.save(fitted, tmp_path / name)
    lines = [
        orjson.dumps({"key": r.raw.key.decode(), "value": r.raw.value.decode(), "timestamp_ms": r.raw.timestamp_ms})
        + b"\n"
        for r in readings[500 * DEVICES : 700 * DEVICES]
    ]
    replay, recovery = tmp_path / "telemetry.jsonl", tmp_path / "recovery"
    settings = dict(model_dir=tmp_path / "v1", shadow_model=tmp_path / "v2", recovery_dir=recovery, batch_size=120,
                    snapshot_seconds=0.05, status_seconds=0, model_cache_dir=tmp_path / "cache")  # fmt: skip
    replay.write_bytes(b"".join(lines[: 100 * DEVICES]))
    first = run(FlowSettings(shards=2, **settings), replay, tmp_path / "out.jsonl")
    replay.write_bytes(b"".join(lines[: 150 * DEVICES]))
    second = run(FlowSettings(shards=2, **settings), replay, tmp_path / "out.jsonl")
    assert len(first) == 100 * DEVICES and len(second) == 50 * DEVICES
    assert {s["device"]["readings"] for s in second} == set(range(101, 151))

    reshard_recovery_dir(recovery, 3)
    replay.write_bytes(b"".join(lines))
    third = run(FlowSettings(shards=3, **settings), replay, tmp_path / "out.jsonl")
    assert {s["device"]["readings"] for s in third} == set(range(151, 201))
