"""The text index: one header, a blank line, one line per entry (docs/format.md).

Pure functions only: render an index to bytes, parse bytes back. Every path and every
name is escaped so that any byte string round-trips and a line never holds a space,
newline, ``=`` or ``,`` of its own: bytes 0x21-0x7E other than ``\\``, ``=`` and ``,``
stand for themselves, every other byte is written ``\\xHH`` (two lower-case hex digits).
"""

from __future__ import annotations

import dataclasses
import operator
import re
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from blanket import model
from blanket.model import Entry

MAGIC = b"blanket-index 1"

_NEEDS_ESCAPE = re.compile(r"[^\x21-\x2b\x2d-\x3c\x3e-\x5b\x5d-\x7e]")
_ESCAPE_SEQ = re.compile(r"\\x([0-9a-f]{2})")


def escape(raw: bytes) -> str:
    """Escape bytes into the index's printable ASCII form."""
    text = raw.decode("latin-1")
    if not _NEEDS_ESCAPE.search(text):
        return text
    return _NEEDS_ESCAPE.sub(lambda m: f"\\x{ord(m.group()):02x}", text)


def unescape(text: str) -> bytes:
    """Invert :func:`escape`; raise ``ValueError`` on anything it could not have made."""
    if "\\" not in text:
        if _NEEDS_ESCAPE.search(text):
            raise ValueError(f"unescaped byte in index field {text!r}")
        return text.encode("ascii")
    rest = _ESCAPE_SEQ.sub("", text)
    if _NEEDS_ESCAPE.search(rest):
        raise ValueError(f"bad escape in index field {text!r}")
    return _ESCAPE_SEQ.sub(lambda m: chr(int(m.group(1), 16)), text).encode("latin-1")


@dataclass(frozen=True, slots=True)
class Frame:
    """One zstd frame of a pack's compressed tar stream: ``size`` bytes (of the stream
    inside the encryption) with SHA-256 ``sha256``, holding the members of the entries
    from number ``first`` (counting the index's entry lines from 0) up to the next
    frame's ``first``. Frames follow each other with no gap, from offset 0."""

    first: int
    size: int
    sha256: str


@dataclass(frozen=True, slots=True)
class IndexHeader:
    """What an index says about its pack, its layer and its place in the chain.

    ``clock_from`` is the clock pointer the pack continues from (exclusive; ``None`` at
    the start of the tree); ``clock_to`` is the last path the pass had reached when the
    pack was sealed. ``complete`` marks the pack that reached the end of the tree and so
    closes its layer. The ``data_*`` fields are absent (empty/zero) in the copy of the
    index stored inside the pack itself, because a pack cannot name its own hash.
    """

    repository: str
    seq: int
    layer: int
    layer_pack: int
    full: bool
    clock_from: bytes | None
    clock_to: bytes
    complete: bool
    created: int
    source_host: str
    source_path: bytes
    entries: int
    prev_index_sha256: str
    data_key: str = ""
    data_size: int = 0
    data_sha256: str = ""
    expire_below: int = 0
    gc_record: bool = False
    removed: tuple[tuple[int, int], ...] = ()
    frames: tuple[Frame, ...] = ()


def render_header(h: IndexHeader, *, with_data: bool = True) -> bytes:
    lines = [
        MAGIC.decode(),
        f"repository: {h.repository}",
        f"seq: {h.seq}",
        f"layer: {h.layer}",
        f"layer-pack: {h.layer_pack}",
        f"layer-kind: {'full' if h.full else 'incremental'}",
        f"clock-from: {'-' if h.clock_from is None else escape(h.clock_from)}",
        f"clock-to: {escape(h.clock_to)}",
        f"layer-complete: {'yes' if h.complete else 'no'}",
        f"created: {h.created}",
        f"source-host: {escape(h.source_host.encode())}",
        f"source-path: {escape(h.source_path)}",
        f"entries: {h.entries}",
        f"prev-index-sha256: {h.prev_index_sha256 or 'none'}",
        f"expire-below: {h.expire_below}",
    ]
    if h.gc_record:
        lines.append("gc-record: yes")
        lines.append("removed: " + (",".join(f"{a}-{b}" for a, b in h.removed) or "-"))
    if with_data:
        lines += [
            f"data-key: {h.data_key}",
            f"data-size: {h.data_size}",
            f"data-sha256: {h.data_sha256}",
        ]
        if h.frames:
            lines.append("frames: " + ",".join(f"{f.first}:{f.size}:{f.sha256}" for f in h.frames))
    return ("\n".join(lines) + "\n\n").encode("ascii")


