"""The retraining loop against a real MLflow server: the flow keeps training data, retrain trains,
validates, registers and promotes; rollback returns; every step audited."""

import json
import time
import uuid

from typer.testing import CliRunner

from edgewatch.cli import app
from edgewatch.flows.fleet_drift import FLEET_DRIFT_REPORT
from edgewatch.registry.audit import AuditLog
from edgewatch.registry.resolve import resolve_model
from edgewatch.registry.retrain import retrain_loop
from edgewatch.registry.training_store import TrainingStore
from tests.support.registry import simulated_split

runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(arg) for arg in args])


def test_the_store_keeps_normal_readings_bounded_by_age_and_size(tmp_path):
    from edgewatch.schema import RawMessage

    store = TrainingStore(tmp_path / "t.db", max_age_hours=1.0, rows_per_device=3)
    raw = RawMessage(b"k", b"{}", [("h", b"\x00\xff")], "t", 0, 0, None)
    store.add([(f"d{i % 2}", float(t), raw) for i, t in enumerate(range(0, 10))])
    assert len(store) == 6  # three per device
    store.add([("d0", 10_000.0, raw)])  # an hour later: everything older than an hour before it goes
    kept = store.messages()
    assert [m.timestamp_ms for m in kept] == [10_000_000] and kept[0].headers == [("h", b"\x00\xff")]


def test_retrain_from_the_training_store_then_rollback(mlflow_tracking_uri, tmp_path):
    name = f"retrain-{uuid.uuid4().hex[:8]}"
    registry = ["--tracking-uri", mlflow_tracking_uri]
    audit = ["--audit-log", tmp_path / "audit.jsonl"]
    cache = ["--model-cache-dir", tmp_path / "cache"]
    history, live = simulated_split(tmp_path / "history.jsonl", tmp_path / "live.jsonl", history_ticks=300,
                                    live_ticks=400, fault_rate=0.0)  # fmt: skip
    trained = invoke("train", "--input", history, "--out", tmp_path / "v1", "--register", name, *registry, *audit)
    assert trained.exit_code == 0, trained.output
    assert invoke("models", "promote", name, "1", "--reason", "first", *registry, *audit).exit_code == 0

    # the edge runs the champion and keeps what it labels normal
    store = tmp_path / "store.db"
    args = ["run", "--replay", live, "--out", tmp_path / "labeled.jsonl", "--model", f"models:/{name}@champion",
            "--training-store", store, *registry, *cache]  # fmt: skip
    ran = invoke(*args)
    assert ran.exit_code == 0, ran.output
    labeled = [json.loads(line) for line in (tmp_path / "labeled.jsonl").read_text().splitlines()]
    normal = sum(not e["is_anomaly"] for e in labeled)
    assert len(TrainingStore(store).messages()) == normal > 0.9 * len(labeled)

    retrained = invoke(
        "retrain",
        name,
        "--store",
        store,
        "--work-dir",
        tmp_path / "rounds",
        "--retrain-shadow-seconds",
        "0",
        *registry,
        *audit,
        *cache,
    )  # fmt: skip (the shadow step: test_lifecycle_e2e)
    print(retrained.output)
    assert retrained.exit_code == 0, retrained.output
    assert "retrain (operator): promoted version 2" in retrained.output
    assert resolve_model(f"models:/{name}@champion", tmp_path / "c2", mlflow_tracking_uri).version == "2"
    rolled = invoke("models", "rollback", name, "--reason", "back to v1", *registry, *audit)
    assert rolled.exit_code == 0, rolled.output
    assert resolve_model(f"models:/{name}@champion", tmp_path / "c3", mlflow_tracking_uri).version == "1"
    actions = [e["action"] for e in AuditLog(tmp_path / "audit.jsonl").entries()]
    assert actions == ["register", "promote", "retrain", "register", "validate", "promote", "rollback"]
    entries = AuditLog(tmp_path / "audit.jsonl").entries()
    assert entries[2]["trigger"] == "operator" and entries[4]["status"] == "passed"


def test_auto_retrains_on_drift_and_on_schedule(tmp_path):
    report = tmp_path / FLEET_DRIFT_REPORT
    triggers = []

    def round_(trigger):
        triggers.append(trigger)
        if len(triggers) == 1:  # the first (scheduled) round done, the flow reports drift
            time.sleep(0.05)
            report.write_text(json.dumps({"drifted": ["machine.temperature"], "psi": {}}))
        return {"decision": "promoted"}

    outcomes = retrain_loop(round_, report, every_seconds=3600, poll_seconds=0.01, rounds=2)
    assert triggers == ["schedule", "fleet drift: machine.temperature"] and len(outcomes) == 2
    calls, started = [], time.monotonic()
    retrain_loop(lambda t: calls.append(t) or {}, report, 3600, 0.01, stop=lambda: time.monotonic() - started > 0.3)
    assert calls == ["schedule"]  # a report older than the last round triggers nothing


def test_the_shadow_step_decides_from_the_figures_of_the_flow_that_ran_the_challenger(tmp_path):
    """What a flow following the registry wrote (the shadow report) decides, for the challenger it
    names only; every step audited (the registry tags are best effort: this model is not registered)."""
    from edgewatch.config import RegistrySettings
    from edgewatch.flows.lifecycle import SHADOW_REPORT
    from edgewatch.registry.retrain import shadow_trial

    settings = RegistrySettings(model_cache_dir=tmp_path, audit_log=tmp_path / "audit.jsonl",
                                retrain_shadow_seconds=0.05, tracking_uri=f"file:{tmp_path / 'mlruns'}")  # fmt: skip
    audit = AuditLog(settings.audit_log)
    figures = {"challenger": "m-2", "readings": 4000, "agreement": 0.9, "champion_alarm_rate": 0.02}
    verdicts = {}
    for case, challenger_rate, version in (("fewer false alarms", 0.004, "m-2"), ("more", 0.05, "m-2"),
                                           ("another challenger's figures", 0.004, "m-3")):  # fmt: skip
        (tmp_path / SHADOW_REPORT).write_text(json.dumps({**figures, "challenger_alarm_rate": challenger_rate}))
        verdicts[case] = shadow_trial(settings, "pumps", "2", version, audit, "ana", "operator", poll_seconds=0.01)
    assert verdicts["fewer false alarms"]["passed"] and "passed" in verdicts["fewer false alarms"]["line"]
    assert not verdicts["more"]["passed"] and "alarm rate 50.00/1000 > 26.00 allowed" in verdicts["more"]["line"]
    other = verdicts["another challenger's figures"]
    assert not other["passed"] and other["readings"] == 0 and "fewer than 1000" in other["line"]
    entries = audit.entries()
    assert [e["action"] for e in entries] == ["shadow-start", "shadow"] * 3
    assert [e["status"] for e in entries[1::2]] == ["passed", "failed", "failed"]
    assert entries[3]["figures"]["challenger_alarm_rate"] == 0.05 and entries[0]["seconds"] == 0.05
