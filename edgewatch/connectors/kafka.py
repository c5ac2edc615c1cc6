"""Kafka in and out of Bytewax, in batches.

:class:`KafkaBatchSource` emits one item per poll: the list of messages the poll
returned. Bytewax then pays its per-item cost once per batch instead of once per
message. Offsets are the recovery state, so a restarted flow resumes where the last
snapshot left off (Bytewax assigns partitions itself; no consumer group, which also
suits brokers with slow group rebalances such as Tansu).

:class:`KafkaSink` produces the record of each item of one typed stream (made as it goes) and
flushes each batch (in chunks below one producer batch: see ``write_batch``), so everything
written in an epoch is acknowledged before Bytewax snapshots it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import NamedTuple

from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition
from bytewax.outputs import DynamicSink, StatelessSinkPartition
from confluent_kafka import (
    OFFSET_BEGINNING,
    OFFSET_END,
    OFFSET_STORED,
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    Producer,
)
from confluent_kafka import TopicPartition as KafkaTopicPartition
from confluent_kafka.admin import AdminClient, NewTopic
from prometheus_client import Gauge

from edgewatch.schema import Headers, RawMessage
from edgewatch.telemetry import FLOW_METRICS

log = logging.getLogger(__name__)


#: the metadata tries of :func:`cluster_metadata` start this short and double up to
#: :data:`FAST_TRY_SECONDS`: a broker that refuses or fails authentication is reported after the
#: try during which it did so (a refused connection in well under a second, where one 3 s try made
#: every "is the broker running?" error wait 3 s), one that does not answer after the whole timeout
FIRST_TRY_SECONDS = 0.25
FAST_TRY_SECONDS = 3.0


class KafkaUnavailable(RuntimeError):
    """Kafka cannot be used with these settings; the message says why and what to check."""


def cluster_metadata(config: dict[str, str], timeout: float = 15.0):
    """The cluster's metadata (brokers, topics), or :class:`KafkaUnavailable` saying why not:
    unreachable, credentials refused, or TLS failing, instead of librdkafka's "transport failure"."""
    errors: list[KafkaError] = []
    admin = AdminClient({**config, "error_cb": errors.append, "logger": _QUIET})
    deadline = time.monotonic() + timeout
    try_seconds = FIRST_TRY_SECONDS
    while True:  # in short tries: a refused connection is known at once, not at the timeout
        try:
            return admin.list_topics(timeout=min(try_seconds, max(0.1, deadline - time.monotonic())))
        except KafkaException as exc:
            try_seconds = min(2 * try_seconds, FAST_TRY_SECONDS)
            admin.poll(0.25)  # serves the error callbacks that say why (all brokers down, authentication, TLS)
            codes = {error.code() for error in errors}
            refused = KafkaError._ALL_BROKERS_DOWN in codes or KafkaError._AUTHENTICATION in codes
            if time.monotonic() >= deadline or refused:
                raise KafkaUnavailable(explain_kafka_failure(config, errors, exc.args[0])) from None


def explain_kafka_failure(config: dict[str, str], errors: list[KafkaError], failure: KafkaError) -> str:
    """One line: what failed, where, and what to check.

    >>> explain_kafka_failure({"bootstrap.servers": "127.0.0.1:9999"}, [], KafkaError(KafkaError._TRANSPORT))
    'cannot reach Kafka at 127.0.0.1:9999: is the broker running, and is --bootstrap (EDGEWATCH_BOOTSTRAP) right?'
    """
    where = config.get("bootstrap.servers", "?")
    codes = {error.code() for error in errors}
    if KafkaError._AUTHENTICATION in codes or failure.code() == KafkaError._AUTHENTICATION:
        return (
            f"Kafka at {where} refused the credentials (SASL authentication failed): check sasl_username and "
            "EDGEWATCH_SASL_PASSWORD, or the Event Hubs connection string"
        )
    if KafkaError._SSL in codes:
        detail = next(error.str() for error in errors if error.code() == KafkaError._SSL)
        return f"TLS with Kafka at {where} failed ({detail}): check ssl_ca_location and security_protocol"
    return f"cannot reach Kafka at {where}: is the broker running, and is --bootstrap (EDGEWATCH_BOOTSTRAP) right?"


