"""The web view without a browser: its bounded fleet state, its feeds and its HTTP API."""

from __future__ import annotations

import json
import socket
import threading
import time
import urllib.error
import urllib.request

import orjson
import pytest

from edgewatch.ui import FleetState, InProcessFeed, KafkaFeed, Topics, ViewServer
from tests.support import uisim
from tests.support.cli import said


def labeled(device: str, t: float, score: float = 0.1, anomaly: bool = False, **extra) -> dict:
    return orjson.loads(uisim.labeled(device, t, {"rpm": 1450.0 + t}, score, anomaly, {"rpm": 1.0})) | extra


def alarm(event: str, device: str, start: float, end: float | None = None) -> dict:
    return orjson.loads(uisim.alarm(event, device, start, end, 0.8, {"rpm": 1.0}))


def test_memory_is_bounded_per_device_and_in_devices():
    state = FleetState(readings_per_device=5, max_devices=3, max_alarms=4, max_drift=2)
    for device in range(10):
        for step in range(20):
            assert state.apply("labeled", labeled(f"d{device}", 1000.0 + step))
    fleet = state.fleet()
    assert [d["device_id"] for d in fleet["devices"]] == ["d7", "d8", "d9"]  # the most recently updated
    readings = state.device("d9")["readings"]
    assert readings["timestamp"] == [1015.0, 1016.0, 1017.0, 1018.0, 1019.0]
    for start in range(10):
        state.apply("alarms", alarm("raised", "d9", 2000.0 + start))
        state.apply("drift", uisim.drift("d9", 2000.0 + start, ["rpm"], {"rpm": 1.0}, {"rpm": 2.0}, "timeout"))
    assert [a["start"] for a in state.alarms()["alarms"]] == [2009.0, 2008.0, 2007.0, 2006.0]
    assert [d["timestamp"] for d in state.drift()["drift"]] == [2009.0, 2008.0]


def test_alarm_state_follows_the_newest_source_time_across_topics():
    state = FleetState()
    state.apply("labeled", labeled("pump", 100.0))
    state.apply("alarms", alarm("cleared", "pump", 110.0, 130.0))  # the clear arrives first
    state.apply("alarms", alarm("raised", "pump", 110.0))
    state.apply("labeled", labeled("pump", 120.0, 0.9, True))  # an abnormal reading inside the alarm, late
    pump = state.device("pump")
    assert pump["alarm"] is False
    assert pump["last_alarm"]["start"] == 110.0 and pump["last_alarm"]["end"] == 130.0
    assert pump["last_alarm"]["duration_seconds"] == 20.0
    assert [a["end"] for a in pump["alarms"]] == [130.0]  # raised and cleared are one alarm

    state.apply("labeled", labeled("pump", 140.0, 0.9, True, explanation={"rpm": 0.8, "temp": 0.2}))
    pump = state.device("pump")
    assert pump["alarm"] is True and pump["alarm_since"] == 140.0
    assert pump["explanation"] == {"rpm": 0.8, "temp": 0.2}
    assert state.fleet()["counts"] == {"devices": 1, "alarming": 1, "alarms": 1, "drift": 0}


def test_devices_in_alarm_come_first():
    state = FleetState()
    for name in ("a", "b", "c"):
        state.apply("labeled", labeled(name, 10.0, anomaly=name == "c"))
    assert [d["device_id"] for d in state.fleet()["devices"]] == ["c", "a", "b"]
    for name in ("Pump-1", "pump-2", "fan-1"):
        state.apply("labeled", labeled(name, 10.0))
    pumps = state.fleet("PUMP", limit=1)
    assert [d["device_id"] for d in pumps["devices"]] == ["Pump-1"] and pumps["matching"] == 2
    assert pumps["counts"]["devices"] == 6 and pumps["counts"]["alarming"] == 1


