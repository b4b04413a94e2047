"""Write one pack: a PAX tar of entries, compressed with zstd, encrypted and signed by gpg.

The bytes flow tar -> zstd (a thread of its own, in frames: blanket.frames) -> a pipe ->
gpg (its own process) -> a spool file, so reading, compression and encryption overlap.
Member names are ``blanket.members``' (shared with every reader of a pack). Sparse files
use GNU tar's PAX sparse format 1.0, so ``tar -x`` recreates their holes. See
docs/format.md.
"""

from __future__ import annotations

import hashlib
import os
import tarfile
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from blanket import model, tarheader
from blanket.crypto import EncryptProcess, Gpg
from blanket.frames import Compressors, FrameCompressor, frame_ends_before
from blanket.indexfmt import Frame
from blanket.members import INDEX_MEMBER, TAR_TYPES, member_path, part_member_path
from blanket.model import Entry

CHUNK = 1 << 20
BATCH = 1 << 20  # tar bytes gathered before each call into zstd


def entry_header(
    e: Entry,
    name: bytes,
    *,
    size: int = 0,
    linkname: bytes | None = None,
    extra: tuple[tuple[bytes, bytes], ...] = (),
) -> bytes:
    """The tar header blocks of entry ``e`` as member ``name`` (what
    ``tar_info(e, name).tobuf(PAX_FORMAT)`` gives, see :mod:`blanket.tarheader`)."""
    if linkname is None:
        linkname = e.target if e.kind in (model.SYMLINK, model.HARDLINK) else b""
    return tarheader.header(
        name,
        TAR_TYPES.get(e.kind, tarfile.REGTYPE),
        mode=e.mode,
        uid=e.uid,
        gid=e.gid,
        size=size,
        mtime_ns=e.mtime_ns,
        linkname=linkname,
        uname=e.user,
        gname=e.group,
        devmajor=e.rdev_major,
        devminor=e.rdev_minor,
        extra=extra,
    )


@dataclass(frozen=True)
class SealedPack:
    """A finished pack in the local spool, ready to upload."""

    path: str
    size: int
    sha256: str
    frames: tuple[Frame, ...] = ()


class Sealing:
    """A pack whose input is complete while zstd and gpg may still be working on its
    last bytes: ``wait()`` returns the spooled pack (its size, SHA-256 and frames),
    ``abort()`` drops it."""

    def __init__(self, proc: EncryptProcess, compressing: FrameCompressor) -> None:
        self._proc = proc
        self._z = compressing

    def wait(self) -> SealedPack:
        try:
            frames = self._z.frames()
        except BaseException:
            self._proc.abort()
            raise
        self._proc.finish()
        digest = hashlib.sha256()
        size = 0
        with open(self._proc.out_path, "rb") as f:
            while block := f.read(CHUNK):
                digest.update(block)
                size += len(block)
        return SealedPack(self._proc.out_path, size, digest.hexdigest(), frames)

    def abort(self) -> None:
        self._z.abandon()
        self._proc.abort()


