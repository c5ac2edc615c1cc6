"""The RUL flow (`edgewatch run-rul`): replayed files and Kafka in; estimates, alerts and run ends."""

from __future__ import annotations

import time
from collections import Counter

import orjson
import pytest
from typer.testing import CliRunner

from edgewatch.cli import app
from edgewatch.connectors.kafka import ensure_topics
from edgewatch.rul import artifact
from edgewatch.rul.online import RulFleet
from edgewatch.rul.train import train_runs
from edgewatch.schema import CMAPSS_FEATURES
from tests.support.cli import said
from tests.support.kafka import consume, produce
from tests.support.processes import EdgewatchProcess
from tests.support.rul import SMALL, readings_of, synthetic_fleet, write_cmapss

pytest.importorskip("lightgbm", reason="training needs the train extra (lightgbm)")
runner = CliRunner()


@pytest.fixture(scope="module")
def rul_model(tmp_path_factory):
    folder = tmp_path_factory.mktemp("rul")
    artifact.save(train_runs(synthetic_fleet(30, seed=1), SMALL), folder / "model")
    return folder / "model"


def lines(path):
    return [orjson.loads(line) for line in path.read_bytes().splitlines()]


def test_a_replayed_history_gets_an_estimate_per_reading_and_one_alert_per_run(rul_model, tmp_path):
    runs = synthetic_fleet(6, seed=9)
    history = write_cmapss(runs, tmp_path / "engines.txt")
    out = tmp_path / "rul.jsonl"
    result = runner.invoke(app, ["run-rul", "--replay", str(history), "--out", str(out), "--rul-model", str(rul_model)])
    assert result.exit_code == 0, result.output
    estimates = lines(out)
    assert len(estimates) == sum(len(run.rows) for run in runs)
    last = {}
    for event in estimates:
        assert event["rul"]["p10"] <= event["rul"]["p50"] <= event["rul"]["p90"]
        assert event["cycle"] == last.get(event["device_id"], 0) + 1, "one run per engine, cycle by cycle"
        last[event["device_id"]] = event["cycle"]
    final = {event["device_id"]: event["rul"]["p50"] for event in estimates}
    assert max(final.values()) < 40, "every engine ends near failure and the model says so"
    alerts = lines(tmp_path / "rul.alerts.jsonl")
    assert Counter(alert["device_id"] for alert in alerts) == Counter({f"engine-{i:03d}": 1 for i in range(1, 7)})
    assert all(alert["event"] == "maintenance-alert" and alert["rul"]["p10"] < 30 for alert in alerts)


def test_runs_resume_from_recovery_state(rul_model, tmp_path):
    runs = synthetic_fleet(3, seed=4)
    first_half = [type(run)(run.device_id, run.rows[: len(run.rows) // 2]) for run in runs]
    state = tmp_path / "state"
    args = ["run-rul", "--rul-model", str(rul_model), "--recovery-dir", str(state), "--snapshot-seconds", "0.2"]
    history = tmp_path / "engines.txt"
    write_cmapss(first_half, history)
    assert runner.invoke(app, [*args, "--replay", str(history), "--out", str(tmp_path / "a.jsonl")]).exit_code == 0
    write_cmapss(runs, history)  # the same file, grown: the flow resumes after what it read
    result = runner.invoke(app, [*args, "--replay", str(history), "--out", str(tmp_path / "b.jsonl")])
    assert result.exit_code == 0, result.output
    resumed = lines(tmp_path / "b.jsonl")
    first_cycles = {e["device_id"]: e["cycle"] for e in reversed(resumed)}
    assert first_cycles == {f"engine-{i:03d}": len(run.rows) // 2 + 1 for i, run in enumerate(runs, start=1)}


def test_a_fleet_snapshot_is_data_and_restores_the_runs(rul_model):
    model = artifact.load(rul_model)
    fleet = RulFleet(model, horizon=30)
    readings = readings_of(synthetic_fleet(2, seed=3))
    head, tail = readings[:100], readings[100:160]
    fleet.update_many(head)
    blob = fleet.snapshot()
    assert b"pickle" not in blob and blob[:1] in (b"\x01", b"\x02")
    restored = RulFleet(artifact.load(rul_model), horizon=30)
    restored.restore(blob)
    expected = [(e.cycle, round(e.p50, 9)) for e in fleet.update_many(tail).estimates]
    assert [(e.cycle, round(e.p50, 9)) for e in restored.update_many(tail).estimates] == expected


def test_run_rul_needs_a_model_and_names_a_bad_one(tmp_path):
    result = runner.invoke(app, ["run-rul", "--replay", "README.md"])
    assert result.exit_code == 2 and "expected a .jsonl" in said(result)
    (tmp_path / "x.txt").write_text("1 1 " + " ".join(["0"] * 24) + "\n")
    result = runner.invoke(app, ["run-rul", "--replay", str(tmp_path / "x.txt"), "--out", str(tmp_path / "o.jsonl")])
    assert result.exit_code == 2 and "needs --rul-model" in said(result)


def body(row, cycle: int) -> bytes:
    """A C-MAPSS reading as the flow reads it from Kafka."""
    return orjson.dumps({"CycleTime": cycle, **dict(zip(CMAPSS_FEATURES, row.tolist(), strict=True))})


def test_kafka_in_run_ends_start_a_new_run(rul_model, kafka_bootstrap, topic_names, tmp_path):
    topics = {name: topic_names(name) for name in ("telemetry", "rul", "alerts", "maintenance", "deadletter")}
    ensure_topics({"bootstrap.servers": kafka_bootstrap}, topics.values(), 1)
    (run,) = synthetic_fleet(1, seed=5)
    readings = [(b"engine-1", body(row, cycle), []) for cycle, row in enumerate(run.rows[:50], 1)]
    produce(kafka_bootstrap, topics["telemetry"], readings)
    args = ["run-rul", "--bootstrap", kafka_bootstrap, "--rul-model", str(rul_model), "--in-topic", topics["telemetry"],
            "--rul-topic", topics["rul"], "--maintenance-alerts-topic", topics["alerts"],
            "--run-end-topic", topics["maintenance"], "--dlq-topic", topics["deadletter"],
            "--consumer-group", topic_names("group")]  # fmt: skip
    ends = [(b"engine-1", b'{"device_id": "engine-1", "event": "maintenance"}', []), (b"engine-1", b'{"x": 1}', [])]
    with EdgewatchProcess(args, tmp_path / "rul.log"):
        consume(kafka_bootstrap, [topics["rul"]], expected=50, timeout=120, settle=0)
        produce(kafka_bootstrap, topics["maintenance"], ends)
        time.sleep(3)  # the run end is applied before the next readings
        produce(kafka_bootstrap, topics["telemetry"], readings[:5])
        out = consume(kafka_bootstrap, [topics["rul"], topics["deadletter"]], expected=56, timeout=120, settle=1)
    estimates = [orjson.loads(m.value) for m in out if m.topic == topics["rul"]]
    assert [e["cycle"] for e in estimates[-5:]] == [1, 2, 3, 4, 5], "a new run after the maintenance"
    dead = [m for m in out if m.topic == topics["deadletter"]]
    assert len(dead) == 1 and "device_id" in dead[0].headers["edgewatch.error.reason"].decode()
