"""The RUL flow (`edgewatch run-rul`): replayed files and Kafka in; estimates, alerts and run ends."""

from __future__ import annotations

from collections import Counter

import orjson
import pytest
from typer.testing import CliRunner

from edgewatch.cli import app
from edgewatch.connectors.kafka import ensure_topics
from edgewatch.flows.rul import STORE_DIR, FleetLogic
from edgewatch.rul import artifact
from edgewatch.rul.events import RunEnd
from edgewatch.rul.online import RulFleet
from edgewatch.rul.store import RefitStore
from edgewatch.rul.train import train_runs
from tests.support.cli import said
from tests.support.kafka import consume, consume_all, produce
from tests.support.processes import EdgewatchProcess
from tests.support.rul import SMALL, body, readings_of, synthetic_fleet, write_cmapss, write_jsonl_runs

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
    result = runner.invoke(app, ["run-rul", "--replay", str(history), "--out", str(out), "--model", str(rul_model)])
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
    args = ["run-rul", "--model", str(rul_model), "--recovery-dir", str(state), "--snapshot-seconds", "0.2"]
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


def test_the_fleet_is_snapshotted_only_with_recovery(rul_model):
    fleet = RulFleet(artifact.load(rul_model), horizon=30)
    fleet.update_many(readings_of(synthetic_fleet(2, seed=3))[:50])
    assert FleetLogic(fleet, False, recovery=False).snapshot() == b"", "Bytewax would throw it away"
    assert FleetLogic(fleet, False, recovery=True).snapshot() == fleet.snapshot()


def test_run_rul_needs_a_model_and_names_a_bad_one(tmp_path):
    result = runner.invoke(app, ["run-rul", "--replay", "README.md"])
    assert result.exit_code == 2 and "expected a .jsonl" in said(result)
    (tmp_path / "x.txt").write_text("1 1 " + " ".join(["0"] * 24) + "\n")
    result = runner.invoke(app, ["run-rul", "--replay", str(tmp_path / "x.txt"), "--out", str(tmp_path / "o.jsonl")])
    assert result.exit_code == 2 and "needs --model" in said(result)


def test_kafka_in_run_ends_start_a_new_run(rul_model, kafka_bootstrap, topic_names, tmp_path):
    topics = {name: topic_names(name) for name in ("telemetry", "rul", "alerts", "maintenance", "deadletter")}
    ensure_topics({"bootstrap.servers": kafka_bootstrap}, topics.values(), 1)
    (run,) = synthetic_fleet(1, seed=5)
    readings = [(b"engine-1", body(row, cycle), []) for cycle, row in enumerate(run.rows[:50], 1)]
    produce(kafka_bootstrap, topics["telemetry"], readings)
    args = ["run-rul", "--bootstrap", kafka_bootstrap, "--model", str(rul_model), "--in-topic", topics["telemetry"],
            "--rul-topic", topics["rul"], "--maintenance-alerts-topic", topics["alerts"],
            "--run-end-topic", topics["maintenance"], "--dlq-topic", topics["deadletter"],
            "--consumer-group", topic_names("group")]  # fmt: skip
    ends = [(b"engine-1", b'{"device_id": "engine-1", "event": "maintenance"}', []), (b"engine-1", b'{"x": 1}', [])]
    with EdgewatchProcess(args, tmp_path / "rul.log"):
        consume(kafka_bootstrap, [topics["rul"]], expected=50, timeout=120, settle=0)
        produce(kafka_bootstrap, topics["maintenance"], ends)
        # the run end is applied before the next readings: the fleet step has taken it once the malformed
        # end sent after it comes out as that step's dead letter
        consume(kafka_bootstrap, [topics["deadletter"]], expected=1, timeout=60, settle=0)
        produce(kafka_bootstrap, topics["telemetry"], readings[:5])
        consume(kafka_bootstrap, [topics["rul"], topics["deadletter"]], expected=56, timeout=120, settle=0)
    out = consume_all(kafka_bootstrap, [topics["rul"], topics["deadletter"]])  # all the stopped flow wrote
    estimates = [orjson.loads(m.value) for m in out if m.topic == topics["rul"]]
    assert [e["cycle"] for e in estimates[-5:]] == [1, 2, 3, 4, 5], "a new run after the maintenance"
    dead = [m for m in out if m.topic == topics["deadletter"]]
    assert len(dead) == 1 and "device_id" in dead[0].headers["edgewatch.error.reason"].decode()


