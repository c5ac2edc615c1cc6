"""The MLflow registry: register with lineage, the pyfunc flavour, resolve/verify/cache (also offline),
the validation gate, promote/rollback with the audit trail — against a real `mlflow server`."""

from __future__ import annotations

import json
import logging
import uuid

import pytest
from typer.testing import CliRunner

from edgewatch.app import Application
from edgewatch.cli import app
from edgewatch.config import FlowSettings, RegistrySettings
from edgewatch.online_models.bank import new_bank
from edgewatch.registry import RegistryError
from edgewatch.registry.audit import AuditLog
from edgewatch.registry.lineage import file_sha256
from edgewatch.registry.resolve import resolve_model
from edgewatch.registry.validation import Figures, Policy, read_recorded, replay
from tests.support.cli import said
from tests.support.mlflow_server import Relay
from tests.support.registry import readings_of_file, shifted_copy, simulated_split, trained

runner = CliRunner()


@pytest.fixture(scope="module")
def streams(tmp_path_factory):
    """A simulated fleet's history and the recorded stream that follows it (with faults)."""
    root = tmp_path_factory.mktemp("streams")
    return simulated_split(root / "history.jsonl", root / "live.jsonl")


@pytest.fixture(scope="module")
def model_v1(streams, tmp_path_factory):
    return trained(streams[0], tmp_path_factory.mktemp("v1") / "model")


@pytest.fixture
def model_name():
    return f"pumps-{uuid.uuid4().hex[:8]}"


def register(history, out, name, tracking_uri, *extra, audit=None):
    args = ["train", "--input", str(history), "--out", str(out), "--register", name, "--tracking-uri", tracking_uri,
            "--audit-log", str(audit or out.parent / "audit.jsonl"), "--detector", "compact-novelty"]  # fmt: skip
    result = runner.invoke(app, [*args, *extra])
    assert result.exit_code == 0, result.output
    return result


# -- without a server --------------------------------------------------------------------------------


def test_pyfunc_scores_rows_as_the_flow_bank_does(streams, model_v1):
    from edgewatch.registry.pyfunc import score_batch

    fitted = model_v1
    readings = readings_of_file(streams[1])[:400]
    rows = [{"device_id": r.device_id, "timestamp": r.timestamp, **r.features} for r in readings]
    rows.insert(5, {"device_id": "machine-0001", "timestamp": readings[0].timestamp, "machine.temperature": "hot"})
    answer = score_batch(fitted, rows)
    expected = new_bank(fitted.spec, None, fitted).label(readings).events
    scored = [row for row in answer if not row[4]]
    assert [row[2] for row in scored] == [event.score for event in expected]
    assert [row[3] for row in scored] == [event.is_anomaly for event in expected]
    assert answer[5] == [None, None, None, None, "row 5: values.machine.temperature must be a number, got string"]


def test_policy_compares_fleet_figures():
    base = Figures(readings=10_000, flagged=40, alarms=20, devices=10, faults=10, detected=8, precision=0.6, recall=0.8)
    policy = Policy(max_alarm_rate_increase=0.25, max_recall_drop=0.05, max_precision_drop=0.05)
    assert policy.failures(base, base) == []
    noisier = Figures(readings=10_000, flagged=90, alarms=26, devices=10, faults=10, detected=8, precision=0.6,
                      recall=0.8)  # fmt: skip
    assert [f.split()[0] for f in policy.failures(noisier, base)] == ["alarm"]
    blind = Figures(readings=10_000, flagged=10, alarms=10, devices=10, faults=10, detected=5, precision=0.5,
                    recall=0.5)  # fmt: skip
    assert [f.split()[0] for f in policy.failures(blind, base)] == ["recall", "precision"]


def test_replay_counts_alarms_and_faults_per_device(streams, model_v1):
    fitted = model_v1
    from edgewatch.connectors.files import read_messages

    recorded = read_recorded(read_messages(streams[1]))
    result = replay(fitted, recorded)
    assert result.fleet.readings == len(recorded.readings) == sum(f.readings for f in result.devices.values())
    assert result.fleet.faults == sum(f.faults for f in result.devices.values()) > 0
    assert result.fleet.alarms == sum(f.alarms for f in result.devices.values())
    assert 0 < result.fleet.recall <= 1 and 0 < result.fleet.precision <= 1
    # an alarm is a rising edge of the device's label: never more alarms than flagged readings
    assert all(f.alarms <= f.flagged for f in result.devices.values())


