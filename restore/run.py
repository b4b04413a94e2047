"""Restore: replay the layers, plan, fetch the packs that hold what is needed, write safely.

Nothing is written to the target before the plan is made (so a wrong key, an unknown path
or a bad ``--at`` leaves the target untouched). A restore may read several repositories
(a mesh): mirrors of one repository serve any intact copy of each object; independent
repositories of the same source are replayed together, the newest version of each path
winning. Per-file trouble is reported and the run goes on: a file whose pack is damaged
everywhere falls back to the newest older version that is intact, and says so. Trouble
with the target itself (no space left) stops the run with a clear error.
"""

from __future__ import annotations

import errno
import itertools
import os
import tempfile
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field, replace
from functools import partial
from typing import Any

from blanket import model, pgpstream
from blanket.errors import BlanketError, IntegrityError, UsageError
from blanket.events import FileRestored, Listener, Planned, RestoreProblem, ignore
from blanket.merge import Located, replay
from blanket.model import Entry
from blanket.packread import Prefetcher, fetch_from_any
from blanket.repo import Repository
from blanket.restore.mesh import group_mirrors, mesh_streams
from blanket.restore.packwrite import (
    PER_FILE,
    UNREADABLE,
    PackKey,
    PackOutcome,
    by_member,
    put_file,
    write_members,
)
from blanket.restore.plan import Plan, missing_tops, select, show
from blanket.restore.ranged import PARTIAL_PREFIX, fetch_frames, frames_for
from blanket.restore.split import SplitContent
from blanket.restore.target import check_target
from blanket.restore.workers import PackWorkers
from blanket.restore.writer import ContentMismatch, SafeWriter
from blanket.units import show_time

MAX_FALLBACKS = 8
MAX_WORKERS = 4  # processes writing packs' files (restore.workers), if there are cores
WORKERS_FROM = (16 << 20, 2000)  # bytes or entries to restore from which forking pays
FETCH_AHEAD = 2  # packs fetched (download, check, decrypt) at once, ahead of the one in use


@dataclass
class RestoreOptions:
    target: str
    paths: list[bytes] = field(default_factory=list)
    at_layer: int | None = None
    at_time: int | None = None
    force: bool = False
    workers: int | None = None  # processes writing files (restore.workers); None: by size


@dataclass
class RestoreResult:
    files: int = 0
    bytes_written: int = 0
    unchanged: int = 0
    packs_read: int = 0
    pack_bytes_read: int = 0  # from the stores, of data objects (indexes not counted)
    problems: list[tuple[bytes, str]] = field(default_factory=list)


