"""Every failure a user can cause gives one line that says what, where and what to do, and a non-zero exit."""

from __future__ import annotations

import re
import socket
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from edgewatch.cli import app
from tests.support.cli import said

runner = CliRunner()


def edgewatch(*args: str, timeout: float = 60.0) -> subprocess.CompletedProcess:
    """The command as a user runs it (its errors go through ``main``)."""
    return subprocess.run(
        [sys.executable, "-m", "edgewatch", *args], capture_output=True, text=True, timeout=timeout, check=False
    )


def one_line(text: str) -> str:
    lines = [line for line in text.splitlines() if line.strip()]
    assert "Traceback" not in text, text
    assert len(lines) == 1, text
    return lines[0]


def record(path):
    result = runner.invoke(app, ["simulate", "--devices", "2", "--rate", "100", "--duration", "1", "--out", str(path)])
    assert result.exit_code == 0, result.output
    return path


@pytest.fixture
def recording(tmp_path):
    return record(tmp_path / "stream.jsonl")


@pytest.fixture(scope="module")
def without_broker(tmp_path_factory) -> dict[str, subprocess.CompletedProcess]:
    """``run``, ``simulate`` and ``replay`` as a user runs them, against a broker that is not running:
    the three processes side by side (each spends its time starting; one after another took three
    starts of the suite's time)."""
    recorded = record(tmp_path_factory.mktemp("recording") / "stream.jsonl")
    commands = {"run": ["run"], "simulate": ["simulate", "--duration", "1"], "replay": ["replay", str(recorded)]}
    started = {
        command: subprocess.Popen(
            [sys.executable, "-m", "edgewatch", *args, "--bootstrap", "127.0.0.1:1"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for command, args in commands.items()
    }
    try:
        finished = {}
        for command, process in started.items():
            stdout, stderr = process.communicate(timeout=60)
            finished[command] = subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)
        return finished
    finally:
        for process in started.values():
            process.kill()
            process.wait()


@pytest.mark.parametrize("command", ["run", "simulate", "replay"])
def test_a_broker_that_is_not_running(command, without_broker):
    result = without_broker[command]
    assert result.returncode == 1
    assert one_line(result.stderr) == (
        "error: cannot reach Kafka at 127.0.0.1:1: "
        "is the broker running, and is --bootstrap (EDGEWATCH_BOOTSTRAP) right?"
    )


def test_a_topic_typo_is_not_created(kafka_bootstrap, topic_names):
    typo = topic_names("telemetr")
    result = edgewatch("run", "--bootstrap", kafka_bootstrap, "--in-topic", typo)
    assert result.returncode == 1
    assert f"topic {typo!r} does not exist" in one_line(result.stderr)
    assert "--create-topics" in result.stderr


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["run", "--detector", "no-such-detector"], "unknown detector 'no-such-detector'"),
        (["simulate", "--rate", "0", "--out", "x.jsonl"], "--rate: Input should be greater than 0"),
        (["simulate", "--devices", "-5", "--out", "x.jsonl"], "--devices: Input should be greater than or equal to 1"),
        (["simulate", "--out", "/no/such/folder/x.jsonl"], "folder /no/such/folder does not exist"),
        (["run", "--replay", "README.md"], "expected a .jsonl (simulate --out), .csv or CMAPSS .txt file"),
        (["run", "--replay", "missing.jsonl"], "missing.jsonl does not exist"),
        (["replay", "--speed", "fast", "x.jsonl"], "--speed must be a positive number or max"),
        (["iotedge"], "not inside an IoT Edge module"),
    ],
)
def test_bad_options_and_environments(args, expected, monkeypatch):
    for name in ("IOTEDGE_IOTHUBHOSTNAME", "EdgeHubConnectionString", "EDGEWATCH_IOTHUB_CONNECTION_STRING"):
        monkeypatch.delenv(name, raising=False)
    result = runner.invoke(app, args)
    assert result.exit_code == 2, result.output
    assert expected in said(result)


