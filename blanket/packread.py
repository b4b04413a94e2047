"""Fetch one pack, prove it is the one its signed index names, and stream its members.

Reading and checking a pack is core: verify, sync, gc's history keeping and ``cat``
need it as much as restore does (which builds on it; the core never imports
``blanket.restore``). Member names are ``blanket.members``'.

The data object is downloaded to a temporary file while its SHA-256 is computed (a local
store's file is hashed in place instead, and decrypted from the same open file, with no
copy); it must match the size and hash the (already verified) index records. Then gpg
decrypts it and the signature is checked before a single byte of the plaintext is used.
Only then is the tar stream read, member by member, by our own reader (``tarread``);
nothing is ever extracted by ``tarfile``. ``Prefetcher`` runs these fetches ahead of the
caller.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections import deque
from collections.abc import Callable, Hashable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import suppress
from typing import BinaryIO, Generic, TypeVar

import zstandard

from blanket.backends.base import Backend, download_to
from blanket.crypto import Gpg
from blanket.errors import IntegrityError, NotFound, StoreError
from blanket.indexfmt import IndexHeader
from blanket.pgpstream import Readable, Source, open_source, remove
from blanket.tarread import Member, TarReader

__all__ = ["HashingSink", "Member", "Prefetcher", "fetch_from_any", "fetch_plaintext", "members"]

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


Meter = Callable[[int], None]  # told how many bytes were read from a store


def fetch_from_any(
    backends: list[Backend], gpg: Gpg, header: IndexHeader, workdir: str, meter: Meter | None = None
) -> str:
    """The pack of ``header`` from the first store whose copy passes every check (a mesh
    of mirrors); raises ``IntegrityError`` naming each store's trouble if none does."""
    reasons = []
    for backend in backends:
        try:
            return fetch_plaintext(backend, gpg, header, workdir, meter)
        except (NotFound, IntegrityError) as exc:
            reasons.append(f"{backend.describe()}: {exc}")
        except StoreError as exc:
            reasons.append(f"{backend.describe()}: {exc}")
    raise IntegrityError(f"no intact copy of {header.data_key} ({'; '.join(reasons)})")


def fetch_plaintext(
    backend: Backend, gpg: Gpg, header: IndexHeader, workdir: str, meter: Meter | None = None
) -> str:
    """Download and decrypt the pack of ``header``; return the path of its zstd stream.

    Raises ``IntegrityError`` naming the object when its size, hash or signature is wrong
    (the temporary files are removed first), ``NotFound`` when it is missing.
    """
    key = header.data_key
    local = backend.open_local(key)
    if local is not None:  # a local store: hashed and decrypted in place, never copied
        with local:
            hashing = HashingSink()
            try:
                while block := local.read(CHUNK):
                    hashing.write(block)
            finally:
                if meter is not None:
                    meter(hashing.size)
            _check_copy(key, header, hashing)
            local.seek(0)
            fd, plain_path = tempfile.mkstemp(prefix="zst-", dir=workdir)
            os.close(fd)
            gpg.decrypt_to_file(local, plain_path, key)  # the very file that was hashed
            return plain_path
    fd, enc_path = tempfile.mkstemp(prefix="enc-", dir=workdir)
    try:
        with os.fdopen(fd, "wb") as f:
            hashing = HashingSink(f)
            try:
                download_to(backend, key, hashing)  # type: ignore[arg-type]
            finally:
                if meter is not None:
                    meter(hashing.size)
        _check_copy(key, header, hashing)
        plain_path = enc_path.replace("enc-", "zst-")
        gpg.decrypt_to_file(enc_path, plain_path, key)
        return plain_path
    finally:
        os.unlink(enc_path)


def _check_copy(key: str, header: IndexHeader, hashing: HashingSink) -> None:
    if hashing.size != header.data_size or hashing.digest.hexdigest() != header.data_sha256:
        raise IntegrityError(
            f"{key} does not match its index (size {hashing.size}, expected "
            f"{header.data_size}; damaged, truncated or swapped)"
        )


def members(zst_path: Readable) -> Iterator[Member]:
    """The pack's members in stored order, named as in the tar (member names are only
    looked up, never used as paths). A member's content is read before the next member.
    ``zst_path`` is a verified plaintext, or a checked pack decrypted as it is read
    (blanket.pgpstream)."""
    with open_source(zst_path) as raw:
        stream = zstandard.ZstdDecompressor().stream_reader(
            raw, read_size=CHUNK, read_across_frames=True
        )
        yield from TarReader(stream.read)


K = TypeVar("K", bound=Hashable)


class Prefetcher(Generic[K]):
    """Fetches packs (download, hash, decrypt, signature: ``fetch``) on ``ahead`` helper
    threads, ahead of the pack the caller works on, so gpg runs while files are written.

    ``want`` names packs in the order they will be taken; ``take`` returns the path of a
    pack's verified plaintext (or raises what ``fetch`` raised), skipping (and removing)
    packs named earlier but no longer needed. Nothing fetched is used before ``fetch``
    returned, that is before every check passed. ``close`` waits for the fetch in flight
    and removes every plaintext not taken.
    """

    def __init__(self, fetch: Callable[[K], Source], ahead: int = 1) -> None:
        self._fetch, self._ahead = fetch, ahead
        self._named: deque[K] = deque()
        self._running: deque[tuple[K, Future[Source]]] = deque()
        self._pool = ThreadPoolExecutor(ahead, thread_name_prefix="restore-fetch")

    def want(self, key: K) -> None:
        self._named.append(key)
        self._top_up(self._ahead)

    def _top_up(self, depth: int) -> None:
        while self._named and len(self._running) < depth:
            key = self._named.popleft()
            self._running.append((key, self._pool.submit(self._fetch, key)))

    def take(self, key: K) -> Source:
        while True:
            self._top_up(1)
            if not self._running:
                return self._fetch(key)  # never named: fetch it now
            named, future = self._running.popleft()
            self._top_up(self._ahead)  # the next one fetches while the caller works
            if named == key:
                return future.result()
            _discard(future)

    def close(self) -> None:
        self._named.clear()
        while self._running:
            _discard(self._running.popleft()[1])
        self._pool.shutdown(wait=True)

    def __enter__(self) -> Prefetcher[K]:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _discard(future: Future[Source]) -> None:
    """Wait for a fetch nobody will take and remove what it produced."""
    if future.cancel():
        return
    with suppress(Exception):
        remove(future.result())
