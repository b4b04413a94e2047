"""gc's decision, apart from its I/O: :func:`plan_gc` turns what gc read (:class:`GcFacts`:
the layers' sizes and current entries, the store's listing, the chain, the versions the
doomed layers would take with them) into a :class:`GcPlan`, touching nothing.
``blanket.gc`` reads the facts and applies the plan; ``gc --dry-run`` prints the plan the
apply would run.

The plan: which layers expire (``blanket.expiry``) and which are deleted now (only
those with nothing current left, whatever the cap asks), which old versions are copied
forward under ``--keep-history`` (most recent first, as many as fit under the cap) and
which are recorded as lost, which history records the cap drops, whether a gc record is
written, and which objects are deleted after it (index first, then data).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from blanket.chain import removed_by_gc
from blanket.expiry import (
    ExpiryPlan,
    LayerStat,
    current_expire_below,
    fit_history,
    plan_expiry,
    refreshed_below,
)
from blanket.history import Copy, lost_entry
from blanket.indexfmt import IndexHeader
from blanket.model import Entry
from blanket.units import show_time

NO_CAP = 1 << 62
RECORD_OVERHEAD = 8 << 10  # a record's own bytes beyond its entries (headers, signatures)


@dataclass
class HistoryPlan:
    """What keeping history costs and gives (``gc --keep-history``; the figures are
    also worked out without it, as what the flag would do)."""

    going: int = 0  # versions that leave with the layers gc deletes
    copy: int = 0  # of those, the ones copied forward (or that would be)
    download: int = 0  # bytes of the data objects to download for them (whole objects)
    packs: int = 0  # how many data objects that is
    upload: int = 0  # bytes added to the repository (estimate; actual after a run)
    over_cap: int = 0  # versions that would be kept but do not fit under the cap
    uncopyable: int = 0  # versions whose content cannot be had (damaged, missing)
    dropped_records: list[int] = field(default_factory=list)  # history records that go
    dropped_versions: int = 0  # kept versions those held (now lost)


@dataclass(frozen=True)
class HistoryRecord:
    """An existing gc record that holds kept versions (a history record)."""

    header: IndexHeader
    size: int  # its objects' bytes on the store
    kept: int  # versions it keeps


@dataclass(frozen=True)
class Uncopyable:
    """A going version whose content cannot be had: it can only be recorded as lost."""

    entry: Entry
    until: int
    why: str


@dataclass
class GcFacts:
    """What gc reads before it decides (``blanket.gc.read_facts``): from the local index
    cache and the store's listing, nothing downloaded."""

    stats: list[LayerStat]
    live: dict[int, int]  # current entries per layer
    sizes: dict[str, int]  # every object on the store, and its size
    ratio: dict[int, float]  # packed/raw bytes per layer
    headers: list[IndexHeader]  # the authentic chain, gc records included
    packs: list[IndexHeader]  # its backup commits
    going: list[Copy | Uncopyable]  # what the layers the cap would delete take with them
    records: list[HistoryRecord]  # history records, oldest first
    by_seq: dict[int, IndexHeader] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.by_seq:
            self.by_seq = {h.seq: h for h in self.headers}


@dataclass
class GcPlan:
    """Everything ``apply_gc`` does, decided in advance."""

    expiry: ExpiryPlan  # expire-below for the next pass; ``delete``: the layers deleted
    keep_history: bool
    history: HistoryPlan
    copies: list[Copy]  # versions copied forward into the record (``--keep-history``)
    lost: list[Entry]  # ``L`` lines (besides those of the dropped records)
    dropped: list[HistoryRecord]  # history records the cap leaves no room for
    removed: set[int]  # commits the record declares removed
    write_record: bool  # whether a gc record is committed
    deletes: list[tuple[str, int]]  # objects deleted after the record (key, size):
    # index first, then data, the reverse of the order they were written in
    refresh: bool  # whether the chain is loaded again after the deletes
    total: int  # bytes on the store now, leftovers of crashed runs not counted
    stats: list[LayerStat] = field(default_factory=list)  # the layers it was made from
    live: dict[int, int] = field(default_factory=dict)  # their current entries
    warnings: list[str] = field(default_factory=list)


def seq_of(key: str) -> int:
    """The commit number in ``index/N`` or ``data/N-HASH``."""
    return int(key.split("/", 1)[1].split("-", 1)[0])


def _totals(sizes: dict[str, int], headers: list[IndexHeader]) -> int:
    """Bytes on the store, without what crashed runs left (deleted by the apply, so not
    counted against the cap): indexes of removed commits, data no index names."""
    already = removed_by_gc(headers)
    named = {h.data_key for h in headers}
    return sum(
        size
        for k, size in sizes.items()
        if not (
            (k.startswith("index/") and seq_of(k) in already)
            or (k.startswith("data/") and k not in named)
        )
    )


