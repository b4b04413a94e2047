"""Restore: replay the layers, plan, fetch the packs that hold what is needed, write safely.

Nothing is written to the target before the plan is made (so a wrong key, an unknown path
or a bad ``--at`` leaves the target untouched). Per-file trouble is reported and the run
goes on; trouble with the target itself (no space left) stops it with a clear error.
"""

from __future__ import annotations

import errno
import itertools
import os
import tarfile
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import partial

import zstandard

from blanket import model
from blanket.errors import BlanketError, IntegrityError, UsageError
from blanket.events import FileRestored, Listener, RestoreProblem, ignore
from blanket.indexfmt import IndexHeader
from blanket.merge import replay
from blanket.model import Entry
from blanket.packer import member_name, part_member_name
from blanket.repo import Repository
from blanket.restore.fetch import fetch_plaintext, members
from blanket.restore.plan import Plan, missing_tops, select, show
from blanket.restore.writer import ContentMismatch, NotPermitted, SafeWriter, UnsafePath

_PER_FILE = (UnsafePath, ContentMismatch, NotPermitted)


@dataclass
class RestoreOptions:
    target: str
    paths: list[bytes] = field(default_factory=list)
    at_layer: int | None = None
    at_time: int | None = None
    force: bool = False


@dataclass
class RestoreResult:
    files: int = 0
    bytes_written: int = 0
    unchanged: int = 0
    packs_read: int = 0
    problems: list[tuple[bytes, str]] = field(default_factory=list)


def check_target(repo: Repository, target: str, force: bool) -> None:
    """Refuse to restore into, over or around the backed-up source without ``force``."""
    if force or not repo.headers:
        return
    source = os.fsdecode(repo.headers[-1].source_path)
    real = os.path.realpath(target)
    overlap = (
        real == source
        or real.startswith(source.rstrip("/") + "/")
        or source.startswith(real.rstrip("/") + "/")
    )
    if overlap:
        raise UsageError(
            f"--to {target} overlaps the backed-up source {source}; restore elsewhere "
            "or pass --force to overwrite it"
        )


