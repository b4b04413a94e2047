"""File content for a mount: only the frames that hold the bytes asked for, each checked
against its hash in the signed index before use, kept decrypted in a bounded disk cache.

A file's content is one tar member (or, for a split file, one member per part) of a
pack; the index says which frame of the pack's zstd stream holds it (docs/format.md,
"Frames"). :class:`FrameCache` downloads and decrypts that one frame
(``restore.ranged.fetch_frames``: its SHA-256 is checked against the signed index), from
any intact copy in a mesh, and keeps its tar bytes in a file of the cache folder, with
where each member's data lies in it. A read is then a ``pread`` of that file. Packs whose
index lists no frames, or whose layout the ranged reader does not know, are read whole
(``blanket.packread.fetch_from_any``: hash, signature, decryption), with the same checks.

The cache holds at most ``limit`` bytes of frames (the least recently used go first)
and no file stays open between reads. Each pack that cannot be had is reported once.
"""

from __future__ import annotations

import bisect
import collections
import itertools
import json
import os
import sqlite3
import tarfile
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import BinaryIO, cast

import zstandard

from blanket import model, pgprange
from blanket.errors import BlanketError, IntegrityError
from blanket.members import member_path, part_member_path
from blanket.model import Entry
from blanket.packread import fetch_from_any
from blanket.repo import Repository
from blanket.restore.ranged import PARTIAL_PREFIX, PARTIAL_UP_TO, fetch_frames
from blanket.tarread import TarReader

__all__ = ["FrameCache", "Segment", "Unreadable", "segments_of"]

WHOLE = -1  # the "frame" number of a pack read whole
_CHUNK = 1 << 20
_UNREADABLE = (BlanketError, ValueError, OSError, tarfile.TarError, zstandard.ZstdError)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS member_frame (
    origin INTEGER, seq INTEGER, name BLOB, frame INTEGER, PRIMARY KEY (origin, seq, name));
CREATE TABLE IF NOT EXISTS mapped (origin INTEGER, seq INTEGER, PRIMARY KEY (origin, seq));
CREATE TABLE IF NOT EXISTS held (
    origin INTEGER, seq INTEGER, frame INTEGER, name BLOB,
    offset INTEGER, stored INTEGER, size INTEGER, sparse TEXT,
    PRIMARY KEY (origin, seq, frame, name));
