import os
import signal
import subprocess
import sys
import time

from confluent_kafka.admin import AdminClient

from edgewatch.connectors.broker import EmbeddedBroker
from tests.support.processes import EdgewatchProcess


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as stat:  # a zombie is dead too
        return stat.read().split()[2] != "Z"


def wait_dead(pid: int, seconds: float = 10.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if not alive(pid):
            return True
        time.sleep(0.05)
    return False


def test_embedded_broker_serves_kafka_and_stops():
    with EmbeddedBroker() as broker:
        pid = broker._process.pid
        assert AdminClient({"bootstrap.servers": broker.bootstrap}).list_topics(timeout=5).brokers
    assert wait_dead(pid)


def test_no_orphan_broker_when_its_parent_is_killed():
    script = "from edgewatch.connectors.broker import EmbeddedBroker; import time; " \
             "b = EmbeddedBroker().start(); print(b._process.pid, flush=True); time.sleep(60)"  # fmt: skip
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    broker_pid = int(parent.stdout.readline())
    assert alive(broker_pid)
    parent.kill()
    parent.wait()
    assert wait_dead(broker_pid), "tansu outlived its parent"


def test_broker_command_stops_cleanly_on_ctrl_c(tmp_path):
    with EdgewatchProcess(["broker"], tmp_path / "broker.log") as process:
        bootstrap = process.wait_for_output(r"^broker: bootstrap=(127\.0\.0\.1:\d+)", timeout=30).group(1)
        assert AdminClient({"bootstrap.servers": bootstrap}).list_topics(timeout=5).brokers
        process.send_signal(signal.SIGINT)
        assert process.wait(10) == 0
    assert "stopped" in process.output()
