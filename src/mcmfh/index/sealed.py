"""A checksum on every stored payload row, so a damaged row is refused instead of re-scoring with wrong numbers.

A row is stored as its payload bytes followed by ``TAG_BYTES``: the CRC-32 of the item's key (8 bytes, little
endian) and the payload. The key is inside the sum, so a row copied onto another item fails too. CRC-32 finds
every burst of up to 32 changed bits and any other change but for one chance in 2^32: a guard against damage (a
failing disk, a bad copy, an edit), not against forgery (an archive's files are trusted as its code is).

An index records from which key on its rows are sealed (manifest field ``SEALED_FROM``): 0 for an index created
with seals; for one made before, the first key added by a version with seals. Rows with older keys are read as
before, unchecked (only their length is), until the archive is rebuilt.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Mapping
from typing import Any

TAG_BYTES = 4
SEALED_FROM = "payload_sealed_from"


def _tag(key: int, row: bytes) -> bytes:
    return struct.pack("<I", zlib.crc32(row, zlib.crc32(struct.pack("<q", key))))


def seal(key: int, row: bytes) -> bytes:
    """The stored form of payload ``row`` of item ``key``: the row and its checksum."""
    return row + _tag(key, row)


def sealed_from(manifest: Mapping[str, Any]) -> int | None:
    """The first sealed key of an index (None: no row is sealed, an index made before seals existed)."""
    value = manifest.get(SEALED_FROM)
    return None if value is None else int(value)


def unseal(key: int, blob: object, width: int, first_sealed: int | None) -> bytes | None:
    """The ``width``-byte payload of a stored ``blob``, or None when it is missing, of another length or fails its
    checksum. Keys below ``first_sealed`` (all, when None) were stored without a checksum."""
    if not isinstance(blob, bytes):
        return None
    if first_sealed is None or key < first_sealed:
        return blob if len(blob) == width else None
    if len(blob) != width + TAG_BYTES:
        return None
    row = blob[:width]
    return row if blob[width:] == _tag(key, row) else None
