"""Broken messages of many kinds, with the words their dead-letter reason must contain."""

GOOD_BODY = b'{"machine": {"temperature": 71.2, "pressure": 6.1}, "ambient": {"temperature": 20.9, "humidity": 25}}'

TIMED = GOOD_BODY[:-1] + b', "timeCreated": "%s"}'

# (name, key, value, reason fragment)
MALFORMED = [
    ("not json", b"m1", b"temperature=71.2", "not JSON"),
    ("truncated json", b"m1", GOOD_BODY[:40], "not JSON"),
    ("trailing garbage", b"m1", GOOD_BODY + b"}}", "not JSON"),
    ("nan", b"m1", GOOD_BODY.replace(b"71.2", b"NaN"), "NaN is not a number JSON allows"),
    ("infinity", b"m1", GOOD_BODY.replace(b"71.2", b"Infinity"), "Infinity is not a number JSON allows"),
    ("minus infinity", b"m1", GOOD_BODY.replace(b"71.2", b"-Infinity"), "-Infinity is not a number"),
    ("overflow", b"m1", GOOD_BODY.replace(b"71.2", b"1e400"), "overflows to infinity"),
    ("huge value", b"m1", GOOD_BODY.replace(b"71.2", b"1e300"), "machine.temperature out of range"),
    ("huge negative", b"m1", GOOD_BODY.replace(b"6.1", b"-5e12"), "machine.pressure out of range"),
    ("string number", b"m1", GOOD_BODY.replace(b"71.2", b'"71.2"'), "machine.temperature must be a number, got string"),
    ("boolean", b"m1", GOOD_BODY.replace(b"71.2", b"true"), "got boolean"),
    ("null", b"m1", GOOD_BODY.replace(b"71.2", b"null"), "got null"),
    ("array value", b"m1", GOOD_BODY.replace(b"71.2", b"[71.2]"), "got array"),
    ("missing field", b"m1", GOOD_BODY.replace(b'"temperature": 71.2, ', b""), "missing field machine.temperature"),
    (
        "group not object",
        b"m1",
        b'{"machine": [71.2, 6.1], "ambient": {"temperature": 20, "humidity": 25}}',
        "machine must be an object",
    ),
    ("empty", b"m1", b"", "empty message"),
    ("tombstone", b"m1", None, "empty message"),
    ("utf-16", b"m1", '{"values": {"rpm": 1450}}'.encode("utf-16"), "not UTF-8"),
    ("latin-1", b"m1", '{"values": {"température": 71}}'.encode("latin-1"), "not UTF-8"),
    ("not an object", b"m1", b"[1, 2, 3]", "not a JSON object"),
    ("bare number", b"m1", b"42", "not a JSON object"),
    ("unknown shape", b"m1", b'{"reading": 42}', "unrecognized message shape"),
    ("no device id", None, b'{"values": {"rpm": 1450}}', "no device id"),
    ("key not utf-8", b"\xff\xfe", b'{"values": {"rpm": 1450}}', "Kafka key is not UTF-8"),
    ("bad time", b"m1", GOOD_BODY[:-1] + b', "timeCreated": "yesterday"}', "timeCreated is not an ISO-8601 time"),
    ("empty values", b"m1", b'{"values": {}}', "values must be a non-empty object"),
    # hostile or odd input (issue 10): each once stopped the flow or was silently accepted
    ("nested 1000 deep", b"m1", b'{"a":' * 1000 + b"1" + b"}" * 1000, "nested 1000 levels deep (limit 32)"),
    ("open brackets", b"m1", b"[" * 1100, "nested 1100 levels deep"),
    ("brackets then garbage", b"m1", b"[" * 900 + b"garbage", "nested 900 levels deep"),
    ("too large", b"m1", b"x" * 70_000, "message too large: 70000 bytes (limit 65536)"),
    (".NET MinValue", b"m1", TIMED % b"0001-01-01T00:00:00+01:00", "outside the plausible window 1990-01-01T00:00:00Z"),
    (".NET MaxValue", b"m1", TIMED % b"9999-12-31T23:59:59-01:00", "outside the plausible window"),
    ("unset clock", b"m1", TIMED % b"1970-01-01T00:00:05Z", "outside the plausible window"),
    ("week date", b"m1", TIMED % b"2026-W01-1", "not an ISO-8601 time"),
    ("epoch far future", b"m1", b'{"timestamp": 99999999999, "values": {"rpm": 1}}', "outside the plausible window"),
    ("epoch ms", b"m1", b'{"timestamp": 1767225600000, "values": {"rpm": 1}}', "looks like epoch milliseconds"),
    ("null time", b"m1", GOOD_BODY[:-1] + b', "timeCreated": null}', "timeCreated is null"),
    ("duplicate key", b"m1", GOOD_BODY[:-1] + b', "machine": {"temperature": 1, "pressure": 2}}', "duplicate key"),
    ("escaped duplicate", b"m1", b'{"values": {"rpm": 1, "\\u0072pm": 2}}', "duplicate key 'rpm'"),
    ("body id not utf-8", None, b'{"deviceId": "\xff\xfe", "values": {"rpm": 1}}', "not UTF-8"),
]
