"""The data model every layer of blanket shares: entries, the clock order, path rules.

Paths are bytes, relative to the backed-up source, components joined by ``/``; the source
root itself is ``b"."``. Nothing here does I/O and nothing here imports our other modules
except ``blanket.errors``.
"""

from __future__ import annotations

import operator
from dataclasses import MISSING, dataclass, field, fields
from typing import Any, TypeVar

# Entry kinds, as written in the index (one letter each).
FILE = "f"
DIR = "d"
SYMLINK = "l"
HARDLINK = "h"
FIFO = "p"
CHARDEV = "c"
BLOCKDEV = "b"
DELETED = "x"
PART = "P"  # one part of a file split over several packs; not a version of its own
LOST = "L"  # in a gc record: a version gc removed with an expired layer (since..until)
KINDS = (FILE, DIR, SYMLINK, HARDLINK, FIFO, CHARDEV, BLOCKDEV, DELETED, PART, LOST)

ROOT = b"."

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Entry:
    """One version of one path, as an index line records it.

    ``mode`` holds the permission bits including setuid, setgid and sticky
    (``st_mode & 0o7777``); the type is ``kind``. ``target`` is a symlink's target or, for a
    hard link, the path of the entry that holds the content. ``sparse`` lists the data
    segments ``(offset, length)`` of a sparse file (empty for a dense one). ``since`` is
    when this version was first seen, in nanoseconds since the epoch.

    A file larger than a pack is split: its content goes into ``PART`` entries, each
    holding ``length`` bytes at ``offset`` (``size`` and the stat fields are the whole
    file's, ``sha256`` the part's), written in consecutive commits of one layer; the
    file's own entry follows the last part and says how many there are (``parts``).

    Content may live elsewhere (docs/format.md, "Shared content"): a ``FILE`` or
    ``PART`` with ``ref_seq >= 0`` has no member of its own; its bytes are the member
    ``tree/<ref_path>`` (``ref_at < 0``) or ``parts/<ref_path>/<ref_at>`` of the pack
    of commit ``ref_seq``. A split file's entry names in ``oldest`` the lowest commit
    that holds any of its parts.

    A ``LOST`` entry, in a gc record, says that the version of ``path`` current from
    ``since`` until ``until`` was removed with an expired layer: missing, never wrong.
    """

    kind: str
    path: bytes
    mode: int = 0
    uid: int = 0
    gid: int = 0
    user: bytes = b""
    group: bytes = b""
    mtime_ns: int = 0
    ctime_ns: int = 0
    ino: int = 0
    size: int = 0
    sha256: str = ""
    target: bytes = b""
    rdev_major: int = 0
    rdev_minor: int = 0
    xattrs: tuple[tuple[bytes, bytes], ...] = field(default=())
    sparse: tuple[tuple[int, int], ...] = field(default=())
    since: int = 0
    offset: int = 0
    length: int = 0
    parts: int = 0
    until: int = 0  # LOST: when the version stopped being current
    ref_seq: int = -1  # FILE/PART: content is a member of commit ref_seq's pack (from=)
    ref_path: bytes = b""  # ... the member of that path (as=)
    ref_at: int = -1  # ... its part member at this offset (at=); -1: the whole member
    oldest: int = -1  # FILE with parts: the lowest commit holding any of its pieces

    @property
    def key(self) -> bytes:
        """``clock_key(self.path)``."""
        path = self.path
        return b"" if path == ROOT else path.replace(b"/", b"\0")

    @property
    def is_ref(self) -> bool:
        """Its content is a member of another commit's pack (or another member)."""
        return self.ref_seq >= 0

    def content_floor(self, seq: int) -> int:
        """The lowest commit number holding any of this version's content, given the
        commit ``seq`` that recorded it."""
        low = seq
        if self.ref_seq >= 0:
            low = min(low, self.ref_seq)
        if self.oldest >= 0:
            low = min(low, self.oldest)
        return low

    @property
    def is_deletion(self) -> bool:
        return self.kind == DELETED