# -- against the MLflow server ------------------------------------------------------------------------


def test_train_register_logs_lineage_and_a_pyfunc_model(streams, tmp_path, mlflow_tracking_uri, model_name):
    import mlflow
    from mlflow import MlflowClient

    metrics = tmp_path / "figures.json"
    metrics.write_text(json.dumps({"nab_standard": 61.5, "sim_recall": 0.9}))
    result = register(streams[0], tmp_path / "model", model_name, mlflow_tracking_uri, "--metrics", str(metrics))
    assert f"registered models:/{model_name}/1" in result.output

    registry = MlflowClient(mlflow_tracking_uri, registry_uri=mlflow_tracking_uri)
    version = registry.get_model_version(model_name, "1")
    assert registry.get_registered_model(model_name).aliases == {"challenger": "1"}
    metadata = json.loads((tmp_path / "model" / "model.json").read_text())
    assert version.tags["edgewatch.training.data_sha256"] == file_sha256(streams[0])
    assert version.tags["edgewatch.model_version"] == metadata["version"]
    assert version.tags["edgewatch.training.devices"] == "8"
    assert version.tags["edgewatch.training.first_timestamp"] == metadata["training"]["first_timestamp"]
    run = registry.get_run(version.run_id)
    assert run.data.params["detector"] == "compact-novelty"  # what register() trains
    assert run.data.params["param.memory"] == "16"
    assert run.data.metrics == {"nab_standard": 61.5, "sim_recall": 0.9}
    assert run.data.tags["edgewatch.code.version"]

    # the pyfunc flavour scores a batch as the flow's bank does
    mlflow.set_tracking_uri(mlflow_tracking_uri)
    model = mlflow.pyfunc.load_model(f"models:/{model_name}/1")
    readings = readings_of_file(streams[1])[:200]
    import pandas as pd

    frame = pd.DataFrame([{"device_id": r.device_id, "timestamp": r.timestamp, **r.features} for r in readings])
    answer = model.predict(frame)
    fitted = resolve_model(tmp_path / "model", tmp_path / "cache").artifact
    expected = new_bank(fitted.spec, None, fitted).label(readings).events
    assert list(answer.columns) == ["device_id", "timestamp", "score", "is_anomaly", "error"]
    assert answer["score"].tolist() == [e.score for e in expected]
    assert answer["is_anomaly"].tolist() == [e.is_anomaly for e in expected]
    # a list of readings (the generic telemetry shape) works too
    as_list = [{"deviceId": r.device_id, "timestamp": r.timestamp, "values": r.features} for r in readings]
    assert model.predict(as_list)["score"].tolist() == answer["score"].tolist()


def test_resolve_downloads_verifies_and_caches(streams, tmp_path, mlflow_tracking_uri, model_name, caplog):
    register(streams[0], tmp_path / "model", model_name, mlflow_tracking_uri)
    cache = tmp_path / "cache"
    by_alias = resolve_model(f"models:/{model_name}@challenger", cache, mlflow_tracking_uri)
    assert (by_alias.version, by_alias.from_cache) == ("1", False)
    assert by_alias.path == cache / model_name / "1"
    assert (by_alias.path / "model.json").read_bytes() == (tmp_path / "model" / "model.json").read_bytes()
    by_number = resolve_model(f"models:/{model_name}/1", cache, mlflow_tracking_uri)
    assert by_number.artifact.version == by_alias.artifact.version

    # a cached copy that no longer matches its checksum is downloaded again, never run
    metadata = json.loads((by_alias.path / "model.json").read_text())
    forged = {**metadata, "files": {**metadata["files"], "arrays.npz": "0" * 64}}
    (by_alias.path / "model.json").write_text(json.dumps(forged))
    with caplog.at_level(logging.WARNING, logger="edgewatch.registry.resolve"):
        again = resolve_model(f"models:/{model_name}/1", cache, mlflow_tracking_uri)
    assert "fails its check" in caplog.text
    assert json.loads((again.path / "model.json").read_text())["files"] == metadata["files"]

    with pytest.raises(RegistryError, match="champion"):
        resolve_model(f"models:/{model_name}@champion", cache, mlflow_tracking_uri)
    with pytest.raises(RegistryError, match="expected models:/NAME@ALIAS"):
        resolve_model(f"models:/{model_name}", cache, mlflow_tracking_uri)


