"""The web view's HTTP server: static assets shipped in the package, JSON views of the
:class:`~edgewatch.ui.state.FleetState`, and a Server-Sent Events stream that says when they changed.

Routes (all GET)::

    /                      the page (fleet, device, alarms and drift views; hash-routed)
    /static/<asset>        its script and style sheet, from the package (works offline)
    /api/fleet[?q=&limit=] devices (ids containing q, the first limit): alarm state, last score, last alarm
                           and its explanation
    /api/device?id=<id>    one device's recent readings, score, threshold, alarms and drift events
    /api/alarms            alarms, raised and cleared times, newest first
    /api/drift             drift events, newest first
    /api/events            text/event-stream: ``data: <version>`` whenever the state changed
    /healthz               ``ok``

The standard library's threading HTTP server (one thread per connection) is enough for an
edge box's handful of viewers; event streams are capped at ``max_streams``, and a page that
cannot get one polls instead.
"""

from __future__ import annotations

import logging
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from urllib.parse import parse_qs, urlsplit

import orjson

from edgewatch.ui.feeds import Feed
from edgewatch.ui.state import FleetState

log = logging.getLogger(__name__)

ASSETS = {
    "app.js": "text/javascript; charset=utf-8",
    "style.css": "text/css; charset=utf-8",
    "favicon.svg": "image/svg+xml",
}
#: the page loads nothing from anywhere but this server
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


#: Host names a page served on loopback may be asked for: any other name is a DNS-rebinding page
#: in the operator's browser trying to read the view through it
LOOPBACK_NAMES = {"127.0.0.1", "localhost", "[::1]"}


def _host_name(host_header: str) -> str:
    return host_header.rsplit(":", 1)[0] if not host_header.endswith("]") else host_header


def _asset(name: str) -> bytes:
    return resources.files("edgewatch.ui").joinpath("static", name).read_bytes()


class ViewServer:
    """The view: a :class:`FleetState`, the :class:`Feed` filling it and the HTTP server showing it.

    >>> from edgewatch.ui.feeds import InProcessFeed
    >>> with ViewServer(FleetState(), InProcessFeed(), port=0) as view:
    ...     view.url.startswith("http://127.0.0.1:")
    True
    """

    def __init__(
        self,
        state: FleetState,
        feed: Feed,
        host: str = "127.0.0.1",
        port: int = 8050,
        max_streams: int = 16,
        stream_interval: float = 0.5,
    ):
        self.state = state
        self.feed = feed
        self.stop_event = threading.Event()
        self._streams = threading.BoundedSemaphore(max_streams)
        self.stream_interval = stream_interval
        self._http = ThreadingHTTPServer((host, port), _handler_for(self))  # OSError when the port is taken
        self.loopback_only = host in ("127.0.0.1", "localhost", "::1")
        self._http.daemon_threads = True
        self._threads: list[threading.Thread] = []

    @property
    def url(self) -> str:
        host, port = self._http.server_address[:2]
        return f"http://{host}:{port}/"

    def start(self) -> ViewServer:
        self._threads = [
            self.feed.start(self.state, self.stop_event),
            threading.Thread(target=self._http.serve_forever, kwargs={"poll_interval": 0.2}, daemon=True),
        ]
        self._threads[1].start()
        return self

    def stop(self) -> None:
        self.stop_event.set()
        self._http.shutdown()
        self._http.server_close()
        for thread in self._threads:
            thread.join(10)

    def __enter__(self) -> ViewServer:
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()


def _handler_for(view: ViewServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        server_version = "edgewatch-ui"
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args) -> None:
            log.debug("%s %s", self.address_string(), format % args)

        def do_GET(self) -> None:
            if view.loopback_only and _host_name(self.headers.get("Host", "")) not in LOOPBACK_NAMES:
                self._json({"error": f"this view answers only as {view.url}"}, HTTPStatus.FORBIDDEN)
                return
            url = urlsplit(self.path)
            path = url.path
            if path in ("/", "/index.html"):
                self._send(HTTPStatus.OK, _asset("index.html"), "text/html; charset=utf-8")
            elif path.startswith("/static/") and path.removeprefix("/static/") in ASSETS:
                name = path.removeprefix("/static/")
                self._send(HTTPStatus.OK, _asset(name), ASSETS[name])
            elif path == "/api/fleet":
                query = parse_qs(url.query)
                limit = query.get("limit", [""])[0]
                self._json(view.state.fleet(query.get("q", [""])[0], int(limit) if limit.isdigit() else None))
            elif path == "/api/alarms":
                self._json(view.state.alarms())
            elif path == "/api/drift":
                self._json(view.state.drift())
            elif path == "/api/device":
                device_id = parse_qs(url.query).get("id", [""])[0]
                found = view.state.device(device_id)
                if found is None:
                    self._json({"error": f"no device {device_id!r} in the view"}, HTTPStatus.NOT_FOUND)
                else:
                    self._json(found)
            elif path == "/api/events":
                self._stream()
            elif path == "/healthz":
                self._send(HTTPStatus.OK, b"ok\n", "text/plain; charset=utf-8")
            else:
                self._json({"error": f"no such page: {path}"}, HTTPStatus.NOT_FOUND)

        def _send(self, status: HTTPStatus, body: bytes, content_type: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            for name, value in SECURITY_HEADERS.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(body)

        def _json(self, value: dict, status: HTTPStatus = HTTPStatus.OK) -> None:
            self._send(status, orjson.dumps(value), "application/json")

        def _stream(self) -> None:
            """One ``data: <version>`` event per change, at most one per ``stream_interval``;
            a comment every 15 s keeps proxies from closing an idle stream."""
            if not view._streams.acquire(blocking=False):
                self._json({"error": "too many live views: poll /api/*"}, HTTPStatus.SERVICE_UNAVAILABLE)
                return
            try:
                self.send_response(HTTPStatus.OK)
                self.send_header("Content-Type", "text/event-stream")
                self.send_header("Cache-Control", "no-store")
                self.send_header("Connection", "close")
                self.end_headers()
                self.close_connection = True
                seen, idle = -1, 0.0
                while not view.stop_event.is_set():
                    version = view.state.wait_for_change(seen, timeout=1.0)  # wakes for stop() too
                    if version != seen:
                        self.wfile.write(f"data: {version}\n\n".encode())
                        seen, idle = version, 0.0
                        view.stop_event.wait(view.stream_interval)
                    elif (idle := idle + 1.0) >= 15.0:
                        self.wfile.write(b": idle\n\n")
                        idle = 0.0
                    self.wfile.flush()
            except (BrokenPipeError, ConnectionResetError):
                pass  # the page went away
            finally:
                view._streams.release()

    return Handler
