import collections

import numpy as np
import orjson
import pytest

from edgewatch.simulator import FAULT_KINDS, Fleet
from edgewatch.simulator.fleet import MALFORMED


def by_device(records):
    series = collections.defaultdict(list)
    for record in records:
        series[record.key.decode()].append(record)
    return series


def temperatures(records):
    return np.array([orjson.loads(r.value)["machine"]["temperature"] for r in records])


def test_same_seed_same_stream_different_seed_different_stream():
    first = [(r.key, r.value, r.headers) for r in Fleet(devices=10, seed=1, fault_rate=0.01).records(2000)]
    again = [(r.key, r.value, r.headers) for r in Fleet(devices=10, seed=1, fault_rate=0.01).records(2000)]
    other = [(r.key, r.value, r.headers) for r in Fleet(devices=10, seed=2, fault_rate=0.01).records(2000)]
    assert first == again
    assert first != other


def test_messages_have_the_simulated_temperature_sensor_shape():
    record = next(Fleet(devices=1, seed=0, start_time=1_767_225_600.0).records(1))
    body = orjson.loads(record.value)
    assert set(body) == {"machine", "ambient", "timeCreated"}
    assert set(body["machine"]) == {"temperature", "pressure"}
    assert set(body["ambient"]) == {"temperature", "humidity"}
    assert isinstance(body["ambient"]["humidity"], int)
    assert body["timeCreated"] == "2026-01-01T00:00:00.000000Z"
    assert [name for name, _ in record.headers] == ["sequenceNumber", "batchId", "edgewatch-fault"]


def test_healthy_machines_follow_the_modules_ramp_and_plateau():
    fleet = Fleet(devices=5, seed=3, fault_rate=0.0)
    for device, records in by_device(fleet.records(5 * 600)).items():
        temp = temperatures(records)
        steps = np.diff(temp)
        # U(-0.25, 1.25) while ramping, U(-0.5, 0.5) when hot, plus a little sensor noise
        assert steps.min() > -1.2 and steps.max() < 2.0, device
        pressure = np.array([orjson.loads(r.value)["machine"]["pressure"] for r in records])
        assert abs(np.corrcoef(temp, pressure)[0, 1]) > 0.99, "pressure is linear in temperature"
    # and machines differ: their own limits and offsets
    firsts = [temperatures(records)[0] for records in by_device(fleet.records(5)).values()]
    assert len(set(np.round(firsts, 3))) == 5


def test_every_fault_kind_is_injected_and_labeled():
    fleet = Fleet(devices=40, seed=7, fault_rate=0.01, warmup_ticks=20, cooldown_ticks=10)
    records = list(fleet.records(40 * 400))
    kinds = collections.Counter(r.fault for r in records)
    assert set(FAULT_KINDS) <= set(kinds)
    for record in records:
        assert dict(record.headers)["edgewatch-fault"].decode() == record.fault
    # no fault before a machine's warm-up ends
    assert not any(r.fault for r in records[: 40 * 20])


def test_stuck_sensor_repeats_its_value_and_spikes_jump():
    fleet = Fleet(devices=60, seed=9, fault_rate=0.02, warmup_ticks=10)
    for records in by_device(fleet.records(60 * 300)).values():
        temp = temperatures(records)
        faults = [r.fault for r in records]
        for i in range(1, len(records) - 1):
            if faults[i] == "stuck" and faults[i + 1] == "stuck":  # not the recovery tick
                assert temp[i] == temp[i - 1]
            if faults[i] == "spike" and not faults[i - 1]:
                assert temp[i] - temp[i - 1] > 6.0


def test_malformed_payloads_are_mixed_in_and_labeled():
    records = list(Fleet(devices=10, seed=1, fault_rate=0.0, malformed_rate=0.05).records(2000))
    broken = [r for r in records if r.fault == MALFORMED]
    assert 50 < len(broken) < 150


def test_legitimate_changes_keep_the_pressure_relation_and_leave_faults_unchanged():
    options = {"devices": 20, "seed": 5, "fault_rate": 0.01, "warmup_ticks": 20}
    plain = list(Fleet(**options).records(20 * 1500))
    changing = list(Fleet(**options, change_rate=0.005, ambient_period=600).records(20 * 1500))
    # changes draw from their own stream: the same faults start at the same ticks
    assert [r.fault != "" for r in plain][: 20 * 50] == [r.fault != "" for r in changing][: 20 * 50]
    assert {r.change for r in changing} == {"", "setpoint", "load"}
    again = list(Fleet(**options, change_rate=0.005, ambient_period=600).records(20 * 1500))
    assert [(r.value, r.headers) for r in again] == [(r.value, r.headers) for r in changing]
    for device, records in by_device(changing).items():
        healthy = [r for r in records if not r.fault]
        temp = temperatures(healthy)
        pressure = np.array([orjson.loads(r.value)["machine"]["pressure"] for r in healthy])
        assert abs(np.corrcoef(temp, pressure)[0, 1]) > 0.99, device  # setpoints move both together
        for r in records:
            assert (dict(r.headers).get("edgewatch-change", b"").decode()) == r.change
    steps = [r for r in changing if r.change == "setpoint"]
    assert len(steps) > 20
    ambient = np.array([orjson.loads(r.value)["ambient"]["temperature"] for r in by_device(changing)["machine-0000"]])
    assert np.ptp(ambient) > 2.0  # the daily cycle on top of the ±0.5 noise


def test_fault_score_counts_alarm_episodes_and_readings_after_changes():
    from edgewatch.evaluation.faults import SETTLED_AFTER, FaultScore

    score = FaultScore()
    labels = [""] * 400
    labels[50:60] = ["stuck"] * 10
    for seq, fault in enumerate(labels):
        score.sent("m", seq, fault, "setpoint" if seq == 200 else "")
    for seq in [*range(52, 65), *range(210, 220), 200 + SETTLED_AFTER]:
        score.labeled("m", seq, True)
    assert (score.faults, score.detected, score.alarms) == (1, 1, 3)
    assert score.episode_precision == pytest.approx(1 / 3)
    assert score.alarmed_after_change == 11 and score.active_after_change == 1
    assert "recall=1.000 alarms=3 precision=0.333 changes=1" in score.line()


def test_simulate_records_legitimate_changes_when_asked(tmp_path):
    """`edgewatch simulate --change-rate` (once only the demo could make them): labeled normal,
    named by the edgewatch-change header, counted on the summary line."""
    from typer.testing import CliRunner

    from edgewatch.cli import app

    out = tmp_path / "changes.jsonl"
    args = ["simulate", "--devices", "4", "--rate", "40", "--duration", "60", "--fault-rate", "0"]
    result = CliRunner().invoke(app, [*args, "--change-rate", "0.01", "--out", str(out)])
    assert result.exit_code == 0, result.output
    records = [orjson.loads(line) for line in out.read_bytes().splitlines()]
    changes = [r["headers"]["edgewatch-change"] for r in records if r["headers"].get("edgewatch-change")]
    assert changes and set(changes) <= {"setpoint", "load"}
    assert f"changes={len(changes)} " in result.output
    assert all(r["headers"]["edgewatch-fault"] == "" for r in records)