def render_entry(e: Entry) -> bytes:
    fields = [e.kind, escape(e.path)]
    if e.kind not in (model.DELETED, model.LOST):
        fields += [f"mode={e.mode:04o}", f"uid={e.uid}", f"gid={e.gid}"]
        if e.user:
            fields.append(f"user={escape(e.user)}")
        if e.group:
            fields.append(f"group={escape(e.group)}")
        fields += [f"mtime={e.mtime_ns}", f"ctime={e.ctime_ns}", f"ino={e.ino}"]
    if e.kind in (model.FILE, model.HARDLINK, model.PART):
        fields += [f"size={e.size}", f"sha256={e.sha256 or '-'}"]
    if e.kind == model.PART:
        fields += [f"offset={e.offset}", f"length={e.length}"]
    if e.parts:
        fields.append(f"parts={e.parts}")
    if e.ref_seq >= 0:
        fields += [f"from={e.ref_seq}", f"as={escape(e.ref_path)}"]
        if e.ref_at >= 0:
            fields.append(f"at={e.ref_at}")
    if e.oldest >= 0:
        fields.append(f"oldest={e.oldest}")
    if e.until:
        fields.append(f"until={e.until}")
    if e.target or e.kind in (model.SYMLINK, model.HARDLINK):
        fields.append(f"target={escape(e.target)}")
    if e.kind in (model.CHARDEV, model.BLOCKDEV):
        fields.append(f"rdev={e.rdev_major},{e.rdev_minor}")
    if e.sparse:
        fields.append("sparse=" + ",".join(f"{o}:{n}" for o, n in e.sparse))
    if e.xattrs:
        fields.append("xattrs=" + ",".join(f"{escape(k)}={escape(v)}" for k, v in e.xattrs))
    fields.append(f"since={e.since}")
    return (" ".join(fields) + "\n").encode("ascii")


class _Rendered:
    """The entry lines of the last few entry lists rendered: a commit renders the same
    entries twice (the pack's copy, then the stored index) and then caches the index
    locally (:func:`rendered_entries`), so the lines are made once and the entries need
    no parsing back. Shared by the run thread (which seals packs) and the commit thread
    (which stores them): every access holds the lock, and each list's lines are kept
    with a copy of that list, so lines are reused only for the very same entries."""

    lock = threading.Lock()
    memo: dict[int, tuple[list[Entry], bytes]] = {}  # id(list) -> (its items, lines)
    slots = 4


def render_index(h: IndexHeader, entries: Iterable[Entry], *, with_data: bool = True) -> bytes:
    items = entries if isinstance(entries, list) else list(entries)
    with _Rendered.lock:
        hit = _Rendered.memo.get(id(items))
    if hit is not None and len(hit[0]) == len(items) and all(map(operator.is_, hit[0], items)):
        body = hit[1]
    else:
        body = b"".join([render_entry(e) for e in items])
        with _Rendered.lock:
            memo = _Rendered.memo
            memo.pop(id(items), None)
            while len(memo) >= _Rendered.slots:
                del memo[next(iter(memo))]
            memo[id(items)] = (list(items), body)
    return render_header(h, with_data=with_data) + body


def rendered_entries(index: bytes) -> list[Entry] | None:
    """The entries of ``index`` if it was rendered lately (without parsing); the memory
    of it is released."""
    head_end = index.find(b"\n\n")
    if head_end < 0:
        return None
    body = index[head_end + 2 :]
    with _Rendered.lock:
        for key, (entries, lines) in list(_Rendered.memo.items()):
            if lines == body:
                del _Rendered.memo[key]  # used once, by the commit that stores it
                return entries
    return None


_FIELDS = operator.attrgetter(*(f.name for f in dataclasses.fields(Entry)))


