import orjson
import pytest
from typer.testing import CliRunner

from edgewatch.cli import app
from tests.support.cli import said

runner = CliRunner()
COMMANDS = [
    "broker",
    "simulate",
    "run",
    "demo",
    "bench",
    "train",
    "evaluate",
    "evaluate nab",
    "data",
    "data fetch",
    "serve",
    "replay",
    "iotedge",
    "ui",
    "models",
    "models validate",
    "models promote",
    "models rollback",
    "models status",
]


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help(command):
    result = runner.invoke(app, [*command.split(), "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage" in result.output


def test_top_level_help_lists_commands():
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for command in COMMANDS:
        assert command.split()[0] in result.output


def test_run_rejects_bad_settings():
    result = runner.invoke(app, ["run", "--bootstrap", "no-port-here"])
    assert result.exit_code != 0
    assert "bootstrap" in result.output


def simulate_to(path, seed):
    args = ["simulate", "--devices", "5", "--rate", "100", "--duration", "4", "--seed", str(seed),
            "--fault-rate", "0.05", "--start-time", "2026-01-01T00:00:00", "--out", str(path)]  # fmt: skip
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    return path.read_bytes()


def test_simulate_records_a_deterministic_stream(tmp_path):
    first = simulate_to(tmp_path / "a.jsonl", seed=3)
    assert first == simulate_to(tmp_path / "b.jsonl", seed=3)
    assert first != simulate_to(tmp_path / "c.jsonl", seed=4)
    records = [orjson.loads(line) for line in first.splitlines()]
    assert len(records) == 400
    assert records[0]["key"] == "machine-0000"
    assert set(records[0]["headers"]) == {"sequenceNumber", "batchId", "edgewatch-fault"}
    assert records[0]["timestamp_ms"] == 1767225600000
    assert orjson.loads(records[0]["value"])["timeCreated"] == "2026-01-01T00:00:00.000000Z"
    assert any(record["headers"]["edgewatch-fault"] for record in records)


def test_run_refuses_a_recovery_directory_of_another_shard_count(tmp_path):
    from edgewatch.app import init_recovery_dir

    init_recovery_dir(tmp_path, shards=1)
    result = runner.invoke(app, ["run", "--recovery-dir", str(tmp_path), "--shards", "2"])
    assert result.exit_code == 2
    assert "1 shards, not 2" in said(result)
