"""Garbage collection: expire old layers within a cap and delete what nothing needs.

Without ``--keep-history`` nothing is downloaded: the figures come from the local index
cache and the store's listing. gc (1) reads its facts (:func:`read_facts`: each layer's
objects' size and how much of it is still current, from a replay of the indexes, and
the versions the layers the cap would delete take with them), (2) decides everything
with the pure planner (:func:`blanket.gcplan.plan_gc`, over ``blanket.expiry``), then
applies the plan (:func:`apply_gc`): (3) commits a signed *gc record* into the chain
(the new ``expire-below``, the commits removed, and every old version that goes with
them, so a restore of an old point names what it cannot give), then (4) deletes the
removed commits' objects, index first, then data. A gc killed after (3) leaves objects
that the record already declares removed; readers ignore them and the next gc (or
backup with a cap) deletes them.

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
from dataclasses import dataclass, field, replace

from blanket import model
from blanket.chain import index_key
from blanket.errors import NotFound, PermissionDenied
from blanket.expiry import ExpiryPlan, LayerStat
from blanket.gcplan import (
    GcFacts,
    GcPlan,
    HistoryPlan,
    HistoryRecord,
    Uncopyable,
    doomed_layers,
    first_expiry,
    plan_gc,
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

__all__ = [
    "GcResult",
    "HistoryPlan",
    "apply_gc",
    "collect",
    "plan_for_pass",
    "plan_gc",
    "planned",
    "read_facts",
    "run_gc",
]


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
    objects_to_delete: int = 0  # what the plan deletes (a dry run's figures)
    bytes_to_free: int = 0


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


def history_records(repo: Repository, sizes: dict[str, int]) -> list[HistoryRecord]:
    """The gc records holding kept versions, oldest first, with their size on the store."""
    out = []
    for h in repo.headers:
        if not h.gc_record:
            continue
        kept = sum(1 for e in repo.entries(h.seq) if e.kind not in (model.LOST, model.PART))
        if kept:
            size = sizes.get(h.data_key, 0) + sizes.get(index_key(h.seq), 0)
            out.append(HistoryRecord(h, size, kept))
    return out


def read_facts(repo: Repository, *, cap: int | None, history: bool = True) -> GcFacts:
    """What :func:`plan_gc` decides from: the local index cache (one replay) and the
    store's listing; nothing is downloaded. The versions going with the layers that the
    cap would delete are priced here, since finding them reads the indexes (a second
    walk of the layers, skipped without ``history``: then the plan says nothing of
    them, and keeps none)."""
    m = measure(repo)
    doomed = doomed_layers(first_expiry(m.stats, m.sizes, repo.headers, repo.packs, cap), m.live)
    going: list[Copy | Uncopyable] = []
    for g in going_versions(repo, doomed) if doomed and history else iter(()):
        priced = plan_copy(repo, g, m.ratio.get(g.located.layer, 1.0))
        going.append(
            Uncopyable(g.located.entry, g.until, priced) if isinstance(priced, str) else priced
        )
    return GcFacts(
        stats=m.stats,
        live=m.live,
        sizes=m.sizes,
        ratio=m.ratio,
        headers=list(repo.headers),
        packs=list(repo.packs),
        going=going,
        records=history_records(repo, m.sizes),
        by_seq=dict(repo.by_seq),
    )


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


def planned(plan: GcPlan) -> GcResult:
    """The result as planned, before anything is done (what a dry run reports)."""
    return GcResult(
        plan.expiry,
        plan.stats,
        plan.live,
        keep_history=plan.keep_history,
        history=replace(plan.history),
        total_after=plan.total,
        warnings=list(plan.warnings),
        objects_to_delete=len(plan.deletes),
        bytes_to_free=sum(size for _, size in plan.deletes),
    )


def apply_gc(
    repo: Repository, plan: GcPlan, *, progress: Callable[[], None] | None = None
) -> GcResult:
    """Carry out ``plan``: stage the copies kept (downloads), commit the gc record, delete
    the removed commits' objects (index first, then data), clean what crashed runs left;
    the result is the plan's (:func:`planned`) with the figures of what was done. The
    caller holds the repository lock. A store that refuses deletes (``PermissionDenied``)
    leaves the objects for a later gc, with a warning; any other store error is raised."""
    result = planned(plan)
    lost = list(plan.lost)
    for r in plan.dropped:
        lost += [
            lost_entry(e, e.until) if e.kind != model.LOST else e
            for e in repo.entries(r.header.seq)
            if e.kind != model.PART
        ]
    if plan.write_record:
        staged = Staged()
        chosen = plan.copies
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
                header = _commit_record(
                    repo, plan.expiry, plan.removed, chosen, staged, _unique(lost)
                )
        else:
            header = _commit_record(repo, plan.expiry, plan.removed, [], staged, _unique(lost))
        result.record = header.seq
        kinds = [e.kind for e in repo.entries(header.seq)]
        result.lost_versions = sum(1 for k in kinds if k == model.LOST)
        result.kept_versions = sum(1 for k in kinds if k not in (model.LOST, model.PART))
        result.bytes_downloaded = staged.downloaded
        if chosen:
            try:
                index_size = repo.backend.head(index_key(header.seq)).size
            except (NotFound, PermissionDenied):
                index_size = len(repo.state.index_path(header.seq).read_bytes())
            result.bytes_added = result.history.upload = header.data_size + index_size
        result.deleted_layers = list(plan.expiry.delete)
    if plan.refresh:
        try:
            for key, size in plan.deletes:
                repo.backend.delete(key)
                result.objects_deleted += 1
                result.bytes_freed += size
        except PermissionDenied as exc:
            result.delete_refused = True
            result.warnings.append(
                f"the store refused to delete ({exc}); the objects stay, ignored, "
                "until gc runs with credentials that may delete"
            )
        repo.refresh(strict=True)
    repo.clean_leftovers()
    result.total_after = sum(o.size for o in repo.backend.list(""))
    return result


def plan_for_pass(repo: Repository, *, cap: int, keep_history: bool) -> ExpiryPlan:
    """The cap's plan for the backup pass about to start (``backup --cap``): whether the
    pass fits and which layers it refreshes. The old versions that gc would keep or
    lose are read only when they count against the cap (``keep_history``)."""
    facts = read_facts(repo, cap=cap, history=keep_history)
    return plan_gc(facts, cap=cap, keep_history=keep_history).expiry


def collect(
    repo: Repository,
    *,
    cap: int | None,
    dry_run: bool = False,
    keep_history: bool = False,
    progress: Callable[[], None] | None = None,
) -> GcResult:
    """Read the facts, plan, and (unless ``dry_run``) apply: expiry and deletion; with
    ``keep_history``, copy forward the versions the deleted layers would lose, as many
    as fit under the cap. The caller holds the repository lock and has refreshed it
    strictly. ``progress`` is called now and then during downloads (to renew a lease)."""
    plan = plan_gc(read_facts(repo, cap=cap), cap=cap, keep_history=keep_history)
    return planned(plan) if dry_run else apply_gc(repo, plan, progress=progress)


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
