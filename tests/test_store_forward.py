"""The store-and-forward buffer: order, limits, drop logging, persistence, the forwarder thread
and the Bytewax sink around it (with an in-memory sender; the real links have their own tests)."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import bytewax.operators as op
import pytest
from bytewax.dataflow import Dataflow
from bytewax.testing import TestingSource, run_main
from prometheus_client import REGISTRY

from edgewatch.azure.messages import DeadLetterSink, LabeledEventSink, labeled_envelope
from edgewatch.schema import DeadLetter, RawMessage
from edgewatch.store_forward import (
    BufferInUse,
    BufferPolicy,
    Envelope,
    Forwarder,
    SendTimeout,
    StoreAndForward,
    Stored,
    call_with_timeout,
)
from tests.support.events import labeled_event


def envelope(n: int, device: str | None = None, size: int = 10) -> Envelope:
    device = device or f"dev-{n % 3}"
    return Envelope(device, b"x" * size, {"n": str(n)}, f"t:0:{n}")


def number(envelope: Envelope) -> int:
    """The offset in the envelope's message id (``topic:partition:offset``)."""
    return int(envelope.message_id.rsplit(":", 1)[1])


def numbers(stored: list[Stored]) -> list[int]:
    return [number(s.envelope) for s in stored]


def metric(name: str, **labels) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


class FakeClock:
    def __init__(self, now: float = 1_000_000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_fifo_order_ack_and_discard(tmp_path):
    with StoreAndForward(tmp_path / "b.sqlite3", "order") as buffer:
        assert buffer.put(envelope(n) for n in range(10)) == 10
        first = buffer.peek(4)
        assert numbers(first) == [0, 1, 2, 3]
        assert first[0].envelope == envelope(0)  # body, properties, device and id round-trip
        buffer.ack([first[0].seq, first[1].seq])
        buffer.discard([first[2].seq], "too-large", "test")
        assert numbers(buffer.peek(3)) == [3, 4, 5]
        assert len(buffer) == 7
        assert buffer.size_bytes == sum(
            10 + len("n") + len(str(n)) + len("dev-0") + len(f"t:0:{n}") for n in range(3, 10)
        )


def test_messages_survive_reopen_and_keep_their_place(tmp_path):
    path = tmp_path / "b.sqlite3"
    with StoreAndForward(path, "reopen") as buffer:
        buffer.put(envelope(n) for n in range(5))
        buffer.ack([buffer.peek(1)[0].seq])
    with StoreAndForward(path, "reopen") as buffer:
        assert len(buffer) == 4
        buffer.put([envelope(5)])
        assert numbers(buffer.peek(10)) == [1, 2, 3, 4, 5]


def test_messages_survive_a_killed_process(tmp_path):
    """SIGKILL right after put() returned: every committed message is in the file."""
    path = tmp_path / "b.sqlite3"
    script = textwrap.dedent(
        f"""
        import sys, time
        from edgewatch.store_forward import Envelope, StoreAndForward
        buffer = StoreAndForward({str(path)!r}, "killed")
        for n in range(50):
            buffer.put([Envelope("d", b"body", {{}}, f"t:0:{{n}}")])
        print("stored", flush=True)
        time.sleep(60)
        """
    )
    child = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, cwd=os.getcwd())
    try:
        assert child.stdout.readline().strip() == "stored"
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(10)
    with StoreAndForward(path, "killed") as buffer:  # the lock died with the process
        assert numbers(buffer.peek(100)) == list(range(50))


def test_a_second_instance_on_the_same_file_is_refused(tmp_path):
    with StoreAndForward(tmp_path / "b.sqlite3", "lock"), pytest.raises(BufferInUse):
        StoreAndForward(tmp_path / "b.sqlite3", "lock")


def test_size_limit_drops_the_oldest_with_one_log_line(tmp_path, caplog):
    one = 100 + 1 + 2 + 5 + 6  # body, property, device id, message id of envelope(10..99, size=100)
    before = metric("edgewatch_forward_dropped_total", buffer="full-test", reason="full")
    with StoreAndForward(tmp_path / "b.sqlite3", "full-test", max_bytes=10 * one) as buffer:
        buffer.put(envelope(n, size=100) for n in range(10, 20))
        assert len(buffer) == 10 and not caplog.records
        with caplog.at_level(logging.WARNING, logger="edgewatch"):
            buffer.put(envelope(n, size=100) for n in range(20, 25))
        assert numbers(buffer.peek(100)) == list(range(15, 25))
        assert buffer.size_bytes <= buffer.max_bytes
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1, lines
    assert "store-and-forward full-test: dropped 5 message(s)" in lines[0]
    assert "the oldest" in lines[0] and "limit" in lines[0]
    assert metric("edgewatch_forward_dropped_total", buffer="full-test", reason="full") == before + 5


