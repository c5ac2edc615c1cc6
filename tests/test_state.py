"""Device state as pages: data-only, incremental, checked on restore, within memory limits."""

import pickle

import numpy as np
import pytest
from prometheus_client import REGISTRY

from edgewatch.online_models.bank import ModelBank
from edgewatch.online_models.registry import BUILTIN
from edgewatch.online_models.vector_bank import PAGE_ROWS, VectorBank
from edgewatch.schema import RawMessage, Reading, SourceRef
from edgewatch.state import codec
from edgewatch.state.limits import StateLimits
from edgewatch.state.pages import ShardPages, manifest
from edgewatch.state.store import PageStore

RAW = RawMessage(b"", b"", [], *SourceRef("t", 0, 0))


def stream(devices: int, count: int, seed: int = 0, features=("a", "b")) -> list[Reading]:
    rng = np.random.default_rng(seed)
    return [
        Reading(f"d{i % devices}", 60.0 * i, {f: float(rng.normal(10, 2)) for f in features}, RAW) for i in range(count)
    ]


def scores(bank, readings, batch=500):
    out = []
    for start in range(0, len(readings), batch):
        result = bank.label(readings[start : start + batch])
        assert not result.dead_letters
        out.extend(e.score for e in result.events)
    return out


@pytest.mark.parametrize("detector", ["robust-zscore", "compact-novelty"])
def test_resuming_from_pages_equals_an_uninterrupted_bank(tmp_path, detector):
    readings = stream(300, 9000, seed=1)
    spec = BUILTIN[detector]
    expected = scores(VectorBank(spec), readings)
    bank, pages = VectorBank(spec), ShardPages(tmp_path, "shard-0000")
    for start in range(0, 6000, 1500):  # four epochs, each writing what changed
        scores(bank, readings[start : start + 1500])
        state = pages.snapshot(bank.dirty_pages())
    found = manifest(state)
    assert found["generation"] == 4 and len(state) < 200  # Bytewax stores a manifest, not the bank
    resumed = VectorBank(spec)
    resumed.load_pages(ShardPages.resume(tmp_path, found).read())
    assert len(resumed) == 300
    assert scores(resumed, readings[6000:]) == expected[6000:]


