"""The flow process of the IoT Hub restart test: edgewatch's IoT Hub sink in a Bytewax flow,
fed labeled events ``start, start+1, …`` for four devices at 20 per second.

    python -m tests.support.iothub_flow --buffer-dir DIR --ca CA --start N --count N --drain SECONDS

It exits 0 when the store-and-forward buffer drained at the end, 3 when messages were left.
"""

from __future__ import annotations

import argparse
import datetime
import logging
import sys
from pathlib import Path

import bytewax.operators as op
from bytewax.dataflow import Dataflow
from bytewax.inputs import DynamicSource, StatelessSourcePartition
from bytewax.testing import run_main

from edgewatch.azure.iothub import IoTHubSink
from edgewatch.store_forward import BufferPolicy, StoreAndForward
from tests.support.events import labeled_event
from tests.support.iothub import DEVICE_CONNECTION_STRING, device_of


class PacedSource(DynamicSource):
    """Labeled events ``start, start+1, …`` for four devices, ``per_second`` of them, in small lists."""

    def __init__(self, start: int, count: int, per_second: float, batch: int = 2):
        self.start, self.count, self.per_second, self.batch = start, count, per_second, batch

    def build(self, step_id, worker_index, worker_count):
        return _PacedPartition(self)


class _PacedPartition(StatelessSourcePartition):
    def __init__(self, spec: PacedSource):
        self.next, self.end, self.spec = spec.start, spec.start + spec.count, spec
        self.awake = datetime.datetime.now(datetime.UTC)

    def next_batch(self):
        if self.next >= self.end:
            raise StopIteration
        offsets = range(self.next, min(self.next + self.spec.batch, self.end))
        self.next = offsets[-1] + 1
        self.awake += datetime.timedelta(seconds=len(offsets) / self.spec.per_second)
        return [[labeled_event(n, device_of(n), anomaly=n % 5 == 0) for n in offsets]]

    def next_awake(self):
        return self.awake


def run_flow(args: argparse.Namespace) -> int:
    """edgewatch's IoT Hub sink in a Bytewax flow; exit 0 when the buffer drained at the end."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    logging.getLogger("azure").setLevel(logging.CRITICAL)  # the SDK logs every failed reconnect
    policy = BufferPolicy(retry_max_seconds=2.0, drain_seconds=args.drain)
    sink = IoTHubSink(
        args.buffer_dir, DEVICE_CONNECTION_STRING, send="all", ca_cert=args.ca, send_timeout=5.0, policy=policy
    )
    flow = Dataflow("iothub-restart")
    op.output("iothub-out", op.input("paced", flow, PacedSource(args.start, args.count, 20.0)), sink)
    run_main(flow)
    with StoreAndForward(Path(args.buffer_dir) / "iothub.sqlite3", "after") as buffer:
        left = len(buffer)
    print(f"flow done: {left} message(s) left in the buffer", flush=True)
    return 0 if left == 0 else 3


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.support.iothub_flow")
    parser.add_argument("--buffer-dir", required=True)
    parser.add_argument("--ca", required=True)
    parser.add_argument("--start", type=int, required=True)
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--drain", type=float, required=True)
    return run_flow(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