def test_age_limit_drops_what_the_link_did_not_take_in_time(tmp_path, caplog):
    clock = FakeClock()
    with StoreAndForward(tmp_path / "b.sqlite3", "age", max_age_seconds=3600, clock=clock) as buffer:
        buffer.put(envelope(n) for n in range(3))
        clock.now += 1800
        buffer.put(envelope(n) for n in range(3, 5))
        clock.now += 1801  # the first three are now older than an hour
        with caplog.at_level(logging.WARNING, logger="edgewatch"):
            assert numbers(buffer.peek(10)) == [3, 4]
    assert [r.getMessage() for r in caplog.records] == [
        "store-and-forward age: dropped 3 message(s): older than the 1 h age limit: the link did not take them in time"
    ]


def test_repeated_drops_are_summed_into_few_lines(tmp_path, caplog):
    """During a long outage every batch overflows; the log gets one line per 10 s, not one per batch."""
    with (
        caplog.at_level(logging.WARNING, logger="edgewatch"),
        StoreAndForward(tmp_path / "b.sqlite3", "spam", max_bytes=1000) as buffer,
    ):
        for n in range(200):
            buffer.put([envelope(n, size=80)])
        kept = len(buffer)
    # the first drop is logged at once; closing reports the rest in one more line
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2, lines
    total = sum(int(line.split("dropped ")[1].split(" ")[0]) for line in lines)
    assert total == 200 - kept


def test_wait_for_messages_wakes_on_put(tmp_path):
    with StoreAndForward(tmp_path / "b.sqlite3", "wake") as buffer:
        assert buffer.wait_for_messages(0.05) is False
        threading.Timer(0.1, buffer.put, [[envelope(0)]]).start()
        started = time.monotonic()
        assert buffer.wait_for_messages(5.0) is True
        assert time.monotonic() - started < 2.0


def test_call_with_timeout():
    assert call_with_timeout(lambda x: x + 1, 1.0, 41) == 42
    with pytest.raises(KeyError):
        call_with_timeout({}.__getitem__, 1.0, "missing")
    with pytest.raises(SendTimeout):
        call_with_timeout(time.sleep, 0.1, 5)


class FlakySender:
    """Acknowledges one message per call after ``failures`` failed calls; records what it sent."""

    batch_size = 3

    def __init__(self, failures: int):
        self.failures = failures
        self.sent: list[int] = []
        self.attempts = 0
        self.closed = False

    def deliver(self, batch: list[Stored], buffer: StoreAndForward) -> None:
        self.attempts += 1
        for stored in batch:
            if self.failures:
                self.failures -= 1
                raise ConnectionError("link down")
            self.sent.append(number(stored.envelope))
            buffer.ack([stored.seq])

    def close(self) -> None:
        self.closed = True


def test_forwarder_retries_until_everything_is_sent_in_order(tmp_path, caplog):
    with StoreAndForward(tmp_path / "b.sqlite3", "retry") as buffer:
        buffer.put(envelope(n) for n in range(20))
        sender = FlakySender(failures=4)
        sent_before = metric("edgewatch_forward_sent_total", buffer="retry")
        with caplog.at_level(logging.INFO, logger="edgewatch"):
            forwarder = Forwarder(buffer, sender, retry_max_seconds=0.2).start()
            buffer.put(envelope(n) for n in range(20, 30))
            assert forwarder.stop(drain_seconds=30) is True
        assert sender.sent == list(range(30))
        assert metric("edgewatch_forward_sent_total", buffer="retry") == sent_before + 30
        assert metric("edgewatch_forward_buffered", buffer="retry") == 0
        assert sender.attempts > 4 and sender.closed
    messages = [r.getMessage() for r in caplog.records]
    assert sum("link down (ConnectionError: link down)" in m for m in messages) == 1  # once per outage
    assert any("link back after" in m for m in messages)


def test_stopping_during_an_outage_keeps_the_messages(tmp_path):
    path = tmp_path / "b.sqlite3"
    with StoreAndForward(path, "outage") as buffer:
        buffer.put(envelope(n) for n in range(5))
        forwarder = Forwarder(buffer, FlakySender(failures=10**9), retry_max_seconds=0.1).start()
        time.sleep(0.3)
        started = time.monotonic()
        assert forwarder.stop(drain_seconds=0.2) is False
        assert time.monotonic() - started < 5
    with StoreAndForward(path, "outage") as buffer:
        assert numbers(buffer.peek(10)) == [0, 1, 2, 3, 4]


def test_labeled_event_sink_filters_by_send_mode(tmp_path):
    events = [labeled_event(0, "a", False), labeled_event(1, "a", True), labeled_event(2, "b", False)]
    sink = LabeledEventSink("modes", tmp_path, lambda: FlakySender(failures=0), "anomalies")
    assert [sink.to_envelope(e) is not None for e in events] == [False, True, False]
    sink.send = "all"  # an operator switches while the flow runs: the next events use it
    assert [sink.to_envelope(e).message_id for e in events] == [f"telemetry:0:{n}" for n in range(3)]
    assert sink.to_envelope(events[1]) == labeled_envelope(events[1])
    with pytest.raises(ValueError, match="send must be one of"):
        sink.send = "some"


