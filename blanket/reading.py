"""Read a source file's content so that a torn copy is never stored as good.

A file is compared with the stat data its entry was made from before and after it is
read (size, mtime, ctime); a file that changed meanwhile is reported as torn. Content
comes in chunks of at most 1 MiB, by ``pread``, so nothing else moves the file offset.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

from blanket.model import Entry

MiB = 1 << 20


def _segments(e: Entry) -> list[tuple[int, int]]:
    return list(e.sparse) if e.sparse else [(0, e.size)]


def read_range(fd: int, offset: int, length: int, torn: list[bool]) -> Iterator[bytes]:
    """``length`` bytes at ``offset``; a file that shrank is padded with zeros and the
    fact recorded in ``torn``."""
    pos, end = offset, offset + length
    while pos < end:
        chunk = os.pread(fd, min(MiB, end - pos), pos)
        if not chunk:
            torn.append(True)
            chunk = bytes(min(MiB, end - pos))
        pos += len(chunk)
        yield chunk


def same(st: os.stat_result, e: Entry) -> bool:
    """True when ``st`` still describes the version ``e`` was made from."""
    return (st.st_size, st.st_mtime_ns, st.st_ctime_ns) == (e.size, e.mtime_ns, e.ctime_ns)


def read_settled(fd: int, e: Entry) -> list[bytes] | None:
    """A small file's whole content (its data segments), or None if it is not the
    version ``e`` describes or changed while being read."""
    if not same(os.fstat(fd), e):
        return None
    torn: list[bool] = []
    chunks = [c for off, n in _segments(e) for c in read_range(fd, off, n, torn)]
    if torn or not same(os.fstat(fd), e):
        return None
    return chunks


def stream(fd: int, e: Entry, torn: list[bool]) -> Iterator[bytes]:
    """A large file's data segments, streamed; ``torn`` says afterwards whether the file
    changed while it was read."""
    if not same(os.fstat(fd), e):
        torn.append(True)
    for off, n in _segments(e):
        yield from read_range(fd, off, n, torn)
    if not same(os.fstat(fd), e):
        torn.append(True)
