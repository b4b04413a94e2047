"""One backup run: continue the clock from its pointer, record what changed, commit packs.

The run walks the source from the clock pointer, compares every path with the state that
replaying the committed layers gives (``blanket.changes``), writes what changed into packs
and commits each pack as soon as it is sealed (size, time or entry-count target). It
stops at the end of the tree (the pass, and so the layer, is complete), or earlier when
asked to (time or byte budget, a signal); either way everything sealed is committed.
"""

from __future__ import annotations

import hashlib
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace

from blanket import model, reading, scan
from blanket.changes import Delete, Emit, Keep, Seen, diff
from blanket.committer import Committer, Sealed
from blanket.errors import BlanketError, UsageError
from blanket.events import (
    FileStored,
    Listener,
    PackCommitted,
    Position,
    Reading,
    SourceWarning,
    ignore,
)
from blanket.exclude import Excluder
from blanket.expiry import current_expire_below
from blanket.frames import Compressors
from blanket.gc import GcResult, collect
from blanket.indexfmt import IndexHeader, escape, render_index, unescape
from blanket.lock import RepoLock
from blanket.members import inner_index
from blanket.merge import Located, replay
from blanket.model import Entry
from blanket.packer import PackWriter
from blanket.repo import Repository
from blanket.walker import walk

MiB = 1 << 20
SMALL_FILE = 4 * MiB  # read whole before packing, so a torn copy never reaches the tar
MIN_PART = 64 << 10


@dataclass
class BackupOptions:
    pack_size: int = 32 * MiB
    pack_seconds: float = 60.0
    pack_entries: int = 50_000
    excludes: list[str] = field(default_factory=list)
    max_seconds: float | None = None
    max_bytes: int | None = None
    level: int = 3
    cap: int | None = None  # keep the repository under this many bytes (expiry + gc)
    keep_history: bool = False  # gc copies forward the versions expired layers would lose


@dataclass
class BackupResult:
    layer: int
    packs: int = 0
    files: int = 0
    bytes_read: int = 0
    deleted: int = 0
    complete: bool = False
    stopped_early: bool = False
    pointer: bytes | None = None
    coverage: float | None = None  # share of the tree the pass has covered (estimate)
    warnings: list[tuple[bytes, str]] = field(default_factory=list)
    expire_below: int = 0
    gc: GcResult | None = None


@dataclass
class _Position:
    layer: int
    layer_pack: int
    pointer: bytes | None


def _position(repo: Repository) -> _Position:
    """Where the clock stands: the store's last commit, or the local scan pointer if the
    pass got further without anything to commit."""
    if not repo.packs:
        pos = _Position(0, 0, None)
    else:
        last = repo.packs[-1]
        if last.complete:
            pos = _Position(last.layer + 1, 0, None)
        else:
            pos = _Position(last.layer, last.layer_pack + 1, last.clock_to)
    progress = repo.state.load()
    if progress.scan_layer == pos.layer and progress.scan_pointer:
        scanned = unescape(progress.scan_pointer)
        if pos.pointer is None or model.clock_key(scanned) > model.clock_key(pos.pointer):
            pos.pointer = scanned
    return pos


def _check_source(repo: Repository, source: bytes, host: str) -> None:
    if not repo.headers:
        return
    last = repo.headers[-1]
    if (last.source_path, last.source_host) != (source, host):
        raise UsageError(
            f"this repository backs up {last.source_host}:{os.fsdecode(last.source_path)}, "
            f"not {host}:{os.fsdecode(source)}; use one repository per source"
        )