def ensure_topics(
    config: dict[str, str],
    topics: Iterable[str],
    partitions: int,
    timeout: float = 15.0,
    must_exist: Iterable[str] = (),
) -> list[str]:
    """Create the topics that do not exist yet (a log line each) and return them; leave existing ones as
    they are. A topic in ``must_exist`` that is missing is an error (a typo must not create a topic
    that nothing writes to)."""
    existing = cluster_metadata(config, timeout).topics
    missing_inputs = [topic for topic in must_exist if topic not in existing]
    if missing_inputs:
        known = ", ".join(sorted(t for t in existing if not t.startswith("_"))[:10]) or "none"
        raise KafkaUnavailable(
            f"topic {missing_inputs[0]!r} does not exist on {config.get('bootstrap.servers')} (topics there: {known}): "
            "check the name, or pass --create-topics"
        )
    missing = [NewTopic(topic, partitions, 1) for topic in dict.fromkeys(topics) if topic not in existing]
    if not missing:
        return []
    admin = AdminClient({**config, "logger": KAFKA_LOG})
    for topic, future in admin.create_topics(missing, operation_timeout=timeout).items():
        try:
            future.result(timeout)
            log.info("created topic %s with %d partitions", topic, partitions)
        except KafkaException as exc:
            if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                raise KafkaUnavailable(f"cannot create topic {topic!r}: {exc.args[0].str()}") from None
    return [new.topic for new in missing]


class _RateLimited(logging.Filter):
    """librdkafka repeats a failing connection's message many times a second: let one line of each
    kind through per ``interval`` seconds, saying how many were held back."""

    def __init__(self, interval: float = 30.0):
        super().__init__()
        self.interval = interval
        self._last: dict[str, tuple[float, int]] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        kind = str(record.args[0]) if isinstance(record.args, tuple) and record.args else record.getMessage()[:40]
        now = time.monotonic()
        last, held = self._last.get(kind, (0.0, 0))
        if now - last < self.interval:
            self._last[kind] = (last, held + 1)
            return False
        self._last[kind] = (now, 0)
        if held:
            record.msg = f"{record.msg} (and {held} more like it in the last {self.interval:.0f} s)"
        return True


#: librdkafka's own log lines, through Python logging and rate-limited (not raw lines on stderr)
KAFKA_LOG = logging.getLogger("edgewatch.kafka.client")
KAFKA_LOG.addFilter(_RateLimited())
#: for a connection check, whose failure is explained in one line instead
_QUIET = logging.getLogger("edgewatch.kafka.check")
_QUIET.propagate = False
_QUIET.addHandler(logging.NullHandler())


def to_raw_message(msg) -> RawMessage:
    """A confluent-kafka message as an edgewatch :class:`RawMessage`."""
    kind, ts = msg.timestamp()
    return RawMessage(
        msg.key(), msg.value(), msg.headers() or [], msg.topic(), msg.partition(), msg.offset(), ts if kind else None
    )


