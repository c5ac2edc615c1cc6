"""The flow as a Bytewax cluster: 2 processes × 2 workers on loopback, 4 Kafka partitions."""

import os
import subprocess
import sys

import orjson

from edgewatch.connectors.broker import _die_with_parent, free_port
from edgewatch.connectors.kafka import ensure_topics
from edgewatch.simulator import Fleet
from tests.kafkautil import consume, produce
from tests.test_flow_kafka import expected_scores, position_of


def test_two_processes_of_two_workers_label_exactly_as_one_process(kafka_bootstrap, topic_names, tmp_path):
    topics = {"in": topic_names("telemetry"), "out": topic_names("labeled"), "dlq": topic_names("deadletter")}
    ensure_topics({"bootstrap.servers": kafka_bootstrap}, topics.values(), 4)
    sim = list(Fleet(devices=24, seed=13, fault_rate=0.005, malformed_rate=0.005).records(24 * 250))
    records = [(r.key, r.value, r.headers) for r in sim]
    positions = produce(kafka_bootstrap, topics["in"], records)

    addresses = ";".join(f"127.0.0.1:{free_port()}" for _ in range(2))
    env = {
        **os.environ,
        "EDGEWATCH_BOOTSTRAP": kafka_bootstrap,
        "EDGEWATCH_IN_TOPIC": topics["in"],
        "EDGEWATCH_OUT_TOPIC": topics["out"],
        "EDGEWATCH_DLQ_TOPIC": topics["dlq"],
        "EDGEWATCH_SHARDS": "8",  # at least the 4 workers; a device's shard lives on one worker
    }
    processes = []
    try:
        for process_id in range(2):
            with open(tmp_path / f"process-{process_id}.log", "wb") as log:
                processes.append(
                    subprocess.Popen(
                        [
                            sys.executable,
                            "-m",
                            "bytewax.run",
                            "edgewatch.flows.anomaly:flow",
                            "-w",
                            "2",
                            "-i",
                            str(process_id),
                            "-a",
                            addresses,
                        ],
                        env=env,
                        stdout=log,
                        stderr=subprocess.STDOUT,
                        preexec_fn=_die_with_parent,
                    )
                )
        out = consume(kafka_bootstrap, [topics["out"], topics["dlq"]], len(records), timeout=90, settle=2.0)
    finally:
        for process in processes:
            process.kill()
            process.wait()

    assert sorted(position_of(m) for m in out) == sorted(positions), "every input once, labeled or dead-lettered"
    expected = expected_scores(
        [r for r, s in zip(records, sim, strict=True) if s.fault != "malformed"],
        [p for p, s in zip(positions, sim, strict=True) if s.fault != "malformed"],
    )
    labeled = [m for m in out if m.topic == topics["out"]]
    assert len(labeled) == len(expected)
    for message in labeled:
        event = orjson.loads(message.value)
        assert event["score"] == expected[position_of(message)], position_of(message)
