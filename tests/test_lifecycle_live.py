"""Lifecycle changes while the flow runs: --shadow on the CLI, the module twin's modelUri, shadowUri
and promoteShadow."""

import time

import orjson
import pytest
from typer.testing import CliRunner

from edgewatch.azure.twin import TwinControls
from edgewatch.cli import app
from edgewatch.config import FlowSettings
from edgewatch.flows.anomaly import LiveControls
from edgewatch.flows.lifecycle import SHADOW_REPORT
from edgewatch.flows.reports import read_report
from edgewatch.online_models import artifact
from edgewatch.online_models.registry import BUILTIN
from edgewatch.schema import RawMessage, SourceRef, parse_message
from edgewatch.simulator import Fleet

runner = CliRunner()


def fleet_readings(devices=4, ticks=600, seed=9):
    fleet = Fleet(devices=devices, seed=seed, fault_rate=0.0)
    return [
        parse_message(RawMessage(r.key, r.value, r.headers, *SourceRef("t", 0, i, r.timestamp_ms)))
        for i, r in enumerate(fleet.records(devices * ticks))
    ]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """Two saved compact-novelty models (the default detector has no data format yet): v1 on 300 ticks, v2 on 600."""
    root = tmp_path_factory.mktemp("models")
    readings = fleet_readings()
    saved = {}
    for name, ticks in (("v1", 300), ("v2", 600)):
        fitted = artifact.train(BUILTIN["compact-novelty"], readings[: 4 * ticks])
        saved[name] = (root / name, artifact.save(fitted, root / name).version)
    return saved


def test_run_with_a_shadow_writes_the_challengers_labels_beside_the_champions(tmp_path, models):
    stream = tmp_path / "stream.jsonl"
    args = ["simulate", "--devices", "4", "--rate", "40", "--duration", "10", "--out", str(stream)]
    assert runner.invoke(app, args).exit_code == 0
    out = tmp_path / "labeled.jsonl"
    (v1, v1_version), (v2, v2_version) = models["v1"], models["v2"]
    args = ["run", "--replay", str(stream), "--out", str(out), "--model", str(v1), "--shadow", str(v2),
            "--model-cache-dir", str(tmp_path / "cache")]  # fmt: skip
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    labeled = [orjson.loads(line) for line in out.read_bytes().splitlines()]
    shadow = [orjson.loads(line) for line in out.with_suffix(".shadow.jsonl").read_bytes().splitlines()]
    assert len(labeled) == len(shadow) == 400
    assert {e["model"]["version"] for e in labeled} == {v1_version}
    assert {s["challenger"]["model"]["version"] for s in shadow} == {v2_version}
    assert {s["champion"]["version"] for s in shadow} == {v1_version}
    by_offset = {e["source"]["offset"]: e for e in labeled}
    for s in shadow:  # the champion's side of each shadow event is the labeled event's
        assert s["champion"]["is_anomaly"] == by_offset[s["source"]["offset"]]["is_anomaly"]
        assert s["agrees"] == (s["champion"]["is_anomaly"] == s["challenger"]["is_anomaly"])
    assert max(s["device"]["readings"] for s in shadow) == 100
    figures = read_report(tmp_path / "cache" / SHADOW_REPORT)  # what `edgewatch retrain` reads
    assert figures["challenger"] == v2_version and figures["readings"] == 400
    assert figures["agreement"] == sum(s["agrees"] for s in shadow) / 400

    bad = runner.invoke(app, ["run", "--replay", str(stream), "--out", str(out), "--shadow", str(tmp_path)])
    assert bad.exit_code != 0 and "--shadow" in bad.output and "Traceback" not in bad.output


