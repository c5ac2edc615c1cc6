"""RUL inference throughput: the RUL flow as `edgewatch run-rul` runs it, over C-MAPSS telemetry on Kafka.

    python bench/rul_bench.py [--readings 120000] [--quick] [--bootstrap HOST:PORT] [--broker kafka|tansu]
                              [--model DIR] [--input FILE] [--cache-dir DIR] [--cpu-clock]
    make bench   (after bench/throughput.py; skipped when the C-MAPSS data are absent)

1. ``flow``: the C-MAPSS test engines (``test_FD001.txt``: 100 engines, 13,096 readings) as the
   telemetry messages a replay sends (``read_cmapss``: C-MAPSS-shape JSON keyed by engine), copied
   under new device ids (``engine-001-3``) until there are ``--readings``, are produced to a topic
   once. In a child process, the RUL flow as ``edgewatch run-rul`` builds it (``Application``,
   ``build_fleet``, ``kafka_rul_flow``: Kafka in; estimates, maintenance alerts and dead letters
   to their topics) reads them up to the offsets produced. The bench then checks that one
   estimate per reading reached the estimates topic.
2. ``null``: in another child, bench/throughput.py's null Bytewax flow (KafkaSource → parse JSON
   → serialize → KafkaSink) over the same topic: ``ratio_vs_null`` is the RUL flow's rate over
   the rate of only moving the messages through Bytewax.
3. ``model``: ``RulFleet.update_many`` alone over the same readings, in this process (no broker,
   no Bytewax; skipped with ``--quick``).

Rates are readings / (end of the flow - its first message read), wall clock (``--cpu-clock``: the
child's CPU time instead); ``*_per_cpu_s`` always divide by the child's CPU time over that span
(all its threads): on a shared machine, what the process does per CPU-second it actually got.
The model is ``--model``, else ``edgewatch train --task rul`` on ``train_FD001.txt``, trained once
and cached in ``--cache-dir`` (default ``<tmp>/edgewatch-bench``) under a key of the RUL code and the
training file. It ends with exactly:

    rul_bench: flow_readings_per_s=N flow_readings_per_cpu_s=N null_readings_per_s=N
    null_readings_per_cpu_s=N ratio_vs_null=X readings=N devices=N alerts=N   (one line)
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
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

import bench.throughput as throughput  # noqa: E402
from edgewatch.config import data_dir  # noqa: E402
from edgewatch.connectors.files import read_cmapss  # noqa: E402
from edgewatch.connectors.kafka import ensure_topics, publish  # noqa: E402
from edgewatch.schema import RawMessage, Reading, parse_message  # noqa: E402

PARTITIONS = throughput.PARTITIONS
CACHE_DIR = Path(tempfile.gettempdir()) / "edgewatch-bench"


def fleet_messages(path: Path, count: int) -> list[RawMessage]:
    """``count`` telemetry messages: the file's engines, then copies of them as further engines
    (``<key>-<copy>``), each copy cycle by cycle as its engines would stream."""
    base = list(read_cmapss(path))
    messages: list[RawMessage] = []
    copy = 0
    while len(messages) < count:
        messages.extend(dataclasses.replace(m, key=m.key + f"-{copy}".encode()) for m in base)
        copy += 1
    return messages[:count]


def fleet_readings(messages: list[RawMessage]) -> list[Reading]:
    """The messages parsed as the flow parses them (the valid ones)."""
    return [r for r in map(parse_message, messages) if isinstance(r, Reading)]


def trained_model(train_file: Path, cache_dir: Path) -> Path:
    """``edgewatch train --task rul`` on ``train_file``, once: cached under a key of the RUL code and the file."""
    key = hashlib.sha256(train_file.read_bytes())
    for source in sorted((ROOT / "edgewatch" / "rul").glob("*.py")):
        key.update(source.read_bytes())
    out = cache_dir / f"rul-model-{key.hexdigest()[:16]}"
    if not (out / "model.json").exists():
        cache_dir.mkdir(parents=True, exist_ok=True)
        print(f"rul_bench: training the RUL model on {train_file} → {out} (once)", flush=True)
        command = [sys.executable, "-m", "edgewatch", "train", "--task", "rul", "--input", train_file, "--out", out]
        subprocess.run(list(map(str, command)), check=True, capture_output=True, text=True)
    return out


def run_rul_flow(bootstrap: str, topic: str, stop_offsets: dict, model: Path) -> dict:
    """The RUL flow as ``edgewatch run-rul`` builds it, reading the topic up to ``stop_offsets``; timed."""
    import edgewatch.flows.rul as rul_flow
    from edgewatch.app import Application
    from edgewatch.config import RulSettings
    from edgewatch.connectors.kafka import KafkaBatchSource

    settings = RulSettings(
        bootstrap=bootstrap, in_topic=topic, rul_topic=f"{topic}-rul", maintenance_alerts_topic=f"{topic}-alerts",
        dlq_topic=f"{topic}-dlq", run_end_topic=None, model_dir=model,
    )  # fmt: skip
    ensure_topics(
        settings.client_config(),
        [settings.rul_topic, settings.maintenance_alerts_topic, settings.dlq_topic],
        PARTITIONS,
    )
    app = Application(settings, handle_signals=False).start()
    fleet = rul_flow.build_fleet(app)
    clocks = []

    def timed_source(config, topics, batch_size, *args, **kwargs):
        # kafka_rul_flow's own input, ending at the offsets produced, noting its first message
        clocks.append(
            throughput._FirstBatchClock(KafkaBatchSource(config, topics, batch_size, stop_offsets=stop_offsets))
        )
        return clocks[-1].source

    rul_flow.KafkaBatchSource = timed_source  # this child process only runs this one flow
    app.run(rul_flow.kafka_rul_flow(app, fleet))
    return throughput.timing(clocks[0], sum(stop_offsets.values()))


def topic_size(bootstrap: str, topic: str) -> int:
    """Messages in a topic (its partitions' high watermarks)."""
    from confluent_kafka import Consumer, TopicPartition

    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "rul-bench-count"})
    try:
        return sum(consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in range(PARTITIONS))
    finally:
        consumer.close()


