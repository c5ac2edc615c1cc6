"""`edgewatch train` artifacts and the warm start of `edgewatch run --model`."""

import hashlib
import io
import json
import pickle
import re

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
    assert metadata["detector"] == "relational-novelty"
    assert metadata["parameters"]["accept_after"] == 3600.0 and "memory" in str(metadata["parameters"]["novelty"])
    assert metadata["version"].startswith("relational-novelty-") and metadata["version"] in result.output
    assert sorted(path.name for path in (tmp_path / "model").iterdir()) == ["arrays.npz", "model.json"]
    assert len(metadata["files"]["arrays.npz"]) == 64
    assert sorted(d for group in metadata["groups"] for d in group["devices"]) == [f"machine-000{i}" for i in range(4)]
    training = metadata["training"]
    assert training["devices"] == 4
    assert 1150 < training["rows"] < 1200  # 1200 messages, ~1 % of them malformed and skipped
    assert training["first_timestamp"] == "2026-01-01T00:00:00.000000Z"
    assert training["last_timestamp"].startswith("2026-01-01T00:00:29")
    assert "skipped" in result.stderr


def test_a_history_that_ends_in_the_future_is_flagged(history, tmp_path):
    """`simulate --out` records from now on: trained at once, that history ends after now, and live
    readings timed before its end alarm every device of the README's recipe on its first reading."""
    assert "warning" not in train(history, tmp_path / "past").stderr
    recording = tmp_path / "from-now.jsonl"
    args = ["simulate", "--devices", "2", "--rate", "2", "--duration", "600", "--fault-rate", "0", "--out"]
    assert runner.invoke(app, [*args, str(recording)]).exit_code == 0
    warned = train(recording, tmp_path / "future").stderr
    assert "the history ends in the future" in warned and "simulate --start-time" in warned
    assert max(map(len, warned.splitlines())) <= 80


def test_a_replay_older_than_the_models_history_is_flagged(history, tmp_path, caplog, monkeypatch):
    """The model's own history replayed through it: every device steps back in time to its first
    reading and alarms; the flow says why once (not for live data recorded after the history)."""
    import threading

    from edgewatch.flows import anomaly

    train(history, tmp_path / "model")
    later = tmp_path / "later.jsonl"
    args = ["simulate", "--devices", "4", "--rate", "40", "--duration", "5", "--seed", "5", "--fault-rate", "0"]
    assert runner.invoke(app, [*args, "--start-time", "2026-01-01T01:00:00", "--out", str(later)]).exit_code == 0
    said = {}
    for name, stream in [("later", later), ("own history", history)]:
        monkeypatch.setattr(anomaly, "_said_before_history_end", threading.Event())
        caplog.clear()
        with caplog.at_level("WARNING", logger="edgewatch.flows.anomaly"):
            out = tmp_path / f"{stream.stem}-labeled.jsonl"
            run = ["run", "--replay", str(stream), "--model", str(tmp_path / "model"), "--out", str(out)]
            assert runner.invoke(app, run).exit_code == 0
        said[name] = [
            r.getMessage() for r in caplog.records if "before the end of the model's history" in r.getMessage()
        ]
    assert said["later"] == []
    (message,) = said["own history"]
    assert message.startswith("readings from 2026-01-01T00:00:00.000000Z, before the end of the model's history")


def test_tampered_artifact_is_refused(history, tmp_path):
    train(history, tmp_path / "model")
    blob = (tmp_path / "model" / "arrays.npz").read_bytes()
    (tmp_path / "model" / "arrays.npz").write_bytes(blob[:-1] + bytes([blob[-1] ^ 1]))
    with pytest.raises(artifact.ArtifactError, match="sha256"):
        artifact.load(tmp_path / "model")
    result = runner.invoke(app, ["run", "--model", str(tmp_path / "model")])
    assert result.exit_code == 2 and "sha256" in said(result)


