"""Bytes of device state: a version byte, a msgpack header, then raw numpy buffers.

Nothing here can run code when decoding: the header is msgpack (plain values), and arrays are
rebuilt with :func:`numpy.frombuffer` from a dtype and shape the reader checks against what
it expects. Any mismatch raises :class:`StateFormatError`.

>>> import numpy as np
>>> blob = pack({"kind": "example"}, [np.arange(3.0)])
>>> header, arrays = unpack(blob)
>>> header["kind"], arrays[0].tolist()
('example', [0.0, 1.0, 2.0])
"""

from __future__ import annotations

import struct
import zlib

import msgspec
import numpy as np

FORMAT_VERSION = 1
COMPRESSED_VERSION = 2  # the same bytes after the version byte, zlib-compressed (pages: 3-9x smaller)
MAX_STATE_BYTES = 256 * 2**20  # a page never comes near; a decompression bomb stops here
_LENGTH = struct.Struct("<I")
_ALLOWED_DTYPES = frozenset(np.dtype(t).str for t in ("<f2", "<f4", "<f8", "<i4", "<i8", "<u2", "|u1", "|b1"))


class StateFormatError(ValueError):
    """Bytes that are not device state of this format (damaged, foreign or tampered)."""


def pack(header: dict, arrays: list[np.ndarray], compress: bool = False) -> bytes:
    """``header`` (plain values) and ``arrays`` (C-contiguous copies are made) as bytes;
    ``compress``: zlib level 1 (about 100 MB/s, what a busy shard's pages need to stay
    within a small disk's bandwidth)."""
    header = {**header, "arrays": [[a.dtype.str, list(a.shape)] for a in arrays]}
    encoded = msgspec.msgpack.encode(header)
    parts = [_LENGTH.pack(len(encoded)), encoded]
    parts.extend(np.ascontiguousarray(a).tobytes() for a in arrays)
    if compress:
        return bytes([COMPRESSED_VERSION]) + zlib.compress(b"".join(parts), 1)
    return bytes([FORMAT_VERSION]) + b"".join(parts)


def unpack(blob: bytes) -> tuple[dict, list[np.ndarray]]:
    """The header and arrays of :func:`pack`'s bytes (read-only arrays over ``blob``)."""
    if not isinstance(blob, bytes | bytearray | memoryview) or len(blob) < 1 + _LENGTH.size:
        raise StateFormatError("state blob too short")
    if blob[0] == COMPRESSED_VERSION:
        inflate = zlib.decompressobj()
        try:
            body = inflate.decompress(blob[1:], MAX_STATE_BYTES)
        except zlib.error as exc:
            raise StateFormatError(f"state blob does not decompress: {exc}") from None
        if inflate.unconsumed_tail or inflate.unused_data or not inflate.eof:
            raise StateFormatError(f"state blob is truncated, has trailing bytes or inflates past {MAX_STATE_BYTES}")
        blob = bytes([FORMAT_VERSION]) + body
    if blob[0] != FORMAT_VERSION:
        raise StateFormatError(f"state format version {blob[0]}, this edgewatch reads {FORMAT_VERSION}")
    (length,) = _LENGTH.unpack_from(blob, 1)
    start = 1 + _LENGTH.size
    if start + length > len(blob):
        raise StateFormatError("state header runs past the end of the blob")
    try:
        header = msgspec.msgpack.decode(blob[start : start + length])
    except msgspec.DecodeError as exc:
        raise StateFormatError(f"state header is not msgpack: {exc}") from None
    if not isinstance(header, dict) or not isinstance(header.get("arrays"), list):
        raise StateFormatError("state header is not a map with an array list")
    offset, arrays = start + length, []
    for spec in header.pop("arrays"):
        if not (isinstance(spec, list) and len(spec) == 2 and spec[0] in _ALLOWED_DTYPES and isinstance(spec[1], list)):
            raise StateFormatError(f"unexpected array description {spec!r}")
        dtype, shape = np.dtype(spec[0]), tuple(spec[1])
        if not all(isinstance(n, int) and 0 <= n < 2**31 for n in shape):
            raise StateFormatError(f"unexpected array shape {shape!r}")
        size = dtype.itemsize * int(np.prod(shape, dtype=np.int64))
        if offset + size > len(blob):
            raise StateFormatError("state arrays run past the end of the blob")
        arrays.append(np.frombuffer(blob, dtype, count=size // dtype.itemsize, offset=offset).reshape(shape))
        offset += size
    if offset != len(blob):
        raise StateFormatError(f"{len(blob) - offset} unexpected bytes after the state arrays")
    return header, arrays


def pack_header(header: dict) -> bytes:
    """A header alone (a manifest): :func:`pack` without arrays."""
    return pack(header, [])


def expect(header: dict, kind: str) -> dict:
    """``header`` if it is a ``kind`` header, else :class:`StateFormatError`."""
    if header.get("kind") != kind:
        raise StateFormatError(f"expected {kind} state, found {header.get('kind')!r}")
    return header