class _KafkaBatchPartition(StatefulSourcePartition[list[RawMessage], int]):
    def __init__(
        self,
        config: dict,
        topic: str,
        partition: int,
        offset: int,
        batch_size: int,
        stop_offset: int | None,
        stop: threading.Event | None,
        commit: bool,
    ):
        self._consumer = Consumer({**config, "logger": KAFKA_LOG})
        self._assigned = KafkaTopicPartition(topic, partition)
        self._consumer.assign([KafkaTopicPartition(topic, partition, offset)])
        self._topic, self._partition = topic, partition
        self._offset = offset
        self._batch_size = batch_size
        self._stop_offset = stop_offset
        self._stop = stop
        self._commit = commit
        self._snapshots: list[int] = []

    def next_batch(self) -> list[list[RawMessage]]:
        # max(): before the first message the offset is a logical one (earliest = -2)
        if self._stop_offset is not None and max(self._offset, 0) >= self._stop_offset:
            raise StopIteration
        if self._stop is not None and self._stop.is_set():
            raise StopIteration
        messages = self._consumer.consume(self._batch_size, 0)
        if not messages:
            return []
        errors = list(map(Message.error, messages))
        # (``is None``, not list.count(None): KafkaError's == against None leaves a Python error set)
        if all(error is None for error in errors) and (
            self._stop_offset is None or messages[-1].offset() < self._stop_offset
        ):  # the common case: no error, not at the end (messages of one partition, in offset order)
            topic, partition = self._topic, self._partition
            batch = [
                RawMessage(msg.key(), msg.value(), msg.headers() or [], topic, partition, msg.offset(),
                           ts if kind else None)
                for msg in messages
                for kind, ts in (msg.timestamp(),)
            ]  # fmt: skip
        else:
            batch = self._checked(messages, errors)
        if not batch:
            return []  # Bytewax polls an idle partition again after 1 ms
        self._offset = batch[-1].offset + 1
        FLOW_METRICS.read_from(self._topic, self._partition, self._lag())
        return [batch]

    def _checked(self, messages: list, errors: list) -> list[RawMessage]:
        """The messages of a poll up to the stop offset, errors logged (or raised when fatal)."""
        batch = []
        for msg, error in zip(messages, errors, strict=True):
            if error is not None:
                if error.fatal():
                    raise RuntimeError(f"Kafka error on {msg.topic()}[{msg.partition()}]: {error}")
                # transient (the broker is down or moving): librdkafka retries by itself
                if error.code() != KafkaError._PARTITION_EOF:
                    log.debug("Kafka %s[%s]: %s", msg.topic(), msg.partition(), error)
                continue
            if self._stop_offset is not None and msg.offset() >= self._stop_offset:
                break
            batch.append(to_raw_message(msg))
        return batch

    def _lag(self) -> int | None:
        """Messages behind the partition's end, from the end offset the last fetch brought (no request)."""
        try:
            _low, high = self._consumer.get_watermark_offsets(self._assigned, cached=True)
        except KafkaException:
            return None
        return max(0, high - self._offset) if high >= 0 else None

    def snapshot(self) -> int:
        if self._commit:
            self._commit_previous_epoch()
        return self._offset

    def _commit_previous_epoch(self) -> None:
        """Commit the offset of the epoch before this one to the consumer group: by the time an epoch
        ends, the one before it has left the sinks, so a restart without recovery state resumes
        there (repeating at most about two epochs of messages, never skipping one)."""
        self._snapshots = [*self._snapshots[-1:], self._offset]
        previous = self._snapshots[0]
        if len(self._snapshots) < 2 or previous < 0:
            return
        try:
            done = KafkaTopicPartition(self._topic, self._partition, previous)
            self._consumer.commit(offsets=[done], asynchronous=True)
        except KafkaException as exc:  # a missed commit only means more repeats after a restart
            log.debug("commit %s[%d]@%d failed: %s", self._topic, self._partition, previous, exc)

    def close(self) -> None:
        # the dataflow has finished: everything read was written, so this position is done
        if self._commit and self._offset >= 0:
            try:
                self._consumer.commit(offsets=[KafkaTopicPartition(self._topic, self._partition, self._offset)])
            except KafkaException as exc:
                log.warning("could not commit %s[%d]@%d: %s", self._topic, self._partition, self._offset, exc)
        self._consumer.close()


#: where a partition starts without recovery state
START_OFFSETS = {"earliest": OFFSET_BEGINNING, "latest": OFFSET_END, "committed": OFFSET_STORED}


class KafkaBatchSource(FixedPartitionedSource[list[RawMessage], int]):
    """Read Kafka topics as batches of :class:`RawMessage`, one Bytewax partition per Kafka partition.

    Args:
        config: librdkafka settings (see :func:`client_config`).
        topics: topics to read.
        batch_size: most messages emitted per poll.
        start_from: where a partition starts without recovery state: ``earliest``, ``latest``, or
            ``committed`` (the consumer group's committed offset, else the earliest); with
            ``committed`` the source also commits what the flow has written (a restart without
            recovery resumes instead of re-reading the topic).
        group: the consumer group offsets are committed to and read from.
        stop_offsets: ``{(topic, partition): offset}``; a partition ends once it reaches its
            offset (benchmarks and tests that read a known amount). Without it, partitions
            follow the topic forever.
        stop: once set, every partition ends and the flow drains and finishes (graceful
            shutdown on SIGTERM/Ctrl-C).
    """

    def __init__(
        self,
        config: dict[str, str],
        topics: Iterable[str],
        batch_size: int = 2000,
        start_from: str = "earliest",
        stop_offsets: dict[tuple[str, int], int] | None = None,
        stop: threading.Event | None = None,
        group: str = "edgewatch",
    ):
        if start_from not in START_OFFSETS:
            raise ValueError(f"start_from must be one of {', '.join(START_OFFSETS)}, not {start_from!r}")
        self._config = dict(config)
        self._stop = stop
        self._topics = list(topics)
        self._batch_size = batch_size
        self._start = START_OFFSETS[start_from]
        self._commit = start_from == "committed"
        self._group = group
        self._stop_offsets = stop_offsets

    def list_parts(self) -> list[str]:
        metadata = cluster_metadata(self._config)
        parts = []
        for topic in self._topics:
            if topic not in metadata.topics or metadata.topics[topic].error is not None:
                raise RuntimeError(f"Kafka topic {topic!r} does not exist on {self._config['bootstrap.servers']}")
            parts.extend(f"{index}-{topic}" for index in sorted(metadata.topics[topic].partitions))
        return parts

    def build_part(self, step_id: str, for_part: str, resume_state: int | None) -> _KafkaBatchPartition:
        index, topic = for_part.split("-", 1)
        config = {
            **self._config,
            # partitions are assigned, not grouped: the group only holds committed offsets
            "group.id": self._group,
            "enable.auto.commit": "false",
            "enable.partition.eof": "false",
            # an offset that retention already deleted: continue at the oldest message kept, not the end
            "auto.offset.reset": "earliest",
            "fetch.wait.max.ms": "10",
            # librdkafka prefetches up to 64 MB per partition by default: too much for an edge node
            "queued.max.messages.kbytes": "8192",
        }
        stop = None if self._stop_offsets is None else self._stop_offsets.get((topic, int(index)), 0)
        offset = self._start if resume_state is None else resume_state
        return _KafkaBatchPartition(config, topic, int(index), offset, self._batch_size, stop, self._stop, self._commit)


