"""Behaviour added to any :class:`Backend` by wrapping it; each wrapper keeps ``inner``.

:func:`blanket.backends.open_backend` is the one place that stacks them for real use:
``RetryingBackend(RateLimitedBackend(S3Backend(...)))``, the rate limit coming from
:mod:`blanket.backends.ratelimit`. Every wrapper passes the contract's optional
capabilities (``put_file``, ``open_local``, ``cheap_reads``) through, changed only where
its own behaviour asks (a put is retried, a limited upload is throttled). The test
doubles (fault injection, a store without delete) live in :mod:`blanket.testing`, which
production never imports.
"""

from __future__ import annotations

import builtins
import hashlib
import io
import random
import time
from collections.abc import Callable, Iterator
from typing import Any, BinaryIO, TypeVar, cast

from blanket.backends.base import CHUNK_SIZE, Backend, ObjectInfo, check_key, read_chunks
from blanket.errors import (
    AlreadyExists,
    BadRange,
    InvalidKey,
    NotFound,
    StoreError,
    TransientStoreError,
)

T = TypeVar("T")

# A non-seekable file body up to this size is buffered so a failed put can be retried.
RETRY_BUFFER = 16 * 1024 * 1024


class BackendWrapper(Backend):
    """Passes every call to ``inner``; subclasses override what they change."""

    def __init__(self, inner: Backend) -> None:
        self.inner = inner

    def put(self, key: str, data: bytes | BinaryIO, *, if_absent: bool = False) -> None:
        self.inner.put(key, data, if_absent=if_absent)

    def put_file(self, key: str, path: str) -> None:
        self.inner.put_file(key, path)

    def open_local(self, key: str) -> BinaryIO | None:
        return self.inner.open_local(key)

    @property
    def cheap_reads(self) -> bool:
        return self.inner.cheap_reads

    def get(self, key: str) -> bytes:
        return self.inner.get(key)

    def get_range(self, key: str, offset: int, length: int) -> bytes:
        return self.inner.get_range(key, offset, length)

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        return self.inner.list(prefix)

    def head(self, key: str) -> ObjectInfo:
        return self.inner.head(key)

    def delete(self, key: str) -> None:
        self.inner.delete(key)

    def describe(self) -> str:
        return self.inner.describe()

    def exists(self) -> bool:
        return self.inner.exists()

    def create(self) -> None:
        self.inner.create()

    def discard_incomplete(self) -> int:
        return self.inner.discard_incomplete()

    def close(self) -> None:
        self.inner.close()


def innermost(backend: Backend) -> Backend:
    """The concrete backend under any stack of wrappers (for store-specific calls such as
    ``S3Backend.abort_incomplete_uploads``)."""
    while isinstance(backend, BackendWrapper):
        backend = backend.inner
    return backend


# --- retrying -------------------------------------------------------------------------


def is_retriable(exc: BaseException) -> bool:
    """The one decision whether a failed store call may be repeated.

    Not-found, bad-range, already-exists and invalid-key answers are final whatever the
    backend says; any other StoreError is retried when it says it is transient
    (throttling, 5xx, timeouts, dropped connections: ``StoreError.retriable``). Anything
    that is no StoreError (a bug, an error reading the caller's file) is never retried.
    """
    if isinstance(exc, NotFound | BadRange | AlreadyExists | InvalidKey):
        return False
    return isinstance(exc, StoreError) and exc.retriable


