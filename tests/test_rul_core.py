"""RUL core on small synthetic run-to-failure fleets: features, forests, training, artifact, online fleet."""

from __future__ import annotations

import hashlib
import io
import json
import re

import numpy as np
import pytest

from edgewatch.evaluation.cmapss import EngineTrace, phm08_score, score_traces, write_report
from edgewatch.rul import artifact
from edgewatch.rul.events import RunEnd, maintenance_alert_json, parse_run_end, rul_estimate_json
from edgewatch.rul.features import find_regimes
from edgewatch.rul.online import RulFleet
from edgewatch.rul.train import Run, TrainConfig, replay_features, runs_from_readings, train_rul, train_runs
from edgewatch.rul.trees import Forest
from edgewatch.schema import CMAPSS_FEATURES, Reading
from tests.support.rul import SMALL, raw_at, readings_of, synthetic_fleet

lightgbm = pytest.importorskip("lightgbm", reason="training needs the train extra (lightgbm)")


@pytest.fixture(scope="module")
def fleet_runs() -> list[Run]:
    return synthetic_fleet(30, seed=1)


@pytest.fixture(scope="module")
def model(fleet_runs):
    return train_runs(fleet_runs, SMALL)


def test_forest_arrays_predict_what_lightgbm_predicts():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(500, 5))
    y = x[:, 0] * 3 + np.sin(x[:, 1]) + rng.normal(0, 0.1, 500)
    params = {"objective": "quantile", "alpha": 0.1, "num_leaves": 7, "verbosity": -1, "seed": 0}
    booster = lightgbm.train(params, lightgbm.Dataset(x, y), num_boost_round=30)
    forest = Forest.from_lightgbm_dump(booster.dump_model())
    probe = rng.normal(size=(200, 5))
    np.testing.assert_allclose(forest.predict(probe), booster.predict(probe), rtol=1e-9, atol=1e-9)


def test_forest_refuses_arrays_that_point_backwards():
    arrays = {
        "f.feature": np.array([0, 0, 0]),
        "f.threshold": np.array([0.5, np.inf, np.inf]),
        "f.child": np.array([1, 0, 2]),  # node 1 sends its rows back to the root: a loop
        "f.value": np.zeros(3),
        "f.roots": np.array([0]),
    }
    with pytest.raises(ValueError, match="point forward"):
        Forest.from_arrays(arrays, "f")
    arrays["f.child"] = np.array([1, 1, 2])
    assert Forest.from_arrays(arrays, "f").depth == 1


def test_regimes_are_found_from_set_points_and_noise_is_one_regime():
    rng = np.random.default_rng(0)
    points = np.array([[0, 0, 100], [10, 0.25, 100], [20, 0.7, 60], [35, 0.84, 100], [42, 0.84, 40], [25, 0.62, 60]])
    settings = points[rng.integers(6, size=3000)] + rng.normal(0, 0.002, (3000, 3))
    centroids, _ = find_regimes(settings)
    assert len(centroids) == 6
    noise = rng.normal(0, 0.002, (3000, 3)) + np.array([0, 0, 100])
    assert len(find_regimes(noise)[0]) == 1


def test_online_state_of_interleaved_devices_equals_replaying_each_run(model, fleet_runs):
    runs = fleet_runs[:4]
    expected = {run.device_id: replay_features(model.spec, [run]) for run in runs}
    state = model.spec.new_state(len(runs))
    order = readings_of(runs)
    slots = np.array([int(r.device_id[-3:]) for r in order])
    rows = np.array([[r.features[name] for name in CMAPSS_FEATURES] for r in order])
    got = model.spec.update(state, slots, rows)
    for run in runs:
        mine = got[slots == int(run.device_id[-3:])]
        np.testing.assert_allclose(mine, expected[run.device_id], rtol=1e-12)


def test_training_learns_the_rul_of_engines_it_never_saw(model):
    held_out = synthetic_fleet(15, seed=7)
    truth = np.concatenate([np.minimum(run.rul, model.cap) for run in held_out])
    predicted = np.concatenate([model.predict(replay_features(model.spec, [run])) for run in held_out])
    rmse = np.sqrt(np.mean((predicted[:, 1] - truth) ** 2))
    constant = np.sqrt(np.mean((truth.mean() - truth) ** 2))
    assert rmse < 0.5 * constant, (rmse, constant)
    assert np.all(predicted[:, 0] <= predicted[:, 1]) and np.all(predicted[:, 1] <= predicted[:, 2])
    assert np.all(predicted >= 0)
    assert set(model.spec.sensor_names) == {"Sensor2", "Sensor3", "Sensor4"}  # the informative ones only


def test_regime_normalization_keeps_multi_regime_fleets_learnable():
    runs = synthetic_fleet(30, seed=3, regimes=4)
    trained = train_runs(runs, SMALL)
    assert len(trained.spec.centroids) == 4
    held_out = synthetic_fleet(10, seed=8, regimes=4)
    truth = np.concatenate([np.minimum(run.rul, trained.cap) for run in held_out])
    predicted = np.concatenate([trained.predict(replay_features(trained.spec, [r]))[:, 1] for r in held_out])
    assert np.sqrt(np.mean((predicted - truth) ** 2)) < 0.5 * truth.std()


