"""Parse cost per message (µs): SimulatedTemperatureSensor bodies (the typed fast path) and
generic bodies (the general path), this checkout's ``edgewatch.schema`` against another one.

    python bench/parse_speed.py                               # this checkout only
    git show HEAD~5:edgewatch/schema.py > /tmp/before.py
    python bench/parse_speed.py --baseline /tmp/before.py     # before/after, interleaved

Each figure is the best of ``--rounds`` rounds of ``parse_message`` over 1,000 simulated
messages, the schemas measured in turn within each round: on a busy machine the best round is
the one least disturbed by other processes, and interleaving exposes both to the same load.
Parse only: no detection, no Kafka.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import time

import orjson

from edgewatch.app import tune_gc_for_streaming
from edgewatch.simulator import Fleet

START_MS = 1_767_225_600_000  # 2026-01-01T00:00:00Z


def load_schema(path: str | None, name: str):
    if path is None:
        from edgewatch import schema

        return schema
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def bodies(count: int) -> dict[str, list[tuple[bytes, bytes]]]:
    fleet = Fleet(devices=50, seed=1, fault_rate=0.01, start_time=START_MS / 1000)
    sensor = [(r.key, r.value) for r in fleet.records(count)]
    generic = [
        (key, orjson.dumps({"timestamp": START_MS // 1000 + i, "values": {"rpm": 1450.0 + i, "vibration": 0.1}}))
        for i, (key, _) in enumerate(sensor)
    ]
    return {"simulated-sensor": sensor, "generic": generic}


def time_per_message(schema, messages: list[tuple[bytes, bytes]]) -> float:
    raws = [schema.RawMessage(key, value, [], "telemetry", 0, i, START_MS) for i, (key, value) in enumerate(messages)]
    parse = schema.parse_message
    started = time.perf_counter()
    for raw in raws:
        parse(raw)
    return (time.perf_counter() - started) / len(raws) * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", help="path of another schema.py to measure against this checkout's")
    parser.add_argument("--rounds", type=int, default=200)
    args = parser.parse_args()
    schemas = {"this checkout": load_schema(None, "schema")}
    if args.baseline:
        schemas = {"baseline": load_schema(args.baseline, "baseline_schema"), **schemas}
    tune_gc_for_streaming()  # as the flow runs
    shapes = bodies(1000)
    for schema in schemas.values():  # every message must parse: a dead letter would be a different path
        for messages in shapes.values():
            raws = [schema.RawMessage(k, v, [], "telemetry", 0, i, START_MS) for i, (k, v) in enumerate(messages)]
            _, dead = schema.parse_batch(raws)
            assert not dead, dead[0].reason
    best = {(label, shape): float("inf") for label in schemas for shape in shapes}
    for _ in range(args.rounds):
        for shape, messages in shapes.items():
            for label, schema in schemas.items():
                best[label, shape] = min(best[label, shape], time_per_message(schema, messages))
    for shape in shapes:
        figures = ", ".join(f"{label} {best[label, shape]:.2f}" for label in schemas)
        print(f"{shape:17s} µs/message (best of {args.rounds} rounds): {figures}")


if __name__ == "__main__":
    main()