def test_threshold_from_option_then_message_then_the_named_detector():
    state = FleetState()
    state.apply("labeled", labeled("builtin", 1.0))  # compact-novelty
    state.apply("labeled", labeled("told", 1.0, threshold=0.61))
    state.apply("labeled", labeled("told by model", 1.0, model={"name": "x", "version": "1", "threshold": 0.7}))
    state.apply("labeled", labeled("custom", 1.0, model={"name": "pkg.mod:factory", "version": "1"}))
    assert state.device("builtin")["threshold"] == pytest.approx(0.3426)
    assert state.device("told")["threshold"] == 0.61
    assert state.device("told by model")["threshold"] == 0.7
    assert state.device("custom")["threshold"] is None
    fixed = FleetState(threshold=0.5)
    fixed.apply("labeled", labeled("told", 1.0, threshold=0.61))
    assert fixed.device("told")["threshold"] == 0.5


def test_features_that_come_and_go_stay_aligned():
    state = FleetState()
    state.apply("labeled", labeled("d", 1.0) | {"features": {"a": 1.0, "b": 2.0}})
    state.apply("labeled", labeled("d", 2.0) | {"features": {"b": 3.0, "c": 4.0}})
    device = state.device("d")
    assert device["feature_names"] == ["a", "b", "c"]
    assert device["readings"]["values"] == [[1.0, None], [2.0, 3.0], [None, 4.0]]


@pytest.mark.parametrize(
    ("kind", "body", "reason"),
    [
        ("labeled", b"{not json", "labeled: unexpected character"),
        ("labeled", b"[1, 2]", "labeled: not a JSON object"),
        ("labeled", {"device_id": "d", "timestamp": "yesterday"}, "labeled: timestamp must be an ISO-8601 time"),
        ("labeled", labeled("d", 1.0, score=None), "labeled: score must be a finite number"),
        ("labeled", labeled("d", 1.0, features=[1]), "labeled: features must be an object"),
        ("alarms", alarm("raised", "d", 1.0) | {"event": "snoozed"}, "alarms: event must be raised or cleared"),
        ("alarms", alarm("raised", "d", 1.0) | {"explanation": [0.5]}, "alarms: explanation must be an object"),
        ("drift", {"device_id": "d", "timestamp": 1.0, "features": "rpm"}, "drift: features must be a list"),
    ],
)
def test_unusable_messages_are_counted_with_their_reason_and_change_nothing(kind, body, reason):
    state = FleetState()
    assert state.apply(kind, body) is False
    assert state.rejected == 1 and state.last_rejection.startswith(reason)
    assert state.fleet()["devices"] == [] and state.version == 0


def test_a_waiting_reader_wakes_on_change():
    state = FleetState()
    woke = []
    reader = threading.Thread(target=lambda: woke.append(state.wait_for_change(0, timeout=10)))
    reader.start()
    time.sleep(0.1)
    state.apply("labeled", labeled("d", 1.0))
    reader.join(5)
    assert woke == [1]


def get(url: str) -> tuple[int, dict[str, str], bytes]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


@pytest.fixture
def served():
    feed = InProcessFeed()
    with ViewServer(FleetState(), feed, port=0, stream_interval=0.05) as view:
        yield view, feed


