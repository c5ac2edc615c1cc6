"""Throughput, latency, memory and scaling of edgewatch, against references measured in the same run.

    python bench/throughput.py [--messages 100000] [--devices 50] [--broker kafka|tansu] [--bootstrap HOST:PORT]
                               [--quick] [--cpu-clock]
    edgewatch bench            (same thing)
    python bench/throughput.py --paired 7 --cpu-clock [--baseline DIR]
    python bench/throughput.py --in-process 5 [--baseline DIR]

``--paired N``: only the null flow and edgewatch, N rounds of one run each, back to back in a
rotating order, and each round's ratio (and with ``--baseline``, the flow of another checkout,
e.g. ``git archive main | tar -x -C DIR``, in the same rounds): a change's effect measured
under the same load, where separate runs on a shared machine differ by more than the change.
``--in-process N``: the flow alone, without a broker (the messages made beforehand as the Kafka
source makes them, 4 partitions; a producer that only counts stands in for librdkafka): messages
per CPU-second of the flow's own Python work, N rounds (with ``--baseline``, interleaved).

On one broker (Apache Kafka 4.x KRaft by default, started for the run), the same messages
(simulated machines with faults, 4 partitions) are produced once; then, each in its own
process, reading the topic from the start up to the offsets produced:

1. ``null``: Bytewax's own KafkaSource → parse JSON → serialize → KafkaSink, per message.
2. ``naive``: the same plus one River ``MinMaxScaler | HalfSpaceTrees(n_trees=25, height=8,
   window_size=250)`` per device in ``op.stateful_map`` (what the River and Bytewax docs show).
3. ``edgewatch``: the product's flow with its default detector (relational-novelty).
4. ``ceiling``: plain confluent-kafka, consume every message and produce it again, no Bytewax,
   no parsing: the most a Python process gets through this broker on this machine.
5. edgewatch with 1, 2 and 4 Bytewax workers in one process.
6. latency: edgewatch running (``edgewatch run``) while 10,000 events/s arrive (5 s to warm up, 20 s measured):
   p50/p99 from the producer's send to the labeled event read back.
7. memory: edgewatch over 10,000 devices: the bytes of model state and the process's peak RSS.

events/s = messages / (end of flow - first message read); with ``--cpu-clock``, the process's CPU
time (all its threads) in that span instead of the wall clock: on a machine busy with other work,
messages per CPU-second compare flows where wall-clock rates swing. It ends with exactly:

    bench: null=N naive=N edgewatch=N ratio_vs_naive=X ratio_vs_null=Y
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import ExitStack
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from confluent_kafka import Consumer, Producer, TopicPartition  # noqa: E402

from edgewatch.connectors.kafka import ensure_topics, produce, publish  # noqa: E402
from edgewatch.simulator import Fleet  # noqa: E402
from tests.support.processes import EdgewatchProcess  # noqa: E402

FLOWS = ("null", "naive", "edgewatch")
CLOCK = time.perf_counter  # the throughput clock of a child (--cpu-clock: time.process_time)
PARTITIONS = 4


def produce_messages(bootstrap: str, topic: str, messages: int, devices: int) -> dict[tuple[str, int], int]:
    """Produce the bench messages once; returns the end offset of every partition."""
    ensure_topics({"bootstrap.servers": bootstrap}, [topic], PARTITIONS)
    # source times are recent: Kafka deletes messages older than its retention (7 days by default)
    ticks = max(1, messages // devices)
    fleet = Fleet(devices=devices, seed=42, fault_rate=0.003, start_time=time.time() - ticks, tick_seconds=1.0)
    return publish(fleet.records(messages), {"bootstrap.servers": bootstrap}, topic).end_offsets


class _FirstBatchClock:
    """Wraps a Bytewax source to note when the first message arrives."""

    def __init__(self, source):
        from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition

        clock = self
        self.first: float | None = None
        self.first_cpu: float | None = None  # the process's CPU time then (all its threads)

        class Partition(StatefulSourcePartition):
            def __init__(self, inner):
                self._inner = inner

            def next_batch(self):
                batch = self._inner.next_batch()
                if clock.first is None and batch:
                    clock.first, clock.first_cpu = CLOCK(), time.process_time()
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


def timing(clock: _FirstBatchClock, messages: int) -> dict:
    """A child's figures from its first message to now: rate per second (``CLOCK``) and per CPU-second."""
    seconds = CLOCK() - clock.first
    cpu_seconds = time.process_time() - clock.first_cpu
    return {
        "messages": messages,
        "seconds": seconds,
        "events_per_s": messages / seconds,
        "cpu_seconds": cpu_seconds,
        "events_per_cpu_s": messages / cpu_seconds,
    }


