"""The session's Apache Kafka, launched when collection ends.

The JVM takes 10-20 s to start on a busy 2-core machine; launched when collection ends (if a
collected test uses ``kafka_bootstrap``), it starts while the warm-up and the tests before the
first Kafka test run, and that test finds it ready. It carries the Event Hubs-like listener
(:mod:`tests.support.eventhubs`), so it needs the session's PKI (:func:`tests.support.iothub.session_pki`).

The broker is started and stopped by a thread of its own that lives as long as the broker: the
broker dies with the thread that launched it (``PR_SET_PDEATHSIG`` follows the launching thread).
"""

from __future__ import annotations

import shutil
import tempfile
import threading
from pathlib import Path

import pytest

from tests.kafka.apache_kafka import TEST_JVM_OPTIONS, ApacheKafka
from tests.support.eventhubs import EventHubsListener, eventhubs_listener

START_TIMEOUT = 150.0  # seconds: it starts beside the numba warm-up's compiles

_session_kafka = pytest.StashKey["SessionKafka"]()


class SessionKafka:
    """Apache Kafka with the Event Hubs-like listener, in ``root``; :meth:`launch` returns at once,
    :meth:`wait` blocks until it serves, :meth:`stop` stops it."""

    def __init__(self, root: Path, pki):
        self.root = root
        self.listener: EventHubsListener = eventhubs_listener(root / "eventhubs-listener", pki)
        self.broker = ApacheKafka(
            root / "kafka", self.listener.properties, self.listener.listeners, jvm_options=TEST_JVM_OPTIONS
        )
        self._started = threading.Event()
        self._stopping = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="session-kafka", daemon=True)

    def launch(self) -> SessionKafka:
        self._thread.start()
        return self

    def _run(self) -> None:
        try:
            self.broker.start(START_TIMEOUT)
        except BaseException as exc:  # handed to whoever waits for the broker
            self._error = exc
        self._started.set()
        if self._error is None:
            self._stopping.wait()
            self.broker.stop()

    def wait(self) -> str:
        """The broker's bootstrap (HOST:PORT), once it serves."""
        self._started.wait()
        if self._error is not None:
            raise RuntimeError(f"the session's Apache Kafka did not start: {self._error}") from self._error
        return self.broker.bootstrap

    def stop(self) -> None:
        self._stopping.set()
        if self._thread.is_alive():
            self._thread.join(60)


def session_kafka(config: pytest.Config, pki) -> SessionKafka:
    """The session's broker, launched on first call (in a temporary directory removed with the session's)."""
    kafka = config.stash.get(_session_kafka, None)
    if kafka is None:
        root = Path(tempfile.mkdtemp(prefix="edgewatch-kafka-"))
        kafka = config.stash[_session_kafka] = SessionKafka(root, pki).launch()
    return kafka


def stop_session_kafka(config: pytest.Config) -> None:
    """Stop the session's broker if it was launched, and remove its directory."""
    kafka = config.stash.get(_session_kafka, None)
    if kafka is not None:
        kafka.stop()
        shutil.rmtree(kafka.root, ignore_errors=True)
