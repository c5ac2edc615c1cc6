"""The local audit trail: one JSON object per lifecycle decision, appended, never rewritten.

Each entry says when, what (``action``), which model and version, who or what triggered it
(``actor``), why (``reason``) and the figures the decision rested on. The same facts go to the
registry as MLflow tags; this file stays on the device or operator's machine when the
registry is out of reach.

>>> import tempfile
>>> log = AuditLog(Path(tempfile.mkdtemp()) / "audit.jsonl")
>>> _ = log.append("promote", model="pumps", version="2", actor="ana", reason="better recall")
>>> [(entry["action"], entry["version"], entry["actor"]) for entry in log.entries()]
[('promote', '2', 'ana')]
"""

from __future__ import annotations

import fcntl
import getpass
import json
import os
import socket
from datetime import UTC, datetime
from pathlib import Path


def default_actor() -> str:
    """``user@host`` of whoever runs the command."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = str(os.getuid())
    return f"{user}@{socket.gethostname()}"


class AuditLog:
    """An append-only JSONL file (opened ``O_APPEND``, one ``write`` per entry under ``flock``)."""

    def __init__(self, path: Path):
        self.path = Path(path)

    def append(self, action: str, **fields) -> dict:
        entry = {"time": datetime.now(UTC).isoformat(), "action": action, **fields}
        line = (json.dumps(entry, sort_keys=False, default=str) + "\n").encode()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        descriptor = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX)
            os.write(descriptor, line)
            os.fsync(descriptor)
        finally:
            os.close(descriptor)
        return entry

    def entries(self) -> list[dict]:
        if not self.path.exists():
            return []
        return [json.loads(line) for line in self.path.read_text().splitlines() if line.strip()]
