"""Generators of hostile telemetry messages: ``(key, value, headers, timestamp_ms)``.

Mostly near-valid bodies (the three accepted shapes) with one or more things wrong, so the
fuzz reaches deep into the parser, plus raw bytes, deep nesting, odd encodings, huge values,
duplicate keys and spoofed headers. Feature names and device ids come from small sets: the
fuzz is about input handling, and a model bank grows with every new device and feature set.

One generator, two sources of choices: :func:`hostile_message` (a Hypothesis strategy:
shrinks a failure to a small example) and :func:`seeded_messages` (``random.Random``: ~100x
cheaper per message, for the bulk of the fuzz and for the Kafka flow test).
"""

from __future__ import annotations

import math
import random
import struct
import time
from collections.abc import Sequence

from hypothesis import strategies as st

KEYS = [f"machine-{i}".encode() for i in range(12)]
FEATURES = ["rpm", "temp", "a:b"]
NOW = time.time()

ODD_TIMES = [
    "",
    "yesterday",
    "0001-01-01T00:00:00+01:00",  # .NET DateTime.MinValue from an uninitialised device
    "9999-12-31T23:59:59-01:00",
    "1970-01-01T00:00:00Z",
    "2026-W01-1",
    "20260101T000000Z",
    "2026-01-01",
    "2026-13-01T00:00:00Z",
    "2026-02-30T00:00:00Z",
    "2026-01-01T24:00:00Z",
    "2026-01-01T00:00:00.1234567Z",
    "2026-01-01T00:00:00+14:00",
    "2026-01-01 00:00:00",
    "2013-07-04T00:00:00",  # NAB
    "2020-03-09 10:14:33",  # SKAB
    "NaN",
]
ODD_NUMBERS = ["1e400", "-1e400", "1e-400", "-0", "1E9", "1000000001", "007", "1.", ".5", "0x10", '"71.2"', "true",
               "null", "[1]", "{}", "NaN", "Infinity", "-Infinity", str(2**80), "1e300"]  # fmt: skip
ODD_SECONDS = [str(int(NOW * 1000)), "null", "true", "[]", "99999999999", "631152000", "631151999", "-1", str(2**70)]
ODD_STRINGS = ['"pump-1"', '""', '"a:b"', r'"\u003a"', r'"\ud800"', r'"\u0000"', '"é"', r'"\"quoted\""']
ODD_BODIES = [None, b"", b"null", b"[]", b"42", b'"text"', b"{", b"}", b"\xef\xbb\xbf{}"]
HEADER_NAMES = [
    "edgewatch.error.reason",
    "edgewatch.error.offset",
    "edgewatch.error.stage",
    "deviceId",
    "iothub-connection-device-id",
    "iothub-connection-module-id",
    "trace-id",
]
ENCODINGS = ["utf-8"] * 8 + ["utf-16", "utf-8-sig", "latin-1", "utf-32"]


class Choices:
    """Where the generator's choices come from (a Hypothesis ``draw`` or a ``random.Random``)."""

    def integer(self, low: int, high: int) -> int: ...
    def choice(self, options: Sequence): ...
    def uniform(self, low: float, high: float) -> float: ...
    def any_float(self) -> float: ...
    def binary(self, max_size: int) -> bytes: ...
    def text(self, max_size: int) -> str: ...


class HypothesisChoices(Choices):
    def __init__(self, draw):
        self.draw = draw

    def integer(self, low, high):
        return self.draw(st.integers(low, high))

    def choice(self, options):
        return self.draw(st.sampled_from(options))

    def uniform(self, low, high):
        return self.draw(st.floats(low, high))

    def any_float(self):
        return self.draw(st.floats(allow_nan=True, allow_infinity=True))

    def binary(self, max_size):
        return self.draw(st.binary(max_size=max_size))

    def text(self, max_size):
        return self.draw(st.text(max_size=max_size))


class RandomChoices(Choices):
    def __init__(self, rng: random.Random):
        self.rng = rng

    def integer(self, low, high):
        return self.rng.randint(low, high)

    def choice(self, options):
        return self.rng.choice(options)

    def uniform(self, low, high):
        return self.rng.uniform(low, high)

    def any_float(self):  # any bit pattern: subnormals, NaNs, infinities, huge and tiny values
        return struct.unpack("<d", self.rng.randbytes(8))[0]

    def binary(self, max_size):
        return self.rng.randbytes(self.rng.randint(0, max_size))

    def text(self, max_size):
        alphabet = [0x20, 0x7E, 0xFF, 0x2FF, 0xD7FF, 0xFFFF, 0x10FFFF]
        return (
            "".join(chr(self.rng.randint(0, self.rng.choice(alphabet))) for _ in range(self.rng.randint(0, max_size)))
            .encode("utf-8", "ignore")
            .decode("utf-8")
        )  # no lone surrogates: Python text, as Hypothesis makes


def _json_number(value: float) -> str:
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "Infinity" if value > 0 else "-Infinity"
    return repr(value)


def number(c: Choices) -> str:
    """Mostly plausible readings, the rest odd (not JSON, out of range, not numbers)."""
    kind = c.integer(0, 12)
    if kind <= 9:
        return repr(c.uniform(-1e3, 1e3))  # the repr of a finite float is a JSON number
    if kind == 10:
        return _json_number(c.any_float())
    if kind == 11:
        return str(c.integer(-(2**80), 2**80))
    return c.choice(ODD_NUMBERS)


