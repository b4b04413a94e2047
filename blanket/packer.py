"""Write one pack: a PAX tar of entries, compressed with zstd, encrypted and signed by gpg.

The bytes flow tar -> zstd -> a pipe -> gpg -> a spool file, with gpg running as its own
process so compression and encryption overlap. Member names are ``tree`` for the source
root and ``tree/<path>`` for everything else; the pack's own index is the last member,
``index.txt``. Sparse files use GNU tar's PAX sparse format 1.0, so ``tar -x`` recreates
their holes. See docs/format.md.
"""

from __future__ import annotations

import hashlib
import io
import os
import tarfile
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, replace
from typing import BinaryIO, cast

import zstandard

from blanket import model
from blanket.crypto import Gpg, PipeEncryptor
from blanket.model import Entry

TREE = "tree"
PARTS = "parts"
INDEX_MEMBER = "index.txt"
CHUNK = 1 << 20


def member_name(path: bytes) -> str:
    """The tar member name of an entry path (surrogate-escaped str, as tarfile wants)."""
    return TREE if path == model.ROOT else TREE + "/" + os.fsdecode(path)


def part_member_name(path: bytes, offset: int) -> str:
    """The member holding the part at ``offset`` of a split file. Parts live under
    ``parts/``, apart from ``tree/``, so no source file can share a part's name; a
    file's part members in name order concatenate to the file."""
    return f"{PARTS}/{os.fsdecode(path)}/{offset:016d}"


TAR_TYPES = {
    model.DIR: tarfile.DIRTYPE,
    model.SYMLINK: tarfile.SYMTYPE,
    model.HARDLINK: tarfile.LNKTYPE,
    model.FIFO: tarfile.FIFOTYPE,
    model.CHARDEV: tarfile.CHRTYPE,
    model.BLOCKDEV: tarfile.BLKTYPE,
}


def tar_info(e: Entry, name: str) -> tarfile.TarInfo:
    """A tar header for ``e`` named ``name``: type, mode, owner, mtime to the
    nanosecond (PAX), link target (a symlink's text; a hard link's path as is, to be
    renamed by the caller) and device numbers."""
    ti = tarfile.TarInfo(name)
    ti.type = TAR_TYPES.get(e.kind, tarfile.REGTYPE)
    ti.mode = e.mode
    ti.uid, ti.gid = e.uid, e.gid
    ti.uname = e.user.decode("utf-8", "surrogateescape")
    ti.gname = e.group.decode("utf-8", "surrogateescape")
    secs, ns = divmod(e.mtime_ns, 1_000_000_000)
    ti.mtime = secs
    if ns:
        ti.pax_headers = {"mtime": f"{secs}.{ns:09d}"}
    if e.kind in (model.SYMLINK, model.HARDLINK):
        ti.linkname = os.fsdecode(e.target)
    ti.devmajor, ti.devminor = e.rdev_major, e.rdev_minor
    return ti


@dataclass(frozen=True)
class SealedPack:
    """A finished pack in the local spool, ready to upload."""

    path: str
    size: int
    sha256: str


class _Counter(io.RawIOBase):
    """Counts the compressed bytes that pass towards gpg."""

    def __init__(self, sink: BinaryIO) -> None:
        self.sink = sink
        self.count = 0

    def writable(self) -> bool:
        return True

    def write(self, data: bytes | bytearray | memoryview) -> int:  # type: ignore[override]
        self.sink.write(data)
        n = len(data)
        self.count += n
        return n


class _ChunkReader(io.RawIOBase):
    """A read-only file over an iterator of chunks, for ``TarFile.addfile``."""

    def __init__(self, chunks: Iterator[bytes]) -> None:
        self._chunks = chunks
        self._buf = b""

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        while size < 0 or len(self._buf) < size:
            nxt = next(self._chunks, None)
            if nxt is None:
                break
            self._buf += nxt
        if size < 0:
            out, self._buf = self._buf, b""
        else:
            out, self._buf = self._buf[:size], self._buf[size:]
        return out


