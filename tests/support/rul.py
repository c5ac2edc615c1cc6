"""Small synthetic run-to-failure fleets for the RUL tests (no data set needed)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

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
