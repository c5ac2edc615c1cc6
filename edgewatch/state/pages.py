"""A shard bank's snapshots through a :class:`~edgewatch.state.store.PageStore`.

What Bytewax stores for a shard is a manifest (``codec`` bytes, ~100 bytes):
``{"kind": "manifest", "shard", "lineage", "generation"}`` and, while a challenger runs in the
shadow, its version (``"shadow"``). What changed since the last snapshot goes to the shard's
page file as a new generation; nothing is written for a shard Bytewax does not snapshot (an
idle shard is not awoken, so not snapshotted at all).

A shard's pages are of four parts, told apart by the prefix of their ids (:data:`PARTS`): the
champion's bank (no prefix), each device's recent readings (``recent/``,
:mod:`~edgewatch.state.recent`), the challenger's bank (``shadow/``) and its per-device
comparison with the champion (``tally/``).
"""

from __future__ import annotations

import secrets
from pathlib import Path

from edgewatch.state import codec, recovery, store
from edgewatch.state.limits import STATE_BYTES_WRITTEN

COLLECT_EVERY = 2  # snapshots between deletions of unreachable page versions
PARTS = ("recent/", "shadow/", "tally/")  # page id prefixes beside the champion bank's (none)


def split_parts(pages: dict[str, bytes]) -> dict[str, dict[str, bytes]]:
    """Pages by part: ``""`` (the champion's bank) and each of :data:`PARTS`, prefixes removed.

    >>> split_parts({"ab/0": b"1", "recent/ab/0": b"2"})["recent/"]
    {'ab/0': b'2'}
    """
    parts: dict[str, dict[str, bytes]] = {part: {} for part in ("", *PARTS)}
    for page, blob in pages.items():
        part = next((prefix for prefix in PARTS if page.startswith(prefix)), "")
        parts[part][page[len(part) :]] = blob
    return parts


def prefixed(prefix: str, pages: dict[str, bytes | None]) -> dict[str, bytes | None]:
    return {prefix + page: blob for page, blob in pages.items()}


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
        and isinstance(header.get("shadow"), str | None)
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
        """The champion bank's pages."""
        return list(self.read_parts()[""].values())

    def read_parts(self) -> dict[str, dict[str, bytes]]:
        """Every page, by part (:func:`split_parts`)."""
        return split_parts(self.store.read(self.generation))

    def ids(self, prefix: str) -> list[str]:
        """The ids of the pages held now that start with ``prefix``."""
        return self.store.ids(self.generation, prefix)

    def snapshot(self, changed: dict[str, bytes | None], shadow: str | None = None) -> bytes:
        """Store ``changed`` pages as a new generation; the manifest for Bytewax (``shadow``: the
        version of the challenger whose pages the shard holds)."""
        if changed:
            self.generation += 1
            before = self.store.bytes_written
            self.store.write(self.generation, changed)
            STATE_BYTES_WRITTEN.inc(self.store.bytes_written - before)
        self._snapshots += 1
        if self._snapshots % COLLECT_EVERY == 0:
            self.collect()
        header = {"kind": "manifest", "shard": self.shard, "lineage": self.lineage, "generation": self.generation}
        if shadow is not None:
            header["shadow"] = shadow
        return codec.pack_header(header)

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
