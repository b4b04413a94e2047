"""Fetch one pack, prove it is the one its signed index names, and stream its members.

The data object is downloaded to a temporary file while its SHA-256 is computed; it must
match the size and hash the (already verified) index records. Then gpg decrypts it and the
signature is checked before a single byte of the plaintext is used. Only then is the tar
stream read, member by member, and nothing is ever extracted by ``tarfile`` itself.
"""

from __future__ import annotations

import hashlib
import os
import tarfile
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO

import zstandard

from blanket.backends.base import Backend, download_to
from blanket.crypto import Gpg
from blanket.errors import IntegrityError, NotFound, StoreError
from blanket.indexfmt import IndexHeader

CHUNK = 1 << 20


class HashingSink:
    """A write-only file that hashes, counts and (given a ``sink``) stores what passes
    through it."""

    def __init__(self, sink: BinaryIO | None = None) -> None:
        self.sink = sink
        self.digest = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> int:
        self.digest.update(data)
        self.size += len(data)
        return self.sink.write(data) if self.sink is not None else len(data)


@dataclass
class Member:
    """A tar member of a pack: its name (bytes) and a reader for its content."""

    name: bytes
    info: tarfile.TarInfo
    tar: tarfile.TarFile

    def chunks(self) -> Iterator[bytes]:
        reader = self.tar.extractfile(self.info)
        if reader is None:
            return
        while block := reader.read(CHUNK):
            yield block


def fetch_from_any(backends: list[Backend], gpg: Gpg, header: IndexHeader, workdir: str) -> str:
    """The pack of ``header`` from the first store whose copy passes every check (a mesh
    of mirrors); raises ``IntegrityError`` naming each store's trouble if none does."""
    reasons = []
    for backend in backends:
        try:
            return fetch_plaintext(backend, gpg, header, workdir)
        except (NotFound, IntegrityError) as exc:
            reasons.append(f"{backend.describe()}: {exc}")
        except StoreError as exc:
            reasons.append(f"{backend.describe()}: {exc}")
    raise IntegrityError(f"no intact copy of {header.data_key} ({'; '.join(reasons)})")


def fetch_plaintext(backend: Backend, gpg: Gpg, header: IndexHeader, workdir: str) -> str:
    """Download and decrypt the pack of ``header``; return the path of its zstd stream.

    Raises ``IntegrityError`` naming the object when its size, hash or signature is wrong
    (the temporary files are removed first), ``NotFound`` when it is missing.
    """
    key = header.data_key
    fd, enc_path = tempfile.mkstemp(prefix="enc-", dir=workdir)
    try:
        with os.fdopen(fd, "wb") as f:
            hashing = HashingSink(f)
            download_to(backend, key, hashing)  # type: ignore[arg-type]
        if hashing.size != header.data_size or hashing.digest.hexdigest() != header.data_sha256:
            raise IntegrityError(
                f"{key} does not match its index (size {hashing.size}, expected "
                f"{header.data_size}; damaged, truncated or swapped)"
            )
        plain_path = enc_path.replace("enc-", "zst-")
        gpg.decrypt_to_file(enc_path, plain_path, key)
        return plain_path
    finally:
        os.unlink(enc_path)


def members(zst_path: str) -> Iterator[Member]:
    """The pack's members in stored order, named as in the tar (member names are only
    looked up, never used as paths)."""
    with open(zst_path, "rb") as raw:
        stream = zstandard.ZstdDecompressor().stream_reader(raw)
        with tarfile.open(
            fileobj=stream, mode="r|", encoding="utf-8", errors="surrogateescape"
        ) as tar:
            for info in tar:
                yield Member(os.fsencode(info.name), info, tar)
