"""What the RUL side reads and writes: estimates, maintenance alerts and run ends, and their JSON.

Output (topic ``rul``, one per reading)::

    {"device_id": "engine-007", "timestamp": "2024-01-01T00:03:12.000000Z", "cycle": 192,
     "rul": {"p10": 4.1, "p50": 11.8, "p90": 25.0},
     "model": {"name": "rul", "version": "rul-20261201T140000Z-1a2b3c4d"},
     "source": {"topic": "telemetry", "partition": 0, "offset": 1234}}

Output (topic ``alarms``, once per run, when P10 first falls below the horizon)::

    {"event": "maintenance-alert", "device_id": "engine-007", "timestamp": "...", "cycle": 180,
     "horizon": 30.0, "rul": {"p10": 29.2, "p50": 41.0, "p90": 63.5},
     "model": {"name": "rul", "version": "..."}, "source": {...}}

It reads "10 % chance that the machine fails within ``p10`` cycles, which is under ``horizon``".

Input (topic ``maintenance``): the end of a device's run::

    {"device_id": "engine-007", "event": "failure" | "maintenance", "timestamp": ISO-8601 | epoch seconds}

``failure``: the device failed at its last reading; its run becomes labeled data (RUL known
at every reading). ``maintenance``: it was serviced before failing; the run is censored (only a
lower bound of its RUL is known) and is not learned from. Either way the device starts a new run.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import orjson

from edgewatch.schema import RawMessage, format_timestamp, parse_iso_utc

RUN_END_KINDS = ("failure", "maintenance")
MODEL_NAME = "rul"
#: an event time as the events write it, remembered: a fleet's readings share times (a replay's cycles)
_time_text = functools.lru_cache(maxsize=4096)(format_timestamp)


@dataclass(slots=True)
class RulEstimate:
    """A device's remaining useful life after one reading, in cycles, with its 80 % band.

    ``alert`` is true on the one reading of a run where P10 first fell below the horizon."""

    device_id: str
    timestamp: float
    cycle: int
    p10: float
    p50: float
    p90: float
    alert: bool = False
    horizon: float = 0.0
    model_version: str = ""
    raw: RawMessage | None = None


@dataclass(slots=True)
class RunEnd:
    """A device's run ended: by a ``failure`` (labeled data) or by ``maintenance`` (censored)."""

    device_id: str
    kind: str
    timestamp: float | None = None


def _source(raw: RawMessage | None) -> dict | None:
    if raw is None:
        return None
    return {"topic": raw.topic, "partition": raw.partition, "offset": raw.offset}


def rul_estimate_json(estimate: RulEstimate) -> bytes:
    """The RUL event of an estimate (schema above)."""
    return orjson.dumps(
        {
            "device_id": estimate.device_id,
            "timestamp": _time_text(estimate.timestamp),
            "cycle": estimate.cycle,
            "rul": {"p10": estimate.p10, "p50": estimate.p50, "p90": estimate.p90},
            "model": {"name": MODEL_NAME, "version": estimate.model_version},
            "source": _source(estimate.raw),
        }
    )


def maintenance_alert_json(estimate: RulEstimate) -> bytes:
    """The maintenance alert raised by an estimate whose ``alert`` is set (schema above)."""
    if not estimate.alert:
        raise ValueError(f"{estimate.device_id}: this estimate raised no alert")
    return orjson.dumps(
        {
            "event": "maintenance-alert",
            "device_id": estimate.device_id,
            "timestamp": _time_text(estimate.timestamp),
            "cycle": estimate.cycle,
            "horizon": estimate.horizon,
            "rul": {"p10": estimate.p10, "p50": estimate.p50, "p90": estimate.p90},
            "model": {"name": MODEL_NAME, "version": estimate.model_version},
            "source": _source(estimate.raw),
        }
    )


def parse_run_end(value: bytes) -> RunEnd:
    """A run-end message, or a ``ValueError`` that says in one line what is wrong with it."""
    try:
        body = orjson.loads(value)
    except orjson.JSONDecodeError as exc:
        raise ValueError(f"run end is not JSON: {exc}") from None
    if not isinstance(body, dict):
        raise ValueError("run end must be a JSON object")
    device_id, kind, stamp = body.get("device_id"), body.get("event"), body.get("timestamp")
    if not isinstance(device_id, str) or not device_id:
        raise ValueError("run end needs a device_id string")
    if kind not in RUN_END_KINDS:
        raise ValueError(f"run end event must be one of {', '.join(RUN_END_KINDS)}, got {kind!r}")
    if isinstance(stamp, str):
        try:
            stamp = parse_iso_utc(stamp).timestamp()
        except ValueError:
            raise ValueError(f"run end timestamp is not ISO-8601: {stamp[:40]!r}") from None
    elif stamp is not None and (isinstance(stamp, bool) or not isinstance(stamp, int | float)):
        raise ValueError("run end timestamp must be ISO-8601 or epoch seconds")
    return RunEnd(device_id, kind, None if stamp is None else float(stamp))
