"""Compile edgewatch's numba kernels into numba's on-disk cache before the tests need them.

    python -m tests.support.warm_up relational-novelty|compact-novelty|robust-zscore|rul

A fresh checkout (CI's clean clone) has no cache, and each detector's bank kernel takes 25-50 s to
compile on a 2-core machine: paid by whichever test first labels a reading, and again by any test
process that starts before the cache is written. :class:`WarmUp` runs one process per detector's
kernel when the session starts (they compile side by side, while pytest collects) and
:meth:`WarmUp.wait` holds the first test until they are done, so the tests and the processes they
start load the kernels from the cache instead; the RUL kernels compile after them, beside the first
tests. The kernels are reached through the same public paths the tests take (the bank's
``warm_up``, RUL training and ``RulFleet.update_many``), so they compile for the same argument types.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tests.support.processes import PythonProcess

#: what :class:`WarmUp` compiles, one process each: the detectors when the session starts (the first
#: tests label readings with them), the RUL kernels once those are done (the RUL tests come minutes
#: later: compiled beside the first tests, on the core they leave idle, not beside the detectors' compiles
#: that already keep both cores busy; nothing waits for them before the first test)
DETECTORS = ("relational-novelty", "compact-novelty", "robust-zscore")
LATER = ("rul",)
KERNELS = (*DETECTORS, *LATER)


def compile_detector(name: str) -> None:
    from edgewatch.online_models.bank import new_bank
    from edgewatch.online_models.registry import resolve_detector

    warm_up = getattr(new_bank(resolve_detector(name)), "warm_up", None)
    if warm_up is not None:
        warm_up()


def compile_rul() -> None:
    from edgewatch.rul.online import RulFleet
    from edgewatch.rul.train import train_runs
    from tests.support.rul import SMALL, readings_of, synthetic_fleet

    runs = synthetic_fleet(6, seed=0)
    fleet = RulFleet(train_runs(runs, SMALL))
    fleet.update_many(readings_of(runs[:2])[:50])


class WarmUp:
    """One process per kernel (``kernels`` now, more with :meth:`start`), their output in a temporary
    directory that :meth:`finish` removes."""

    def __init__(self, kernels=DETECTORS):
        self.log_dir = Path(tempfile.mkdtemp(prefix="edgewatch-warm-up-"))
        self.processes: dict[str, PythonProcess] = {}
        self.start(kernels)

    def start(self, kernels) -> None:
        for kernel in kernels:
            log = self.log_dir / f"{kernel}.log"
            self.processes[kernel] = PythonProcess("tests.support.warm_up", [kernel], log).start()

    def wait(self, kernels=None, timeout: float = 300.0) -> list[str]:
        """Wait for these kernels' processes (default: all started; killing any still running after
        ``timeout`` s); what went wrong, if anything. A failed warm-up costs time only: the first test
        to need the kernel compiles it."""
        deadline = time.monotonic() + timeout
        problems = []
        for kernel in self.processes if kernels is None else kernels:
            process = self.processes[kernel]
            try:
                code = process.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                process.kill()
                code = None
            if code != 0:
                problems.append(f"{kernel}: the warm-up ended with {code}: {process.tail(500)}")
        return problems

    def finish(self) -> None:
        self.wait(timeout=120)
        shutil.rmtree(self.log_dir, ignore_errors=True)


def main(kernel: str) -> int:
    started = time.monotonic()
    if kernel == "rul":
        compile_rul()
    else:
        compile_detector(kernel)
    print(f"{kernel}: compiled or loaded in {time.monotonic() - started:.1f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
