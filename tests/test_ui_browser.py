"""`edgewatch ui` in a real headless Chromium, fed by the session's Kafka broker.

Simulated outputs of the flow (labeled events, alarms, drift events) go to fresh topics; the view
runs as its own process (`python -m edgewatch ui`); Chromium loads the page, which must show the
fleet, then a newly raised alarm without a reload. Screenshots of every view are kept in
test-artifacts/ui/ (gitignored) for a person to look at.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests.support import uisim
from tests.support.browser import Chromium, chromium_path

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = ROOT / "test-artifacts" / "ui"
DEVICES = 6


@pytest.fixture(scope="module")
def chromium_available() -> None:
    if chromium_path() is None:
        message = "needs Debian's chromium: apt-get install -y chromium chromium-driver"
        if os.environ.get("CI"):
            pytest.fail(f"{message} (.ci/run installs it)")
        pytest.skip(message)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def fetch_json(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=5) as response:
        return json.load(response)


class UiProcess:
    """``python -m edgewatch ui`` as a child process that dies with the test."""

    def __init__(self, bootstrap: str, topics: dict[str, str], log: Path):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/"
        self.args = [sys.executable, "-m", "edgewatch", "ui", "--bootstrap", bootstrap, "--port", str(self.port)]
        self.args += [f"--{kind}-topic={topic}" for kind, topic in topics.items()]
        self.log = log
        self.process: subprocess.Popen | None = None

    def __enter__(self) -> UiProcess:
        from edgewatch.connectors.broker import _die_with_parent

        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(
                self.args, stdout=log, stderr=subprocess.STDOUT, preexec_fn=_die_with_parent, env=os.environ.copy()
            )
        deadline = time.monotonic() + 30
        while True:
            try:
                fetch_json(f"{self.url}api/fleet")
                return self
            except OSError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    self.__exit__()
                    raise AssertionError(f"edgewatch ui did not start:\n{self.log.read_text()}") from None
                time.sleep(0.2)

    def wait_for(self, path: str, check, timeout: float = 30.0) -> dict:
        deadline = time.monotonic() + timeout
        while not check(found := fetch_json(self.url + path)):
            assert time.monotonic() < deadline, f"timed out waiting on /{path}: {json.dumps(found)[:2000]}"
            time.sleep(0.2)
        return found

    def __exit__(self, *exc_info) -> None:
        from edgewatch.connectors.broker import stop_process

        stop_process(self.process, 10)


FLEET_ROWS = """[...document.querySelectorAll('#fleet tbody tr')].map(
    (tr) => [tr.dataset.device, tr.dataset.alarm, tr.innerText])"""


def test_the_page_shows_the_fleet_and_a_new_alarm_live(chromium_available, kafka_bootstrap, topic_names, tmp_path):
    from edgewatch.connectors.kafka import ensure_topics
    from tests.support.kafka import produce

    topics = {kind: topic_names(kind) for kind in ("labeled", "alarms", "drift")}
    ensure_topics({"bootstrap.servers": kafka_bootstrap}, topics.values(), 2)
    end = time.time()
    for kind, records in uisim.fleet_history(DEVICES, 180, end).items():
        produce(kafka_bootstrap, topics[kind], [(key, value, []) for key, value in records])
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    for old in ARTIFACTS.glob("*.png"):
        old.unlink()

    with UiProcess(kafka_bootstrap, topics, tmp_path / "ui.log") as ui, Chromium(tmp_path / "chromium") as browser:
        ui.wait_for("api/fleet", lambda f: f["counts"] == {"devices": DEVICES, "alarming": 1, "alarms": 2, "drift": 1})
        browser.navigate(ui.url)
        rows = browser.wait_for(f"(() => {{ const r = {FLEET_ROWS}; return r.length === {DEVICES} && r; }})()")
        assert [(device, alarm) for device, alarm, _ in rows] == [("pump-01", "1")] + [
            (f"pump-{n:02d}", "0") for n in (0, 2, 3, 4, 5)
        ]
        assert "ALARM" in rows[0][2] and "machine.temperature" in rows[0][2] and "71%" in rows[0][2]
        assert "normal" in rows[1][2] and "none" in rows[1][2]
        assert "machine.temperature" in rows[2][2] and "(20 s)" in rows[2][2]  # pump-02's cleared alarm
        assert browser.evaluate("document.getElementById('feed').className") == "feed ok"
        browser.wait_for("document.getElementById('footer').innerText.includes('live')")
        browser.screenshot(ARTIFACTS / "1-fleet.png")

        # a new alarm on pump-04: its abnormal reading and the raised alarm, while the page stays open
        browser.evaluate("window.sameDocument = true")
        explanation = {"machine.pressure": 0.64, "ambient.humidity": 0.36}
        values = uisim.reading(__import__("random").Random(1), 4, end + 1, hot=3.0)
        produce(
            kafka_bootstrap,
            topics["labeled"],
            [(b"pump-04", uisim.labeled("pump-04", end + 1, values, 0.97, True, explanation), [])],
        )
        produce(
            kafka_bootstrap,
            topics["alarms"],
            [(b"pump-04", uisim.alarm("raised", "pump-04", end + 1, None, 0.97, explanation), [])],
        )
        rows = browser.wait_for(
            f"(() => {{ const r = {FLEET_ROWS}; return r.filter((x) => x[1] === '1').length === 2 && r; }})()"
        )
        assert rows[1][0] == "pump-04" and "active since" in rows[1][2]  # from its labeled reading at once
        browser.wait_for("document.querySelectorAll('.card .value')[2].innerText === '3'")  # and the raised alarm
        assert browser.evaluate("window.sameDocument") is True, "the page reloaded instead of updating live"
        assert [device for device, alarm, _ in rows if alarm == "1"] == ["pump-01", "pump-04"]
        assert "machine.pressure" in rows[1][2] and "64%" in rows[1][2]
        assert browser.evaluate("[...document.querySelectorAll('.card .value')].map((e) => e.innerText)")[:2] == [
            str(DEVICES),
            "2",
        ]
        browser.screenshot(ARTIFACTS / "2-fleet-new-alarm.png")

        browser.evaluate("location.hash = '#/device/pump-02'")
        browser.wait_for("document.querySelectorAll('.chart svg').length === 5")  # score + 4 features
        page = browser.evaluate("document.getElementById('main').innerText")
        assert "threshold 0.343" in page and "consistent-shift" in page and "21.80 → 23.30" in page
        assert browser.evaluate("document.querySelectorAll('.chart svg rect').length") >= 5  # the alarm band
        browser.screenshot(ARTIFACTS / "3-device.png")

        browser.evaluate("location.hash = '#/alarms'")
        alarms = browser.wait_for(
            "(() => { const r = [...document.querySelectorAll('#alarms tbody tr')].map((tr) => tr.innerText);"
            " return r.length === 3 && r; })()"
        )
        assert alarms[0].startswith("pump-04") and "active" in alarms[0]
        assert alarms[2].startswith("pump-02") and "cleared" in alarms[2] and "20 s" in alarms[2]
        browser.screenshot(ARTIFACTS / "4-alarms.png")

        browser.evaluate("location.hash = '#/drift'")
        drift = browser.wait_for("document.querySelector('#drift tbody tr')?.innerText")
        assert drift.startswith("pump-02") and "consistent-shift" in drift and "+1.50" in drift
        browser.screenshot(ARTIFACTS / "5-drift.png")

        assert browser.console_errors() == []
