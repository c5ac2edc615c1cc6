import math

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgewatch.schema import (
    AlarmEvent,
    DeadLetter,
    DriftEvent,
    LabeledEvent,
    RawMessage,
    Reading,
    SourceRef,
    alarm_event_json,
    dead_letter_headers,
    drift_event_json,
    labeled_event_json,
    parse_message,
)
from tests.support.malformed import GOOD_BODY, MALFORMED

SOURCE = SourceRef("telemetry", 2, 41, 1_763_860_000_000)


def raw(key, value, headers=()):
    return RawMessage(key, value, list(headers), *SOURCE)


def test_simulated_temperature_sensor_message():
    body = GOOD_BODY[:-1] + b', "timeCreated": "2026-11-23T01:05:00.1234567Z"}'
    reading = parse_message(raw(b"machine-7", body))
    assert isinstance(reading, Reading)
    assert reading.device_id == "machine-7"
    assert reading.features == {
        "machine.temperature": 71.2,
        "machine.pressure": 6.1,
        "ambient.temperature": 20.9,
        "ambient.humidity": 25.0,
    }
    assert reading.timestamp == pytest.approx(1795395900.123456)


def test_missing_time_falls_back_to_kafka_timestamp():
    reading = parse_message(raw(b"machine-7", GOOD_BODY))
    assert reading.timestamp == SOURCE.timestamp_ms / 1000


def test_device_id_from_body_and_generic_shape():
    reading = parse_message(raw(None, b'{"deviceId": "pump-3", "timestamp": 1763860000.5, "values": {"rpm": 1450}}'))
    assert (reading.device_id, reading.timestamp, reading.features) == ("pump-3", 1763860000.5, {"rpm": 1450.0})


def test_cmapss_row():
    body = {"CycleTime": 3, **{f"OperationalSetting{i}": 0.1 * i for i in range(1, 4)}}
    body.update({f"Sensor{i}": 500.0 + i for i in range(1, 22)})
    reading = parse_message(raw(b"engine-1", orjson.dumps(body)))
    assert len(reading.features) == 24 and reading.features["Sensor21"] == 521.0


@pytest.mark.parametrize(("name", "key", "value", "reason"), MALFORMED, ids=[case[0] for case in MALFORMED])
def test_malformed_messages_become_dead_letters_with_a_reason(name, key, value, reason):
    result = parse_message(raw(key, value))
    assert isinstance(result, DeadLetter), name
    assert reason in result.reason
    assert result.raw.value == value and result.raw.key == key


def test_dead_letter_headers_keep_originals_and_say_where_from():
    dead = parse_message(raw(b"m1", b"oops", [("sequenceNumber", b"9")]))
    headers = dict(dead_letter_headers(dead))
    assert headers["sequenceNumber"] == b"9"
    assert headers["edgewatch.error.reason"].startswith(b"not JSON")
    assert (
        headers["edgewatch.error.topic"],
        headers["edgewatch.error.partition"],
        headers["edgewatch.error.offset"],
    ) == (
        b"telemetry",
        b"2",
        b"41",
    )


def test_labeled_event_schema():
    reading = parse_message(raw(b"machine-7", GOOD_BODY))
    event = orjson.loads(labeled_event_json(LabeledEvent(reading, 0.75, True, "robust-zscore", "0.1.0")))
    assert event == {
        "device_id": "machine-7",
        "timestamp": "2025-11-23T01:06:40Z",
        "features": reading.features,
        "score": 0.75,
        "is_anomaly": True,
        "explanation": None,
        "model": {"name": "robust-zscore", "version": "0.1.0"},
        "source": {"topic": "telemetry", "partition": 2, "offset": 41},
    }
    explained = LabeledEvent(reading, 0.75, True, "m", "1", {"machine.temperature": 0.8, "machine.pressure": 0.2})
    assert orjson.loads(labeled_event_json(explained))["explanation"] == {
        "machine.temperature": 0.8,
        "machine.pressure": 0.2,
    }


def test_alarm_and_drift_event_schemas():
    reading = parse_message(raw(b"machine-7", GOOD_BODY))
    shares = {"machine.temperature": 0.9, "machine.pressure": 0.1}
    raised = AlarmEvent("raised", "machine-7", 1000.0, None, 0.6, reading.features, shares, "m", "1", reading.raw)
    assert orjson.loads(alarm_event_json(raised)) == {
        "event": "raised",
        "device_id": "machine-7",
        "start": "1970-01-01T00:16:40Z",
        "end": None,
        "duration_seconds": 0.0,
        "peak_score": 0.6,
        "features": reading.features,
        "explanation": shares,
        "model": {"name": "m", "version": "1"},
        "source": {"topic": "telemetry", "partition": 2, "offset": 41},
    }
    cleared = AlarmEvent("cleared", "machine-7", 1000.0, 1130.5, 0.7, reading.features, shares, "m", "1", None)
    body = orjson.loads(alarm_event_json(cleared))
    assert (body["end"], body["duration_seconds"], body["source"]) == ("1970-01-01T00:18:50.500000Z", 130.5, None)
    drift = DriftEvent("machine-7", 1130.5, ["a", "b"], {"a": 1.0, "b": 2.0}, {"a": 3.0, "b": 4.0}, "timeout", "m", "1")
    assert orjson.loads(drift_event_json(drift)) == {
        "device_id": "machine-7",
        "timestamp": "1970-01-01T00:18:50.500000Z",
        "features": ["a", "b"],
        "level_before": {"a": 1.0, "b": 2.0},
        "level_after": {"a": 3.0, "b": 4.0},
        "reason": "timeout",
        "model": {"name": "m", "version": "1"},
        "source": None,
    }


@settings(max_examples=400, deadline=None)
@given(key=st.one_of(st.none(), st.binary(max_size=20)), value=st.one_of(st.none(), st.binary(max_size=200)))
def test_any_bytes_are_a_reading_or_a_dead_letter(key, value):
    result = parse_message(raw(key, value))
    assert isinstance(result, Reading | DeadLetter)
    if isinstance(result, Reading):
        assert all(math.isfinite(v) for v in result.features.values())


json_values = st.recursive(
    st.none() | st.booleans() | st.floats(allow_nan=False) | st.integers(-(2**63), 2**63 - 1) | st.text(max_size=10),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=12,
)


@settings(max_examples=400, deadline=None)
@given(machine=json_values, ambient=json_values, values=json_values)
def test_any_json_shape_is_a_reading_or_a_dead_letter(machine, ambient, values):
    for body in ({"machine": machine, "ambient": ambient}, {"values": values}):
        result = parse_message(raw(b"m1", orjson.dumps(body)))
        assert isinstance(result, Reading | DeadLetter)