def measure_model(model: Path, readings: list[Reading], batch: int = 2000) -> dict[str, float]:
    """``RulFleet.update_many`` alone, in the flow's batches: readings per second and per CPU-second."""
    from edgewatch.rul.artifact import load
    from edgewatch.rul.online import RulFleet

    fitted = load(model)
    RulFleet(fitted).update_many(readings[:batch])  # compile the kernels outside the timing
    fleet = RulFleet(fitted)
    wall, cpu = time.perf_counter(), time.process_time()
    for i in range(0, len(readings), batch):
        fleet.update_many(readings[i : i + batch])
    return {
        "model_readings_per_s": len(readings) / (time.perf_counter() - wall),
        "model_readings_per_cpu_s": len(readings) / (time.process_time() - cpu),
    }


def main(
    readings: int = 120_000,
    bootstrap: str | None = None,
    broker_kind: str = "kafka",
    quick: bool = False,
    model: Path | None = None,
    input_file: Path | None = None,
    cache_dir: Path = CACHE_DIR,
) -> dict | None:
    """The RUL flow's and the null flow's rates over the same readings; ``None`` when the data are absent."""
    cmapss = data_dir() / "cmapss"
    input_file = input_file or cmapss / "test_FD001.txt"
    if not input_file.exists() or (model is None and not (cmapss / "train_FD001.txt").exists()):
        print(f"rul_bench: skipped: no C-MAPSS data in {cmapss} (set EDGEWATCH_DATA_DIR)")
        return None
    model = model or trained_model(cmapss / "train_FD001.txt", cache_dir)
    messages = fleet_messages(input_file, readings)
    devices = len({m.key for m in messages})
    with ExitStack() as stack:
        bootstrap = bootstrap or throughput.start_broker(stack, broker_kind)
        topic = f"rul-bench-{int(time.time() * 1000)}"
        ensure_topics({"bootstrap.servers": bootstrap}, [topic], PARTITIONS)
        stop_offsets = publish(messages, {"bootstrap.servers": bootstrap}, topic, keep_timestamps=False).end_offsets
        print(f"rul_bench: {len(messages)} readings from {devices} engines on {bootstrap} ({input_file.name})")
        args = ("--bootstrap", bootstrap, "--topic", topic, "--offsets", throughput._offsets_arg(stop_offsets))
        results = {}
        for kind in ("rul", "null"):
            extra = ("--model", str(model)) if kind == "rul" else ()
            results[kind] = r = throughput._child(kind, *args, *extra, script=__file__)
            print(
                f"  {kind:6s} {r['events_per_s']:8.0f} readings/s  {r['events_per_cpu_s']:8.0f} per CPU-second  "
                f"({r['messages']} in {r['seconds']:.2f} s, {r['cpu_seconds']:.2f} CPU-s)",
                flush=True,
            )
        estimates = topic_size(bootstrap, f"{topic}-rul")
        if estimates != len(messages):
            raise RuntimeError(f"the RUL flow wrote {estimates} estimates for {len(messages)} readings")
        alerts = topic_size(bootstrap, f"{topic}-alerts")
    figures = {
        "flow_readings_per_s": results["rul"]["events_per_s"],
        "flow_readings_per_cpu_s": results["rul"]["events_per_cpu_s"],
        "null_readings_per_s": results["null"]["events_per_s"],
        "null_readings_per_cpu_s": results["null"]["events_per_cpu_s"],
    }
    if not quick:
        alone = measure_model(model, fleet_readings(messages))
        print(
            f"  model  {alone['model_readings_per_s']:8.0f} readings/s  {alone['model_readings_per_cpu_s']:8.0f} "
            "per CPU-second  (RulFleet.update_many alone, batches of 2000)",
            flush=True,
        )
    ratio = figures["flow_readings_per_s"] / figures["null_readings_per_s"]
    print(
        "rul_bench: " + " ".join(f"{name}={value:.0f}" for name, value in figures.items()),
        f"ratio_vs_null={ratio:.2f} readings={len(messages)} devices={devices} alerts={alerts}",
    )
    return {**figures, "ratio_vs_null": ratio, "readings": len(messages), "alerts": alerts}


