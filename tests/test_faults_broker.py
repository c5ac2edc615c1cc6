"""Broker outages of any length: the flow waits, reports, and resumes; nothing lost, nothing doubled.

A broker of its own (Apache Kafka 4.x, KRaft) is frozen with SIGSTOP while `edgewatch run` is
labeling a stream — connections hang without an error, the hardest case for a client — then
thawed. Marked ``faults`` (``make faults``): the freeze lasts ``EDGEWATCH_FREEZE_SECONDS``
(default 120 s).
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections import Counter

import pytest

from edgewatch.connectors.kafka import ensure_topics
from edgewatch.simulator import Fleet
from tests.support.kafka import consume, position_of, produce
from tests.support.processes import EdgewatchProcess

pytestmark = pytest.mark.faults

FREEZE_SECONDS = float(os.environ.get("EDGEWATCH_FREEZE_SECONDS", "120"))


@pytest.fixture
def own_broker(tmp_path, broker_kind):
    if broker_kind != "kafka":
        pytest.skip("freezes an Apache Kafka broker of its own")
    from tests.kafka.apache_kafka import ApacheKafka

    with ApacheKafka(tmp_path / "kafka") as broker:
        yield broker


def test_a_frozen_broker_loses_and_doubles_nothing(own_broker, tmp_path):
    bootstrap = own_broker.bootstrap
    topics = {"in": "telemetry", "out": "labeled", "dlq": "deadletter"}
    ensure_topics({"bootstrap.servers": bootstrap}, topics.values(), 4)
    records = [(r.key, r.value, r.headers) for r in Fleet(devices=20, seed=3, fault_rate=0.003).records(12_000)]
    first, second = records[:6_000], records[6_000:]
    positions = produce(bootstrap, topics["in"], first)
    args = ["--bootstrap", bootstrap, "--in-topic", topics["in"], "--out-topic", topics["out"],
            "--dlq-topic", topics["dlq"], "--recovery-dir", str(tmp_path / "state")]  # fmt: skip
    log = tmp_path / "flow.log"
    with EdgewatchProcess(["run", *args], log) as flow:
        consume(bootstrap, [topics["out"]], expected=1_000, timeout=120, settle=0)  # the flow is labeling
        broker_pid = own_broker._process.pid
        os.kill(broker_pid, signal.SIGSTOP)
        try:
            time.sleep(FREEZE_SECONDS)
            assert flow.process.poll() is None, f"the flow died while the broker was frozen; see {log}"
        finally:
            os.kill(broker_pid, signal.SIGCONT)
        thawed = threading.Thread(target=lambda: positions.extend(produce(bootstrap, topics["in"], second)))
        thawed.start()
        thawed.join(120)
        out = consume(bootstrap, [topics["out"], topics["dlq"]], expected=len(records), timeout=300, settle=3.0)
        assert flow.process.poll() is None, f"the flow exited; see {log}"
    answered = Counter(position_of(m) for m in out)
    assert set(answered) == set(positions), "every input offset answered"
    assert max(answered.values()) == 1, "no offset answered twice (no restart happened: no replay)"
    assert "unreachable" in log.read_text() or FREEZE_SECONDS < 30
