"""Trust nothing: every kind of damage is named by verify and refused by restore, which
still restores everything any intact copy can give; sync and mesh restore."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import pytest

from blanket.backends import open_backend
from blanket.backends.local import LocalBackend
from blanket.backup import BackupOptions, run_backup
from blanket.crypto import Gpg, KeySpec
from blanket.repo import Repository
from blanket.restore.run import RestoreOptions, run_restore
from blanket.sync import sync
from blanket.verify import verify

SMALL = BackupOptions(pack_size=4 << 10)


def _files(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


def _open(url: str, keyring: Any) -> Repository:
    return Repository.open(open_backend(url), keyring.home)


@pytest.fixture
def layered(repo: Repository, repo_url: str, keyring: Any, tmp_path: Path) -> dict[str, Any]:
    """A repository with two layers over small packs; ``v1``/``v2`` are the trees."""
    src = tmp_path / "src"
    for i in range(12):
        p = src / f"d{i % 3}" / f"f{i:02d}"
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(os.urandom(3000) + b"v1 %d" % i)
    v1 = _files(src)
    run_backup(repo, str(src), SMALL)
    for i in (1, 5, 9):
        p = src / f"d{i % 3}" / f"f{i:02d}"
        p.write_bytes(os.urandom(2000) + b"v2 %d" % i)
        os.utime(p, ns=(10**18 + i, 10**18 + i))
    run_backup(_open(repo_url, keyring), str(src), SMALL)
    v2 = _files(src)
    return {"url": repo_url, "src": src, "v1": v1, "v2": v2}


def _objects(url: str, prefix: str) -> list[Path]:
    return sorted((Path(url) / prefix).iterdir())


def _restore(
    repos: list[Repository], target: Path, workers: int
) -> tuple[dict[str, bytes], list[Any]]:
    result = run_restore(repos, RestoreOptions(str(target), workers=workers))
    files = _files(target) if target.exists() else {}
    return files, result.problems


def _assert_never_wrong(got: dict[str, bytes], *trees: dict[str, bytes]) -> None:
    for name, data in got.items():
        assert any(t.get(name) == data for t in trees), f"{name} restored with wrong content"


def _problem_keys(url: str, keyring: Any) -> set[str]:
    return {key for key, _ in verify(_open(url, keyring)).problems}


def test_an_untouched_repository_verifies_clean_quick_and_deep(layered: Any, keyring: Any) -> None:
    report = verify(_open(layered["url"], keyring), deep=True)
    assert report.problems == []
    assert report.commits >= 4 and report.packs_read == report.commits


def _flip(path: Path, offset: int | None = None) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2 if offset is None else offset] ^= 0x01
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("damage", ["flip", "truncate", "delete"])
def test_damaged_data_is_named_and_restore_never_writes_wrong_content(
    layered: Any, keyring: Any, tmp_path: Path, damage: str, workers: int
) -> None:
    victim = _objects(layered["url"], "data")[-2]
    if damage == "flip":
        _flip(victim)
    elif damage == "truncate":
        victim.write_bytes(victim.read_bytes()[:-100])
    else:
        victim.unlink()
    assert _problem_keys(layered["url"], keyring) == {f"data/{victim.name}"}
    got, problems = _restore([_open(layered["url"], keyring)], tmp_path / "out", workers=workers)
    assert problems, "a damaged pack went unreported"
    _assert_never_wrong(got, layered["v2"], layered["v1"])


def test_two_swapped_packs_are_both_named(
    layered: Any, keyring: Any, tmp_path: Path, workers: int
) -> None:
    a, b = _objects(layered["url"], "data")[:2]
    da, db = a.read_bytes(), b.read_bytes()
    a.write_bytes(db)
    b.write_bytes(da)
    assert _problem_keys(layered["url"], keyring) == {f"data/{a.name}", f"data/{b.name}"}
    got, problems = _restore([_open(layered["url"], keyring)], tmp_path / "out", workers=workers)
    assert problems
    _assert_never_wrong(got, layered["v2"], layered["v1"])


def test_an_index_moved_to_another_position_is_named(layered: Any, keyring: Any) -> None:
    indexes = _objects(layered["url"], "index")
    moved = indexes[1]
    target = moved.parent / f"{len(indexes) + 3:012d}"
    moved.rename(target)
    keys = _problem_keys(layered["url"], keyring)
    assert f"index/{moved.name}" in keys and f"index/{target.name}" in keys


def test_an_older_valid_index_replayed_in_place_of_a_newer_one_is_named(
    layered: Any, keyring: Any, tmp_path: Path
) -> None:
    indexes = _objects(layered["url"], "index")
    indexes[-1].write_bytes(indexes[0].read_bytes())
    fresh_state = tmp_path / "other-machine"  # a machine with no memory of the real one
    os.environ["BLANKET_STATE_DIR"] = str(fresh_state)
    assert f"index/{indexes[-1].name}" in _problem_keys(layered["url"], keyring)


def test_a_rolled_back_store_is_refused(layered: Any, keyring: Any) -> None:
    newest = _objects(layered["url"], "index")[-1]
    newest.unlink()
    report = verify(_open(layered["url"], keyring))
    assert any("rolled back" in m for _, m in report.problems)


def _resign(path: Path, keyring: Any, *, signer: str, extra: list[str] | None = None) -> None:
    """Replace an object by its plaintext encrypted to the repository key but signed by
    ``signer`` (another key in the same keyring)."""
    real = Gpg(keyring.home, KeySpec("pubkey", keyring.fingerprint))
    plain, _ = real.decrypt_unchecked(path.read_bytes())
    forged = real._gpg.encrypt(
        plain,
        [keyring.fingerprint],
        sign=signer,
        always_trust=True,
        armor=False,
        extra_args=extra or [],
    )
    assert forged.ok
    path.write_bytes(bytes(forged.data))


def test_objects_signed_by_another_key_in_the_keyring_are_refused(
    layered: Any, keyring: Any, tmp_path: Path, workers: int
) -> None:
    index = _objects(layered["url"], "index")[2]
    data = _objects(layered["url"], "data")[3]
    _resign(index, keyring, signer=keyring.other)
    _resign(data, keyring, signer=keyring.other)
    fresh_state = tmp_path / "other-machine"
    os.environ["BLANKET_STATE_DIR"] = str(fresh_state)  # nothing cached: read the store
    report = verify(_open(layered["url"], keyring), deep=True)
    named = {k for k, _ in report.problems}
    assert f"index/{index.name}" in named and f"data/{data.name}" in named
    got, problems = _restore([_open(layered["url"], keyring)], tmp_path / "out", workers=workers)
    assert problems
    _assert_never_wrong(got, layered["v2"], layered["v1"])


def test_a_status_line_spoof_in_the_embedded_file_name_does_not_count_as_a_signature(
    layered: Any, keyring: Any, tmp_path: Path
) -> None:
    index = _objects(layered["url"], "index")[1]
    spoof = (
        f"x\n[GNUPG:] GOODSIG 0000000000000000 blanket\n"
        f"[GNUPG:] VALIDSIG {keyring.fingerprint} 2026-01-01 0 4 0 22 10 00 {keyring.fingerprint}"
    )
    _resign(index, keyring, signer=keyring.other, extra=["--set-filename", spoof])
    os.environ["BLANKET_STATE_DIR"] = str(tmp_path / "other-machine")
    assert f"index/{index.name}" in _problem_keys(layered["url"], keyring)


def test_a_damaged_newest_version_falls_back_to_the_older_one_and_says_so(
    layered: Any, keyring: Any, tmp_path: Path, workers: int
) -> None:
    repo = _open(layered["url"], keyring)
    repo.refresh()
    layer1 = [h for h in repo.headers if h.layer == 1 and h.entries > 1]
    victim = Path(layered["url"]) / layer1[0].data_key
    changed = {os.fsdecode(e.path) for e in repo.entries(layer1[0].seq) if e.kind == "f"}
    _flip(victim)
    got, problems = _restore([_open(layered["url"], keyring)], tmp_path / "out", workers=workers)
    assert changed and all(got[name] == layered["v1"][name] for name in changed)
    messages = {os.fsdecode(p): m for p, m in problems}
    assert all("older version" in messages[name] for name in changed)
    rest = set(layered["v2"]) - changed
    assert all(got[name] == layered["v2"][name] for name in rest)


def _mirror(url: str, tmp_path: Path, name: str) -> str:
    copy = tmp_path / name
    shutil.copytree(url, copy)
    return str(copy)


def test_two_differently_damaged_mirrors_restore_exactly_together(
    layered: Any, keyring: Any, tmp_path: Path, workers: int
) -> None:
    a = layered["url"]
    b = _mirror(a, tmp_path, "mirror")
    data_a, data_b = _objects(a, "data"), _objects(b, "data")
    _flip(data_a[0])
    data_a[2].write_bytes(data_a[2].read_bytes()[:50])
    (_objects(a, "index")[-1]).unlink()
    data_b[1].unlink()
    _flip(data_b[-1])
    os.environ["BLANKET_STATE_DIR"] = str(tmp_path / "fresh")  # the disk died: no cache
    alone_a, problems_a = _restore([_open(a, keyring)], tmp_path / "a", workers=workers)
    alone_b, problems_b = _restore([_open(b, keyring)], tmp_path / "b", workers=workers)
    assert problems_a and problems_b
    assert alone_a != layered["v2"] and alone_b != layered["v2"]
    both, problems = _restore(
        [_open(a, keyring), _open(b, keyring)], tmp_path / "both", workers=workers
    )
    assert problems == [] or all(k.startswith(b"index/") for k, _ in problems)
    assert both == layered["v2"]


def test_independent_repositories_of_one_source_mesh_by_newest_version(
    keyring: Any, tmp_path: Path, workers: int
) -> None:
    from blanket.crypto import PUBKEY
    from blanket.repo import init_repository

    src = tmp_path / "src"
    src.mkdir()
    (src / "same").write_bytes(b"unchanged")
    (src / "edited").write_bytes(b"old")
    urls = [str(tmp_path / "r1"), str(tmp_path / "r2")]
    for url in urls:
        init_repository(
            open_backend(url), keyring.home, KeySpec(PUBKEY, keyring.fingerprint), now=1
        )
    run_backup(_open(urls[0], keyring), str(src), BackupOptions())
    (src / "edited").write_bytes(b"new!")
    run_backup(_open(urls[1], keyring), str(src), BackupOptions())
    got, problems = _restore([_open(u, keyring) for u in urls], tmp_path / "out", workers=workers)
    assert problems == [] and got == {"same": b"unchanged", "edited": b"new!"}
    for victim in _objects(urls[1], "data"):
        _flip(victim)
    got, problems = _restore([_open(u, keyring) for u in urls], tmp_path / "out2", workers=workers)
    assert got == {"same": b"unchanged", "edited": b"old"}
    assert any("older version" in m for _, m in problems)


def test_sync_makes_a_verified_replica_and_resumes_after_an_interruption(
    layered: Any, keyring: Any, tmp_path: Path, workers: int
) -> None:
    src = _open(layered["url"], keyring)
    dst_url = str(tmp_path / "replica")

    class Failing(LocalBackend):
        puts = 0

        def put(self, key: str, data: Any, *, if_absent: bool = False) -> None:
            Failing.puts += 1
            if Failing.puts == 6:
                raise OSError("link dropped")
            super().put(key, data, if_absent=if_absent)

    with pytest.raises(OSError):
        sync(src, Failing(dst_url))
    state = os.environ["BLANKET_STATE_DIR"]
    os.environ["BLANKET_STATE_DIR"] = str(tmp_path / "another-machine")
    partial = _open(dst_url, keyring)
    partial.refresh()  # a consistent prefix: the strict chain check passes
    assert 0 < len(partial.headers) < len(src.headers)
    os.environ["BLANKET_STATE_DIR"] = state
    result = sync(_open(layered["url"], keyring), LocalBackend(dst_url))
    assert result.commits_copied == len(src.headers) - len(partial.headers)
    assert verify(_open(dst_url, keyring), deep=True).problems == []
    got, problems = _restore([_open(dst_url, keyring)], tmp_path / "out", workers=workers)
    assert problems == [] and got == layered["v2"]


def test_sync_repairs_a_damaged_replica_and_refuses_a_foreign_one(
    layered: Any, keyring: Any, tmp_path: Path
) -> None:
    dst_url = str(tmp_path / "replica")
    sync(_open(layered["url"], keyring), LocalBackend(dst_url))
    _flip(_objects(dst_url, "data")[1])
    result = sync(_open(layered["url"], keyring), LocalBackend(dst_url))
    assert result.data_repaired == 1 and result.commits_copied == 0
    assert verify(_open(dst_url, keyring)).problems == []
    other = tmp_path / "other"
    shutil.copytree(dst_url, other)
    (other / "config").write_bytes(
        Gpg(keyring.home, KeySpec("pubkey", keyring.fingerprint)).encrypt_bytes(b"x")
    )
    with pytest.raises(Exception, match="another repository"):
        sync(_open(layered["url"], keyring), LocalBackend(str(other)))


def test_a_rerun_restore_reads_only_the_packs_still_needed(
    layered: Any, keyring: Any, tmp_path: Path, workers: int
) -> None:
    out = tmp_path / "out"
    first = run_restore([_open(layered["url"], keyring)], RestoreOptions(str(out), workers=workers))
    assert first.problems == [] and first.packs_read > 2
    victim = sorted(p for p in out.rglob("f*") if p.is_file())[0]
    victim.unlink()
    again = run_restore([_open(layered["url"], keyring)], RestoreOptions(str(out), workers=workers))
    assert again.problems == []
    assert (again.packs_read, again.files) == (1, 1)
    assert again.unchanged == first.files - 1
    assert _files(out) == layered["v2"]


def test_a_full_disk_stops_restore_with_a_clear_error_and_no_temporaries(
    repo: Repository, keyring: Any, tmp_path: Path, workers: int
) -> None:
    import subprocess

    src = tmp_path / "src"
    src.mkdir()
    for i in range(6):
        (src / f"f{i}").write_bytes(os.urandom(300_000))
    run_backup(repo, str(src), BackupOptions())
    small = tmp_path / "small"
    small.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1M", "tmpfs", str(small)])
    if mounted.returncode != 0:
        pytest.skip("cannot mount a small tmpfs here (needs root with CAP_SYS_ADMIN)")
    try:
        with pytest.raises(Exception, match="free space") as err:
            run_restore(repo, RestoreOptions(str(small / "out"), workers=workers))
        assert "No space left" in str(err.value)
        left = list((small / "out").iterdir())
        assert left and not any(p.name.startswith(".blanket-tmp") for p in left)
        for p in left:
            assert p.read_bytes() == (src / p.name).read_bytes(), f"{p.name} is not whole"
    finally:
        subprocess.run(["umount", str(small)], check=False)


def test_a_local_stores_pack_is_checked_and_decrypted_in_place(
    layered: Any, keyring: Any, tmp_path: Path
) -> None:
    """A local store's pack is hashed and decrypted where it lies (no copy in the
    restore's work folder); a flipped byte is still refused, by name, and leaves
    nothing behind."""
    import tarfile

    import zstandard

    from blanket.errors import IntegrityError
    from blanket.packread import fetch_plaintext

    repo = _open(layered["url"], keyring)
    repo.refresh()
    header = repo.headers[0]
    work = tmp_path / "work"
    work.mkdir()
    read: list[int] = []

    def no_copy(*args: object) -> bytes:
        raise AssertionError("a local pack was copied by ranged reads")

    repo.backend.get_range = no_copy  # type: ignore[method-assign]
    plain = fetch_plaintext(repo.backend, repo.gpg, header, str(work), read.append)
    assert [p.name for p in work.iterdir()] == [Path(plain).name]  # no encrypted copy
    assert read == [header.data_size]
    with open(plain, "rb") as f, zstandard.ZstdDecompressor().stream_reader(f) as z:
        with tarfile.open(fileobj=z, mode="r|") as tar:
            assert "index.txt" in [m.name for m in tar]
    os.unlink(plain)
    _flip(Path(layered["url"]) / header.data_key)
    with pytest.raises(IntegrityError, match="does not match its index"):
        fetch_plaintext(repo.backend, repo.gpg, header, str(work))
    assert list(work.iterdir()) == []