def test_a_snapshot_rewrites_only_changed_pages_and_nothing_when_idle(tmp_path):
    bank, pages = VectorBank(BUILTIN["compact-novelty"]), ShardPages(tmp_path, "shard-0000")
    scores(bank, stream(10_000, 10_000))
    everything = bank.dirty_pages()
    assert len(everything) == -(-10_000 // PAGE_ROWS)  # every device's page, once
    pages.snapshot(everything)
    full = pages.store.bytes_written
    scores(bank, stream(10_000, 3)[:3])  # three devices of one page report
    changed = bank.dirty_pages()
    assert list(changed) and len(changed) == 1
    pages.snapshot(changed)
    assert pages.store.bytes_written - full < full / 100
    idle = pages.store.bytes_written
    before = pages.generation
    pages.snapshot(bank.dirty_pages())  # an epoch with no reading
    assert pages.store.bytes_written == idle and pages.generation == before


def test_versions_newer_than_the_resumed_manifest_are_ignored(tmp_path):
    spec = BUILTIN["robust-zscore"]
    readings = stream(20, 600)
    bank, pages = VectorBank(spec), ShardPages(tmp_path, "shard-0000")
    scores(bank, readings[:200])
    committed = pages.snapshot(bank.dirty_pages())
    scores(bank, readings[200:400])
    pages.snapshot(bank.dirty_pages())  # written, then the process dies before Bytewax commits it
    straight = VectorBank(spec)
    expected = scores(straight, readings[:200] + readings[400:])
    resumed = VectorBank(spec)
    resumed.load_pages(ShardPages.resume(tmp_path, manifest(committed)).read())
    assert scores(resumed, readings[400:]) == expected[200:]


def test_page_store_collects_versions_no_manifest_reaches(tmp_path):
    store = PageStore(tmp_path, "shard-0000", "ab")
    for generation in range(1, 6):
        store.write(generation, {"p/0": bytes([generation]), **({"p/1": b"x"} if generation == 1 else {})})
    store.collect(3)
    assert store.read(3) == {"p/0": b"\x03", "p/1": b"x"} and store.read(5)["p/0"] == b"\x05"
    assert store.versions() == 4  # p/0 at 3, 4, 5 and p/1 at 1


def snapshot_parts(bank):
    header, _ = codec.unpack(bank.snapshot())
    return header["pages"]


def tampered_page(blob: bytes, **changes) -> bytes:
    header, arrays = codec.unpack(blob)
    header.update(changes.pop("header", {}))
    arrays = changes.pop("arrays", arrays)
    return codec.pack(header, arrays)


@pytest.mark.parametrize(
    "tamper",
    [
        lambda b: b[:-1],  # truncated
        lambda b: b + b"\0",  # trailing bytes
        lambda b: b"\x80" + b[1:],  # a pickle's first byte
        lambda b: tampered_page(b, arrays=[a.astype(np.float32) for a in codec.unpack(b)[1]]),  # dtype
        lambda b: tampered_page(b, arrays=[a[:, :1] for a in codec.unpack(b)[1]]),  # shape
        lambda b: tampered_page(b, header={"rows": [PAGE_ROWS]}),
        lambda b: tampered_page(b, header={"page": 10**9}),
        lambda b: tampered_page(b, header={"features": ["b", "a"]}),
        lambda b: tampered_page(b, header={"devices": [1]}),
        lambda b: tampered_page(b, header={"kind": "manifest"}),
    ],
)
def test_restore_refuses_pages_that_do_not_fit_the_detector(tamper):
    bank = VectorBank(BUILTIN["compact-novelty"])
    scores(bank, stream(1, 50))
    (page,) = snapshot_parts(bank)
    fresh = VectorBank(BUILTIN["compact-novelty"])
    with pytest.raises(codec.StateFormatError):
        fresh.load_pages([tamper(page)])


def test_restore_refuses_another_detectors_snapshot_and_a_pickle():
    bank = VectorBank(BUILTIN["robust-zscore"])
    scores(bank, stream(5, 50))
    with pytest.raises(codec.StateFormatError):
        VectorBank(BUILTIN["compact-novelty"]).restore(bank.snapshot())
    with pytest.raises(codec.StateFormatError):
        VectorBank(BUILTIN["robust-zscore"]).restore(pickle.dumps({}))


def test_river_bank_restore_refuses_a_pickle_that_calls_a_function(tmp_path):
    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    with pytest.raises(pickle.UnpicklingError, match="not a River model"):
        ModelBank(BUILTIN["half-space-trees"]).restore(pickle.dumps({"pump": Payload()}))
    assert not marker.exists()


def test_readings_beyond_the_feature_limits_are_dead_letters():
    limits = StateLimits(max_features_per_device=3, max_feature_sets=2, max_devices=1000)
    bank = VectorBank(BUILTIN["compact-novelty"], limits=limits)
    readings = [
        Reading("a", 0.0, {"x": 1.0}, RAW),
        Reading("b", 0.0, {"x": 1.0, "y": 2.0}, RAW),
        Reading("c", 0.0, {f"f{i}": 1.0 for i in range(4)}, RAW),  # 4 features > 3
        Reading("d", 0.0, {"z": 1.0}, RAW),  # a third feature set > 2
        Reading("e", 0.0, {"x": 1.0}, RAW),
    ]
    result = bank.label(readings)
    assert [e.reading.device_id for e in result.events] == ["a", "b", "e"]
    reasons = [d.reason for d in result.dead_letters]
    assert len(result.dead_letters) == 2 and all(d.stage == "detect" for d in result.dead_letters)
    assert any("4 features, more than the 3" in r for r in reasons)
    assert any("the 2 allowed (EDGEWATCH_MAX_FEATURE_SETS)" in r for r in reasons)
    assert len(bank) == 3


def evicted() -> float:
    return REGISTRY.get_sample_value("edgewatch_devices_evicted_total") or 0.0


def test_least_recently_seen_devices_are_dropped_at_the_device_limit():
    spec = BUILTIN["robust-zscore"]
    bank = VectorBank(spec, limits=StateLimits(max_devices=100))
    evicted_before = evicted()
    scores(bank, stream(100, 2000, features=("a",)))  # d0..d99, all seen
    scores(bank, [Reading("d5", 1e6, {"a": 10.0}, RAW)])  # d5 is now the most recently seen
    scores(bank, [Reading(f"new{i}", 1e6, {"a": 10.0}, RAW) for i in range(5)])
    assert len(bank) <= 100
    dropped = evicted() - evicted_before
    assert dropped >= 5 and len(bank) == 105 - dropped
    held = set(next(iter(bank.groups.values())).rows)
    assert "d5" in held and {f"new{i}" for i in range(5)} <= held
    assert "d0" not in held  # among the least recently seen
    # a dropped device that comes back starts over
    again = Reading("d0", 2e6, {"a": 10.0}, RAW)
    assert scores(bank, [again]) == scores(VectorBank(spec), [again])


def test_an_emptied_feature_set_frees_its_place():
    bank = VectorBank(BUILTIN["robust-zscore"], limits=StateLimits(max_devices=10, max_feature_sets=2))
    scores(bank, [Reading(f"x{i}", 0.0, {"x": 1.0}, RAW) for i in range(10)])
    scores(bank, [Reading(f"y{i}", 1.0, {"y": 1.0}, RAW) for i in range(10)])  # evicts every x device
    result = bank.label([Reading("z", 2.0, {"z": 1.0}, RAW)])
    assert not result.dead_letters and len(bank.groups) == 2


def test_a_thousand_one_device_feature_sets_stay_small():
    bank = VectorBank(BUILTIN["compact-novelty"], limits=StateLimits(max_feature_sets=1000))
    rng = np.random.default_rng(0)
    names = [f"sensor{i}" for i in range(500)]
    readings = [
        Reading(f"d{i}", 0.0, {str(n): 1.0 for n in rng.choice(names, 16, replace=False)}, RAW) for i in range(1000)
    ]
    bank.label(readings)
    held = sum(block.nbytes for group in bank.groups.values() for block in group.blocks)
    # 1000 devices x 16 features x 2,056 bytes = 33 MB of state; 4 rows a set at most
    assert held <= 4 * 1000 * 16 * 2100


def test_a_page_that_inflates_past_the_bound_is_refused(monkeypatch):
    import zlib

    monkeypatch.setattr(codec, "MAX_STATE_BYTES", 1 << 20)
    bomb = bytes([codec.COMPRESSED_VERSION]) + zlib.compress(b"\0" * (4 << 20))
    with pytest.raises(codec.StateFormatError, match="inflates past"):
        codec.unpack(bomb)
