"""The model lifecycle end to end, against a real MLflow server and the session's Kafka:
train v1 → register → promote champion → `run --model models:/NAME@champion` labels a stream →
train v2 → validate → promote → rollback; the audit trail has every step."""

from __future__ import annotations

import json
import uuid

import orjson
from typer.testing import CliRunner

from edgewatch.cli import app
from edgewatch.connectors.files import read_jsonl
from edgewatch.registry.audit import AuditLog
from edgewatch.registry.resolve import resolve_model
from tests.support.cli import said
from tests.support.kafka import consume, consume_all, produce
from tests.support.processes import EdgewatchProcess
from tests.support.registry import simulated_split

runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(arg) for arg in args])


def test_train_register_run_validate_promote_rollback(kafka_bootstrap, flow_topics, mlflow_tracking_uri, tmp_path):
    name = f"fleet-{uuid.uuid4().hex[:8]}"
    registry = ["--tracking-uri", mlflow_tracking_uri]
    audit = ["--audit-log", tmp_path / "audit.jsonl"]
    cache = ["--model-cache-dir", tmp_path / "cache"]
    # one fleet: ticks 0-299 are v1's history, 0-399 v2's, and 400-699 the recorded stream both are judged on
    history, live = simulated_split(tmp_path / "history.jsonl", tmp_path / "live.jsonl", history_ticks=400)
    first_300 = tmp_path / "history-v1.jsonl"
    first_300.write_bytes(b"".join(history.read_bytes().splitlines(keepends=True)[: 8 * 300]))

    trained = invoke("train", "--input", first_300, "--out", tmp_path / "v1", "--register", name, *registry, *audit)
    assert trained.exit_code == 0 and f"registered models:/{name}/1" in trained.output, trained.output
    v1_version = json.loads((tmp_path / "v1" / "model.json").read_text())["version"]
    promoted = invoke("models", "promote", name, "1", "--reason", "first model", *registry, *audit)
    assert promoted.exit_code == 0, said(promoted)

    # the edge runs the champion, resolved from the registry
    records = [(raw.key, raw.value, raw.headers) for raw in read_jsonl(live)]
    produce(kafka_bootstrap, flow_topics["in"], records)
    args = ["run", "--bootstrap", kafka_bootstrap, "--in-topic", flow_topics["in"], "--out-topic", flow_topics["out"],
            "--dlq-topic", flow_topics["dlq"], "--model", f"models:/{name}@champion", *registry, *cache]  # fmt: skip
    with EdgewatchProcess(args, tmp_path / "flow.log") as flow:
        consume(kafka_bootstrap, [flow_topics["out"]], len(records), settle=0)
        flow.wait_for_output(rf"models:/{name}@champion = {name} version 1 \({v1_version}\)", 10)
    out = consume_all(kafka_bootstrap, [flow_topics["out"]])  # all the stopped flow wrote
    events = [orjson.loads(message.value) for message in out]
    assert len(events) == len(records)
    assert {event["model"]["version"] for event in events} == {v1_version}

    # v2 on more recent history; the gate replays the recorded stream through both
    trained = invoke("train", "--input", history, "--out", tmp_path / "v2", "--register", name, *registry, *audit)
    assert trained.exit_code == 0, trained.output
    report = tmp_path / "validation.json"
    pair = ["--candidate", f"models:/{name}@challenger", "--baseline", f"models:/{name}@champion"]
    validated = invoke("models", "validate", *pair, "--data", live, "--report", report, *registry, *audit, *cache)
    verdict = json.loads(report.read_text())
    assert validated.exit_code == (0 if verdict["passed"] else 1), validated.output
    assert verdict["candidate_fleet"]["faults"] == verdict["baseline_fleet"]["faults"] > 0
    promote_v2 = ["models", "promote", name, "2", "--reason", "retrained on 400 ticks", *registry, *audit]
    if not verdict["passed"]:  # the gate holds v2 back; the operator overrides it, on the record
        refused = invoke(*promote_v2)
        assert refused.exit_code == 2 and "failed its last validation" in said(refused)
        promote_v2.append("--force")
    promoted = invoke(*promote_v2)
    assert promoted.exit_code == 0, said(promoted)
    assert resolve_model(f"models:/{name}@champion", tmp_path / "cache", mlflow_tracking_uri).version == "2"

    rolled = invoke("models", "rollback", name, "--reason", "operator: back to v1", *registry, *audit)
    assert rolled.exit_code == 0, said(rolled)
    assert resolve_model(f"models:/{name}@champion", tmp_path / "cache", mlflow_tracking_uri).version == "1"
    status = json.loads(invoke("models", "status", name, "--json", *registry).output)
    assert status["aliases"] == {"champion": "1"} and status["champion_history"] == ["1"]
    assert status["versions"][0]["validation"] == ("passed" if verdict["passed"] else "failed")
    assert status["fleet_drift"] is None  # no flow has measured any with this cache directory
    # what a flow's last fleet drift window wrote (edgewatch.flows.fleet_drift) shows in the status
    from edgewatch.flows.fleet_drift import FLEET_DRIFT_REPORT, FleetDriftLogic

    window = FleetDriftLogic(lambda _version: None, 1, 0.25, tmp_path / "cache" / FLEET_DRIFT_REPORT)
    window._version, window._readings = "v1", 800
    window.drifting = {"machine.temperature": 1.79e9}
    window._write_report(1.79e9, {"machine.temperature": 0.61, "ambient.humidity": 0.01},
                         {"machine.temperature": 0.3, "ambient.humidity": 0.25})  # fmt: skip
    cache = ["--model-cache-dir", str(tmp_path / "cache")]
    shown = invoke("models", "status", name, *registry, *cache)
    assert "fleet drift of v1" in shown.output and "drifted: machine.temperature" in shown.output

    entries = AuditLog(tmp_path / "audit.jsonl").entries()
    refusal = [] if verdict["passed"] else ["promote-refused"]
    expected = ["register", "promote", "register", "validate", *refusal, "promote", "rollback"]
    assert [entry["action"] for entry in entries] == expected
    assert all(entry["actor"] and entry["time"] for entry in entries)
    assert entries[3]["figures"]["candidate_fleet"] == verdict["candidate_fleet"]
    assert entries[0]["data"] == str(first_300) and entries[2]["data"] == str(history)
    assert entries[-2]["version"] == "2" and entries[-2]["previous"] == "1"
    assert entries[-2]["forced"] is not verdict["passed"]
    last = entries[-1]
    assert (last["version"], last["previous"], last["reason"]) == ("1", "2", "operator: back to v1")
