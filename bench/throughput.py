"""Throughput of three Bytewax flows on the same broker and the same messages, in one run.

    python bench/throughput.py [--messages 100000] [--devices 50] [--broker kafka|tansu] [--bootstrap HOST:PORT]
    edgewatch bench            (same thing)

1. ``null``: Bytewax's own KafkaSource → parse JSON → serialize → KafkaSink, per message.
2. ``naive``: the same, plus one River ``MinMaxScaler | HalfSpaceTrees(n_trees=25, height=8,
   window_size=250)`` per device in ``op.stateful_map`` (what the River and Bytewax docs suggest).
3. ``edgewatch``: the product's flow with its default detector.

The messages (simulated machines with faults) are produced once; each flow then runs in
its own process, reads the topic from the start to the offsets produced and writes to its
own output topic. events/s = messages / (end of flow - first message read). Prints one
line per flow and ends with exactly:

    bench: null=N naive=N edgewatch=N ratio_vs_naive=X ratio_vs_null=Y
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from confluent_kafka import Producer  # noqa: E402

from edgewatch.connectors.kafka import ensure_topics  # noqa: E402
from edgewatch.simulator import Fleet  # noqa: E402

FLOWS = ("null", "naive", "edgewatch")
PARTITIONS = 4


def produce_messages(bootstrap: str, topic: str, messages: int, devices: int) -> dict[tuple[str, int], int]:
    """Produce the bench messages once; returns the end offset of every partition."""
    ensure_topics({"bootstrap.servers": bootstrap}, [topic], PARTITIONS)
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": "20", "batch.num.messages": "10000"})
    ends: dict[tuple[str, int], int] = {}

    def delivered(error, msg) -> None:
        if error is not None:
            raise RuntimeError(error)
        key = (msg.topic(), msg.partition())
        ends[key] = max(ends.get(key, 0), msg.offset() + 1)

    # source times are recent: Kafka deletes messages older than its retention (7 days by default)
    start = time.time() - messages / devices
    fleet = Fleet(devices=devices, seed=42, fault_rate=0.003, start_time=start, tick_seconds=1.0)
    for record in fleet.records(messages):
        while True:
            try:
                producer.produce(
                    topic,
                    record.value,
                    record.key,
                    headers=record.headers,
                    timestamp=record.timestamp_ms,
                    on_delivery=delivered,
                )
                break
            except BufferError:
                producer.poll(0.1)
        producer.poll(0)
    if producer.flush(120):
        raise RuntimeError("bench messages not delivered")
    return ends


class _FirstBatchClock:
    """Wraps a Bytewax source to note when the first message arrives."""

    def __init__(self, source):
        from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition

        clock = self
        self.first: float | None = None

        class Partition(StatefulSourcePartition):
            def __init__(self, inner):
                self._inner = inner

            def next_batch(self):
                batch = self._inner.next_batch()
                if clock.first is None and batch:
                    clock.first = time.perf_counter()
                return batch

            def next_awake(self):
                return self._inner.next_awake()

            def snapshot(self):
                return self._inner.snapshot()

            def close(self):
                self._inner.close()

        class Source(FixedPartitionedSource):
            def list_parts(self):
                return source.list_parts()

            def build_part(self, step_id, for_part, resume_state):
                return Partition(source.build_part(step_id, for_part, resume_state))

        self.source = Source()


def _reference_flow(kind: str, bootstrap: str, topic: str, out_topic: str, clock: _FirstBatchClock):
    """The null and naive flows, written the way the Bytewax and River docs show."""
    import bytewax.operators as op
    import orjson
    from bytewax.connectors.kafka import KafkaSink, KafkaSinkMessage
    from bytewax.dataflow import Dataflow

    from edgewatch.online_models.registry import naive_half_space_trees

    flow = Dataflow(f"bench-{kind}")
    messages = op.input("in", flow, clock.source)

    def parse(msg):
        body = orjson.loads(msg.value)
        features = {
            "machine.temperature": body["machine"]["temperature"],
            "machine.pressure": body["machine"]["pressure"],
            "ambient.temperature": body["ambient"]["temperature"],
            "ambient.humidity": body["ambient"]["humidity"],
        }
        return msg.key.decode(), features

    parsed = op.map("parse", messages, parse)
    if kind == "null":
        out = op.map("serialize", parsed, lambda kv: KafkaSinkMessage(kv[0].encode(), orjson.dumps(kv[1])))
    else:
        keyed = op.key_on("by-device", parsed, lambda kv: kv[0])

        def detect(model, kv):
            model = model or naive_half_space_trees()
            score = model.score_one(kv[1])
            model.learn_one(kv[1])
            return model, (kv[1], score)

        scored = op.stateful_map("detect", keyed, detect)
        out = op.map(
            "serialize",
            scored,
            lambda item: KafkaSinkMessage(
                item[0].encode(), orjson.dumps({"features": item[1][0], "score": item[1][1]})
            ),
        )
    op.output("out", out, KafkaSink([bootstrap], out_topic))
    return flow


def run_one(kind: str, bootstrap: str, topic: str, stop_offsets: dict[tuple[str, int], int]) -> dict:
    """Run one flow to the end in this process and time it."""
    from bytewax.connectors.kafka import KafkaSource
    from bytewax.testing import run_main

    from edgewatch.config import FlowSettings
    from edgewatch.connectors.kafka import KafkaBatchSource
    from edgewatch.flows.anomaly import build_flow

    out_topic = f"{topic}-out-{kind}"
    config = {"bootstrap.servers": bootstrap}
    ensure_topics(config, [out_topic, f"{topic}-dlq"], PARTITIONS)
    messages = sum(stop_offsets.values())
    if kind == "edgewatch":
        settings = FlowSettings(bootstrap=bootstrap, in_topic=topic, out_topic=out_topic, dlq_topic=f"{topic}-dlq")
        clock = _FirstBatchClock(KafkaBatchSource(config, [topic], settings.batch_size, stop_offsets=stop_offsets))
        flow = build_flow(settings, source=clock.source)
    else:
        clock = _FirstBatchClock(KafkaSource([bootstrap], [topic], tail=False))
        flow = _reference_flow(kind, bootstrap, topic, out_topic, clock)
    run_main(flow)
    seconds = time.perf_counter() - clock.first
    return {"flow": kind, "messages": messages, "seconds": seconds, "events_per_s": messages / seconds}


def _run_in_subprocess(kind: str, bootstrap: str, topic: str, stop_offsets: dict) -> dict:
    encoded = json.dumps([[t, p, o] for (t, p), o in stop_offsets.items()])
    result = subprocess.run(
        [sys.executable, __file__, "--child", kind, "--bootstrap", bootstrap, "--topic", topic, "--offsets", encoded],
        check=True,
        capture_output=True,
        text=True,
    )
    return json.loads(result.stdout.strip().splitlines()[-1])


def main(messages: int = 100_000, devices: int = 50, bootstrap: str | None = None, broker_kind: str = "kafka") -> dict:
    with ExitStack() as stack:
        if bootstrap is None:
            if broker_kind == "tansu":
                from edgewatch.connectors.broker import EmbeddedBroker

                bootstrap = stack.enter_context(EmbeddedBroker()).bootstrap
            else:
                from tests.kafka.apache_kafka import ApacheKafka

                bootstrap = stack.enter_context(ApacheKafka(Path(tempfile.mkdtemp(prefix="bench-kafka-")))).bootstrap
        topic = f"bench-{int(time.time())}"
        stop_offsets = produce_messages(bootstrap, topic, messages, devices)
        print(f"bench: {messages} messages from {devices} devices on {bootstrap} ({broker_kind})", flush=True)
        results = {}
        for kind in FLOWS:
            results[kind] = _run_in_subprocess(kind, bootstrap, topic, stop_offsets)
            r = results[kind]
            print(
                f"  {kind:10s} {r['events_per_s']:10.0f} events/s  ({r['messages']} in {r['seconds']:.2f} s)",
                flush=True,
            )
    null, naive, edgewatch = (results[kind]["events_per_s"] for kind in FLOWS)
    print(
        f"bench: null={null:.0f} naive={naive:.0f} edgewatch={edgewatch:.0f} "
        f"ratio_vs_naive={edgewatch / naive:.1f} ratio_vs_null={edgewatch / null:.2f}"
    )
    rates = {"null": null, "naive": naive, "edgewatch": edgewatch}
    return rates


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=100_000)
    parser.add_argument("--devices", type=int, default=50)
    parser.add_argument("--bootstrap")
    parser.add_argument("--broker", default="kafka", choices=("kafka", "tansu"))
    parser.add_argument("--child", choices=FLOWS, help=argparse.SUPPRESS)
    parser.add_argument("--topic", help=argparse.SUPPRESS)
    parser.add_argument("--offsets", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        offsets = {(t, p): o for t, p, o in json.loads(args.offsets)}
        print(json.dumps(run_one(args.child, args.bootstrap, args.topic, offsets)))
    else:
        main(args.messages, args.devices, args.bootstrap, args.broker)