def _cmapss_features(body: dict) -> dict:
    return body  # a C-MAPSS body is flat: cycle, settings and sensors


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--readings", type=int, default=120_000)
    parser.add_argument("--quick", action="store_true", help="5,000 readings, no model-alone figure")
    parser.add_argument("--bootstrap")
    parser.add_argument("--broker", default="kafka", choices=("kafka", "tansu"))
    parser.add_argument("--model", type=Path, help="an `edgewatch train --task rul` directory (default: train once)")
    parser.add_argument("--input", type=Path, help="C-MAPSS file to replay (default: <data>/cmapss/test_FD001.txt)")
    parser.add_argument("--cache-dir", type=Path, default=CACHE_DIR, help="where the trained model is cached")
    parser.add_argument("--cpu-clock", action="store_true", help="readings per CPU-second as the main rate")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--topic", help=argparse.SUPPRESS)
    parser.add_argument("--offsets", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.cpu_clock:
        throughput.CLOCK = time.process_time
    if args.child:
        offsets = {(t, p): o for t, p, o in json.loads(args.offsets)}
        if args.child == "rul":
            outcome = run_rul_flow(args.bootstrap, args.topic, offsets, args.model)
        else:
            outcome = throughput.run_flow("null", args.bootstrap, args.topic, offsets, features=_cmapss_features)
        print(json.dumps(outcome))
    else:
        readings = 5_000 if args.quick and args.readings == 120_000 else args.readings
        main(readings, args.bootstrap, args.broker, args.quick, args.model, args.input, args.cache_dir)
