"""The small JSON reports a running flow leaves for other commands (``edgewatch retrain``,
``models status``): the fleet drift figures and the shadow's figures."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

log = logging.getLogger(__name__)


def write_report(path: Path, report: dict, what: str) -> None:
    """Write ``report`` to ``path`` whole, then rename: a reader never sees half a report. A disk
    that refuses is logged (``what`` names the report), never fatal to the flow."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(".partial")
        partial.write_text(json.dumps(report, indent=2))
        os.replace(partial, path)
    except OSError as exc:
        log.warning("%s: could not write %s: %s", what, path, exc)


def read_report(path: Path) -> dict | None:
    """The report a flow wrote last at ``path``, or ``None``."""
    try:
        report = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    return report if isinstance(report, dict) else None
