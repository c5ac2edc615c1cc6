"""The flow's batch paths give what the one-item paths give, on hostile and odd input.

``parse_batch`` decodes a batch's SimulatedTemperatureSensor bodies together and
``labeled_event_lines`` serializes a batch's labeled events together (both for throughput,
``bench/throughput.py``): each must equal, item for item, :func:`parse_message` and
:func:`labeled_event_json`, the one-item paths the rest of the tests check.
"""

from __future__ import annotations

import random
import re

import orjson
import pytest

from edgewatch.schema import (
    CMAPSS_FEATURES,
    LabeledEvent,
    RawMessage,
    Reading,
    labeled_event_json,
    labeled_event_lines,
    parse_batch,
    parse_message,
)
from tests.support.fuzzing import seeded_messages

NOW_WINDOW = re.compile(r"now \+ 1 day \([^)]*\)")  # the wall clock in a reason: the same message a second later
LATEST = re.compile(r"(?<=631152000\.\.)\d+")  # the latest epoch second allowed (the wall clock again)


def sensor_message(rng: random.Random) -> tuple[bytes | None, bytes, list, int | None]:
    """A SimulatedTemperatureSensor body, valid JSON, with one or more things odd about it (or none)."""
    machine = {"temperature": rng.choice([71.5, 20, -3.25, 2e9, -1e9, 1e9]), "pressure": rng.choice([1.5, 0, 1e-300])}
    ambient = {"temperature": 21.0, "humidity": rng.choice([25, 25.5, -2e9])}
    body: dict = (
        {"machine": machine, "ambient": ambient} if rng.random() < 0.8 else {"ambient": ambient, "machine": machine}
    )
    created = rng.choice(["2026-01-01T00:00:00Z", "2026-01-01T00:00:01.1234567Z", "2026-01-01 00:00:02", None,
                          "1970-01-01T00:00:00Z", "2026-W01-1", "2999-01-01T00:00:00Z", "2026-01-01T00:00:00+14:00",
                          "missing"])  # fmt: skip
    if created != "missing":
        body["timeCreated"] = created
    if rng.random() < 0.15:
        body["deviceId"] = rng.choice(["pump:7", "", None, "é"])
    if rng.random() < 0.05:
        body["extra"] = 1
    if rng.random() < 0.05:
        machine["extra"] = {"a": 1}
    text = orjson.dumps(body)
    if rng.random() < 0.05:
        text = text.replace(b'"pressure"', b'"pressure":0,"pressure"')  # a duplicate key
    if rng.random() < 0.05:
        text = text.replace(b",", b", ") + b" "
    if rng.random() < 0.03:
        text = text.replace(b"ambient", b"\\u0061mbient")
    key = rng.choice([b"machine-1", b"machine-2", None, b"", b"\xff", b"x" * 300, b"tab\t"])
    timestamp_ms = rng.choice([1_767_225_600_000, None, 100])
    return key, text, [], timestamp_ms


def normalized(parsed):
    readings, dead = parsed
    return readings, [(d.raw, LATEST.sub("now", NOW_WINDOW.sub("now + 1 day (…)", d.reason)), d.stage) for d in dead]


def one_by_one(raws):
    each = [parse_message(raw) for raw in raws]
    return [r for r in each if isinstance(r, Reading)], [d for d in each if not isinstance(d, Reading)]


def assert_batch_equals_one_by_one(messages) -> None:
    """``parse_batch`` of ``messages`` gives what ``parse_message`` gives on each: readings (feature
    order and exact times included) and dead letters with their reasons."""
    raws = [RawMessage(key, value, headers, "t", 0, i, ts) for i, (key, value, headers, ts) in enumerate(messages)]
    batch, each = normalized(parse_batch(raws)), normalized(one_by_one(raws))
    assert batch == each
    assert [list(r.features.items()) for r in batch[0]] == [list(r.features.items()) for r in each[0]]
    assert [repr(r.timestamp) for r in batch[0]] == [repr(r.timestamp) for r in each[0]]


