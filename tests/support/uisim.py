"""Simulated outputs of the flow (labeled events, alarms, drift events) for the web view's tests,
in the agreed JSON schemas (docs: the ``labeled``, ``alarms`` and ``drift`` topics)."""

from __future__ import annotations

import math
import random
from datetime import UTC, datetime

import orjson

MODEL = {"name": "compact-novelty", "version": "0.1.0"}
FEATURES = ("machine.temperature", "machine.pressure", "ambient.temperature", "ambient.humidity")


def iso(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def labeled(device: str, t: float, values: dict, score: float, anomaly: bool, explanation=None, offset=0) -> bytes:
    return orjson.dumps(
        {
            "device_id": device,
            "timestamp": iso(t),
            "features": values,
            "score": score,
            "is_anomaly": anomaly,
            "explanation": explanation if anomaly else None,
            "model": MODEL,
            "source": {"topic": "telemetry", "partition": 0, "offset": offset},
        }
    )


def alarm(event: str, device: str, start: float, end: float | None, peak: float, explanation: dict) -> bytes:
    return orjson.dumps(
        {
            "event": event,
            "device_id": device,
            "start": iso(start),
            "end": None if end is None else iso(end),
            "duration_seconds": 0.0 if end is None else end - start,
            "peak_score": peak,
            "features": {"machine.temperature": 24.0},
            "explanation": explanation,
            "model": MODEL,
            "source": {"topic": "telemetry", "partition": 0, "offset": 0},
        }
    )


def drift(device: str, t: float, features: list[str], before: dict, after: dict, reason: str) -> bytes:
    return orjson.dumps(
        {
            "device_id": device,
            "timestamp": iso(t),
            "features": features,
            "level_before": before,
            "level_after": after,
            "reason": reason,
            "model": MODEL,
            "source": None,
        }
    )


def reading(rng: random.Random, device_index: int, t: float, hot: float = 0.0) -> dict:
    phase = t / 40.0 + device_index
    return {
        "machine.temperature": round(21.0 + device_index * 0.4 + 0.8 * math.sin(phase) + rng.gauss(0, 0.15) + hot, 3),
        "machine.pressure": round(1.0 + 0.05 * math.sin(phase) + rng.gauss(0, 0.01) + hot * 0.04, 4),
        "ambient.temperature": round(20.5 + 0.3 * math.sin(phase / 3) + rng.gauss(0, 0.05), 3),
        "ambient.humidity": round(25.0 + 2 * math.sin(phase / 2) + rng.gauss(0, 0.3), 2),
    }


def fleet_history(devices: int, seconds: int, end: float, seed: int = 0) -> dict[str, list[tuple[bytes, bytes]]]:
    """``{kind: [(key, value)]}``: ``devices`` devices × one reading a second until ``end``.

    ``pump-01`` is in alarm for the last 25 s (raised, not cleared), ``pump-02`` had an alarm from
    ``end-120`` to ``end-100`` (raised and cleared) and a drift event at ``end-60``; the others
    are normal throughout.
    """
    rng = random.Random(seed)
    out: dict[str, list[tuple[bytes, bytes]]] = {"labeled": [], "alarms": [], "drift": []}
    hot_explanation = {"machine.temperature": 0.71, "machine.pressure": 0.22, "ambient.humidity": 0.07}
    for index in range(devices):
        device = f"pump-{index:02d}"
        for step in range(seconds):
            t = end - seconds + 1 + step
            in_alarm = (index == 1 and t > end - 25) or (index == 2 and end - 120 <= t < end - 100)
            shift = 1.5 if index == 2 and t >= end - 60 else 0.0
            values = reading(rng, index, t, hot=(4.0 if in_alarm else 0.0) + shift)
            score = (0.55 + rng.random() * 0.35) if in_alarm else 0.05 + rng.random() * 0.15
            key = device.encode()
            out["labeled"].append((key, labeled(device, t, values, score, in_alarm, hot_explanation, step)))
    out["alarms"] += [
        (b"pump-02", alarm("raised", "pump-02", end - 120, None, 0.7, hot_explanation)),
        (b"pump-02", alarm("cleared", "pump-02", end - 120, end - 100, 0.86, hot_explanation)),
        (b"pump-01", alarm("raised", "pump-01", end - 24, None, 0.9, hot_explanation)),
    ]
    out["drift"].append(
        (
            b"pump-02",
            drift(
                "pump-02",
                end - 60,
                ["machine.temperature", "machine.pressure"],
                {"machine.temperature": 21.8, "machine.pressure": 1.0},
                {"machine.temperature": 23.3, "machine.pressure": 1.06},
                "consistent-shift",
            ),
        )
    )
    return out
