"""Replay: the streaming N-way merge of layers into one tree (pure, no I/O of its own).

Each layer's entries arrive sorted by the file clock. For every path the merge collects
the entries of all layers and keeps one version:

* only entries whose ``since`` is at or before the requested time count (no time: all);
* among those, the one with the greatest ``since`` wins (ties: the later commit);
* a deletion marker that wins removes the path; a marker on a directory also hides every
  entry below it whose ``since`` is not newer than the marker (a directory deleted and
  created again keeps only what was seen after it came back);
* a path is shown only if its nearest recorded ancestor is a shown directory.

Memory holds one entry per layer plus the chain of ancestors of the current path, never
the tree.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

from blanket import model
from blanket.errors import IntegrityError
from blanket.model import Entry, fast_init


@dataclass(frozen=True, slots=True)
class Located:
    """An entry together with the commit (``seq``) and layer that recorded it, and
    (``origin``) which of several repositories, when a restore meshes independent ones."""

    entry: Entry
    seq: int
    layer: int
    origin: int = 0


fast_init(Located)


def _checked(stream: Iterable[Located], order: int) -> Iterator[tuple[bytes, int, Located]]:
    """A layer's stream as ``(clock key, order, item)``, refusing one that is not in
    clock order. ``order`` (the stream's place) breaks ties as ``heapq.merge`` would."""
    last = b""
    first = True
    clock_key = model.clock_key
    for item in stream:
        key = clock_key(item.entry.path)
        if key < last and not first:
            raise IntegrityError(
                f"commit {item.seq} lists {item.entry.path!r} out of clock order "
                "(a reordered or swapped pack?)"
            )
        last = key
        first = False
        yield key, order, item


def _keyed_groups(streams: Sequence[Iterable[Located]]) -> Iterator[tuple[bytes, list[Located]]]:
    """``(clock key, every recorded version of that path)``, path by path in clock order."""
    if len(streams) == 1:  # one layer: nothing to merge
        merged: Iterable[tuple[bytes, int, Located]] = _checked(streams[0], 0)
    else:
        merged = heapq.merge(*(_checked(s, i) for i, s in enumerate(streams)))
    group: list[Located] = []
    current = b""
    for key, _, item in merged:
        if group and key != current:
            yield current, group
            group = []
        current = key
        group.append(item)
    if group:
        yield current, group


def groups(streams: Sequence[Iterable[Located]]) -> Iterator[list[Located]]:
    """Every recorded version of each path, path by path in clock order."""
    for _, group in _keyed_groups(streams):
        yield group


def replay(streams: Sequence[Iterable[Located]], *, at: int | None = None) -> Iterator[Located]:
    """The tree that replaying ``streams`` gives, as of time ``at`` (ns) or latest."""
    # The chain of ancestors of the current path: (its path + "/" (b"" for the root),
    # the cutoff below it (entries with since <= cutoff are deleted), whether children
    # may be shown (a shown directory)). Keys are unique and come depth-first, so a path
    # lies below an entry exactly when it starts with that entry's prefix.
    stack: list[tuple[bytes, int, bool]] = []
    deleted, directory, root = model.DELETED, model.DIR, model.ROOT
    for _, group in _keyed_groups(streams):
        path = group[0].entry.path
        while stack and not path.startswith(stack[-1][0]):
            stack.pop()
        if stack:
            _, cutoff, parent_open = stack[-1]
        else:
            cutoff, parent_open = -1, True
        prefix = b"" if path == root else path + b"/"
        if len(group) == 1:  # the common case: one version of the path
            chosen = group[0]
            e = chosen.entry
            if at is not None and e.since > at:
                stack.append((prefix, cutoff, parent_open))
                continue
            if e.kind == deleted:
                stack.append((prefix, max(cutoff, e.since), False))
                continue
            shown = parent_open and e.since > cutoff
            stack.append((prefix, cutoff, shown and e.kind == directory))
            if shown:
                yield chosen
            continue
        candidates = [g for g in group if at is None or g.entry.since <= at]
        if not candidates:
            stack.append((prefix, cutoff, parent_open))
            continue
        chosen = max(candidates, key=lambda g: (g.entry.since, g.seq, g.origin))
        markers = [g.entry.since for g in candidates if g.entry.is_deletion]
        shown = parent_open and not chosen.entry.is_deletion and chosen.entry.since > cutoff
        stack.append((prefix, max([cutoff, *markers]), shown and chosen.entry.kind == directory))
        if shown:
            yield chosen
