"""Keep history (``gc --keep-history``): copy forward the old versions gc would lose.

When gc deletes expired layers, a version recorded only there that is no longer current
would be lost. With ``--keep-history`` gc instead writes it into the data object of its
own gc record, as an ordinary entry carrying ``until=`` (the time it stopped being
current). A replay as of a time T uses such a kept version only when ``since`` <= T <
``until``; the latest state never sees it (``Repository.layer_streams``).

This module finds the versions that go (:func:`going_versions`), prices copying them
(:func:`plan_copy`: the bytes it adds, and the data objects that hold their content),
downloads exactly those data objects, verified, and stages the members it needs
(:func:`stage`), and writes them, in clock order, into a ``PackWriter``
(:func:`add_to_pack`). Nothing here commits or deletes: ``blanket.gc`` does.
"""

from __future__ import annotations

import hashlib
import os
import tarfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field, replace

import zstandard

from blanket import model
from blanket.errors import IntegrityError
from blanket.members import member_name, part_member_name
from blanket.merge import Located, groups
from blanket.model import Entry
from blanket.packer import PackWriter
from blanket.packread import fetch_from_any, members
from blanket.repo import Repository

INDEX_LINE = 200  # bytes an entry line adds to the record's index (before compression)
_UNREADABLE = (IntegrityError, tarfile.TarError, zstandard.ZstdError, EOFError)


@dataclass(frozen=True)
class Going:
    """A version that leaves with the doomed layers: where it is recorded, and until
    when it was current (0: no later event is recorded)."""

    located: Located
    until: int


def going_versions(repo: Repository, doomed: set[int]) -> Iterator[Going]:
    """Versions recorded only in the ``doomed`` layers (and in no gc record's kept
    history) that are not current: deleting those layers loses them.

    ``until`` is the first later event that ended the version: a newer entry of the path
    (a deletion marker included) or a deletion marker of a directory above it (which
    hides everything below it that is not newer: blanket.merge)."""
    records = {h.seq for h in repo.headers if h.gc_record}
    streams: list[Iterable[Located]] = list(repo.layer_streams())
    streams += [repo.history_stream(h) for h in repo.headers if h.gc_record]
    markers: list[tuple[bytes, list[int]]] = []  # ancestors with deletion markers
    for group in groups(streams):
        path = group[0].entry.path
        while markers and not model.is_within(path, markers[-1][0]):
            markers.pop()
        above = [t for _, times in markers for t in times]
        staying = {g.entry.since for g in group if g.seq in records or g.layer not in doomed}
        times = sorted({g.entry.since for g in group}.union(above))
        seen: set[int] = set()
        for g in group:
            e = g.entry
            if g.seq in records or g.layer not in doomed or e.is_deletion:
                continue
            if e.since in staying or e.since in seen:
                continue
            seen.add(e.since)
            later = [t for t in times if t > e.since]
            yield Going(g, later[0] if later else 0)
        own = [g.entry.since for g in group if g.entry.is_deletion]
        if own:
            markers.append((path, own))


def lost_entry(e: Entry, until: int) -> Entry:
    """The ``L`` line that stands for version ``e`` once it is gone."""
    return Entry(model.LOST, e.path, since=e.since, until=until)


@dataclass
class Copy:
    """One version to copy forward: the entry (with ``until``), the commit holding it,
    its parts (split files), the data objects it must be read from, its estimated cost."""

    entry: Entry
    seq: int
    parts: list[tuple[int, Entry]] = field(default_factory=list)
    packs: frozenset[int] = frozenset()
    cost: int = 0

    @property
    def lost(self) -> Entry:
        return lost_entry(self.entry, self.entry.until)


def raw_cost(e: Entry) -> int:
    """Bytes an entry adds to a pack before compression (content plus tar headers)."""
    content = e.length if e.kind == model.PART else (e.size if e.kind == model.FILE else 0)
    if e.kind == model.FILE and e.parts:
        content = 0  # its parts carry the content
    elif e.kind == model.FILE and e.sparse:
        content = sum(n for _, n in e.sparse)  # only the data segments are stored
    return content + 1024


def plan_copy(repo: Repository, going: Going, ratio: float) -> Copy | str:
    """What copying ``going`` forward takes, or why it cannot be copied. ``ratio`` is
    the packed/raw size ratio of the layer it comes from."""
    e, seq = replace(going.located.entry, until=going.until), going.located.seq
    copy = Copy(e, seq)
    raw = raw_cost(e)
    if e.kind == model.FILE and e.parts:
        copy.parts = repo.parts_of(seq, e)
        if len(copy.parts) != e.parts or sum(p.length for _, p in copy.parts) != e.size:
            return f"only {len(copy.parts)} of its {e.parts} parts are in the repository"
        copy.packs = frozenset(s for s, _ in copy.parts)
        raw += sum(raw_cost(p) for _, p in copy.parts)
    elif e.kind == model.FILE and (e.size or e.sparse):
        copy.packs = frozenset([seq])
    copy.cost = int(raw * ratio) + INDEX_LINE * (1 + len(copy.parts))
    return copy


# --- reading the old content ------------------------------------------------------------


def _segments_only(
    chunks: Iterable[bytes], segments: tuple[tuple[int, int], ...]
) -> Iterator[bytes]:
    """From a sparse file's whole content, only its data segments, back to back."""
    pos, i = 0, 0
    for chunk in chunks:
        end = pos + len(chunk)
        while i < len(segments):
            off, n = segments[i]
            lo, hi = max(off, pos), min(off + n, end)
            if lo < hi:
                yield chunk[lo - pos : hi - pos]
            if off + n <= end:
                i += 1
                continue
            break
        pos = end


