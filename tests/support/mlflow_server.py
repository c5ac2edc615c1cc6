"""A real MLflow tracking server for the registry tests: ``mlflow server`` with a SQLite backend
and a local artifact root (served by the server, ``mlflow-artifacts:/``) on 127.0.0.1:<free port>.

The session's server is launched once the numba warm-up is done (:func:`launch_early`, called by
``tests/conftest.py``) if a collected test uses the fixture :func:`mlflow_tracking_uri` (it starts
while the tests before the first of those run), else on first use, and stops when the session
ends; a test that must see the registry go away (the offline edge) reaches the session's server
through a :class:`Relay` of its own and cuts it (a second server would cost it the ~50 s start).
Every wait is bounded, and the server process dies with the test process (``PR_SET_PDEATHSIG``).
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from edgewatch.connectors.broker import _die_with_parent, free_port

START_TIMEOUT = 150.0  # seconds: importing MLflow and creating the schema takes ~50 s on a busy 2-core box


class MlflowServer:
    """``mlflow server`` in ``root`` (``mlflow.db`` + ``artifacts/``), its output in ``root/server.log``.

    Start it again after :meth:`stop` and it serves the same registry (same port, same files).
    """

    def __init__(self, root: Path, port: int | None = None):
        self.root = Path(root)
        self.port = port or free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        self.log = self.root / "server.log"
        self._process: subprocess.Popen | None = None

    def start(self, timeout: float = START_TIMEOUT) -> MlflowServer:
        """Launch the server and wait until it answers."""
        return self.launch().wait_healthy(timeout)

    def launch(self) -> MlflowServer:
        """Launch the server without waiting for it (:meth:`wait_healthy` does)."""
        self.root.mkdir(parents=True, exist_ok=True)
        command = [
            sys.executable, "-m", "mlflow", "server",
            "--backend-store-uri", f"sqlite:///{self.root / 'mlflow.db'}",
            "--artifacts-destination", str(self.root / "artifacts"),
            "--host", "127.0.0.1", "--port", str(self.port),
            "--workers", "1",
        ]  # fmt: skip
        with open(self.log, "ab") as log:
            self._process = subprocess.Popen(
                command,
                cwd=self.root,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                preexec_fn=_own_group_dying_with_parent,
                # no background job runner (huey consumers): the registry needs none
                env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},
            )
        return self

    def wait_healthy(self, timeout: float = START_TIMEOUT) -> MlflowServer:
        """Wait until the launched server answers; stop it and raise if it does not in ``timeout`` s."""
        try:
            self._wait_healthy(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_healthy(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._process is None or self._process.poll() is not None:
                code = None if self._process is None else self._process.returncode
                raise RuntimeError(f"mlflow server exited ({code}):\n{self.tail()}")
            try:
                with urllib.request.urlopen(f"{self.uri}/health", timeout=2) as answer:
                    if answer.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.25)
        raise RuntimeError(f"mlflow server on {self.uri} not healthy within {timeout:g} s:\n{self.tail()}")

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM to the server's process group (``mlflow server`` runs uvicorn as a child), then
        SIGKILL to whatever lingers past ``timeout``."""
        process, self._process = self._process, None
        if process is None:
            return
        for signum, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 10.0)):
            try:
                os.killpg(process.pid, signum)
            except ProcessLookupError:
                break
            try:
                process.wait(wait)
            except subprocess.TimeoutExpired:
                continue
            if not _group_alive(process.pid):
                break
            time.sleep(0.2)

    def tail(self, chars: int = 3000) -> str:
        return self.log.read_text(errors="replace")[-chars:] if self.log.exists() else ""

    def __enter__(self) -> MlflowServer:
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()


class Relay:
    """A loopback TCP relay to ``target`` (``http://HOST:PORT``) on a port of its own, serving :attr:`uri`.

    :meth:`stop` cuts it: open connections are closed and new ones refused, as when the server
    behind it goes away, while that server goes on for the rest of the session.
    """

    def __init__(self, target: str):
        parts = urlsplit(target)
        self._target = (parts.hostname, parts.port)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.2)  # the accept loop looks at _stopping this often
        self.port = self._listener.getsockname()[1]
        self.uri = f"http://127.0.0.1:{self.port}"
        self._stopping = threading.Event()
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        self._acceptor = threading.Thread(target=self._accept, name="relay-accept", daemon=True)

    def start(self) -> Relay:
        self._acceptor.start()
        return self

    @property
    def running(self) -> bool:
        return self._acceptor.is_alive()

    def _accept(self) -> None:
        while not self._stopping.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            try:
                upstream = socket.create_connection(self._target, timeout=10)
            except OSError:
                client.close()
                continue
            client.settimeout(None)
            upstream.settimeout(None)
            with self._lock:
                self._sockets += [client, upstream]
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(target=_pump, args=(source, sink), name="relay-pump", daemon=True).start()

    def stop(self) -> None:
        self._stopping.set()
        self._acceptor.join(5)
        self._listener.close()
        with self._lock:
            for sock in self._sockets:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                sock.close()

    def __enter__(self) -> Relay:
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()


def _pump(source: socket.socket, sink: socket.socket) -> None:
    """Copy ``source`` to ``sink`` until either end closes; then half-close ``sink``."""
    with contextlib.suppress(OSError):
        while data := source.recv(65536):
            sink.sendall(data)
    with contextlib.suppress(OSError):
        sink.shutdown(socket.SHUT_WR)


def _own_group_dying_with_parent() -> None:
    os.setsid()  # the server and its uvicorn child in one group, stopped together
    _die_with_parent()


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


_early_server = pytest.StashKey[MlflowServer]()


def launch_early(session: pytest.Session) -> None:
    """When a collected test uses the session's server, launch it now: it starts (~50 s of imports and
    schema on a busy 2-core box, one core) while the tests before the first registry test run.

    Called when the warm-up is done, not when collection ends: the warm-up's compiles keep both cores
    busy, and the server's ~13 CPU-s of start beside them held the first test back by several seconds;
    beside the tests (mostly one core) it uses the idle one."""
    if session.config.option.collectonly or importlib.util.find_spec("mlflow") is None:
        return
    if any("mlflow_tracking_uri" in getattr(item, "fixturenames", ()) for item in session.items):
        root = Path(tempfile.mkdtemp(prefix="edgewatch-mlflow-"))
        session.config.stash[_early_server] = MlflowServer(root).launch()


def pytest_sessionfinish(session: pytest.Session) -> None:
    server = session.config.stash.get(_early_server, None)
    if server is not None:  # launched early and never asked for (or asked for and stopped already)
        server.stop()
        shutil.rmtree(server.root, ignore_errors=True)


@pytest.fixture(scope="session")
def mlflow_tracking_uri(request, tmp_path_factory) -> str:
    """``http://127.0.0.1:<port>`` of the session's MLflow server (launched when the warm-up is done,
    if a collected test uses it, else on first use)."""
    pytest.importorskip("mlflow", reason="the registry tests need mlflow (pip install -e '.[dev]')")
    server = request.config.stash.get(_early_server, None) or MlflowServer(tmp_path_factory.mktemp("mlflow")).launch()
    with server.wait_healthy():
        yield server.uri
