"""The flow as a Bytewax cluster: 2 processes × 2 workers on loopback, 4 Kafka partitions."""

import os

import orjson

from edgewatch.connectors.broker import free_port
from edgewatch.simulator import Fleet
from tests.support.kafka import consume, consume_all, expected_scores, flow_env, position_of, produce
from tests.support.processes import EdgewatchProcess


def test_two_processes_of_two_workers_label_exactly_as_one_process(kafka_bootstrap, flow_topics, tmp_path):
    topics = flow_topics
    sim = list(Fleet(devices=24, seed=13, fault_rate=0.005, malformed_rate=0.005).records(24 * 250))
    records = [(r.key, r.value, r.headers) for r in sim]
    positions = produce(kafka_bootstrap, topics["in"], records)

    addresses = ";".join(f"127.0.0.1:{free_port()}" for _ in range(2))
    env = {
        **os.environ,
        **flow_env(kafka_bootstrap, topics),
        "EDGEWATCH_SHARDS": "8",  # at least the 4 workers; a device's shard lives on one worker
    }
    processes = [
        EdgewatchProcess.under_bytewax(
            ["-w", "2", "-i", process_id, "-a", addresses], tmp_path / f"process-{process_id}.log", env=env
        )
        for process_id in range(2)
    ]
    try:
        for process in processes:
            process.start()
        consume(kafka_bootstrap, [topics["out"], topics["dlq"]], len(records), timeout=90, settle=0)
    finally:
        for process in processes:
            process.kill()
    out = consume_all(kafka_bootstrap, [topics["out"], topics["dlq"]])  # all the killed cluster wrote

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