@dataclass
class _Slot:
    copy: int  # index into the copies
    part: Entry | None  # the part it is, for a split file
    path: str  # where its bytes are staged


@dataclass
class Staged:
    """The content of the copies, staged in a work directory."""

    files: dict[tuple[int, int], str] = field(default_factory=dict)  # (copy, offset) -> path
    failed: dict[int, str] = field(default_factory=dict)  # copy -> why it cannot be copied
    downloaded: int = 0  # bytes of data objects read from the store
    packs_read: int = 0


def stage(
    repo: Repository,
    copies: list[Copy],
    workdir: str,
    *,
    progress: Callable[[], None] | None = None,
) -> Staged:
    """Download each data object that holds content of ``copies`` once (verified: size,
    SHA-256, signature; any mirror) and stage the members they need. A copy whose content
    cannot be had (object damaged everywhere, member missing, hash wrong) is listed in
    ``failed``; nothing else is downloaded."""
    out = Staged()
    wanted: dict[int, dict[bytes, list[_Slot]]] = {}
    for i, c in enumerate(copies):
        if c.parts:
            for s, p in c.parts:
                name = os.fsencode(part_member_name(p.path, p.offset))
                slot = _Slot(i, p, os.path.join(workdir, f"c{i}-{p.offset}"))
                wanted.setdefault(s, {}).setdefault(name, []).append(slot)
        elif c.packs:
            name = os.fsencode(member_name(c.entry.path))
            slot = _Slot(i, None, os.path.join(workdir, f"c{i}"))
            wanted.setdefault(c.seq, {}).setdefault(name, []).append(slot)
    for seq in sorted(wanted):
        header = repo.by_seq[seq]
        pending = wanted[seq]
        try:
            zst = fetch_from_any(repo.backends, repo.gpg, header, workdir)
        except IntegrityError as exc:
            _fail(out, pending, str(exc))
            continue
        out.downloaded += header.data_size
        out.packs_read += 1
        try:
            for m in members(zst):
                for slot in pending.pop(m.name, []):
                    _stage_member(out, copies, slot, m.chunks())
        except _UNREADABLE as exc:
            _fail(out, pending, f"{header.data_key} is unreadable: {exc}")
        finally:
            os.unlink(zst)
        _fail(out, pending, f"missing from {header.data_key}")
        if progress is not None:
            progress()
    return out


def _fail(out: Staged, pending: dict[bytes, list[_Slot]], why: str) -> None:
    for slots in pending.values():
        for slot in slots:
            out.failed.setdefault(slot.copy, why)
    pending.clear()


def _stage_member(out: Staged, copies: list[Copy], slot: _Slot, chunks: Iterator[bytes]) -> None:
    e = slot.part or copies[slot.copy].entry
    digest = hashlib.sha256()

    def hashed() -> Iterator[bytes]:
        for chunk in chunks:
            digest.update(chunk)
            yield chunk

    body = hashed()
    stored = _segments_only(body, e.sparse) if e.sparse and slot.part is None else body
    with open(slot.path, "wb") as f:
        for chunk in stored:
            f.write(chunk)
    for _ in body:  # hash the whole content, past the last data segment
        pass
    if digest.hexdigest() != e.sha256:
        out.failed.setdefault(slot.copy, "its content does not match its SHA-256")
        return
    out.files[(slot.copy, slot.part.offset if slot.part else -1)] = slot.path


def _read(path: str) -> Iterator[bytes]:
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            yield block


# --- writing the record's pack ---------------------------------------------------------


def record_order(e: Entry) -> tuple[bytes, int, int, int]:
    """Clock order for a record's lines: path, then since, parts before their file."""
    return (e.key, e.since, 0 if e.kind == model.PART else 1, e.offset)


def add_to_pack(
    writer: PackWriter, copies: list[Copy], staged: Staged, lost: list[Entry]
) -> list[Entry]:
    """Write the copies that were staged (content and metadata) and note the ``lost``
    lines, all in clock order; return the entry lines the record's index lists."""
    items: list[tuple[tuple[bytes, int, int, int], int, Entry | None]] = []
    for i, c in enumerate(copies):
        if i not in staged.failed:
            items.append((record_order(c.entry), i, None))
    items += [(record_order(e), -1, e) for e in lost]
    items.sort(key=lambda t: (t[0], t[1]))
    listed: list[Entry] = []
    for _, i, lost_line in items:
        if lost_line is not None:
            writer.note(lost_line)
            listed.append(lost_line)
            continue
        c = copies[i]
        e = c.entry
        if e.kind == model.FILE and e.parts:
            for _, p in c.parts:
                done = writer.add_part(p, _read(staged.files[(i, p.offset)]))
                listed.append(_checked(done, p))
            writer.note(e)
            listed.append(e)
        elif e.kind == model.FILE:
            path = staged.files.get((i, -1))
            done = writer.add_file(e, _read(path) if path else iter(()))
            listed.append(_checked(done, e))
        else:
            writer.add_meta(e)
            listed.append(e)
    return listed


def _checked(done: Entry, wanted: Entry) -> Entry:
    if done.sha256 != wanted.sha256:
        raise IntegrityError(
            f"copying {os.fsdecode(wanted.path)!r} forward gave other content than its "
            "index records; nothing was committed"
        )
    return done
