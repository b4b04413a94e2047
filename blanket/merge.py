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
from blanket.model import Entry


@dataclass(frozen=True, slots=True)
class Located:
    """An entry together with the commit (``seq``) and layer that recorded it, and
    (``origin``) which of several repositories, when a restore meshes independent ones."""

    entry: Entry
    seq: int
    layer: int
    origin: int = 0


@dataclass(slots=True)
class _Ancestor:
    path: bytes
    cutoff: int  # entries below with since <= cutoff are deleted
    open: bool  # True when children may be shown (a shown directory)


def _checked(stream: Iterable[Located]) -> Iterator[Located]:
    """Pass a layer's stream through, refusing one that is not in clock order."""
    last: bytes | None = None
    for item in stream:
        key = item.entry.key
        if last is not None and key < last:
            raise IntegrityError(
                f"commit {item.seq} lists {item.entry.path!r} out of clock order "
                "(a reordered or swapped pack?)"
            )
        last = key
        yield item


def groups(streams: Sequence[Iterable[Located]]) -> Iterator[list[Located]]:
    """Every recorded version of each path, path by path in clock order."""
    merged = heapq.merge(*(_checked(s) for s in streams), key=lambda x: x.entry.key)
    group: list[Located] = []
    for item in merged:
        if group and item.entry.key != group[0].entry.key:
            yield group
            group = []
        group.append(item)
    if group:
        yield group


def replay(streams: Sequence[Iterable[Located]], *, at: int | None = None) -> Iterator[Located]:
    """The tree that replaying ``streams`` gives, as of time ``at`` (ns) or latest."""
    stack: list[_Ancestor] = []
    for group in groups(streams):
        path = group[0].entry.path
        while stack and not model.is_within(path, stack[-1].path):
            stack.pop()
        parent = stack[-1] if stack else None
        cutoff = parent.cutoff if parent else -1
        candidates = [g for g in group if at is None or g.entry.since <= at]
        if not candidates:
            stack.append(_Ancestor(path, cutoff, open=parent.open if parent else True))
            continue
        chosen = max(candidates, key=lambda g: (g.entry.since, g.seq, g.origin))
        markers = [g.entry.since for g in candidates if g.entry.is_deletion]
        shown = (
            (parent is None or parent.open)
            and not chosen.entry.is_deletion
            and chosen.entry.since > cutoff
        )
        stack.append(
            _Ancestor(
                path,
                max([cutoff, *markers]),
                open=shown and chosen.entry.kind == model.DIR,
            )
        )
        if shown:
            yield chosen