class _Restore:
    def __init__(self, repo: Repository, opts: RestoreOptions, listener: Listener) -> None:
        self.repo, self.opts, self.listener = repo, opts, listener
        self.result = RestoreResult()
        self.headers = {h.seq: h for h in repo.headers}

    def problem(self, path: bytes, message: str) -> None:
        self.result.problems.append((path, message))
        self.listener(RestoreProblem(path, message))

    def plan(self, workdir: str) -> Plan:
        o = self.opts
        if o.at_layer is not None and not any(h.layer <= o.at_layer for h in self.repo.headers):
            raise UsageError(
                f"--at {o.at_layer}: the repository has no layer that old; see 'blanket layers'"
            )
        streams = self.repo.layer_streams(up_to_layer=o.at_layer)
        plan = Plan(workdir)
        try:
            for item in select(replay(streams, at=o.at_time), o.paths):
                plan.add(item, o.paths)
        finally:
            plan.close()
        missing = missing_tops(plan, o.paths)
        if missing:
            raise UsageError(
                f"{show(missing[0])} is not in the backup at that point; see 'blanket ls'"
            )
        return plan

    def write(self, plan: Plan, writer: SafeWriter, workdir: str) -> None:
        for d in plan.read("dirs"):
            self.guard(d, partial(writer.make_dir, d), writer)
        for seq in sorted(plan.packs):
            self.restore_pack(plan, seq, writer, workdir)
        for seq in sorted(plan.split):
            for e in plan.read(f"split-{seq:012d}"):
                self.restore_split(seq, e, writer, workdir)
        for e in plan.read("links"):
            self.guard(e, partial(self.make_link, writer, e), writer)
        for d in plan.dirs_deepest_first():
            self.guard(d, partial(writer.finish_dir, d), writer)

    def guard(self, e: Entry, action: Callable[[], None], writer: SafeWriter) -> bool:
        """Run one write; report per-file trouble and go on; stop on a full disk."""
        try:
            action()
            for message in writer.warnings:
                self.problem(e.path, message)
            return True
        except _PER_FILE as exc:
            self.problem(e.path, str(exc))
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EROFS):
                raise BlanketError(
                    f"cannot write {show(e.path)} under {self.opts.target}: {exc.strerror}; "
                    "free space (or pick another --to) and run the restore again"
                ) from exc
            self.problem(e.path, exc.strerror or str(exc))
        finally:
            writer.warnings.clear()
        return False

    def make_link(self, writer: SafeWriter, e: Entry) -> None:
        if e.kind == model.SYMLINK:
            writer.make_symlink(e)
        elif e.kind == model.HARDLINK:
            writer.make_hardlink(e)
        else:
            writer.make_special(e)

    def restore_split(self, seq: int, e: Entry, writer: SafeWriter, workdir: str) -> None:
        if writer.existing_matches(e):
            self.result.unchanged += 1
            return
        parts = self.repo.parts_of(seq, e)
        covered = sum(p.length for _, p in parts)
        if len(parts) != e.parts or covered != e.size:
            self.problem(e.path, f"only {len(parts)} of its {e.parts} parts are in the repository")
            return
        job = _SplitRestore(self.repo, parts, workdir)
        try:
            ok = self.guard(e, partial(writer.write_file, e, job.chunks()), writer)
        except (IntegrityError, tarfile.TarError, zstandard.ZstdError) as exc:
            self.problem(e.path, f"not restored: {exc}")
            ok = False
        self.result.packs_read += job.packs_read
        if ok:
            self.result.files += 1
            self.result.bytes_written += e.size
            self.listener(FileRestored(e.path, e.size))

    def restore_pack(self, plan: Plan, seq: int, writer: SafeWriter, workdir: str) -> None:
        wanted = [e for e in plan.pack_entries(seq) if not writer.existing_matches(e)]
        self.result.unchanged += plan.packs[seq] - len(wanted)
        if not wanted:
            return
        header: IndexHeader = self.headers[seq]
        try:
            zst = fetch_plaintext(self.repo.backend, self.repo.gpg, header, workdir)
        except (IntegrityError, BlanketError) as exc:
            for e in wanted:
                self.problem(e.path, f"not restored: {exc}")
            return
        self.result.packs_read += 1
        # matched by member name: a pack's members need not be in clock order (parts)
        pending = {os.fsencode(member_name(e.path)): e for e in wanted}
        try:
            for m in members(zst):
                if m.name not in pending:
                    continue
                e = pending.pop(m.name)
                if self.guard(e, partial(writer.write_file, e, m.chunks()), writer):
                    self.result.files += 1
                    self.result.bytes_written += e.size
                    self.listener(FileRestored(e.path, e.size))
        except (tarfile.TarError, zstandard.ZstdError, EOFError) as exc:
            self.problem(header.data_key.encode(), f"unreadable after its checks passed: {exc}")
        finally:
            os.unlink(zst)
        for e in pending.values():
            self.problem(e.path, f"missing from {header.data_key}")


def _part_name(p: Entry) -> bytes:
    return os.fsencode(part_member_name(p.path, p.offset))


class _SplitRestore:
    """The content of a split file, streamed from its parts across consecutive packs."""

    def __init__(self, repo: Repository, parts: list[tuple[int, Entry]], workdir: str) -> None:
        self.repo, self.parts, self.workdir = repo, parts, workdir
        self.packs_read = 0

    def chunks(self) -> Iterator[bytes]:
        for seq, group in itertools.groupby(self.parts, key=lambda sp: sp[0]):
            wanted = {_part_name(p): p for _, p in group}
            zst = fetch_plaintext(
                self.repo.backend, self.repo.gpg, self.repo.headers[seq], self.workdir
            )
            self.packs_read += 1
            try:
                for m in members(zst):
                    if wanted.pop(m.name, None) is not None:
                        yield from m.chunks()
            finally:
                os.unlink(zst)
            if wanted:
                raise IntegrityError(f"{self.repo.headers[seq].data_key} lacks a part it lists")


def run_restore(
    repo: Repository, opts: RestoreOptions, *, listener: Listener = ignore
) -> RestoreResult:
    """Restore the repository's tree (or subtrees) as of a layer or time into a folder."""
    repo.refresh()
    check_target(repo, opts.target, opts.force)
    job = _Restore(repo, opts, listener)
    with tempfile.TemporaryDirectory(prefix="restore-", dir=repo.state.dir) as workdir:
        plan = job.plan(workdir)
        with SafeWriter(opts.target) as writer:
            job.write(plan, writer, workdir)
    return job.result
