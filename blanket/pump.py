"""A thread that writes queued bytes to a file descriptor, so the producer never waits
for a slow reader at the other end of a pipe (unless ``limit`` bytes are already queued).

The pack writer hands zstd's output to gpg through one: zstd returns a finished job's
output in bursts of megabytes, and writing a burst from the thread that also feeds zstd
would leave zstd's worker without input while gpg catches up.
"""

from __future__ import annotations

import os
import threading
from collections import deque


class Pump:
    def __init__(self, fd: int, *, limit: int = 16 << 20, name: str = "blanket-pump") -> None:
        self._fd = fd
        self._limit = limit
        self._chunks: deque[bytes] = deque()
        self._queued = 0
        self._closing = False
        self._error: OSError | None = None
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def put(self, data: bytes | bytearray | memoryview) -> None:
        """Queue ``data``; raises the error the pump met writing earlier data."""
        chunk = data if isinstance(data, bytes) else bytes(data)
        with self._cond:
            while self._queued >= self._limit and self._error is None:
                self._cond.wait()
            if self._error is not None:
                raise self._error
            self._chunks.append(chunk)
            self._queued += len(chunk)
            self._cond.notify_all()

    def close(self) -> None:
        """Wait until everything queued is written; raise the pump's error, if any."""
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        self._thread.join()
        if self._error is not None:
            raise self._error

    def abandon(self) -> None:
        """Drop what is queued and stop (the reader is going away)."""
        with self._cond:
            self._chunks.clear()
            self._queued = 0
            self._closing = True
            self._cond.notify_all()

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._chunks and not self._closing:
                    self._cond.wait()
                if not self._chunks:
                    return
                chunk = self._chunks.popleft()
            try:
                view = memoryview(chunk)
                while view:
                    view = view[os.write(self._fd, view) :]
            except OSError as exc:
                with self._cond:
                    self._error = exc
                    self._chunks.clear()
                    self._queued = 0
                    self._cond.notify_all()
                return
            with self._cond:
                self._queued -= len(chunk)
                self._cond.notify_all()
