"""Parse cost per message (µs) on SimulatedTemperatureSensor bodies and on the other shapes.

    python bench/parse_speed.py                      # this checkout's edgewatch.schema
    python bench/parse_speed.py --schema OTHER.py    # another version of schema.py (before/after)

Best and median of ``--repeat`` runs over the same messages (the best run is the one least
disturbed by other processes); parse only: no detection, no Kafka.
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import sys
import time

import orjson

from edgewatch.flows.anomaly import tune_gc_for_streaming
from edgewatch.simulator import Fleet


def load_schema(path: str | None):
    if path is None:
        from edgewatch import schema

        return schema
    spec = importlib.util.spec_from_file_location("schema_under_test", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def bodies(count: int) -> dict[str, list[tuple[bytes, bytes]]]:
    fleet = Fleet(devices=50, seed=1, fault_rate=0.01, start_time=1_767_225_600.0)
    sensor = [(r.key, r.value) for r in fleet.records(count)]
    generic = [
        (key, orjson.dumps({"timestamp": 1_767_225_600 + i, "values": {"rpm": 1450.0 + i, "vibration": 0.1}}))
        for i, (key, _) in enumerate(sensor)
    ]
    return {"simulated-sensor": sensor, "generic": generic}


def measure(schema, messages: list[tuple[bytes, bytes]], repeat: int) -> tuple[float, float]:
    raws = [
        schema.RawMessage(key, value, [], "telemetry", 0, i, 1_767_225_600_000)
        for i, (key, value) in enumerate(messages)
    ]
    runs = []
    for _ in range(repeat):
        started = time.perf_counter()
        _, dead = schema.parse_batch(raws)
        runs.append((time.perf_counter() - started) / len(raws) * 1e6)
        assert not dead, dead[0].reason
    return min(runs), statistics.median(runs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--schema", help="path of a schema.py to measure instead of edgewatch.schema")
    parser.add_argument("--messages", type=int, default=50_000)
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args()
    schema = load_schema(args.schema)
    tune_gc_for_streaming()  # as the flow runs
    for shape, messages in bodies(args.messages).items():
        best, median = measure(schema, messages, args.repeat)
        print(f"{shape:17s} best {best:5.2f} µs/message, median {median:5.2f} (of {args.repeat} runs)")


if __name__ == "__main__":
    main()
