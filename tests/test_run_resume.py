"""`edgewatch run` without recovery state resumes at its consumer group's committed offsets."""

from __future__ import annotations

from collections import Counter

from edgewatch.connectors.kafka import ensure_topics
from edgewatch.simulator import Fleet
from tests.support.kafka import consume, consume_all, position_of, produce
from tests.support.processes import EdgewatchProcess


def test_a_restarted_run_resumes_instead_of_rereading(kafka_bootstrap, topic_names, tmp_path):
    topics = {"in": topic_names("telemetry"), "out": topic_names("labeled"), "dlq": topic_names("deadletter")}
    ensure_topics({"bootstrap.servers": kafka_bootstrap}, topics.values(), 2)
    records = [(r.key, r.value, r.headers) for r in Fleet(devices=10, seed=4, fault_rate=0.0).records(3000)]
    args = ["--bootstrap", kafka_bootstrap, "--in-topic", topics["in"], "--out-topic", topics["out"],
            "--dlq-topic", topics["dlq"], "--consumer-group", topic_names("group"),
            "--snapshot-seconds", "1"]  # fmt: skip

    first = produce(kafka_bootstrap, topics["in"], records[:2000])
    with EdgewatchProcess(["run", *args], tmp_path / "first.log"):
        consume(kafka_bootstrap, [topics["out"]], expected=2000, timeout=120, settle=0)
    second = produce(kafka_bootstrap, topics["in"], records[2000:])
    with EdgewatchProcess(["run", *args], tmp_path / "second.log"):
        consume(kafka_bootstrap, [topics["out"]], expected=3000, timeout=120, settle=0)
    out = consume_all(kafka_bootstrap, [topics["out"]])  # all both runs wrote

    counts = Counter(position_of(m) for m in out)
    assert set(counts) == set(first) | set(second), "every offset labeled"
    assert len(out) == 3000, "the second run started where the first one stopped: nothing labeled twice"
