"""RUL inference throughput: readings per second through ``RulFleet`` in one process.

Readings are the C-MAPSS test engines parsed as the flow parses them (``read_cmapss`` →
``parse_message``), copied under new device ids until there are ``--readings`` of them, then
fed in the flow's batches (``update_many``) and one at a time (``update``). The model is an
``edgewatch train --task rul`` artifact (``--model``), or trained on ``train_FD001.txt`` first.

    python bench/rul_bench.py [--model DIR] [--readings 200000] [--batch 2000]

Prints ``rul_bench: batch_readings_per_s=X batch_readings_per_cpu_s=X' single_readings_per_s=Y
single_readings_per_cpu_s=Y' batch=B readings=N devices=D`` (wall-clock and process CPU time).
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path

from edgewatch.config import data_dir
from edgewatch.connectors.files import read_cmapss
from edgewatch.rul.online import RulFleet
from edgewatch.schema import Reading, parse_message


def fleet_readings(path: Path, count: int) -> list[Reading]:
    """``count`` readings: the file's engines, then copies of them as further engines."""
    base = [r for r in (parse_message(raw) for raw in read_cmapss(path)) if isinstance(r, Reading)]
    readings = []
    copy = 0
    while len(readings) < count:
        readings.extend(dataclasses.replace(r, device_id=f"{r.device_id}-{copy}") for r in base)
        copy += 1
    return readings[:count]


def measure(fleet_model, readings: list[Reading], batch: int) -> dict[str, float]:
    """Readings per second, batched and one by one, in wall-clock time and in this process's CPU
    time (on a shared machine the CPU figure is what the process itself would do alone)."""
    warm = RulFleet(fleet_model)
    warm.update_many(readings[:batch])  # compile the kernels outside the timing
    fleet = RulFleet(fleet_model)
    wall, cpu = time.perf_counter(), time.process_time()
    for i in range(0, len(readings), batch):
        fleet.update_many(readings[i : i + batch])
    figures = {
        "batch_readings_per_s": len(readings) / (time.perf_counter() - wall),
        "batch_readings_per_cpu_s": len(readings) / (time.process_time() - cpu),
    }
    fleet = RulFleet(fleet_model)
    single = readings[: min(len(readings), 20_000)]
    wall, cpu = time.perf_counter(), time.process_time()
    for reading in single:
        fleet.update(reading)
    figures["single_readings_per_s"] = len(single) / (time.perf_counter() - wall)
    figures["single_readings_per_cpu_s"] = len(single) / (time.process_time() - cpu)
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, help="edgewatch train --task rul output")
    parser.add_argument("--readings", type=int, default=200_000)
    parser.add_argument("--batch", type=int, default=2000)
    args = parser.parse_args()
    root = data_dir() / "cmapss"
    if args.model is not None:
        from edgewatch.rul.artifact import load

        model = load(args.model)
    else:
        from edgewatch.evaluation.cmapss import load_runs
        from edgewatch.rul.train import TrainConfig, train_runs

        model = train_runs(load_runs(root / "train_FD001.txt", failed=True), TrainConfig(folds=0))
    readings = fleet_readings(root / "test_FD001.txt", args.readings)
    figures = measure(model, readings, args.batch)
    devices = len({r.device_id for r in readings})
    print(
        "rul_bench: " + " ".join(f"{name}={value:.0f}" for name, value in figures.items()),
        f"batch={args.batch} readings={len(readings)} devices={devices}",
    )


if __name__ == "__main__":
    main()
