"""The flow's recovery directory: resumes from pages, reshards offline, refuses planted pickles."""

import os
import pickle
import sqlite3
import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from edgewatch.app import Application, SetupError, init_recovery_dir
from edgewatch.config import FlowSettings
from edgewatch.flows.wiring import replay_flow
from edgewatch.simulator import Fleet
from edgewatch.state import store
from edgewatch.state.recovery import detect_manifests, verify_recovery_dir
from edgewatch.state.reshard import reshard_recovery_dir

LINES = Fleet(devices=40, seed=5, fault_rate=0.004).records(7500)
LINES = [orjson.dumps({"key": r.key.decode(), "value": r.value.decode()}) + b"\n" for r in LINES]


def run_flow(replay: Path, out: Path, shards: int, recovery: Path | None) -> dict[int, float]:
    """Run the flow over ``replay`` (resuming from ``recovery``); each offset's score."""
    settings = FlowSettings(
        shards=shards, recovery_dir=recovery, batch_size=500, snapshot_seconds=0.05, status_seconds=0
    )
    out.unlink(missing_ok=True)
    app = Application(settings, handle_signals=False, input_name=replay.name).start()
    app.run(replay_flow(app, replay, out))
    return {event["source"]["offset"]: event["score"] for event in map(orjson.loads, out.read_bytes().splitlines())}


def test_flow_resumes_from_pages_and_after_resharding_as_if_never_stopped(tmp_path):
    replay, recovery = tmp_path / "telemetry.jsonl", tmp_path / "recovery"
    replay.write_bytes(b"".join(LINES))
    expected = run_flow(replay, tmp_path / "straight.jsonl", 1, None)

    replay.write_bytes(b"".join(LINES[:2500]))
    first = run_flow(replay, tmp_path / "out.jsonl", 2, recovery)
    replay.write_bytes(b"".join(LINES[:5000]))
    second = run_flow(replay, tmp_path / "out.jsonl", 2, recovery)
    assert sorted(first) == list(range(2500)) and sorted(second) == list(range(2500, 5000))
    assert second == {offset: expected[offset] for offset in second}

    with pytest.raises(SetupError, match="holds state for 2 shards, not 3"):
        init_recovery_dir(recovery, 3)
    moved = reshard_recovery_dir(recovery, 3)
    assert len(moved) == 3 and sum(moved.values()) == 40
    assert {shard for shard, _ in store.lineages(recovery / store.STATE_DIR)} == set(moved)
    assert {key for key, _, _ in detect_manifests(recovery)} == set(moved)

    replay.write_bytes(b"".join(LINES))
    third = run_flow(replay, tmp_path / "out.jsonl", 3, recovery)
    assert sorted(third) == list(range(5000, 7500))
    assert third == {offset: expected[offset] for offset in third}


def plant(recovery: Path, step_suffix: str, payload: object) -> None:
    db = sqlite3.connect(recovery / "part-0.sqlite3")
    with db:
        changed = db.execute(
            "UPDATE snaps SET ser_change = ? WHERE step_id LIKE ?", (pickle.dumps(payload), f"%{step_suffix}")
        ).rowcount
    db.close()
    assert changed


class RunsCode:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("step", [".detect", ".in"])
def test_a_planted_pickle_in_the_recovery_directory_is_refused_before_it_runs(tmp_path, step):
    replay, recovery, marker = tmp_path / "telemetry.jsonl", tmp_path / "recovery", tmp_path / "code-ran"
    replay.write_bytes(b"".join(LINES[:1000]))
    run_flow(replay, tmp_path / "out.jsonl", 1, recovery)
    assert verify_recovery_dir(recovery) >= 2
    plant(recovery, step, RunsCode(marker))

    with pytest.raises(SetupError) as refused:
        init_recovery_dir(recovery, 1)
    assert "\n" not in str(refused.value) and "refusing to load it" in str(refused.value)

    command = [sys.executable, "-m", "edgewatch", "run", "--replay", str(replay), "--recovery-dir", str(recovery)]
    done = subprocess.run(
        [*command, "--out", str(tmp_path / "again.jsonl")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode != 0 and "refusing to load it" in " ".join(done.stderr.replace("│", " ").split())
    assert "Traceback" not in done.stderr
    assert not marker.exists(), "the planted pickle ran"
    assert not (tmp_path / "again.jsonl").exists()


def test_a_missing_page_file_is_refused_instead_of_forgetting_devices(tmp_path):
    replay, recovery = tmp_path / "telemetry.jsonl", tmp_path / "recovery"
    replay.write_bytes(b"".join(LINES[:1000]))
    run_flow(replay, tmp_path / "out.jsonl", 1, recovery)
    for path in store.lineages(recovery / store.STATE_DIR).values():
        store.remove(path)
    with pytest.raises(SetupError, match="is missing: the device state of shard-0000"):
        init_recovery_dir(recovery, 1)