def test_dead_letter_sink_keeps_the_original_bytes_and_the_reason(tmp_path):
    sink = DeadLetterSink("dead", tmp_path, lambda: FlakySender(failures=0))
    dead = DeadLetter(RawMessage(b"pump-1", b"{bad", [("h", b"v")], "telemetry", 0, 3), "not JSON")
    envelope = sink.to_envelope(dead)
    assert envelope.body == b"{bad"
    assert envelope.properties["h"] == "v"
    assert envelope.properties["edgewatch.error.reason"] == "not JSON"
    assert envelope.message_id == "telemetry:0:3"


def test_sink_in_a_bytewax_flow(tmp_path):
    """Lists of labeled events in, anomalies out, in order; nothing left behind."""
    sender = FlakySender(failures=2)
    batches = [
        [labeled_event(offset, f"dev-{offset % 4}", anomaly=offset % 3 == 0) for offset in range(start, start + 10)]
        for start in range(0, 100, 10)
    ]
    flow = Dataflow("forwarding-sink")
    stream = op.input("in", flow, TestingSource(batches))
    policy = BufferPolicy(retry_max_seconds=0.1, drain_seconds=30)
    op.output("out", stream, LabeledEventSink("sinktest", tmp_path, lambda: sender, "anomalies", policy))
    run_main(flow)
    expected = [offset for offset in range(100) if offset % 3 == 0]
    with StoreAndForward(tmp_path / "sinktest.sqlite3", "sinktest") as buffer:
        assert len(buffer) == 0
    assert sender.sent == expected


def test_sink_envelopes_carry_the_labeled_event(tmp_path):
    received: list[Envelope] = []

    class Recorder:
        batch_size = 50

        def deliver(self, batch, buffer):
            received.extend(s.envelope for s in batch)
            buffer.ack([s.seq for s in batch])

        def close(self):
            pass

    flow = Dataflow("forwarding-sink-all")
    stream = op.input("in", flow, TestingSource([[labeled_event(n, "pump-1", n == 2) for n in range(5)]]))
    op.output("out", stream, LabeledEventSink("recorder", tmp_path, Recorder, "all", BufferPolicy(drain_seconds=30)))
    run_main(flow)
    assert [e.message_id for e in received] == [f"telemetry:0:{n}" for n in range(5)]
    assert received[2].properties == {"anomaly": "true", "deviceId": "pump-1", "model": "robust-zscore"}
    assert received[0].properties["anomaly"] == "false"
    assert received[2].body.startswith(b'{"device_id":"pump-1"')


def test_a_full_disk_loses_the_cloud_copy_not_the_flow(tmp_path, caplog):
    """When the buffer cannot be written (here: SQLite's page limit stands in for a full disk),
    the sink logs and counts the loss and returns: labeling and the Kafka output go on."""
    sink = LabeledEventSink(
        "diskfull", tmp_path, lambda: FlakySender(failures=10**9), "all", BufferPolicy(drain_seconds=0)
    )
    partition = sink.build("cloud-out", 0, 1)
    buffer = partition._link.buffer
    try:
        buffer._db.execute("PRAGMA max_page_count = 12")  # a few dozen events fit, not 200
        with caplog.at_level(logging.WARNING, logger="edgewatch"):
            for start in range(0, 200, 10):
                partition.write_batch([[labeled_event(n, "pump-1", anomaly=True) for n in range(start, start + 10)]])
        kept = len(buffer)
        assert 0 < kept < 200
        assert kept == len(buffer.peek(1000)), "the in-memory count matches the file after failed writes"
    finally:
        partition.close()
    lines = [r.getMessage() for r in caplog.records if "could not be stored" in r.getMessage()]
    assert lines and "database or disk is full" in lines[0]
    assert sum(int(line.split("dropped ")[1].split(" ")[0]) for line in lines) == 200 - kept


def test_refused_credentials_are_an_error_not_an_outage(tmp_path, caplog):
    """An invalid key is not "link down": one ERROR line that says to fix the credentials, events kept."""

    class UnauthorizedError(Exception):  # what azure-iot-device raises under ConnectionFailedError
        pass

    class RefusingSender(FlakySender):
        def deliver(self, batch, buffer):
            self.attempts += 1
            try:
                raise UnauthorizedError("CONNACK: not authorized")
            except UnauthorizedError as cause:
                raise ConnectionError("connection failed") from cause

    sender = RefusingSender(failures=0)
    with StoreAndForward(tmp_path / "refused.sqlite3", "iothub") as buffer:
        buffer.put(envelope(n) for n in range(5))
        forwarder = Forwarder(buffer, sender, retry_max_seconds=0.05)
        with caplog.at_level(logging.INFO, logger="edgewatch"):
            forwarder.start()
            deadline = time.monotonic() + 10
            while sender.attempts < 5 and time.monotonic() < deadline:
                time.sleep(0.02)
            forwarder.stop()
        assert len(buffer) == 5, "nothing dropped"
    lines = [r for r in caplog.records if "refused" in r.getMessage()]
    assert len(lines) == 1 and lines[0].levelname == "ERROR"
    assert "fix the connection string or key" in lines[0].getMessage()
    assert not any("link down" in r.getMessage() for r in caplog.records)
