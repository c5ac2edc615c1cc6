"""The anomaly flow end to end on the session's real broker (``edgewatch run`` as a process)."""

from __future__ import annotations

import os
import threading
import time
from collections import Counter

import orjson

from edgewatch.connectors.files import paced
from edgewatch.evaluation.faults import FaultScore
from edgewatch.online_models.registry import resolve_detector
from edgewatch.schema import parse_message
from edgewatch.simulator import Fleet
from tests.support.kafka import consume, consume_all, expected_scores, flow_env, position_of, produce
from tests.support.malformed import MALFORMED
from tests.support.processes import EdgewatchProcess


def flow_run(bootstrap, topics, *extra):
    """The arguments of ``edgewatch run`` between the test's topics."""
    return ["run", "--bootstrap", bootstrap, "--in-topic", topics["in"], "--out-topic", topics["out"],
            "--dlq-topic", topics["dlq"], *extra]  # fmt: skip


def fleet_records(fleet: Fleet, count: int):
    return [(r.key, r.value, r.headers) for r in fleet.records(count)]


def test_every_message_comes_out_exactly_once(kafka_bootstrap, flow_topics, tmp_path):
    records = fleet_records(Fleet(devices=20, seed=5, fault_rate=0.004, malformed_rate=0.03), 4000)
    records += [(key, value, []) for _, key, value, _ in MALFORMED]
    positions = produce(kafka_bootstrap, flow_topics["in"], records)

    with EdgewatchProcess(flow_run(kafka_bootstrap, flow_topics), tmp_path / "flow.log"):
        consume(kafka_bootstrap, [flow_topics["out"], flow_topics["dlq"]], len(records), settle=0)
    out = consume_all(kafka_bootstrap, [flow_topics["out"], flow_topics["dlq"]])  # all the stopped flow wrote

    answered = Counter(position_of(m) for m in out)
    assert len(out) == len(records)
    assert set(answered) == set(positions)
    assert max(answered.values()) == 1
    labeled = [m for m in out if m.topic == flow_topics["out"]]
    assert all(m.key == orjson.loads(m.value)["device_id"].encode() for m in labeled)
    assert len(out) - len(labeled) >= len(MALFORMED)


def test_malformed_messages_reach_the_dead_letter_topic_with_reason(kafka_bootstrap, flow_topics, tmp_path):
    valid = fleet_records(Fleet(devices=3, seed=1, fault_rate=0.0), 30)
    records = valid + [(key, value, [("case", name.encode())]) for name, key, value, _ in MALFORMED]
    positions = produce(kafka_bootstrap, flow_topics["in"], records)

    with EdgewatchProcess(flow_run(kafka_bootstrap, flow_topics), tmp_path / "flow.log"):
        consume(kafka_bootstrap, [flow_topics["dlq"]], len(MALFORMED), settle=0)
    dead = consume_all(kafka_bootstrap, [flow_topics["dlq"]])  # all the stopped flow dead-lettered

    by_case = {m.headers["case"].decode(): m for m in dead}
    assert len(dead) == len(MALFORMED)
    for index, (name, key, value, reason) in enumerate(MALFORMED):
        message = by_case[name]
        partition, offset = positions[len(valid) + index]
        assert reason in message.headers["edgewatch.error.reason"].decode(), name
        assert message.value == value and message.key == key, name
        assert message.headers["edgewatch.error.topic"] == flow_topics["in"].encode()
        assert (int(message.headers["edgewatch.error.partition"]), int(message.headers["edgewatch.error.offset"])) == (
            partition,
            offset,
        )


def test_flow_finds_the_simulated_faults(kafka_bootstrap, flow_topics, tmp_path):
    fleet = Fleet(devices=20, seed=11, fault_rate=0.005)
    sim = list(fleet.records(20 * 400))
    truth = FaultScore()
    for record in sim:
        truth.sent(record.key.decode(), int(record.headers[0][1]), record.fault)
    produce(kafka_bootstrap, flow_topics["in"], [(r.key, r.value, r.headers) for r in sim])

    with EdgewatchProcess(flow_run(kafka_bootstrap, flow_topics), tmp_path / "flow.log"):
        consume(kafka_bootstrap, [flow_topics["out"]], len(sim), settle=0)
    out = consume_all(kafka_bootstrap, [flow_topics["out"]])  # all the stopped flow wrote

    assert len(out) == len(sim)
    for message in out:
        event = orjson.loads(message.value)
        truth.labeled(event["device_id"], int(message.headers["sequenceNumber"]), event["is_anomaly"])
    assert truth.faults >= 20
    assert truth.recall >= 0.9, (truth.detected, truth.faults)
    # is_anomaly is the device's alarm state: precision per alarm episode (an alarm that overlaps a fault)
    assert truth.episode_precision >= 0.85, truth.line()


