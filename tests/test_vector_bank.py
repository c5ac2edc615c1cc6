"""The vectorized bank gives the same labels as one River object per device."""

import numpy as np
import pytest

from edgewatch.online_models.bank import ModelBank
from edgewatch.online_models.registry import BUILTIN
from edgewatch.online_models.vector_bank import VectorBank
from edgewatch.schema import RawMessage, Reading, SourceRef, parse_message
from edgewatch.simulator import Fleet


def readings(devices=30, count=30_000, seed=3):
    fleet = Fleet(devices=devices, seed=seed, fault_rate=0.005)
    return [
        parse_message(RawMessage(r.key, r.value, r.headers, *SourceRef("t", 0, i, r.timestamp_ms)))
        for i, r in enumerate(fleet.records(count))
    ]


def label_all(bank, stream, batch=1000):
    events = []
    for start in range(0, len(stream), batch):
        labeled, dead, _, _ = bank.label(stream[start : start + batch])
        assert not dead
        events.extend(labeled)
    return events


@pytest.mark.parametrize("detector", ["robust-zscore", "compact-novelty"])
@pytest.mark.parametrize("batch", [1, 7, 1000])
def test_vector_bank_equals_per_device_river_objects(batch, detector):
    stream = readings(count=6000 if batch == 1 else 30_000)
    spec = BUILTIN[detector]
    expected = label_all(ModelBank(spec), stream, batch)
    actual = label_all(VectorBank(spec), stream, batch)
    assert [e.is_anomaly for e in actual] == [e.is_anomaly for e in expected]
    np.testing.assert_allclose([e.score for e in actual], [e.score for e in expected], rtol=0, atol=1e-9)
    assert sum(e.is_anomaly for e in expected) > 20


@pytest.mark.parametrize("detector", ["robust-zscore", "compact-novelty"])
def test_devices_with_different_features_and_new_devices_mid_stream(detector):
    raw = RawMessage(b"", b"", [], *SourceRef("t", 0, 0))
    rng = np.random.default_rng(0)
    stream = []
    for i in range(3000):
        device = f"d{i % 7}" if i < 1500 else f"d{i % 11}"
        features = {"a": float(rng.normal())} if device in ("d1", "d8") else {"a": float(rng.normal()), "b": 3.0}
        if i == 2000:
            features["a"] = 40.0
        stream.append(Reading(device, 60.0 * i, features, raw))
    spec = BUILTIN[detector]
    expected = label_all(ModelBank(spec), stream, 64)
    actual = label_all(VectorBank(spec), stream, 64)
    np.testing.assert_allclose([e.score for e in actual], [e.score for e in expected], rtol=0, atol=1e-9)
    assert actual[2000].is_anomaly


@pytest.mark.parametrize("detector", ["robust-zscore", "compact-novelty"])
def test_snapshot_restores_every_device(detector):
    stream = readings(count=10_000)
    spec = BUILTIN[detector]
    straight = VectorBank(spec)
    expected = label_all(straight, stream)
    resumed = VectorBank(spec)
    label_all(resumed, stream[:5000])
    restored = VectorBank(spec)
    restored.restore(resumed.snapshot())
    assert len(restored) == len(resumed) == 30
    assert [e.score for e in label_all(restored, stream[5000:])] == [e.score for e in expected[5000:]]


def test_snapshot_is_compact():
    bank = VectorBank(BUILTIN["robust-zscore"])
    label_all(bank, readings(devices=1000, count=5000))
    # 1000 devices x 4 features x 9 numbers x 8 bytes = 288 kB of state, plus device ids
    assert len(bank.snapshot()) < 400_000


def test_warm_started_vector_bank_equals_warm_started_river_objects():
    from edgewatch.online_models import artifact

    stream = readings(devices=12, count=12 * 900, seed=8)
    history, live = stream[: 12 * 400], stream[12 * 400 :]
    spec = BUILTIN["compact-novelty"]
    fitted = artifact.train(spec, history)
    expected = label_all(ModelBank(spec, artifact=fitted), live)
    actual = label_all(VectorBank(spec, artifact=fitted), live)
    np.testing.assert_allclose([e.score for e in actual], [e.score for e in expected], rtol=0, atol=1e-9)
    assert [e.is_anomaly for e in actual] == [e.is_anomaly for e in expected]
    # warm started: no device begins with the zeros of a cold start
    assert min(e.score for e in actual[:12]) >= 0.0 and any(e.score > 0 for e in actual[:200])


def test_live_controls_change_threshold_and_roll_out_a_new_model():
    from edgewatch.flows.anomaly import LiveControls, ModelBankLogic
    from edgewatch.online_models import artifact
    from edgewatch.online_models.bank import new_bank

    stream = readings(devices=5, count=5 * 400, seed=2)
    spec = BUILTIN["compact-novelty"]
    controls = LiveControls()
    logic = ModelBankLogic(new_bank(spec), controls, lambda fitted: new_bank(spec, artifact=fitted))
    (result,), _ = logic.on_batch([stream[:1000]])
    first = result.events
    assert {e.is_anomaly for e in first} == {e.score >= spec.threshold for e in first}
    controls.threshold = 0.0
    (result,), _ = logic.on_batch([stream[1000:1500]])
    second = result.events
    assert all(e.is_anomaly for e in second)
    fitted = artifact.train(spec, stream[:1000])
    fitted.version = "rolled-out"
    controls.use_artifact(fitted)
    (result,), _ = logic.on_batch([stream[1500:]])
    third = result.events
    assert {e.model_version for e in third} == {"rolled-out"}


def test_a_device_that_switches_features_is_named_in_a_warning(caplog):
    """A sensor added mid-stream: the device's readings go to a new model for the new feature set,
    started cold (its old model, and an alarm that one holds, stay): said once, not silently."""
    bank = VectorBank(BUILTIN["relational-novelty"])
    raw = RawMessage(b"", b"", [], "telemetry", 0, 0)

    def batch(device: str, start: int, features: tuple[str, ...]) -> list[Reading]:
        return [
            Reading(device, float(t), {f: 1.0 + 0.01 * (t % 7) for f in features}, raw) for t in range(start, start + 5)
        ]

    bank.label(batch("pump-1", 0, ("press", "temp")) + batch("pump-2", 0, ("flow", "press", "temp")))
    assert not caplog.records
    with caplog.at_level("WARNING", logger="edgewatch.online_models.vector_bank"):
        bank.label(batch("pump-1", 5, ("flow", "press", "temp")))
        bank.label(batch("pump-1", 10, ("flow", "press", "temp")))  # said once
    (record,) = caplog.records
    assert "1 device(s) switched features (press,temp → flow,press,temp, e.g. pump-1)" in record.getMessage()