def test_server_serves_the_page_its_assets_and_the_views(served):
    view, feed = served
    status, headers, page = get(view.url)
    assert status == 200 and b'<script src="/static/app.js"' in page
    assert headers["Content-Security-Policy"].startswith("default-src 'self'")  # nothing from a CDN can load
    for asset, kind in (("app.js", "text/javascript"), ("style.css", "text/css"), ("favicon.svg", "image/svg+xml")):
        status, headers, body = get(f"{view.url}static/{asset}")
        assert status == 200 and headers["Content-Type"].startswith(kind) and body
    assert get(f"{view.url}static/../state.py")[0] == 404
    assert get(f"{view.url}static/state.py")[0] == 404

    feed.put("labeled", uisim.labeled("pump 1/α", 10.0, {"rpm": 1.0}, 0.9, True, {"rpm": 1.0}))
    feed.put("alarms", uisim.alarm("raised", "pump 1/α", 10.0, None, 0.9, {"rpm": 1.0}))
    deadline = time.monotonic() + 5
    while view.state.fleet()["feed"]["messages"] < 2 and time.monotonic() < deadline:
        time.sleep(0.02)
    fleet = json.loads(get(f"{view.url}api/fleet")[2])
    assert [d["device_id"] for d in fleet["devices"]] == ["pump 1/α"] and fleet["devices"][0]["alarm"]
    assert json.loads(get(f"{view.url}api/fleet?q=%CE%B1&limit=5")[2])["matching"] == 1
    assert json.loads(get(f"{view.url}api/fleet?q=fan")[2])["devices"] == []
    status, _, body = get(f"{view.url}api/device?id=pump%201%2F%CE%B1")
    assert status == 200 and json.loads(body)["readings"]["score"] == [0.9]
    assert json.loads(get(f"{view.url}api/alarms")[2])["alarms"][0]["end"] is None
    assert json.loads(get(f"{view.url}api/drift")[2])["drift"] == []
    status, _, body = get(f"{view.url}api/device?id=nobody")
    assert status == 404 and json.loads(body)["error"] == "no device 'nobody' in the view"


def test_event_stream_says_when_the_state_changed(served):
    view, feed = served
    with urllib.request.urlopen(f"{view.url}api/events", timeout=5) as stream:
        assert stream.headers["Content-Type"] == "text/event-stream"
        first = stream.readline()
        assert first.startswith(b"data: ")
        stream.readline()
        feed.put("labeled", labeled("d", 1.0))
        assert int(stream.readline().removeprefix(b"data: ")) > int(first.removeprefix(b"data: "))


def test_ui_command_names_a_taken_port_in_one_line():
    from typer.testing import CliRunner

    from edgewatch.cli import app

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = CliRunner().invoke(app, ["ui", "--port", str(port), "--bootstrap", "127.0.0.1:1"])
    assert result.exit_code == 2
    assert f"cannot serve on 127.0.0.1:{port}: Address already in use" in said(result)
    assert "Traceback" not in result.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--readings", "0"], "--readings must be at least 1 and --history at least 0"),
        (["--drift-topic", "labeled"], "--labeled-topic, --alarms-topic and --drift-topic must be three different"),
        (["--bootstrap", "kafka"], "bootstrap must be HOST:PORT"),
    ],
)
def test_ui_command_refuses_bad_options_in_one_line(args, message):
    from typer.testing import CliRunner

    from edgewatch.cli import app

    result = CliRunner().invoke(app, ["ui", *args])
    assert result.exit_code == 2 and message in said(result) and "Traceback" not in result.output


def test_kafka_feed_says_when_kafka_is_unreachable():
    state, stop = FleetState(), threading.Event()
    thread = KafkaFeed({"bootstrap.servers": "127.0.0.1:1"}, rescan_seconds=0.5).start(state, stop)
    try:
        deadline = time.monotonic() + 20
        while not state.feed.text.startswith("cannot reach") and time.monotonic() < deadline:
            time.sleep(0.1)
        assert state.feed.ok is False
        reason = state.feed.text.removeprefix("cannot reach Kafka at 127.0.0.1:1: ")
        assert reason in ("Connection refused", "1/1 brokers are down", "Broker transport failure"), state.feed.text
    finally:
        stop.set()
        thread.join(15)
    assert not thread.is_alive()