class _Restore:
    def __init__(self, repos: list[Repository], opts: RestoreOptions, listener: Listener) -> None:
        self.repos, self.opts, self.listener = repos, opts, listener
        self.result = RestoreResult()
        self.skip: set[tuple[int, int, bytes]] = set()
        self.failed: dict[bytes, str] = {}  # path -> why its chosen version failed
        self.frames: dict[PackKey, list[int]] = {}  # packs of which only frames are needed
        self.workdir = ""
        self._meter_lock = threading.Lock()

    def problem(self, path: bytes, message: str) -> None:
        self.result.problems.append((path, message))
        self.listener(RestoreProblem(path, message))

    def plan(self, workdir: str, tops: list[bytes], *, exact: bool = False) -> Plan:
        o = self.opts
        streams = mesh_streams(self.repos, o.at_layer, self.skip, o.at_time, tops)
        plan = Plan(workdir)
        try:
            for item in select(replay(streams, at=o.at_time), tops):
                if not exact or item.entry.path in tops:
                    plan.add(item, tops)
            if tops and not exact:
                self.borrow_link_targets(plan, tops)
            plan.close()
        except BaseException:
            plan.dispose()
            raise
        return plan

    def borrow_link_targets(self, plan: Plan, tops: list[bytes]) -> None:
        """A hard link inside the restored subtrees whose file lies outside them: the
        first such link gets the file's content (read from the file's member), the other
        links of its group link to it."""
        outside = {
            e.target
            for e in plan.read("links")
            if e.kind == model.HARDLINK and not any(model.is_within(e.target, t) for t in tops)
        }
        if not outside:
            return
        wanted = sorted(outside, key=model.clock_key)
        streams = mesh_streams(self.repos, self.opts.at_layer, self.skip, self.opts.at_time, wanted)
        sources = {
            item.entry.path: item
            for item in select(replay(streams, at=self.opts.at_time), wanted)
            if item.entry.path in outside and item.entry.kind == model.FILE
        }

        def rewrite(links: Iterator[Entry]) -> Iterator[Located]:
            first: dict[bytes, bytes] = {}
            for e in links:
                source = sources.get(e.target) if e.kind == model.HARDLINK else None
                if source is None or e.target in first:
                    yield Located(replace(e, target=first[e.target]) if source else e, 0, 0)
                    continue
                first[e.target] = e.path
                borrowed = replace(source.entry, path=e.path, target=source.entry.path)
                yield replace(source, entry=borrowed)

        plan.rewrite_links(rewrite, tops)

    def write(self, plan: Plan, writer: SafeWriter, workdir: str) -> None:
        for d in plan.read("dirs"):
            self.guard(d, partial(writer.make_dir, d), writer)
        self.write_content(plan, writer, workdir)
        for attempt in range(MAX_FALLBACKS):
            if not self.failed:
                break
            self.fall_back(writer, workdir, attempt)
        for path, why in self.failed.items():
            self.problem(path, f"not restored: {why}; no intact older version either")
        for e in plan.read("links"):
            self.guard(e, partial(self.make_link, writer, e), writer)
        for d in plan.dirs_deepest_first():
            self.guard(d, partial(writer.finish_dir, d), writer)

    def write_content(self, plan: Plan, writer: SafeWriter, workdir: str) -> None:
        """Every file's content: pack by pack, then split files. The next packs are
        fetched and verified while one is written; a whole pack's files are written by a
        worker process (restore.workers), judged here in order."""
        self.workdir = workdir
        work, done = partial(self.work, plan, writer), partial(self.pack_written, writer)
        processes = self.workers(plan)
        if processes:
            pgpstream.preload()  # once, before the workers are forked
        with PackWorkers(processes, work, done) as workers:
            with Prefetcher(partial(self.fetch, workdir), FETCH_AHEAD) as pre:
                jobs = itertools.chain(
                    self.pack_jobs(plan, writer), self.split_jobs(plan, writer, pre)
                )
                ahead: deque[_Job] = deque()
                self.pull(jobs, ahead, pre)
                while ahead:
                    job = ahead.popleft()
                    self.pull(jobs, ahead, pre)  # named now, so it is fetched meanwhile
                    job.run(pre, writer, workers)
            workers.drain()

    def workers(self, plan: Plan) -> int:
        """How many worker processes write packs' files: one per core (up to
        ``MAX_WORKERS``) when there is more than one core and enough to restore (16 MiB,
        or 2,000 files, folders and links)."""
        if self.opts.workers is not None:
            return self.opts.workers
        cores = len(os.sched_getaffinity(0))
        enough = plan.bytes >= WORKERS_FROM[0] or plan.entries >= WORKERS_FROM[1]
        return min(cores, MAX_WORKERS) if cores > 1 and enough else 0

    @staticmethod
    def pull(jobs: Iterator[_Job], ahead: deque[_Job], pre: Prefetcher[PackKey]) -> None:
        job = next(jobs, None)
        if job is not None:
            ahead.append(job)
            for key in job.keys:
                pre.want(key)

    def fetch(self, workdir: str, key: PackKey) -> pgpstream.Source:
        """Runs on the prefetch thread: only reads the repository's fixed state. Only the
        frames that hold the wanted files when that saves much (restore.ranged), else
        (and whenever that fails for any reason) the whole pack, checked against its
        index and sealed with its session key, decrypted where it is read (pgpstream)."""
        repo = self.repos[key[0]]
        header = repo.by_seq[key[1]]
        chosen = self.frames.pop(key, None)
        if chosen is not None:
            for backend in repo.backends:
                try:
                    return fetch_frames(backend, repo.gpg, header, chosen, workdir, self.meter)
                except (ValueError, BlanketError):
                    continue  # pgprange.LayoutError is a ValueError; the whole pack says more
        return pgpstream.fetch_sealed_from_any(
            repo.backends, repo.gpg, header, workdir, self.meter, in_place=True
        )

    def readable(self, origin: int, seq: int, source: pgpstream.Source) -> pgpstream.Readable:
        """A pack's source, read now if it was left in its (local) store; a copy that
        does not match its index there is read the long way (any store, gpg)."""
        if not isinstance(source, pgpstream.InStore):
            return source
        try:
            return pgpstream.load(self.repos[origin].backends[source.store], source)
        except BlanketError:
            return self.fetch_whole(origin, seq)

    def meter(self, n: int) -> None:
        """Count bytes read from a store (called from the prefetch thread too)."""
        with self._meter_lock:
            self.result.pack_bytes_read += n

    def want_frames(self, origin: int, seq: int, wanted: Iterable[Entry]) -> None:
        """Note which frames of a pack hold ``wanted`` (if few enough: see ranged.py)."""
        repo = self.repos[origin]
        header = repo.by_seq[seq]
        names = {e.target or e.path for e in wanted}
        if len(header.frames) < 2 or len(names) * 2 > header.entries:
            return
        chosen = frames_for(header, repo.entries(seq), names)
        if chosen is not None:
            self.frames[(origin, seq)] = chosen

    def pack_jobs(self, plan: Plan, writer: SafeWriter) -> Iterator[_Job]:
        for origin, seq in sorted(plan.packs):
            # only find out whether the pack is needed; the rest is checked when written
            done = 0
            for e in plan.pack_entries(origin, seq):
                if not writer.existing_matches(e):
                    break
                done += 1
            self.result.unchanged += done
            if done < plan.packs[(origin, seq)]:
                rest = itertools.islice(plan.pack_entries(origin, seq), done, None)
                self.want_frames(origin, seq, rest)
                yield _Job([(origin, seq)], partial(self.restore_pack, plan, origin, seq, done))

    def split_jobs(
        self, plan: Plan, writer: SafeWriter, pre: Prefetcher[PackKey]
    ) -> Iterator[_Job]:
        for origin, seq in sorted(plan.split):
            for e in plan.split_entries(origin, seq):
                if writer.existing_matches(e):
                    self.result.unchanged += 1
                    continue
                parts = self.repos[origin].parts_of(seq, e)
                covered = sum(p.length for _, p in parts)
                if len(parts) != e.parts or covered != e.size:
                    why = f"only {len(parts)} of its {e.parts} parts are in the repository"
                    yield _Job([], partial(self.content_failed, origin, seq, e, why))
                    continue
                keys = [(origin, s) for s, _ in itertools.groupby(parts, key=lambda sp: sp[0])]
                yield _Job(keys, partial(self.restore_split, origin, seq, e, parts))

    def fall_back(self, writer: SafeWriter, workdir: str, attempt: int) -> None:
        """Replan the files whose chosen version could not be had, without those
        versions: the newest older intact version of each, if any, is restored."""
        failed, self.failed = self.failed, {}
        sub = os.path.join(workdir, f"fallback-{attempt}")
        os.mkdir(sub)
        plan = self.plan(sub, sorted(failed, key=model.clock_key), exact=True)
        try:
            older = {e.path: e.since for e in plan.content() if e.path in failed}
            for path, why in failed.items():
                since = older.get(path)
                if since is None:
                    self.problem(path, f"not restored: {why}; no intact older version either")
                else:
                    self.problem(path, f"restored its older version of {show_time(since)}: {why}")
            self.write_content(plan, writer, workdir)
        finally:
            plan.dispose()

    def guard(self, e: Entry, action: Callable[[], None], writer: SafeWriter) -> bool:
        """Run one write; report per-file trouble and go on; stop on a full disk."""
        try:
            action()
            error: Exception | None = None
        except (*PER_FILE, OSError) as exc:
            error = exc
        try:
            return self.judge(e, error, writer.warnings)
        finally:
            writer.warnings.clear()

    def judge(self, e: Entry, error: Exception | None, warnings: list[str]) -> bool:
        """Report the outcome of one write (its warnings if it worked); a full disk stops
        the run, anything unexpected is raised again."""
        if error is None:
            for message in warnings:
                self.problem(e.path, message)
            return True
        if isinstance(error, PER_FILE):
            self.problem(e.path, str(error))
        elif isinstance(error, OSError):
            if error.errno in (errno.ENOSPC, errno.EDQUOT, errno.EROFS):
                raise BlanketError(
                    f"cannot write {show(e.path)} under {self.opts.target}: {error.strerror}; "
                    "free space (or pick another --to) and run the restore again"
                ) from error
            self.problem(e.path, error.strerror or str(error))
        else:
            raise error
        return False

    def make_link(self, writer: SafeWriter, e: Entry) -> None:
        if e.kind == model.SYMLINK:
            writer.make_symlink(e)
        elif e.kind == model.HARDLINK:
            writer.make_hardlink(e)
        else:
            writer.make_special(e)

    def content_failed(self, origin: int, seq: int, e: Entry, why: str) -> None:
        self.skip.add((origin, seq, e.path))
        self.failed[e.path] = why

    def restored(self, e: Entry) -> None:
        self.result.files += 1
        self.result.bytes_written += e.size
        self.listener(FileRestored(e.path, e.size))

    def still_wanted(
        self, plan: Plan, origin: int, seq: int, done: int, writer: SafeWriter
    ) -> list[Entry]:
        """The files of a pack not in place yet; the first ``done`` are."""
        return [
            e
            for i, e in enumerate(plan.pack_entries(origin, seq))
            if i >= done and not writer.existing_matches(e)
        ]

    def restore_pack(
        self,
        plan: Plan,
        origin: int,
        seq: int,
        done: int,
        pre: Prefetcher[PackKey],
        writer: SafeWriter,
        workers: PackWorkers[PackOutcome],
    ) -> None:
        """Hand the files of one pack to a worker, once the pack is fetched and verified."""
        try:
            zst = pre.take((origin, seq))
        except IntegrityError as exc:
            for e in self.still_wanted(plan, origin, seq, done, writer):
                self.content_failed(origin, seq, e, str(exc))
            return
        self.result.packs_read += 1
        workers.submit("pack", origin, seq, done, zst)

    def write_pack(
        self,
        plan: Plan,
        writer: SafeWriter,
        origin: int,
        seq: int,
        done: int,
        zst: pgpstream.Source,
    ) -> PackOutcome:
        """In a worker: write the files of a pack from its plaintext ``zst`` (then
        removed); the first ``done`` are already in place. Only reports: nothing here is
        judged, counted or told to the listener."""
        wanted = self.still_wanted(plan, origin, seq, done, writer)
        out = PackOutcome((origin, seq), plan.packs[(origin, seq)] - done - len(wanted))
        pending = by_member(wanted)
        del wanted
        try:
            zst = self.readable(origin, seq, zst)
            write_members(zst, (origin, seq), pending, partial(put_file, writer, out.report))
        except UNREADABLE as exc:
            if not isinstance(zst, pgpstream.Sealed):  # else gpg reads the rest (pack_written)
                out.unreadable = f"{self.repos[origin].by_seq[seq].data_key} is unreadable: {exc}"
        out.left = list(itertools.chain(*pending.values()))
        out.partial = isinstance(zst, pgpstream.Sealed) or (
            isinstance(zst, str) and os.path.basename(zst).startswith(PARTIAL_PREFIX)
        )
        return out

    def pack_written(self, writer: SafeWriter, out: PackOutcome) -> None:
        """Judge what a worker did with a pack; what the frames read lacked is read
        from the whole pack, here."""
        for path, size, error, warnings in out.files:
            self.file_done(out.where, Entry(model.FILE, path, size=size), error, warnings)
        self.result.unchanged += out.unchanged
        origin, seq = out.where
        data_key = self.repos[origin].by_seq[seq].data_key
        why = out.unreadable
        if out.left and out.partial and why is None:
            pending = by_member(out.left)
            try:  # not in the frames read (it should have been), or not readable without
                # gpg (it should have been): gpg reads the whole pack
                whole = self.fetch_whole(origin, seq)
                put = partial(put_file, writer, self.file_done)
                write_members(whole, out.where, pending, put)
            except IntegrityError as exc:
                why = str(exc)
            except UNREADABLE as exc:
                why = f"{data_key} is unreadable: {exc}"
            out.left = list(itertools.chain(*pending.values()))
        for e in out.left:
            self.content_failed(origin, seq, e, why or f"missing from {data_key}")

    def fetch_whole(self, origin: int, seq: int) -> str:
        repo = self.repos[origin]
        return fetch_from_any(repo.backends, repo.gpg, repo.by_seq[seq], self.workdir, self.meter)

    def restore_split(
        self,
        origin: int,
        seq: int,
        e: Entry,
        parts: list[tuple[int, Entry]],
        pre: Prefetcher[PackKey],
        writer: SafeWriter,
        workers: PackWorkers[PackOutcome],
    ) -> None:
        """A split file, handed to a worker once the packs of its parts are fetched."""
        sources: dict[int, pgpstream.Source] = {}
        try:
            for s, _ in itertools.groupby(parts, key=lambda sp: sp[0]):
                sources[s] = pre.take((origin, s))
        except IntegrityError as exc:
            for source in sources.values():
                pgpstream.remove(source)
            self.content_failed(origin, seq, e, str(exc))
            return
        self.result.packs_read += len(sources)
        workers.submit("split", origin, seq, e, parts, sources)

    def work(self, plan: Plan, writer: SafeWriter, kind: str, *args: Any) -> PackOutcome:
        """In a worker: write a pack's files, or a split file (``kind``)."""
        if kind == "split":
            return self.write_split(writer, *args)
        return self.write_pack(plan, writer, *args)

    def write_split(
        self,
        writer: SafeWriter,
        origin: int,
        seq: int,
        e: Entry,
        parts: list[tuple[int, Entry]],
        sources: dict[int, pgpstream.Source],
    ) -> PackOutcome:
        """In a worker: write split file ``e`` from its parts in the packs ``sources``
        (each removed once read); only reports, like ``write_pack``."""
        out = PackOutcome((origin, seq), 0)
        take = lambda s: self.readable(origin, s, sources.pop(s))  # noqa: E731
        try:
            job = SplitContent(self.repos[origin], parts, take)
            put_file(writer, out.report, (origin, seq), e, job.chunks())
        finally:
            for source in sources.values():  # the packs of parts not reached
                pgpstream.remove(source)
        return out

    def file_done(
        self, where: PackKey, e: Entry, error: Exception | None, warnings: list[str]
    ) -> None:
        """Judge one file's write: content that fails its checks sends the path to fall
        back; other trouble is reported (or stops the run, see ``judge``)."""
        if isinstance(error, (*UNREADABLE, ContentMismatch)):
            self.content_failed(*where, e, str(error))
        elif self.judge(e, error, warnings):
            self.restored(e)