def test_a_metrics_port_in_use_is_named(recording, tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = runner.invoke(
            app, ["run", "--replay", str(recording), "--out", str(tmp_path / "l.jsonl"), "--metrics-port", str(port)]
        )
    assert result.exit_code == 2
    assert f"cannot serve metrics on 127.0.0.1:{port}" in said(result)


def test_a_recovery_directory_of_another_input(recording, tmp_path):
    state = tmp_path / "state"
    first = runner.invoke(
        app, ["run", "--replay", str(recording), "--out", str(tmp_path / "a.jsonl"), "--recovery-dir", str(state)]
    )
    assert first.exit_code == 0, first.output
    other = tmp_path / "other.jsonl"
    other.write_bytes(recording.read_bytes())
    result = runner.invoke(
        app, ["run", "--replay", str(other), "--out", str(tmp_path / "b.jsonl"), "--recovery-dir", str(state)]
    )
    assert result.exit_code == 2
    assert "holds the state of a flow reading 'stream.jsonl', not 'other.jsonl'" in said(result)


def test_broker_on_a_taken_port():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = runner.invoke(app, ["broker", "--port", str(port)])
    assert result.exit_code == 2
    assert f"port {port} on 127.0.0.1 is already in use" in said(result)


def test_version():
    from edgewatch import __version__

    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0 and result.output.strip() == f"edgewatch {__version__}"


def test_serve_names_a_missing_model_in_one_line(tmp_path):
    result = runner.invoke(app, ["serve", "--model", str(tmp_path / "nothing")])
    assert result.exit_code == 2
    assert "no model.json in" in said(result) and "is this an edgewatch model?" in said(result)


def test_data_fetch_offline_says_what_to_do(tmp_path):
    result = runner.invoke(
        app, ["data", "fetch", "nab", "--dest", str(tmp_path), "--url", "http://127.0.0.1:1/nab.zip"]
    )
    assert result.exit_code == 2
    text = said(result)
    assert "could not fetch nab from http://127.0.0.1:1/nab.zip" in text
    assert f"unpack it into {tmp_path / 'nab'}" in text


def test_a_recovery_directory_is_resharded_offline_instead_of_refused(recording, tmp_path):
    state = tmp_path / "state"
    args = ["run", "--replay", str(recording), "--out", str(tmp_path / "a.jsonl"), "--recovery-dir", str(state)]
    assert runner.invoke(app, [*args, "--shards", "2"]).exit_code == 0
    refused = runner.invoke(app, [*args, "--shards", "3"])
    assert refused.exit_code == 2 and "edgewatch recovery reshard" in said(refused)
    moved = runner.invoke(app, ["recovery", "reshard", str(state), "--shards", "3"])
    assert moved.exit_code == 0, moved.output
    assert "run with --shards 3" in moved.output
    assert runner.invoke(app, [*args, "--shards", "3"]).exit_code == 0
    assert runner.invoke(app, ["recovery", "reshard", str(tmp_path), "--shards", "2"]).exit_code == 2


def test_a_run_that_reads_nothing_says_so(kafka_bootstrap, topic_names, tmp_path):
    """A topic nothing writes to: status lines, then a warning that no message has arrived."""
    from tests.support.processes import EdgewatchProcess

    topic = topic_names("quiet")
    args = ["run", "--bootstrap", kafka_bootstrap, "--in-topic", topic, "--create-topics",
            "--status-seconds", "1", "--idle-warning-seconds", "2",
            "--out-topic", topic_names("o"), "--dlq-topic", topic_names("d")]  # fmt: skip
    with EdgewatchProcess(args, tmp_path / "run.log") as run:
        run.wait_for_output(re.escape(f"no message yet from '{topic}'"), timeout=60)
    log = (tmp_path / "run.log").read_text()
    assert "status: 0 msg/s, received 0" in log and "summary: received 0" in log


def test_a_users_mistake_is_one_line_from_the_real_command(tmp_path):
    """Through `main` (what the installed `edgewatch` runs): `error: ...` on one line and exit 2,
    not click's usage block and a box of wrapped text; a group without a command shows its help."""
    commands = {
        "bad value": ["evaluate", "skab", "--data-dir", str(tmp_path)],
        "unknown option": ["run", "--accept-after", "60"],
        "group": ["evaluate"],
    }
    started = {
        name: subprocess.Popen(
            [sys.executable, "-m", "edgewatch", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for name, args in commands.items()
    }
    finished = {name: (process.communicate(timeout=60), process.returncode) for name, process in started.items()}
    (_, stderr), code = finished["bad value"]
    assert (
        code == 2
        and one_line(stderr) == f"error: no SKAB experiments in {tmp_path / 'valve1'} (is {tmp_path} a SKAB root?)"
    )
    (_, stderr), code = finished["unknown option"]
    assert (
        code == 2 and one_line(stderr) == "error: No such option: --accept-after (see python -m edgewatch run --help)"
    )
    (stdout, stderr), code = finished["group"]
    assert "Usage: python -m edgewatch evaluate" in stdout + stderr and "skab" in stdout + stderr
