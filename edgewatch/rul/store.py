"""What the fleet learned from failures, kept across restarts: the failed runs and the refit model.

A folder under the flow's recovery directory (``<recovery_dir>/rul/``) holds

* ``failures.bin`` — the runs that ended in a failure (their readings, device ids), the failures
  counted since the last refit and the refits done, and the version of the model the fleet was
  started from (``base``). One :mod:`edgewatch.state.codec` blob (plain data: msgpack header,
  raw arrays; nothing in it can run code), written whole to a temporary file and renamed over
  the old one, so a crash leaves the previous or the new file, never half of one;
* ``model/`` — the last refit model, an RUL artifact (:mod:`edgewatch.rul.artifact`: data only,
  every file checked by sha256 on load), swapped in by renaming.

Why a file of its own and not Bytewax's snapshots: the store changes only when a run fails (and
the model only at a refit), while a snapshot is written every epoch; tens of megabytes of runs
in every epoch's snapshot would be rewritten every few seconds for nothing. The anomaly flow keeps
device state beside the snapshots the same way (``recovery_dir/state``). Resuming from a
snapshot replays the readings after it, so a failure may be seen twice: the fleet recognizes a
run it already holds (same device, same readings) and does not count it again.

Size: the fleet bounds the runs it keeps (``max_rows`` readings, oldest runs dropped first:
200,000 readings of C-MAPSS's 24 columns are 38 MB before compression), and one model.

>>> import tempfile
>>> import numpy as np
>>> from edgewatch.rul.train import Run
>>> store = RefitStore(Path(tempfile.mkdtemp()) / "rul")
>>> store.save_failures([Run("engine-1", np.ones((3, 24)))], since_refit=1, refits=0, base="rul-1")
>>> kept = store.load_failures()
>>> [run.device_id for run in kept.runs], kept.since_refit, kept.base
(['engine-1'], 1, 'rul-1')
"""

from __future__ import annotations

import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgewatch.online_models.artifact import ArtifactError
from edgewatch.rul import artifact as rul_artifact
from edgewatch.rul.model import RulModel
from edgewatch.rul.train import Run
from edgewatch.state import codec

log = logging.getLogger(__name__)

FAILURES_FILE = "failures.bin"
MODEL_DIR = "model"
KIND = "rul-failures"


@dataclass
class KeptFailures:
    """What :meth:`RefitStore.load_failures` found."""

    runs: list[Run]
    since_refit: int
    refits: int
    base: str


class RefitStore:
    """The failures and the refit model of one RUL flow, in ``folder``."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)

    def save_failures(self, runs: list[Run], since_refit: int, refits: int, base: str) -> None:
        """Replace the kept runs and counters (atomically)."""
        width = runs[0].rows.shape[1] if runs else 0
        rows = np.concatenate([run.rows for run in runs]) if runs else np.empty((0, width))
        header = {
            "kind": KIND,
            "devices": [run.device_id for run in runs],
            "lengths": [len(run.rows) for run in runs],
            "width": width,
            "since_refit": since_refit,
            "refits": refits,
            "base": base,
        }
        self.folder.mkdir(parents=True, exist_ok=True)
        scratch = self.folder / f".{FAILURES_FILE}.tmp"
        scratch.write_bytes(codec.pack(header, [rows.astype(np.float64)], compress=True))
        os.replace(scratch, self.folder / FAILURES_FILE)

    def load_failures(self) -> KeptFailures | None:
        """The kept runs and counters (``None``: nothing kept yet; a damaged file is logged and skipped)."""
        path = self.folder / FAILURES_FILE
        try:
            header, (rows,) = codec.unpack(path.read_bytes())
            codec.expect(header, KIND)
            lengths, devices, width = header["lengths"], header["devices"], header["width"]
            if rows.shape != (sum(lengths), width) or len(devices) != len(lengths):
                raise codec.StateFormatError(f"{sum(lengths)} rows of width {width} expected, found {rows.shape}")
            bounds = np.cumsum([0, *lengths])
            runs = [
                Run(str(device), np.array(rows[start:stop]), failed=True)
                for device, start, stop in zip(devices, bounds[:-1], bounds[1:], strict=True)
            ]
            return KeptFailures(runs, int(header["since_refit"]), int(header["refits"]), str(header["base"]))
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError) as exc:  # StateFormatError is a ValueError
            log.warning("RUL failure store %s cannot be read (%s): starting without it", path, exc)
            return None

    def save_model(self, model: RulModel) -> None:
        """Keep ``model`` (a refit) as the store's model, replacing the previous one."""
        fresh, old = self.folder / f".{MODEL_DIR}.new", self.folder / f".{MODEL_DIR}.old"
        for stale in (fresh, old):
            shutil.rmtree(stale, ignore_errors=True)
        rul_artifact.save(model, fresh, keep_version=True)
        current = self.folder / MODEL_DIR
        if current.exists():
            os.replace(current, old)
        os.replace(fresh, current)
        shutil.rmtree(old, ignore_errors=True)

    def load_model(self) -> RulModel | None:
        """The kept refit model (``None``: none, or it fails its checks, which is logged)."""
        current = self.folder / MODEL_DIR
        if not current.exists():
            current = self.folder / f".{MODEL_DIR}.old"  # a crash between the two renames
            if not current.exists():
                return None
        try:
            return rul_artifact.load(current)
        except ArtifactError as exc:
            log.warning("kept RUL refit model %s refused (%s): serving the deployed model", current, exc)
            return None
