"""Device state at fleet scale: the anomaly flow over 100,000 devices with recovery on.

    python bench/state_scale.py [--devices 100000] [--messages 400000] [--features 2]
                                [--snapshot-seconds 5] [--shards 1] [--idle-seconds 15]

The real flow (``build_flow``: parse, detect with the default detector, serialize) runs in
this process (one Bytewax worker) over messages made up front, from an in-memory source, into
a sink that serializes every record and drops it; no broker, so the figures are the flow's
own. Devices report in turn (each ``messages / devices`` times) with ``--features`` values
(each device its own level plus Gaussian noise).

1. throughput with recovery on (pages written at each epoch), and with recovery off;
   Both per second of wall time and per second of the process's CPU time (the steadier
   figure on a shared machine);
2. then the flow stays idle ``--idle-seconds`` (from the epoch after the last message): the
   bytes written (``wchar`` of ``/proc/self/io``: every ``write()`` of the process, Bytewax's
   and the page stores') per idle epoch, and of those the device pages';
3. the size of the recovery directory and its largest blob.

It ends with one line::

    state_scale: devices=N messages_per_s=N messages_per_cpu_s=N messages_per_s_no_recovery=N
                 messages_per_cpu_s_no_recovery=N idle_bytes_per_epoch=N idle_page_bytes_per_epoch=N recovery_mb=N
                 largest_blob_kb=N peak_rss_mb=N
"""

from __future__ import annotations

import argparse
import json
import resource
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import bytewax.operators as op  # noqa: E402
import numpy as np  # noqa: E402
from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition  # noqa: E402
from bytewax.outputs import DynamicSink, StatelessSinkPartition  # noqa: E402
from prometheus_client import REGISTRY  # noqa: E402

from edgewatch.app import Application, tune_gc_for_streaming  # noqa: E402
from edgewatch.config import FlowSettings  # noqa: E402
from edgewatch.flows.anomaly import build_flow  # noqa: E402
from edgewatch.flows.wiring import dead_letter_records, labeled_records  # noqa: E402
from edgewatch.schema import LabeledEvent, RawMessage  # noqa: E402


def page_bytes() -> float:
    return REGISTRY.get_sample_value("edgewatch_state_bytes_written_total") or 0.0


def written_bytes() -> int:
    for line in Path("/proc/self/io").read_text().splitlines():
        if line.startswith("wchar:"):
            return int(line.split()[1])
    return 0


class _Partition(StatefulSourcePartition):
    def __init__(self, source: MemorySource, position: int):
        self._source, self._position = source, position

    def next_batch(self):
        source = self._source
        if self._position < len(source.messages):
            batch = source.messages[self._position : self._position + source.batch_size]
            self._position += len(batch)
            return [batch]
        now = time.monotonic()
        if source.idle_from is None:  # every message is in; the epoch holding the last ones
            source.idle_from = now + 1.5 * source.epoch_seconds  # closes first, then only idle epochs
        elif source.idle_started is None and now >= source.idle_from:  # the last busy epoch is written
            source.idle_started = now
            source.idle_written, source.idle_pages = written_bytes(), page_bytes()
        if source.idle_started is not None and now >= source.idle_started + source.idle_seconds:
            source.idle_epochs = (now - source.idle_started) / source.epoch_seconds
            source.idle_written = written_bytes() - source.idle_written
            source.idle_pages = page_bytes() - source.idle_pages
            raise StopIteration
        if source.idle_seconds == 0:
            raise StopIteration
        return []

    def next_awake(self):
        return None

    def snapshot(self) -> int:
        return self._position


class MemorySource(FixedPartitionedSource):
    def __init__(self, messages: list[RawMessage], batch_size: int, idle_seconds: float, epoch_seconds: float):
        self.messages, self.batch_size, self.idle_seconds = messages, batch_size, idle_seconds
        self.epoch_seconds = epoch_seconds
        self.idle_from: float | None = None
        self.idle_written: int | None = None
        self.idle_pages = 0.0
        self.idle_started: float | None = None
        self.idle_epochs = 1.0

    def list_parts(self):
        return ["memory"]

    def build_part(self, step_id, for_part, resume_state):
        return _Partition(self, resume_state or 0)


class _CountingPartition(StatelessSinkPartition):
    def __init__(self, sink: CountingSink):
        self._sink = sink

    def write_batch(self, items) -> None:
        sink = self._sink
        for batch in items:
            for item in batch:
                sink.serialize(item)
                sink.count += 1
        if sink.count >= sink.expected and sink.done_at is None:
            sink.done_at, sink.cpu_at_done = time.perf_counter(), time.process_time()


