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


CHANGED = "changed while being read; will try again next pass"


def read_range(fd: int, offset: int, length: int, torn: list[str]) -> Iterator[bytes]:
    """``length`` bytes at ``offset``, always exactly that many: a file that shrank, or
    a read that failed, is padded with zeros and the reason recorded in ``torn`` (so a
    tar member being written never ends short and breaks the pack)."""
    pos, end = offset, offset + length
    while pos < end:
        try:
            chunk = os.pread(fd, min(MiB, end - pos), pos)
        except OSError as exc:
            torn.append(f"cannot read: {exc.strerror or exc}")
            chunk = b""
        if not chunk:
            if not torn:
                torn.append(CHANGED)
            chunk = bytes(min(MiB, end - pos))
        pos += len(chunk)
        yield chunk


def same(st: os.stat_result, e: Entry) -> bool:
    """True when ``st`` still describes the version ``e`` was made from."""
    return (st.st_size, st.st_mtime_ns, st.st_ctime_ns) == (e.size, e.mtime_ns, e.ctime_ns)


def read_settled(fd: int, e: Entry) -> list[bytes] | str:
    """A small file's whole content (its data segments), or why it cannot be had: it is
    not the version ``e`` describes, it changed while being read, or a read failed."""
    if not same(os.fstat(fd), e):
        return CHANGED
    if not e.sparse and e.size <= MiB:  # one read is the usual case
        try:
            data = os.pread(fd, e.size, 0)
        except OSError as exc:
            return f"cannot read: {exc.strerror or exc}"
        if len(data) == e.size:
            return [data] if same(os.fstat(fd), e) else CHANGED
    torn: list[str] = []
    chunks = [c for off, n in _segments(e) for c in read_range(fd, off, n, torn)]
    if torn:
        return torn[0]
    if not same(os.fstat(fd), e):
        return CHANGED
    return chunks


def stream(fd: int, e: Entry, torn: list[str]) -> Iterator[bytes]:
    """A large file's data segments, streamed; afterwards ``torn`` says why the copy is
    not good (it changed while being read, a read failed), or is empty."""
    if not same(os.fstat(fd), e):
        torn.append(CHANGED)
    for off, n in _segments(e):
        yield from read_range(fd, off, n, torn)
    if not same(os.fstat(fd), e):
        torn.append(CHANGED)
