"""gc's planner, pure: facts in, a plan out, no store and no repository.

The facts describe three layers: layer 0 complete and refreshed by layer 1 (which
carries ``expire-below: 1`` from its first pack), layer 2 partial. Layer 0 has nothing
current left, so the plan deletes it, index before data; the two versions that live
only in it are copied forward or recorded as lost as ``--keep-history`` and the cap
decide."""

from __future__ import annotations

from dataclasses import replace

from blanket import model
from blanket.expiry import LayerStat
from blanket.gcplan import GcFacts, HistoryRecord, Uncopyable, plan_gc
from blanket.history import Copy
from blanket.indexfmt import IndexHeader
from blanket.model import Entry

GiB = 1 << 30


def header(seq: int, layer: int, *, complete: bool = False, expire_below: int = 0) -> IndexHeader:
    return IndexHeader(
        repository="r",
        seq=seq,
        layer=layer,
        layer_pack=0,
        full=layer == 0,
        clock_from=None,
        clock_to=b".",
        complete=complete,
        created=seq + 1,
        source_host="h",
        source_path=b"/src",
        entries=1,
        prev_index_sha256="",
        data_key=f"data/{seq:012d}-{seq:016x}",
        data_size=1000,
        data_sha256="00" * 32,
        expire_below=expire_below,
    )


PACKS = [header(0, 0, complete=True), header(1, 1, complete=True, expire_below=1), header(2, 2)]
SIZES = {
    "index/000000000000": 100,
    PACKS[0].data_key: 1000,
    "index/000000000001": 100,
    PACKS[1].data_key: 1000,
    "index/000000000002": 100,
    PACKS[2].data_key: 1000,
    "data/000000000009-00000000000000dd": 50,  # a crashed run's leftover: not counted
}
OLD = Entry(model.FILE, b"old", size=10, sha256="ab" * 32, since=5, until=9)
GONE = Entry(model.FILE, b"gone", size=10, sha256="cd" * 32, since=4)


def facts(*, live0: int = 0, records: list[HistoryRecord] | None = None) -> GcFacts:
    return GcFacts(
        stats=[
            LayerStat(0, 1100, 0, True),
            LayerStat(1, 1100, 900, True),
            LayerStat(2, 1100, 0, False),
        ],
        live={0: live0, 1: 3, 2: 1},
        sizes=dict(SIZES),
        ratio={0: 1.0, 1: 1.0, 2: 1.0},
        headers=list(PACKS) + [r.header for r in records or []],
        packs=list(PACKS),
        going=[Copy(OLD, 0, packs=frozenset({0}), cost=200), Uncopyable(GONE, 8, "damaged")],
        records=records or [],
    )


def test_a_refreshed_layer_with_nothing_current_is_deleted_index_first() -> None:
    plan = plan_gc(facts(), cap=None, keep_history=False)
    assert plan.expiry.delete == [0]
    assert plan.removed == {0}
    assert plan.write_record
    assert plan.deletes == [("index/000000000000", 100), (PACKS[0].data_key, 1000)]
    assert plan.total == 3300  # the leftover is not counted against the cap
    assert plan.copies == []  # without --keep-history nothing is copied
    assert sorted((e.path, e.kind) for e in plan.lost) == [
        (b"gone", model.LOST),
        (b"old", model.LOST),
    ]
    assert (plan.history.going, plan.history.copy, plan.history.uncopyable) == (2, 1, 1)
    assert plan.history.download == 1000 and plan.history.packs == 1  # what the flag would do


def test_keep_history_copies_what_fits_and_names_what_cannot_be_kept() -> None:
    plan = plan_gc(facts(), cap=None, keep_history=True)
    assert [c.entry.path for c in plan.copies] == [b"old"]
    assert [e.path for e in plan.lost] == [b"gone"]
    assert any("gone" in w and "damaged" in w for w in plan.warnings)


def test_keep_history_under_a_tight_cap_records_the_copy_as_lost() -> None:
    plan = plan_gc(facts(), cap=3400, keep_history=True)
    assert plan.copies == []
    assert plan.history.over_cap == 1
    assert sorted(e.path for e in plan.lost) == [b"gone", b"old"]
    assert any("do not fit under the cap" in w for w in plan.warnings)


def test_a_layer_that_still_holds_current_entries_is_never_deleted() -> None:
    plan = plan_gc(facts(live0=5), cap=None, keep_history=False)
    assert plan.expiry.delete == []
    assert plan.deletes == [] and plan.removed == set()
    assert any("layer 0 still holds 5 current entries" in w for w in plan.warnings)


def test_objects_of_commits_an_earlier_record_removed_are_deleted() -> None:
    earlier = replace(header(3, 2), gc_record=True, removed=((7, 7),))
    f = facts(live0=5)
    f.headers.append(earlier)
    f.sizes["index/000000000007"] = 100  # left behind by a gc that was killed
    plan = plan_gc(f, cap=None, keep_history=False)
    assert plan.deletes == [("index/000000000007", 100)]
    assert plan.refresh and not plan.removed


def test_a_history_record_the_cap_has_no_room_for_is_dropped() -> None:
    record = HistoryRecord(replace(header(3, 2), gc_record=True), size=2000, kept=4)
    plan = plan_gc(facts(records=[record]), cap=3000, keep_history=False)
    assert plan.dropped == [record]
    assert 3 in plan.removed
    assert plan.history.dropped_records == [3] and plan.history.dropped_versions == 4


def test_planning_twice_gives_the_same_plan() -> None:
    assert plan_gc(facts(), cap=None, keep_history=True) == plan_gc(
        facts(), cap=None, keep_history=True
    )
