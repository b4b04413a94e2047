"""Content out of a repository onto a stream: one file (``cat``) or a tar of a tree
(``restore --to -``), built on the restore pieces (replay, plan, fetch, members).

Every pack is checked before use (its hash against the signed index, then gpg), exactly
as restore does. ``cat`` also checks each piece of content against its SHA-256 before
writing it: a whole file, or each part of a split file (and the whole at the end). A
tar stream cannot take back a member once written, so each member is checked as it
goes and a mismatch is reported (exit 3) with the member kept, padded to its size so
the archive stays readable.
"""

from __future__ import annotations

import hashlib
import os
import tarfile
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import BinaryIO

import zstandard

from blanket import model
from blanket.errors import BlanketError, IntegrityError, UsageError
from blanket.events import FileRestored, Listener, Planned, RestoreProblem, ignore
from blanket.indexfmt import IndexHeader
from blanket.members import member_name, part_member_name, tar_info
from blanket.merge import Located
from blanket.model import Entry
from blanket.packread import fetch_plaintext, members
from blanket.repo import Repository
from blanket.restore.plan import Plan, missing_tops, select

CHUNK = 1 << 20
_UNREADABLE = (IntegrityError, tarfile.TarError, zstandard.ZstdError, EOFError)


def _show(path: bytes) -> str:
    return os.fsdecode(path).encode("utf-8", "backslashreplace").decode()


def check_point(repo: Repository, layer: int | None) -> None:
    if layer is not None and not any(h.layer <= layer for h in repo.headers):
        raise UsageError(
            f"--at {layer}: the repository has no layer that old; see 'blanket layers'"
        )


def find(repo: Repository, path: bytes, layer: int | None, when: int | None) -> Located | None:
    """The replayed entry of ``path`` at a point (None if absent); stops at its place."""
    key = model.clock_key(path)
    for item in repo.tree(layer=layer, when=when, within=[path]):
        if item.entry.key == key:
            return item
        if item.entry.key > key:
            break
    return None


class _Pieces:
    """Verified content of one file, pack by pack (``repo.headers`` must be fresh)."""

    def __init__(self, repo: Repository, workdir: str) -> None:
        self.repo, self.workdir = repo, workdir
        self.headers = {h.seq: h for h in repo.headers}

    def _member(self, header: IndexHeader, name: bytes, sha256: str) -> str:
        """Spool member ``name`` of the pack to a file, checked against ``sha256``."""
        zst = fetch_plaintext(self.repo.backend, self.repo.gpg, header, self.workdir)
        try:
            for m in members(zst):
                if m.name != name:
                    continue
                fd, spool = tempfile.mkstemp(prefix="cat-", dir=self.workdir)
                digest = hashlib.sha256()
                with os.fdopen(fd, "wb") as f:
                    for chunk in m.chunks():
                        digest.update(chunk)
                        f.write(chunk)
                if digest.hexdigest() != sha256:
                    os.unlink(spool)
                    raise IntegrityError(
                        f"{_show(name)} in {header.data_key} does not match its SHA-256"
                    )
                return spool
        finally:
            os.unlink(zst)
        raise IntegrityError(f"{header.data_key} lacks {_show(name)}, which its index lists")

    def file(self, item: Located) -> Iterator[bytes]:
        """The content of a file entry, each piece verified before it is yielded."""
        e = item.entry
        if not e.parts:
            name = os.fsencode(member_name(e.path))
            yield from _drain(self._member(self.headers[item.seq], name, e.sha256))
            return
        parts = self.repo.parts_of(item.seq, e)
        if len(parts) != e.parts or sum(p.length for _, p in parts) != e.size:
            raise IntegrityError(
                f"{_show(e.path)}: only {len(parts)} of its {e.parts} parts are in the repository"
            )
        whole = hashlib.sha256()
        for seq, p in parts:
            name = os.fsencode(part_member_name(p.path, p.offset))
            for chunk in _drain(self._member(self.headers[seq], name, p.sha256)):
                whole.update(chunk)
                yield chunk
        if whole.hexdigest() != e.sha256:
            raise IntegrityError(f"{_show(e.path)}: its parts do not add up to its SHA-256")


def _drain(spool: str) -> Iterator[bytes]:
    try:
        with open(spool, "rb") as f:
            while chunk := f.read(CHUNK):
                yield chunk
    finally:
        os.unlink(spool)


def cat(repo: Repository, path: bytes, layer: int | None, when: int | None, out: BinaryIO) -> int:
    """Write the content of file ``path`` to ``out``; return its size."""
    repo.refresh()
    check_point(repo, layer)
    item = find(repo, path, layer, when)
    if item is not None and item.entry.kind == model.HARDLINK:
        item = find(repo, item.entry.target, layer, when)
    shown = _show(path)
    if item is None:
        raise UsageError(f"{shown} is not in the backup at that point; see 'blanket ls'")
    kind = item.entry.kind
    if kind == model.DIR:
        raise UsageError(f"{shown} is a directory; use 'blanket ls' or 'restore --to -'")
    if kind == model.SYMLINK:
        raise UsageError(f"{shown} is a symlink to {_show(item.entry.target)}; cat that instead")
    if kind != model.FILE:
        raise UsageError(f"{shown} is not a regular file; use 'blanket restore'")
    with tempfile.TemporaryDirectory(prefix="cat-", dir=repo.state.dir) as workdir:
        size = 0
        for chunk in _Pieces(repo, workdir).file(item):
            out.write(chunk)
            size += len(chunk)
        out.flush()
    return size


# --- tar streams ------------------------------------------------------------------------


@dataclass
class TarResult:
    files: int = 0
    size: int = 0
    entries: int = 0
    problems: list[tuple[bytes, str]] = field(default_factory=list)


