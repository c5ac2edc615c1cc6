"""Where the web view's messages come from: a :class:`Feed` fills a :class:`~edgewatch.ui.state.FleetState`.

* :class:`KafkaFeed` reads the flow's ``labeled``, ``alarms`` and ``drift`` topics (``edgewatch ui``);
* :class:`InProcessFeed` takes them from a flow running in the same process (a sink's
  ``put`` never blocks the flow: when the view falls behind, messages are dropped and counted).
  A flow serving the view itself would start ``ViewServer(FleetState(), feed)`` next to its
  dataflow and have its output sinks call ``feed.put("labeled", labeled_event_json(event))``.

>>> from edgewatch.ui.state import FleetState
>>> state, feed = FleetState(), InProcessFeed(capacity=1)
>>> feed.put("drift", b'{}'), feed.put("drift", b'{}'), feed.dropped
(True, False, 1)
"""

from __future__ import annotations

import logging
import math
import queue
import threading
import time
import uuid
from abc import ABC, abstractmethod
from typing import NamedTuple

from edgewatch.ui.state import KINDS, FleetState

log = logging.getLogger(__name__)
#: seconds between two log lines about one Kafka outage
LOG_EVERY = 30.0
#: a topic scan's metadata request first waits the connectors' first metadata try (``FIRST_TRY_SECONDS``),
#: then twice as long at each try that gets no answer, up to this: a refused connection is on the page
#: after the first try (the consume between two tries serves the error callback that says why) and a stop
#: waits for one short try, where a single 5 s request kept both waiting 5 s; a slow broker still gets
#: the whole 5 s
METADATA_SECONDS = 5.0


class Feed(ABC):
    """A source of the flow's output messages for the view."""

    @abstractmethod
    def run(self, state: FleetState, stop: threading.Event) -> None:
        """Apply messages to ``state`` until ``stop`` is set; report trouble with ``state.set_feed_status``."""

    def start(self, state: FleetState, stop: threading.Event) -> threading.Thread:
        """:meth:`run` on a daemon thread."""
        thread = threading.Thread(target=self.run, args=(state, stop), name=type(self).__name__, daemon=True)
        thread.start()
        return thread


class InProcessFeed(Feed):
    """Messages handed over by a flow in this process (``put(kind, json_bytes_or_dict)``)."""

    def __init__(self, capacity: int = 10_000):
        self._queue: queue.Queue[tuple[str, bytes | dict]] = queue.Queue(capacity)
        self.dropped = 0

    def put(self, kind: str, message: bytes | dict) -> bool:
        """Queue one message for the view; ``False`` (and counted) when the view is behind."""
        try:
            self._queue.put_nowait((kind, message))
            return True
        except queue.Full:
            self.dropped += 1
            return False

    def run(self, state: FleetState, stop: threading.Event) -> None:
        state.set_feed_status(True, "in-process feed")
        while not stop.is_set():
            try:
                kind, message = self._queue.get(timeout=0.2)
            except queue.Empty:
                continue
            state.apply(kind, message)


class Topics(NamedTuple):
    """The flow's output topics, by kind."""

    labeled: str = "labeled"
    alarms: str = "alarms"
    drift: str = "drift"


DEFAULT_TOPICS = Topics()


