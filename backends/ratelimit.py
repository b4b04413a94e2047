"""Speed limits on a store: :class:`RateLimitedBackend` takes every byte of a put body, and
of what get and get_range return, from a :class:`TokenBucket` of bytes per second.

:func:`blanket.backends.open_backend` stacks it directly around the store, inside
:class:`blanket.backends.wrappers.RetryingBackend`, so every attempt of a call is limited.
"""

from __future__ import annotations

import io
import threading
import time
from collections.abc import Callable
from typing import Any, BinaryIO, cast

from blanket.backends.base import Backend
from blanket.backends.wrappers import BackendWrapper


class TokenBucket:
    """``rate`` bytes per second on average, with bursts of up to one second's worth.

    Thread-safe: concurrent callers share the rate. A take larger than the bucket runs it
    into debt, and the taker sleeps the debt off.
    """

    def __init__(
        self,
        rate: float,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if rate <= 0:
            raise ValueError("rate must be positive")
        self.rate = float(rate)
        self.capacity = float(rate)
        self.clock = clock
        self.sleep = sleep
        self._tokens = self.capacity
        self._updated = clock()
        self._lock = threading.Lock()

    def take(self, n: int) -> None:
        with self._lock:
            now = self.clock()
            self._tokens = min(self.capacity, self._tokens + (now - self._updated) * self.rate)
            self._updated = now
            self._tokens -= n
            wait = -self._tokens / self.rate if self._tokens < 0 else 0.0
        if wait > 0:
            self.sleep(wait)


# Largest read a throttled upload hands on at once, so the rate is smooth.
THROTTLE_CHUNK = 256 * 1024


class _ThrottledReader(io.RawIOBase):
    """A file-like view of a put body that takes tokens for every byte read."""

    def __init__(self, inner: BinaryIO, bucket: TokenBucket) -> None:
        self.inner = inner
        self.bucket = bucket

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        chunk = self.inner.read(min(len(view), THROTTLE_CHUNK))
        view[: len(chunk)] = chunk
        if chunk:
            self.bucket.take(len(chunk))
        return len(chunk)


class RateLimitedBackend(BackendWrapper):
    """Limit uploads (put bodies) and downloads (get, get_range) to the given bytes per
    second, averaged over time; ``None`` means no limit that way.

    The body is throttled as the store reads it. A store that reads a whole body (or
    part) before sending it, as S3 does for one PUT or one multipart part, still sends
    each at line speed: the average holds, the bursts are up to one such body long.
    """

    def __init__(
        self,
        inner: Backend,
        upload_bps: float | None = None,
        download_bps: float | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        super().__init__(inner)
        self.upload = TokenBucket(upload_bps, clock=clock, sleep=sleep) if upload_bps else None
        self.download = (
            TokenBucket(download_bps, clock=clock, sleep=sleep) if download_bps else None
        )

    def put(self, key: str, data: bytes | BinaryIO, *, if_absent: bool = False) -> None:
        if self.upload is None:
            self.inner.put(key, data, if_absent=if_absent)
            return
        source = io.BytesIO(data) if isinstance(data, bytes | bytearray | memoryview) else data
        reader = cast(BinaryIO, _ThrottledReader(source, self.upload))
        self.inner.put(key, reader, if_absent=if_absent)

    def put_file(self, key: str, path: str) -> None:
        if self.upload is None:
            self.inner.put_file(key, path)
            return
        with open(path, "rb") as f:  # every byte through the limit, as a put
            self.put(key, f)

    def open_local(self, key: str) -> BinaryIO | None:
        # A download limit holds for every byte read: reads then go through get_range.
        return self.inner.open_local(key) if self.download is None else None

    def get(self, key: str) -> bytes:
        return self._took(self.inner.get(key))

    def get_range(self, key: str, offset: int, length: int) -> bytes:
        return self._took(self.inner.get_range(key, offset, length))

    def _took(self, data: bytes) -> bytes:
        if self.download is not None and data:
            self.download.take(len(data))
        return data