def simulator_features(body: dict) -> dict:
    """The null and naive flows' features of a simulator message."""
    return {
        "machine.temperature": body["machine"]["temperature"],
        "machine.pressure": body["machine"]["pressure"],
        "ambient.temperature": body["ambient"]["temperature"],
        "ambient.humidity": body["ambient"]["humidity"],
    }


def _reference_flow(kind: str, bootstrap: str, out_topic: str, clock: _FirstBatchClock, features=simulator_features):
    """The null and naive flows, written the way the Bytewax and River docs show; ``features``
    picks a message body's features (a flat body such as C-MAPSS's: ``dict`` itself)."""
    import bytewax.operators as op
    import orjson
    from bytewax.connectors.kafka import KafkaSink, KafkaSinkMessage
    from bytewax.dataflow import Dataflow

    from edgewatch.online_models.registry import naive_half_space_trees

    flow = Dataflow(f"bench-{kind}")
    messages = op.input("in", flow, clock.source)

    def parse(msg):
        return msg.key.decode(), features(orjson.loads(msg.value))

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


def _edgewatch_app(bootstrap: str, topic: str, out_topic: str, stop_offsets: dict, workers: int = 1):
    """The flow as `edgewatch run` builds it (Application, Kafka outputs), reading a known amount."""
    from edgewatch.app import Application
    from edgewatch.config import FlowSettings
    from edgewatch.connectors.kafka import KafkaBatchSource
    from edgewatch.flows.anomaly import build_flow
    from edgewatch.flows.wiring import to_kafka

    settings = FlowSettings(
        bootstrap=bootstrap, in_topic=topic, out_topic=out_topic, dlq_topic=f"{out_topic}-dlq", workers=workers
    )
    config = settings.client_config()
    ensure_topics(config, [out_topic, settings.dlq_topic], PARTITIONS)
    app = Application(settings, handle_signals=False).start()
    clock = _FirstBatchClock(KafkaBatchSource(config, [topic], settings.batch_size, stop_offsets=stop_offsets))
    flow, streams = build_flow(settings, clock.source)
    to_kafka(streams, settings)
    return app, flow, clock


def run_flow(
    kind: str, bootstrap: str, topic: str, stop_offsets: dict, workers: int = 1, features=simulator_features
) -> dict:
    """Run one flow to the end in this process and time it (``features``: see :func:`_reference_flow`)."""
    from bytewax.connectors.kafka import KafkaSource
    from bytewax.run import cli_main

    out_topic = f"{topic}-out-{kind}-{workers}"
    if kind == "edgewatch":
        app, flow, clock = _edgewatch_app(bootstrap, topic, out_topic, stop_offsets, workers)
        app.run(flow)
    else:
        ensure_topics({"bootstrap.servers": bootstrap}, [out_topic], PARTITIONS)
        clock = _FirstBatchClock(KafkaSource([bootstrap], [topic], tail=False))
        flow = _reference_flow(kind, bootstrap, out_topic, clock, features)
        cli_main(flow, workers_per_process=workers)
    return timing(clock, sum(stop_offsets.values()))


def run_ceiling(bootstrap: str, topic: str, stop_offsets: dict) -> dict:
    """Plain confluent-kafka: consume every message and produce it to another topic."""
    out_topic = f"{topic}-out-ceiling"
    ensure_topics({"bootstrap.servers": bootstrap}, [out_topic], PARTITIONS)
    consumer = Consumer(
        {"bootstrap.servers": bootstrap, "group.id": "bench-ceiling", "enable.auto.commit": "false",
         "fetch.wait.max.ms": "10"}
    )  # fmt: skip
    consumer.assign([TopicPartition(t, p, 0) for (t, p) in stop_offsets])
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": "2"})
    remaining = sum(stop_offsets.values())
    first = None
    while remaining:
        messages = consumer.consume(2000, 0.1)
        if messages and first is None:
            first = CLOCK()
        for msg in messages:
            if msg.error() is None:
                producer.produce(out_topic, msg.value(), msg.key(), headers=msg.headers())
                remaining -= 1
        producer.poll(0)
    producer.flush(60)
    seconds = CLOCK() - first
    consumer.close()
    messages = sum(stop_offsets.values())
    return {"messages": messages, "seconds": seconds, "events_per_s": messages / seconds}