def fast_init(cls: type[T]) -> type[T]:
    """Give the frozen, slotted dataclass ``cls`` an ``__init__`` with the generated
    one's signature and effect that stores each field through its slot directly (the
    generated one calls ``object.__setattr__`` per field: for ``Entry`` a quarter of the
    cost of every entry read). For classes without ``__post_init__`` or factories."""
    declared = fields(cls)  # type: ignore[arg-type]
    names = [f.name for f in declared]
    params = [f.name if f.default is MISSING else f"{f.name}=_d_{f.name}" for f in declared]
    body = "".join(f"    _s_{n}(self, {n})\n" for n in names)
    scope: dict[str, Any] = {}
    for f in declared:
        scope[f"_s_{f.name}"] = cls.__dict__[f.name].__set__
        scope[f"_d_{f.name}"] = f.default
    source = f"def __init__(self, {', '.join(params)}) -> None:\n{body}"
    exec(source, scope)  # noqa: S102 - generated from the field list above
    init = scope["__init__"]
    init.__qualname__ = f"{cls.__name__}.__init__"
    init.__doc__ = cls.__init__.__doc__
    cls.__init__ = init  # type: ignore[method-assign]
    return cls


fast_init(Entry)

_ENTRY_FIELDS = tuple(f.name for f in fields(Entry))
_entry_values = operator.attrgetter(*_ENTRY_FIELDS)
_ENTRY_INDEX = {name: i for i, name in enumerate(_ENTRY_FIELDS)}


def evolve(e: Entry, **changes: Any) -> Entry:
    """``dataclasses.replace(e, **changes)`` at half the cost, for the per-file paths of
    a backup (an unknown field name raises ``KeyError``)."""
    values = list(_entry_values(e))
    for name, value in changes.items():
        values[_ENTRY_INDEX[name]] = value
    return Entry(*values)


def clock_key(path: bytes) -> bytes:
    """The file clock's sort key for a relative path.

    The clock is depth-first with children compared component by component as bytes.
    Names never contain NUL, so replacing ``/`` by NUL turns that order into plain byte
    order: ``a/b`` (``a\\0b``) < ``a-b`` < ``a.b``, and a directory comes before its
    children. The root ``.`` sorts before everything.
    """
    if path == ROOT:
        return b""
    return path.replace(b"/", b"\0")


def join(parent: bytes, name: bytes) -> bytes:
    """The path of ``name`` inside directory ``parent``."""
    return name if parent == ROOT else parent + b"/" + name


def parent_of(path: bytes) -> bytes:
    """The directory holding ``path`` (the root for a top-level name)."""
    head, sep, _ = path.rpartition(b"/")
    return head if sep else ROOT


def is_within(path: bytes, top: bytes) -> bool:
    """True when ``path`` is ``top`` or lies below it."""
    return top == ROOT or path == top or path.startswith(top + b"/")


def check_relpath(path: bytes) -> bytes:
    """Return ``path`` if it is a clean relative path, else raise ``ValueError``.

    Clean: ``.`` or components that are not empty, ``.`` or ``..``, with no NUL byte and no
    leading ``/``. Restore and the index reader both call this on untrusted input.
    """
    if path == ROOT:
        return path
    framed = b"/" + path + b"/"  # an empty, "." or ".." component shows as one of these
    if b"//" in framed or b"/./" in framed or b"/../" in framed or b"\0" in path:
        raise ValueError(f"not a clean relative path: {path!r}")
    return path


def normalize_user_path(text: str) -> bytes:
    """Turn a path typed by a user (``docs/2024/``, ``./docs``) into the index form."""
    import os

    raw = os.fsencode(text).strip(b"/")
    parts = [p for p in raw.split(b"/") if p not in (b"", b".")]
    if not parts:
        return ROOT
    return check_relpath(b"/".join(parts))
