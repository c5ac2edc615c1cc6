"""A fleet of simulated machines with labeled faults.

Each machine follows the physics of Azure IoT Edge's SimulatedTemperatureSensor module:
the machine temperature climbs from its minimum by U(-0.25, 1.25) per tick until it
passes its maximum, then wanders by U(-0.5, 0.5); pressure is linear in temperature;
ambient temperature is its base ±0.5 and humidity an integer in a 3-wide band. Unlike
the module, every machine has its own limits, offsets and sensor noise, and the
simulator injects faults and labels every message they touch (Kafka header
``edgewatch-fault``):

========= ============================================================================
spike     the temperature reading jumps up by 8-25 °C for 1-2 ticks
dip       the temperature reading drops by 8-25 °C for 1-2 ticks
stuck     the temperature sensor repeats its last value for 8-25 ticks
drift     the temperature sensor drifts off by 0.8-2 °C per tick for 10-25 ticks,
          then is recalibrated
failure   the machine overheats (accelerating climb) for 8-20 ticks, then fails and
          restarts cold
========= ============================================================================

A fault's label covers the tick the machine or sensor comes back (the recalibration,
the first unstuck reading, the cold restart): that reading belongs to the incident.

Machines also change their operating point legitimately (labeled normal; header
``edgewatch-change`` names the change on the tick it starts):

========= ============================================================================
setpoint  the operating temperature moves by 10-25 °C up or down; the machine heats or
          cools towards it at its usual rates, pressure following (its relation to
          temperature is kept)
load      the same, by 3-8 °C: a load change
========= ============================================================================

and the ambient temperature follows a daily cycle (``ambient_period`` ticks, 1-3 °C),
humidity moving against it. Faults break how the sensors behave; changes keep it.
Everything is drawn from seeded generators (faults and changes from two streams of the
seed), so a seed gives the same stream.
"""

from __future__ import annotations

import base64
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import orjson

from edgewatch.schema import format_timestamp

FAULT_KINDS = ("spike", "dip", "stuck", "drift", "failure")
#: The sensors each fault kind makes misbehave (``Fleet._apply``): a sensor fault corrupts the temperature
#: reading alone; a failure is the machine's (it overheats, its pressure following the temperature).
FAULT_SENSORS = {
    "spike": ("machine.temperature",),
    "dip": ("machine.temperature",),
    "stuck": ("machine.temperature",),
    "drift": ("machine.temperature",),
    "failure": ("machine.temperature", "machine.pressure"),
}
CHANGE_KINDS = ("setpoint", "load")
FAULT_HEADER = "edgewatch-fault"
CHANGE_HEADER = "edgewatch-change"
MALFORMED = "malformed"

#: Broken payloads the simulator can mix in (``malformed_rate``) to exercise the dead-letter path.
MALFORMED_PAYLOADS = (
    b'{"machine": {"temperature": 71.2, "pressure": ',  # truncated
    b'{"machine": {"temperature": NaN, "pressure": 5.1}, "ambient": {"temperature": 21, "humidity": 25}}',
    b'{"machine": {"temperature": "hot", "pressure": 5.1}, "ambient": {"temperature": 21, "humidity": 25}}',
    b'{"machine": {"pressure": 5.1}, "ambient": {"temperature": 21, "humidity": 25}}',
    b"\xff\xfe\x00t\x00e\x00m\x00p",
    b"",
    b"[1, 2, 3]",
)


@dataclass(slots=True)
class SimRecord:
    """One simulated message, ready for Kafka or a JSONL file."""

    key: bytes
    value: bytes
    headers: list[tuple[str, bytes]]
    timestamp_ms: int
    fault: str  # fault kind, "malformed", or "" for a healthy reading
    change: str = ""  # a legitimate operating change that starts at this reading ("setpoint", "load")

    def to_json(self) -> dict:
        """The JSONL record of ``edgewatch simulate --out``: the value as text, or as
        ``value_b64`` when it is not UTF-8 (a malformed payload must survive unchanged)."""
        record = {
            "key": self.key.decode(),
            "headers": {name: value.decode() for name, value in self.headers},
            "timestamp_ms": self.timestamp_ms,
        }
        try:
            record["value"] = self.value.decode("utf-8")
        except UnicodeDecodeError:
            record["value_b64"] = base64.b64encode(self.value).decode()
        return record


@dataclass(slots=True)
class _Fault:
    kind: str
    remaining: int  # ticks left, the recovery tick included
    magnitude: float
    growth: float = 1.0
    frozen: float = 0.0
    offset: float = 0.0


