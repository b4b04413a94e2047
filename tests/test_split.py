"""Files larger than a pack: split over consecutive packs, resumed at the last part."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from blanket.backends import open_backend
from blanket.backup import BackupOptions, run_backup
from blanket.repo import Repository
from blanket.restore.run import RestoreOptions, run_restore

MiB = 1 << 20


def _reopen(repo: Repository, url: str, home: str) -> Repository:
    return Repository.open(open_backend(url), home)


def test_a_large_file_is_split_and_restored(repo: Repository, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    big = os.urandom(5 * MiB + 123)
    (src / "big").write_bytes(big)
    (src / "small").write_bytes(b"s")
    # sealed by size only: a slow machine's time seal must not cut a part short
    result = run_backup(repo, str(src), BackupOptions(pack_size=MiB, pack_seconds=3600))
    assert result.complete and result.packs >= 5
    parts = [e for h in repo.headers for e in repo.entries(h.seq) if e.kind == "P"]
    assert len(parts) == 6 and max(p.length for p in parts) == MiB
    out = tmp_path / "out"
    r = run_restore(repo, RestoreOptions(str(out)))
    assert r.problems == []
    assert hashlib.sha256((out / "big").read_bytes()).digest() == hashlib.sha256(big).digest()
    assert (out / "small").read_bytes() == b"s"


def test_an_interrupted_large_file_resumes_after_its_last_committed_part(
    repo: Repository, repo_url: str, keyring, tmp_path: Path
) -> None:
    src = tmp_path / "src"
    src.mkdir()
    big = os.urandom(6 * MiB)
    (src / "a-before").write_bytes(b"before")
    (src / "big").write_bytes(big)
    (src / "z-after").write_bytes(b"after")
    opts = BackupOptions(pack_size=MiB, max_bytes=int(2.5 * MiB))
    first = run_backup(repo, str(src), opts)
    assert first.stopped_early and not first.complete
    stored_first = sum(h.data_size for h in repo.headers)
    assert stored_first >= 3 * MiB  # three parts went up before the budget ran out

    # what was committed restores already, without the unfinished file
    out1 = tmp_path / "out1"
    run_restore(repo, RestoreOptions(str(out1)))
    assert (out1 / "a-before").read_bytes() == b"before"
    assert not (out1 / "big").exists()

    again = _reopen(repo, repo_url, keyring.home)
    second = run_backup(again, str(src), BackupOptions(pack_size=MiB))
    assert second.complete
    stored_second = sum(h.data_size for h in again.headers) - stored_first
    assert stored_second < 3.5 * MiB, "the resumed run uploaded the whole file again"
    out2 = tmp_path / "out2"
    assert run_restore(again, RestoreOptions(str(out2))).problems == []
    assert (out2 / "big").read_bytes() == big
    assert (out2 / "z-after").read_bytes() == b"after"


def test_a_file_changed_between_runs_starts_over(
    repo: Repository, repo_url: str, keyring, tmp_path: Path
) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "big").write_bytes(os.urandom(4 * MiB))
    run_backup(repo, str(src), BackupOptions(pack_size=MiB, max_bytes=2 * MiB))
    new = os.urandom(4 * MiB)
    (src / "big").write_bytes(new)
    again = _reopen(repo, repo_url, keyring.home)
    assert run_backup(again, str(src), BackupOptions(pack_size=MiB)).complete
    out = tmp_path / "out"
    assert run_restore(again, RestoreOptions(str(out))).problems == []
    assert (out / "big").read_bytes() == new


def test_split_files_are_written_by_workers_and_a_damaged_part_writes_nothing(
    repo: Repository, repo_url: str, keyring, tmp_path: Path, workers: int
) -> None:
    """Two split files restored by the worker processes (or in-process); then one part's
    pack is damaged in the store: that file is reported and absent, the rest is whole."""
    src = tmp_path / "src"
    src.mkdir()
    one, two = os.urandom(3 * MiB + 7), os.urandom(4 * MiB + 9)
    (src / "one").write_bytes(one)
    (src / "two").write_bytes(two)
    (src / "zsmall").write_bytes(b"s")
    assert run_backup(repo, str(src), BackupOptions(pack_size=MiB)).complete
    out = tmp_path / "out"
    opts = RestoreOptions(str(out), workers=workers)
    r = run_restore(_reopen(repo, repo_url, keyring.home), opts)
    assert r.problems == []
    assert (out / "one").read_bytes() == one and (out / "two").read_bytes() == two
    part = next(  # the last pack holding a part of "two"
        h
        for h in reversed(repo.headers)
        if any(e.kind == "P" and e.path == b"two" for e in repo.entries(h.seq))
    )
    hit = {e.path for e in repo.entries(part.seq)} - {b"."}
    obj = Path(repo_url) / part.data_key
    obj.chmod(0o644)
    data = bytearray(obj.read_bytes())
    data[len(data) // 2] ^= 1
    obj.write_bytes(bytes(data))
    out2 = tmp_path / "out2"
    again = _reopen(repo, repo_url, keyring.home)
    r = run_restore(again, RestoreOptions(str(out2), workers=workers))
    assert {p for p, _ in r.problems} == hit, r.problems
    assert all("does not match its index" in m for _, m in r.problems)
    whole = {"one": one, "two": two, "zsmall": b"s"}
    for name, content in whole.items():
        if name.encode() not in hit:
            assert (out2 / name).read_bytes() == content
    assert sorted(os.listdir(out2)) == sorted(n for n in whole if n.encode() not in hit)
