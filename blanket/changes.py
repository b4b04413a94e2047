"""Decide what a pass must record: compare the walk with the replayed prior state (pure).

Both inputs are sorted by the file clock, so this is a lockstep merge that keeps one
entry of each side in memory. A path the walk sees and the prior state lacks, or holds
in another form, is emitted; a path the prior state holds and the walk no longer sees
gets a deletion marker (one marker for the top of a vanished subtree); what is the same
is kept, recorded nowhere, so "not changed" and "deleted" are never confused. Below a
directory the walk could not list (``opaque``), the prior state is kept as it is.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Protocol, TypeVar, cast

from blanket import model
from blanket.merge import Located
from blanket.model import Entry, fast_init


@dataclass(frozen=True, slots=True)
class Seen:
    """One walked path: its fresh metadata (None when it could not be read: the prior
    version is kept), and whether what lies below it is unknown (``opaque``)."""

    path: bytes
    entry: Entry | None
    opaque: bool = False


fast_init(Seen)


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


fast_init(Keep)


Change = Emit | Delete | Keep


def unchanged(prior: Entry, now: Entry) -> bool:
    """True when the stat data say this is the version the prior state holds: kind,
    mode, owner ids, mtime, ctime, inode, size, target and device numbers."""
    return prior is now or (
        prior.mtime_ns == now.mtime_ns
        and prior.ctime_ns == now.ctime_ns
        and prior.ino == now.ino
        and prior.size == now.size
        and prior.kind == now.kind
        and prior.mode == now.mode
        and prior.uid == now.uid
        and prior.gid == now.gid
        and prior.target == now.target
        and prior.rdev_major == now.rdev_major
        and prior.rdev_minor == now.rdev_minor
    )


class Walked(Protocol):
    """What a walk yields: at least the path."""

    @property
    def path(self) -> bytes: ...


W = TypeVar("W", bound=Walked)

#: Describes one walked item, given the prior version of its path when that version may
#: be taken as it is if the stat data agree (else None): its ``Seen``, or None for what
#: is not backed up (a socket).
Describe = Callable[[W, Entry | None], Seen | None]


def diff(
    current: Iterable[W],
    prior: Iterable[Located],
    *,
    full: bool,
    expire_below: int = 0,
    describe: Describe[W] | None = None,
) -> Iterator[Change]:
    """The changes that turn ``prior`` into ``current``, in clock order: a merge-join of
    the walk with the replayed prior state.

    With ``full`` every walked entry is emitted (layer 0 records everything). An
    unchanged path whose current version lives in a layer below ``expire_below`` (an
    expiring layer) is emitted again with its original ``since``: the refresh that lets
    gc delete that layer without losing the latest state.

    ``current`` holds ``Seen`` items, or, with ``describe``, walked items that
    ``describe`` turns into ``Seen`` once the join has found the prior version of the
    same path: that version is its second argument (``blanket.scan.entry_for``'s
    ``prior``), so an unchanged path costs its ``lstat`` and nothing more. None is given
    for a full layer (everything is recorded afresh) or for a version in an expiring
    layer (it is recorded again, so it is read in full).
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

    clock_key = model.clock_key
    nxt_key = b"" if nxt is None else clock_key(nxt.entry.path)
    for walked in current:
        key = clock_key(walked.path)
        while nxt is not None and nxt_key < key:
            yield from vanished(nxt.entry)
            nxt = next(prior_it, None)
            if nxt is not None:
                nxt_key = clock_key(nxt.entry.path)
        before = None
        if nxt is not None and nxt_key == key:
            before, nxt = nxt, next(prior_it, None)
            if nxt is not None:
                nxt_key = clock_key(nxt.entry.path)
        if describe is None:
            seen: Seen | None = cast(Seen, walked)
        else:
            same = before is not None and not full and before.layer >= expire_below
            seen = describe(walked, before.entry if same and before is not None else None)
            if seen is None:  # not backed up (a socket): what was there has vanished
                if before is not None:
                    yield from vanished(before.entry)
                continue
        assert seen is not None
        if seen.entry is None:
            yield Keep(seen.path)
        elif before is None or full or not unchanged(before.entry, seen.entry):
            yield Emit(seen.entry)
        elif before.layer < expire_below:  # refresh: same version, same since, new layer
            yield Emit(model.evolve(seen.entry, since=before.entry.since))
        else:
            yield Keep(seen.path)
        if seen.opaque:
            opaque_top = seen.path
    while nxt is not None:
        yield from vanished(nxt.entry)
        nxt = next(prior_it, None)
