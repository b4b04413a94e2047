"""The space cap and garbage collection: the planner as a pure function, then a
repository driven through many rounds under a cap, checked after every round."""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any, BinaryIO

from blanket.backends.local import LocalBackend
from blanket.backup import BackupOptions, run_backup
from blanket.expiry import LayerStat, plan_expiry
from blanket.gc import run_gc
from blanket.repo import Repository
from blanket.restore.run import RestoreOptions, run_restore

# --- the planner ----------------------------------------------------------------------


def test_nothing_expires_while_two_more_passes_fit() -> None:
    stats = [LayerStat(0, 100, 80, True), LayerStat(1, 10, 10, True)]
    plan = plan_expiry(stats, cap=1000)
    assert plan.expire_below == 0 and plan.delete == [] and plan.fits


def test_the_oldest_layer_expires_while_its_refresh_still_fits() -> None:
    stats = [LayerStat(0, 100, 80, True)] + [LayerStat(i, 20, 0, True) for i in range(1, 6)]
    plan = plan_expiry(stats, cap=320)  # 200 stored, passes of ~22, refresh of 80
    assert plan.expire_below == 1 and plan.fits
    assert plan.peak <= 320
    assert plan_expiry(stats, cap=400).expire_below == 0  # room for two more passes: wait


def test_refreshed_layers_may_be_deleted_and_the_newest_complete_never_expires() -> None:
    stats = [LayerStat(0, 100, 0, True), LayerStat(1, 100, 90, True)]
    plan = plan_expiry(stats, cap=150, current=1, refreshed=1)
    assert plan.delete == [0]
    assert plan.expire_below == 1  # layer 1 is the newest complete pass: it stays


def test_a_state_that_cannot_fit_is_reported_not_deleted() -> None:
    stats = [LayerStat(0, 500, 500, True)]
    plan = plan_expiry(stats, cap=400)
    assert not plan.fits and "raise --cap" in plan.message


# --- a repository under a cap, round after round ---------------------------------------


class CountingBackend(LocalBackend):
    """Counts bytes read from pack data objects (gc must read none)."""

    data_read = 0

    def get(self, key: str) -> bytes:
        data = super().get(key)
        if key.startswith("data/"):
            CountingBackend.data_read += len(data)
        return data

    def get_range(self, key: str, offset: int, length: int) -> bytes:
        data = super().get_range(key, offset, length)
        if key.startswith("data/"):
            CountingBackend.data_read += len(data)
        return data

    def open_local(self, key: str) -> BinaryIO:
        f = super().open_local(key)  # read whole in place by whoever opens it
        if key.startswith("data/"):
            CountingBackend.data_read += os.fstat(f.fileno()).st_size
        return f


