"""``gc --keep-history``: the versions deleted layers would lose are copied forward into
the gc record, downloading only the packs that hold them, within the cap.

A source goes through rounds of real changes (small notes rewritten, files added and
deleted, a directory removed, a split file and a sparse file rewritten, a hard-link pair
and a symlink changed); after each backup, gc runs under a cap so the oldest layers
expire and go. Every point in time the source had is then restored and compared with
what it really held: with --keep-history exactly (every path, its content, its kind),
without it "missing, never wrong". The bytes read from the store are counted and
compared with the sizes of the packs that hold the kept versions.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path
from typing import Any, BinaryIO

import pytest
from test_crash import CRASHED
from test_gc_crash import child_gc

from blanket import model
from blanket.backends.local import LocalBackend
from blanket.backup import BackupOptions, run_backup
from blanket.expiry import LayerStat, fit_history
from blanket.gc import GcResult, run_gc
from blanket.layers import history, summarize
from blanket.repo import Repository
from blanket.restore.run import RestoreOptions, run_restore
from blanket.verify import verify

PACK = 64 << 10


class ReadCounter(LocalBackend):
    """A local store that counts the bytes read from data objects (pack content)."""

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self.data_read = 0

    def get(self, key: str) -> bytes:
        data = super().get(key)
        if key.startswith("data/"):
            self.data_read += len(data)
        return data

    def get_range(self, key: str, offset: int, length: int) -> bytes:
        data = super().get_range(key, offset, length)
        if key.startswith("data/"):
            self.data_read += len(data)
        return data

    def open_local(self, key: str) -> BinaryIO:
        f = super().open_local(key)  # read whole in place by whoever opens it
        if key.startswith("data/"):
            self.data_read += os.fstat(f.fileno()).st_size
        return f


# --- the source and what it held ------------------------------------------------------


def snapshot(root: Path) -> dict[str, Any]:
    """Every path below ``root``: ("d",), ("l", target) or ("f", content, link group)."""
    out: dict[str, Any] = {}
    inodes: dict[int, str] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in sorted(dirnames + filenames):
            p = Path(dirpath) / name
            rel = str(p.relative_to(root))
            if p.is_symlink():
                out[rel] = ("l", os.readlink(p))
            elif p.is_dir():
                out[rel] = ("d",)
            else:
                st = p.stat()
                first = inodes.setdefault(st.st_ino, rel) if st.st_nlink > 1 else rel
                out[rel] = ("f", p.read_bytes(), first)
    return out


def _linked(tree: dict[str, Any]) -> dict[str, Any]:
    """Link groups named by their first member in walk order, as a restore may order
    them differently: compare groups as sets."""
    groups: dict[str, set[str]] = {}
    for rel, v in tree.items():
        if v[0] == "f":
            groups.setdefault(v[2], set()).add(rel)
    return {
        rel: (v[0], v[1], frozenset(groups[v[2]])) if v[0] == "f" else v for rel, v in tree.items()
    }


def make_source(src: Path, rng: random.Random) -> None:
    (src / "docs").mkdir(parents=True)
    (src / "gone" / "sub").mkdir(parents=True)
    (src / "stable.bin").write_bytes(rng.randbytes(200_000))
    (src / "big.bin").write_bytes(rng.randbytes(150_000))  # split over several packs
    (src / "churn.bin").write_bytes(rng.randbytes(40_000))
    for i in range(12):
        (src / "docs" / f"note{i:02d}.txt").write_bytes(rng.randbytes(800))
    (src / "gone" / "a.txt").write_bytes(b"in a folder that goes away")
    (src / "gone" / "sub" / "b.txt").write_bytes(rng.randbytes(500))
    (src / "link1").write_bytes(b"linked v0")
    os.link(src / "link1", src / "link2")
    os.symlink("docs/note00.txt", src / "sym")
    with open(src / "sparse.img", "wb") as f:
        f.truncate(1 << 20)
        f.seek(300_000)
        f.write(b"sparse v0" * 100)


def change(src: Path, rng: random.Random, n: int) -> None:
    """Round ``n`` of changes: always a few notes; now and then everything else."""
    for i in rng.sample(range(12), 3):
        (src / "docs" / f"note{i:02d}.txt").write_bytes(b"round %d " % n + rng.randbytes(700))
    (src / "docs" / f"added{n:02d}.txt").write_bytes(rng.randbytes(300))
    (src / "churn.bin").write_bytes(rng.randbytes(40_000))  # every round
    if n % 3 == 0:
        for old in sorted((src / "docs").glob("added*"))[:1]:
            old.unlink()
    if n in (2, 5):
        (src / "big.bin").write_bytes(rng.randbytes(150_000))
    if n == 3:
        shutil.rmtree(src / "gone")
        (src / "link1").write_bytes(b"linked v3")  # same inode: both names change
        (src / "sym").unlink()
        os.symlink("docs/note01.txt", src / "sym")
    if n == 4:
        with open(src / "sparse.img", "r+b") as f:
            f.seek(600_000)
            f.write(b"sparse v4" * 100)
    if n == 6:
        (src / "gone").mkdir()  # back again, with other content
        (src / "gone" / "c.txt").write_bytes(b"new in round 6")


def store_size(url: str) -> int:
    return sum(p.stat().st_size for p in Path(url).rglob("*") if p.is_file())


def reopen(url: str, home: str) -> Repository:
    r = Repository.open(LocalBackend(url), home)
    r.refresh()
    return r


def restored(
    repo: Repository, target: Path, when: int
) -> tuple[dict[str, Any], list[tuple[bytes, str]]]:
    result = run_restore(repo, RestoreOptions(str(target), at_time=when))
    tree = snapshot(target)
    shutil.rmtree(target)
    return tree, result.problems


def content_places(repo: Repository) -> dict[tuple[str, bytes, int], dict[str, int]]:
    """Where each file version's content lies: (f or P, path, since) -> {data key: size}.
    Taken before gc, independently of it."""
    places: dict[tuple[str, bytes, int], dict[str, int]] = {}
    for h in repo.packs:
        for e in repo.entries(h.seq):
            if e.kind in (model.FILE, model.PART):
                places.setdefault((e.kind, e.path, e.since), {})[h.data_key] = h.data_size
    return places


def source_of_kept(
    places: dict[tuple[str, bytes, int], dict[str, int]], record: list[model.Entry]
) -> dict[str, int]:
    """The data objects that, before gc, held the content of the versions the record
    keeps (a split file's parts; nothing for an empty file)."""
    keys: dict[str, int] = {}
    for e in record:
        if e.kind == model.FILE and e.parts:
            keys.update(places[(model.PART, e.path, e.since)])
        elif e.kind == model.FILE and (e.size or e.sparse):
            keys.update(places[(model.FILE, e.path, e.since)])
    return keys


class Rounds:
    """Drives the rounds: backup without a cap, then gc under the cap; keeps what the
    source held at the end of every layer, and the figures of every gc."""

    def __init__(self, url: str, home: str, src: Path, rng: random.Random) -> None:
        self.url, self.home, self.src, self.rng = url, home, src, rng
        self.points: list[tuple[int, int, dict[str, Any]]] = []  # (layer, end, tree)
        self.gcs: list[tuple[GcResult, int, set[str], int]] = []

    def backup(self) -> None:
        r = Repository.open(LocalBackend(self.url), self.home)
        result = run_backup(r, str(self.src), BackupOptions(pack_size=PACK))
        assert result.complete
        self.points.append((result.layer, r.layer_end(result.layer), snapshot(self.src)))

    def gc(self, cap: int, *, keep: bool) -> GcResult:
        places = content_places(reopen(self.url, self.home))
        backend = ReadCounter(self.url)
        result = run_gc(Repository.open(backend, self.home), cap=cap, keep_history=keep)
        holding: dict[str, int] = {}
        if result.record is not None:
            after = reopen(self.url, self.home)
            holding = source_of_kept(places, list(after.entries(result.record)))
        self.gcs.append((result, backend.data_read, set(holding), sum(holding.values())))
        return result

    def run(self, rounds: int, cap: int, *, keep: bool) -> None:
        for n in range(1, rounds + 1):
            change(self.src, self.rng, n)
            self.backup()
            self.gc(cap, keep=keep)
            assert store_size(self.url) <= cap, f"round {n}: over the cap"
            # then a cap that nothing fits under: every older layer starts expiring now
            # (refreshed by the next pass, deleted by the gc after it); it deletes
            # nothing itself and never drops kept history that would not make it fit
            marked = run_gc(reopen(self.url, self.home), cap=1)
            assert not marked.deleted_layers and not marked.history.dropped_records


def _scenario(repo_url: str, home: str, tmp_path: Path, *, keep: bool, rounds: int = 6) -> Rounds:
    rng = random.Random(7)
    src = tmp_path / "src"
    make_source(src, rng)
    r = Rounds(repo_url, home, src, rng)
    r.backup()
    r.run(rounds, 20 * store_size(repo_url), keep=keep)
    return r


# --- the tests --------------------------------------------------------------------------


def test_keep_history_restores_every_old_point_exactly_and_reads_only_the_packs_it_needs(
    repo: Repository, repo_url: str, keyring: Any, tmp_path: Path
) -> None:
    run = _scenario(repo_url, keyring.home, tmp_path, keep=True)
    deleted = sorted({layer for g, _, _, _ in run.gcs for layer in g.deleted_layers})
    assert len(deleted) >= 3, f"the cap deleted only layers {deleted}"
    kept = sum(g.kept_versions for g, _, _, _ in run.gcs)
    for g, read, _, _ in run.gcs:
        print(
            g.deleted_layers, g.plan, g.history, g.kept_versions, g.lost_versions, read, g.warnings
        )
    assert kept >= 10, f"only {kept} versions were kept"
    assert all(g.lost_versions == 0 and g.history.over_cap == 0 for g, _, _, _ in run.gcs)

    # Downloads: exactly the data objects that held a kept file's content, nothing else.
    total_read = total_sizes = 0
    for g, read, holding, sizes in run.gcs:
        assert read == g.bytes_downloaded == sizes, (read, g.bytes_downloaded, sizes)
        if g.kept_versions:
            assert g.history.packs == len(holding)
        total_read, total_sizes = total_read + read, total_sizes + sizes
    assert total_read > 0
    print(
        f"keep-history: read {total_read} bytes of pack data, packs holding kept versions "
        f"{total_sizes} bytes"
    )

    # Every point in time the source had restores exactly: deleted layers too.
    r = reopen(repo_url, keyring.home)
    existing = {h.layer for h in r.packs}
    assert any(layer not in existing for layer, _, _ in run.points)
    for i, (layer, end, tree) in enumerate(run.points):
        got, problems = restored(r, tmp_path / f"at{i}", end)
        assert problems == [], f"layer {layer}: {problems}"
        assert _linked(got) == _linked(tree), f"layer {layer} is not restored exactly"
    # ... and the latest state is untouched by the kept versions
    got, problems = restored(r, tmp_path / "latest", 1 << 62)
    assert problems == [] and _linked(got) == _linked(run.points[-1][2])
    # 'layers' says every layer still there is exact
    missing = history(summarize(r.headers), list(r.lost_versions()))
    assert set(missing) == existing and not any(missing.values()), missing


def test_without_keep_history_gc_reads_nothing_and_old_points_say_what_is_missing(
    repo: Repository, repo_url: str, keyring: Any, tmp_path: Path
) -> None:
    run = _scenario(repo_url, keyring.home, tmp_path, keep=False)
    assert all(read == 0 for _, read, _, _ in run.gcs), "gc downloaded pack data"
    lost = sum(g.lost_versions for g, _, _, _ in run.gcs)
    assert lost >= 10
    # the plan said what keeping them would have cost
    assert sum(g.history.copy for g, _, _, _ in run.gcs) == lost
    assert sum(g.history.download for g, _, _, _ in run.gcs) > 0
    r = reopen(repo_url, keyring.home)
    inexact = 0
    for i, (layer, end, tree) in enumerate(run.points):
        got, problems = restored(r, tmp_path / f"at{i}", end)
        missing = {os.fsdecode(p) for p, _ in problems}
        assert all("removed by gc" in m for _, m in problems)
        for name, v in got.items():
            assert v[:2] == tree[name][:2], f"layer {layer}: {name} is a wrong version"
        assert set(tree) - set(got) <= missing | _dirs_above(missing), f"layer {layer}"
        inexact += bool(problems)
    assert inexact >= 3


def _dirs_above(paths: set[str]) -> set[str]:
    return {str(Path(p).parent) for p in paths} | {
        str(q) for p in paths for q in Path(p).parents if str(q) != "."
    }


def test_dry_run_plans_what_the_run_does_and_history_that_does_not_fit_is_lost_honestly(
    repo: Repository, repo_url: str, keyring: Any, tmp_path: Path, cli: Any
) -> None:
    rng = random.Random(11)
    src = tmp_path / "src"
    make_source(src, rng)
    run = Rounds(repo_url, keyring.home, src, rng)
    run.backup()
    cap = int(2.3 * store_size(repo_url))
    for n in range(1, 5):  # layers expire and refresh, nothing deleted yet at n=1..
        change(src, rng, n)
        run.backup()
        if n < 4:
            run.gc(cap, keep=True)
    before = sorted(p.name for p in Path(repo_url).rglob("*"))
    proc = cli("gc", "--repo", repo_url, "--cap", str(cap), "--dry-run", "--keep-history", "--json")
    assert proc.code == 0, proc.err
    assert sorted(p.name for p in Path(repo_url).rglob("*")) == before
    summary = [json.loads(x) for x in proc.out.splitlines() if '"summary"' in x][-1]
    assert summary["keep_history"] and summary["history_copy"] > 0, summary
    counting = ReadCounter(repo_url)
    dry = run_gc(Repository.open(counting, keyring.home), cap=cap, dry_run=True, keep_history=True)
    assert counting.data_read == 0
    assert summary["history_download_bytes"] == dry.history.download > 0
    assert summary["history_upload_bytes"] == dry.history.upload > 0
    real = run.gc(cap, keep=True)
    read = run.gcs[-1][1]
    assert real.kept_versions == dry.history.copy and read == dry.history.download
    assert 0.5 < real.bytes_added / dry.history.upload < 2, (real.bytes_added, dry.history)

    # Now a cap that leaves room for the layers but not for all that history: the
    # oldest history records go, honestly (L lines), and nothing restores wrong.
    r = reopen(repo_url, keyring.home)
    records = [
        h for h in r.headers if h.gc_record and any(e.kind == model.FILE for e in r.entries(h.seq))
    ]
    assert records
    tight = store_size(repo_url) - 1
    for n in range(5, 8):
        change(src, rng, n)
        run.backup()
        res = run.gc(tight, keep=True)
        assert res.plan.fits or not res.history.copy
    assert any(g.history.dropped_records or g.history.over_cap for g, _, _, _ in run.gcs[-3:])
    r = reopen(repo_url, keyring.home)
    for i, (layer, end, tree) in enumerate(run.points):
        got, problems = restored(r, tmp_path / f"at{i}", end)
        missing = {os.fsdecode(p) for p, _ in problems}
        assert all("removed by gc" in m for _, m in problems), problems
        for name, v in got.items():
            assert v[:2] == tree[name][:2], f"layer {layer}: {name} is a wrong version"
        assert set(tree) - set(got) <= missing | _dirs_above(missing), f"layer {layer}"


def test_history_budget_keeps_the_most_recent_copies_that_fit() -> None:
    stats = [LayerStat(0, 0, 0, True)] + [LayerStat(i, 100, 0, True) for i in range(1, 4)]
    roomy = fit_history(stats, 10_000, store_total=300, copies=[50, 50, 50], records=[])
    assert roomy.keep == [0, 1, 2] and roomy.dropped == 0 and roomy.plan.fits
    # passes of ~110: 300 + 110 leaves 90 for history under a cap of 500; in order of
    # priority, a copy too big for what is left is skipped, smaller later ones still fit
    tight = fit_history(stats, 500, store_total=300, copies=[50, 100, 30], records=[])
    assert tight.keep == [0, 2] and tight.plan.fits
    # over the cap already: the oldest history records go first, only as many as needed
    over = fit_history(stats, 500, store_total=550, copies=[50], records=[100, 100, 100])
    assert over.keep == [] and over.dropped == 2 and over.plan.fits
    # when dropping all history would not make it fit either, history is not dropped
    hopeless = fit_history(stats, 500, store_total=900, copies=[50], records=[100])
    assert hopeless.keep == [] and hopeless.dropped == 0 and not hopeless.plan.fits


@pytest.mark.parametrize("shard", range(2))
def test_keep_history_gc_killed_at_any_store_call_loses_nothing(
    repo: Repository, repo_url: str, keyring: Any, tmp_path: Path, shard: int
) -> None:
    rng = random.Random(5)
    src = tmp_path / "src"
    make_source(src, rng)
    run = Rounds(repo_url, keyring.home, src, rng)
    run.backup()
    cap = int(2.3 * store_size(repo_url))
    for n in range(1, 4):
        change(src, rng, n)
        run.backup()
        if n < 3:
            run.gc(cap, keep=True)
    dry = run_gc(reopen(repo_url, keyring.home), cap=cap, dry_run=True, keep_history=True)
    assert dry.plan.delete and dry.history.copy > 0, "nothing for the killed gc to keep"
    pristine = tmp_path / "pristine"
    shutil.copytree(repo_url, pristine / "repo")
    shutil.copytree(os.environ["BLANKET_STATE_DIR"], pristine / "state")

    def reset() -> None:
        shutil.rmtree(repo_url)
        shutil.rmtree(os.environ["BLANKET_STATE_DIR"])
        shutil.copytree(pristine / "repo", repo_url)
        shutil.copytree(pristine / "state", os.environ["BLANKET_STATE_DIR"])

    count_file = tmp_path / "count"
    assert child_gc(repo_url, keyring.home, None, count_file, cap=cap, keep_history=True) == 0
    points = int(count_file.read_text())
    assert points > 10
    latest = _linked(run.points[-1][2])
    # every other point and the last five (tests/test_crash.py, longer, takes every third);
    # BLANKET_EVERY_CRASH_POINT=1 tries them all
    stride = 1 if os.environ.get("BLANKET_EVERY_CRASH_POINT") else 2
    every = sorted(set(range(1, points + 1, stride)) | set(range(points - 4, points + 1)))
    for i in every[shard::2]:  # two tests share the points, one per test worker
        reset()
        assert (
            child_gc(repo_url, keyring.home, i, count_file, cap=cap, keep_history=True) == CRASHED
        ), f"point {i}"
        after = reopen(repo_url, keyring.home)  # strict: the chain is sound after the crash
        got, problems = restored(after, tmp_path / f"crash{i}", 1 << 62)
        assert problems == [] and _linked(got) == latest, f"point {i}"
        finished = run_gc(reopen(repo_url, keyring.home), cap=cap, keep_history=True)
        assert finished.plan.delete == [] or finished.record is not None
        r = reopen(repo_url, keyring.home)
        for layer, end, tree in run.points:
            got, problems = restored(r, tmp_path / f"c{i}-{layer}", end)
            assert problems == [] and _linked(got) == _linked(tree), f"point {i}, layer {layer}"
        deleted = {layer for layer, _, _ in run.points} - {h.layer for h in r.packs}
        assert deleted, f"point {i}: the finishing gc deleted nothing"
        leftovers = [
            p.name
            for p in (Path(repo_url) / "data").iterdir()
            if not any(h.data_key.endswith(p.name) for h in r.headers)
        ]
        assert leftovers == [], f"point {i}: {leftovers}"
    print(f"{points} crash points in keep-history gc, all survived")


def test_the_recovery_script_ignores_kept_history_and_rebuilds_the_latest_state(
    repo: Repository, repo_url: str, keyring: Any, tmp_path: Path
) -> None:
    from test_manual_recovery import recover

    run = _scenario(repo_url, keyring.home, tmp_path, keep=True, rounds=3)
    assert sum(g.kept_versions for g, _, _, _ in run.gcs) > 0
    tree, proc = recover(tmp_path / "by-hand", repo_url, keyring.home)
    assert proc.returncode == 0, proc.stderr
    assert _linked(snapshot(tree)) == _linked(run.points[-1][2])
    # a history record is a sound pack: verify --deep checks every kept member
    report = verify(Repository.open(LocalBackend(repo_url), keyring.home), deep=True)
    assert report.problems == [] and report.packs_read == len(
        reopen(repo_url, keyring.home).headers
    )
