"""Small synthetic run-to-failure fleets for the RUL tests (no data set needed)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import orjson

from edgewatch.connectors.files import CMAPSS_EPOCH
from edgewatch.rul.train import Run, TrainConfig
from edgewatch.schema import CMAPSS_FEATURES, RawMessage, Reading

SMALL = TrainConfig(trees=60, learning_rate=0.1, leaves=7, min_leaf=10, folds=0, threads=1)


def synthetic_fleet(engines: int, seed: int, regimes: int = 1) -> list[Run]:
    """Engines whose sensors 2, 3, 4 drift exponentially towards failure (plus noise), flown at
    ``regimes`` operating points that shift every sensor; the other sensors are noise or constant."""
    points = np.random.default_rng(regimes).uniform(0, 40, size=(regimes, 3))  # the same for every fleet
    rng = np.random.default_rng(seed)
    runs = []
    for engine in range(engines):
        life = int(rng.integers(120, 260))
        wear = np.exp((np.arange(life) - life) / 40.0)  # ~0 early, 1 at failure
        regime = rng.integers(regimes, size=life)
        rows = np.zeros((life, len(CMAPSS_FEATURES)))
        rows[:, :3] = points[regime] + rng.normal(0, 0.001, (life, 3))
        offset = points[regime, 0:1] * 2.0  # the operating point moves every sensor
        rows[:, 3:] = 100.0 + offset + rng.normal(0, 0.5, (life, 21))
        rows[:, 3 + 0] = 518.67  # constant, like C-MAPSS sensor 1
        for sensor, gain in ((1, 4.0), (2, -3.0), (3, 5.0)):
            rows[:, 3 + sensor] += gain * wear + rng.normal(0, 0.3)  # per-engine initial wear
        runs.append(Run(f"engine-{engine:03d}", rows))
    return runs


def write_cmapss(runs: list[Run], path: Path) -> Path:
    """The runs as a C-MAPSS text file (``unit cycle setting1..3 sensor1..21``), unit ``i + 1`` each."""
    with open(path, "w") as out:
        for unit, run in enumerate(runs, start=1):
            for cycle, row in enumerate(run.rows, start=1):
                out.write(f"{unit} {cycle} " + " ".join(f"{value:.6f}" for value in row) + "\n")
    return path


def readings_of(runs: list[Run], interleave: bool = True) -> list[Reading]:
    """The runs as readings, cycle by cycle across engines (as a fleet streams) or run by run."""
    items = [(cycle, i, run, row) for i, run in enumerate(runs) for cycle, row in enumerate(run.rows)]
    if interleave:
        items.sort(key=lambda item: (item[0], item[1]))
    return [
        Reading(run.device_id, float(cycle), dict(zip(CMAPSS_FEATURES, row.tolist(), strict=True)), raw_at(n))
        for n, (cycle, _, run, row) in enumerate(items)
    ]


def raw_at(offset: int) -> RawMessage:
    return RawMessage(None, b"{}", [], "telemetry", 0, offset, None)


def body(row: np.ndarray, cycle: int) -> bytes:
    """A C-MAPSS reading as the flow reads it from Kafka."""
    return orjson.dumps({"CycleTime": cycle, **dict(zip(CMAPSS_FEATURES, row.tolist(), strict=True))})


def raw_messages(runs: list[Run], topic: str = "telemetry") -> list[RawMessage]:
    """The runs as Kafka messages keyed by engine, cycle by cycle across engines (offsets in order)."""
    items = sorted(
        ((cycle, i, run.device_id, row) for i, run in enumerate(runs) for cycle, row in enumerate(run.rows, 1)),
        key=lambda item: item[:2],
    )
    return [
        RawMessage(device.encode(), body(row, cycle), [], topic, 0, offset, round((CMAPSS_EPOCH + cycle) * 1000))
        for offset, (cycle, _, device, row) in enumerate(items)
    ]


def write_cmapss_split(runs: list[Run], test_runs: list[Run], root: Path, subset: str = "SYN") -> Path:
    """``train_<subset>.txt`` of ``runs`` and, beside it, ``test_<subset>.txt`` of ``test_runs`` cut
    at two thirds and ``RUL_<subset>.txt`` (the cycles they had left): a C-MAPSS-like folder."""
    cut = [Run(run.device_id, run.rows[: len(run.rows) * 2 // 3]) for run in test_runs]
    write_cmapss(cut, root / f"test_{subset}.txt")
    left = [len(run.rows) - len(part.rows) for run, part in zip(test_runs, cut, strict=True)]
    (root / f"RUL_{subset}.txt").write_text("".join(f"{cycles}\n" for cycles in left))
    return write_cmapss(runs, root / f"train_{subset}.txt")


def write_jsonl_runs(runs: list[Run], path: Path) -> Path:
    """The runs as a recorded stream (``simulate --out`` JSONL), run after run: growing the file by
    more runs only appends lines (a C-MAPSS .txt is replayed cycle by cycle across engines)."""
    with open(path, "wb") as out:
        for run in runs:
            for cycle, row in enumerate(run.rows, start=1):
                record = {"key": run.device_id, "value": body(row, cycle).decode(), "headers": {},
                          "timestamp_ms": round((CMAPSS_EPOCH + cycle) * 1000)}  # fmt: skip
                out.write(orjson.dumps(record) + b"\n")
    return path