class _Run:
    """The state of one run; ``go`` does the work."""

    def __init__(
        self,
        repo: Repository,
        source: bytes,
        opts: BackupOptions,
        listener: Listener,
        stop: threading.Event,
        clock: Callable[[], int],
    ) -> None:
        self.repo, self.source, self.opts = repo, source, opts
        self.listener, self.stop, self.clock = listener, stop, clock
        self.host = socket.gethostname()
        self.pos = _position(repo)
        self.result = BackupResult(layer=self.pos.layer)
        self.started = time.monotonic()
        self.since_floor = max((h.created for h in repo.headers), default=0)
        self.links: dict[tuple[int, int], bytes] = {}  # (dev, ino) -> first path of group
        if self.pos.pointer is not None:  # resuming a pass: groups met by earlier runs
            saved = repo.state.load_links(self.pos.layer)
            self.links = {k: unescape(v) for k, v in saved.items()}
        self.leaders: dict[bytes, tuple[int, int]] = {}
        self.pack: PackWriter | None = None
        self.pack_started = 0.0
        self.pack_from: bytes | None = self.pos.pointer
        self.last_path: bytes | None = self.pos.pointer
        self.on_commit: Callable[[], None] = lambda: None
        self.part_size = max(opts.pack_size, MIN_PART)
        self.pending_parts = self._pending_parts()
        self.stopping = False
        self.expire_below = current_expire_below(repo.headers)
        self.shown_at = 0.0  # when a Position event was last sent
        self.seq = repo.next_seq()  # of the next pack this run seals
        self.zstd = Compressors(opts.level)  # zstd contexts, lent to the run's packs in turn
        self.committer = Committer(self.commit, self.record)

    def _pending_parts(self) -> dict[bytes, list[Entry]]:
        """Parts of a split file committed by a run that stopped inside that file: they
        sit in the trailing commits of this layer that did not move the clock on."""
        found: dict[bytes, list[Entry]] = {}
        if self.pos.pointer is None:
            return found
        for h in reversed(self.repo.packs):
            if h.layer != self.pos.layer or h.clock_to != self.pos.pointer:
                break
            for e in self.repo.entries(h.seq):
                if e.kind == model.PART:
                    found.setdefault(e.path, []).append(e)
        return found

    def now(self) -> int:
        """Entry times never go backwards, even if the system clock does."""
        t = max(self.clock(), self.since_floor + 1)
        self.since_floor = t
        return t

    def warn(self, path: bytes, message: str) -> None:
        self.result.warnings.append((path, message))
        self.listener(SourceWarning(path, message))

    # --- the walk side ---------------------------------------------------------------

    def seen(self, excluder: Excluder) -> Iterator[Seen]:
        errors: list[bytes] = []

        def on_error(path: bytes, exc: OSError) -> None:
            errors.append(path)
            self.warn(path, exc.strerror or str(exc))

        for item in walk(self.source, after=self.pos.pointer, excluder=excluder, on_error=on_error):
            yield from (Seen(p, None, opaque=True) for p in errors if p != item.path)
            errors.clear()
            try:
                entry = scan.entry_for(self.source, item, since=self.now())
            except OSError as exc:
                self.warn(item.path, exc.strerror or str(exc))
                yield Seen(item.path, None, opaque=True)
                continue
            if entry is None:
                continue
            yield Seen(item.path, self._linked(entry, item.st), opaque=item.listing_failed)
        yield from (Seen(p, None, opaque=True) for p in errors)

    def _linked(self, entry: Entry, st: os.stat_result) -> Entry:
        """Store a hard-linked file once: later paths of the group point at the first
        (dropped from the map if its content could not be stored)."""
        if entry.kind != model.FILE or st.st_nlink < 2:
            return entry
        group = (st.st_dev, st.st_ino)
        first = self.links.setdefault(group, entry.path)
        if first == entry.path:
            self.leaders[entry.path] = group
            return entry
        return model.evolve(entry, kind=model.HARDLINK, target=first, sparse=())

    def prior(self) -> Iterator[Located]:
        after = b"" if self.pos.pointer is None else model.clock_key(self.pos.pointer)
        for located in replay(self.repo.layer_streams()):
            if self.pos.pointer is None or located.entry.key > after:
                yield located

    # --- the pack side ---------------------------------------------------------------

    def writer(self) -> PackWriter:
        if self.pack is None:
            self.pack = PackWriter(
                self.repo.gpg, str(self.repo.state.spool_dir), compressors=self.zstd
            )
            self.pack_started = time.monotonic()
        return self.pack

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
            group = self.leaders.pop(e.path, None)
            if group is not None:  # later names of this file must not point at it
                del self.links[group]
            return
        self.result.files += 1
        if not stored.parts:
            self.result.bytes_read += stored.size
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
            self.writer().entries.pop()  # the torn member stays in the tar, unindexed
            return torn[0]
        return stored

    def _pack_split(self, fd: int, e: Entry) -> Entry | str:
        """Store a file larger than a pack as parts in consecutive packs, each committed
        as it fills; after an interruption, continue after the last committed part."""
        offset, count, since, whole = self._resume_parts(fd, e)
        while offset < e.size:
            length = min(self.part_size, e.size - offset)
            if self.pack is not None and self.pack.packed_bytes + length > self.opts.pack_size:
                self.seal(complete=False)  # one part per pack, not two that overflow it
            torn: list[str] = []
            part = model.evolve(
                e, kind=model.PART, offset=offset, length=length, since=since, sha256=""
            )
            chunks = reading.read_range(fd, offset, length, torn)
            data = _hashing(self._heartbeat(e.path, e.size, chunks, offset), whole)
            self.writer().add_part(part, data)
            if torn or not reading.same(os.fstat(fd), e):
                self.writer().entries.pop()
                return torn[0] if torn else reading.CHANGED
            offset += length
            count += 1
            self.result.bytes_read += length
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
        p = self.pack
        return p is not None and (
            p.packed_bytes >= self.opts.pack_size
            or len(p.entries) >= self.opts.pack_entries
            or time.monotonic() - self.pack_started >= self.opts.pack_seconds
        )

    def seal(self, *, complete: bool, wait: bool = False) -> None:
        """Finish the pack in hand and queue it for commit; ``wait`` until everything
        queued is committed."""
        pack = self.writer() if complete else self.pack
        if pack is not None:
            self.pack = None
            header = IndexHeader(
                repository=self.repo.config.id,
                seq=self.seq,
                layer=self.pos.layer,
                layer_pack=self.pos.layer_pack,
                full=self.pos.layer == 0,
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
            self.pos.layer_pack += 1
            self.pack_from = self.last_path
            links = dict(self.links) if self.links else {}
            sealed = Sealed(sealing, header, pack.entries, links)
            self.committed(self.committer.submit(sealed))
        if wait:
            self.committed(self.committer.done(wait_for=-1))

    def commit(self, sealed: Sealed) -> IndexHeader:
        """On the committer thread: wait for gpg, then store the pack and its index."""
        if self.repo.next_seq() != sealed.header.seq:
            sealed.sealing.abort()
            raise BlanketError(f"internal error: pack {sealed.header.seq} out of order")
        return self.repo.commit(sealed.sealing.wait(), sealed.header, sealed.entries)

    def record(self, final: IndexHeader, sealed: Sealed) -> None:
        """On the committer thread, after a commit: the clock pointer and link groups."""
        self.save_scan(pointer=final.clock_to, links=sealed.links)
        self.on_commit()

    def committed(self, finals: list[IndexHeader]) -> None:
        """On the run thread: count and announce commits the committer finished."""
        for final in finals:
            self.result.packs += 1
            self.listener(
                PackCommitted(
                    final.seq, final.layer, final.entries, final.data_size, final.clock_to
                )
            )

    def save_scan(
        self,
        *,
        done: bool = False,
        pointer: bytes | None = None,
        links: dict[tuple[int, int], bytes] | None = None,
    ) -> None:
        """Record in the local state how far the pass got (the last path, or
        ``pointer``) and the hard-link groups met so far (or ``links``)."""
        links = self.links if links is None else links
        pointer = self.last_path if pointer is None else pointer
        saved = {} if done else {k: escape(v) for k, v in links.items()}
        self.repo.state.save_links(self.pos.layer, saved)
        progress = self.repo.state.load()
        progress.scan_layer = self.pos.layer
        progress.scan_pointer = "" if done or pointer is None else escape(pointer)
        self.repo.state.save(progress)

    def out_of_budget(self) -> bool:
        o = self.opts
        return (
            self.stop.is_set()
            or (o.max_seconds is not None and time.monotonic() - self.started >= o.max_seconds)
            or (o.max_bytes is not None and self.result.bytes_read >= o.max_bytes)
        )

    # --- the run ---------------------------------------------------------------------

    def go(self) -> BackupResult:
        excluder = Excluder(self.opts.excludes)
        try:
            changes = diff(
                self.seen(excluder),
                self.prior(),
                full=self.pos.layer == 0,
                expire_below=self.expire_below,
            )
            for change in changes:
                if isinstance(change, Emit):
                    e = change.entry
                    if e.kind == model.FILE:
                        self.store_file(e)
                    else:
                        self.writer().add_meta(e)
                    if not self.stopping:  # a split file stopped midway is not done
                        self.last_path = e.path
                elif isinstance(change, Delete):
                    self.writer().add_meta(Entry(model.DELETED, change.path, since=self.now()))
                    self.result.deleted += 1
                    self.last_path = change.path
                elif isinstance(change, Keep):
                    self.last_path = change.path
                if self.due():
                    self.seal(complete=False)
                else:
                    self.committed(self.committer.done())
                if time.monotonic() - self.shown_at >= 0.1 and self.last_path is not None:
                    self.shown_at = time.monotonic()
                    self.listener(Position(self.last_path))
                if self.stopping or self.out_of_budget():
                    self.result.stopped_early = True
                    self.seal(complete=False, wait=True)
                    self.save_scan()
                    break
            else:
                self.seal(complete=self.pack is not None or self.pos.layer_pack > 0, wait=True)
                self.result.complete = True
                self.save_scan(done=True)
        finally:
            if self.pack is not None:
                self.pack.abort()
            self.committer.close()
            self.zstd.clear()  # free zstd's contexts now, not when a traceback lets go
        self.result.pointer = self.last_path
        self.result.coverage = self.coverage()
        return self.result

    def coverage(self) -> float | None:
        """How much of the pass is done, estimated as the share of the replayed tree at
        or before the clock; unknown during the first pass (nothing to compare with)."""
        if self.result.complete:
            return 1.0
        if self.pos.layer == 0 or self.last_path is None:
            return None
        key = model.clock_key(self.last_path)
        total = done = 0
        for located in replay(self.repo.layer_streams()):
            total += 1
            done += located.entry.key <= key
        return done / total if total else None


def run_backup(
    repo: Repository,
    source: str,
    opts: BackupOptions,
    *,
    listener: Listener = ignore,
    stop: threading.Event | None = None,
    clock: Callable[[], int] = time.time_ns,
) -> BackupResult:
    """Back ``source`` up into ``repo``, continuing its file clock."""
    src = os.fsencode(os.path.realpath(source))
    if not os.path.isdir(src):
        raise UsageError(f"source {source} is not a directory; give the folder to back up")
    with RepoLock(repo.backend, repo.state.dir) as lock:
        repo.refresh()
        _check_source(repo, src, socket.gethostname())
        repo.state.clean_spool()
        repo.clean_leftovers()
        run = _Run(repo, src, opts, listener, stop or threading.Event(), clock)
        run.on_commit = lock.renew
        if opts.cap is not None:
            plan = collect(repo, cap=opts.cap, dry_run=True, keep_history=opts.keep_history).plan
            if not plan.fits:
                raise BlanketError(plan.message)
            run.expire_below = max(run.expire_below, plan.expire_below)
        result = run.go()
        result.expire_below = run.expire_below
        if opts.cap is not None and result.complete:
            result.gc = collect(
                repo, cap=opts.cap, keep_history=opts.keep_history, progress=lock.renew
            )
            if result.gc.total_after > opts.cap:
                raise BlanketError(
                    f"the repository takes {result.gc.total_after} bytes, over the cap of "
                    f"{opts.cap}, after this pass (everything was committed); "
                    + ("; ".join(result.gc.warnings) or "raise --cap")
                )
        return result


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
