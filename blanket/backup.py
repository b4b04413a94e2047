"""One backup run: continue the clock from its pointer, record what changed, commit packs.

The run walks the source from the clock pointer, compares every path with the state that
replaying the committed layers gives (``blanket.changes``), writes what changed into packs
and commits each pack as soon as it is sealed (size, time or entry-count target). It
stops at the end of the tree (the pass, and so the layer, is complete), or earlier when
asked to (time or byte budget, a signal); either way everything sealed is committed.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace

from blanket import model, scan
from blanket.changes import Delete, Emit, Keep, Seen, diff
from blanket.errors import UsageError
from blanket.events import FileStored, Listener, PackCommitted, SourceWarning, ignore
from blanket.exclude import Excluder
from blanket.indexfmt import IndexHeader, escape, render_index, unescape
from blanket.lock import RepoLock
from blanket.merge import replay
from blanket.model import Entry
from blanket.packer import PackWriter
from blanket.repo import Repository
from blanket.walker import walk

MiB = 1 << 20
SMALL_FILE = 4 * MiB


@dataclass
class BackupOptions:
    pack_size: int = 32 * MiB
    pack_seconds: float = 60.0
    pack_entries: int = 50_000
    excludes: list[str] = field(default_factory=list)
    max_seconds: float | None = None
    max_bytes: int | None = None
    level: int = 3


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
    warnings: list[tuple[bytes, str]] = field(default_factory=list)


@dataclass
class _Position:
    layer: int
    layer_pack: int
    pointer: bytes | None


def _position(repo: Repository) -> _Position:
    """Where the clock stands: the store's last commit, or the local scan pointer if the
    pass got further without anything to commit."""
    if not repo.headers:
        pos = _Position(0, 0, None)
    else:
        last = repo.headers[-1]
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
        self.links: dict[tuple[int, int], bytes] = {}
        self.pack: PackWriter | None = None
        self.pack_started = 0.0
        self.pack_from: bytes | None = self.pos.pointer
        self.last_path: bytes | None = self.pos.pointer
        self.on_commit: Callable[[], None] = lambda: None

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
        """Store a hard-linked file once: later paths of the group point at the first."""
        if entry.kind != model.FILE or st.st_nlink < 2:
            return entry
        first = self.links.setdefault((st.st_dev, st.st_ino), entry.path)
        if first == entry.path:
            return entry
        return replace(entry, kind=model.HARDLINK, target=first, sparse=())

    def prior(self) -> Iterator[Entry]:
        after = b"" if self.pos.pointer is None else model.clock_key(self.pos.pointer)
        for located in replay(self.repo.layer_streams()):
            if self.pos.pointer is None or located.entry.key > after:
                yield located.entry

    # --- the pack side ---------------------------------------------------------------

    def writer(self) -> PackWriter:
        if self.pack is None:
            self.pack = PackWriter(
                self.repo.gpg, str(self.repo.state.spool_dir), level=self.opts.level
            )
            self.pack_started = time.monotonic()
        return self.pack

    def store_file(self, e: Entry) -> None:
        try:
            fd = scan.open_for_read(self.source, e.path)
        except OSError as exc:
            self.warn(e.path, f"cannot read: {exc.strerror or exc}")
            return
        try:
            if e.size <= SMALL_FILE:
                chunks = _read_settled(fd, e)
                if chunks is None:
                    self.warn(e.path, "changed while being read; will try again next pass")
                    return
                stored = self.writer().add_file(e, iter(chunks))
            else:
                torn: list[bool] = []
                stored = self.writer().add_file(e, _stream(fd, e, torn))
                if torn:
                    self.writer().entries.pop()
                    self.warn(e.path, "changed while being read; will try again next pass")
                    return
        except OSError as exc:
            self.warn(e.path, f"cannot read: {exc.strerror or exc}")
            return
        finally:
            os.close(fd)
        self.result.files += 1
        self.result.bytes_read += stored.size
        self.listener(FileStored(e.path, stored.size))

    def due(self) -> bool:
        p = self.pack
        return p is not None and (
            p.packed_bytes >= self.opts.pack_size
            or len(p.entries) >= self.opts.pack_entries
            or time.monotonic() - self.pack_started >= self.opts.pack_seconds
        )

    def seal(self, *, complete: bool) -> None:
        pack = self.writer() if complete else self.pack
        if pack is None:
            return
        header = IndexHeader(
            repository=self.repo.config.id,
            seq=len(self.repo.headers),
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
            prev_index_sha256=self.repo.last_hash(),
        )
        sealed = pack.seal(render_index(header, pack.entries, with_data=False))
        self.pack = None
        final = self.repo.commit(sealed, header, pack.entries)
        self.pos.layer_pack += 1
        self.pack_from = self.last_path
        self.result.packs += 1
        self.listener(
            PackCommitted(final.seq, final.layer, final.entries, final.data_size, final.clock_to)
        )
        self.save_scan()
        self.on_commit()

    def save_scan(self, *, done: bool = False) -> None:
        progress = self.repo.state.load()
        progress.scan_layer = self.pos.layer
        progress.scan_pointer = "" if done or self.last_path is None else escape(self.last_path)
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
            for change in diff(self.seen(excluder), self.prior(), full=self.pos.layer == 0):
                if isinstance(change, Emit):
                    e = change.entry
                    if e.kind == model.FILE:
                        self.store_file(e)
                    else:
                        self.writer().add_meta(e)
                    self.last_path = e.path
                elif isinstance(change, Delete):
                    self.writer().add_meta(Entry(model.DELETED, change.path, since=self.now()))
                    self.result.deleted += 1
                    self.last_path = change.path
                elif isinstance(change, Keep):
                    self.last_path = change.path
                if self.due():
                    self.seal(complete=False)
                if self.out_of_budget():
                    self.result.stopped_early = True
                    self.seal(complete=False)
                    self.save_scan()
                    break
            else:
                if self.pack is not None or self.pos.layer_pack > 0:
                    self.seal(complete=True)
                self.result.complete = True
                self.save_scan(done=True)
        finally:
            if self.pack is not None:
                self.pack.abort()
        self.result.pointer = self.last_path
        return self.result


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
        run = _Run(repo, src, opts, listener, stop or threading.Event(), clock)
        run.on_commit = lock.renew
        return run.go()


# --- reading file content ------------------------------------------------------------


def _segments(e: Entry) -> list[tuple[int, int]]:
    return list(e.sparse) if e.sparse else [(0, e.size)]


def _pread_all(fd: int, e: Entry, torn: list[bool]) -> Iterator[bytes]:
    """The data segments' bytes in chunks of at most 1 MiB; a file that shrank is padded
    with zeros and flagged in ``torn``."""
    for off, length in _segments(e):
        pos, end = off, off + length
        while pos < end:
            chunk = os.pread(fd, min(MiB, end - pos), pos)
            if not chunk:
                torn.append(True)
                chunk = bytes(min(MiB, end - pos))
            pos += len(chunk)
            yield chunk


def _same(st: os.stat_result, e: Entry) -> bool:
    return (st.st_size, st.st_mtime_ns, st.st_ctime_ns) == (e.size, e.mtime_ns, e.ctime_ns)


def _read_settled(fd: int, e: Entry) -> list[bytes] | None:
    """A small file's content, or None if it is not the version ``e`` describes."""
    if not _same(os.fstat(fd), e):
        return None
    torn: list[bool] = []
    chunks = list(_pread_all(fd, e, torn))
    if torn or not _same(os.fstat(fd), e):
        return None
    return chunks


def _stream(fd: int, e: Entry, torn: list[bool]) -> Iterator[bytes]:
    if not _same(os.fstat(fd), e):
        torn.append(True)
    yield from _pread_all(fd, e, torn)
    if not _same(os.fstat(fd), e):
        torn.append(True)