class KafkaFeed(Feed):
    """The flow's output topics, read with a consumer that commits nothing and creates no topic.

    At start each partition is read from ``history`` messages before its end (the recent past
    the view can hold anyway), not from the beginning. Topics that do not exist yet are looked
    for again every ``rescan_seconds``: the view can start before the flow.
    """

    def __init__(
        self,
        config: dict[str, str],
        topics: Topics = DEFAULT_TOPICS,
        history: int = 1000,
        rescan_seconds: float = 5.0,
    ):
        self.config = config
        self.topics = topics
        self.history = history
        self.rescan_seconds = rescan_seconds
        self._kind_of = {topic: kind for kind, topic in zip(KINDS, topics, strict=True)}
        self._error: str | None = None
        self._down_since: float | None = None
        self._logged_at = -math.inf

    @property
    def bootstrap(self) -> str:
        return self.config.get("bootstrap.servers", "?")

    def _on_error(self, error) -> None:
        # called from poll(); librdkafka retries by itself, the view only says so
        self._error = f"cannot reach Kafka at {self.bootstrap}: {_short(error.str())}"

    def _report(self, state: FleetState) -> None:
        """The feed's state on the page, and in the log one line per ``LOG_EVERY`` seconds of an outage."""
        now = time.monotonic()
        if self._error is None:
            if self._down_since is not None:
                log.warning("Kafka at %s reachable again after %.0f s", self.bootstrap, now - self._down_since)
                self._down_since, self._logged_at = None, -math.inf
            return
        state.set_feed_status(False, self._error)
        self._down_since = now if self._down_since is None else self._down_since
        if now - self._logged_at >= LOG_EVERY:
            log.warning("%s; retrying since %.0f s", self._error, now - self._down_since)
            self._logged_at = now

    def run(self, state: FleetState, stop: threading.Event) -> None:
        from confluent_kafka import Consumer

        from edgewatch.connectors.kafka import FIRST_TRY_SECONDS

        consumer = Consumer(
            {
                **self.config,
                "group.id": f"edgewatch-ui-{uuid.uuid4().hex[:8]}",  # assign() only: nothing is committed
                "enable.auto.commit": "false",
                "allow.auto.create.topics": "false",
                "error_cb": self._on_error,
                "log_level": 0,  # librdkafka logs each failed connect; error_cb and _report say it once
            }
        )
        assigned: set[tuple[str, int]] = set()
        next_scan, try_seconds = 0.0, FIRST_TRY_SECONDS
        try:
            while not stop.is_set():
                if time.monotonic() >= next_scan:
                    if self._assign_new_partitions(consumer, assigned, state, try_seconds):
                        next_scan, try_seconds = time.monotonic() + self.rescan_seconds, FIRST_TRY_SECONDS
                    else:  # tried again after this round's consume, twice as long
                        try_seconds = min(2 * try_seconds, METADATA_SECONDS)
                for msg in consumer.consume(500, 0.25):
                    if msg.error() is None:
                        self._error = None
                        state.apply(self._kind_of[msg.topic()], msg.value() or b"")
                self._report(state)
        finally:
            consumer.close()

    def _assign_new_partitions(
        self, consumer, assigned: set[tuple[str, int]], state: FleetState, timeout: float = METADATA_SECONDS
    ) -> bool:
        """Assign the partitions of the topics that appeared since the last scan; ``False`` when the
        metadata did not come within ``timeout`` s (only a whole :data:`METADATA_SECONDS` without an
        answer says "cannot reach" by itself: a refusal is said by the error callback)."""
        from confluent_kafka import KafkaException, TopicPartition

        try:
            metadata = consumer.list_topics(timeout=timeout)
            new = []
            for topic in self.topics:
                found = metadata.topics.get(topic)
                if found is None or found.error is not None:
                    continue
                for partition in found.partitions:
                    if (topic, partition) not in assigned:
                        low, high = consumer.get_watermark_offsets(
                            TopicPartition(topic, partition), timeout=METADATA_SECONDS
                        )
                        new.append(TopicPartition(topic, partition, max(low, high - self.history)))
        except KafkaException as exc:
            if timeout >= METADATA_SECONDS:
                self._error = f"cannot reach Kafka at {self.bootstrap}: {_short(exc.args[0].str())}"
            return False
        if new:
            consumer.incremental_assign(new)
            assigned.update((tp.topic, tp.partition) for tp in new)
        self._error = None
        present = [topic for topic in self.topics if any(t == topic for t, _ in assigned)]
        missing = [topic for topic in self.topics if topic not in present]
        parts = [f"reading {', '.join(present)}"] if present else []
        parts += [f"waiting for topic {', '.join(missing)}"] if missing else []
        state.set_feed_status(True, f"{'; '.join(parts)} at {self.bootstrap}")
        return True


def _short(reason: str) -> str:
    """librdkafka's reason without the broker prefix and the state detail:
    ``h:1/bootstrap: Connect to ipv4#h:1 failed: Connection refused (after 0ms in state CONNECT)``
    → ``Connection refused``."""
    return reason.rsplit(": ", 1)[-1].split(" (after ")[0]