def entry_fields(e: Entry) -> tuple[Any, ...]:
    """Every field of ``e`` in declaration order: ``Entry(*entry_fields(e)) == e``."""
    fields: tuple[Any, ...] = _FIELDS(e)
    return fields


# --- parsing ----------------------------------------------------------------------------


def _header_value(fields: dict[str, str], name: str) -> str:
    try:
        return fields[name]
    except KeyError:
        raise ValueError(f"index header lacks {name!r}") from None


def parse_header(lines: Iterable[bytes]) -> IndexHeader:
    """Parse header lines (the magic line first, up to but not including the blank line)."""
    it = iter(lines)
    if next(it, b"").rstrip(b"\n") != MAGIC:
        raise ValueError("not a blanket index (bad first line)")
    fields: dict[str, str] = {}
    for raw in it:
        line = raw.decode("ascii").rstrip("\n")
        name, sep, value = line.partition(": ")
        if not sep:
            raise ValueError(f"bad index header line {line!r}")
        fields[name] = value

    def get(name: str) -> str:
        return _header_value(fields, name)

    clock_from = get("clock-from")
    prev = get("prev-index-sha256")
    return IndexHeader(
        repository=get("repository"),
        seq=int(get("seq")),
        layer=int(get("layer")),
        layer_pack=int(get("layer-pack")),
        full=get("layer-kind") == "full",
        clock_from=None if clock_from == "-" else unescape(clock_from),
        clock_to=unescape(get("clock-to")),
        complete=get("layer-complete") == "yes",
        created=int(get("created")),
        source_host=unescape(get("source-host")).decode("utf-8", "replace"),
        source_path=unescape(get("source-path")),
        entries=int(get("entries")),
        prev_index_sha256="" if prev == "none" else prev,
        expire_below=int(fields.get("expire-below", "0")),
        gc_record=fields.get("gc-record") == "yes",
        removed=_parse_ranges(fields.get("removed", "-")),
        data_key=fields.get("data-key", ""),
        data_size=int(fields.get("data-size", "0")),
        data_sha256=fields.get("data-sha256", ""),
        frames=_parse_frames(fields.get("frames", "")),
    )


_FRAME = re.compile(r"(\d+):(\d+):([0-9a-f]{64})\Z")


def _parse_frames(text: str) -> tuple[Frame, ...]:
    """The ``frames:`` field: ``FIRST:SIZE:SHA256`` items, comma-separated."""
    if not text:
        return ()
    frames = []
    for item in text.split(","):
        m = _FRAME.match(item)
        if m is None:
            raise ValueError(f"bad frame {item!r} in an index")
        frames.append(Frame(int(m.group(1)), int(m.group(2)), m.group(3)))
    if any(b.first < a.first for a, b in zip(frames, frames[1:], strict=False)):
        raise ValueError("frames out of order in an index")
    return tuple(frames)


_KIND_SET = frozenset(model.KINDS)
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")  # never in an entry line


def _field_bytes(text: str) -> bytes:
    """An escaped field value (the line is known to be printable ASCII) as bytes."""
    if "\\" in text or "=" in text or "," in text:
        return unescape(text)  # decodes escapes, refuses a bare "=" or ","
    return text.encode("ascii")