@dataclass
class _Job:
    """Work on the content of some files: the packs it takes, in order, and what to run."""

    keys: list[PackKey]
    action: Callable[..., None]

    def run(
        self, pre: Prefetcher[PackKey], writer: SafeWriter, workers: PackWorkers[PackOutcome]
    ) -> None:
        if self.keys:
            self.action(pre, writer, workers)
        else:
            self.action()


def run_restore(
    repo: Repository | list[Repository],
    opts: RestoreOptions,
    *,
    listener: Listener = ignore,
) -> RestoreResult:
    """Restore the tree (or subtrees) as of a layer or time into a folder, from one
    repository or a mesh of several."""
    repos = group_mirrors(repo if isinstance(repo, list) else [repo])
    for r in repos:
        r.refresh(strict=False)
    check_target(repos, opts.target, opts.force)
    if opts.at_layer is not None:  # as of the end of that layer: the since rule, which
        # also finds versions a later pass refreshed out of an expired layer
        opts = replace(opts, at_time=repos[0].layer_end(opts.at_layer), at_layer=None)
    job = _Restore(repos, opts, listener)
    for r in repos:
        for key, message in r.problems:
            job.problem(key.encode(), message)
        if opts.at_time is not None:
            for lost in r.lost_versions():
                wanted = not opts.paths or any(model.is_within(lost.path, t) for t in opts.paths)
                if wanted and lost.since <= opts.at_time < (lost.until or 1 << 63):
                    job.problem(
                        lost.path,
                        f"its version of {show_time(lost.since)} was removed by gc with an "
                        "expired layer: missing, not wrong",
                    )
    state_dir = repos[0].state.dir
    with tempfile.TemporaryDirectory(prefix="restore-", dir=state_dir) as workdir:
        plan = job.plan(workdir, opts.paths)
        try:
            listener(Planned("restore", plan.entries, plan.bytes))
            missing = missing_tops(plan, opts.paths)
            if missing:
                raise UsageError(
                    f"{show(missing[0])} is not in the backup at that point; see 'blanket ls'"
                )
            with SafeWriter(opts.target) as writer:
                writer.note_if_empty()
                job.write(plan, writer, workdir)
        finally:
            plan.dispose()
    return job.result
