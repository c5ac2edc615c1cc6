"""Recorded streams: `edgewatch replay` to Kafka at their pace, `edgewatch run --replay` without a broker."""

import time

import orjson
import pytest
from typer.testing import CliRunner

from edgewatch.cli import app
from edgewatch.config import data_dir
from edgewatch.connectors.files import read_messages
from edgewatch.schema import RawMessage, Reading, parse_message
from tests.support.cli import said
from tests.support.kafka import consume_all

runner = CliRunner()


def record(tmp_path, seconds=10, devices=5, rate=50, **extra):
    path = tmp_path / "stream.jsonl"
    args = ["simulate", "--devices", str(devices), "--rate", str(rate), "--duration", str(seconds),
            "--start-time", "2026-01-01T00:00:00", "--out", str(path)]  # fmt: skip
    for name, value in extra.items():
        args += [f"--{name.replace('_', '-')}", str(value)]
    assert runner.invoke(app, args).exit_code == 0
    return path


def test_replay_keeps_the_recorded_pace_divided_by_speed(kafka_bootstrap, topic_names, tmp_path):
    path = record(tmp_path, seconds=10)  # 500 messages over 10 s of source time
    topic = topic_names("replayed")
    started = time.monotonic()
    result = runner.invoke(
        app, ["replay", str(path), "--speed", "10", "--bootstrap", kafka_bootstrap, "--topic", topic]
    )
    elapsed = time.monotonic() - started
    assert result.exit_code == 0, result.output
    assert "sent=500" in result.output
    assert 0.8 < elapsed < 3.0, elapsed  # about 1 s (connections and flushing add a little)
    out = consume_all(kafka_bootstrap, [topic])  # the replay has ended: all it sent
    assert sorted(m.value for m in out) == sorted(m.value for m in read_messages(path))
    assert {m.key for m in out} == {f"machine-{i:04d}".encode() for i in range(5)}


def test_replay_as_fast_as_possible_and_bad_speed(kafka_bootstrap, topic_names, tmp_path):
    path = record(tmp_path, seconds=60)
    started = time.monotonic()
    args = ["replay", str(path), "--speed", "max", "--bootstrap", kafka_bootstrap, "--topic", topic_names("fast")]
    assert runner.invoke(app, args).exit_code == 0
    assert time.monotonic() - started < 5.0
    assert runner.invoke(app, ["replay", str(path), "--speed", "-2"]).exit_code == 2


def test_run_on_a_file_writes_labeled_jsonl_without_a_broker(tmp_path):
    path = record(tmp_path, seconds=20, malformed_rate=0.02, fault_rate=0.01)
    out = tmp_path / "labeled.jsonl"
    result = runner.invoke(app, ["run", "--replay", str(path), "--out", str(out), "--bootstrap", "127.0.0.1:1"])
    assert result.exit_code == 0, result.output
    labeled = [orjson.loads(line) for line in out.read_bytes().splitlines()]
    dead = [orjson.loads(line) for line in out.with_suffix(".deadletter.jsonl").read_bytes().splitlines()]
    assert len(labeled) + len(dead) == 1000
    assert dead and all(d["headers"]["edgewatch.error.reason"] for d in dead)
    assert {e["source"]["offset"] for e in labeled} | {
        int(d["headers"]["edgewatch.error.offset"]) for d in dead
    } == set(range(1000))
    assert labeled[0]["model"]["name"] == "relational-novelty" and "score" in labeled[0]


