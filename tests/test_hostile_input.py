"""Hostile and odd input: what once stopped the flow or slipped through (issue 10), one test each."""

from __future__ import annotations

import hashlib
import json
import math
import time

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edgewatch import schema
from edgewatch.schema import (
    DEAD_LETTER_MAX_BYTES,
    DeadLetter,
    LabeledEvent,
    RawMessage,
    Reading,
    dead_letter_headers,
    dead_letter_record,
    labeled_event_json,
    nesting_depth,
    parse_message,
)
from tests.support.malformed import GOOD_BODY, TIMED

NOW_MS = int(time.time() * 1000)


def raw(value, key=b"m1", headers=(), timestamp_ms=NOW_MS):
    return RawMessage(key, value, list(headers), "telemetry", 3, 99, timestamp_ms)


def reason(value, **kwargs) -> str:
    result = parse_message(raw(value, **kwargs))
    assert isinstance(result, DeadLetter), result
    return result.reason


@pytest.mark.parametrize(
    "exception", [RecursionError("maximum recursion depth"), MemoryError(), KeyError("boom"), ZeroDivisionError()]
)
def test_any_exception_while_parsing_becomes_a_dead_letter(monkeypatch, exception):
    def explode(value):
        raise exception

    monkeypatch.setattr(schema, "_decode_json", explode)
    result = parse_message(raw(b'{"values": {"rpm": 1}}'))
    assert isinstance(result, DeadLetter) and result.stage == "parse"
    assert result.reason  # names what happened, e.g. "cannot parse: KeyError: 'boom'"
    assert type(exception).__name__ in result.reason or "deep" in result.reason or "memory" in result.reason


def test_times_of_old_recordings_are_accepted_and_implausible_ones_refused():
    nab = b'{"timestamp": "2013-07-04 00:00:00", "values": {"value": 21.5}}'
    assert parse_message(raw(nab)).timestamp == 1372896000.0
    skab = b'{"timestamp": "2020-03-09 10:14:33", "values": {"Accelerometer1RMS": 0.2}}'
    assert isinstance(parse_message(raw(skab)), Reading)
    soon = time.time() + 12 * 3600  # a local time sent as UTC, or a fast clock
    assert isinstance(parse_message(raw(b'{"timestamp": %d, "values": {"a": 1}}' % soon)), Reading)
    later = time.time() + 2 * 86400
    assert "plausible window" in reason(b'{"timestamp": %d, "values": {"a": 1}}' % later)
    assert "plausible window" in reason(TIMED % b"1989-12-31T23:59:59Z")
    assert "outside the plausible window" in reason(GOOD_BODY, timestamp_ms=0)  # no body time, bad Kafka time


def test_missing_time_uses_the_kafka_timestamp_but_null_is_refused():
    assert parse_message(raw(GOOD_BODY)).timestamp == NOW_MS / 1000
    assert "timeCreated is null" in reason(GOOD_BODY[:-1] + b', "timeCreated": null}')
    assert "timestamp is null" in reason(b'{"timestamp": null, "values": {"a": 1}}')


def test_device_ids_that_are_not_utf8_are_refused_never_replaced():
    assert "header deviceId is not UTF-8" in reason(GOOD_BODY, key=None, headers=[("deviceId", b"pump-\xff")])
    hub = [("iothub-connection-device-id", b"dev\xfe"), ("iothub-connection-module-id", b"m")]
    assert "not UTF-8" in reason(GOOD_BODY, key=None, headers=hub)
    assert "Kafka key is not UTF-8" in reason(GOOD_BODY, key=b"\xff\xfe")
    ok = [("iothub-connection-device-id", b"dev"), ("iothub-connection-module-id", b"m")]
    assert parse_message(raw(GOOD_BODY, key=None, headers=ok)).device_id == "dev/m"


def test_spoofed_error_headers_never_precede_the_real_reason():
    spoofed = [("edgewatch.error.reason", b"SPOOFED"), ("edgewatch.error.offset", b"0"), ("trace", b"t1")]
    dead = parse_message(raw(b"not json", headers=spoofed))
    headers = dead_letter_headers(dead)
    names = [name for name, _ in headers]
    assert names.count("edgewatch.error.reason") == 1 and names.count("edgewatch.error.offset") == 1
    assert dict(headers)["edgewatch.error.reason"].startswith(b"not JSON")
    assert dict(headers)["original.edgewatch.error.reason"] == b"SPOOFED"
    assert ("trace", b"t1") in headers


def test_duplicate_keys_are_refused_on_both_paths():
    assert "duplicate key 'machine'" in reason(GOOD_BODY[:-1] + b', "machine": {"temperature": 1, "pressure": 2}}')
    assert "duplicate key 'rpm'" in reason(b'{"values": {"rpm": 1, "rpm": 2}}')
    # an escaped key or escaped colons cannot hide a duplicate from the colon count
    sneaky = GOOD_BODY[:-1] + b', "timeCreated": "x", "timeCreated": "2026-01-01T00\\u003a00:00Z"}'
    assert "duplicate key 'timeCreated'" in reason(sneaky)
    # colons inside strings are not keys
    fine = b'{"deviceId": "a:b:c", "timestamp": "2026-01-01T00:00:00+01:00", "values": {"x:y": 1}}'
    assert parse_message(raw(fine, key=None)).features == {"x:y": 1.0}