def run_memory(bootstrap: str, topic: str, stop_offsets: dict) -> dict:
    """edgewatch over many devices: bytes of model state (the banks' arrays) and peak RSS."""
    import edgewatch.flows.anomaly as anomaly

    banks = []
    original = anomaly.ModelBankLogic.__init__

    def remember(self, bank, *args, **kwargs):
        original(self, bank, *args, **kwargs)
        banks.append(bank)

    anomaly.ModelBankLogic.__init__ = remember
    result = run_flow("edgewatch", bootstrap, topic, stop_offsets)
    groups = [group for bank in banks for group in bank.groups.values()]
    devices = sum(len(group.rows) for group in groups)
    allocated = sum(block.nbytes for group in groups for block in group.blocks)
    per_device = allocated / max(1, sum(len(group.blocks[0]) for group in groups))
    result.update(
        devices=devices,
        state_bytes=per_device * devices,  # the rows in use
        allocated_bytes=allocated,  # with the growth slack
        peak_rss_bytes=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
    )
    return result


def run_latency(bootstrap: str, rate: float = 10_000.0, seconds: float = 20.0, devices: int = 200) -> dict:
    """p50/p99 from send to labeled event, with `edgewatch run` receiving a steady ``rate``."""
    suffix = f"{os.getpid()}"
    topics = {"in": f"lat-in-{suffix}", "out": f"lat-out-{suffix}", "dlq": f"lat-dlq-{suffix}"}
    ensure_topics({"bootstrap.servers": bootstrap}, topics.values(), PARTITIONS)
    log = Path(tempfile.mkdtemp(prefix="bench-latency-")) / "flow.log"
    flow = EdgewatchProcess(
        ["run", "--bootstrap", bootstrap, "--in-topic", topics["in"], "--out-topic", topics["out"],
         "--dlq-topic", topics["dlq"]],
        log,
    ).start()  # fmt: skip
    latencies: list[float] = []
    received = threading.Event()
    done = threading.Event()

    def read() -> None:
        consumer = Consumer(
            {"bootstrap.servers": bootstrap, "group.id": "bench-latency", "enable.auto.commit": "false",
             "fetch.wait.max.ms": "5", "fetch.min.bytes": "1"}
        )  # fmt: skip
        consumer.assign([TopicPartition(topics["out"], p, 0) for p in range(PARTITIONS)])
        while not done.is_set():
            for msg in consumer.consume(1000, 0.001):  # consume() waits for all 1000 or the timeout
                if msg.error() is None:
                    now = time.time()
                    sent = dict(msg.headers() or []).get("sent")
                    if sent is not None:
                        latencies.append(now - float(sent))
                        received.set()
        consumer.close()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": "1"})
    fleet = Fleet(devices=devices, seed=7, fault_rate=0.003, start_time=time.time(), tick_seconds=devices / rate)
    try:
        # wait until the flow answers, then measure
        warmup = fleet.records(devices * 5)
        deadline = time.monotonic() + 60
        for record in warmup:
            producer.produce(topics["in"], record.value, record.key, headers=[("sent", str(time.time()).encode())])
        producer.flush(10)
        while not received.wait(0.5):
            if time.monotonic() > deadline or flow.poll() is not None:
                raise RuntimeError(f"edgewatch run did not answer; see {log}")
        # steady state: the same rate for `warm_seconds` first (JIT of the broker, connections,
        # caches), then `seconds` measured, without a pause in between
        start = time.perf_counter()
        warm_seconds = 5.0
        measuring = False
        for sent, record in enumerate(fleet.records(int(rate * (warm_seconds + seconds)))):
            ahead = start + sent / rate - time.perf_counter()
            if ahead > 0.001:
                time.sleep(ahead)
            if not measuring and sent >= rate * warm_seconds:
                latencies.clear()
                measuring, measure_start = True, time.perf_counter()
            headers = [*record.headers, ("sent", repr(time.time()).encode())]
            produce(producer, topics["in"], record.value, record.key, headers=headers)
            producer.poll(0)
        producer.flush(30)
        achieved = rate * seconds / (time.perf_counter() - measure_start)
        time.sleep(2.0)
    finally:
        done.set()
        reader.join(10)
        flow.stop(30)  # SIGTERM, then SIGKILL after 30 s
    ordered = sorted(latencies)
    if not ordered:
        raise RuntimeError("no labeled events came back")
    return {
        "events": len(ordered),
        "rate": achieved,
        "p50_ms": 1000 * ordered[len(ordered) // 2],
        "p99_ms": 1000 * ordered[int(len(ordered) * 0.99)],
        "max_ms": 1000 * ordered[-1],
    }


def _child(kind: str, *args: str, script: str = __file__) -> dict:
    """Run ``script --child kind args`` in its own process; its last line of output, as JSON."""
    clock = ["--cpu-clock"] if CLOCK is time.process_time else []
    result = subprocess.run(
        [sys.executable, script, "--child", kind, *clock, *args], check=True, capture_output=True, text=True
    )
    return json.loads(result.stdout.strip().splitlines()[-1])


def start_broker(stack: ExitStack, broker_kind: str = "kafka") -> str:
    """A broker for the run (closed with ``stack``): Apache Kafka 4.x, or the embedded ``tansu``; its bootstrap."""
    if broker_kind == "tansu":
        from edgewatch.connectors.broker import EmbeddedBroker

        return stack.enter_context(EmbeddedBroker()).bootstrap
    from tests.kafka.apache_kafka import ApacheKafka

    return stack.enter_context(ApacheKafka(Path(tempfile.mkdtemp(prefix="bench-kafka-")))).bootstrap


def _offsets_arg(stop_offsets: dict) -> str:
    return json.dumps([[t, p, o] for (t, p), o in stop_offsets.items()])


def paired(rounds: int, messages: int = 100_000, devices: int = 50, baseline: Path | None = None) -> list[dict]:
    """``rounds`` rounds of the null flow and edgewatch (and ``baseline``'s edgewatch) on one broker."""
    kinds = {"null": __file__, "edgewatch": __file__}
    if baseline is not None:
        kinds["baseline"] = str(Path(baseline) / "bench" / "throughput.py")  # its own checkout first on sys.path
    with ExitStack() as stack:
        bootstrap = start_broker(stack)
        topic = f"bench-{int(time.time())}"
        offsets = _offsets_arg(produce_messages(bootstrap, topic, messages, devices))
        clock = "events per CPU-second" if CLOCK is time.process_time else "events/s"
        print(f"paired: {messages} messages from {devices} devices, {rounds} rounds, {clock}", flush=True)
        results = []
        for round_ in range(rounds):
            order = list(kinds)[round_ % len(kinds) :] + list(kinds)[: round_ % len(kinds)]
            rates = {
                kind: _child("edgewatch" if kind == "baseline" else kind, "--bootstrap", bootstrap, "--topic", topic,
                             "--offsets", offsets, script=kinds[kind])["events_per_s"]
                for kind in order
            }  # fmt: skip
            results.append(rates)
            figures = [f"{kind}={rates[kind]:.0f}" for kind in kinds]
            figures += [f"{kind}/null={rates[kind] / rates['null']:.2f}" for kind in kinds if kind != "null"]
            print(f"  round {round_ + 1}: " + "  ".join(figures), flush=True)
    for kind in kinds:
        if kind != "null":
            ratios = sorted(r[kind] / r["null"] for r in results)
            print(f"paired: {kind}/null median={ratios[len(ratios) // 2]:.2f} min={ratios[0]:.2f} max={ratios[-1]:.2f}")
    return results


class _CountingProducer:
    """Stands in for confluent_kafka.Producer in the flow's sinks (``--in-process``): counts."""

    produced = 0

    def __init__(self, config: dict):
        pass

    def produce(self, topic, value=None, key=None, headers=None, **_options) -> None:
        _CountingProducer.produced += 1

    def poll(self, _timeout: float = 0.0) -> int:
        return 0

    def flush(self, _timeout: float = 0.0) -> int:
        return 0

    def __len__(self) -> int:
        return 0


def run_in_process(messages: int, devices: int, batch_size: int = 2000) -> dict:
    """The edgewatch flow over messages made beforehand (no broker); its CPU time."""
    import zlib

    from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition

    import edgewatch.connectors.kafka as kafka_connector
    from edgewatch.app import Application
    from edgewatch.config import FlowSettings
    from edgewatch.flows.anomaly import build_flow
    from edgewatch.flows.wiring import to_kafka
    from edgewatch.schema import RawMessage

    fleet = Fleet(devices=devices, seed=42, fault_rate=0.003, start_time=time.time() - messages // devices)
    parts: list[list[RawMessage]] = [[] for _ in range(PARTITIONS)]
    for record in fleet.records(messages):  # keyed as Kafka's default partitioner would spread them
        part = parts[zlib.crc32(record.key) % PARTITIONS]
        part.append(RawMessage(record.key, record.value, list(record.headers), "bench", 0, len(part),
                               record.timestamp_ms))  # fmt: skip

    class Partition(StatefulSourcePartition):
        def __init__(self, raws):
            self.raws, self.at = raws, 0

        def next_batch(self):
            if self.at >= len(self.raws):
                raise StopIteration
            self.at += batch_size
            return [self.raws[self.at - batch_size : self.at]]

        def snapshot(self):
            return self.at

    class Source(FixedPartitionedSource):
        def list_parts(self):
            return [str(i) for i in range(PARTITIONS)]

        def build_part(self, step_id, for_part, resume_state):
            return Partition(parts[int(for_part)])

    kafka_connector.Producer = _CountingProducer
    settings = FlowSettings(bootstrap="unused:9092", in_topic="bench", out_topic="bench-out", dlq_topic="bench-dlq",
                            model_cache_dir=Path(tempfile.mkdtemp(prefix="bench-in-process-")))  # fmt: skip
    app = Application(settings, handle_signals=False).start()
    flow, streams = build_flow(settings, Source())
    to_kafka(streams, settings)
    started = time.process_time()
    app.run(flow)
    cpu_seconds = time.process_time() - started
    return {"messages": messages, "produced": _CountingProducer.produced, "cpu_seconds": cpu_seconds,
            "events_per_cpu_s": messages / cpu_seconds}  # fmt: skip


def in_process(rounds: int, messages: int = 100_000, devices: int = 50, baseline: Path | None = None) -> None:
    """``rounds`` in-process runs of this checkout's flow (and ``baseline``'s, interleaved)."""
    scripts = {"edgewatch": __file__}
    if baseline is not None:
        scripts["baseline"] = str(Path(baseline) / "bench" / "throughput.py")
    print(f"in-process: {messages} messages from {devices} devices, {rounds} rounds, events per CPU-second")
    rates: dict[str, list[float]] = {kind: [] for kind in scripts}
    for round_ in range(rounds):
        for kind in list(scripts)[round_ % len(scripts) :] + list(scripts)[: round_ % len(scripts)]:
            args = ("--messages", str(messages), "--devices", str(devices))
            rates[kind].append(_child("in-process", *args, script=scripts[kind])["events_per_cpu_s"])
        figures = [f"{kind}={r[-1]:.0f}" for kind, r in rates.items()]
        if baseline is not None:
            figures.append(f"edgewatch/baseline={rates['edgewatch'][-1] / rates['baseline'][-1]:.2f}")
        print(f"  round {round_ + 1}: " + "  ".join(figures), flush=True)
    for kind, found in rates.items():
        print(f"in-process: {kind} median={sorted(found)[len(found) // 2]:.0f} events per CPU-second")
    if baseline is not None:
        ratios = sorted(a / b for a, b in zip(rates["edgewatch"], rates["baseline"], strict=True))
        print(f"in-process: edgewatch/baseline median={ratios[len(ratios) // 2]:.2f}")


def main(
    messages: int = 100_000,
    devices: int = 50,
    bootstrap: str | None = None,
    broker_kind: str = "kafka",
    quick: bool = False,
) -> dict:
    """Every measurement in one run; ``quick`` skips latency, memory and scaling (smoke tests)."""
    with ExitStack() as stack:
        if bootstrap is None:
            bootstrap = start_broker(stack, broker_kind)
        topic = f"bench-{int(time.time())}"
        stop_offsets = produce_messages(bootstrap, topic, messages, devices)
        offsets = _offsets_arg(stop_offsets)
        print(f"bench: {messages} messages from {devices} devices on {bootstrap} ({broker_kind})", flush=True)
        results = {}
        for kind in FLOWS:
            # the fast flows run in about a second: the median of 3 runs, so one hiccup of this
            # shared 2-core machine does not decide the figure (the naive flow runs once)
            runs = sorted(
                (_child(kind, "--bootstrap", bootstrap, "--topic", topic, "--offsets", offsets)
                 for _ in range(1 if kind == "naive" or quick else 3)),
                key=lambda r: r["events_per_s"],
            )  # fmt: skip
            results[kind] = r = runs[len(runs) // 2]
            rates = " / ".join(f"{run['events_per_s']:.0f}" for run in runs)
            spread = f", runs {rates}" if len(runs) > 1 else ""
            print(
                f"  {kind:10s} {r['events_per_s']:10.0f} events/s  ({r['messages']} in {r['seconds']:.2f} s{spread})",
                flush=True,
            )
        ceiling = _child("ceiling", "--bootstrap", bootstrap, "--topic", topic, "--offsets", offsets)
        edgewatch = results["edgewatch"]["events_per_s"]
        print(
            f"  {'ceiling':10s} {ceiling['events_per_s']:10.0f} events/s  (confluent-kafka consume + produce only; "
            f"edgewatch reaches {edgewatch / ceiling['events_per_s']:.0%} of it)",
            flush=True,
        )
        if not quick:
            scaling = {}
            for workers in (1, 2, 4):
                scaling[workers] = _child(
                    "edgewatch", "--bootstrap", bootstrap, "--topic", topic, "--offsets", offsets,
                    "--workers", str(workers),
                )["events_per_s"]  # fmt: skip
            print(
                "  workers    " + "  ".join(f"{w}: {rate:.0f} events/s" for w, rate in scaling.items()),
                flush=True,
            )
            latency = _child("latency", "--bootstrap", bootstrap)
            print(
                f"  latency    p50={latency['p50_ms']:.1f} ms p99={latency['p99_ms']:.1f} ms "
                f"max={latency['max_ms']:.1f} ms at {latency['rate']:.0f} events/s ({latency['events']} events)",
                flush=True,
            )
            rss = {}
            for fleet in (10, 10_000):  # the same 200,000 messages from 10 devices, then 10,000
                memory_topic = f"{topic}-devices-{fleet}"
                memory_offsets = produce_messages(bootstrap, memory_topic, 200_000, fleet)
                memory = _child(
                    "memory",
                    "--bootstrap",
                    bootstrap,
                    "--topic",
                    memory_topic,
                    "--offsets",
                    _offsets_arg(memory_offsets),
                )
                rss[fleet] = memory["peak_rss_bytes"]
            state, allocated = memory["state_bytes"], memory["allocated_bytes"]
            print(
                f"  memory     {memory['devices']} devices: model state {state / 1e6:.1f} MB "
                f"({state / memory['devices']:.0f} B per device; {allocated / 1e6:.1f} MB allocated), "
                f"peak RSS {rss[10_000] / 1e6:.0f} MB (10 devices: {rss[10] / 1e6:.0f} MB)",
                flush=True,
            )
    null, naive = results["null"]["events_per_s"], results["naive"]["events_per_s"]
    print(
        f"bench: null={null:.0f} naive={naive:.0f} edgewatch={edgewatch:.0f} "
        f"ratio_vs_naive={edgewatch / naive:.1f} ratio_vs_null={edgewatch / null:.2f}"
    )
    return {"null": null, "naive": naive, "edgewatch": edgewatch, "ceiling": ceiling["events_per_s"]}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=100_000)
    parser.add_argument("--devices", type=int, default=50)
    parser.add_argument("--bootstrap")
    parser.add_argument("--broker", default="kafka", choices=("kafka", "tansu"))
    parser.add_argument("--quick", action="store_true", help="throughput only (no latency, memory, scaling)")
    parser.add_argument("--cpu-clock", action="store_true", help="messages per CPU-second instead of per second")
    parser.add_argument("--paired", type=int, metavar="ROUNDS", help="null vs edgewatch only, in paired rounds")
    parser.add_argument("--in-process", type=int, metavar="ROUNDS", help="the flow alone, without a broker")
    parser.add_argument("--baseline", type=Path, help="with --paired/--in-process: another checkout's flow as well")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--topic", help=argparse.SUPPRESS)
    parser.add_argument("--offsets", help=argparse.SUPPRESS)
    parser.add_argument("--workers", type=int, default=1, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.cpu_clock:
        CLOCK = time.process_time
    if args.child:
        offsets = {(t, p): o for t, p, o in json.loads(args.offsets)} if args.offsets else {}
        if args.child in FLOWS:
            outcome = run_flow(args.child, args.bootstrap, args.topic, offsets, args.workers)
        elif args.child == "in-process":
            outcome = run_in_process(args.messages, args.devices)
        elif args.child == "ceiling":
            outcome = run_ceiling(args.bootstrap, args.topic, offsets)
        elif args.child == "memory":
            outcome = run_memory(args.bootstrap, args.topic, offsets)
        else:
            outcome = run_latency(args.bootstrap)
        print(json.dumps(outcome))
    elif args.paired:
        paired(args.paired, args.messages, args.devices, args.baseline)
    elif args.in_process:
        in_process(args.in_process, args.messages, args.devices, args.baseline)
    else:
        main(args.messages, args.devices, args.bootstrap, args.broker, args.quick)