class PackWriter:
    """Builds one pack in ``spool_dir``; ``add_*`` entries in clock order, then ``seal``.

    The tar stream is built here (headers by :mod:`blanket.tarheader`, file data written
    as it is read), gathered into blocks of about a megabyte and handed to a
    :class:`~blanket.frames.FrameCompressor`, which compresses them on its own thread in
    frames that start at member boundaries; the compressed bytes go by ``os.write`` into
    the stdin of one gpg process per pack, which writes the spool file. So reading and
    hashing (here), compressing (zstd's thread) and signing plus encrypting (gpg) run at
    the same time, and a finished pack's zstd and gpg go on while the next pack fills.
    ``compressors`` lends the zstd contexts (one run's packs share them).
    """

    def __init__(
        self,
        gpg: Gpg,
        spool_dir: str,
        *,
        level: int = 3,
        compressors: Compressors | None = None,
    ) -> None:
        fd, self.spool_path = tempfile.mkstemp(prefix="pack-", dir=spool_dir)
        os.close(fd)
        self._gpg = EncryptProcess(gpg, self.spool_path)
        self._z = FrameCompressor(self._gpg.write, compressors or Compressors(level))
        self._buf = bytearray()
        self._offset = 0  # bytes of tar stream so far
        self._frame_start = 0  # where the frame in progress started in the tar stream
        self._folder: bytes | None = None  # of the last member
        self.entries: list[Entry] = []
        self.content_bytes = 0

    @property
    def packed_bytes(self) -> int:
        """An estimate of the pack's size so far: what zstd has produced, plus the input
        it still holds (and ours not yet handed over) at the ratio seen so far."""
        z = self._z
        consumed, produced = z.consumed, z.produced
        pending = z.queued - consumed + len(self._buf)
        ratio = produced / consumed if consumed else 1.0
        return int(produced + pending * ratio)

    def _member(self, path: bytes) -> None:
        """Before the member of ``path``: end the frame in progress if it is time."""
        folder = path.rpartition(b"/")[0]
        if frame_ends_before(self._offset - self._frame_start, folder, self._folder):
            self._flush_buf()
            self._z.end_frame(len(self.entries))
            self._frame_start = self._offset
        self._folder = folder

    def _put(self, data: bytes | bytearray | memoryview) -> None:
        """Append bytes to the tar stream."""
        self._offset += len(data)
        if len(data) >= BATCH:
            self._flush_buf()
            self._compress(data)
            return
        self._buf += data
        if len(self._buf) >= BATCH:
            self._flush_buf()

    def _flush_buf(self) -> None:
        if self._buf:
            self._compress(self._buf)
            self._buf.clear()

    def _compress(self, data: bytes | bytearray | memoryview) -> None:
        self._z.write(bytes(data))

    def _body(self, chunks: Iterable[bytes], size: int) -> None:
        """Exactly ``size`` bytes of member data from ``chunks``, then the padding."""
        done = 0
        for chunk in chunks:
            done += len(chunk)
            if done > size:
                raise ValueError(f"member data overran its declared size {size}")
            self._put(chunk)
        if done != size:
            raise ValueError(f"member data ended at {done} of its declared size {size}")
        self._put(bytes(-size % tarfile.BLOCKSIZE))

    def add_meta(self, e: Entry) -> None:
        """Add an entry that has no content: directory, symlink, hard link, special, marker."""
        if e.kind != model.DELETED:
            self._member(e.path)
            link = member_path(e.target) if e.kind == model.HARDLINK else None
            self._put(entry_header(e, member_path(e.path), linkname=link))
        self.entries.append(e)

    def add_file(self, e: Entry, data: Iterable[bytes]) -> Entry:
        """Add a regular file whose content ``data`` yields (only the data segments, in
        order, for a sparse entry). Returns the entry with its SHA-256 filled in; the
        logical content is hashed, holes included."""
        digest = hashlib.sha256()
        stored = sum(n for _, n in e.sparse) if e.sparse else e.size

        def hashed() -> Iterator[bytes]:
            pos = 0
            chunks = iter(data)
            segments = iter(e.sparse) if e.sparse else iter([(0, e.size)])
            for off, length in segments:
                _hash_zeros(digest, off - pos)
                left = length
                if left:
                    for chunk in chunks:
                        digest.update(chunk)
                        left -= len(chunk)
                        yield chunk
                        if left <= 0:
                            break
                pos = off + length
            _hash_zeros(digest, e.size - pos)

        self._member(e.path)
        if e.sparse:
            sparse_map = _sparse_map(e.sparse, e.size)
            extra = (
                (b"GNU.sparse.major", b"1"),
                (b"GNU.sparse.minor", b"0"),
                (b"GNU.sparse.name", member_path(e.path)),
                (b"GNU.sparse.realsize", b"%d" % e.size),
            )
            size = len(sparse_map) + stored
            self._put(entry_header(e, _sparse_dummy_path(e.path), size=size, extra=extra))
            self._body(_prepend(sparse_map, hashed()), size)
        else:
            self._put(entry_header(e, member_path(e.path), size=stored))
            self._body(hashed(), stored)
        self.content_bytes += stored
        done = model.evolve(e, sha256=digest.hexdigest())
        self.entries.append(done)
        return done

    def add_read(self, e: Entry, chunks: list[bytes]) -> Entry:
        """:meth:`add_file` for content read whole beforehand (a small file): the same
        member and entry, with less work per file."""
        if e.sparse:
            return self.add_file(e, iter(chunks))
        size = sum(map(len, chunks))
        if size != e.size:
            raise ValueError(f"member data of {size} bytes for a file of {e.size}")
        digest = hashlib.sha256()
        self._member(e.path)
        self._put(entry_header(e, member_path(e.path), size=size))
        for chunk in chunks:
            digest.update(chunk)
            self._put(chunk)
        self._put(_ZEROS[: -size % tarfile.BLOCKSIZE])
        self.content_bytes += size
        done = model.evolve(e, sha256=digest.hexdigest())
        self.entries.append(done)
        return done

    def discard_last(self) -> None:
        """Take the last entry out of the pack's index (a file torn while it was read):
        its member stays in the tar, unindexed, and nothing reads it."""
        self.entries.pop()

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

        self._member(e.path)
        self._put(entry_header(e, part_member_path(e.path, e.offset), size=e.length))
        self._body(hashed(), e.length)
        self.content_bytes += e.length
        done = model.evolve(e, sha256=digest.hexdigest())
        self.entries.append(done)
        return done

    def finish(self, index_text: bytes) -> Sealing:
        """Append the index member and end the tar and zstd streams; zstd and gpg may
        still be working when this returns (see :class:`Sealing`)."""
        self._put(tarheader.header(INDEX_MEMBER.encode(), tarfile.REGTYPE, size=len(index_text)))
        self._body([index_text], len(index_text))
        self._put(bytes(2 * tarfile.BLOCKSIZE))  # end of archive, then pad the record
        self._put(bytes(-self._offset % tarfile.RECORDSIZE))
        self._flush_buf()
        try:
            self._z.finish()
        except BaseException:
            self._z.abandon()
            self._gpg.abort()
            raise
        return Sealing(self._gpg, self._z)

    def seal(self, index_text: bytes) -> SealedPack:
        """Append the index member, finish every stream and return the spooled pack."""
        return self.finish(index_text).wait()

    def abort(self) -> None:
        """Give up on this pack and remove its spool file."""
        self._z.abandon()
        self._gpg.abort()


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


def _sparse_dummy_path(path: bytes) -> bytes:
    head, _, tail = member_path(path).rpartition(b"/")
    return b"%s/GNUSparseFile.0/%s" % (head, tail)