class CountingSink(DynamicSink):
    """Serializes every item (the Kafka sink's work) and counts it; one sink object may take
    several streams (labeled events and dead letters), its count is theirs together."""

    def __init__(self, serialize, expected: int):
        self.serialize, self.expected = serialize, expected
        self.count, self.done_at, self.cpu_at_done = 0, None, 0.0

    def build(self, step_id, worker_index, worker_count):
        return _CountingPartition(self)


def make_messages(devices: int, messages: int, features: int) -> list[RawMessage]:
    names = ["temperature", "pressure", "vibration", "current", "speed", "humidity", "flow", "torque"][:features]
    rng = np.random.default_rng(7)
    levels = rng.uniform(10, 100, (devices, len(names)))  # each device its own operating point, plus noise
    noise = rng.normal(0, 1, (messages, len(names)))
    out = []
    for i in range(messages):
        device, tick = i % devices, i // devices
        values = {name: round(float(levels[device, k] + noise[i, k]), 3) for k, name in enumerate(names)}
        body = {"deviceId": f"machine-{device:06d}", "timestamp": 1_700_000_000 + tick * 5, "values": values}
        out.append(RawMessage(None, json.dumps(body).encode(), [], "telemetry", 0, i, None))
    return out


def run(messages: list[RawMessage], args, recovery: Path | None) -> dict:
    settings = FlowSettings(
        shards=args.shards, recovery_dir=recovery, snapshot_seconds=args.snapshot_seconds, status_seconds=0
    )
    app = Application(settings, handle_signals=False, input_name="memory").start()
    idle = args.idle_seconds if recovery else 0.0
    source = MemorySource(messages, settings.batch_size, idle, args.snapshot_seconds)
    flow, streams = build_flow(settings, source)
    labeled, dead = labeled_records(settings.out_topic), dead_letter_records(settings.dlq_topic)
    sink = CountingSink(lambda item: labeled(item) if isinstance(item, LabeledEvent) else dead(item), len(messages))
    op.output("labeled-count", streams.labeled, sink)
    op.output("dead-letters-count", streams.dead_letters, sink)
    start, cpu = time.perf_counter(), time.process_time()
    app.run(flow)
    assert sink.count == len(messages), f"{sink.count} of {len(messages)} messages came out"
    return {
        "messages_per_s": len(messages) / (sink.done_at - start),
        "messages_per_cpu_s": len(messages) / (sink.cpu_at_done - cpu),
        "idle_written": source.idle_written or 0,
        "idle_pages": source.idle_pages,
        "idle_epochs": source.idle_epochs,
    }


def recovery_figures(recovery: Path) -> tuple[float, int]:
    files = [p for p in recovery.rglob("*") if p.is_file()]
    largest = 0
    for path in files:
        if path.suffix == ".sqlite3":
            db = sqlite3.connect(path)
            table = "snaps" if path.name.startswith("part-") else "pages"
            column = "ser_change" if table == "snaps" else "blob"
            largest = max(largest, db.execute(f"SELECT coalesce(max(length({column})), 0) FROM {table}").fetchone()[0])
            db.close()
    return sum(p.stat().st_size for p in files) / 2**20, largest


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--devices", type=int, default=100_000)
    parser.add_argument("--messages", type=int, default=400_000)
    parser.add_argument("--features", type=int, default=2)
    parser.add_argument("--snapshot-seconds", type=float, default=5.0)
    parser.add_argument("--shards", type=int, default=1)
    parser.add_argument("--idle-seconds", type=float, default=15.0)
    args = parser.parse_args()
    messages = make_messages(args.devices, args.messages, args.features)
    tune_gc_for_streaming()  # as `edgewatch run` does (and the made-up messages leave the collector's way)
    with tempfile.TemporaryDirectory(prefix="edgewatch-state-scale-") as tmp:
        recovery = Path(tmp) / "recovery"
        on = run(messages, args, recovery)
        recovery_mb, largest = recovery_figures(recovery)
        off = run(messages, args, None)
    idle_epochs = on["idle_epochs"]
    figures = {
        "devices": args.devices,
        "messages_per_s": round(on["messages_per_s"]),
        "messages_per_cpu_s": round(on["messages_per_cpu_s"]),
        "messages_per_s_no_recovery": round(off["messages_per_s"]),
        "messages_per_cpu_s_no_recovery": round(off["messages_per_cpu_s"]),
        "idle_bytes_per_epoch": round(on["idle_written"] / idle_epochs),
        "idle_page_bytes_per_epoch": round(on["idle_pages"] / idle_epochs),
        "recovery_mb": round(recovery_mb, 1),
        "largest_blob_kb": round(largest / 1024, 1),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
    }
    print("state_scale: " + " ".join(f"{name}={value}" for name, value in figures.items()))


if __name__ == "__main__":
    main()