def first_expiry(
    stats: list[LayerStat],
    sizes: dict[str, int],
    headers: list[IndexHeader],
    packs: list[IndexHeader],
    cap: int | None,
) -> ExpiryPlan:
    """The cap's plan before history is fitted in: which layers it would delete."""
    return plan_expiry(
        stats,
        cap if cap is not None else NO_CAP,
        current=current_expire_below(headers),
        refreshed=refreshed_below(packs),
        store_total=_totals(sizes, headers),
    )


def doomed_layers(expiry: ExpiryPlan, live: dict[int, int]) -> set[int]:
    """The layers the plan deletes that hold nothing current (never one that does)."""
    return {layer for layer in expiry.delete if not live.get(layer, 0)}


def _priority(c: Copy) -> tuple[int, int]:
    """Most recent history first: the version current until latest, then newest."""
    return (-(c.entry.until or 1 << 63), -c.entry.since)


def plan_gc(facts: GcFacts, *, cap: int | None, keep_history: bool) -> GcPlan:
    """Decide everything gc does, from ``facts`` alone (no I/O)."""
    limit = cap if cap is not None else NO_CAP
    total = _totals(facts.sizes, facts.headers)
    current = current_expire_below(facts.headers)
    refreshed = refreshed_below(facts.packs)
    first = first_expiry(facts.stats, facts.sizes, facts.headers, facts.packs, cap)
    doomed = doomed_layers(first, facts.live)
    warnings = [
        f"layer {layer} still holds {facts.live[layer]} current entries (unreadable during "
        "the refresh?): kept until a pass refreshes them"
        for layer in first.delete
        if facts.live.get(layer, 0)
    ]

    # What goes with the doomed layers, and what keeping it would take.
    hist = HistoryPlan()
    copies: list[Copy] = []
    lost: list[Entry] = []
    for going in facts.going:
        hist.going += 1
        if isinstance(going, Uncopyable):
            hist.uncopyable += 1
            lost.append(lost_entry(going.entry, going.until))
            if keep_history:
                e = going.entry
                warnings.append(
                    f"{os.fsdecode(e.path)}: its version of {show_time(e.since)} cannot be "
                    f"kept: {going.why}"
                )
        else:
            copies.append(going)
    copies.sort(key=_priority)
    costs = [c.cost for c in copies]
    if costs:
        costs[0] += RECORD_OVERHEAD

    def fit_with(wanted: list[int]) -> tuple[list[int], int, ExpiryPlan]:
        fit = fit_history(
            facts.stats,
            limit,
            current=current,
            refreshed=refreshed,
            store_total=total,
            copies=wanted,
            records=[r.size for r in facts.records],
        )
        return fit.keep, fit.dropped, fit.plan

    keep, dropped_count, expiry = fit_with(costs if keep_history else [])
    if keep_history:
        shown = chosen = [copies[i] for i in keep]
        hist.over_cap = len(copies) - len(chosen)
    else:  # what the flag would do, for the plan: all of it if the cap allows
        shown = [copies[i] for i in fit_with(costs)[0]]
        chosen = []
    picked = set(keep) if keep_history else set()
    lost += [c.lost for i, c in enumerate(copies) if i not in picked]
    hist.copy = len(shown)
    needed = {s for c in shown for s in c.packs}
    hist.packs = len(needed)
    hist.download = sum(facts.by_seq[s].data_size for s in needed)
    hist.upload = sum(c.cost for c in shown) + (RECORD_OVERHEAD if shown else 0)
    dropped = facts.records[:dropped_count]
    hist.dropped_records = [r.header.seq for r in dropped]
    hist.dropped_versions = sum(r.kept for r in dropped)
    expiry.delete = sorted(doomed)
    if keep_history and hist.over_cap:
        warnings.append(
            f"{hist.over_cap} of the {len(copies)} old versions to keep do not fit under the "
            f"cap: they are recorded as lost (raise --cap to keep them)"
        )
    if dropped:
        warnings.append(
            f"the cap leaves no room for {len(dropped)} history record(s) (commits "
            f"{', '.join(str(r.header.seq) for r in dropped)}): their {hist.dropped_versions} "
            "kept version(s) are dropped and recorded as lost"
        )

    removed = {h.seq for h in facts.packs if h.layer in doomed}
    for r in dropped:  # a dropped record's own gaps stay declared by the new record
        removed.add(r.header.seq)
        removed |= removed_by_gc([r.header])
    leftover = {seq_of(k) for k in facts.sizes if k.startswith(("index/", "data/"))}
    targets = removed | (removed_by_gc(facts.headers) & leftover)
    deletes = [
        (k, facts.sizes[k])
        for prefix in ("index/", "data/")
        for k in sorted(k for k in facts.sizes if k.startswith(prefix))
        if seq_of(k) in targets
    ]
    return GcPlan(
        expiry=expiry,
        keep_history=keep_history,
        history=hist,
        copies=chosen,
        lost=lost,
        dropped=dropped,
        removed=removed,
        write_record=bool(removed) or expiry.expire_below > current,
        deletes=deletes,
        refresh=bool(targets),
        total=total,
        stats=facts.stats,
        live=facts.live,
        warnings=warnings,
    )