class OutRecord(NamedTuple):
    """One message to produce."""

    topic: str
    key: bytes | None
    value: bytes | None
    headers: Headers


def produce(producer: Producer, topic: str, value: bytes | None, key: bytes | None = None, **options) -> None:
    """``producer.produce``, waiting for room while librdkafka's local queue is full."""
    while True:
        try:
            producer.produce(topic, value, key, **options)
            return
        except BufferError:  # local queue full: let deliveries drain
            producer.poll(0.05)


#: most bytes a sink's producer puts in one request to a partition (librdkafka's default, named here
#: because the sink's flush chunks are measured against it)
SINK_BATCH_BYTES = 1_000_000
#: a sink flushes after this many bytes of values: a chunk must stay below one batch even when all
#: of it goes to one partition (as the labeled events of one input partition do: same keys) with
#: its keys, headers and record framing (~20 % more than the values for labeled events)
SINK_FLUSH_BYTES = SINK_BATCH_BYTES // 2

#: a sink's producer: idempotent (its retries never write a message twice) and patient (no
#: message times out: while the broker is down the flow waits and resumes when it is back).
#: It sends when the sink flushes (flush() sends at once, whatever linger.ms says), so linger.ms
#: only has to outlast the production of one chunk: with a short one, a chunk left the producer in
#: pieces while it was being made.
SINK_PRODUCER_CONFIG = {
    "linger.ms": "1000",
    "batch.size": str(SINK_BATCH_BYTES),
    "enable.idempotence": "true",
    "message.timeout.ms": "0",
}

#: seconds between the log lines of one outage
OUTAGE_LOG_SECONDS = 30.0

KAFKA_DOWN = Gauge("edgewatch_kafka_unreachable_seconds", "Seconds the Kafka sink has been waiting for the broker")


