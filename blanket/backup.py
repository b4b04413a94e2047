"""One backup run: continue the clock from its pointer, record what changed, commit packs.

A run is three parts with one job each, joined by explicit arguments:

* the pass driver (``_Pass``, here): walks the source from the clock pointer, compares
  every path with the state that replaying the committed layers gives (a merge-join,
  ``blanket.changes.diff``, which hands each path's prior version to ``scan``), keeps
  the budgets (time, bytes, a signal) and stops;
* the pack assembler (``blanket.assemble.PackAssembler``): members, split files, and
  when to seal a pack (size, time or entry-count target);
* the commit sink (``blanket.committer.CommitSink``): commits each sealed pack in order
  on its own thread, with the local state and the lease.

It stops at the end of the tree (the pass, and so the layer, is complete), or earlier
when asked to; either way everything sealed is committed. The run replays the layers
once: that replay feeds the merge-join and then gives the pass's coverage.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from blanket import model, scan
from blanket.assemble import LinkGroups, PackAssembler
from blanket.changes import Delete, Emit, Keep, Seen, diff
from blanket.committer import CommitSink
from blanket.errors import BlanketError, UsageError
from blanket.events import Listener, Position, SourceWarning, ignore
from blanket.exclude import Excluder
from blanket.expiry import current_expire_below
from blanket.gc import GcResult, collect, plan_for_pass
from blanket.indexfmt import unescape
from blanket.lock import RepoLock
from blanket.merge import Located, replay
from blanket.model import Entry
from blanket.repo import Repository
from blanket.walker import WalkItem, walk

MiB = 1 << 20


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


class _Prior:
    """The run's one replay of the committed layers: the prior state after the clock
    pointer, for the merge-join, counting as it goes what the coverage needs."""

    def __init__(self, repo: Repository, pointer: bytes | None) -> None:
        self._after = b"" if pointer is None else model.clock_key(pointer)
        self._replay = replay(repo.layer_streams())
        self._skipped = pointer is not None
        self.before = 0  # entries at or before the pointer
        self.given = 0  # entries handed to the join
        self._recent: deque[bytes] = deque(maxlen=8)  # keys of the last ones handed over

    def __iter__(self) -> Iterator[Located]:
        for located in self._replay:
            if self._skipped and located.entry.key <= self._after:
                self.before += 1
                continue
            self.given += 1
            self._recent.append(located.entry.key)
            yield located

    def coverage(self, last: bytes) -> float | None:
        """The share of the replayed tree at or before ``last``: the rest of the same
        replay is counted (the join may have stopped early), never replayed again."""
        key = model.clock_key(last)
        beyond = sum(1 for k in self._recent if k > key)  # the join looks ahead a little
        rest = sum(1 for _ in self._replay)
        total = self.before + self.given + rest
        return (self.before + self.given - beyond) / total if total else None


class _Pass:
    """The pass driver: walk, compare, budgets, stop. See the module doc."""

    def __init__(
        self,
        repo: Repository,
        source: bytes,
        opts: BackupOptions,
        *,
        expire_below: int,
        renew: Callable[[], None],
        listener: Listener,
        stop: threading.Event,
        clock: Callable[[], int],
    ) -> None:
        self.repo, self.source, self.opts = repo, source, opts
        self.listener, self.stop, self.clock = listener, stop, clock
        self.pos = _position(repo)
        self.expire_below = expire_below
        self.result = BackupResult(layer=self.pos.layer, expire_below=expire_below)
        self.started = time.monotonic()
        self.since_floor = max((h.created for h in repo.headers), default=0)
        saved = repo.state.load_links(self.pos.layer) if self.pos.pointer is not None else {}
        self.links = LinkGroups({k: unescape(v) for k, v in saved.items()})
        self.shown_at = 0.0  # when a Position event was last sent
        self.sink = CommitSink(repo, layer=self.pos.layer, renew=renew, listener=listener)
        self.packs = PackAssembler(
            repo,
            source,
            layer=self.pos.layer,
            layer_pack=self.pos.layer_pack,
            pointer=self.pos.pointer,
            expire_below=expire_below,
            host=socket.gethostname(),
            pack_size=opts.pack_size,
            pack_entries=opts.pack_entries,
            pack_seconds=opts.pack_seconds,
            level=opts.level,
            links=self.links,
            sink=self.sink,
            now=self.now,
            warn=self.warn,
            out_of_budget=self.out_of_budget,
            listener=listener,
        )

    def now(self) -> int:
        """Entry times never go backwards, even if the system clock does."""
        t = max(self.clock(), self.since_floor + 1)
        self.since_floor = t
        return t

    def warn(self, path: bytes, message: str) -> None:
        self.result.warnings.append((path, message))
        self.listener(SourceWarning(path, message))

    def out_of_budget(self) -> bool:
        o = self.opts
        return (
            self.stop.is_set()
            or (o.max_seconds is not None and time.monotonic() - self.started >= o.max_seconds)
            or (o.max_bytes is not None and self.packs.bytes_read >= o.max_bytes)
        )

    # --- the walk side of the join ------------------------------------------------------

    def walked(self, excluder: Excluder) -> Iterator[WalkItem | Seen]:
        """The walk from the pointer: items to describe, and paths that could not be
        walked (already ``Seen``, opaque: the prior state below them is kept)."""
        errors: list[bytes] = []

        def on_error(path: bytes, exc: OSError) -> None:
            errors.append(path)
            self.warn(path, exc.strerror or str(exc))

        for item in walk(self.source, after=self.pos.pointer, excluder=excluder, on_error=on_error):
            yield from (Seen(p, None, opaque=True) for p in errors if p != item.path)
            errors.clear()
            yield item
        yield from (Seen(p, None, opaque=True) for p in errors)

    def describe(self, item: WalkItem | Seen, prior: Entry | None) -> Seen | None:
        """One walked path as the join compares it; ``prior`` is the version the prior
        state holds for it, when that version may be taken as it is."""
        if isinstance(item, Seen):
            return item
        try:
            entry = scan.entry_for(self.source, item, since=self.now(), prior=prior)
        except OSError as exc:
            self.warn(item.path, exc.strerror or str(exc))
            return Seen(item.path, None, opaque=True)
        if entry is None:
            return None
        return Seen(item.path, self.links.linked(entry, item.st), opaque=item.listing_failed)

    # --- the run ---------------------------------------------------------------------

    def go(self) -> BackupResult:
        prior = _Prior(self.repo, self.pos.pointer)
        packs, result = self.packs, self.result
        try:
            changes = diff(
                self.walked(Excluder(self.opts.excludes)),
                prior,
                full=self.pos.layer == 0,
                expire_below=self.expire_below,
                describe=self.describe,
            )
            for change in changes:
                if isinstance(change, Emit):
                    e = change.entry
                    if e.kind == model.FILE:
                        packs.store_file(e)
                    else:
                        packs.add_meta(e)
                    if not packs.stopping:  # a split file stopped midway is not done
                        packs.reached(e.path)
                elif isinstance(change, Delete):
                    packs.add_meta(Entry(model.DELETED, change.path, since=self.now()))
                    result.deleted += 1
                    packs.reached(change.path)
                elif isinstance(change, Keep):
                    packs.reached(change.path)
                if packs.due():
                    packs.seal(complete=False)
                else:
                    self.sink.collect()
                if time.monotonic() - self.shown_at >= 0.1 and packs.last_path is not None:
                    self.shown_at = time.monotonic()
                    self.listener(Position(packs.last_path))
                if packs.stopping or self.out_of_budget():
                    result.stopped_early = True
                    packs.seal(complete=False, wait=True)
                    self.sink.save_position(packs.last_path, self.links.escaped())
                    break
            else:
                packs.seal(complete=packs.pack is not None or packs.layer_pack > 0, wait=True)
                result.complete = True
                self.sink.save_position(None, {}, done=True)
        finally:
            packs.abort()
            self.sink.close()  # queued commits finish, each whole or not at all
            packs.close()
        result.packs, result.files, result.bytes_read = (
            self.sink.packs,
            packs.files,
            packs.bytes_read,
        )
        result.pointer = packs.last_path
        if result.complete:
            result.coverage = 1.0
        elif self.pos.layer > 0 and packs.last_path is not None:
            result.coverage = prior.coverage(packs.last_path)
        return result


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
        expire_below = current_expire_below(repo.headers)
        if opts.cap is not None:
            plan = plan_for_pass(repo, cap=opts.cap, keep_history=opts.keep_history)
            if not plan.fits:
                raise BlanketError(plan.message)
            expire_below = max(expire_below, plan.expire_below)
        result = _Pass(
            repo,
            src,
            opts,
            expire_below=expire_below,
            renew=lock.renew,
            listener=listener,
            stop=stop or threading.Event(),
            clock=clock,
        ).go()
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