@dataclass
class Fleet:
    """Simulated SimulatedTemperatureSensor-compatible machines.

    Args:
        devices: number of machines (``machine-0000`` ...).
        seed: seed of every random draw.
        fault_rate: chance, per machine and tick, that a fault starts.
        start_time: source time of the first tick (epoch seconds); by default
            2026-01-01T00:00:00Z, a whole number of weeks after the Unix epoch (the same
            time of week), inside the window of times the parser accepts (1990 .. now).
        tick_seconds: source time between two readings of one machine.
        warmup_ticks: ticks before a machine's first fault (detectors learn a baseline).
        cooldown_ticks: quiet ticks between two faults of one machine.
        malformed_rate: chance that a message is replaced by a broken payload.
        change_rate: chance, per machine and tick, that a legitimate operating change starts.
        ambient_period: ticks of the ambient temperature's cycle (0: no cycle).

    >>> fleet = Fleet(devices=3, seed=7, fault_rate=0.0, start_time=0.0, tick_seconds=1.0)
    >>> [r.key for r in next(fleet.ticks())]
    [b'machine-0000', b'machine-0001', b'machine-0002']
    """

    devices: int
    seed: int = 0
    fault_rate: float = 0.002
    start_time: float = 1_767_225_600.0
    tick_seconds: float = 1.0
    warmup_ticks: int = 50
    cooldown_ticks: int = 30
    malformed_rate: float = 0.0
    change_rate: float = 0.0
    ambient_period: int = 0
    faults_started: int = field(default=0, init=False)
    changes_started: int = field(default=0, init=False)

    def __post_init__(self) -> None:
        rng = np.random.default_rng(self.seed)
        n = self.devices
        self._rng = rng
        self.device_ids = [f"machine-{i:04d}" for i in range(n)]
        self._keys = [d.encode() for d in self.device_ids]
        self._batch_ids = [str(uuid.UUID(bytes=rng.bytes(16), version=4)).encode() for _ in range(n)]
        self._temp_min = rng.uniform(18.0, 26.0, n)
        self._temp_max = rng.uniform(90.0, 110.0, n)
        self._pressure_min = rng.uniform(0.8, 1.2, n)
        self._pressure_max = rng.uniform(9.0, 11.0, n)
        self._ambient = rng.uniform(18.0, 25.0, n)
        self._humidity_low = rng.integers(22, 30, n)
        self._temp_noise = rng.uniform(0.02, 0.15, n)
        self._pressure_noise = rng.uniform(0.002, 0.01, n)
        # machines are already running: start anywhere between cold and hot
        self._temp = self._temp_min + rng.uniform(0.0, 1.1, n) * (self._temp_max - self._temp_min)
        self._tick = 0
        self._sequence = np.zeros(n, dtype=np.int64)
        self._faults: dict[int, _Fault] = {}
        self._quiet_until = np.full(n, self.warmup_ticks, dtype=np.int64)
        self._last_reading = self._temp.copy()
        # operating changes draw from their own stream: a seed's faults stay the same with or without them
        changes = np.random.default_rng([self.seed, 1])
        self._changes_rng = changes
        # pressure is linear in temperature, whatever the setpoint: the relation operating changes keep
        self._slope = (self._pressure_max - self._pressure_min) / (self._temp_max - self._temp_min)
        self._ambient_amplitude = changes.uniform(1.0, 3.0, n)
        self._ambient_phase = changes.uniform(0.0, 2 * np.pi, n)

    def ticks(self) -> Iterator[list[SimRecord]]:
        """Endless ticks; each tick is one reading of every machine, in device order."""
        while True:
            yield self._next_tick()

    def records(self, count: int) -> Iterator[SimRecord]:
        """The first ``count`` records, tick after tick."""
        produced = 0
        for tick in self.ticks():
            for record in tick:
                if produced == count:
                    return
                produced += 1
                yield record

    def _next_tick(self) -> list[SimRecord]:
        rng, n = self._rng, self.devices
        change_labels = self._start_changes()
        hot = self._temp > self._temp_max
        self._temp += np.where(hot, rng.random(n) - 0.5, -0.25 + rng.random(n) * 1.5)
        if self.change_rate:  # above a lowered setpoint the machine cools at its heating rate
            cooling = self._temp > self._temp_max + 2.0
            self._temp -= np.where(cooling, 1.0 + 0.5 * self._changes_rng.random(n), 0.0)
        temp_reading = self._temp + rng.normal(0.0, 1.0, n) * self._temp_noise
        slope = self._slope
        pressure = self._pressure_min + (self._temp - self._temp_min) * slope
        pressure_reading = pressure + rng.normal(0.0, 1.0, n) * self._pressure_noise
        ambient = self._ambient + rng.random(n) - 0.5
        humidity = self._humidity_low + rng.integers(0, 3, n)
        if self.ambient_period:
            cycle = np.sin(2 * np.pi * self._tick / self.ambient_period + self._ambient_phase)
            ambient = ambient + self._ambient_amplitude * cycle
            humidity = humidity - np.rint(self._ambient_amplitude * cycle).astype(humidity.dtype)
        starts = rng.random(n) < self.fault_rate
        kinds = rng.integers(0, len(FAULT_KINDS), n)
        malformed = rng.random(n) < self.malformed_rate if self.malformed_rate else np.zeros(n, bool)

        labels = [""] * n
        for i in np.flatnonzero(starts & (self._tick >= self._quiet_until)):
            if i not in self._faults:
                self._faults[int(i)] = self._new_fault(FAULT_KINDS[kinds[i]], int(i))
                self.faults_started += 1
        for i, fault in list(self._faults.items()):
            temp_reading[i], pressure_reading[i] = self._apply(fault, i, temp_reading[i], pressure_reading[i])
            labels[i] = fault.kind
            fault.remaining -= 1
            if fault.remaining == 0:
                del self._faults[i]
                self._quiet_until[i] = self._tick + self.cooldown_ticks
        self._last_reading = temp_reading

        timestamp = self.start_time + self._tick * self.tick_seconds
        time_created = format_timestamp(timestamp)
        timestamp_ms = round(timestamp * 1000)
        self._tick += 1
        records = []
        for i in range(n):
            self._sequence[i] += 1
            label = labels[i]
            if malformed[i] and not label:
                value = MALFORMED_PAYLOADS[int(rng.integers(len(MALFORMED_PAYLOADS)))]
                label = MALFORMED
            else:
                value = orjson.dumps(
                    {
                        "machine": {"temperature": float(temp_reading[i]), "pressure": float(pressure_reading[i])},
                        "ambient": {"temperature": float(ambient[i]), "humidity": int(humidity[i])},
                        "timeCreated": time_created,
                    }
                )
            headers = [
                ("sequenceNumber", str(self._sequence[i]).encode()),
                ("batchId", self._batch_ids[i]),
                (FAULT_HEADER, label.encode()),
            ]
            if change_labels[i]:
                headers.append((CHANGE_HEADER, change_labels[i].encode()))
            records.append(SimRecord(self._keys[i], value, headers, timestamp_ms, label, change_labels[i]))
        return records

    def _start_changes(self) -> list[str]:
        """Legitimate operating changes starting this tick (not while a machine is faulty)."""
        labels = [""] * self.devices
        if not self.change_rate:
            return labels
        rng, n = self._changes_rng, self.devices
        starts = rng.random(n) < self.change_rate
        kinds = rng.integers(0, len(CHANGE_KINDS), n)
        sizes = rng.uniform(0.0, 1.0, n)
        signs = rng.choice([-1.0, 1.0], n)
        for i in np.flatnonzero(starts):
            if i in self._faults:
                continue
            kind = CHANGE_KINDS[kinds[i]]
            low, high = (10.0, 25.0) if kind == "setpoint" else (3.0, 8.0)
            target = self._temp_max[i] + signs[i] * (low + sizes[i] * (high - low))
            if not self._temp_min[i] + 30.0 <= target <= 120.0:
                target = self._temp_max[i] - signs[i] * (low + sizes[i] * (high - low))
            self._temp_max[i] = target
            labels[i] = kind
            self.changes_started += 1
        return labels

    def _new_fault(self, kind: str, i: int) -> _Fault:
        rng = self._rng
        if kind in ("spike", "dip"):
            sign = 1.0 if kind == "spike" else -1.0
            return _Fault(kind, int(rng.integers(1, 3)), sign * rng.uniform(8.0, 25.0))
        if kind == "stuck":
            return _Fault(kind, int(rng.integers(8, 26)) + 1, 0.0, frozen=float(self._last_reading[i]))
        if kind == "drift":
            return _Fault(kind, int(rng.integers(10, 26)) + 1, float(rng.choice([-1.0, 1.0]) * rng.uniform(0.8, 2.0)))
        return _Fault(kind, int(rng.integers(8, 21)) + 1, rng.uniform(1.5, 2.5), growth=rng.uniform(1.1, 1.2))

    def _apply(self, fault: _Fault, i: int, temp: float, pressure: float) -> tuple[float, float]:
        """The readings of machine ``i`` while ``fault`` is active."""
        recovering = fault.remaining == 1
        if fault.kind in ("spike", "dip"):
            return temp + fault.magnitude, pressure
        if fault.kind == "stuck":
            return (temp if recovering else fault.frozen), pressure
        if fault.kind == "drift":
            fault.offset += fault.magnitude
            return (temp if recovering else temp + fault.offset), pressure
        # failure: the machine itself overheats (pressure follows), then restarts cold
        if recovering:
            self._temp[i] = self._temp_min[i]
        else:
            self._temp[i] += fault.magnitude
            fault.magnitude *= fault.growth
        slope = self._slope[i]
        true_pressure = self._pressure_min[i] + (self._temp[i] - self._temp_min[i]) * slope
        noise = self._rng.normal(0.0, 1.0, 2)
        return (
            self._temp[i] + noise[0] * self._temp_noise[i],
            true_pressure + noise[1] * self._pressure_noise[i],
        )