def _files(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


def _store_size(url: str) -> int:
    return sum(p.stat().st_size for p in Path(url).rglob("*") if p.is_file())


def _round(src: Path, rng: random.Random, n: int) -> None:
    (src / "big.bin").write_bytes(rng.randbytes(150_000))  # rewritten every round
    for i in rng.sample(range(30), 3):
        (src / "docs" / f"note{i:02d}.txt").write_bytes(b"round %d " % n + rng.randbytes(600))
    extra = src / "docs" / f"added{n:02d}.txt"
    extra.write_bytes(rng.randbytes(300))
    if n % 3 == 0:
        victims = sorted((src / "docs").glob("added*"))[:1]
        for v in victims:
            v.unlink()
    for p in src.rglob("*"):
        os.utime(p, ns=(10**18 + n, 10**18 + n))


def test_many_rounds_under_a_cap_keep_history_and_never_restore_wrong(
    repo: Repository, repo_url: str, keyring: Any, tmp_path: Path
) -> None:
    rng = random.Random(3)
    src = tmp_path / "src"
    (src / "docs").mkdir(parents=True)
    for i in range(30):
        (src / "docs" / f"note{i:02d}.txt").write_bytes(rng.randbytes(1500))
    (src / "big.bin").write_bytes(rng.randbytes(150_000))
    opts = BackupOptions(pack_size=64 << 10)
    first = run_backup(repo, str(src), opts)
    trees = {first.layer: _files(src)}
    cap = 4 * _store_size(repo_url)
    opts.cap = cap
    CountingBackend.data_read = 0
    deleted_any = False
    for n in range(1, 16):
        _round(src, rng, n)
        r = Repository.open(CountingBackend(repo_url), keyring.home)
        result = run_backup(r, str(src), opts)
        assert CountingBackend.data_read == 0, "backup/gc downloaded pack data"
        assert result.complete
        trees[result.layer] = _files(src)
        deleted_any = deleted_any or bool(result.gc and result.gc.deleted_layers)
        assert _store_size(repo_url) <= cap, f"round {n}: over the cap"
        r = Repository.open(LocalBackend(repo_url), keyring.home)
        r.refresh()
        layers = sorted({h.layer for h in r.packs})
        out = tmp_path / f"latest{n}"
        latest = run_restore(r, RestoreOptions(str(out)))
        assert latest.problems == [] and _files(out) == trees[result.layer], f"round {n}"
        if n >= 10:
            assert len(layers) >= 3, f"round {n}: only layers {layers} are kept"
    assert deleted_any, "the cap never made gc delete anything"

    r = Repository.open(LocalBackend(repo_url), keyring.home)
    r.refresh()
    for layer in sorted({h.layer for h in r.packs})[:-1]:
        out = tmp_path / f"at{layer}"
        old = run_restore(r, RestoreOptions(str(out), at_layer=layer))
        got = _files(out)
        missing = {os.fsdecode(p) for p, _ in old.problems}
        for name, data in got.items():
            assert trees[layer][name] == data, f"layer {layer}: {name} is a wrong version"
        assert set(trees[layer]) - set(got) <= missing, f"layer {layer}: silently missing"
        assert all("removed by gc" in m for _, m in old.problems)


def test_gc_dry_run_changes_nothing_and_gc_frees_refreshed_layers(
    repo: Repository, repo_url: str, keyring: Any, tmp_path: Path
) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "keep.txt").write_bytes(os.urandom(20_000))
    (src / "churn.bin").write_bytes(os.urandom(50_000))
    run_backup(repo, str(src), BackupOptions())
    for _ in range(3):
        (src / "churn.bin").write_bytes(os.urandom(50_000))
        run_backup(Repository.open(LocalBackend(repo_url), keyring.home), str(src), BackupOptions())
    before = sorted(p.name for p in Path(repo_url).rglob("*"))
    r = Repository.open(LocalBackend(repo_url), keyring.home)
    dry = run_gc(r, cap=1, dry_run=True)
    assert sorted(p.name for p in Path(repo_url).rglob("*")) == before
    assert dry.plan.expire_below >= 1 and dry.plan.delete == []
    run_gc(Repository.open(LocalBackend(repo_url), keyring.home), cap=1)  # marks layers
    (src / "churn.bin").write_bytes(os.urandom(50_000))
    run_backup(Repository.open(LocalBackend(repo_url), keyring.home), str(src), BackupOptions())
    planned = run_gc(Repository.open(LocalBackend(repo_url), keyring.home), cap=1, dry_run=True)
    result = run_gc(Repository.open(LocalBackend(repo_url), keyring.home), cap=1)
    assert 0 in result.deleted_layers and result.bytes_freed > 0
    # the dry run printed the plan the apply then ran
    assert planned.plan.delete == result.deleted_layers
    assert (planned.objects_to_delete, planned.bytes_to_free) == (
        result.objects_deleted,
        result.bytes_freed,
    )
    out = tmp_path / "out"
    r = Repository.open(LocalBackend(repo_url), keyring.home)
    assert run_restore(r, RestoreOptions(str(out))).problems == []
    assert _files(out) == _files(src)