class PackWriter:
    """Builds one pack in ``spool_dir``; ``add_*`` entries in clock order, then ``seal``."""

    def __init__(self, gpg: Gpg, spool_dir: str, *, level: int = 3) -> None:
        fd, self.spool_path = tempfile.mkstemp(prefix="pack-", dir=spool_dir)
        os.close(fd)
        self._enc = PipeEncryptor(gpg, self.spool_path)
        self._counter = _Counter(self._enc.sink)
        self._zc = zstandard.ZstdCompressor(level=level)
        self._zw = self._zc.stream_writer(
            cast(BinaryIO, self._counter), closefd=False, write_return_read=True
        )
        self._tar = tarfile.open(  # noqa: SIM115 - closed in seal()
            fileobj=self._zw,
            mode="w",
            format=tarfile.PAX_FORMAT,
            encoding="utf-8",
            errors="surrogateescape",
        )
        self.entries: list[Entry] = []
        self.content_bytes = 0

    @property
    def packed_bytes(self) -> int:
        """An estimate of the pack's size so far: the compressed bytes zstd has produced,
        plus the input it still holds back (up to a block) at face value."""
        ingested, consumed, _ = self._zc.frame_progression()
        return int(self._counter.count + ingested - consumed)

    def _add(self, ti: tarfile.TarInfo, data: io.RawIOBase | None = None) -> None:
        self._tar.addfile(ti, data)
        self._tar.getmembers().clear()  # TarFile keeps every header it wrote: memory per file

    def add_meta(self, e: Entry) -> None:
        """Add an entry that has no content: directory, symlink, hard link, special, marker."""
        if e.kind != model.DELETED:
            ti = tar_info(e, member_name(e.path))
            if e.kind == model.HARDLINK:
                ti.linkname = member_name(e.target)
            self._add(ti)
        self.entries.append(e)

    def add_file(self, e: Entry, data: Iterable[bytes]) -> Entry:
        """Add a regular file whose content ``data`` yields (only the data segments, in
        order, for a sparse entry). Returns the entry with its SHA-256 filled in; the
        logical content is hashed, holes included."""
        digest = hashlib.sha256()
        stored = sum(n for _, n in e.sparse) if e.sparse else e.size

        def hashed() -> Iterator[bytes]:
            pos = 0
            segments = iter(e.sparse) if e.sparse else iter([(0, e.size)])
            for off, length in segments:
                _hash_zeros(digest, off - pos)
                left = length
                if left:
                    for chunk in data:
                        digest.update(chunk)
                        left -= len(chunk)
                        yield chunk
                        if left <= 0:
                            break
                pos = off + length
            _hash_zeros(digest, e.size - pos)

        if e.sparse:
            header = _sparse_map(e.sparse, e.size)
            ti = tar_info(e, _sparse_dummy_name(e.path))
            ti.pax_headers = {
                **ti.pax_headers,
                "GNU.sparse.major": "1",
                "GNU.sparse.minor": "0",
                "GNU.sparse.name": member_name(e.path),
                "GNU.sparse.realsize": str(e.size),
            }
            ti.size = len(header) + stored
            body: Iterator[bytes] = _prepend(header, hashed())
        else:
            ti = tar_info(e, member_name(e.path))
            ti.size = stored
            body = hashed()
        self._add(ti, _ChunkReader(body))
        for _ in body:  # tar stops reading at the declared size: let the hash see the end
            pass
        self.content_bytes += stored
        done = replace(e, sha256=digest.hexdigest())
        self.entries.append(done)
        return done

    def note(self, e: Entry) -> None:
        """Record an entry whose content is already in the pack (a split file's entry,
        written after its last part)."""
        self.entries.append(e)

    def add_part(self, e: Entry, data: Iterable[bytes]) -> Entry:
        """Add one part of a split file (``e.length`` bytes at ``e.offset``) as its own
        member; returns the part entry with the part's SHA-256 filled in."""
        digest = hashlib.sha256()

        def hashed() -> Iterator[bytes]:
            for chunk in data:
                digest.update(chunk)
                yield chunk

        ti = tar_info(e, part_member_name(e.path, e.offset))
        ti.size = e.length
        body = hashed()
        self._add(ti, _ChunkReader(body))
        for _ in body:
            pass
        self.content_bytes += e.length
        self._zw.flush(zstandard.FLUSH_BLOCK)  # so packed_bytes counts this part now
        done = replace(e, sha256=digest.hexdigest())
        self.entries.append(done)
        return done

    def seal(self, index_text: bytes) -> SealedPack:
        """Append the index member, finish every stream and return the spooled pack."""
        ti = tarfile.TarInfo(INDEX_MEMBER)
        ti.size = len(index_text)
        ti.mode = 0o644
        self._tar.addfile(ti, io.BytesIO(index_text))
        self._tar.close()
        self._zw.flush(zstandard.FLUSH_FRAME)
        self._zw.close()  # type: ignore[no-untyped-call]
        self._enc.close()
        digest = hashlib.sha256()
        size = 0
        with open(self.spool_path, "rb") as f:
            while block := f.read(CHUNK):
                digest.update(block)
                size += len(block)
        return SealedPack(self.spool_path, size, digest.hexdigest())

    def abort(self) -> None:
        """Give up on this pack and remove its spool file."""
        self._enc.abort()


_ZEROS = bytes(CHUNK)


def _hash_zeros(digest: hashlib._Hash, n: int) -> None:
    while n > 0:
        step = min(n, CHUNK)
        digest.update(_ZEROS[:step] if step < CHUNK else _ZEROS)
        n -= step


def _prepend(first: bytes, rest: Iterator[bytes]) -> Iterator[bytes]:
    yield first
    yield from rest


def _sparse_map(segments: tuple[tuple[int, int], ...], size: int) -> bytes:
    """GNU sparse 1.0 map: the count, then offset and size per segment, padded to 512.
    Like GNU tar, a file ending in a hole gets a last, empty segment at its end."""
    last_off, last_len = segments[-1]
    if last_off + last_len < size:
        segments = (*segments, (size, 0))
    text = f"{len(segments)}\n" + "".join(f"{o}\n{n}\n" for o, n in segments)
    raw = text.encode("ascii")
    return raw + bytes(-len(raw) % tarfile.BLOCKSIZE)


def _sparse_dummy_name(path: bytes) -> str:
    head, _, tail = member_name(path).rpartition("/")
    return f"{head}/GNUSparseFile.0/{tail}"
