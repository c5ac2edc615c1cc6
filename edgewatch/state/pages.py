"""A shard bank's snapshots through a :class:`~edgewatch.state.store.PageStore`.

What Bytewax stores for a shard is a manifest (``codec`` bytes, ~100 bytes):
``{"kind": "manifest", "shard", "lineage", "generation"}``. What changed since the last
snapshot goes to the shard's page file as a new generation; nothing is written for a shard
Bytewax does not snapshot (an idle shard is not awoken, so not snapshotted at all).
"""

from __future__ import annotations

import secrets
from pathlib import Path

from edgewatch.state import codec, recovery, store
from edgewatch.state.limits import STATE_BYTES_WRITTEN

COLLECT_EVERY = 2  # snapshots between deletions of unreachable page versions


def manifest(blob: bytes) -> dict | None:
    """The manifest in a snapshot, or ``None`` if ``blob`` is another kind of state."""
    try:
        header, _ = codec.unpack(blob)
    except codec.StateFormatError:
        return None
    if header.get("kind") != "manifest":
        return None
    if not (
        isinstance(header.get("shard"), str)
        and isinstance(header.get("lineage"), str)
        and isinstance(header.get("generation"), int)
    ):
        raise codec.StateFormatError(f"malformed manifest {header!r}")
    return header


class ShardPages:
    """The page store of one shard of one flow, opened when the shard is first known."""

    def __init__(self, recovery_dir: Path, shard: str, lineage: str | None = None, generation: int = 0):
        self.recovery_dir = recovery_dir
        self.shard = shard
        self.lineage = lineage or secrets.token_hex(8)
        self.generation = generation
        self.store = store.PageStore(recovery_dir / store.STATE_DIR, shard, self.lineage)
        self._snapshots = 0

    @classmethod
    def resume(cls, recovery_dir: Path, found: dict) -> ShardPages:
        """The store a manifest names, without the versions written after it (by epochs a
        crash left uncommitted)."""
        pages = cls(recovery_dir, found["shard"], found["lineage"], found["generation"])
        pages.store.discard_after(pages.generation)
        return pages

    def read(self) -> list[bytes]:
        return list(self.store.read(self.generation).values())

    def snapshot(self, changed: dict[str, bytes | None]) -> bytes:
        """Store ``changed`` pages as a new generation; the manifest for Bytewax."""
        if changed:
            self.generation += 1
            before = self.store.bytes_written
            self.store.write(self.generation, changed)
            STATE_BYTES_WRITTEN.inc(self.store.bytes_written - before)
        self._snapshots += 1
        if self._snapshots % COLLECT_EVERY == 0:
            self.collect()
        return codec.pack_header(
            {"kind": "manifest", "shard": self.shard, "lineage": self.lineage, "generation": self.generation}
        )

    def collect(self) -> None:
        """Delete page versions no manifest Bytewax still holds can reach, and page files of
        lineages it no longer holds at all."""
        held = recovery.detect_manifests(self.recovery_dir, self.shard)
        mine = [found["generation"] for _, _, found in held if found["lineage"] == self.lineage]
        if mine:
            self.store.collect(min(mine))
            lineages = {found["lineage"] for _, _, found in held} | {self.lineage}
            for (_, lineage), path in store.lineages(self.recovery_dir / store.STATE_DIR, self.shard).items():
                if lineage not in lineages:
                    store.remove(path)
