"""Simulated history and recorded streams for the registry tests, and trained model directories."""

from __future__ import annotations

from pathlib import Path

import orjson

from edgewatch.online_models import artifact
from edgewatch.online_models.registry import resolve_detector
from edgewatch.schema import RawMessage, Reading, parse_message
from edgewatch.simulator import Fleet
from edgewatch.simulator.publish import write_jsonl

START = 1.79e9  # 2026-09-21: source time of the first tick


def simulated_split(
    history: Path,
    live: Path,
    *,
    devices: int = 8,
    history_ticks: int = 300,
    live_ticks: int = 300,
    seed: int = 3,
    fault_rate: float = 0.01,
) -> tuple[Path, Path]:
    """One simulated fleet: its first ``history_ticks`` ticks to ``history`` (what train reads), the
    next ``live_ticks`` to ``live`` (a recorded stream with ground truth), both JSONL."""  # fmt: skip
    fleet = Fleet(devices=devices, seed=seed, fault_rate=fault_rate, warmup_ticks=history_ticks, tick_seconds=60.0,
                  start_time=START)  # fmt: skip
    records = list(fleet.records(devices * (history_ticks + live_ticks)))
    write_jsonl(records[: devices * history_ticks], history)
    write_jsonl(records[devices * history_ticks :], live)
    return history, live


def shifted_copy(source: Path, target: Path, delta: float) -> Path:
    """``source`` with every machine temperature moved by ``delta`` °C: history from another regime
    (a model trained on it misjudges the real stream)."""
    with open(source, "rb") as lines, open(target, "wb") as out:
        for line in lines:
            record = orjson.loads(line)
            body = orjson.loads(record["value"])
            body["machine"]["temperature"] += delta
            record["value"] = orjson.dumps(body).decode()
            out.write(orjson.dumps(record) + b"\n")
    return target


def readings_of_file(path: Path) -> list[Reading]:
    from edgewatch.connectors.files import read_messages

    parsed = [parse_message(raw) for raw in read_messages(path)]
    return [item for item in parsed if isinstance(item, Reading)]


def trained(history: Path, out: Path, detector: str = "compact-novelty") -> artifact.ModelArtifact:
    """A model directory fitted on ``history`` (what ``edgewatch train`` writes)."""
    return artifact.save(artifact.train(resolve_detector(detector), readings_of_file(history)), out)


def raw(value: dict, key: str = "machine-0000", offset: int = 0) -> RawMessage:
    return RawMessage(key.encode(), orjson.dumps(value), [], "t", 0, offset, None)