def reference_duplicates(text: bytes) -> bool:
    found = []

    def pairs(items):
        found.append(len({k for k, _ in items}) != len(items))
        return dict(items)

    json.loads(text, object_pairs_hook=pairs)
    return any(found)


# the text between the quotes of JSON keys and scalars: colons, escapes, escaped colons
json_keys = st.sampled_from(["a", "b", "a:b", ":", r"\u0061", r"c\\", "é", r"d\"e", r"\u003a"])
json_scalars = st.sampled_from(["1", "2.5", "true", "null", '"x:y"', r'"\u003a"', '"2026-01-01T00:00:00Z"'])


def json_text(depth: int = 3):
    values = json_scalars if depth == 0 else st.one_of(json_scalars, st.deferred(lambda: json_text(depth - 1)))
    objects = st.lists(st.tuples(json_keys, values), max_size=5).map(
        lambda pairs: "{" + ", ".join(f'"{k}": {v}' for k, v in pairs) + "}"
    )
    arrays = st.lists(values, max_size=4).map(lambda items: "[" + ", ".join(items) + "]")
    return st.one_of(objects, arrays)


@settings(max_examples=400, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(json_text())
def test_duplicate_key_check_matches_a_reference_parser(text):
    body = orjson.loads(text.encode())
    if not isinstance(body, dict):
        return
    has_duplicates = reference_duplicates(text.encode())
    try:
        schema._refuse_duplicate_keys(text.encode(), body)
        refused = False
    except schema.InvalidMessage:
        refused = True
    assert refused == has_duplicates, text


def reference_depth(value: bytes) -> tuple[int, bool]:
    """Deepest nesting a decoder reaches, reading byte by byte until the first backslash
    outside a string (a syntax error: decoders stop there); and whether it stopped early."""
    depth = deepest = 0
    in_string = escaped = False
    for byte in value:
        char = chr(byte)
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char == "\\":
            return deepest, True
        elif char in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif char in "]}":
            depth -= 1
    return deepest, False


@settings(max_examples=600, deadline=None, database=None)
@given(st.lists(st.sampled_from(["[", "]", "{", "}", '"', "\\", "a", ":", ","]), max_size=200).map("".join))
def test_nesting_scan_matches_a_byte_by_byte_reference(text):
    value = text.encode()
    if value:
        deepest, stopped = reference_depth(value)
        # never below what a decoder would reach; exact for text without syntax errors of that kind
        assert nesting_depth(value) >= deepest
        assert stopped or nesting_depth(value) == deepest


@pytest.mark.parametrize("seconds", [math.nan, math.inf, -math.inf, 1e20, -1e20, -62135600400.0, 253402304399.0])
def test_labeled_event_json_never_raises(seconds):
    reading = Reading("m1", seconds, {"t": 1.0}, raw(GOOD_BODY))
    body = orjson.loads(labeled_event_json(LabeledEvent(reading, 0.5, False, "d", "1")))
    assert body["timestamp"] is None and body["device_id"] == "m1"


def test_a_dead_letter_too_large_for_the_broker_is_truncated_with_its_size_and_digest():
    value = b"x" * 3_000_000
    dead = DeadLetter(raw(value, headers=[("h", b"v")]), "message too large")
    key, kept, headers = dead_letter_record(dead)
    found = dict(headers)
    assert len(kept) + len(key) + sum(len(n) + len(v) for n, v in headers) < DEAD_LETTER_MAX_BYTES
    assert value.startswith(kept) and len(kept) > 900_000
    assert found["edgewatch.error.truncated"] == b"true"
    assert found["edgewatch.error.original_size"] == b"3000000"
    assert found["edgewatch.error.original_sha256"] == hashlib.sha256(value).hexdigest().encode()
    assert found["edgewatch.error.reason"] == b"message too large" and found["h"] == b"v"
    small = DeadLetter(raw(b"abc"), "not JSON")
    assert dead_letter_record(small) == (b"m1", b"abc", dead_letter_headers(small))


@settings(max_examples=200, deadline=None, database=None)
@given(
    key=st.one_of(st.none(), st.binary(max_size=5000)),
    value_size=st.integers(0, 300_000),
    headers=st.lists(st.tuples(st.text(max_size=30), st.one_of(st.none(), st.binary(max_size=3000))), max_size=40),
    limit=st.integers(4096, 200_000),
)
def test_dead_letter_records_always_fit_the_limit(key, value_size, headers, limit):
    dead = DeadLetter(RawMessage(key, b"v" * value_size, headers, "t", 0, 1), "r" * 2000)
    out_key, out_value, out_headers = dead_letter_record(dead, max_bytes=limit)
    assert schema._record_size(out_key, out_value, out_headers) <= limit
    found = dict(out_headers)
    assert found["edgewatch.error.reason"].startswith(b"rrr")
    if out_value != dead.raw.value:
        assert found["edgewatch.error.original_size"] == str(value_size).encode()
