"""Write small files on helper threads while the main thread reads the next members.

Creating a file is a handful of syscalls (``open`` with ``O_CREAT|O_EXCL``, ``pwrite``,
``fchmod``, ``utime``, ``rename``) that release the GIL and cost far more than the Python
around them; restoring many small files is bound by them. The main thread hands over files
whose whole (small) content it already holds, in batches; each helper writes through its
own ``SafeWriter.clone()`` (so every rule of ``SafeWriter`` holds as before), and outcomes
come back to the main thread in the order the files were handed over, to be judged there.
In-flight batches are bounded in number and bytes, so memory stays flat.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Generic, TypeVar

from blanket.model import Entry
from blanket.restore.writer import SafeWriter

T = TypeVar("T")
BATCH_FILES = 64
BATCH_BYTES = 1 << 20
MAX_BYTES = 32 << 20  # content handed over and not yet judged

# (exception raised by write_file or None, warnings the writer gave)
Outcome = tuple[Exception | None, list[str]]
Done = Callable[[T, Entry, Exception | None, list[str]], None]


class WriterPool(Generic[T]):
    """``submit`` files (with a caller's ``tag``); ``done(tag, entry, error, warnings)``
    is called on the submitting thread, in order, from ``submit``, ``flush`` or ``drain``."""

    def __init__(self, writer: SafeWriter, threads: int, done: Done[T]) -> None:
        self._writer, self._done = writer, done
        self._threads = threads
        self._local = threading.local()
        self._clones: list[SafeWriter] = []
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix="restore-write")
        self._batch: list[tuple[T, Entry, bytes]] = []
        self._batch_bytes = 0
        self._running: deque[tuple[list[tuple[T, Entry, bytes]], int, Future[list[Outcome]]]]
        self._running = deque()
        self._running_bytes = 0

    def submit(self, tag: T, entry: Entry, data: bytes) -> None:
        self._batch.append((tag, entry, data))
        self._batch_bytes += len(data)
        if len(self._batch) >= BATCH_FILES or self._batch_bytes >= BATCH_BYTES:
            self.flush()

    def flush(self) -> None:
        """Hand the current batch over, and judge what is finished."""
        if self._batch:
            batch, size = self._batch, self._batch_bytes
            self._batch, self._batch_bytes = [], 0
            self._running.append((batch, size, self._pool.submit(self._write, batch)))
            self._running_bytes += size
        self._collect(wait=False)

    def drain(self) -> None:
        """Write and judge everything submitted so far."""
        self.flush()
        self._collect(wait=True)

    def _collect(self, *, wait: bool) -> None:
        while self._running:
            batch, size, future = self._running[0]
            crowded = self._running_bytes > MAX_BYTES or len(self._running) > 2 * self._threads
            if not (wait or crowded or future.done()):
                return
            self._running.popleft()
            self._running_bytes -= size
            for (tag, entry, _), (error, warnings) in zip(batch, future.result(), strict=True):
                self._done(tag, entry, error, warnings)

    def _write(self, batch: list[tuple[T, Entry, bytes]]) -> list[Outcome]:
        writer: SafeWriter | None = getattr(self._local, "writer", None)
        if writer is None:
            writer = self._local.writer = self._writer.clone()
            with self._lock:
                self._clones.append(writer)
        out: list[Outcome] = []
        for _, entry, data in batch:
            try:
                writer.write_file(entry, (data,))
                error = None
            except Exception as exc:  # judged by the caller, as if raised there
                error = exc
            out.append((error, writer.warnings[:]))
            writer.warnings.clear()
        return out

    def close(self) -> None:
        """Stop: batches not started are dropped, those being written finish."""
        self._batch.clear()
        self._pool.shutdown(wait=True, cancel_futures=True)
        self._running.clear()
        for w in self._clones:
            w.close()
        self._clones.clear()
