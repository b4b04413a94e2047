"""The pack assembler of a backup run: what changed goes into packs, and packs are sealed.

One job: members. It reads each file to store (a torn or unreadable one is a warning,
its half-written member discarded through ``PackWriter.discard_last``), splits a file
larger than a pack into parts in consecutive packs (and resumes one an interrupted run
left halfway), and seals a pack when its size, entry-count or time target is reached
(``due``), handing it to the commit sink (``blanket.committer.CommitSink``). The pass
driver (``blanket.backup``) tells it how far the clock got (``reached``) and whether the
run is out of budget; nothing else is shared.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import replace

from blanket import model, reading, scan
from blanket.committer import CommitSink, Sealed
from blanket.events import FileStored, Listener, Reading
from blanket.frames import Compressors
from blanket.indexfmt import IndexHeader, escape, render_index
from blanket.members import inner_index
from blanket.model import Entry
from blanket.packer import PackWriter
from blanket.repo import Repository

MiB = 1 << 20
SMALL_FILE = 4 * MiB  # read whole before packing, so a torn copy never reaches the tar
MIN_PART = 64 << 10


class LinkGroups:
    """Hard-link groups met in this layer's pass: a later name of a file points at the
    first one stored. Resumed from the local state when a run continues a pass."""

    def __init__(self, saved: dict[tuple[int, int], bytes]) -> None:
        self.first: dict[tuple[int, int], bytes] = dict(saved)  # (dev, ino) -> first path
        self._leaders: dict[bytes, tuple[int, int]] = {}

    def linked(self, entry: Entry, st: os.stat_result) -> Entry:
        """``entry``, or a hard link to the first name of its group met before."""
        if entry.kind != model.FILE or st.st_nlink < 2:
            return entry
        group = (st.st_dev, st.st_ino)
        first = self.first.setdefault(group, entry.path)
        if first == entry.path:
            self._leaders[entry.path] = group
            return entry
        return model.evolve(entry, kind=model.HARDLINK, target=first, sparse=())

    def forget(self, path: bytes) -> None:
        """The content of ``path`` could not be stored: later names must not point at it."""
        group = self._leaders.pop(path, None)
        if group is not None:
            del self.first[group]

    def escaped(self) -> dict[tuple[int, int], str]:
        return {k: escape(v) for k, v in self.first.items()}


class PackAssembler:
    """Members into packs, packs sealed and handed to ``sink``; see the module doc."""

    def __init__(
        self,
        repo: Repository,
        source: bytes,
        *,
        layer: int,
        layer_pack: int,
        pointer: bytes | None,
        expire_below: int,
        host: str,
        pack_size: int,
        pack_entries: int,
        pack_seconds: float,
        level: int,
        links: LinkGroups,
        sink: CommitSink,
        now: Callable[[], int],
        warn: Callable[[bytes, str], None],
        out_of_budget: Callable[[], bool],
        listener: Listener,
    ) -> None:
        self.repo, self.source = repo, source
        self.layer, self.layer_pack = layer, layer_pack
        self.expire_below, self.host = expire_below, host
        self.pack_size, self.pack_entries, self.pack_seconds = pack_size, pack_entries, pack_seconds
        self.links, self.sink = links, sink
        self.now, self.warn, self.out_of_budget, self.listener = now, warn, out_of_budget, listener
        self.pack: PackWriter | None = None
        self.pack_started = 0.0
        self.pack_from: bytes | None = pointer
        self.last_path: bytes | None = pointer  # how far the clock got (``reached``)
        self.part_size = max(pack_size, MIN_PART)
        self.pending_parts = self._pending_parts(pointer)
        self.stopping = False  # a split file stopped midway: the run must stop
        self.seq = repo.next_seq()  # of the next pack sealed
        self.files = 0
        self.bytes_read = 0
        self.zstd = Compressors(level)  # zstd contexts, lent to the run's packs in turn

    def _pending_parts(self, pointer: bytes | None) -> dict[bytes, list[Entry]]:
        """Parts of a split file committed by a run that stopped inside that file: they
        sit in the trailing commits of this layer that did not move the clock on."""
        found: dict[bytes, list[Entry]] = {}
        if pointer is None:
            return found
        for h in reversed(self.repo.packs):
            if h.layer != self.layer or h.clock_to != pointer:
                break
            for e in self.repo.entries(h.seq):
                if e.kind == model.PART:
                    found.setdefault(e.path, []).append(e)
        return found

    def reached(self, path: bytes) -> None:
        """The clock has got to ``path``: everything up to it is recorded or kept."""
        self.last_path = path

    def writer(self) -> PackWriter:
        if self.pack is None:
            self.pack = PackWriter(
                self.repo.gpg, str(self.repo.state.spool_dir), compressors=self.zstd
            )
            self.pack_started = time.monotonic()
        return self.pack

    def add_meta(self, e: Entry) -> None:
        self.writer().add_meta(e)

    def store_file(self, e: Entry) -> None:
        """Read and pack one file; per-file trouble is a warning and the run goes on."""
        try:
            fd = scan.open_for_read(self.source, e.path)
        except OSError as exc:
            stored: Entry | str = f"cannot read: {exc.strerror or exc}"
        else:
            try:
                stored = self._pack_content(fd, e)
            finally:
                os.close(fd)
        if isinstance(stored, str):
            if not self.stopping:
                self.warn(e.path, stored)
            self.links.forget(e.path)
            return
        self.files += 1
        if not stored.parts:
            self.bytes_read += stored.size
        self.listener(FileStored(e.path, stored.size))

    def _pack_content(self, fd: int, e: Entry) -> Entry | str:
        """The stored entry, or why the file could not be stored."""
        if not e.sparse and e.size > self.part_size:
            return self._pack_split(fd, e)
        if e.size <= SMALL_FILE:
            chunks = reading.read_settled(fd, e)
            if chunks == reading.CHANGED and not e.sparse:  # changed since the walk: retry
                e = _restat(e, os.fstat(fd), self.now())
                chunks = reading.read_settled(fd, e)
            return chunks if isinstance(chunks, str) else self.writer().add_read(e, chunks)
        torn: list[str] = []
        stored = self.writer().add_file(
            e, self._heartbeat(e.path, e.size, reading.stream(fd, e, torn), 0)
        )
        if torn:
            self.writer().discard_last()  # the torn member stays in the tar, unindexed
            return torn[0]
        return stored

    def _pack_split(self, fd: int, e: Entry) -> Entry | str:
        """Store a file larger than a pack as parts in consecutive packs, each committed
        as it fills; after an interruption, continue after the last committed part."""
        offset, count, since, whole = self._resume_parts(fd, e)
        while offset < e.size:
            length = min(self.part_size, e.size - offset)
            if self.pack is not None and self.pack.packed_bytes + length > self.pack_size:
                self.seal(complete=False)  # one part per pack, not two that overflow it
            torn: list[str] = []
            part = model.evolve(
                e, kind=model.PART, offset=offset, length=length, since=since, sha256=""
            )
            chunks = reading.read_range(fd, offset, length, torn)
            data = _hashing(self._heartbeat(e.path, e.size, chunks, offset), whole)
            self.writer().add_part(part, data)
            if torn or not reading.same(os.fstat(fd), e):
                self.writer().discard_last()
                return torn[0] if torn else reading.CHANGED
            offset += length
            count += 1
            self.bytes_read += length
            if self.due() or (offset < e.size and self.out_of_budget()):
                self.seal(complete=False)
            if offset < e.size and self.out_of_budget():
                self.stopping = True
                return "stopped inside this file; the next run continues it"
        final = model.evolve(e, sha256=whole.hexdigest(), parts=count, since=since)
        self.writer().note(final)
        return final

    def _heartbeat(
        self, path: bytes, size: int, chunks: Iterator[bytes], done: int
    ) -> Iterator[bytes]:
        for chunk in chunks:
            done += len(chunk)
            self.listener(Reading(path, done, size))
            yield chunk

    def _resume_parts(self, fd: int, e: Entry) -> tuple[int, int, int, hashlib._Hash]:
        """Parts of ``e`` that an interrupted run committed, checked against the file as
        it is now (re-read and hashed locally; nothing is downloaded). Returns where to
        go on: ``(offset, parts so far, since of the version, hash of what is before)``."""
        fresh = (0, 0, e.since, hashlib.sha256())
        parts = self.pending_parts.get(e.path, [])
        if not parts:
            return fresh
        since = parts[-1].since
        chain = sorted((p for p in parts if p.since == since), key=lambda p: p.offset)
        whole = hashlib.sha256()
        offset = 0
        for p in chain:
            stat_now = (e.size, e.mtime_ns, e.ctime_ns, e.ino)
            if (p.size, p.mtime_ns, p.ctime_ns, p.ino) != stat_now or p.offset != offset:
                return fresh
            digest = hashlib.sha256()
            torn: list[str] = []
            for chunk in reading.read_range(fd, p.offset, p.length, torn):
                digest.update(chunk)
                whole.update(chunk)
            if torn or digest.hexdigest() != p.sha256:
                return fresh
            offset += p.length
        return offset, len(chain), since, whole

    def due(self) -> bool:
        """The seal policy: the pack in hand reached its size, entry or time target."""
        p = self.pack
        return p is not None and (
            p.packed_bytes >= self.pack_size
            or len(p.entries) >= self.pack_entries
            or time.monotonic() - self.pack_started >= self.pack_seconds
        )

    def seal(self, *, complete: bool, wait: bool = False) -> None:
        """Finish the pack in hand (a complete pass always seals one, empty or not) and
        hand it to the sink; ``wait`` until everything handed over is committed."""
        pack = self.writer() if complete else self.pack
        if pack is not None:
            self.pack = None
            header = IndexHeader(
                repository=self.repo.config.id,
                seq=self.seq,
                layer=self.layer,
                layer_pack=self.layer_pack,
                full=self.layer == 0,
                clock_from=self.pack_from,
                clock_to=self.last_path if self.last_path is not None else model.ROOT,
                complete=complete,
                created=self.now(),
                source_host=self.host,
                source_path=self.source,
                entries=len(pack.entries),
                prev_index_sha256="",  # filled in at commit; not in the pack's copy
                expire_below=self.expire_below,
            )
            sealing = pack.finish(inner_index(render_index(header, pack.entries, with_data=False)))
            self.seq += 1
            self.layer_pack += 1
            self.pack_from = self.last_path
            self.sink.submit(Sealed(sealing, header, pack.entries, self.links.escaped()))
        if wait:
            self.sink.collect(wait=True)

    def abort(self) -> None:
        """Abort the pack in hand, if any (an interrupted run)."""
        if self.pack is not None:
            self.pack.abort()
            self.pack = None

    def close(self) -> None:
        """Free zstd's contexts now, not when a traceback lets go (call it once the sink
        has closed: sealed packs may still be compressing until their commit)."""
        self.zstd.clear()


def _hashing(chunks: Iterator[bytes], digest: hashlib._Hash) -> Iterator[bytes]:
    for chunk in chunks:
        digest.update(chunk)
        yield chunk


def _restat(e: Entry, st: os.stat_result, since: int) -> Entry:
    """``e`` brought up to date with a fresh ``fstat`` (for the one retry of a file that
    changed between the walk and the read)."""
    return replace(
        e, size=st.st_size, mtime_ns=st.st_mtime_ns, ctime_ns=st.st_ctime_ns, since=since
    )