def test_a_model_from_before_a_later_switch_loads_and_other_parameters_are_refused(history, tmp_path):
    """A parameter added since a model was trained takes its default; a parameter that differs refuses it."""
    train(history, tmp_path / "model")
    manifest = tmp_path / "model" / "model.json"
    metadata = json.loads(manifest.read_text())
    del metadata["parameters"]["clear_after"]
    manifest.write_text(json.dumps(metadata))
    assert artifact.load(tmp_path / "model").spec.name == "relational-novelty"
    metadata["parameters"]["accept_after"] = 60.0
    manifest.write_text(json.dumps(metadata))
    with pytest.raises(artifact.ArtifactError, match="other relational-novelty parameters"):
        artifact.load(tmp_path / "model")


def test_a_model_from_before_the_cube_root_recalibrates_its_relations(history, tmp_path):
    """Saved before ``relation_cube_root``, a model's calibration of the relations' statistic (its square root)
    does not hold for the cube root: it loads with that calibration started anew, the rest kept."""
    train(history, tmp_path / "model")
    device = artifact.load(tmp_path / "model").default_device
    manifest = tmp_path / "model" / "model.json"
    metadata = json.loads(manifest.read_text())
    features = tuple(metadata["groups"][0]["features"])
    current = artifact.load(tmp_path / "model").models[device].export_arrays(features)
    del metadata["parameters"]["relation_cube_root"]
    manifest.write_text(json.dumps(metadata))
    older = artifact.load(tmp_path / "model").models[device].export_arrays(features)
    assert current["rg_n"] > 0 and older["rg_n"] == older["rg_mu"] == older["rg_var"] == 0.0
    np.testing.assert_array_equal(older["cov"], current["cov"])
    np.testing.assert_array_equal(older["rel_n"], current["rel_n"])


def test_missing_artifact_is_a_clear_error(tmp_path):
    with pytest.raises(artifact.ArtifactError, match="missing"):
        artifact.load(tmp_path)


def test_warm_start_continues_each_device_from_its_history(history, tmp_path):
    train(history, tmp_path / "model")
    saved = artifact.load(tmp_path / "model")
    readings, _ = read_history(history)
    spec = saved.spec  # the default detector's
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


def test_robust_zscore_artifacts_are_arrays_too(history, tmp_path):
    readings, _ = read_history(history)
    spec = BUILTIN["robust-zscore"]
    saved = artifact.save(artifact.train(spec, readings[:-100]), tmp_path / "model")
    loaded = artifact.load(tmp_path / "model")
    assert [e.score for e in ModelBank(spec, artifact=loaded).label(readings[-100:]).events] == [
        e.score for e in ModelBank(spec, artifact=saved).label(readings[-100:]).events
    ]


def test_a_detector_without_arrays_is_not_saved(history, tmp_path):
    result = runner.invoke(
        app, ["train", "--input", str(history), "--out", str(tmp_path / "m"), "--detector", "half-space-trees"]
    )
    assert result.exit_code == 2 and "cannot be saved as data" in said(result)
    assert not (tmp_path / "m").exists()


# --- forged artifacts: an attacker who can write the model directory (and recompute its sha256)


class Payload:
    """Unpickling this creates the marker file: proof that code ran."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def refused_everywhere(model_dir, marker, match, env=None):
    """artifact.load, `run --model` and `serve --model` refuse the directory, and nothing ran."""
    with pytest.raises(artifact.ArtifactError, match=re.escape(match)):
        artifact.load(model_dir)
    for command in (["run", "--model", str(model_dir)], ["serve", "--model", str(model_dir)]):
        result = runner.invoke(app, command, env=env)
        assert result.exit_code == 2 and match in said(result), (command, result.output)
        assert "Traceback" not in result.output
    assert not marker.exists(), "loading the model ran code"


def forge(model_dir, metadata_changes: dict, arrays: bytes | None = None):
    """Rewrite a trained model's files the way an attacker would, with matching sha256."""
    metadata = json.loads((model_dir / "model.json").read_text())
    if arrays is not None:
        (model_dir / "arrays.npz").write_bytes(arrays)
        metadata["files"] = {"arrays.npz": hashlib.sha256(arrays).hexdigest()}
    metadata.update(metadata_changes)
    (model_dir / "model.json").write_text(json.dumps(metadata))


