"""RUL models through the same MLflow registry, with the same integrity rules, as anomaly models:
`train --task rul --register --sign-key` → promote → `run-rul --model models:/NAME@champion`,
against the session's real `mlflow server`."""

from __future__ import annotations

import json
import shutil
import uuid

import orjson
import pytest
from typer.testing import CliRunner

from edgewatch.cli import app
from edgewatch.registry.lineage import file_sha256
from edgewatch.rul import artifact
from edgewatch.schema import CMAPSS_FEATURES
from tests.support.cli import said
from tests.support.registry import simulated_split, trained
from tests.support.rul import synthetic_fleet, write_cmapss, write_cmapss_split

pytest.importorskip("lightgbm", reason="training needs the train extra (lightgbm)")
runner = CliRunner()


def key_pair(folder):
    """An ed25519 private key and its public key, as PEM files."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    private = Ed25519PrivateKey.generate()
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "key.pem").write_bytes(
        private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                              serialization.NoEncryption())
    )  # fmt: skip
    (folder / "key.pub").write_bytes(
        private.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    return folder / "key.pem", folder / "key.pub"


def test_rul_model_registered_resolved_verified_and_cached(tmp_path, mlflow_tracking_uri):
    import mlflow
    from mlflow import MlflowClient

    from edgewatch.registry.publish import register_model

    name = f"engines-{uuid.uuid4().hex[:8]}"
    train = write_cmapss_split(synthetic_fleet(8, seed=31), synthetic_fleet(4, seed=32), tmp_path)
    private, public = key_pair(tmp_path / "keys")
    common = ["--tracking-uri", mlflow_tracking_uri, "--audit-log", str(tmp_path / "audit.jsonl")]
    trained_out = runner.invoke(app, ["train", "--task", "rul", "--input", str(train), "--out", str(tmp_path / "m"),
                                      "--register", name, "--sign-key", str(private), *common])  # fmt: skip
    assert trained_out.exit_code == 0, said(trained_out)
    assert f"registered models:/{name}/1" in trained_out.output and "cmapss: rmse=" in trained_out.output

    # lineage and the evaluate-cmapss figures of the test files beside the training file
    registry = MlflowClient(mlflow_tracking_uri, registry_uri=mlflow_tracking_uri)
    version = registry.get_model_version(name, "1")
    metadata = json.loads((tmp_path / "m" / "model.json").read_text())
    assert version.tags["edgewatch.kind"] == "rul"
    assert version.tags["edgewatch.training.data_sha256"] == file_sha256(train)
    assert version.tags["edgewatch.model_version"] == metadata["version"]
    assert version.tags["edgewatch.training.runs"] == "8"
    assert version.tags["edgewatch.training.rows"] == str(metadata["metadata"]["training"]["rows"])
    run = registry.get_run(version.run_id)
    assert run.data.params["kind"] == "rul" and run.data.params["param.trees"] == "200"
    assert run.data.tags["edgewatch.code.version"]
    assert set(run.data.metrics) == {f"cmapss.SYN.{m}" for m in ("rmse", "score", "rmse_all_cycles", "coverage",
                                                                 "engines")}  # fmt: skip
    assert run.data.metrics["cmapss.SYN.engines"] == 4.0

    # the pyfunc flavour estimates a batch as the fleet does
    mlflow.set_tracking_uri(mlflow_tracking_uri)
    (engine,) = synthetic_fleet(1, seed=33)
    rows = [{"device_id": "e", "timestamp": 1.7e9 + i, **dict(zip(CMAPSS_FEATURES, row.tolist(), strict=True))}
            for i, row in enumerate(engine.rows[:40])]  # fmt: skip
    answer = mlflow.pyfunc.load_model(f"models:/{name}/1").predict(rows)
    assert list(answer["cycle"]) == list(range(1, 41)) and (answer["p10"] <= answer["p90"]).all()

    assert runner.invoke(app, ["models", "promote", name, "1", "--reason", "first RUL model", "--force",
                               *common]).exit_code == 0  # fmt: skip

    # run-rul resolves models:/NAME@champion, verifies its signature and caches it
    engines = write_cmapss(synthetic_fleet(2, seed=34), tmp_path / "engines.txt")
    cache = tmp_path / "cache"
    run_rul = ["run-rul", "--replay", str(engines), "--tracking-uri", mlflow_tracking_uri, "--model-cache-dir",
               str(cache)]  # fmt: skip
    ran = runner.invoke(app, [*run_rul, "--out", str(tmp_path / "rul.jsonl"), "--model", f"models:/{name}@champion",
                              "--model-public-key", str(public)])  # fmt: skip
    assert ran.exit_code == 0, said(ran)
    estimates = [orjson.loads(line) for line in (tmp_path / "rul.jsonl").read_bytes().splitlines()]
    assert estimates and {e["model"]["version"] for e in estimates} == {metadata["version"]}
    assert (cache / name / "1" / "model.json").read_bytes() == (tmp_path / "m" / "model.json").read_bytes()

    # a key that did not sign it: refused in one line (the cached copy is checked too)
    _, stranger = key_pair(tmp_path / "other")
    refused = runner.invoke(app, [*run_rul, "--model", f"models:/{name}/1", "--model-public-key", str(stranger)])
    assert refused.exit_code == 2 and "does not verify with model_public_key" in said(refused)

    # the other kind is refused both ways, by the version's tag and by a directory's model.json
    wrong_kind = runner.invoke(app, ["run", "--model", f"models:/{name}/1", "--tracking-uri", mlflow_tracking_uri,
                                     "--model-cache-dir", str(cache)])  # fmt: skip
    assert wrong_kind.exit_code == 2
    assert f"models:/{name}/1 is an RUL model, not an anomaly model: run it with `edgewatch run-rul" in said(wrong_kind)
    history, _ = simulated_split(tmp_path / "h.jsonl", tmp_path / "l.jsonl", devices=2, history_ticks=50, live_ticks=1)
    trained(history, tmp_path / "anomaly", "robust-zscore")
    anomaly = runner.invoke(app, [*run_rul, "--model", str(tmp_path / "anomaly")])
    assert anomaly.exit_code == 2 and "holds an anomaly model, not an RUL model" in said(anomaly)

    # a version whose files do not match their checksums: refused, never cached
    shutil.copytree(tmp_path / "m", tmp_path / "forged")
    forged = {**metadata, "files": {"arrays.npz": "0" * 64}}
    (tmp_path / "forged" / "model.json").write_text(json.dumps(forged))
    registered = register_model(tmp_path / "forged", name, mlflow_tracking_uri)
    bad = runner.invoke(app, [*run_rul, "--model", registered.uri])
    assert bad.exit_code == 2 and "does not match its sha256" in said(bad)
    assert not (cache / name / registered.version).exists()
    assert artifact.load(cache / name / "1", public).version == metadata["version"]