def parse_entry(line: bytes) -> Entry:
    """Parse one entry line; raise ``ValueError`` on anything malformed or unsafe."""
    text = line.decode("ascii").rstrip("\n")
    parts = text.split(" ")
    if len(parts) < 2 or parts[0] not in _KIND_SET or _CONTROL.search(text):
        raise ValueError(f"bad index entry line {line[:80]!r}")
    kind = parts[0]
    path = model.check_relpath(_field_bytes(parts[1]))
    del parts[:2]
    pairs = [item.split("=", 1) for item in parts]
    try:
        f = dict(pairs)
    except ValueError:
        raise ValueError(f"bad field in index entry {line[:80]!r}") from None
    if len(f) != len(pairs):
        raise ValueError(f"repeated field in index entry {line[:80]!r}")
    get = f.get
    if "since" not in f:
        raise ValueError("index entry lacks 'since'")
    target = b""
    if "target" in f:
        target = _field_bytes(f["target"])
        if kind == model.HARDLINK:
            model.check_relpath(target)  # a hard link names a path inside the tree
    elif kind == model.HARDLINK:
        model.check_relpath(target)
    rdev = get("rdev")
    if rdev is None:
        major = minor = 0
    else:
        a, b = rdev.split(",")
        major, minor = int(a), int(b)
    user = get("user")
    group = get("group")
    sha = get("sha256", "-")
    xattrs = get("xattrs")
    sparse = get("sparse")
    return Entry(
        kind,
        path,
        int(get("mode", "0"), 8),
        int(get("uid", "0")),
        int(get("gid", "0")),
        b"" if user is None else _field_bytes(user),
        b"" if group is None else _field_bytes(group),
        int(get("mtime", "0")),
        int(get("ctime", "0")),
        int(get("ino", "0")),
        int(get("size", "0")),
        "" if sha == "-" else sha,
        target,
        major,
        minor,
        () if not xattrs else _parse_xattrs(xattrs),
        () if not sparse else _parse_sparse(sparse),
        int(f["since"]),
        int(get("offset", "0")),
        int(get("length", "0")),
        int(get("parts", "0")),
        int(get("until", "0")),
        *_ref_fields(kind, f, line),
    )


def _ref_fields(kind: str, f: dict[str, str], line: bytes) -> tuple[int, bytes, int, int]:
    """``(ref_seq, ref_path, ref_at, oldest)`` of an entry line (docs/format.md, "Shared
    content"); refuses a reference on a kind that has no content, or a half one."""
    if "from" not in f and "as" not in f and "at" not in f:
        return -1, b"", -1, int(f.get("oldest", "-1"))
    if kind not in (model.FILE, model.PART) or "from" not in f or "as" not in f:
        raise ValueError(f"bad content reference in index entry {line[:80]!r}")
    ref_path = model.check_relpath(_field_bytes(f["as"]))
    ref_seq, ref_at = int(f["from"]), int(f.get("at", "-1"))
    if ref_seq < 0 or ("at" in f and ref_at < 0):
        raise ValueError(f"bad content reference in index entry {line[:80]!r}")
    return ref_seq, ref_path, ref_at, int(f.get("oldest", "-1"))


def _parse_ranges(text: str) -> tuple[tuple[int, int], ...]:
    if text in ("", "-"):
        return ()
    out = []
    for item in text.split(","):
        a, _, b = item.partition("-")
        out.append((int(a), int(b)))
    return tuple(out)


def _parse_xattrs(text: str) -> tuple[tuple[bytes, bytes], ...]:
    if not text:
        return ()
    pairs = []
    for item in text.split(","):
        name, _, value = item.partition("=")
        pairs.append((unescape(name), unescape(value)))
    return tuple(pairs)


def _parse_sparse(text: str) -> tuple[tuple[int, int], ...]:
    if not text:
        return ()
    segs = []
    for item in text.split(","):
        off, _, n = item.partition(":")
        segs.append((int(off), int(n)))
    return tuple(segs)


def split_index(data: bytes) -> tuple[IndexHeader, list[bytes]]:
    """Split a whole index into its parsed header and its raw entry lines."""
    head, sep, body = data.partition(b"\n\n")
    if not sep:
        raise ValueError("index has no blank line after its header")
    header = parse_header(head.split(b"\n"))
    lines = body.splitlines(keepends=True)
    if len(lines) != header.entries:
        raise ValueError(f"index says {header.entries} entries but holds {len(lines)}")
    return header, lines


def read_entries(stream: Iterable[bytes]) -> Iterator[Entry]:
    """Entries of an index read line by line (e.g. an open index file). The local
    state's cached indexes are read through ``LocalState.entries`` instead, which uses
    their compact companions."""
    it = iter(stream)
    for line in it:
        if line in (b"\n", b""):
            break
    for line in it:
        yield parse_entry(line)


def read_header_from(stream: Iterable[bytes]) -> IndexHeader:
    lines = []
    for line in stream:
        if line == b"\n":
            break
        lines.append(line.rstrip(b"\n"))
    return parse_header(lines)
