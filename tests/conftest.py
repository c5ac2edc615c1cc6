"""Test session fixtures: one real Kafka broker for the whole session, fresh topics per test.

``EDGEWATCH_TEST_BROKER`` chooses it: ``kafka`` (default, Apache Kafka 4.x KRaft on the
JVM, jars from Maven Central) or ``tansu`` (the embedded broker).
``EDGEWATCH_TEST_BOOTSTRAP=host:port`` uses a broker that is already running instead.

The fixtures of one area live with that area's helpers in ``tests/support`` (registered below).

The session's Apache Kafka is launched when collection ends if a collected test uses it
(:mod:`tests.support.session_broker`): the JVM starts while the warm-up and the first tests run.
The session's MLflow server (:mod:`tests.support.mlflow_server`) is launched once the warm-up is
done: its first test comes minutes later, and its start would compete with the warm-up's compiles.

Before the first test, the detectors' numba kernels are compiled into numba's cache by processes of
their own (:mod:`tests.support.warm_up`, side by side while pytest collects; the RUL kernels after
them, beside the first tests); ``EDGEWATCH_TEST_WARM_UP=0`` leaves that to whichever test needs a
kernel first.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import pytest

from edgewatch.config import data_dir

pytest_plugins = ["tests.support.iothub", "tests.support.mlflow_server", "tests.support.eventhubs"]


_warm_up = pytest.StashKey["WarmUp"]()


def pytest_sessionstart(session: pytest.Session) -> None:
    if session.config.option.collectonly or os.environ.get("EDGEWATCH_TEST_WARM_UP", "1") == "0":
        return
    from tests.support.warm_up import WarmUp

    session.config.stash[_warm_up] = WarmUp()


@pytest.hookimpl(wrapper=True)
def pytest_runtestloop(session: pytest.Session):
    warm_up = session.config.stash.get(_warm_up, None)
    if warm_up is not None:
        from tests.support.warm_up import DETECTORS, LATER

        for problem in warm_up.wait(DETECTORS):
            session.config.get_terminal_writer().line(f"warm-up: {problem}", yellow=True)
        warm_up.start(LATER)
    from tests.support.mlflow_server import launch_early

    launch_early(session)  # beside the first tests, not the warm-up (its first test comes minutes later)
    try:
        return (yield)
    finally:
        if warm_up is not None:
            warm_up.finish()


def chosen_broker_kind() -> str:
    if os.environ.get("EDGEWATCH_TEST_BOOTSTRAP"):
        return "external"
    kind = os.environ.get("EDGEWATCH_TEST_BROKER", "kafka")
    if kind not in ("kafka", "tansu"):
        raise pytest.UsageError(f"EDGEWATCH_TEST_BROKER must be kafka or tansu, not {kind!r}")
    return kind


def pytest_collection_finish(session: pytest.Session) -> None:
    """When a collected test uses the session's Apache Kafka, launch it now (it starts while the
    warm-up and the tests before the first Kafka test run)."""
    if session.config.option.collectonly or chosen_broker_kind() != "kafka":
        return
    if any("kafka_bootstrap" in getattr(item, "fixturenames", ()) for item in session.items):
        from tests.support.iothub import session_pki
        from tests.support.session_broker import session_kafka

        session_kafka(session.config, session_pki(session.config))


def pytest_sessionfinish(session: pytest.Session) -> None:
    from tests.support.session_broker import stop_session_kafka

    stop_session_kafka(session.config)


@pytest.fixture(scope="session")
def broker_kind() -> str:
    return chosen_broker_kind()


@pytest.fixture(scope="session")
def kafka_eventhubs_listener(request, pki):
    """The Event Hubs-like listener the session's Apache Kafka carries (``tests.support.eventhubs``)."""
    from tests.support.session_broker import session_kafka

    return session_kafka(request.config, pki).listener


@pytest.fixture(scope="session")
def kafka_bootstrap(request, broker_kind, tmp_path_factory) -> str:
    """HOST:PORT of the session's broker; the broker stops when the session ends."""
    if broker_kind == "external":
        yield os.environ["EDGEWATCH_TEST_BOOTSTRAP"]
    elif broker_kind == "tansu":
        from edgewatch.connectors.broker import EmbeddedBroker

        with EmbeddedBroker(log_file=tmp_path_factory.mktemp("tansu") / "tansu.log") as broker:
            yield broker.bootstrap
    else:
        from tests.support.session_broker import session_kafka

        kafka = session_kafka(request.config, request.getfixturevalue("pki"))  # launched early, or now
        yield kafka.wait()
        kafka.stop()


@pytest.fixture
def topic_names():
    """Fresh topic names for one test: ``names("in")`` → ``in-<random>``."""
    suffix = uuid.uuid4().hex[:10]
    return lambda name: f"{name}-{suffix}"


@pytest.fixture
def flow_topics(kafka_bootstrap, topic_names) -> dict[str, str]:
    """A flow's fresh ``in``, ``out`` and ``dlq`` topics, 4 partitions each, on the session's broker."""
    from edgewatch.connectors.kafka import ensure_topics

    names = {"in": topic_names("telemetry"), "out": topic_names("labeled"), "dlq": topic_names("deadletter")}
    ensure_topics({"bootstrap.servers": kafka_bootstrap}, names.values(), 4)
    return names


@pytest.fixture(scope="session")
def nab_root() -> Path:
    root = data_dir() / "nab"
    if not (root / "labels" / "combined_windows.json").exists():
        pytest.skip(f"NAB data not found at {root} (set EDGEWATCH_DATA_DIR or run `edgewatch data fetch nab`)")
    return root
