"""What changed between two points of a repository's history (pure, streaming).

Both trees come from :func:`blanket.merge.replay`, so both are in clock order; walking
them side by side like a merge finds what was added, deleted and changed with memory
that does not grow with the tree.

A change is ``added``, ``deleted`` or ``changed``; a changed entry says what changed:
``type`` (file became directory, ...), ``content`` (size or SHA-256, link target,
device numbers) or ``metadata`` (mode, owner, mtime, extended attributes). A directory
whose only change is its mtime (something inside it changed) is not reported: its
children are.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from blanket import model
from blanket.merge import Located
from blanket.model import Entry

ADDED, DELETED, CHANGED = "added", "deleted", "changed"
MARKS = {ADDED: "+", DELETED: "-", "type": "T", "content": "M", "metadata": "U"}


@dataclass(frozen=True)
class Change:
    change: str  # added, deleted or changed
    what: str  # for changed: type, content or metadata; else the change itself
    old: Entry | None
    new: Entry | None

    @property
    def entry(self) -> Entry:
        e = self.new if self.new is not None else self.old
        assert e is not None
        return e

    @property
    def mark(self) -> str:
        return MARKS[self.what]


def _content(e: Entry) -> tuple[object, ...]:
    return (e.size, e.sha256, e.target, e.rdev_major, e.rdev_minor, e.sparse)


def _metadata(e: Entry) -> tuple[object, ...]:
    mtime = 0 if e.kind == model.DIR else e.mtime_ns
    return (e.mode, e.uid, e.gid, e.user, e.group, mtime, e.xattrs)


def difference(old: Entry, new: Entry) -> str | None:
    """What differs between two versions of one path (None: nothing that matters)."""
    if old.kind != new.kind:
        return "type"
    if _content(old) != _content(new):
        return "content"
    if _metadata(old) != _metadata(new):
        return "metadata"
    return None


def compare(old: Iterable[Located], new: Iterable[Located]) -> Iterator[Change]:
    """The changes from tree ``old`` to tree ``new`` (both in clock order)."""
    olds, news = iter(old), iter(new)
    a, b = next(olds, None), next(news, None)
    while a is not None or b is not None:
        if b is None or (a is not None and a.entry.key < b.entry.key):
            assert a is not None
            yield Change(DELETED, DELETED, a.entry, None)
            a = next(olds, None)
        elif a is None or b.entry.key < a.entry.key:
            yield Change(ADDED, ADDED, None, b.entry)
            b = next(news, None)
        else:
            what = difference(a.entry, b.entry)
            if what is not None:
                yield Change(CHANGED, what, a.entry, b.entry)
            a, b = next(olds, None), next(news, None)


@dataclass
class Tally:
    added: int = 0
    deleted: int = 0
    changed: int = 0
    bytes_added: int = 0
    bytes_removed: int = 0

    def count(self, c: Change) -> None:
        old = c.old.size if c.old is not None and c.old.kind == model.FILE else 0
        new = c.new.size if c.new is not None and c.new.kind == model.FILE else 0
        setattr(self, c.change, getattr(self, c.change) + 1)
        if c.what != "metadata":  # content that came in, content that went away
            self.bytes_added += new
            self.bytes_removed += old