def test_the_module_twin_rolls_out_shadows_and_promotes(tmp_path, models):
    (v1, v1_version), (v2, v2_version) = models["v1"], models["v2"]
    settings = FlowSettings(model_dir=v1, model_cache_dir=tmp_path / "cache")
    controls = LiveControls(artifact=artifact.load(v1))
    twin = TwinControls(settings, controls, None)
    assert twin.reported()["modelVersion"] == v1_version

    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / artifact.METADATA_FILE).write_text("{}")
    reported = twin.apply({"$version": 2, "modelUri": str(broken)}, complete=False)
    assert reported["status"] == "error" and "pulling" in reported["error"] and v1_version in reported["error"]
    assert reported["modelVersion"] == v1_version and controls.generation == 0  # the running version stays

    reported = twin.apply({"$version": 3, "modelUri": None, "shadowUri": str(v2)}, complete=False)
    assert reported["status"] == "ok" and reported["shadowVersion"] == v2_version
    assert controls.challenger.version == v2_version and controls.generation == 0

    reported = twin.apply({"$version": 4, "promoteShadow": 1}, complete=False)
    assert reported["modelVersion"] == v2_version and reported["promotedShadow"] == 1
    assert reported["shadowVersion"] is None and controls.plan.promoted == controls.generation == 1
    # a desired property is state: the same request number again (a resync) promotes nothing
    reported = twin.apply({"$version": 4, "promoteShadow": 1, "shadowUri": None}, complete=True)
    assert reported["status"] == "ok" and controls.generation == 1
    reported = twin.apply({"$version": 5, "promoteShadow": 2}, complete=False)
    assert "no challenger" in reported["error"] and reported["modelVersion"] == v2_version

    reported = twin.apply({"$version": 6, "promoteShadow": None, "modelUri": str(v1)}, complete=False)
    assert reported["status"] == "ok" and reported["modelVersion"] == v1_version and reported["modelUri"] == str(v1)
    assert controls.artifact.version == v1_version and controls.generation == 2


def test_a_flow_follows_the_registrys_aliases_and_keeps_its_models_when_it_is_out_of_reach(monkeypatch, tmp_path):
    """What the registry says, applied live: a new challenger shadows, the champion moved onto it
    promotes it, moved elsewhere rolls out, the challenger gone stops the shadow; a registry out of
    reach changes nothing (the follower's thread logs it and tries again)."""
    from edgewatch.registry import RegistryError
    from edgewatch.registry import resolve as resolve_module
    from edgewatch.registry.follow import RegistryFollower

    fitted = {version: artifact.train(BUILTIN["robust-zscore"], fleet_readings(ticks=20)) for version in "123"}
    for version, model in fitted.items():
        model.version = f"m{version}"
    aliases = {"champion": "1"}
    monkeypatch.setattr(resolve_module, "alias_versions", lambda name, uri: dict(aliases))
    monkeypatch.setattr(
        resolve_module, "resolve_model", lambda uri, *a: type("R", (), {"artifact": fitted[uri.rsplit("/", 1)[1]]})
    )
    controls = LiveControls(artifact=fitted["1"])
    follower = RegistryFollower(controls, "pumps", "1", tmp_path)
    follower.check()
    assert controls.generation == 0 and controls.challenger is None  # nothing changed
    aliases["challenger"] = "2"
    follower.check()
    assert controls.challenger.version == "m2" and controls.generation == 0
    aliases["champion"] = "2"
    follower.check()
    assert controls.plan.promoted == controls.generation == 1 and controls.artifact.version == "m2"
    aliases.update(challenger="3")
    follower.check()
    del aliases["challenger"]
    follower.check()
    assert controls.challenger is None
    aliases["champion"] = "1"

    def unreachable(name, uri):
        raise RegistryError("the registry is unreachable (connection refused)")

    monkeypatch.setattr(resolve_module, "alias_versions", unreachable)
    follower.every = 0.01
    follower.start()
    time.sleep(0.1)
    follower.stop()
    assert controls.artifact.version == "m2" and controls.generation == 1  # the running models stay
    monkeypatch.setattr(resolve_module, "alias_versions", lambda name, uri: dict(aliases))
    follower.check()
    assert controls.artifact.version == "m1" and controls.generation == 2  # a rollout (warmed in the shards)
    assert [what for what, _ in follower.applied] == ["shadow", "promote-shadow", "shadow", "shadow-stop", "rollout"]