def test_an_offline_edge_keeps_its_cached_model(streams, tmp_path, mlflow_tracking_uri, model_name, caplog,
                                                monkeypatch):  # fmt: skip
    # MLflow's retries of a refused request stay (2), without their sleeps (2 s per resolve, three of them)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "0")
    cache = tmp_path / "cache"
    with Relay(mlflow_tracking_uri) as server:  # the registry as the edge reaches it, until the link is cut
        register(streams[0], tmp_path / "model", model_name, server.uri)
        online = resolve_model(f"models:/{model_name}@challenger", cache, server.uri)
        never_cached = f"models:/{model_name}/1"
    assert not server.running
    with caplog.at_level(logging.WARNING, logger="edgewatch.registry.resolve"):
        offline = resolve_model(f"models:/{model_name}@challenger", cache, server.uri)
    assert offline.from_cache and offline.version == online.version == "1"
    assert offline.artifact.version == online.artifact.version
    assert "registry unreachable" in caplog.text and f"cached copy of {model_name} version 1" in caplog.text
    # `run --model models:/…` starts on it: the process owner resolves through the same path
    uri = f"models:/{model_name}@challenger"
    settings = FlowSettings(model_dir=uri, tracking_uri=server.uri, model_cache_dir=cache)
    assert Application(settings, handle_signals=False)._load_model().version == online.artifact.version
    with pytest.raises(RegistryError, match=r"unreachable .* no cached copy"):
        resolve_model(never_cached.replace("/1", "/2"), cache, server.uri)


def test_a_model_that_fails_its_checksum_is_refused_and_never_cached(streams, tmp_path, mlflow_tracking_uri,
                                                                     model_name):  # fmt: skip
    from edgewatch.online_models.artifact import ArtifactError
    from edgewatch.registry.publish import register_model

    trained(streams[0], tmp_path / "model")
    metadata = json.loads((tmp_path / "model" / "model.json").read_text())
    forged = {**metadata, "files": {**metadata["files"], "arrays.npz": "f" * 64}}
    (tmp_path / "model" / "model.json").write_text(json.dumps(forged))
    registered = register_model(tmp_path / "model", model_name, mlflow_tracking_uri)
    with pytest.raises(ArtifactError, match="does not match its sha256"):
        resolve_model(registered.uri, tmp_path / "cache", mlflow_tracking_uri)
    assert not (tmp_path / "cache" / model_name / registered.version).exists()
    result = runner.invoke(app, ["run", "--model", registered.uri, "--tracking-uri", mlflow_tracking_uri,
                                 "--model-cache-dir", str(tmp_path / "cache")])  # fmt: skip
    assert result.exit_code == 2 and "does not match its sha256" in said(result)


