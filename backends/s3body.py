"""How an S3 put's body is sized, read and hashed, for :mod:`blanket.backends.s3`.

Up to :data:`MULTIPART_THRESHOLD` bytes go up in one PUT, more in :data:`PART_SIZE` parts.
A seekable file is sent straight from the file (:class:`SeekableBody`); anything else is
read in parts, the first ones buffered until the body is known to be small or large
(:func:`chain`). Every PUT and part carries the base64 SHA-256 made here, and
:func:`hex_checksum` turns the one HEAD returns back into hex. Errors reading the caller's
file propagate unchanged.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
from collections.abc import Iterator
from typing import BinaryIO

from blanket.errors import StoreError

MiB = 1024 * 1024
# Up to this size a body goes up in one PUT, whose SHA-256 the store keeps and HEAD returns
# (a multipart object has only a composite checksum, useless to a quick verify): twice
# the default pack size, so packs are verifiable without a download.
MULTIPART_THRESHOLD = 64 * MiB
PART_SIZE = 8 * MiB
MIN_PART_SIZE = 5 * MiB  # S3's smallest part (except the last)


def b64_sha256(body: bytes | memoryview) -> str:
    return base64.b64encode(hashlib.sha256(body).digest()).decode("ascii")


def hex_checksum(value: object, kind: object) -> str | None:
    """The store's base64 SHA-256 as hex; None for a composite (multipart) checksum."""
    if not isinstance(value, str) or not value or "-" in value or kind == "COMPOSITE":
        return None
    try:
        raw = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        return None
    return raw.hex() if len(raw) == 32 else None


def _read_full(f: BinaryIO, n: int) -> bytes:
    """Read ``n`` bytes, fewer only at the end of the file (a raw file may return less
    per call). Errors reading ``f`` propagate unchanged."""
    parts: list[bytes] = []
    left = n
    while left > 0:
        chunk = f.read(left)
        if not chunk:
            break
        parts.append(chunk)
        left -= len(chunk)
    return parts[0] if len(parts) == 1 else b"".join(parts)


def remaining(f: BinaryIO) -> int | None:
    """How many bytes a seekable file holds from its position on; None if it cannot say
    (a pipe, a stream): such a body is read in parts instead."""
    try:
        if not f.seekable():
            return None
        start = f.tell()
        end = f.seek(0, os.SEEK_END)
        f.seek(start)
    except (AttributeError, OSError, ValueError):
        return None  # no seek support after all: read it in parts
    return end - start


class SeekableBody:
    """A single-PUT body read straight from the caller's seekable file (no copy in
    memory): ``size`` bytes from the file's current position."""

    def __init__(self, f: BinaryIO, size: int) -> None:
        self.f = f
        self.start = f.tell()
        self.size = size

    def b64_sha256(self) -> str:
        """The SHA-256 of the body (read once, in parts); errors reading the file
        propagate unchanged."""
        digest = hashlib.sha256()
        self.f.seek(self.start)
        left = self.size
        while left > 0 and (chunk := self.f.read(min(left, PART_SIZE))):
            digest.update(chunk)
            left -= len(chunk)
        if left:
            raise StoreError(f"the file to upload shrank by {left} bytes while being read")
        return base64.b64encode(digest.digest()).decode("ascii")

    def rewound(self) -> BinaryIO:
        self.f.seek(self.start)
        return self.f


def file_parts(f: BinaryIO, part_size: int) -> Iterator[bytes]:
    while chunk := _read_full(f, part_size):
        yield chunk
        if len(chunk) < part_size:
            return


def slices(body: bytes, part_size: int) -> Iterator[bytes]:
    view = memoryview(body)
    for start in range(0, len(body), part_size):
        yield bytes(view[start : start + part_size])


def chain(first: list[bytes], rest: Iterator[bytes]) -> Iterator[bytes]:
    yield from first
    first.clear()  # let the buffered parts go once sent
    yield from rest
