"""Checks of the PNGs and HTML reports write: valid images of a size a person can read, linked."""

from __future__ import annotations

import re
import struct
from pathlib import Path

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def png_size(path: Path) -> tuple[int, int]:
    """Width and height of a PNG (from its IHDR chunk); fails on anything that is not a PNG."""
    data = Path(path).read_bytes()
    assert data[:8] == PNG_SIGNATURE, f"{path} is not a PNG"
    assert data[12:16] == b"IHDR", f"{path}: no IHDR chunk"
    assert data[-8:-4] == b"IEND", f"{path}: truncated PNG"
    return struct.unpack(">II", data[16:24])


def assert_readable_png(path: Path, min_width: int = 800, min_height: int = 300, max_side: int = 6000) -> None:
    width, height = png_size(path)
    assert min_width <= width <= max_side and min_height <= height <= max_side, (path, width, height)


def linked_images(index: Path) -> set[str]:
    """The PNGs an ``index.html`` links or shows."""
    text = Path(index).read_text()
    return set(re.findall(r'(?:href|src)="([^"]+\.png)"', text))


def assert_report(folder: Path) -> set[str]:
    """Every PNG in ``folder`` is valid and linked from its index.html, and every link resolves."""
    folder = Path(folder)
    written = {p.name for p in folder.glob("*.png")}
    linked = linked_images(folder / "index.html")
    assert "summary.png" in written
    assert written == linked, written ^ linked
    for name in written:
        assert_readable_png(folder / name)
    return written
