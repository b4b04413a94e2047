"""Keep as much history as fits: decide which oldest layers expire, and when (pure).

A layer below ``expire_below`` is *expiring*: the next pass re-emits, from the local disk,
every entry whose current version lives only there. Once a pass that refreshed from its
first pack to its last is complete, such a layer holds nothing the latest state needs and
gc may delete it. Deleting costs nothing to download; refreshing costs an upload of the
live content of the expiring layers, which must fit under the cap next to everything
else until the deletion.

The planner works on figures only (:class:`LayerStat`), so it is tested without a store.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from blanket.indexfmt import IndexHeader

HEADROOM = 1.1  # plan for the next pass being 10% larger than the recent ones


@dataclass(frozen=True)
class LayerStat:
    """What the planner knows of one layer."""

    layer: int
    size: int  # bytes its objects take on the store
    live: int  # estimated bytes a refresh would upload for its still-current entries
    complete: bool


@dataclass
class ExpiryPlan:
    expire_below: int  # layers below this are expiring (refreshed by the next pass)
    delete: list[int] = field(default_factory=list)  # layers gc may delete now
    fits: bool = True
    total: int = 0  # bytes on the store now
    peak: int = 0  # predicted bytes at the end of the next pass, before deletion
    after: int = 0  # predicted bytes after the next pass and the deletion it allows
    message: str = ""


def current_expire_below(headers: Iterable[IndexHeader]) -> int:
    return max((h.expire_below for h in headers), default=0)


def refreshed_below(headers: list[IndexHeader]) -> int:
    """Layers below the returned number have been refreshed by a complete pass: some
    complete layer carried at least that ``expire-below`` from its first pack on."""
    best = 0
    by_layer: dict[int, list[IndexHeader]] = {}
    for h in headers:
        if not h.gc_record:
            by_layer.setdefault(h.layer, []).append(h)
    for hs in by_layer.values():
        if any(h.complete for h in hs):
            best = max(best, min(h.expire_below for h in hs))
    return best


def growth(stats: list[LayerStat]) -> int:
    """The expected size of the next pass: the median of the last five incremental layers
    (a median, so one pass swollen by a refresh does not count), with headroom; all of
    layer 0 while there is no incremental layer yet."""
    recent = sorted([s.size for s in stats if s.layer > 0][-5:])
    if not recent:
        return int(sum(s.size for s in stats[:1]) * HEADROOM)
    return int(recent[len(recent) // 2] * HEADROOM)


def plan_expiry(
    stats: list[LayerStat],
    cap: int,
    *,
    current: int = 0,
    refreshed: int = 0,
    store_total: int | None = None,
) -> ExpiryPlan:
    """Choose ``expire_below`` for the next pass and the layers that may go now.

    ``current`` is the expire-below already in force, ``refreshed`` the one a complete
    pass has carried out (layers below it have nothing live left and may be deleted).
    The newest complete layer never expires: the latest state always rests on at least
    one complete pass that needs no refresh.
    """
    total = store_total if store_total is not None else sum(s.size for s in stats)
    next_pass = growth(stats)
    deletable = [s.layer for s in stats if s.layer < refreshed and s.size > 0]
    freed = sum(s.size for s in stats if s.layer in deletable)
    base = total - freed
    complete = [s.layer for s in stats if s.complete]
    newest_complete = max(complete, default=-1)
    expire_below = max(current, refreshed)
    candidates = [s for s in stats if s.layer >= expire_below and s.layer < newest_complete]
    plan = ExpiryPlan(expire_below, deletable, total=total)

    def predict(below: int) -> tuple[int, int, int]:
        """(peak, after deletion, refresh bytes) of a pass expiring layers < below."""
        refresh = sum(s.live for s in stats if refreshed <= s.layer < below)
        dropped = sum(s.size for s in stats if refreshed <= s.layer < below)
        peak = base + next_pass + refresh
        return peak, peak - dropped, refresh

    plan.peak, plan.after, _ = predict(expire_below)
    # Expire the oldest layers as late as possible (history is worth keeping) but no
    # later: if refreshing a layer would no longer fit after one more ordinary pass,
    # its refresh starts now.
    for s in candidates:
        _, _, chosen_refresh = predict(plan.expire_below)
        peak, after, refresh = predict(s.layer + 1)
        own = refresh - chosen_refresh  # what refreshing this layer adds
        if plan.after + next_pass + own <= cap:
            break  # it can wait: refreshing it in the pass after next still fits
        if peak > cap:
            break  # too late for this one: refreshing it now would not fit
        plan.expire_below, plan.peak, plan.after = s.layer + 1, peak, after
    if plan.peak > cap:
        # It cannot fit: say so, and let every old layer expire, so the history that
        # costs space goes as soon as the cap is raised enough for one refresh.
        plan.expire_below = max(plan.expire_below, newest_complete)
        plan.peak, plan.after, _ = predict(plan.expire_below)
        plan.fits = False
        plan.message = (
            f"the next pass needs about {plan.peak} bytes but the cap is {cap}: "
            "even expiring old layers cannot make the current state fit; raise --cap"
        )
    return plan


@dataclass
class HistoryFit:
    """How much kept history fits next to the layers (see :func:`fit_history`)."""

    keep: list[int]  # indices of the new copies kept
    dropped: int  # how many existing history records (oldest first) must go
    plan: ExpiryPlan
    budget: int = 0  # bytes of new history the cap allows


def fit_history(
    stats: list[LayerStat],
    cap: int,
    *,
    current: int = 0,
    refreshed: int = 0,
    store_total: int,
    copies: list[int],
    records: list[int],
) -> HistoryFit:
    """Keep as much history as fits under the cap (``gc --keep-history``).

    ``copies`` are the estimated bytes of each version gc could copy forward, most
    wanted first; ``records`` the bytes of each existing history record (a gc record
    holding kept versions), oldest first. History counts like any other byte: it must
    leave room for the next pass (the plan must fit). The room left is filled with the
    copies in order, skipping any that is too big for what is left. If not even the
    existing records fit, the oldest records go until the plan fits. If dropping every
    record would still not make it fit, none is dropped: history is not what is in the
    way (the plan says so, and the cap must be raised)."""

    def plan_for(extra: int) -> ExpiryPlan:
        return plan_expiry(
            stats, cap, current=current, refreshed=refreshed, store_total=store_total + extra
        )

    wanted = sum(copies)
    if plan_for(wanted).fits:
        return HistoryFit(list(range(len(copies))), 0, plan_for(wanted), wanted)
    base = plan_for(0)
    if base.fits:
        lo, hi = 0, wanted  # plan_for(lo) fits, plan_for(hi) does not
        while hi - lo > 1 and hi - lo > wanted // 4096:
            mid = (lo + hi) // 2
            if plan_for(mid).fits:
                lo = mid
            else:
                hi = mid
        keep, used = [], 0
        for i, c in enumerate(copies):
            if used + c <= lo:
                keep.append(i)
                used += c
        return HistoryFit(keep, 0, plan_for(used), lo)
    freed = 0
    for i, size in enumerate(records):
        freed += size
        plan = plan_for(-freed)
        if plan.fits:
            return HistoryFit([], i + 1, plan)
    return HistoryFit([], 0, base)  # dropping history would not make it fit: keep it