def test_band_margins_widen_the_band_to_its_nominal_coverage(fleet_runs):
    calibrated = train_runs(fleet_runs, TrainConfig(**{**SMALL.__dict__, "folds": 3}))
    assert calibrated.lower_margin != 0.0 or calibrated.upper_margin != 0.0
    held_out = synthetic_fleet(20, seed=11)
    inside = []
    for run in held_out:
        predicted = calibrated.predict(replay_features(calibrated.spec, [run]))
        inside.append(np.mean((predicted[:, 0] <= run.rul) & (run.rul <= predicted[:, 2])))
    assert np.mean(inside) >= 0.7


def test_train_rul_takes_readings_one_run_per_device(fleet_runs):
    readings = readings_of(fleet_runs[:6])
    runs = runs_from_readings(readings)
    assert [len(r.rows) for r in runs] == [len(r.rows) for r in fleet_runs[:6]]
    assert train_rul(readings, SMALL).metadata["training"]["runs"] == 6
    broken = Reading("x", 0.0, {"Sensor2": 1.0}, raw_at(0))
    with pytest.raises(ValueError, match="lacks feature"):
        runs_from_readings([broken])


def test_artifact_round_trip_is_exact_and_data_only(model, fleet_runs, tmp_path):
    saved = artifact.save(model, tmp_path / "m")
    assert saved.version.startswith("rul-")
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["arrays.npz", "model.json"]
    loaded = artifact.load(tmp_path / "m")
    features = replay_features(model.spec, fleet_runs[:2])
    np.testing.assert_array_equal(loaded.predict(features), model.predict(features))
    assert loaded.version == saved.version


def test_artifact_refuses_edits_missing_files_and_pickled_arrays(model, tmp_path):
    directory = tmp_path / "m"
    artifact.save(model, directory)
    blob = bytearray((directory / "arrays.npz").read_bytes())
    blob[-10] ^= 1
    (directory / "arrays.npz").write_bytes(bytes(blob))
    with pytest.raises(artifact.ArtifactError, match="sha256"):
        artifact.load(directory)
    (directory / "arrays.npz").unlink()
    with pytest.raises(artifact.ArtifactError, match="missing"):
        artifact.load(directory)
    # an object array would need pickle to load: refused even with a matching checksum
    buffer = io.BytesIO()
    np.savez(buffer, evil=np.array([{"a": 1}], dtype=object))
    (directory / "arrays.npz").write_bytes(buffer.getvalue())
    document = json.loads((directory / "model.json").read_text())
    document["files"]["arrays.npz"] = hashlib.sha256(buffer.getvalue()).hexdigest()
    (directory / "model.json").write_text(json.dumps(document))
    with pytest.raises(artifact.ArtifactError):
        artifact.load(directory)
    with pytest.raises(artifact.ArtifactError, match="not a model directory"):
        artifact.load(tmp_path / "nothing")


def test_fleet_estimates_alert_once_per_run_and_failures_become_labeled_runs(model, fleet_runs):
    fleet = RulFleet(model, horizon=30.0)
    run = fleet_runs[0]
    estimates = fleet.update_many(readings_of([run])).estimates
    assert [e.cycle for e in estimates] == list(range(1, len(run.rows) + 1))
    alerts = [e for e in estimates if e.alert]
    assert len(alerts) == 1 and alerts[0].p10 < 30.0
    assert all(e.p10 >= 30.0 for e in estimates[: estimates.index(alerts[0])])
    assert len(run.rows) - alerts[0].cycle < 60  # the alert comes near the end, not at the start
    labeled = fleet.end_run(RunEnd(run.device_id, "failure"))
    np.testing.assert_array_equal(labeled.rows, run.rows)
    np.testing.assert_array_equal(labeled.rul[[0, -1]], [len(run.rows) - 1, 0])
    again = fleet.update(readings_of([run])[0])
    assert again.cycle == 1 and not again.alert
    assert fleet.end_run(RunEnd(run.device_id, "maintenance")) is None  # censored: not learned from
    assert len(fleet.runs) == 1


def test_fleet_matches_batch_replay_and_rejects_readings_it_cannot_use(model, fleet_runs):
    fleet = RulFleet(model)
    runs = fleet_runs[:3]
    got = fleet.update_many(readings_of(runs)).estimates
    for run in runs:
        mine = np.array([[e.p10, e.p50, e.p90] for e in got if e.device_id == run.device_id])
        np.testing.assert_allclose(mine, model.predict(replay_features(model.spec, [run])))
    broken = Reading("pump-1", 0.0, {"temperature": 1.0}, raw_at(0))
    batch = fleet.update_many([broken])
    assert batch.estimates == []
    assert batch.rejected[0].reason == "RUL model needs feature 'OperationalSetting1'"
    with pytest.raises(ValueError, match="needs feature"):
        fleet.update(broken)


