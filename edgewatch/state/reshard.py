"""Move a stopped flow's device state to another shard count, offline.

Device state lives per shard (a Bytewax key of the ``detect`` step) and a device's shard is
``crc32(device) % shards``, so a flow cannot simply restart with another ``--shards``.
:func:`reshard_recovery_dir` reads every shard's pages as of the epoch Bytewax would resume
from, regroups the devices by their new shard, writes each new shard's pages (a new lineage)
and replaces the ``detect`` manifests in Bytewax's recovery database in one transaction; the
input offsets are left as they are, so the flow resumes exactly where it stopped. Every part of
a shard's pages moves with its devices: the bank, the recent readings and, when every shard ran
the same challenger, the challenger's bank and tally (else the challenger starts again).
"""

from __future__ import annotations

import pickle
import sqlite3
from collections import defaultdict
from pathlib import Path

import numpy as np

from edgewatch.state import codec, store
from edgewatch.state.pages import ShardPages, manifest, prefixed
from edgewatch.state.recovery import DETECT_STEP_SUFFIX, bytes_of_pickle, verify_recovery_dir


class ReshardError(ValueError):
    """A recovery directory this function cannot reshard (the message says why, in one line)."""


def reshard_recovery_dir(path: Path, shards: int, shard_of=None) -> dict[str, int]:
    """Regroup the device state in recovery directory ``path`` (the flow stopped) into
    ``shards`` shards; returns the devices per new shard. ``shard_of(device, shards)`` is the
    flow's shard function (default: :func:`edgewatch.flows.anomaly.shard_of`)."""
    if shard_of is None:
        from edgewatch.flows.anomaly import shard_of
    if shards < 1:
        raise ReshardError(f"shards must be at least 1, not {shards}")
    verify_recovery_dir(path)
    parts = sorted(path.glob("part-*.sqlite3"))
    if len(parts) != 1:
        raise ReshardError(f"{path} has {len(parts)} recovery partitions; resharding handles exactly one")
    db = sqlite3.connect(parts[0], isolation_level=None)
    try:
        return _reshard(db, path, shards, shard_of)
    finally:
        db.close()


def _reshard(db: sqlite3.Connection, path: Path, shards: int, shard_of) -> dict[str, int]:
    committed = db.execute("SELECT min(commit_epoch) FROM commits").fetchone()[0]
    if committed is None:
        raise ReshardError(f"{path} holds no committed epoch yet: nothing to reshard")
    latest: dict[tuple[str, str], tuple[int, bytes | None]] = {}
    for step, key, epoch, blob in db.execute(
        "SELECT step_id, state_key, snap_epoch, ser_change FROM snaps WHERE snap_epoch <= ? ORDER BY snap_epoch",
        (committed,),
    ):
        if step.endswith(DETECT_STEP_SUFFIX):
            latest[(step, key)] = (epoch, blob)
    # every device's state, grouped by its new shard, part of the shard's pages and feature set
    regrouped: dict[str, dict[tuple[str, str, tuple[str, ...]], tuple[list[str], list[list[np.ndarray]]]]]
    regrouped = defaultdict(dict)
    tallies: dict[str, dict[str, list[int]]] = defaultdict(dict)  # the shadow's per-device figures
    old_files, steps, shadows = [], {step for step, _ in latest}, set()
    for (_, key), (_, blob) in latest.items():
        if blob is None:
            continue
        found = manifest(bytes_of_pickle(blob) or b"")
        if found is None:
            raise ReshardError(f"shard {key} holds no page-store manifest (a River-object bank?): cannot reshard it")
        shadows.add(found.get("shadow"))
        pages = ShardPages(path, found["shard"], found["lineage"], found["generation"])
        old_files.append(pages.store.path)
        for part, blobs in pages.read_parts().items():
            for page_blob in blobs.values():
                header, arrays = codec.unpack(page_blob)
                if part == "tally/":
                    counts = arrays[0].tolist() if arrays else []
                    for device, row in zip(codec.expect(header, "tally").get("devices", []), counts, strict=True):
                        tallies[shard_of(device, shards)][device] = row
                    continue
                kind = header.get("kind")
                if kind not in ("page", "recent"):
                    raise codec.StateFormatError(f"unexpected {kind!r} page in {pages.store.path}")
                features = tuple(header["features"])
                for index, device in enumerate(header["devices"]):
                    devices, rows = regrouped[shard_of(device, shards)].setdefault((part, kind, features), ([], []))
                    devices.append(device)
                    rows.append([array[index] for array in arrays])
        pages.store.close()
    # a challenger's state moves only if every shard ran the same one (else it starts again from its artifact)
    shadow = shadows.pop() if len(shadows) == 1 else None
    if shadow is None:
        tallies.clear()
        for groups in regrouped.values():
            for group in [group for group in groups if group[0] == "shadow/"]:
                del groups[group]
    if len(steps) > 1:
        raise ReshardError(f"{path} holds several detect steps {sorted(steps)}: cannot tell which to reshard")
    step = steps.pop() if steps else None
    manifests = {
        shard: _write_shard(path, shard, groups, tallies.get(shard, {}), shadow) for shard, groups in regrouped.items()
    }
    if step is not None:
        db.execute("BEGIN IMMEDIATE")
        try:
            db.execute("DELETE FROM snaps WHERE step_id = ?", (step,))
            db.executemany(
                "INSERT INTO snaps (step_id, state_key, snap_epoch, ser_change) VALUES (?, ?, ?, ?)",
                ((step, shard, committed, pickle.dumps(blob, protocol=5)) for shard, blob in manifests.items()),
            )
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
    (path / "edgewatch-shards").write_text(str(shards))
    for old in old_files:
        store.remove(old)
    return {
        shard: sum(len(devices) for (part, _, _), (devices, _) in groups.items() if part == "")
        for shard, groups in sorted(regrouped.items())
    }


def _write_shard(path: Path, shard: str, groups, tally: dict[str, list[int]], shadow: str | None) -> bytes:
    """A new lineage of ``shard`` holding ``groups`` (and the shadow's ``tally``) at generation 1; its manifest."""
    from edgewatch.flows.lifecycle import ShadowTally
    from edgewatch.online_models.vector_bank import PAGE_ROWS, group_key

    pages = ShardPages(path, shard)
    blobs = {}
    if tally:
        tallied = ShadowTally()
        tallied.devices.update(tally)
        blobs.update(prefixed("tally/", tallied.dirty_pages(every=True)))
    for (part, kind, features), (devices, rows) in groups.items():
        key = part + group_key(features)
        for page, start in enumerate(range(0, len(devices), PAGE_ROWS)):
            chunk = rows[start : start + PAGE_ROWS]
            arrays = [np.stack([row[i] for row in chunk]) for i in range(len(chunk[0]))]
            header = {
                "kind": kind,
                "features": list(features),
                "page": page,
                "rows": list(range(len(chunk))),
                "devices": devices[start : start + PAGE_ROWS],
            }
            blobs[f"{key}/{page}"] = codec.pack(header, arrays, compress=True)
    blob = pages.snapshot(blobs, shadow if tally or any(part == "shadow/" for part, _, _ in groups) else None)
    pages.store.close()
    return blob