def test_flow_resumes_after_sigkill_without_losing_or_relearning_state(kafka_bootstrap, flow_topics, tmp_path):
    fleet = Fleet(devices=30, seed=21, fault_rate=0.004)
    sim = list(fleet.records(18_000))
    records = [(r.key, r.value, r.headers) for r in sim]
    positions: list = []

    def send() -> None:  # the stream keeps flowing while the flow dies and comes back
        paced_records = ((r.key, r.value, r.headers) for r in paced(sim, rate=3000))
        positions.extend(produce(kafka_bootstrap, flow_topics["in"], paced_records))

    sender = threading.Thread(target=send)
    sender.start()
    recovery = ["--recovery-dir", str(tmp_path / "recovery"), "--snapshot-seconds", "0.5"]
    first = EdgewatchProcess(flow_run(kafka_bootstrap, flow_topics, *recovery), tmp_path / "flow1.log").start()
    try:
        assert len(consume(kafka_bootstrap, [flow_topics["out"]], 3000, timeout=60, settle=0.0)) >= 3000
        time.sleep(2.0)  # a few epochs of steady streaming, then the crash
    finally:
        first.kill()
    before = consume_all(kafka_bootstrap, [flow_topics["out"]])  # all the killed first run wrote
    with EdgewatchProcess(flow_run(kafka_bootstrap, flow_topics, *recovery), tmp_path / "flow2.log"):
        sender.join(30)
        assert not sender.is_alive()
        wanted = set(positions)
        consume(kafka_bootstrap, [flow_topics["out"]], until=lambda found: {position_of(m) for m in found} >= wanted)
    out = consume_all(kafka_bootstrap, [flow_topics["out"]])  # all both runs wrote

    assert {position_of(m) for m in out} == wanted, "every input offset is labeled after the restart"
    replayed = len(out) - len(wanted)
    # only what came after the last snapshot is labeled twice (≈ 1 s here), not everything before the crash
    assert replayed < len(before) / 2, f"resume from the last snapshot, not the start: {replayed=} {len(before)=}"
    expected = expected_scores(records, positions)
    scores = [(position_of(m), orjson.loads(m.value)["score"]) for m in out]
    wrong = [(where, score) for where, score in scores if abs(score - expected[where]) > 1e-9]
    assert not wrong[:5], "a restarted device must continue from its snapshot, not from scratch"


def test_bytewax_run_entrypoint_reads_settings_from_environment(kafka_bootstrap, flow_topics, tmp_path):
    records = fleet_records(Fleet(devices=5, seed=2, fault_rate=0.0), 200)
    produce(kafka_bootstrap, flow_topics["in"], records)
    env = {**os.environ, **flow_env(kafka_bootstrap, flow_topics)}
    process = EdgewatchProcess.under_bytewax([], tmp_path / "bytewax.log", env=env).start()
    try:
        consume(kafka_bootstrap, [flow_topics["out"]], len(records), settle=0)
    finally:
        process.kill()
    out = consume_all(kafka_bootstrap, [flow_topics["out"]])  # all the killed flow wrote
    assert len(out) == len(records)


def test_flow_warm_starts_every_device_from_a_trained_artifact(kafka_bootstrap, flow_topics, tmp_path):
    from edgewatch.online_models import artifact
    from edgewatch.schema import RawMessage as Raw

    fleet = Fleet(devices=10, seed=4, fault_rate=0.005, warmup_ticks=320, tick_seconds=60.0, start_time=1.79e9)
    sim = list(fleet.records(10 * 600))
    history = [
        parse_message(Raw(r.key, r.value, r.headers, "history", 0, i, r.timestamp_ms)) for i, r in enumerate(sim)
    ]
    saved = artifact.save(artifact.train(resolve_detector("compact-novelty"), history[: 10 * 300]), tmp_path / "model")
    live = sim[10 * 300 :]
    produce(kafka_bootstrap, flow_topics["in"], [(r.key, r.value, r.headers) for r in live])

    args = flow_run(kafka_bootstrap, flow_topics, "--model", tmp_path / "model")
    with EdgewatchProcess(args, tmp_path / "flow.log"):
        consume(kafka_bootstrap, [flow_topics["out"]], len(live), settle=0)
    out = consume_all(kafka_bootstrap, [flow_topics["out"]])  # all the stopped flow wrote

    events = [orjson.loads(m.value) for m in out]
    assert len(events) == len(live)
    assert {e["model"]["version"] for e in events} == {saved.version}
    # warm: a device's first readings are scored against its history (a cold detector scores 0 while it learns)
    early = Counter()
    for event in sorted(events, key=lambda e: e["timestamp"]):
        if early[event["device_id"], "n"] < 20:
            early[event["device_id"], "n"] += 1
            early[event["device_id"], "scored"] += event["score"] > 0
    assert sum(early[device, "scored"] > 0 for device in {e["device_id"] for e in events}) >= 8
