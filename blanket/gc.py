"""Garbage collection: expire old layers within a cap and delete what nothing needs.

Nothing is downloaded: the figures come from the local index cache and the store's
listing. gc (1) measures each layer (its objects' size, and how much of it is still
current, from a replay of the indexes), (2) asks the pure planner (``blanket.expiry``)
which layers expire and which may go, (3) commits a signed *gc record* into the chain
(the new ``expire-below``, the commits removed, and every old version that goes with
them, so a restore of an old point names what it cannot give), then (4) deletes the
removed commits' objects, index first, then data. A gc killed after (3) leaves objects
that the record already declares removed; readers ignore them and the next gc (or
backup with a cap) deletes them.

Safety: a layer with anything still current is never deleted, whatever the plan says;
gc holds the repository lock, so no backup is writing meanwhile.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field

from blanket import model
from blanket.chain import index_key, removed_by_gc
from blanket.errors import StoreError
from blanket.expiry import (
    ExpiryPlan,
    LayerStat,
    current_expire_below,
    plan_expiry,
    refreshed_below,
)
from blanket.indexfmt import IndexHeader, render_index
from blanket.lock import RepoLock
from blanket.merge import groups, replay
from blanket.model import Entry
from blanket.packer import PackWriter
from blanket.repo import Repository

NO_CAP = 1 << 62


@dataclass
class GcResult:
    plan: ExpiryPlan
    stats: list[LayerStat] = field(default_factory=list)
    live_entries: dict[int, int] = field(default_factory=dict)
    deleted_layers: list[int] = field(default_factory=list)
    objects_deleted: int = 0
    bytes_freed: int = 0
    lost_versions: int = 0
    record: int | None = None
    total_after: int = 0
    warnings: list[str] = field(default_factory=list)


def measure(repo: Repository) -> tuple[list[LayerStat], dict[int, int], dict[str, int]]:
    """Per layer: size on the store and the estimated packed size of what is still
    current; the count of current entries per layer; and every object's size."""
    sizes = {o.key: o.size for o in repo.backend.list("")}
    packed: dict[int, int] = {}
    raw: dict[int, int] = {}
    complete: dict[int, bool] = {}
    for h in repo.packs:
        packed[h.layer] = (
            packed.get(h.layer, 0) + sizes.get(h.data_key, 0) + sizes.get(index_key(h.seq), 0)
        )
        complete[h.layer] = complete.get(h.layer, False) or h.complete
        raw[h.layer] = raw.get(h.layer, 0) + sum(_cost(e) for e in repo.entries(h.seq))
    live_raw: dict[int, int] = {}
    live_count: dict[int, int] = {}
    for located in replay(repo.layer_streams()):
        live_raw[located.layer] = live_raw.get(located.layer, 0) + _cost(located.entry)
        live_count[located.layer] = live_count.get(located.layer, 0) + 1
    stats = []
    for layer in sorted(packed):
        ratio = packed[layer] / raw[layer] if raw.get(layer) else 1.0
        live = int(live_raw.get(layer, 0) * ratio)
        stats.append(LayerStat(layer, packed[layer], live, complete[layer]))
    return stats, live_count, sizes


def _cost(e: Entry) -> int:
    """Bytes an entry adds to a pack before compression (content plus tar headers)."""
    content = e.length if e.kind == model.PART else (e.size if e.kind == model.FILE else 0)
    if e.kind == model.FILE and e.parts:
        content = 0  # its parts carry the content
    return content + 1024


def lost_versions(repo: Repository, doomed: set[int]) -> Iterator[Entry]:
    """Versions recorded only in the doomed layers and no longer current: deleting those
    layers loses them (each with the time it stopped being current)."""
    for group in groups(repo.layer_streams()):
        surviving = {g.entry.since for g in group if g.layer not in doomed}
        times = sorted({g.entry.since for g in group})
        for g in group:
            e = g.entry
            if g.layer not in doomed or e.is_deletion or e.since in surviving:
                continue
            later = [t for t in times if t > e.since]
            yield Entry(model.LOST, e.path, since=e.since, until=later[0] if later else 0)


def _ranges(seqs: list[int]) -> tuple[tuple[int, int], ...]:
    out: list[tuple[int, int]] = []
    for s in sorted(seqs):
        if out and out[-1][1] == s - 1:
            out[-1] = (out[-1][0], s)
        else:
            out.append((s, s))
    return tuple(out)


def _commit_record(
    repo: Repository, plan: ExpiryPlan, removed: list[int], lost: list[Entry]
) -> IndexHeader:
    last = repo.packs[-1]
    header = IndexHeader(
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
        entries=len(lost),
        prev_index_sha256=repo.last_hash(),
        expire_below=plan.expire_below,
        gc_record=True,
        removed=_ranges(removed),
    )
    writer = PackWriter(repo.gpg, str(repo.state.spool_dir))
    for e in lost:
        writer.note(e)
    sealed = writer.seal(render_index(header, lost, with_data=False))
    return repo.commit(sealed, header, lost)


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


def collect(repo: Repository, *, cap: int | None, dry_run: bool = False) -> GcResult:
    """Plan and (unless ``dry_run``) carry out expiry and deletion. The caller holds the
    repository lock and has refreshed it strictly."""
    stats, live, sizes = measure(repo)
    total = sum(sizes.values())
    plan = plan_expiry(
        stats,
        cap if cap is not None else NO_CAP,
        current=current_expire_below(repo.headers),
        refreshed=refreshed_below(repo.packs),
        store_total=total,
    )
    unsafe = [layer for layer in plan.delete if live.get(layer, 0)]
    plan.delete = [layer for layer in plan.delete if not live.get(layer, 0)]
    result = GcResult(plan, stats, live)
    result.warnings += [
        f"layer {layer} still holds {live[layer]} current entries (unreadable during the "
        "refresh?): kept until a pass refreshes them"
        for layer in unsafe
    ]
    already = removed_by_gc(repo.headers)
    leftover = {_seq_of(k) for k in sizes if k.startswith(("index/", "data/"))}
    result.total_after = total
    if dry_run:
        return result
    doomed = set(plan.delete)
    removed = [h.seq for h in repo.packs if h.layer in doomed]
    if removed or plan.expire_below > current_expire_below(repo.headers):
        lost = list(lost_versions(repo, doomed)) if doomed else []
        result.lost_versions = len(lost)
        result.record = _commit_record(repo, plan, removed, lost).seq
        result.deleted_layers = sorted(doomed)
    targets = set(removed) | (already & leftover)
    if targets:
        try:
            result.objects_deleted, result.bytes_freed = _delete_removed(repo, targets, sizes)
        except StoreError as exc:
            result.warnings.append(
                f"the store refused to delete ({exc}); the objects stay, ignored, "
                "until gc runs with credentials that may delete"
            )
        repo.refresh(strict=True)
    repo.clean_leftovers()
    result.total_after = sum(o.size for o in repo.backend.list(""))
    return result


def run_gc(repo: Repository, *, cap: int | None, dry_run: bool = False) -> GcResult:
    """``blanket gc``: take the lock, check the chain, collect."""
    with RepoLock(repo.backend, repo.state.dir):
        repo.refresh(strict=True)
        return collect(repo, cap=cap, dry_run=dry_run)