def test_a_forged_pickle_model_runs_no_code(history, tmp_path):
    train(history, tmp_path / "model")
    marker = tmp_path / "pwned"
    blob = pickle.dumps({"models": Payload(marker)})
    (tmp_path / "model" / "model.pkl").write_bytes(blob)
    forge(tmp_path / "model", {"format": 1, "sha256": hashlib.sha256(blob).hexdigest()})
    refused_everywhere(tmp_path / "model", marker, "unsupported artifact format 1")


def test_forged_arrays_with_a_pickled_object_run_no_code(history, tmp_path):
    train(history, tmp_path / "model")
    marker = tmp_path / "pwned"
    buffer = io.BytesIO()
    np.savez(buffer, **{"g0.n": np.array([Payload(marker)], dtype=object)})  # numpy pickles object arrays
    forge(tmp_path / "model", {}, arrays=buffer.getvalue())
    refused_everywhere(tmp_path / "model", marker, "g0.n.npy must be float64 (4, 4), found object")


def test_arrays_of_the_wrong_shape_are_refused(history, tmp_path):
    train(history, tmp_path / "model")
    with np.load(tmp_path / "model" / "arrays.npz") as stored:
        arrays = {name: stored[name] for name in stored.files}
    arrays["g0.n"] = arrays["g0.n"][:, :1]
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    forge(tmp_path / "model", {}, arrays=buffer.getvalue())
    refused_everywhere(tmp_path / "model", tmp_path / "pwned", "g0.n.npy must be float64 (4, 4), found float64 (4, 1)")


def test_a_model_saved_before_a_later_state_field_loads_it_at_its_initial_value(history, tmp_path):
    """A model trained before the level channel (no ``level_rate``/``level_hold``/``clear_on_return``/...,
    no ``drift`` arrays) still loads with those parameters' defaults; its devices start that channel empty, and
    any other missing array is still refused."""
    train(history, tmp_path / "model")
    with np.load(tmp_path / "model" / "arrays.npz") as stored:
        arrays = {name: stored[name] for name in stored.files if not name.endswith(".drift")}
    assert len(arrays) < len(np.load(tmp_path / "model" / "arrays.npz").files)
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    metadata = json.loads((tmp_path / "model" / "model.json").read_text())
    later = ("level_rate", "level_hold", "clear_on_return", "resolution_spread", "shape_resolution")
    parameters = {k: v for k, v in metadata["parameters"].items() if k not in later}
    forge(tmp_path / "model", {"parameters": parameters}, arrays=buffer.getvalue())
    loaded = artifact.load(tmp_path / "model")
    device = loaded.default_device
    model = loaded.models[device]
    features = loaded.features[device]
    assert model.clear_on_return and model.resolution_spread and model.level_rate == 0.05  # today's defaults
    assert not model.export_arrays(features)["drift"].any()  # the initial value: nothing learned yet
    bank = ModelBank(loaded.spec, artifact=loaded)
    assert bank is not None
    del arrays["g0.n"]
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    forge(tmp_path / "model", {}, arrays=buffer.getvalue())
    with pytest.raises(artifact.ArtifactError, match=r"g0\.n\.npy is missing"):
        artifact.load(tmp_path / "model")