def test_what_the_fleet_learned_from_failures_survives_a_restart(tmp_path):
    """Replayed runs to failure teach the fleet (a refit once the store holds as many runs as the model
    was trained on); the process ends; restarted on the same recovery directory, it serves the refit
    model from the first reading, still holds the failed runs, and counts on from where it was."""
    model_dir = tmp_path / "model"
    artifact.save(train_runs(synthetic_fleet(4, seed=21), SMALL), model_dir)
    runs = synthetic_fleet(9, seed=22)
    history, state = tmp_path / "engines.jsonl", tmp_path / "state"
    args = ["run-rul", "--model", str(model_dir), "--recovery-dir", str(state), "--snapshot-seconds", "0.2",
            "--refit-every", "3", "--replay-ends-in-failure", "--replay", str(history)]  # fmt: skip
    write_jsonl_runs(runs[:6], history)
    first = runner.invoke(app, [*args, "--out", str(tmp_path / "a.jsonl")])
    assert first.exit_code == 0, first.output
    store = RefitStore(state / STORE_DIR)
    kept = store.load_failures()
    # failures 1-3: too few runs to refit a 4-run model; the 4th refits; 5 and 6 count towards the next
    assert (len(kept.runs), kept.refits, kept.since_refit) == (6, 1, 2)
    refit = store.load_model()
    assert refit.version.endswith("+refit1") and kept.base == artifact.load(model_dir).version

    write_jsonl_runs(runs, history)  # the same file, grown by three engines: the flow resumes after what it read
    second = runner.invoke(app, [*args, "--out", str(tmp_path / "b.jsonl")])
    assert second.exit_code == 0, second.output
    assert f"model {refit.version}, 6 failed runs kept" in second.output
    resumed = lines(tmp_path / "b.jsonl")
    assert {e["device_id"] for e in resumed} == {"engine-006", "engine-007", "engine-008"}
    assert {e["model"]["version"] for e in resumed} == {refit.version}, "the refit model, not the deployed one"
    kept = store.load_failures()
    assert (len(kept.runs), kept.refits, kept.since_refit) == (9, 2, 2)
    assert store.load_model().version == refit.version + "+refit2"


def test_the_failure_store_is_bounded_and_a_new_deployed_model_is_served(tmp_path):
    runs = synthetic_fleet(5, seed=23)
    model = train_runs(runs[:2], SMALL)
    model.version = "rul-a"
    store = RefitStore(tmp_path / "rul")
    fleet = RulFleet(model, refit_every=2, store=store, max_rows=sum(len(r.rows) for r in runs[2:]) - 1)
    for run in runs[2:]:
        fleet.update_many(readings_of([run]))
        fleet.end_run(RunEnd(run.device_id, "failure"))
    assert [r.device_id for r in fleet.runs] == ["engine-003", "engine-004"], "oldest runs leave first"
    assert fleet.refits == 1 and store.load_model().version == "rul-a+refit1"
    # the same failure seen again (a resumed flow replays the readings after its last snapshot)
    fleet.update_many(readings_of([runs[4]]))
    assert fleet.end_run(RunEnd(runs[4].device_id, "failure")) is None and fleet.failures_since_refit == 1
    other = train_runs(runs[:3], SMALL)
    other.version = "rul-b"  # a new champion deployed: it is served, the failed runs are kept
    resumed = RulFleet(other, refit_every=2, store=store)
    assert resumed.model.version == "rul-b" and len(resumed.runs) == 2 and resumed.failures_since_refit == 1
    (tmp_path / "rul" / "failures.bin").write_bytes(b"\x02garbage")
    assert len(RulFleet(other, store=store).runs) == 0, "a damaged store is skipped, not fatal"