@pytest.mark.parametrize("seed", range(40))
def test_parse_batch_equals_parse_message_on_each(seed):
    rng = random.Random(seed)
    for size in (1, 7, 60):
        messages = [sensor_message(rng) for _ in range(size)]
        if seed % 2:  # mixed with hostile messages of every shape
            messages += seeded_messages(seed * 100 + size, size // 3)
            rng.shuffle(messages)
        assert_batch_equals_one_by_one(messages)


def test_parse_batch_of_well_formed_bodies_takes_the_batch_path(monkeypatch):
    import edgewatch.schema as schema

    def refuse(_raw):
        raise AssertionError("a well-formed body went the one-message way")

    monkeypatch.setattr(schema, "parse_message", refuse)
    body = b'{"machine":{"temperature":71.5,"pressure":1.5},"ambient":{"temperature":21.0,"humidity":25},'
    raws = [RawMessage(b"m-%d" % i, body + b'"timeCreated":"2026-01-01T00:00:0%dZ"}' % i, [], "t", 0, i)
            for i in range(5)]  # fmt: skip
    readings, dead = parse_batch(raws)
    assert not dead and [r.device_id for r in readings] == [f"m-{i}" for i in range(5)]
    assert readings[3].timestamp == 1_767_225_603.0 and readings[0].features["ambient.humidity"] == 25.0


def cmapss_message(rng: random.Random) -> tuple[bytes | None, bytes, list, int | None]:
    """A CMAPSS row as a replay sends it, valid JSON, with one or more things odd about it (or none)."""
    body: dict = {"CycleTime": rng.choice([1, 2.5, -0, 2e9, "7", None])}
    for name in CMAPSS_FEATURES:
        body[name] = (
            rng.choice([641.82, 0, -0.0, 1e-300]) if rng.random() < 0.97 else rng.choice([2e9, True, "x", None])
        )
    if rng.random() < 0.05:
        del body[rng.choice(CMAPSS_FEATURES)]
    if rng.random() < 0.2:
        body["timestamp"] = rng.choice(
            [1_767_225_600, 1_767_225_600.5, 100, 1_767_225_600_000, None, "2026-01-01T00:00:00Z"]
        )
    if rng.random() < 0.05:
        body[rng.choice(["extra", "deviceId", "values", "machine"])] = rng.choice([1, "pump:7", {"a": 1}])
    text = orjson.dumps(body)
    if rng.random() < 0.05:
        text = text.replace(b'"Sensor3"', b'"Sensor3":0,"Sensor3"')  # a duplicate key
    return odd_envelope(rng, text, (b"Sensor2", b"\\u0053ensor2"), b"641.82", b"engine")


def odd_envelope(rng: random.Random, text: bytes, escaped: tuple[bytes, bytes], number: bytes, device: bytes):
    """``text`` perhaps spaced out, with a name escaped (``escaped``: the name, its escape) or ``number``
    overflowing, as a message of a key (of ``device`` or odd), perhaps a device header, and a time."""
    if rng.random() < 0.05:
        text = text.replace(b",", b", ") + b" "
    if rng.random() < 0.03:
        text = text.replace(*escaped)
    if rng.random() < 0.03:
        text = text.replace(number, b"1e400")
    key = rng.choice([device + b"-001", device + b"-002", None, b"", b"\xff", b"x" * 300, b"tab\t"])
    headers = [("deviceId", device + b"-009")] if rng.random() < 0.1 else []
    timestamp_ms = rng.choice([1_767_225_600_000, None, 100])
    return key, text, headers, timestamp_ms


@pytest.mark.parametrize("seed", range(30))
def test_parse_batch_of_cmapss_rows_equals_parse_message_on_each(seed):
    rng = random.Random(seed)
    for size in (1, 7, 60):
        messages = [cmapss_message(rng) for _ in range(size)]
        if seed % 2:  # mixed with sensor bodies and hostile messages of every shape
            messages += [sensor_message(rng) for _ in range(size // 4)] + seeded_messages(seed * 100 + size, size // 3)
            rng.shuffle(messages)
        assert_batch_equals_one_by_one(messages)


def test_parse_batch_of_well_formed_cmapss_rows_takes_the_batch_path(monkeypatch):
    import edgewatch.schema as schema

    def refuse(_raw):
        raise AssertionError("a well-formed row went the one-message way")

    monkeypatch.setattr(schema, "parse_message", refuse)
    body = orjson.dumps({"CycleTime": 3, **dict.fromkeys(CMAPSS_FEATURES, 1.5)})
    raws = [RawMessage(b"e-%d" % i, body, [], "t", 0, i, 1_767_225_600_000 + i) for i in range(5)]
    readings, dead = parse_batch(raws)
    assert not dead and [r.device_id for r in readings] == [f"e-{i}" for i in range(5)]
    assert readings[2].timestamp == 1_767_225_600.002 and list(readings[0].features) == list(CMAPSS_FEATURES)


def generic_message(rng: random.Random) -> tuple[bytes | None, bytes, list, int | None]:
    """A generic body (``values``), valid JSON, with one or more things odd about it (or none)."""
    names = rng.choice(
        [["rpm", "temp"], ["a:b", "c"], ["x"] * 0, ["é", "tab\t"], [f"f{i}" for i in range(70)], ["n" * 200]]
    )
    values = {name: rng.choice([1450, 21.5, -0, 1e-300, 2e9]) if rng.random() < 0.95 else rng.choice(["x", None, True])
              for name in names}  # fmt: skip
    body: dict = {"values": values}
    if rng.random() < 0.5:
        stamps = [1_767_225_600, 1_767_225_600.5, 100, 1_767_225_600_000, None, "2026-01-01T00:00:00Z",
                  "2026-01-01 00:00:02", "2026-W01-1", "2999-01-01T00:00"]  # fmt: skip
        body["timestamp"] = rng.choice(stamps)
    if rng.random() < 0.3:
        body["deviceId"] = rng.choice(["pump:7", "", None, "é", 5])
    if rng.random() < 0.05:
        body[rng.choice(["ts", "extra", "CycleTime", "machine"])] = rng.choice([1_767_225_600, "z"])
    if rng.random() < 0.5:
        body = dict(reversed(body.items()))
    text = orjson.dumps(body)
    if rng.random() < 0.05:
        text = text.replace(b'"values":{', b'"values":{"rpm":1,')  # perhaps a duplicate key
    if rng.random() < 0.05:
        text = text.replace(b'{"values"', b'{"values":{"q":1},"values"')  # a duplicate object
    return odd_envelope(rng, text, (b"rpm", b"\\u0072pm"), b"21.5", b"pump")


@pytest.mark.parametrize("seed", range(30))
def test_parse_batch_of_generic_bodies_equals_parse_message_on_each(seed):
    rng = random.Random(seed)
    for size in (1, 7, 60):
        messages = [generic_message(rng) for _ in range(size)]
        if seed % 2:  # mixed with other shapes and hostile messages
            messages += [cmapss_message(rng) for _ in range(size // 4)] + seeded_messages(seed * 100 + size, size // 3)
            rng.shuffle(messages)
        assert_batch_equals_one_by_one(messages)


def odd_event(rng: random.Random, names: tuple[str, ...]) -> LabeledEvent:
    raw = RawMessage(None, None, [], rng.choice(["telemetry", 'to"p\u00e9\n']), rng.choice([0, 3]),
                     rng.choice([0, 7, 2**40]))  # fmt: skip
    seconds = rng.choice([1_767_225_600.0, 1_767_225_600.5, 0.0, -1.5, 1e300, float("nan"), 253_402_300_800.0])
    values = [rng.choice([1.5, 26, -0.0, 1e-300, float("nan"), float("inf"), "a,b", "x", None, True]) for _ in names]
    score = rng.choice([0.0, 0.34, 1e-7, 1e20, float("nan"), float("-inf"), 1])
    explanation = rng.choice([None, {names[0]: 1.0} if names else {}, {"a%b": 0.25, 'q"': 0.75}])
    device = rng.choice(["pump-1", 'x"y', "\t", "d\u00e9v"])
    return LabeledEvent(Reading(device, seconds, dict(zip(names, values, strict=True)), raw), score,
                        rng.random() < 0.3, rng.choice(["relational-novelty", "m%s"]), "0.1", explanation)  # fmt: skip


@pytest.mark.parametrize("seed", range(30))
def test_labeled_event_lines_equal_labeled_event_json_on_each(seed):
    rng = random.Random(seed)
    orders = [("machine.temperature", "machine.pressure"), ("a%d", "b,c", 'é"'), ("machine.pressure", "machine.temperature"), ()]  # noqa: E501 # fmt: skip
    same = rng.choice(orders)
    events = [odd_event(rng, same if seed % 3 else rng.choice(orders)) for _ in range(rng.choice([1, 5, 40]))]
    if seed % 5 == 0:  # plain numbers only: the single-call path for feature values
        for event in events:
            event.reading.features = dict.fromkeys(event.reading.features, 2.5)
    assert labeled_event_lines(events) == [labeled_event_json(event) for event in events]
    assert labeled_event_lines([]) == []


def test_parse_batch_of_well_formed_generic_bodies_takes_the_batch_path(monkeypatch):
    import edgewatch.schema as schema

    def refuse(_raw):
        raise AssertionError("a well-formed body went the one-message way")

    monkeypatch.setattr(schema, "parse_message", refuse)
    body = b'{"deviceId":"p:%d","timestamp":"2026-01-01T00:00:0%dZ","values":{"rpm":1450,"a:b":2.5}}'
    raws = [RawMessage(b"p-%d" % i, body % (i, i), [], "t", 0, i) for i in range(5)]
    raws.append(RawMessage(b"p-5", b'{"values":{"rpm":1}}', [], "t", 0, 5, 1_767_225_600_000))
    readings, dead = parse_batch(raws)
    assert not dead and [r.device_id for r in readings] == [f"p-{i}" for i in range(6)]
    assert readings[3].timestamp == 1_767_225_603.0 and readings[0].features == {"rpm": 1450.0, "a:b": 2.5}
