"""Decide what a pass must record: compare the walk with the replayed prior state (pure).

Both inputs are sorted by the file clock, so this is a lockstep merge that keeps one
entry of each side in memory. A path the walk sees and the prior state lacks, or holds
in another form, is emitted; a path the prior state holds and the walk no longer sees
gets a deletion marker (one marker for the top of a vanished subtree); what is the same
is kept, recorded nowhere, so "not changed" and "deleted" are never confused. Below a
directory the walk could not list (``opaque``), the prior state is kept as it is.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, replace

from blanket import model
from blanket.merge import Located
from blanket.model import Entry


@dataclass(frozen=True, slots=True)
class Seen:
    """One walked path: its fresh metadata (None when it could not be read: the prior
    version is kept), and whether what lies below it is unknown (``opaque``)."""

    path: bytes
    entry: Entry | None
    opaque: bool = False


@dataclass(frozen=True, slots=True)
class Emit:
    """Record this entry (new or changed); a file's content must be read."""

    entry: Entry


@dataclass(frozen=True, slots=True)
class Delete:
    """Record a deletion marker for this path (and so for its subtree)."""

    path: bytes


@dataclass(frozen=True, slots=True)
class Keep:
    """Nothing to record: the path is as the prior state has it."""

    path: bytes


Change = Emit | Delete | Keep

_COMPARED = ("kind", "mode", "uid", "gid", "mtime_ns", "ctime_ns", "ino", "size", "target")


def unchanged(prior: Entry, now: Entry) -> bool:
    """True when the stat data say this is the version the prior state holds."""
    if any(getattr(prior, f) != getattr(now, f) for f in _COMPARED):
        return False
    return (prior.rdev_major, prior.rdev_minor) == (now.rdev_major, now.rdev_minor)


def diff(
    current: Iterable[Seen],
    prior: Iterable[Located],
    *,
    full: bool,
    expire_below: int = 0,
) -> Iterator[Change]:
    """The changes that turn ``prior`` into ``current``, in clock order.

    With ``full`` every walked entry is emitted (layer 0 records everything). An
    unchanged path whose current version lives in a layer below ``expire_below`` (an
    expiring layer) is emitted again with its original ``since``: the refresh that lets
    gc delete that layer without losing the latest state.
    """
    prior_it = iter(prior)
    nxt = next(prior_it, None)
    deleted_top: bytes | None = None
    opaque_top: bytes | None = None

    def vanished(p: Entry) -> Iterator[Change]:
        nonlocal deleted_top
        if opaque_top is not None and model.is_within(p.path, opaque_top):
            return
        if deleted_top is not None and model.is_within(p.path, deleted_top):
            return
        deleted_top = p.path
        yield Delete(p.path)

    for seen in current:
        key = model.clock_key(seen.path)
        while nxt is not None and nxt.entry.key < key:
            yield from vanished(nxt.entry)
            nxt = next(prior_it, None)
        before = None
        if nxt is not None and nxt.entry.key == key:
            before, nxt = nxt, next(prior_it, None)
        if seen.entry is None:
            yield Keep(seen.path)
        elif before is None or full or not unchanged(before.entry, seen.entry):
            yield Emit(seen.entry)
        elif before.layer < expire_below:  # refresh: same version, same since, new layer
            yield Emit(replace(seen.entry, since=before.entry.since))
        else:
            yield Keep(seen.path)
        if seen.opaque:
            opaque_top = seen.path
    while nxt is not None:
        yield from vanished(nxt.entry)
        nxt = next(prior_it, None)
