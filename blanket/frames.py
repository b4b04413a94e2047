"""Compress a pack's tar stream as a run of independent zstd frames, on a thread of its own.

A pack is one gpg message, which only gpg can check as a whole; but a restore of one folder
should not have to download a whole pack for it. So the tar stream inside is compressed as
frames that each start at a member boundary and can be decompressed alone, and the index
lists them (``frames:``, see docs/format.md): a restore fetches and decrypts only the byte
ranges of the frames it needs (``blanket.pgprange``) and checks each one's SHA-256 against
the signed index. ``zstd -d`` reads the frames back to back, so the pack is still what
``gpg --decrypt | zstd -d | tar -x`` expects.

Where frames end is the packer's choice (:func:`frame_ends_before`): at a member whose
folder differs from the one before once the frame holds ``FRAME_MIN`` bytes, and at any
member once it holds ``FRAME_MAX``. So a folder's files tend to start a frame of their
own, and reading one folder costs little more than its own packed size.

:class:`FrameCompressor` takes the tar bytes from the thread that builds them and
compresses on a thread of its own (zstd releases the GIL), hashing each frame and handing
the compressed bytes on (to gpg's feeding pipe) in order. A pack's compressor may still be
working through its queue when the next pack starts (``finish`` does not wait; ``frames``
does), so each one takes a zstd context of its own from the run's :class:`Compressors`.
"""

from __future__ import annotations

import hashlib
import queue
import threading
from collections.abc import Callable

import zstandard

from blanket.indexfmt import Frame

__all__ = ["FRAME_MAX", "FRAME_MIN", "Compressors", "Frame", "FrameCompressor", "frame_ends_before"]

FRAME_MIN = 64 << 10  # tar bytes: a frame may end at a new folder once it holds this much
FRAME_MAX = 4 << 20  # tar bytes: a frame ends at the next member once it holds this much
ONE_SHOT = 1 << 20  # a frame's input up to this size is compressed in one call
_DEPTH = 16  # items (of up to about 1 MiB) queued for the thread before ``write`` waits


def frame_ends_before(frame_bytes: int, folder: bytes, last_folder: bytes | None) -> bool:
    """Whether the frame holding ``frame_bytes`` tar bytes ends before a member of
    ``folder`` that follows one of ``last_folder``."""
    if frame_bytes >= FRAME_MAX:
        return True
    return frame_bytes >= FRAME_MIN and folder != last_folder


class Compressors:
    """The zstd contexts of a run: one per pack compressing at the same time (a sealed
    pack's frames may still be compressing while the next pack fills), each reused by
    later packs rather than one allocated per pack."""

    def __init__(self, level: int = 3) -> None:
        self.level = level
        self._free: list[zstandard.ZstdCompressor] = []
        self._lock = threading.Lock()

    def take(self) -> zstandard.ZstdCompressor:
        with self._lock:
            if self._free:
                return self._free.pop()
        return zstandard.ZstdCompressor(level=self.level)

    def give(self, zc: zstandard.ZstdCompressor) -> None:
        with self._lock:
            self._free.append(zc)

    def clear(self) -> None:
        """Free the contexts now (those in use are dropped when given back)."""
        with self._lock:
            self._free.clear()


class _End:
    """Queue item: the frame in progress ends; the next one starts at entry ``first``."""

    __slots__ = ("first",)

    def __init__(self, first: int) -> None:
        self.first = first


_CLOSE = object()
_Item = bytes | _End | object


class FrameCompressor:
    """Compresses what ``write`` gets into frames (``end_frame`` ends one) on its own
    thread, with a context taken from ``compressors``, and passes the output to ``out``;
    ``finish`` ends the input without waiting, ``frames`` waits and returns the frames
    (``close`` does both).

    An error in ``out`` (gpg stopped) is raised again by the next ``write``,
    ``end_frame`` or ``close``; the thread keeps draining the queue meanwhile, so the
    writer never waits for ever.
    """

    def __init__(self, out: Callable[[bytes], None], compressors: Compressors) -> None:
        self._out = out
        self._compressors = compressors
        self._zc = compressors.take()
        self._queue: queue.Queue[_Item] = queue.Queue(_DEPTH)
        self._frames: list[Frame] = []
        self._error: BaseException | None = None
        self.queued = 0  # tar bytes handed in
        self.consumed = 0  # tar bytes compressed
        self.produced = 0  # compressed bytes
        self._thread = threading.Thread(target=self._run, name="blanket-zstd", daemon=True)
        self._thread.start()

    def write(self, data: bytes) -> None:
        """Queue tar bytes (``data`` must not change afterwards)."""
        self._check()
        self.queued += len(data)
        self._queue.put(data)

    def end_frame(self, next_first: int) -> None:
        """End the frame in progress (if it has anything); the next one's first entry is
        ``next_first`` (the number of entries added so far)."""
        self._check()
        self._queue.put(_End(next_first))

    def finish(self) -> None:
        """End the last frame and the input; the thread goes on with what is queued."""
        self._check()
        self._queue.put(_CLOSE)

    def frames(self) -> tuple[Frame, ...]:
        """Wait for the thread (after ``finish``); every frame in order."""
        self._thread.join()
        self._check()
        return tuple(self._frames)

    def close(self) -> tuple[Frame, ...]:
        """``finish``, then ``frames``."""
        self.finish()
        return self.frames()

    def abandon(self) -> None:
        """Stop without caring for the output (the pack is being thrown away)."""
        if self._error is None:
            self._error = RuntimeError("abandoned")
        if self._thread.is_alive():
            self._queue.put(_CLOSE)
            self._thread.join()

    def _check(self) -> None:
        if self._error is not None:
            raise self._error

    def _run(self) -> None:
        try:
            self._compress_all()
        finally:
            self._compressors.give(self._zc)

    def _compress_all(self) -> None:
        first = 0
        pending: list[bytes] = []  # input of a small frame, compressed in one call at its end
        pending_bytes = 0
        stream: zstandard.ZstdCompressionObj | None = None
        digest = hashlib.sha256()
        size = 0

        def emit(data: bytes) -> None:
            nonlocal size
            if data and self._error is None:
                digest.update(data)
                size += len(data)
                self.produced += len(data)
                try:
                    self._out(data)
                except BaseException as exc:  # noqa: BLE001 - handed to the writer
                    self._error = exc

        while True:
            item = self._queue.get()
            if isinstance(item, bytes):
                if self._error is not None:
                    continue
                if stream is None and pending_bytes + len(item) <= ONE_SHOT:
                    pending.append(item)
                    pending_bytes += len(item)
                    continue
                if stream is None:
                    stream = self._zc.compressobj()
                    for piece in pending:
                        emit(stream.compress(piece))
                    self.consumed += pending_bytes
                    pending.clear()
                    pending_bytes = 0
                emit(stream.compress(item))
                self.consumed += len(item)
                continue
            # the end of a frame (or of them all)
            if stream is not None:
                emit(stream.flush(zstandard.COMPRESSOBJ_FLUSH_FINISH))
            elif pending:
                emit(self._zc.compress(b"".join(pending)))
            if size:
                self._frames.append(Frame(first, size, digest.hexdigest()))
            self.consumed += pending_bytes
            pending.clear()
            pending_bytes = 0
            stream = None
            digest = hashlib.sha256()
            size = 0
            if isinstance(item, _End):
                first = item.first
            else:
                return