def test_models_cli_validate_promote_rollback_status(streams, tmp_path, mlflow_tracking_uri, model_name):
    from mlflow import MlflowClient

    audit = tmp_path / "audit.jsonl"
    common = ["--tracking-uri", mlflow_tracking_uri]
    register(streams[0], tmp_path / "v1", model_name, mlflow_tracking_uri, audit=audit)
    promoted = runner.invoke(app, ["models", "promote", model_name, "1", "--reason", "first model", "--actor", "ana",
                                   "--audit-log", str(audit), *common])  # fmt: skip
    assert promoted.exit_code == 0, promoted.output

    # v2 from another regime's history: it misjudges the real stream, the gate says so
    register(shifted_copy(streams[0], tmp_path / "shifted.jsonl", 30.0), tmp_path / "v2", model_name,
             mlflow_tracking_uri, audit=audit)  # fmt: skip
    report = tmp_path / "report.json"
    validated = runner.invoke(app, ["models", "validate", "--candidate", f"models:/{model_name}/2", "--baseline",
                                    f"models:/{model_name}@champion", "--data", str(streams[1]), "--report",
                                    str(report), "--audit-log", str(audit), "--model-cache-dir",
                                    str(tmp_path / "cache"), *common])  # fmt: skip
    figures = json.loads(report.read_text())
    assert validated.exit_code == (0 if figures["passed"] else 1), validated.output
    assert not figures["passed"], validated.output  # v2 was trained on 30 °C hotter machines
    cand, base = figures["candidate_fleet"], figures["baseline_fleet"]
    assert cand["precision"] < base["precision"] or cand["recall"] < base["recall"]
    assert figures["failures"] == Policy.from_settings(RegistrySettings()).failures(
        _figures(cand), _figures(base)
    )  # the settings' default policy
    assert set(figures["devices"]) == {f"machine-{i:04d}" for i in range(8)}
    assert "FAILED" in validated.output

    refused = runner.invoke(app, ["models", "promote", model_name, "2", "--reason", "try", "--audit-log", str(audit),
                                  *common])  # fmt: skip
    assert refused.exit_code == 2 and "failed its last validation" in said(refused)
    registry = MlflowClient(mlflow_tracking_uri, registry_uri=mlflow_tracking_uri)
    assert registry.get_registered_model(model_name).aliases["champion"] == "1"

    forced = runner.invoke(app, ["models", "promote", model_name, "2", "--reason", "operator knows", "--force",
                                 "--actor", "bo", "--audit-log", str(audit), *common])  # fmt: skip
    assert forced.exit_code == 0 and "(forced)" in forced.output
    assert registry.get_model_version(model_name, "2").tags["edgewatch.promoted_by"] == "bo"

    status = runner.invoke(app, ["models", "status", model_name, "--json", *common])
    shown = json.loads(status.output)
    assert shown["aliases"] == {"champion": "2"} and shown["champion_history"] == ["1", "2"]
    assert shown["versions"][0]["validation"] == "failed"

    rolled = runner.invoke(app, ["models", "rollback", model_name, "--reason", "false alarms", "--audit-log",
                                 str(audit), *common])  # fmt: skip
    assert rolled.exit_code == 0, rolled.output
    assert registry.get_registered_model(model_name).aliases["champion"] == "1"
    nothing_left = runner.invoke(app, ["models", "rollback", model_name, "--audit-log", str(audit), *common])
    assert nothing_left.exit_code == 2 and "no previous champion" in said(nothing_left)

    entries = AuditLog(audit).entries()
    assert [e["action"] for e in entries] == [
        "register", "promote", "register", "validate", "promote-refused", "promote", "rollback"
    ]  # fmt: skip
    assert entries[2]["version"] == "2" and entries[2]["data"].endswith("shifted.jsonl") and entries[2]["run_id"]
    assert entries[3]["baseline_version"] == "1" and entries[3]["status"] == "failed"
    assert entries[5]["forced"] and entries[5]["actor"] == "bo" and entries[5]["reason"] == "operator knows"
    assert entries[6]["version"] == "1" and entries[6]["previous"] == "2"


def test_promotion_needs_a_validation_against_the_current_champion(streams, tmp_path, mlflow_tracking_uri,
                                                                   model_name):  # fmt: skip
    from edgewatch.registry import lifecycle
    from edgewatch.registry.publish import register_model

    trained(streams[0], tmp_path / "model")
    for _ in range(3):
        register_model(tmp_path / "model", model_name, mlflow_tracking_uri)
    audit = AuditLog(tmp_path / "audit.jsonl")
    lifecycle.promote(mlflow_tracking_uri, model_name, "1", "first", audit, "ana")  # nothing to compare with yet
    with pytest.raises(RegistryError, match="never validated against the champion"):
        lifecycle.promote(mlflow_tracking_uri, model_name, "2", "untested", audit, "ana")
    passed = {"passed": True, "candidate_fleet": {}, "baseline_fleet": {}}
    for version in ("2", "3"):
        lifecycle.record_validation(mlflow_tracking_uri, model_name, version, passed, audit, "ci", "1")
    lifecycle.promote(mlflow_tracking_uri, model_name, "2", "beat version 1", audit, "ana")
    with pytest.raises(RegistryError, match="validated against 1, but the champion is now version 2"):
        lifecycle.promote(mlflow_tracking_uri, model_name, "3", "beat version 1 too", audit, "ana")
    assert [e["action"] for e in audit.entries()] == [
        "promote", "promote-refused", "validate", "validate", "promote", "promote-refused"
    ]  # fmt: skip


def test_run_refuses_an_unknown_registry_model_in_one_line(tmp_path, mlflow_tracking_uri, model_name):
    result = runner.invoke(app, ["run", "--model", f"models:/{model_name}@champion", "--tracking-uri",
                                 mlflow_tracking_uri, "--model-cache-dir", str(tmp_path)])  # fmt: skip
    assert result.exit_code == 2
    assert model_name in said(result) and "Traceback" not in result.output


def _figures(shown: dict) -> Figures:
    return Figures(**{name: value for name, value in shown.items() if name not in ("alarm_rate", "alarms_per_device")})
