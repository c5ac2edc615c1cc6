"""Fleet drift: every feature's fleet distribution against the model's training reference."""

import json

import numpy as np
import orjson
from typer.testing import CliRunner

from edgewatch.cli import app
from edgewatch.flows.fleet_drift import FLEET_DRIFT_REPORT
from edgewatch.flows.reports import read_report
from edgewatch.online_models import artifact
from edgewatch.online_models.reference import checked_reference, psi
from tests.support.registry import shifted_copy, simulated_split, trained

runner = CliRunner()
FEATURES = {"ambient.humidity", "ambient.temperature", "machine.pressure", "machine.temperature"}


def test_psi_is_zero_for_the_same_shares_and_grows_with_a_shift():
    reference = np.full(10, 0.1)
    assert psi(reference, reference) == 0
    assert 0 < psi(reference, [0.2, 0.2] + [0.075] * 8) < psi(reference, [0.5, 0.5] + [0.0] * 8)


def test_the_artifact_carries_a_reference_and_a_bad_one_turns_monitoring_off(tmp_path):
    history, _ = simulated_split(tmp_path / "history.jsonl", tmp_path / "live.jsonl", live_ticks=1)
    model = trained(history, tmp_path / "v1")
    loaded = artifact.load(tmp_path / "v1")  # data only: JSON numbers in model.json, checked by its sha256
    reference = checked_reference(loaded.metadata)
    assert set(reference) == FEATURES
    for ref in reference.values():
        assert len(ref["shares"]) == len(ref["edges"]) + 1 and abs(sum(ref["shares"]) - 1) < 1e-4
    assert reference == model.metadata["reference"]
    assert checked_reference({"reference": {"x": {"edges": [2, 1], "shares": [0.2, 0.3, 0.5]}}}) is None
    assert checked_reference({"reference": {"x": {"edges": [1], "shares": ["a", 1]}}}) is None
    assert checked_reference({}) is None


def test_a_fleet_that_runs_hotter_yields_fleet_drift_events_and_a_report(tmp_path):
    """The readings the model was trained on, in two windows, show no fleet drift; the same readings
    25 °C hotter do, on machine temperature only, once (two windows above in a row). (The
    simulator's machines warm up, then random-walk around their top temperature, so its windows
    really do stray from each other: the thresholds calibrated on the history allow for that.)"""
    history, _ = simulated_split(tmp_path / "history.jsonl", tmp_path / "live.jsonl", fault_rate=0.0, live_ticks=1,
                                 history_ticks=1200)  # fmt: skip
    trained(history, tmp_path / "v1")
    drifted = shifted_copy(history, tmp_path / "drifted.jsonl", 25.0)
    found = {}
    for stream in (history, drifted):
        out, cache = tmp_path / f"{stream.stem}-labeled.jsonl", tmp_path / f"cache-{stream.stem}"
        args = ["run", "--replay", str(stream), "--out", str(out), "--model", str(tmp_path / "v1"),
                "--fleet-drift-window", "4800", "--batch-size", "200", "--model-cache-dir", str(cache)]  # fmt: skip
        result = runner.invoke(app, args)
        assert result.exit_code == 0, result.output
        events = [orjson.loads(line) for line in out.with_suffix(".fleet-drift.jsonl").read_bytes().splitlines()]
        found[stream.stem] = events, read_report(cache / FLEET_DRIFT_REPORT)
    print(json.dumps({name: (report["psi"], report["thresholds"]) for name, (_, report) in found.items()}))
    events, report = found["history"]
    assert not events and not report["drifted"] and report["readings"] == 4800 and set(report["psi"]) == FEATURES
    assert all(report["thresholds"][name] >= 0.25 for name in FEATURES)
    events, report = found["drifted"]
    assert [e["feature"] for e in events] == ["machine.temperature"]
    assert all(e["reason"] == "fleet-psi" and e["psi"] >= 0.25 for e in events)
    assert report["drifted"] == ["machine.temperature"] and report["model_version"].startswith("compact-novelty")


def test_a_drift_is_reported_once_after_windows_above_in_a_row_and_ends_below():
    """Hysteresis: one noisy window is not a drift; two in a row are, reported once; the drift ends
    at the first window below. The threshold is the policy's or, if larger, what windows of that
    size showed on the training history."""
    from edgewatch.flows.fleet_drift import FleetDriftLogic

    reference = {"x": {"edges": [0.0], "shares": [0.5, 0.5], "window_psi": {"100": 0.5, "1000": 0.1}}}
    logic = FleetDriftLogic(lambda version: reference, 100, 0.25, None, confirm=2)
    even, skewed = np.array([50, 50]), np.array([90, 10])  # PSI 0 and 0.64

    def window(counts, t):
        found, _ = logic.on_batch([("v1", {"x": counts}, 100, float(t))])
        return [e for events in found for e in events]

    assert not window(skewed, 1) and not window(even, 2) and not window(skewed, 3)  # single windows above
    (event,) = window(skewed, 4)
    assert event.feature == "x" and event.psi > 0.6 and logic.drifting.keys() == {"x"}
    assert not window(skewed, 5) and logic.drifting  # still drifting: not reported again
    assert not window(even, 6) and not logic.drifting
    calibrated = {"x": {**reference["x"], "window_psi": {"100": 0.9}}}
    logic = FleetDriftLogic(lambda version: calibrated, 100, 0.25, None, confirm=1)
    assert not window(skewed, 7)  # within what the history's own windows of 100 showed
    logic.threshold = 0.01
    assert not window(np.array([5, 0]), 8) and not logic.drifting  # 5 readings of x: too few to measure