class _KafkaSinkPartition(StatelessSinkPartition[list]):
    def __init__(
        self,
        config: dict[str, str],
        to_record: Callable[[object], OutRecord],
        to_records: Callable[[list], Iterable[OutRecord]] | None = None,
    ):
        self._to_records = to_records or (lambda items: map(to_record, items))
        self._bootstrap = config.get("bootstrap.servers", "?")
        self._errors: list[str] = []
        # delivery reports for failures only, to one callback: no Python call per message delivered
        self._producer = Producer(
            {**config, **SINK_PRODUCER_CONFIG, "error_cb": self._on_error, "logger": KAFKA_LOG,
             "on_delivery": self._on_delivery, "delivery.report.only.error": True}
        )  # fmt: skip

    def _on_error(self, error: KafkaError) -> None:
        if error.fatal():
            self._errors.append(str(error))

    def _on_delivery(self, error: KafkaError | None, _msg) -> None:
        if error is not None:
            self._errors.append(str(error))

    def write_batch(self, items: list[list]) -> None:
        """Produce every record and wait until all are acknowledged, flushing after each
        :data:`SINK_FLUSH_BYTES` of values.

        Why in chunks: the idempotent producer keeps at most 5 requests in flight; once a partition
        holds a full batch it cannot send yet, librdkafka wakes its broker thread for every message
        enqueued after it (measured: 1–3 wake-ups per message, 0.1–0.3 CPU-s per 100,000 labeled
        events). Below a full batch per partition nothing is ready until the flush sends it all.
        """
        producer = self._producer
        send = producer.produce
        pending = 0
        for batch in items:
            for topic, key, value, headers in self._to_records(batch):
                try:
                    send(topic, value, key, headers=headers)
                except BufferError:  # local queue full: wait for room
                    produce(producer, topic, value, key, headers=headers)
                if value is not None:
                    pending += len(value)
                    if pending >= SINK_FLUSH_BYTES:
                        self._flush()
                        pending = 0
        self._flush()

    def _flush(self) -> None:
        """Wait until everything is acknowledged: an epoch ends only after its output is written.

        A broker outage of any length only makes this wait (one log line per
        ``OUTAGE_LOG_SECONDS`` and the ``edgewatch_kafka_unreachable_seconds`` gauge); a fatal
        error or a failed delivery stops the flow, which then resumes from its last snapshot.
        """
        started = time.monotonic()
        logged = started
        while self._producer.flush(1.0) > 0 and not self._errors:
            waited = time.monotonic() - started
            KAFKA_DOWN.set(waited)
            if time.monotonic() - logged >= OUTAGE_LOG_SECONDS:
                logged = time.monotonic()
                log.warning(
                    "Kafka at %s unreachable, retrying since %.0f s (%d message(s) waiting)",
                    self._bootstrap,
                    waited,
                    len(self._producer),
                )
        if time.monotonic() - started >= OUTAGE_LOG_SECONDS:
            log.info("Kafka at %s reachable again after %.0f s", self._bootstrap, time.monotonic() - started)
        KAFKA_DOWN.set(0)
        if self._errors:
            raise RuntimeError(f"Kafka delivery failed: {self._errors[:3]}")

    def close(self) -> None:
        self._flush()


class KafkaSink(DynamicSink[list]):
    """Produce lists of items, ``to_record(item)`` each; every batch is acknowledged before the next.

    Args:
        config: librdkafka settings (:meth:`~edgewatch.config.KafkaSettings.client_config`).
        to_record: the :class:`OutRecord` for one item (its topic, key, value and headers).
        to_records: the same records for a whole list of items at once, when items share work
            (``to_record`` of each when not given).
    """

    def __init__(
        self,
        config: dict[str, str],
        to_record: Callable[[object], OutRecord],
        to_records: Callable[[list], Iterable[OutRecord]] | None = None,
    ):
        self._config = dict(config)
        self._to_record = to_record
        self._to_records = to_records

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _KafkaSinkPartition:
        return _KafkaSinkPartition(self._config, self._to_record, self._to_records)


@dataclass
class PublishStats:
    """What a publisher sent and where it ended."""

    messages: int = 0
    seconds: float = 0.0
    end_offsets: dict[tuple[str, int], int] = field(default_factory=dict)  # next offset per partition


def publish(
    records: Iterable,
    config: dict[str, str],
    topic: str,
    on_record: Callable | None = None,
    keep_timestamps: bool = True,
) -> PublishStats:
    """Produce every record (``key``, ``value``, ``headers``, ``timestamp_ms``) and wait until all are
    acknowledged. Without ``keep_timestamps`` Kafka stamps them with the time they are sent (a
    replayed file's old source times would fall out of the topic's retention at once)."""
    errors: list[str] = []
    stats = PublishStats()

    def delivered(error, msg) -> None:
        if error is not None:
            errors.append(str(error))
            return
        where = (msg.topic(), msg.partition())
        stats.end_offsets[where] = max(stats.end_offsets.get(where, 0), msg.offset() + 1)

    producer = Producer({**config, "linger.ms": "5", "acks": "all", "enable.idempotence": "true", "logger": KAFKA_LOG})
    started = time.monotonic()
    for record in records:
        timestamp = (record.timestamp_ms or 0) if keep_timestamps else 0
        produce(
            producer,
            topic,
            record.value,
            record.key,
            headers=record.headers,
            timestamp=timestamp,
            on_delivery=delivered,
        )
        producer.poll(0)
        stats.messages += 1
        if on_record is not None:
            on_record(record)
    remaining = producer.flush(60)
    if remaining or errors:
        where = config.get("bootstrap.servers", "?")
        why = f"; first error: {errors[0]}" if errors else ": is the broker still running?"
        raise KafkaUnavailable(f"{remaining or len(errors)} message(s) not delivered to Kafka at {where}{why}")
    stats.seconds = time.monotonic() - started
    return stats
