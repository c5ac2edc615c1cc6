"""A real MLflow tracking server for the registry tests: ``mlflow server`` with a SQLite backend
and a local artifact root (served by the server, ``mlflow-artifacts:/``) on 127.0.0.1:<free port>.

The session fixture :func:`mlflow_tracking_uri` starts one when a test first asks for it and stops
it when the session ends; a test that must take the server down (the offline edge) starts its own
:class:`MlflowServer`. Every wait is bounded, and the server process dies with the test process
(``PR_SET_PDEATHSIG``).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

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
        try:
            self._wait_healthy(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_healthy(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise RuntimeError(f"mlflow server exited ({self._process.returncode}):\n{self.tail()}")
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


def _own_group_dying_with_parent() -> None:
    os.setsid()  # the server and its uvicorn child in one group, stopped together
    _die_with_parent()


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.fixture(scope="session")
def mlflow_tracking_uri(tmp_path_factory) -> str:
    """``http://127.0.0.1:<port>`` of the session's MLflow server (started on first use)."""
    pytest.importorskip("mlflow", reason="the registry tests need mlflow (pip install -e '.[dev]')")
    with MlflowServer(tmp_path_factory.mktemp("mlflow")) as server:
        yield server.uri