def source_time(c: Choices) -> str:
    """Mostly plausible source times (ISO-8601 or epoch seconds), the rest odd."""
    kind = c.integer(0, 9)
    if kind <= 3:  # the last ten years up to just past the window's end
        return repr(round(c.uniform(NOW - 10 * 365 * 86400, NOW + 3 * 86400), 3))
    if kind <= 5:
        return '"' + time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(c.integer(0, int(NOW)))) + '"'
    if kind == 6:
        return '"' + c.choice(ODD_TIMES) + '"'
    if kind == 7:
        return str(c.integer(-(2**63), 2**63))
    if kind == 8:
        return c.choice(ODD_SECONDS)
    return '"' + c.text(40).replace("\\", "").replace('"', "") + '"'


def string(c: Choices) -> str:
    if c.integer(0, 3):
        return c.choice(ODD_STRINGS)
    return '"' + "x" * c.choice([10, 1000, 65_000, 70_000]) + '"'  # huge values


def _object(pairs: list[tuple[str, str]]) -> str:
    return "{" + ", ".join(f'"{name}": {value}' for name, value in pairs) + "}"


def _mangle(c: Choices, pairs: list[tuple[str, str]]) -> str:
    """Sometimes duplicate a key, add a huge or unknown field, or reorder."""
    if c.integer(0, 4) == 0:
        pairs = [*pairs, c.choice(pairs)]
    if c.integer(0, 6) == 0:
        pairs = [*pairs, (c.choice(["note", "meta", "deviceId", "timeCreated"]), string(c))]
    if c.integer(0, 6) == 0:
        pairs = list(reversed(pairs))
    return _object(pairs)


def sensor_body(c: Choices) -> str:
    pairs = [
        ("machine", _object([("temperature", number(c)), ("pressure", number(c))])),
        ("ambient", _object([("temperature", number(c)), ("humidity", number(c))])),
    ]
    if c.integer(0, 1):
        pairs.append(("timeCreated", source_time(c)))
    if c.integer(0, 1):
        pairs.append(("deviceId", string(c)))
    return _mangle(c, pairs)


def generic_body(c: Choices) -> str:
    names = [c.choice(FEATURES) for _ in range(c.integer(0, 3))]
    pairs = [("values", _object([(name, number(c)) for name in names]))]
    if c.integer(0, 1):
        pairs.append((c.choice(["timestamp", "ts"]), source_time(c)))
    if c.integer(0, 1):
        pairs.append(("deviceId", string(c)))
    return _mangle(c, pairs)


def cmapss_body(c: Choices) -> str:
    pairs = [("CycleTime", number(c))]
    pairs += [(f"OperationalSetting{i}", "0.5") for i in range(1, 4)]
    pairs += [(f"Sensor{i}", number(c) if i == 7 else "500.0") for i in range(1, 22)]
    return _mangle(c, pairs)


def nested(c: Choices) -> bytes:
    depth = c.integer(1, 3000)
    kind = c.integer(0, 2)
    if kind == 0:
        return b"[" * depth + b"1" + b"]" * depth
    if kind == 1:
        return b'{"a":' * depth + b"1" + b"}" * depth
    return b"[" * depth + b"garbage"


def body(c: Choices) -> bytes | None:
    kind = c.integer(0, 9)
    if kind == 0:
        return c.binary(300)
    if kind == 1:
        return nested(c)
    if kind == 2:
        return c.choice(ODD_BODIES)
    text = c.choice([sensor_body, sensor_body, generic_body, cmapss_body])(c)
    value = text.encode(c.choice(ENCODINGS), "replace")
    if c.integer(0, 15) == 0:  # a byte changed somewhere
        position = c.integer(0, len(value) - 1)
        value = value[:position] + bytes([c.integer(0, 255)]) + value[position + 1 :]
    return value


def message(c: Choices) -> tuple[bytes | None, bytes | None, list, int | None]:
    """One message: ``(key, value, headers, kafka timestamp_ms)``."""
    kind = c.integer(0, 5)
    key = c.choice(KEYS) if kind <= 3 else c.choice([None, b""]) if kind == 4 else c.binary(8)
    headers = [
        (c.choice(HEADER_NAMES), c.choice([None, b"SPOOFED", b"dev-1", b"\xff\xfe", b""]))
        for _ in range(c.integer(0, 3))
    ]
    kind = c.integer(0, 7)
    if kind <= 4:
        timestamp_ms = int(NOW * 1000) - c.integer(0, 10**9)
    elif kind == 5:
        timestamp_ms = c.choice([None, -1, 0, int((NOW + 2 * 86400) * 1000)])
    else:
        timestamp_ms = c.integer(0, 2**41)
    return key, body(c), headers, timestamp_ms


@st.composite
def hostile_message(draw):
    """A Hypothesis strategy of one :func:`message`."""
    return message(HypothesisChoices(draw))


def seeded_messages(seed: int, count: int) -> list[tuple[bytes | None, bytes | None, list, int | None]]:
    """``count`` messages from ``random.Random(seed)``: the same ones on every run."""
    choices = RandomChoices(random.Random(seed))
    return [message(choices) for _ in range(count)]
