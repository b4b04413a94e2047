"""Garbage collection: expire old layers within a cap and delete what nothing needs.

Without ``--keep-history`` nothing is downloaded: the figures come from the local index
cache and the store's listing. gc (1) measures each layer (its objects' size, and how
much of it is still current, from a replay of the indexes), (2) asks the pure planner
(``blanket.expiry``) which layers expire and which may go, (3) commits a signed *gc
record* into the chain (the new ``expire-below``, the commits removed, and every old
version that goes with them, so a restore of an old point names what it cannot give),
then (4) deletes the removed commits' objects, index first, then data. A gc killed after
(3) leaves objects that the record already declares removed; readers ignore them and
the next gc (or backup with a cap) deletes them.

With ``keep_history`` the versions that would go are copied forward instead, as many as
fit under the cap (most recent first): gc downloads only the data objects that hold
them (verified) and writes them into the data object of its record, as entries with
``until=`` (``blanket.history``). A record holding kept versions is a *history record*;
when the cap no longer leaves room for them, the oldest history records go (their
versions become ``L`` lines of the new record), with or without ``keep_history``.

Safety: a layer with anything still current is never deleted, whatever the plan says;
gc holds the repository lock, so no backup is writing meanwhile.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from blanket import model
from blanket.chain import index_key, removed_by_gc
from blanket.errors import NotFound, StoreError
from blanket.expiry import (
    ExpiryPlan,
    LayerStat,
    current_expire_below,
    fit_history,
    plan_expiry,
    refreshed_below,
)
from blanket.history import (
    Copy,
    Staged,
    add_to_pack,
    going_versions,
    lost_entry,
    plan_copy,
    raw_cost,
    record_order,
    stage,
)
from blanket.indexfmt import IndexHeader, render_index
from blanket.lock import RepoLock
from blanket.merge import replay
from blanket.model import Entry
from blanket.packer import PackWriter
from blanket.repo import Repository
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


@dataclass
class GcResult:
    plan: ExpiryPlan
    stats: list[LayerStat] = field(default_factory=list)
    live_entries: dict[int, int] = field(default_factory=dict)
    deleted_layers: list[int] = field(default_factory=list)
    objects_deleted: int = 0
    bytes_freed: int = 0
    delete_refused: bool = False  # the store refused the deletes (no delete permission)
    lost_versions: int = 0
    kept_versions: int = 0
    bytes_downloaded: int = 0
    bytes_added: int = 0
    keep_history: bool = False
    history: HistoryPlan = field(default_factory=HistoryPlan)
    record: int | None = None
    total_after: int = 0
    warnings: list[str] = field(default_factory=list)


@dataclass
class Measure:
    stats: list[LayerStat]
    live: dict[int, int]  # current entries per layer
    sizes: dict[str, int]  # every object's size
    ratio: dict[int, float]  # packed/raw bytes per layer


def measure(repo: Repository) -> Measure:
    """Per layer: size on the store and the estimated packed size of what is still
    current; the count of current entries per layer; every object's size; and how well
    each layer packs (stored bytes per raw byte)."""
    sizes = {o.key: o.size for o in repo.backend.list("")}
    packed: dict[int, int] = {}
    raw: dict[int, int] = {}
    complete: dict[int, bool] = {}
    for h in repo.packs:
        packed[h.layer] = (
            packed.get(h.layer, 0) + sizes.get(h.data_key, 0) + sizes.get(index_key(h.seq), 0)
        )
        complete[h.layer] = complete.get(h.layer, False) or h.complete
        raw[h.layer] = raw.get(h.layer, 0) + sum(raw_cost(e) for e in repo.entries(h.seq))
    live_raw: dict[int, int] = {}
    live_count: dict[int, int] = {}
    for located in replay(repo.layer_streams()):
        live_raw[located.layer] = live_raw.get(located.layer, 0) + raw_cost(located.entry)
        live_count[located.layer] = live_count.get(located.layer, 0) + 1
    stats = []
    ratio: dict[int, float] = {}
    for layer in sorted(packed):
        ratio[layer] = packed[layer] / raw[layer] if raw.get(layer) else 1.0
        live = int(live_raw.get(layer, 0) * ratio[layer])
        stats.append(LayerStat(layer, packed[layer], live, complete[layer]))
    return Measure(stats, live_count, sizes, ratio)


@dataclass
class _Record:
    """An existing gc record that holds kept versions (a history record)."""

    header: IndexHeader
    size: int
    kept: int


def history_records(repo: Repository, sizes: dict[str, int]) -> list[_Record]:
    """The gc records holding kept versions, oldest first, with their size on the store."""
    out = []
    for h in repo.headers:
        if not h.gc_record:
            continue
        kept = sum(1 for e in repo.entries(h.seq) if e.kind not in (model.LOST, model.PART))
        if kept:
            size = sizes.get(h.data_key, 0) + sizes.get(index_key(h.seq), 0)
            out.append(_Record(h, size, kept))
    return out


def _ranges(seqs: set[int]) -> tuple[tuple[int, int], ...]:
    out: list[tuple[int, int]] = []
    for s in sorted(seqs):
        if out and out[-1][1] == s - 1:
            out[-1] = (out[-1][0], s)
        else:
            out.append((s, s))
    return tuple(out)


def _record_header(
    repo: Repository, plan: ExpiryPlan, removed: set[int], entries: int
) -> IndexHeader:
    last = repo.packs[-1]
    return IndexHeader(
        repository=repo.config.id,
        seq=repo.next_seq(),
        layer=last.layer,
        layer_pack=last.layer_pack,
        full=False,
        clock_from=last.clock_to,
        clock_to=last.clock_to,
        complete=False,
        created=max(time.time_ns(), max(h.created for h in repo.headers) + 1),
        source_host=last.source_host,
        source_path=last.source_path,
        entries=entries,
        prev_index_sha256=repo.last_hash(),
        expire_below=plan.expire_below,
        gc_record=True,
        removed=_ranges(removed),
    )


def _commit_record(
    repo: Repository,
    plan: ExpiryPlan,
    removed: set[int],
    copies: list[Copy],
    staged: Staged,
    lost: list[Entry],
) -> IndexHeader:
    """Write and commit the gc record: the kept copies (content in its data object) and
    the ``L`` lines, in clock order."""
    writer = PackWriter(repo.gpg, str(repo.state.spool_dir))
    try:
        listed = add_to_pack(writer, copies, staged, lost)
        header = _record_header(repo, plan, removed, len(listed))
        sealed = writer.seal(render_index(header, listed, with_data=False))
    except BaseException:
        writer.abort()
        raise
    return repo.commit(sealed, header, listed)


def _delete_removed(repo: Repository, removed: set[int], sizes: dict[str, int]) -> tuple[int, int]:
    """Delete every object of the removed commits: index first, then data (the reverse
    of the order they were written in). Returns (objects, bytes)."""
    count = freed = 0
    for prefix in ("index/", "data/"):
        for key in sorted(k for k in sizes if k.startswith(prefix)):
            if _seq_of(key) in removed:
                repo.backend.delete(key)
                count, freed = count + 1, freed + sizes[key]
    return count, freed


def _seq_of(key: str) -> int:
    """The commit number in ``index/N`` or ``data/N-HASH``."""
    return int(key.split("/", 1)[1].split("-", 1)[0])


def _priority(c: Copy) -> tuple[int, int]:
    """Most recent history first: the version current until latest, then newest."""
    return (-(c.entry.until or 1 << 63), -c.entry.since)


def collect(
    repo: Repository,
    *,
    cap: int | None,
    dry_run: bool = False,
    keep_history: bool = False,
    progress: Callable[[], None] | None = None,
) -> GcResult:
    """Plan and (unless ``dry_run``) carry out expiry and deletion; with
    ``keep_history``, copy forward the versions the deleted layers would lose, as many
    as fit under the cap. The caller holds the repository lock and has refreshed it
    strictly. ``progress`` is called now and then during downloads (to renew a lease)."""
    m = measure(repo)
    already = removed_by_gc(repo.headers)
    named = {h.data_key for h in repo.headers}
    garbage = {  # what crashed runs left: deleted below, so not counted against the cap
        k
        for k in m.sizes
        if (k.startswith("index/") and _seq_of(k) in already)
        or (k.startswith("data/") and k not in named)
    }
    total = sum(size for k, size in m.sizes.items() if k not in garbage)
    limit = cap if cap is not None else NO_CAP
    current, refreshed = current_expire_below(repo.headers), refreshed_below(repo.packs)
    plan = plan_expiry(m.stats, limit, current=current, refreshed=refreshed, store_total=total)
    unsafe = [layer for layer in plan.delete if m.live.get(layer, 0)]
    doomed = {layer for layer in plan.delete if not m.live.get(layer, 0)}
    result = GcResult(plan, m.stats, m.live, keep_history=keep_history)
    result.warnings += [
        f"layer {layer} still holds {m.live[layer]} current entries (unreadable during the "
        "refresh?): kept until a pass refreshes them"
        for layer in unsafe
    ]

    # What goes with the doomed layers, and what keeping it would take.
    hist = result.history
    copies: list[Copy] = []
    lost: list[Entry] = []
    for going in going_versions(repo, doomed) if doomed else iter(()):
        hist.going += 1
        priced = plan_copy(repo, going, m.ratio.get(going.located.layer, 1.0))
        if isinstance(priced, str):
            hist.uncopyable += 1
            lost.append(lost_entry(going.located.entry, going.until))
            if keep_history:
                e = going.located.entry
                result.warnings.append(
                    f"{os.fsdecode(e.path)}: its version of {show_time(e.since)} cannot be "
                    f"kept: {priced}"
                )
        else:
            copies.append(priced)
    copies.sort(key=_priority)
    records = history_records(repo, m.sizes)
    costs = [c.cost for c in copies]
    if costs:
        costs[0] += RECORD_OVERHEAD
    fit = fit_history(
        m.stats,
        limit,
        current=current,
        refreshed=refreshed,
        store_total=total,
        copies=costs if keep_history else [],
        records=[r.size for r in records],
    )
    if not keep_history:
        # what the flag would do, for the plan: all of it if the cap allows
        would = fit_history(
            m.stats,
            limit,
            current=current,
            refreshed=refreshed,
            store_total=total,
            copies=costs,
            records=[r.size for r in records],
        )
        shown = [copies[i] for i in would.keep]
        chosen: list[Copy] = []
    else:
        shown = chosen = [copies[i] for i in fit.keep]
        hist.over_cap = len(copies) - len(chosen)
    picked = set(fit.keep) if keep_history else set()
    lost += [c.lost for i, c in enumerate(copies) if i not in picked]
    hist.copy = len(shown)
    needed = {s for c in shown for s in c.packs}
    hist.packs = len(needed)
    hist.download = sum(repo.by_seq[s].data_size for s in needed)
    hist.upload = sum(c.cost for c in shown) + (RECORD_OVERHEAD if shown else 0)
    dropped = records[: fit.dropped]
    hist.dropped_records = [r.header.seq for r in dropped]
    hist.dropped_versions = sum(r.kept for r in dropped)
    plan = result.plan = fit.plan
    plan.delete = sorted(doomed)
    if keep_history and hist.over_cap:
        result.warnings.append(
            f"{hist.over_cap} of the {len(copies)} old versions to keep do not fit under the "
            f"cap: they are recorded as lost (raise --cap to keep them)"
        )
    if dropped:
        result.warnings.append(
            f"the cap leaves no room for {len(dropped)} history record(s) (commits "
            f"{', '.join(str(r.header.seq) for r in dropped)}): their {hist.dropped_versions} "
            "kept version(s) are dropped and recorded as lost"
        )
    leftover = {_seq_of(k) for k in m.sizes if k.startswith(("index/", "data/"))}
    result.total_after = total
    if dry_run:
        return result

    removed = {h.seq for h in repo.packs if h.layer in doomed}
    for r in dropped:  # a dropped record's own gaps stay declared by the new record
        removed.add(r.header.seq)
        removed |= removed_by_gc([r.header])
        lost += [
            lost_entry(e, e.until) if e.kind != model.LOST else e
            for e in repo.entries(r.header.seq)
            if e.kind != model.PART
        ]
    if removed or plan.expire_below > current:
        staged = Staged()
        if chosen:
            _clean_workdirs(repo)
            with tempfile.TemporaryDirectory(prefix="gc-", dir=repo.state.dir) as workdir:
                staged = stage(repo, chosen, workdir, progress=progress)
                for i, why in sorted(staged.failed.items()):
                    e = chosen[i].entry
                    result.warnings.append(
                        f"{os.fsdecode(e.path)}: its version of {show_time(e.since)} cannot "
                        f"be kept: {why}"
                    )
                    lost.append(chosen[i].lost)
                header = _commit_record(repo, plan, removed, chosen, staged, _unique(lost))
        else:
            header = _commit_record(repo, plan, removed, [], staged, _unique(lost))
        result.record = header.seq
        kinds = [e.kind for e in repo.entries(header.seq)]
        result.lost_versions = sum(1 for k in kinds if k == model.LOST)
        result.kept_versions = sum(1 for k in kinds if k not in (model.LOST, model.PART))
        result.bytes_downloaded = staged.downloaded
        if chosen:
            try:
                index_size = repo.backend.head(index_key(header.seq)).size
            except (StoreError, NotFound):
                index_size = len(repo.state.index_path(header.seq).read_bytes())
            result.bytes_added = hist.upload = header.data_size + index_size
        result.deleted_layers = sorted(doomed)
    targets = removed | (already & leftover)
    if targets:
        try:
            result.objects_deleted, result.bytes_freed = _delete_removed(repo, targets, m.sizes)
        except StoreError as exc:
            result.delete_refused = True
            result.warnings.append(
                f"the store refused to delete ({exc}); the objects stay, ignored, "
                "until gc runs with credentials that may delete"
            )
        repo.refresh(strict=True)
    repo.clean_leftovers()
    result.total_after = sum(o.size for o in repo.backend.list(""))
    return result


def _unique(lost: list[Entry]) -> list[Entry]:
    """``L`` lines without repeats (one per path and since), in clock order."""
    seen: dict[tuple[bytes, int], Entry] = {}
    for e in lost:
        seen.setdefault((e.path, e.since), e)
    return sorted(seen.values(), key=record_order)


def _clean_workdirs(repo: Repository) -> None:
    """Remove the work folders of gc runs that were killed (the caller holds the lock)."""
    for p in repo.state.dir.glob("gc-*"):
        shutil.rmtree(p, ignore_errors=True)


def run_gc(
    repo: Repository, *, cap: int | None, dry_run: bool = False, keep_history: bool = False
) -> GcResult:
    """``blanket gc``: take the lock, check the chain, collect."""
    with RepoLock(repo.backend, repo.state.dir) as lock:
        repo.refresh(strict=True)
        return collect(
            repo, cap=cap, dry_run=dry_run, keep_history=keep_history, progress=lock.renew
        )
