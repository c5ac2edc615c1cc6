"""`edgewatch train` artifacts and the warm start of `edgewatch run --model`."""

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from edgewatch.cli import app
from edgewatch.connectors.files import read_history
from edgewatch.online_models import artifact
from edgewatch.online_models.bank import ModelBank
from edgewatch.online_models.registry import BUILTIN
from tests.support.cli import said

runner = CliRunner()


@pytest.fixture
def history(tmp_path):
    path = tmp_path / "history.jsonl"
    args = ["simulate", "--devices", "4", "--rate", "40", "--duration", "30", "--fault-rate", "0", "--seed", "5",
            "--malformed-rate", "0.01", "--start-time", "2026-01-01T00:00:00", "--out", str(path)]  # fmt: skip
    assert runner.invoke(app, args).exit_code == 0
    return path


def train(history, out):
    result = runner.invoke(app, ["train", "--input", str(history), "--out", str(out)])
    assert result.exit_code == 0, result.output
    return result


def test_train_writes_a_versioned_checksummed_artifact(history, tmp_path):
    result = train(history, tmp_path / "model")
    metadata = json.loads((tmp_path / "model" / "model.json").read_text())
    assert metadata["detector"] == "compact-novelty"
    assert metadata["parameters"]["memory"] == 16
    assert metadata["version"].startswith("compact-novelty-") and metadata["version"] in result.output
    assert len(metadata["sha256"]) == 64
    training = metadata["training"]
    assert training["devices"] == 4
    assert 1150 < training["rows"] < 1200  # 1200 messages, ~1 % of them malformed and skipped
    assert training["first_timestamp"] == "2026-01-01T00:00:00.000000Z"
    assert training["last_timestamp"].startswith("2026-01-01T00:00:29")
    assert "skipped" in result.stderr


def test_tampered_artifact_is_refused(history, tmp_path):
    train(history, tmp_path / "model")
    blob = (tmp_path / "model" / "model.pkl").read_bytes()
    (tmp_path / "model" / "model.pkl").write_bytes(blob[:-1] + bytes([blob[-1] ^ 1]))
    with pytest.raises(artifact.ArtifactError, match="sha256"):
        artifact.load(tmp_path / "model")
    result = runner.invoke(app, ["run", "--model", str(tmp_path / "model")])
    assert result.exit_code == 2 and "sha256" in said(result)


def test_missing_artifact_is_a_clear_error(tmp_path):
    with pytest.raises(artifact.ArtifactError, match="missing"):
        artifact.load(tmp_path)


def test_warm_start_continues_each_device_from_its_history(history, tmp_path):
    train(history, tmp_path / "model")
    saved = artifact.load(tmp_path / "model")
    readings, _ = read_history(history)
    spec = BUILTIN["compact-novelty"]
    live = readings[-200:]
    bank = ModelBank(spec, artifact=saved)
    warm = [e.score for e in bank.label(live).events]
    assert {e.model_version for e in bank.label(live[:1]).events} == {saved.version}
    # the same as fitting each device by hand and streaming
    expected = []
    fitted = {d: artifact.fit_detector(spec, [r for r in readings if r.device_id == d]) for d in saved.models}
    for reading in live:
        model = fitted[reading.device_id]
        expected.append(model.score_one(reading.features, reading.timestamp))
        model.learn_one(reading.features, reading.timestamp)
    np.testing.assert_allclose(warm, expected)
    # an unknown device starts from the default device's model, not from scratch
    cold = ModelBank(spec)
    assert cold.label(live[:1]).events[0].score == 0.0
    assert saved.model_for("machine-9999") is not saved.models[saved.default_device]


def test_csv_history(tmp_path):
    rows = ["timestamp,value"] + [f"2024-01-01 00:{i // 60:02d}:{i % 60:02d},{np.sin(i / 5):.4f}" for i in range(600)]
    rows.append("2024-01-01 01:00:00,not-a-number")
    (tmp_path / "pump.csv").write_text("\n".join(rows) + "\n")
    result = train(tmp_path / "pump.csv", tmp_path / "model")
    assert "rows=600 devices=1" in result.output
    assert artifact.load(tmp_path / "model").default_device == "pump"
