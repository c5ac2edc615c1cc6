"""Child processes of a test: ``python -m <module> ...`` with its output in a log file, stopped or
killed by the test, and never outliving it (``PR_SET_PDEATHSIG``: the kernel sends it SIGTERM when
the test process dies, even on SIGKILL)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

from edgewatch.connectors.broker import _die_with_parent, stop_process

REPO = Path(__file__).resolve().parents[2]

#: edgewatch's flow for Bytewax's own runner (``python -m bytewax.run edgewatch.flows.anomaly:flow``)
BYTEWAX_FLOW = "edgewatch.flows.anomaly:flow"


class PythonProcess:
    """``python -m <module> <args>`` as a child that dies with the test; stdout and stderr go to ``log``.

    ``env`` is the whole environment (default: this process's); ``cwd`` the working directory (default:
    the repository, so that ``tests.support.*`` modules can run). Use it as a context manager, or
    :meth:`start` and then :meth:`stop` (SIGTERM, as Kubernetes does) or :meth:`kill` (SIGKILL).
    """

    def __init__(
        self,
        module: str,
        args: list[str],
        log: Path,
        *,
        env: dict[str, str] | None = None,
        cwd: Path = REPO,
    ):
        self.command = [sys.executable, "-m", module, *map(str, args)]
        self.log = Path(log)
        self.env = {**(os.environ if env is None else env), "PYTHONUNBUFFERED": "1"}
        self.cwd = cwd
        self.process: subprocess.Popen | None = None

    def start(self) -> PythonProcess:
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(
                self.command,
                cwd=self.cwd,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                preexec_fn=_die_with_parent,
            )
        return self

    def poll(self) -> int | None:
        return self.process.poll()

    def wait(self, timeout: float) -> int:
        """The exit code; ``subprocess.TimeoutExpired`` if it still runs after ``timeout`` s."""
        return self.process.wait(timeout)

    def run(self, timeout: float) -> int:
        """Start, wait for the end (killed after ``timeout`` s, then TimeoutExpired); the exit code."""
        self.start()
        try:
            return self.wait(timeout)
        finally:
            self.kill()

    def send_signal(self, signum: int) -> None:
        self.process.send_signal(signum)

    def stop(self, timeout: float = 30.0) -> int | None:
        """SIGTERM, then SIGKILL if it lingers past ``timeout``; the exit code."""
        return stop_process(self.process, timeout)

    def kill(self) -> None:
        """SIGKILL if it still runs: no shutdown, no final snapshot."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(10)

    def output(self) -> str:
        """Everything the process wrote so far."""
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def tail(self, chars: int = 3000) -> str:
        """The end of the output, for assertion messages."""
        return self.output()[-chars:]

    def wait_for_output(self, pattern: str, timeout: float) -> re.Match:
        """The first match of ``pattern`` (multi-line regex) in the output, once it is there; fails if
        the process ends first or ``timeout`` passes."""
        deadline = time.monotonic() + timeout
        while not (match := re.search(pattern, self.output(), re.MULTILINE)):
            if self.process.poll() is not None:
                raise AssertionError(f"{self.command[2]} exited ({self.process.returncode}):\n{self.tail()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"no {pattern!r} from {self.command[2]} in {timeout:g} s:\n{self.tail()}")
            time.sleep(0.05)
        return match

    def __enter__(self) -> PythonProcess:
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()


class EdgewatchProcess(PythonProcess):
    """An edgewatch command, ``python -m edgewatch <args>`` (``run``, ``iotedge``, ``demo``, ``serve`` …),
    as a child process of the test."""

    def __init__(self, args: list[str], log: Path, **options):
        super().__init__("edgewatch", args, log, **options)

    @staticmethod
    def under_bytewax(args: list[str], log: Path, **options) -> PythonProcess:
        """The flow under Bytewax's runner: ``python -m bytewax.run edgewatch.flows.anomaly:flow <args>``
        (``-w``, ``-i``, ``-a`` …), with its settings from ``EDGEWATCH_*`` in ``env``."""
        return PythonProcess("bytewax.run", [BYTEWAX_FLOW, *args], log, **options)