def test_a_forged_detector_name_imports_nothing(history, tmp_path, monkeypatch):
    train(history, tmp_path / "model")
    marker = tmp_path / "pwned"
    (tmp_path / "evil_detector.py").write_text(f"open({str(marker)!r}, 'w')\ndef factory(): pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    forge(tmp_path / "model", {"detector": "evil_detector:factory"})
    refused_everywhere(tmp_path / "model", marker, "only built-in detectors")


# --- signed models


def keypair(tmp_path, name):
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    key = Ed25519PrivateKey.generate()
    private = tmp_path / f"{name}.pem"
    private.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    public = key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    (tmp_path / f"{name}.pub").write_bytes(public)
    return private, tmp_path / f"{name}.pub"


def test_signed_models_load_only_with_a_valid_signature(history, tmp_path, monkeypatch):
    private, public = keypair(tmp_path, "release")
    _, other_public = keypair(tmp_path, "other")
    model = tmp_path / "model"
    result = runner.invoke(app, ["train", "--input", str(history), "--out", str(model), "--sign-key", str(private)])
    assert result.exit_code == 0, result.output
    assert (model / "model.sig").exists()
    # the key as a file or as PEM text (an environment variable, a Kubernetes Secret)
    assert artifact.load(model, public).version == artifact.load(model, public.read_text()).version
    with pytest.raises(artifact.ArtifactError, match="does not verify"):
        artifact.load(model, other_public)
    # what `serve` checks before it starts, and what each of its workers loads
    from edgewatch.serving import check_model
    from edgewatch.serving.score import build_scorer

    monkeypatch.setenv("EDGEWATCH_MODEL_PUBLIC_KEY", public.read_text())
    check_model(model)
    assert build_scorer({"EDGEWATCH_MODEL_DIR": str(model)}).bank.version == artifact.load(model).version
    monkeypatch.delenv("EDGEWATCH_MODEL_PUBLIC_KEY")
    refused = {"EDGEWATCH_MODEL_PUBLIC_KEY": str(other_public)}
    for command in (["run", "--model", str(model)], ["serve", "--model", str(model)]):
        result = runner.invoke(app, command, env=refused)
        assert result.exit_code == 2 and "does not verify with model_public_key" in said(result)


def test_a_modified_signed_model_is_refused(history, tmp_path):
    private, public = keypair(tmp_path, "release")
    model = tmp_path / "model"
    runner.invoke(app, ["train", "--input", str(history), "--out", str(model), "--sign-key", str(private)])
    marker = tmp_path / "pwned"
    buffer = io.BytesIO()
    np.savez(buffer, **{"g0.n": np.array([Payload(marker)], dtype=object)})
    forge(model, {}, arrays=buffer.getvalue())  # sha256 recomputed: only the signature can tell
    with pytest.raises(artifact.ArtifactError, match="does not verify"):
        artifact.load(model, public)
    assert not marker.exists()


def test_an_unsigned_model_is_refused_when_a_key_is_set(history, tmp_path):
    _, public = keypair(tmp_path, "release")
    train(history, tmp_path / "model")
    env = {"EDGEWATCH_MODEL_PUBLIC_KEY": str(public)}
    for command in (["run", "--model", str(tmp_path / "model")], ["serve", "--model", str(tmp_path / "model")]):
        result = runner.invoke(app, command, env=env)
        assert result.exit_code == 2 and "is not signed" in said(result), result.output


def test_a_signing_key_that_is_not_ed25519_is_a_clear_error(history, tmp_path):
    (tmp_path / "key.pem").write_text("not a key")
    result = runner.invoke(
        app, ["train", "--input", str(history), "--out", str(tmp_path / "m"), "--sign-key", str(tmp_path / "key.pem")]
    )
    assert result.exit_code == 2 and "signing key" in said(result)


def test_an_archive_that_is_not_a_zip_is_refused(history, tmp_path):
    train(history, tmp_path / "model")
    forge(tmp_path / "model", {}, arrays=b"\x80\x04not a zip at all")
    refused_everywhere(tmp_path / "model", tmp_path / "pwned", "not a numpy archive of plain arrays")


def test_a_model_saved_before_a_state_field_was_added_loads_with_its_initial_value(history, tmp_path):
    """Arrays saved before a field existed (e.g. the calibrations' largest learned value): the field
    starts at its initial value, the other fields are kept."""
    train(history, tmp_path / "model")
    blob = (tmp_path / "model" / "arrays.npz").read_bytes()
    with np.load(io.BytesIO(blob)) as stored:
        kept = {name: stored[name] for name in stored.files if not name.endswith(("profile_max", "_g_max"))}
    assert len(kept) < len(np.load(io.BytesIO(blob)).files)
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **kept)
    (tmp_path / "model" / "arrays.npz").write_bytes(buffer.getvalue())
    manifest = tmp_path / "model" / "model.json"
    metadata = json.loads(manifest.read_text())
    metadata["files"]["arrays.npz"] = hashlib.sha256(buffer.getvalue()).hexdigest()
    manifest.write_text(json.dumps(metadata))
    loaded = artifact.load(tmp_path / "model")
    device = loaded.default_device
    row = loaded.models[device].export_arrays(loaded.features[device])
    assert not row["profile_max"].any() and row["n"].any()