def test_fleet_refits_after_failures_and_keeps_estimating(fleet_runs):
    first, later = fleet_runs[:10], fleet_runs[10:14]
    start = train_runs(first, SMALL)
    start.version = "rul-start"
    calls = []

    def refit(current, runs):
        calls.append(len(runs))
        return train_runs(runs, SMALL)

    fleet = RulFleet(start, refit_every=2, history=first, max_runs=12, refit=refit)
    ongoing = readings_of([fleet_runs[20]])[:50]
    fleet.update_many(ongoing)
    for run in later:
        fleet.update_many(readings_of([run]))
        fleet.end_run(RunEnd(run.device_id, "failure"))
    assert calls == [12, 12]  # bounded store: the most recent 12 runs
    assert fleet.refits == 2 and fleet.model.version == "rul-start+refit1+refit2"
    # the ongoing run's state was rebuilt under the new model: its next estimate is cycle 51
    following = fleet.update(readings_of([fleet_runs[20]])[50])
    assert following.cycle == 51
    expected = fleet.model.predict(replay_features(fleet.model.spec, [Run("x", fleet_runs[20].rows[:51])]))[-1]
    np.testing.assert_allclose([following.p10, following.p50, following.p90], expected)


def test_background_refit_lands_without_blocking(fleet_runs):
    start = train_runs(fleet_runs[:10], SMALL)
    fleet = RulFleet(start, refit_every=1, history=fleet_runs[:10], background=True)
    try:
        fleet.update_many(readings_of([fleet_runs[12]]))
        fleet.end_run(RunEnd(fleet_runs[12].device_id, "failure"))
        fleet.wait_for_refit()
        assert fleet.refits == 1 and fleet.model is not start
    finally:
        fleet.close()


def test_rul_events_serialize_to_the_documented_schema(model, fleet_runs):
    fleet = RulFleet(model, horizon=1000.0)
    estimate = fleet.update(readings_of([fleet_runs[0]])[0])
    body = json.loads(rul_estimate_json(estimate))
    assert set(body) == {"device_id", "timestamp", "cycle", "rul", "model", "source"}
    assert set(body["rul"]) == {"p10", "p50", "p90"} and body["timestamp"].endswith("Z")
    alert = json.loads(maintenance_alert_json(estimate))
    assert alert["event"] == "maintenance-alert" and alert["horizon"] == 1000.0
    quiet = fleet.update(readings_of([fleet_runs[0]])[1])
    with pytest.raises(ValueError, match="no alert"):
        maintenance_alert_json(quiet)


@pytest.mark.parametrize(
    ("message", "problem"),
    [
        (b"nope", "not JSON"),
        (b"[]", "JSON object"),
        (b'{"event": "failure"}', "device_id"),
        (b'{"device_id": "e1", "event": "broke"}', "must be one of"),
        (b'{"device_id": "e1", "event": "failure", "timestamp": "yesterday"}', "ISO-8601"),
    ],
)
def test_run_end_messages_are_refused_with_a_reason(message, problem):
    with pytest.raises(ValueError, match=problem):
        parse_run_end(message)


def test_run_end_message_parses():
    end = parse_run_end(b'{"device_id": "e1", "event": "maintenance", "timestamp": "2024-01-01T00:00:10Z"}')
    assert end == RunEnd("e1", "maintenance", 1704067210.0)


def test_phm08_score_penalizes_late_more_than_early():
    assert phm08_score([10.0], [10.0]) == 0.0
    assert phm08_score([20.0], [10.0]) == pytest.approx(np.e - 1)
    assert phm08_score([0.0], [13.0]) == pytest.approx(np.e - 1)
    assert phm08_score([20.0], [10.0]) > phm08_score([0.0], [10.0])


def test_scores_line_and_report(tmp_path):
    traces = [
        EngineTrace(
            "engine-001", np.array([130.0, 129.0, 128.0]), np.array([[90, 120, 140], [90, 118, 139], [88, 117, 135.0]])
        ),
        EngineTrace("engine-002", np.array([12.0, 11.0]), np.array([[5, 20, 30], [12, 15, 25.0]])),
    ]
    result = score_traces(traces, cap=125.0)
    assert result.rmse == pytest.approx(np.sqrt(((117 - 128) ** 2 + (15 - 11) ** 2) / 2))
    assert result.coverage == 0.5  # engine-001: 88 <= 128 <= 135; engine-002: 11 is below its P10 of 12
    assert re.fullmatch(r"cmapss: rmse=\S+ score=\S+ rmse_all_cycles=\S+ coverage=\S+ engines=2", result.line())
    folder = write_report(result, tmp_path / "report")
    assert sorted(p.name for p in folder.iterdir()) == ["engine-001.png", "engine-002.png"]


def test_artifact_refuses_arrays_of_inconsistent_shapes(model, tmp_path):
    """A well-checksummed artifact whose arrays disagree would send the kernels out of bounds."""
    arrays, document = artifact.read_data_artifact(artifact.save(model, tmp_path / "good") and tmp_path / "good")
    arrays["means"] = arrays["means"][:, :-1]
    artifact.write_data_artifact(tmp_path / "bad", arrays, {k: v for k, v in document.items() if k != "files"}, "rul")
    with pytest.raises(artifact.ArtifactError, match="means and spreads"):
        artifact.load(tmp_path / "bad")
