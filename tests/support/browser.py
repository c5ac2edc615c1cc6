"""A real headless Chromium (Debian's ``chromium``) driven over the DevTools protocol.

    with Chromium(profile_dir) as browser:
        browser.navigate("http://127.0.0.1:8050/")
        browser.wait_for("document.querySelectorAll('tr').length > 3")
        browser.screenshot(Path("page.png"))

Only loopback: the browser starts with every background network feature off and a fresh profile.
"""

from __future__ import annotations

import base64
import itertools
import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

#: what the brief asks of every browser the tests start: headless, no network of its own, fresh profile
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--hide-scrollbars",
    "--remote-debugging-address=127.0.0.1",
    "--remote-debugging-port=0",
)


def chromium_path() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


class BrowserError(AssertionError):
    pass


class Chromium:
    """One headless Chromium process and a DevTools session on its first page."""

    def __init__(self, profile_dir: Path, width: int = 1400, height: int = 1000, timeout: float = 30.0):
        self.profile_dir = profile_dir
        self.size = (width, height)
        self.timeout = timeout
        self.process: subprocess.Popen | None = None
        self.socket = None
        self._ids = itertools.count(1)
        self.events: list[dict] = []

    def start(self) -> Chromium:
        import websocket  # websocket-client (dev extra)

        binary = chromium_path()
        if binary is None:
            raise BrowserError("chromium not found (apt-get install chromium)")
        self.profile_dir.mkdir(parents=True, exist_ok=True)
        width, height = self.size
        args = [binary, *CHROMIUM_FLAGS, f"--user-data-dir={self.profile_dir}", f"--window-size={width},{height}"]
        with open(self.profile_dir / "chromium.log", "wb") as log:
            self.process = subprocess.Popen(
                [*args, "about:blank"],
                stdout=subprocess.DEVNULL,
                stderr=log,
                start_new_session=True,  # its own process group: stop() ends the renderers too
            )
        port_file = self.profile_dir / "DevToolsActivePort"
        deadline = time.monotonic() + self.timeout
        while not (port_file.exists() and port_file.read_text().count("\n") >= 1):
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise BrowserError(f"chromium did not start; see {self.profile_dir / 'chromium.log'}")
            time.sleep(0.1)
        port = int(port_file.read_text().splitlines()[0])
        page = self._first_page(port, deadline)
        self.socket = websocket.create_connection(page, timeout=self.timeout, suppress_origin=True)
        for domain in ("Page", "Runtime", "Log"):
            self.call(f"{domain}.enable")
        return self

    def _first_page(self, port: int, deadline: float) -> str:
        import urllib.request

        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=5) as response:
                    targets = json.load(response)
                pages = [t["webSocketDebuggerUrl"] for t in targets if t["type"] == "page"]
                if pages:
                    return pages[0]
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise BrowserError("chromium has no page to drive")
            time.sleep(0.1)

    def call(self, method: str, **params) -> dict:
        """One DevTools command; its result (events that arrive meanwhile go to ``events``)."""
        ident = next(self._ids)
        self.socket.send(json.dumps({"id": ident, "method": method, "params": params}))
        while True:
            message = json.loads(self.socket.recv())
            if message.get("id") == ident:
                if "error" in message:
                    raise BrowserError(f"{method}: {message['error']}")
                return message.get("result", {})
            if "method" in message:
                self.events.append(message)

    def evaluate(self, expression: str):
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in result:
            raise BrowserError(f"{expression}: {result['exceptionDetails'].get('text')}")
        return result["result"].get("value")

    def navigate(self, url: str) -> None:
        self.call("Page.navigate", url=url)

    def wait_for(self, expression: str, timeout: float = 20.0, interval: float = 0.2):
        """Poll a JavaScript expression until it is truthy; its value."""
        deadline = time.monotonic() + timeout
        while True:
            value = self.evaluate(expression)
            if value:
                return value
            if time.monotonic() > deadline:
                raise BrowserError(f"timed out after {timeout} s waiting for: {expression}")
            time.sleep(interval)

    def screenshot(self, path: Path, full_page: bool = True) -> Path:
        params = {"format": "png", "captureBeyondViewport": full_page}
        if full_page:
            width, height = self.evaluate(
                "[document.documentElement.scrollWidth, document.documentElement.scrollHeight]"
            )
            params["clip"] = {"x": 0, "y": 0, "width": width, "height": min(height, 4000), "scale": 1}
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(self.call("Page.captureScreenshot", **params)["data"]))
        return path

    def console_errors(self) -> list[str]:
        """Uncaught exceptions and console errors (CSP violations, failed loads) seen so far."""
        self.call("Runtime.evaluate", expression="0")  # drain pending events
        errors = []
        for event in self.events:
            if event["method"] == "Runtime.exceptionThrown":
                details = event["params"]["exceptionDetails"]
                errors.append(details.get("exception", {}).get("description") or details.get("text"))
            elif event["method"] == "Log.entryAdded" and event["params"]["entry"]["level"] == "error":
                errors.append(event["params"]["entry"]["text"])
            elif event["method"] == "Runtime.consoleAPICalled" and event["params"]["type"] == "error":
                errors.append(" ".join(str(a.get("value", a.get("description"))) for a in event["params"]["args"]))
        return errors

    def stop(self) -> None:
        if self.socket is not None:
            self.socket.close()
            self.socket = None
        if self.process is not None and self.process.poll() is None:
            try:
                os.killpg(self.process.pid, signal.SIGTERM)
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(10)
            except ProcessLookupError:
                pass

    def __enter__(self) -> Chromium:
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()