def test_nab_and_cmapss_files_replay_as_messages(tmp_path):
    root = data_dir()
    nab_file = root / "nab" / "data" / "realKnownCause" / "nyc_taxi.csv"
    cmapss_file = root / "cmapss" / "train_FD001.txt"
    if not (nab_file.exists() and cmapss_file.exists()):
        pytest.skip(f"NAB/CMAPSS data not found under {root} (set EDGEWATCH_DATA_DIR or run `edgewatch data fetch`)")
    nab = [parse_message(m) for m in read_messages(nab_file)]
    assert len(nab) == 10320 and all(isinstance(r, Reading) for r in nab)
    assert nab[0].device_id == "nyc_taxi" and nab[0].features == {"value": 10844.0}
    assert nab[1].timestamp - nab[0].timestamp == 1800.0
    engines = [parse_message(m) for m in read_messages(cmapss_file, cycle_seconds=10.0)]
    assert len(engines) == 20631 and all(isinstance(r, Reading) for r in engines)
    assert engines[0].device_id == "engine-001" and engines[1].device_id == "engine-002"  # engines run side by side
    assert len(engines[0].features) == 24 and engines[0].features["Sensor2"] == 641.82
    out = tmp_path / "engines.jsonl"
    result = runner.invoke(app, ["run", "--replay", str(cmapss_file), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert len(out.read_bytes().splitlines()) == 20631


def test_simulated_temperature_sensor_messages_through_iot_hubs_event_hubs_endpoint():
    """The Azure module's exact body and properties, as IoT Hub's Event Hubs-compatible endpoint
    delivers them: no key, the sender in system-property headers."""
    body = (
        b'{"machine":{"temperature":101.9394875236429,"pressure":10.0463467464},"ambient":'
        b'{"temperature":20.94262027606395,"humidity":24},"timeCreated":"2026-11-23T01:05:00.1234567Z"}'
    )
    headers = [("sequenceNumber", b"17"), ("batchId", b"8f1c2a4e-5f0b-4c1e-9a1d-3f3b2c1d0e9f"),
               ("iothub-connection-device-id", b"edge-gw-1"),
               ("iothub-connection-module-id", b"SimulatedTemperatureSensor")]  # fmt: skip
    reading = parse_message(RawMessage(None, body, headers, "iothub", 0, 0, None))
    assert reading.device_id == "edge-gw-1/SimulatedTemperatureSensor"
    assert reading.features["machine.temperature"] == 101.9394875236429
    assert reading.timestamp == pytest.approx(1795395900.123456)


def test_a_broken_line_of_a_recording_is_a_dead_letter_not_the_end_of_the_run(tmp_path):
    """Truncated records, bytes that are not UTF-8, a CSV row too short or too long: each one
    a dead letter with its reason, the rest labeled (each once stopped the flow with a traceback)."""
    stream = record(tmp_path, seconds=2, devices=2)
    good = stream.read_bytes().splitlines()
    bare = b'{"deviceId": "pump-5", "timestamp": 1796100000, "values": {"rpm": 1450}}'
    stream.write_bytes(b"\n".join([good[0], b'{"key": "a", "value":', b"\xff\xfe garbage", bare, *good[1:]]) + b"\n")
    table = tmp_path / "pump.csv"
    table.write_text("timestamp,rpm\n2026-01-01T00:00:00,1450\n2026-01-01T00:00:01\n2026-01-01T00:00:02,1,2\n")
    reasons = {}
    for path in (stream, table):
        out = tmp_path / f"{path.stem}.labeled.jsonl"
        result = runner.invoke(app, ["run", "--replay", str(path), "--out", str(out)])
        assert result.exit_code == 0, result.output
        dead = [
            orjson.loads(line)["headers"] for line in out.with_suffix(".deadletter.jsonl").read_bytes().splitlines()
        ]
        reasons[path.suffix] = [d["edgewatch.error.reason"] for d in dead]
        labeled = [orjson.loads(line) for line in out.read_bytes().splitlines()]
        assert len(labeled) + len(dead) == len(list(read_messages(path)))
    assert [r.split(":")[0] for r in reasons[".jsonl"]] == ["not JSON", "not UTF-8"]  # the bare message is labeled
    assert reasons[".csv"] == [
        "values.rpm must be a number, got null",
        "values.(fields beyond the header) must be a number, got array",
    ]


@pytest.mark.parametrize(
    ("name", "text", "expected"),
    [
        ("engines.txt", "1 1 " + " ".join(["0.5"] * 24) + "\n1 2 0.5\n", "expected 26 columns, got 3"),
        ("engines.txt", "1 1 " + " ".join(["x"] * 24) + "\n", "expected an engine, a cycle and numbers"),
        ("pump.csv", "time,rpm\n1,2\n", "a CSV history needs a header row with a 'timestamp' column"),
    ],
)
def test_a_file_that_cannot_be_replayed_is_refused_before_the_flow_starts(tmp_path, name, text, expected):
    (tmp_path / name).write_text(text)
    result = runner.invoke(app, ["run", "--replay", str(tmp_path / name), "--out", str(tmp_path / "o.jsonl")])
    assert result.exit_code == 2, result.output
    assert expected in said(result)
