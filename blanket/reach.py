"""Which commits can hold a path, from the clock ranges their indexes record (pure).

A pack holds entries of one contiguous stretch of the file clock: after its
``clock-from`` (the pointer it continued from; the start of the tree when there is none)
up to its ``clock-to`` (the last path reached when it was sealed), or to the end of the
tree for the pack that completed its layer. Both ends are taken as inclusive, so a path
on a boundary is never missed. A request for some paths needs the packs whose stretch
meets one of those subtrees or holds one of their ancestors (whose entries, deletion
markers included, decide whether the subtree is shown): so a subtree restore, ``ls``,
``cat`` or ``diff`` of a path reads only those indexes, not the whole repository.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from blanket import model
from blanket.indexfmt import IndexHeader


@dataclass(frozen=True)
class Reach:
    """The clock keys a request for ``tops`` needs: subtree spans and ancestor points."""

    spans: tuple[tuple[bytes, bytes], ...]  # [low, high) clock keys of each subtree
    points: frozenset[bytes]  # clock keys of the subtrees' ancestors


def reach_of(tops: Iterable[bytes]) -> Reach | None:
    """What a request for ``tops`` needs; ``None`` means everything (no path, or the
    root)."""
    tops = list(tops)
    if not tops or model.ROOT in tops:
        return None
    spans, points = [], set()
    for top in tops:
        key = model.clock_key(top)
        spans.append((key, key + b"\x01"))  # the top, and below it: key + NUL + ...
        p = top
        while p != model.ROOT:
            p = model.parent_of(p)
            points.add(model.clock_key(p))
    return Reach(tuple(spans), frozenset(points))


def may_hold(h: IndexHeader, reach: Reach | None) -> bool:
    """Whether the pack of ``h`` can hold an entry that ``reach`` needs."""
    if reach is None or h.gc_record:
        return True
    low = b"" if h.clock_from is None else model.clock_key(h.clock_from)
    high = None if h.complete else model.clock_key(h.clock_to)
    for point in reach.points:
        if low <= point and (high is None or point <= high):
            return True
    return any(low < s_high and (high is None or s_low <= high) for s_low, s_high in reach.spans)