"""


class Unreadable(Exception):
    """Content that cannot be had intact (the mount answers EIO)."""


@dataclass(frozen=True)
class Segment:
    """``length`` bytes of a file from offset ``start``, held by member ``name`` of the
    pack of commit ``seq`` of repository ``origin``."""

    start: int
    length: int
    origin: int
    seq: int
    name: bytes


def segments_of(repos: list[Repository], e: Entry, origin: int, seq: int) -> list[Segment]:
    """Where the content of file entry ``e`` (recorded by commit ``seq``) lies."""
    if not e.parts:
        return [Segment(0, e.size, origin, seq, member_path(e.target or e.path))]
    parts = repos[origin].parts_of(seq, e)
    if len(parts) != e.parts or sum(p.length for _, p in parts) != e.size:
        raise Unreadable(f"only {len(parts)} of its {e.parts} parts are in the repository")
    return [
        Segment(p.offset, p.length, origin, s, part_member_path(p.path, p.offset)) for s, p in parts
    ]


@dataclass(frozen=True)
class _Held:
    path: str
    offset: int
    stored: int
    size: int
    sparse: list[tuple[int, int]] | None


class FrameCache:
    """Decrypted, verified frames in folder ``folder``, at most ``limit`` bytes of them.
    ``report(what, message)`` is told of each pack that cannot be had, once;
    ``fetched`` counts the bytes read from the stores."""

    def __init__(
        self,
        repos: list[Repository],
        folder: str,
        limit: int,
        report: Callable[[str, str], None],
    ) -> None:
        self.repos, self.folder, self.limit, self.report = repos, folder, limit, report
        self._db = sqlite3.connect(
            os.path.join(folder, "frames.sqlite"), check_same_thread=False, isolation_level=None
        )
        self._db.executescript("PRAGMA journal_mode=OFF; PRAGMA synchronous=OFF;" + _SCHEMA)
        self._lock = threading.Lock()  # the database, the LRU and the counters
        self._lru: collections.OrderedDict[tuple[int, int, int], int] = collections.OrderedDict()
        self._size = 0
        self._fetching: dict[tuple[int, ...], threading.Lock] = {}
        self._whole: set[tuple[int, int]] = set()  # packs the ranged reader cannot read
        self._reported: set[tuple[int, int]] = set()
        self.fetched = 0  # bytes read from the stores
        self.frames_fetched = 0

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # --- reading ----------------------------------------------------------------------

    def read(self, segments: list[Segment], offset: int, size: int) -> bytes:
        """Up to ``size`` bytes of the file made of ``segments`` from ``offset``; raises
        :class:`Unreadable` when content that is needed cannot be had intact."""
        out: list[bytes] = []
        end = offset + size
        for seg in segments:
            lo, hi = max(offset, seg.start), min(end, seg.start + seg.length)
            if lo < hi:
                out.append(self._read_member(seg, lo - seg.start, hi - lo))
        return b"".join(out)

    def _read_member(self, seg: Segment, offset: int, size: int) -> bytes:
        for _ in range(3):  # the frame may be evicted between finding and reading it
            held = self._locate(seg)
            if held.size != seg.length:
                raise Unreadable(f"a member of {self._key(seg)} has the wrong size")
            try:
                with open(held.path, "rb", buffering=0) as f:
                    return _pread_logical(f.fileno(), held, offset, size)
            except FileNotFoundError:
                continue
        raise Unreadable("the mount's cache keeps losing a frame; raise --cache-size")

    def _key(self, seg: Segment) -> str:
        return self.repos[seg.origin].by_seq[seg.seq].data_key

    def _locate(self, seg: Segment) -> _Held:
        frame = self._frame_of(seg)
        where = (seg.origin, seg.seq, frame)
        for _ in range(3):  # another read may evict the frame between fetching and here
            with self._lock:
                known = where in self._lru
                if known:
                    self._lru.move_to_end(where)
                lock = self._fetching.setdefault(where[:2], threading.Lock())
            if not known:
                with lock:  # one fetch of a pack at a time: it may bring every frame in
                    with self._lock:
                        known = where in self._lru
                    if not known:
                        self._fetch(seg.origin, seg.seq, frame)
            with self._lock:
                row = self._db.execute(
                    "SELECT offset, stored, size, sparse FROM held "
                    "WHERE origin = ? AND seq = ? AND frame = ? AND name = ?",
                    (*where, seg.name),
                ).fetchone()
                if row is None and where not in self._lru:
                    continue
            if row is None:
                raise Unreadable(f"{self._key(seg)} lacks a member its index lists")
            sparse = None if row[3] is None else [tuple(s) for s in json.loads(row[3])]
            return _Held(self._file(where), int(row[0]), int(row[1]), int(row[2]), sparse)
        raise Unreadable("the mount's cache keeps losing a frame; raise --cache-size")

    def _file(self, where: tuple[int, int, int]) -> str:
        return os.path.join(self.folder, "{}-{}-{}.tar".format(*where))

    # --- which frame ------------------------------------------------------------------

    def _frame_of(self, seg: Segment) -> int:
        pack = (seg.origin, seg.seq)
        header = self.repos[seg.origin].by_seq[seg.seq]
        if len(header.frames) == 0 or pack in self._whole:
            return WHOLE
        with self._lock:
            mapped = self._db.execute(
                "SELECT 1 FROM mapped WHERE origin = ? AND seq = ?", pack
            ).fetchone()
        if mapped is None:
            self._map(seg.origin, seg.seq)
        with self._lock:
            row = self._db.execute(
                "SELECT frame FROM member_frame WHERE origin = ? AND seq = ? AND name = ?",
                (*pack, seg.name),
            ).fetchone()
        return WHOLE if row is None else int(row[0])

    def _map(self, origin: int, seq: int) -> None:
        """Note which frame holds each member of a pack (from its cached index)."""
        repo = self.repos[origin]
        firsts = [f.first for f in repo.by_seq[seq].frames]
        rows = []
        for i, e in enumerate(repo.entries(seq)):
            if e.kind == model.FILE and not e.parts and not e.target:
                name = member_path(e.path)
            elif e.kind == model.PART:
                name = part_member_path(e.path, e.offset)
            else:
                continue
            rows.append((origin, seq, name, max(bisect.bisect_right(firsts, i) - 1, 0)))
        with self._lock:
            self._db.execute("BEGIN")
            self._db.executemany("INSERT OR REPLACE INTO member_frame VALUES (?, ?, ?, ?)", rows)
            self._db.execute("INSERT OR REPLACE INTO mapped VALUES (?, ?)", (origin, seq))
            self._db.execute("COMMIT")

    # --- fetching ---------------------------------------------------------------------

    def _meter(self, n: int) -> None:
        with self._lock:
            self.fetched += n

    def _fetch(self, origin: int, seq: int, frame: int) -> None:
        """Bring frame ``frame`` of a pack into the cache: that frame alone when it is at
        most half of the pack, else the whole pack (gpg decrypts it much faster than the
        ranged reader), every frame of it then kept."""
        header = self.repos[origin].by_seq[seq]
        frames = header.frames
        total = sum(f.size for f in frames)
        whole = (
            frame == WHOLE
            or (origin, seq) in self._whole
            or frames[frame].size > PARTIAL_UP_TO * total
        )
        with tempfile.TemporaryDirectory(prefix="fetch-", dir=self.folder) as work:
            try:
                zst = self._download(origin, seq, None if whole else frame, work)
            except _UNREADABLE as exc:
                self._report_once(origin, seq, f"its files give EIO: {exc}")
                raise Unreadable(str(exc)) from exc
            if not os.path.basename(zst).startswith(PARTIAL_PREFIX):  # the whole pack
                whole = True
            if not whole:
                pieces = [(frame, 0, os.path.getsize(zst))]
            elif frames:
                starts = list(itertools.accumulate((f.size for f in frames), initial=0))
                pieces = [(k, starts[k], f.size) for k, f in enumerate(frames)]
            else:
                pieces = [(WHOLE, 0, os.path.getsize(zst))]
            pieces.sort(key=lambda p: p[0] == frame)  # the one wanted last: kept
            for k, start, length in pieces:
                where = (origin, seq, k)
                try:
                    rows = _unpack(zst, start, length, self._file(where), where)
                except _UNREADABLE as exc:
                    self._report_once(origin, seq, f"unreadable once decrypted: {exc}")
                    raise Unreadable(str(exc)) from exc
                self._keep(where, rows)

    def _report_once(self, origin: int, seq: int, message: str) -> None:
        with self._lock:
            first = (origin, seq) not in self._reported
            self._reported.add((origin, seq))
        if first:
            self.report(self.repos[origin].by_seq[seq].data_key, message)

    def _keep(self, where: tuple[int, int, int], rows: list[tuple[object, ...]]) -> None:
        size = os.path.getsize(self._file(where))
        with self._lock:
            self._db.execute("BEGIN")
            self._db.execute("DELETE FROM held WHERE origin = ? AND seq = ? AND frame = ?", where)
            self._db.executemany("INSERT OR REPLACE INTO held VALUES (?,?,?,?,?,?,?,?)", rows)
            self._db.execute("COMMIT")
            if where in self._lru:
                self._size -= self._lru[where]
            self._lru[where] = size
            self._lru.move_to_end(where)
            self._size += size
            self.frames_fetched += 1
            self._evict(keep=where)

    def _download(self, origin: int, seq: int, frame: int | None, work: str) -> str:
        """The verified zstd bytes of one frame (any intact copy), or (``frame`` None, or
        a layout the ranged reader does not know) of the whole pack."""
        repo = self.repos[origin]
        header = repo.by_seq[seq]
        if frame is not None:
            reasons = []
            for backend in repo.backends:
                try:
                    return fetch_frames(backend, repo.gpg, header, [frame], work, self._meter)
                except pgprange.LayoutError:
                    self._whole.add((origin, seq))
                    break
                except (ValueError, BlanketError) as exc:
                    reasons.append(f"{backend.describe()}: {exc}")
            else:
                raise IntegrityError(
                    f"no intact copy of frame {frame} of {header.data_key} ({'; '.join(reasons)})"
                )
        return fetch_from_any(repo.backends, repo.gpg, header, work, self._meter)

    def _evict(self, keep: tuple[int, int, int]) -> None:
        """Drop the least recently used frames while over the limit (lock held)."""
        while self._size > self.limit and len(self._lru) > 1:
            where, size = next(iter(self._lru.items()))
            if where == keep:
                self._lru.move_to_end(where)
                continue
            del self._lru[where]
            self._size -= size
            self._db.execute("DELETE FROM held WHERE origin = ? AND seq = ? AND frame = ?", where)
            try:
                os.unlink(self._file(where))
            except FileNotFoundError:
                pass


class _Slice:
    """``length`` bytes of open file ``f`` from ``start``, as a readable stream."""

    def __init__(self, f: BinaryIO, start: int, length: int) -> None:
        f.seek(start)
        self.f, self.left = f, length

    def read(self, n: int = -1) -> bytes:
        n = self.left if n < 0 else min(n, self.left)
        data = self.f.read(n)
        self.left -= len(data)
        return data


def _unpack(
    zst: str, start: int, length: int, target: str, where: tuple[int, int, int]
) -> list[tuple[object, ...]]:
    """Decompress the verified zstd frames at ``start`` (``length`` bytes) of file
    ``zst`` into tar file ``target``; the ``held`` rows saying where each regular
    member's data lies in it (found on the way: the tar is read once)."""
    tmp = target + ".tmp"
    rows: list[tuple[object, ...]] = []
    with open(zst, "rb") as src, open(tmp, "wb") as dst:
        raw = _Slice(src, start, length)
        stream = zstandard.ZstdDecompressor().stream_reader(
            cast(BinaryIO, raw), read_across_frames=True
        )

        def tee(n: int) -> bytes:
            data = stream.read(n)
            dst.write(data)
            return data

        tar = TarReader(tee)
        for m in tar:
            if m.is_file:
                sparse = None if m.sparse is None else json.dumps(m.sparse)
                rows.append((*where, m.name, tar.offset, tar.data_left, m.size, sparse))
        while tee(_CHUNK):  # what follows the last member
            pass
    os.replace(tmp, target)
    return rows


def _pread_logical(fd: int, held: _Held, offset: int, size: int) -> bytes:
    """``size`` bytes of a member's content from ``offset`` (a sparse member's holes
    as zeros)."""
    size = max(0, min(size, held.size - offset))
    if held.sparse is None:
        return _pread(fd, held.offset + offset, size)
    out: list[bytes] = []
    pos, stored_at, end = offset, held.offset, offset + size
    for seg_off, seg_len in held.sparse:
        if pos >= end:
            break
        if seg_off + seg_len <= pos:
            stored_at += seg_len
            continue
        if seg_off > pos:
            gap = min(seg_off, end) - pos
            out.append(bytes(gap))
            pos += gap
            if pos >= end:
                break
        take = min(seg_off + seg_len, end) - pos
        out.append(_pread(fd, stored_at + (pos - seg_off), take))
        pos += take
        stored_at += seg_len
    if pos < end:
        out.append(bytes(end - pos))
    return b"".join(out)


def _pread(fd: int, offset: int, size: int) -> bytes:
    data = os.pread(fd, size, offset)
    if len(data) != size:
        raise Unreadable("a cached frame is shorter than its members")
    return data