def test_only_a_whole_metadata_timeout_says_kafka_is_unreachable():
    """A short metadata try that gets no answer is tried again, longer, without a word on the page (a
    slow broker is not an unreachable one); a try of the whole timeout says so."""
    from confluent_kafka import KafkaError, KafkaException

    from edgewatch.connectors.kafka import FIRST_TRY_SECONDS
    from edgewatch.ui.feeds import METADATA_SECONDS

    class Silent:  # a consumer whose metadata requests all time out
        def __init__(self):
            self.timeouts = []

        def list_topics(self, timeout):
            self.timeouts.append(timeout)
            raise KafkaException(KafkaError(KafkaError._TRANSPORT, "Local: Broker transport failure"))

    feed, state, consumer = KafkaFeed({"bootstrap.servers": "127.0.0.1:9"}), FleetState(), Silent()
    assert feed._assign_new_partitions(consumer, set(), state, FIRST_TRY_SECONDS) is False
    feed._report(state)
    assert feed._error is None and not state.feed.text.startswith("cannot reach")
    assert feed._assign_new_partitions(consumer, set(), state, METADATA_SECONDS) is False
    assert feed._error == "cannot reach Kafka at 127.0.0.1:9: Broker transport failure"
    assert consumer.timeouts == [FIRST_TRY_SECONDS, METADATA_SECONDS]


def test_kafka_feed_reads_recent_history_and_finds_topics_created_later(kafka_bootstrap, topic_names):
    from edgewatch.connectors.kafka import ensure_topics
    from tests.support.kafka import produce

    topics = Topics(topic_names("labeled"), topic_names("alarms"), topic_names("drift"))
    config = {"bootstrap.servers": kafka_bootstrap}
    ensure_topics(config, [topics.labeled], 1)
    produce(kafka_bootstrap, topics.labeled, [(b"d", orjson.dumps(labeled("d", float(t))), []) for t in range(300)])
    state, stop = FleetState(readings_per_device=500), threading.Event()
    thread = KafkaFeed(config, topics, history=100, rescan_seconds=0.5).start(state, stop)
    try:
        deadline = time.monotonic() + 30
        while state.feed.messages < 100 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert state.feed.text == f"reading {topics.labeled}; waiting for topic {topics.alarms}, {topics.drift} at " + (
            kafka_bootstrap
        )
        time.sleep(1.0)  # nothing older than the history comes later
        assert state.device("d")["readings"]["timestamp"] == [float(t) for t in range(200, 300)]

        ensure_topics(config, [topics.alarms, topics.drift], 1)
        produce(kafka_bootstrap, topics.alarms, [(b"d", uisim.alarm("raised", "d", 299.0, None, 0.9, {}), [])])
        while state.device("d")["alarm"] is not True and time.monotonic() < deadline + 30:
            time.sleep(0.1)
        assert state.device("d")["last_alarm"]["start"] == 299.0
        assert state.feed.ok and state.feed.text.startswith(f"reading {', '.join(topics)} at")
    finally:
        stop.set()
        thread.join(15)


def test_a_loopback_view_refuses_other_host_names(served):
    view, _ = served
    port = view.url.rsplit(":", 1)[1].strip("/")
    for host, status in ((f"127.0.0.1:{port}", 200), (f"localhost:{port}", 200), (f"evil.example:{port}", 403)):
        request = urllib.request.Request(f"{view.url}api/fleet", headers={"Host": host})
        try:
            with urllib.request.urlopen(request, timeout=5) as response:
                assert response.status == status
        except urllib.error.HTTPError as exc:
            assert exc.code == status == 403


def test_the_page_loads_only_assets_that_ship_in_the_package():
    import fnmatch
    import re
    import tomllib
    from importlib import resources
    from pathlib import Path

    from edgewatch.ui.server import ASSETS

    root = Path(__file__).resolve().parents[1]
    globs = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["edgewatch.ui"]
    static = resources.files("edgewatch.ui").joinpath("static")
    shipped = {entry.name for entry in static.iterdir()}
    assert shipped == {*ASSETS, "index.html"}
    assert all(any(fnmatch.fnmatch(f"static/{name}", glob) for glob in globs) for name in shipped)
    page = static.joinpath("index.html").read_text()
    assert {ref.removeprefix("/static/") for ref in re.findall(r'(?:src|href)="([^"#]+)"', page)} == set(ASSETS)
    for name in ("index.html", "app.js", "style.css"):
        urls = set(re.findall(r"https?://[^\s\"'`)]+", static.joinpath(name).read_text()))
        assert urls <= {"http://www.w3.org/2000/svg"}, f"{name} reaches out to {urls}"