class RetryingBackend(BackendWrapper):
    """Repeat calls that failed with a retriable error (:func:`is_retriable`), up to
    ``attempts`` tries in all, sleeping between them with exponential backoff and full
    jitter: a random time in ``[0, min(max_delay, base_delay * 2**n))``.

    A put of a file object is repeated from the file's starting position (the file must be
    seekable; a non-seekable body of at most :data:`RETRY_BUFFER` bytes is buffered, a
    larger one is tried once). A ``put(if_absent=True)`` whose earlier attempt failed may
    in fact have stored the object; if a later attempt then meets AlreadyExists, the
    stored object is compared with the body and the put counts as done when they are the
    same bytes.
    """

    def __init__(
        self,
        inner: Backend,
        attempts: int = 5,
        base_delay: float = 0.2,
        max_delay: float = 10.0,
        sleep: Callable[[float], None] = time.sleep,
        rand: Callable[[], float] = random.random,
    ) -> None:
        super().__init__(inner)
        if attempts < 1:
            raise ValueError("attempts must be at least 1")
        self.attempts = attempts
        self.base_delay = base_delay
        self.max_delay = max_delay
        self.sleep = sleep
        self.rand = rand

    def delay(self, failures: int) -> float:
        """How long to wait after the ``failures``-th failed attempt (1-based)."""
        return self.rand() * min(self.max_delay, self.base_delay * 2.0 ** (failures - 1))

    def _retry(self, call: Callable[[], T], *, can_retry: bool = True) -> T:
        failures = 0
        while True:
            try:
                return call()
            except StoreError as exc:
                if not is_retriable(exc):
                    raise
                failures += 1
                if not can_retry:
                    raise TransientStoreError(
                        f"{exc} (not retried: the body cannot be read a second time)"
                    ) from exc
                if failures >= self.attempts:
                    raise TransientStoreError(
                        f"{exc} (gave up after {self.attempts} attempts)"
                    ) from exc
                self.sleep(self.delay(failures))

    def put(self, key: str, data: bytes | BinaryIO, *, if_absent: bool = False) -> None:
        check_key(key)
        body = _Replayable(data)
        tried = False

        def attempt() -> None:
            nonlocal tried
            after_failure, tried = tried, True
            try:
                self.inner.put(key, body.rewind(), if_absent=if_absent)
            except AlreadyExists:
                if if_absent and after_failure and self._holds(key, body):
                    return  # the failed attempt had stored it after all
                raise

        self._retry(attempt, can_retry=body.replayable)

    def put_file(self, key: str, path: str) -> None:
        # A file nobody writes any more can be offered again whole: no buffering needed.
        self._retry(lambda: self.inner.put_file(key, path))

    def open_local(self, key: str) -> BinaryIO | None:
        return self._retry(lambda: self.inner.open_local(key))

    def _holds(self, key: str, body: _Replayable) -> bool:
        """Whether ``key`` holds exactly ``body``'s bytes (by the store's checksum if it
        keeps one, else by reading it back)."""
        size, digest = body.size_and_sha256()
        info = self.head(key)
        if info.size != size:
            return False
        if info.checksum_sha256 is not None:
            return info.checksum_sha256 == digest
        stored = hashlib.sha256()
        for offset in range(0, size, CHUNK_SIZE):
            stored.update(self.get_range(key, offset, CHUNK_SIZE))
        return stored.hexdigest() == digest

    def get(self, key: str) -> bytes:
        return self._retry(lambda: self.inner.get(key))

    def get_range(self, key: str, offset: int, length: int) -> bytes:
        return self._retry(lambda: self.inner.get_range(key, offset, length))

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        # Errors may surface while iterating: take the whole listing inside the retry.
        return iter(self._retry(lambda: builtins.list(self.inner.list(prefix))))

    def head(self, key: str) -> ObjectInfo:
        return self._retry(lambda: self.inner.head(key))

    def delete(self, key: str) -> None:
        self._retry(lambda: self.inner.delete(key))

    def exists(self) -> bool:
        return self._retry(self.inner.exists)

    def create(self) -> None:
        self._retry(self.inner.create)

    def discard_incomplete(self) -> int:
        return self._retry(self.inner.discard_incomplete)


class _Replayable:
    """A put body that can be offered again from its start."""

    def __init__(self, data: bytes | BinaryIO) -> None:
        self.data: bytes | BinaryIO
        self.start = 0
        self.replayable = True
        if isinstance(data, bytes | bytearray | memoryview):
            self.data = bytes(data)
        elif _seekable(data):
            self.data = data
            self.start = data.tell()
        else:
            head = _read_upto(data, RETRY_BUFFER + 1)
            if len(head) <= RETRY_BUFFER:
                self.data = head
            else:
                self.data = cast(BinaryIO, _Prefixed(head, data))
                self.replayable = False
        self.used = False

    def rewind(self) -> bytes | BinaryIO:
        if isinstance(self.data, bytes):
            return self.data
        if self.used and self.replayable:
            self.data.seek(self.start)
        self.used = True
        return self.data

    def size_and_sha256(self) -> tuple[int, str]:
        digest = hashlib.sha256()
        size = 0
        for chunk in read_chunks(self.rewind()):
            digest.update(chunk)
            size += len(chunk)
        return size, digest.hexdigest()


def _seekable(f: BinaryIO) -> bool:
    try:
        if not f.seekable():
            return False
        f.tell()
    except (AttributeError, OSError, ValueError):
        return False  # no seek support: buffer instead
    return True


def _read_upto(f: BinaryIO, n: int) -> bytes:
    parts: builtins.list[bytes] = []
    left = n
    while left > 0 and (chunk := f.read(min(left, CHUNK_SIZE))):
        parts.append(chunk)
        left -= len(chunk)
    return b"".join(parts)


class _Prefixed(io.RawIOBase):
    """``head`` (already read) followed by the rest of ``rest``."""

    def __init__(self, head: bytes, rest: BinaryIO) -> None:
        self.head = memoryview(head)
        self.rest = rest

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        if self.head:
            n = min(len(view), len(self.head))
            view[:n] = self.head[:n]
            self.head = self.head[n:]
            return n
        chunk = self.rest.read(len(view))
        view[: len(chunk)] = chunk
        return len(chunk)