class _Member:
    """A tar member's data: exactly ``size`` bytes from ``chunks``, hashed on the way
    (padded with zeros, and ``error`` set, if the chunks fail or end early)."""

    def __init__(self, chunks: Iterator[bytes], size: int) -> None:
        self.chunks = chunks
        self.digest = hashlib.sha256()
        self.buf, self.pos = b"", 0
        self.error: str | None = None

    def _refill(self) -> bool:
        try:
            chunk = next(self.chunks)
        except StopIteration:
            self.error = "its content ended early"
            return False
        except (*_UNREADABLE, BlanketError) as exc:
            self.error = str(exc)
            return False
        self.digest.update(chunk)
        self.buf, self.pos = chunk, 0
        return True

    def read(self, n: int) -> bytes:
        pieces: list[bytes] = []
        need = n
        while need and (self.pos < len(self.buf) or (self.error is None and self._refill())):
            piece = self.buf[self.pos : self.pos + need]
            self.pos += len(piece)
            need -= len(piece)
            pieces.append(piece)
        if need:
            pieces.append(bytes(need))
        return b"".join(pieces)


def _info(e: Entry) -> tarfile.TarInfo:
    return tar_info(e, os.fsdecode(e.path))


class _TarJob:
    def __init__(self, repo: Repository, tar: tarfile.TarFile, listener: Listener) -> None:
        self.repo, self.tar, self.listener = repo, tar, listener
        self.result = TarResult()

    def problem(self, path: bytes, message: str) -> None:
        self.result.problems.append((path, message))
        self.listener(RestoreProblem(path, message))

    def add(self, e: Entry, chunks: Iterator[bytes] | None = None) -> None:
        ti = _info(e)
        if chunks is None:
            self.tar.addfile(ti)
            self.result.entries += 1
            return
        ti.size = e.size
        data = _Member(chunks, e.size)
        self.tar.addfile(ti, data)  # type: ignore[arg-type]
        self.result.entries += 1
        if data.error is None and data.digest.hexdigest() != e.sha256:
            data.error = "its content does not match its SHA-256"
        if data.error is not None:
            self.problem(e.path, f"damaged in the tar stream: {data.error}")
            return
        self.result.files += 1
        self.result.size += e.size
        self.listener(FileRestored(e.path, e.size))

    def pack(self, plan: Plan, origin: int, seq: int, pieces: _Pieces, workdir: str) -> None:
        wanted = {os.fsencode(member_name(e.path)): e for e in plan.pack_entries(origin, seq)}
        header = pieces.headers[seq]
        try:
            zst = fetch_plaintext(self.repo.backend, self.repo.gpg, header, workdir)
        except (*_UNREADABLE, BlanketError) as exc:
            for e in wanted.values():
                self.problem(e.path, f"left out: {exc}")
            return
        try:
            for m in members(zst):
                if m.name in wanted:
                    self.add(wanted.pop(m.name), m.chunks())
        except _UNREADABLE as exc:
            for e in wanted.values():
                self.problem(e.path, f"left out: {header.data_key} is unreadable: {exc}")
            wanted.clear()
        finally:
            os.unlink(zst)
        for e in wanted.values():
            self.problem(e.path, f"left out: missing from {header.data_key}")


def write_tar(
    repo: Repository,
    tops: list[bytes],
    layer: int | None,
    when: int | None,
    out: BinaryIO,
    *,
    listener: Listener = ignore,
) -> TarResult:
    """Stream the tree (or subtrees ``tops``) as a pax tar to ``out``: directories, then
    file content pack by pack (each pack read once), then split files, then links and
    special files. Names are relative to the backed-up folder (its own entry is left
    out, so extracting never changes the folder it is extracted into)."""
    repo.refresh()
    check_point(repo, layer)
    with tempfile.TemporaryDirectory(prefix="tar-", dir=repo.state.dir) as workdir:
        plan = Plan(workdir)
        try:
            for item in select(repo.tree(layer=layer, when=when, within=tops), tops):
                plan.add(item, tops)
            plan.close()
            return _write_tar(repo, plan, tops, workdir, out, listener)
        finally:
            plan.dispose()


def _write_tar(
    repo: Repository,
    plan: Plan,
    tops: list[bytes],
    workdir: str,
    out: BinaryIO,
    listener: Listener,
) -> TarResult:
    """``write_tar``'s archive, from a finished plan."""
    missing = missing_tops(plan, tops)
    if missing:
        raise UsageError(f"{_show(missing[0])} is not in the backup at that point")
    listener(Planned("restore", plan.entries, plan.bytes))
    # not a with block: a run that fails must not end the archive as if it were whole
    tar = tarfile.open(  # noqa: SIM115
        fileobj=out,
        mode="w|",
        format=tarfile.PAX_FORMAT,
        encoding="utf-8",
        errors="surrogateescape",
    )
    tar.copybufsize = CHUNK  # type: ignore[attr-defined]
    job = _TarJob(repo, tar, listener)
    pieces = _Pieces(repo, workdir)
    for d in plan.read("dirs"):
        if d.path != model.ROOT:
            job.add(d)
    for origin, seq in sorted(plan.packs):
        job.pack(plan, origin, seq, pieces, workdir)
    for origin, seq in sorted(plan.split):
        for e in plan.split_entries(origin, seq):
            job.add(e, pieces.file(Located(e, seq, 0)))
    for e in plan.read("links"):
        outside = (
            e.kind == model.HARDLINK
            and tops
            and not any(model.is_within(e.target, t) for t in tops)
        )
        if outside:
            job.problem(e.path, f"left out: hard link to {_show(e.target)}, not selected")
        else:
            job.add(e)
    tar.close()
    return job.result
