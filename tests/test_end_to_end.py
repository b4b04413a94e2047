"""End to end, with real parts only: the real gpg binary (the session keyring from
conftest), real local repositories, the real ``blanket`` command in a subprocess, and real
directory trees full of awkward cases. Every check compares whole-tree snapshots
(content, type, mode, mtime in ns, owner, symlink targets, xattrs, hard-link groups).
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import tempfile
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pytest
from treeutil import (
    DISTINCTIVE_NAMES,
    SPARSE_DATA_AT,
    WEIRD_NAME,
    assert_same_tree,
    blocks_used,
    link_groups,
    make_awkward_tree,
    make_deep_tree,
    open_deep,
    set_odd_times,
    snapshot,
    subtree,
    without,
)

from blanket import model
from blanket.backends import open_backend
from blanket.backup import BackupOptions, BackupResult, run_backup
from blanket.crypto import generate_key
from blanket.layers import summarize
from blanket.repo import Repository
from blanket.restore.run import RestoreOptions, RestoreResult, run_restore

# --- helpers -------------------------------------------------------------------------


def backup(repo: Repository, src: Path, **opts: object) -> BackupResult:
    result = run_backup(repo, str(src), BackupOptions(**opts))  # type: ignore[arg-type]
    assert result.warnings == [], result.warnings
    return result


def restore(
    repo: Repository,
    target: Path,
    paths: list[bytes] | None = None,
    at_layer: int | None = None,
    at_time: int | None = None,
    workers: int | None = None,
) -> RestoreResult:
    opts = RestoreOptions(str(target), list(paths or []), at_layer, at_time, workers=workers)
    result = run_restore(repo, opts)
    assert result.problems == [], result.problems
    return result


def reopen(repo_url: str, home: str) -> Repository:
    return Repository.open(open_backend(repo_url), home)


def store_files(repo_url: str) -> dict[str, bytes]:
    """Every object on a local store: key (path relative to the store) -> bytes."""
    out = {}
    for dirpath, _dirs, files in os.walk(repo_url):
        for name in files:
            full = os.path.join(dirpath, name)
            with open(full, "rb") as f:
                out[os.path.relpath(full, repo_url)] = f.read()
    return out


def stamp(path: Path, ns: int) -> None:
    os.utime(path, ns=(ns, ns), follow_symlinks=False)


def edit(path: Path, data: bytes, ns: int) -> None:
    """A real edit: new content and a new mtime (what an editor leaves behind)."""
    path.write_bytes(data)
    stamp(path, ns)


def one_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, f"expected one stderr line, got {lines!r}"
    return lines[0]


def empty_or_missing(path: Path) -> bool:
    return not path.exists() or (path.is_dir() and not any(path.iterdir()))


@pytest.fixture
def awkward(tmp_path: Path) -> tuple[Path, dict[str, object]]:
    src = tmp_path / "src"
    facts = make_awkward_tree(src)
    return src, facts


@pytest.fixture(scope="module")
def stranger_home() -> Iterator[str]:
    """A second gpg home with a secret key that is not the repository's."""
    home = tempfile.mkdtemp(prefix="bwk", dir="/tmp")
    os.chmod(home, 0o700)
    generate_key(home, "a stranger")
    yield home
    subprocess.run(["gpgconf", "--homedir", home, "--kill", "all"], check=False)
    shutil.rmtree(home, ignore_errors=True)


def mutate(src: Path, xattrs: bool) -> None:
    """Modify, delete, rename and change the type of many entries of the awkward tree."""
    t = 1_700_000_000_000_000_001
    # content edits: other size; same size (caught only through mtime/ctime); big file
    edit(src / "d/other.txt", b"other, edited and longer\n", t + 1)
    edit(src / "sizes/s4096", os.urandom(4096), t + 2)
    with open(src / "giraffe-5M.bin", "r+b") as f:
        f.seek(3 << 20)
        f.write(b"EDITED IN THE MIDDLE")
    stamp(src / "giraffe-5M.bin", t + 3)
    with open(src / "sparse-yak.img", "r+b") as f:  # more data in a hole, still sparse
        f.seek(SPARSE_DATA_AT // 2)
        f.write(b"x" * 8192)
    stamp(src / "sparse-yak.img", t + 4)
    # metadata only
    os.chmod(src / "quokka/inside", 0o600)
    os.chown(src / "pelican-owned", 4321, 8765)
    if xattrs:
        os.setxattr(src / "xattr-owl.txt", "user.test", b"changed value")
        os.removexattr(src / "xattr-owl.txt", "user.empty")
    os.chmod(src / "modes/setuid", 0o755)
    # deletions: files, a whole directory holding the first member of the triple link
    (src / "empty").unlink()
    (src / "a-b").unlink()
    shutil.rmtree(src / "a")
    # renames: a file, a directory (to later in the clock), the first member of a pair
    (src / "d/e/f.txt").rename(src / "d/e/f-renamed.txt")
    (src / "quokka").rename(src / "zz-quokka")
    (src / "hard/narwhal-hardlink").rename(src / "hard/zz-narwhal")
    (src / "b-dir").rename(src / "c-dir")  # holds the first member of a hard-link pair
    # type changes: file -> dir, dir -> file, file -> symlink, symlink -> dir, fifo -> file
    (src / "sizes/s1").unlink()
    (src / "sizes/s1").mkdir()
    (src / "sizes/s1/now-a-dir-child").write_bytes(b"child\n")
    shutil.rmtree(src / "modes/sticky")
    (src / "modes/sticky").write_bytes(b"was a sticky dir\n")
    (src / "a.b").unlink()
    (src / "a.b").symlink_to("d/other.txt")
    (src / "links/to-dir").unlink()
    (src / "links/to-dir").mkdir()
    (src / "links/to-dir/x").write_bytes(b"x\n")
    (src / "mongoose.fifo").unlink()
    (src / "mongoose.fifo").write_bytes(b"a file now\n")
    # symlink retargeted; a file added to the read-only dir; brand new entries
    (src / "links/self-loop").unlink()
    (src / "links/self-loop").symlink_to("relative")
    (src / "readonly-lynx/added").write_bytes(b"added\n")
    (src / "new-dir/deeper").mkdir(parents=True)
    (src / "new-dir/deeper/new-file").write_bytes(b"new\n")
    (src / "new-top").write_bytes(b"new top\n")


# --- (1) the awkward tree round-trips exactly ----------------------------------------


def test_awkward_tree_backup_restore_is_exact(
    repo: Repository,
    repo_url: str,
    keyring,
    awkward: tuple[Path, dict[str, object]],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    src, facts = awkward
    before = snapshot(src)
    groups = link_groups(src)
    assert len(groups) == 3

    result = backup(repo, src)
    assert result.complete and result.layer == 0 and result.packs >= 1
    assert_same_tree(before, snapshot(src), "the source after a backup")

    out = tmp_path / "out"
    restore(repo, out)
    assert_same_tree(before, snapshot(out))
    assert link_groups(out) == groups
    # the sparse files come back sparse (the source uses 4 KiB of 50 MiB)
    assert blocks_used(out / "sparse-yak.img") <= 256 * 1024
    assert blocks_used(out / "all-hole.img") <= 64 * 1024
    if facts["xattrs"]:
        assert os.getxattr(out / "xattr-owl.txt", "user.test") == b"value \x00\xff binary"
    assert stat.S_ISCHR(os.lstat(out / "wombat-null").st_mode)
    assert os.lstat(out / "modes/setuid").st_mode & 0o7777 == 0o4755

    # with the local state lost, a fresh view rebuilt from the store alone restores the same
    monkeypatch.setenv("BLANKET_STATE_DIR", str(tmp_path / "fresh-state"))
    out2 = tmp_path / "out2"
    restore(reopen(repo_url, keyring.home), out2)
    assert_same_tree(before, snapshot(out2), "restore through a fresh local state")
    assert link_groups(out2) == groups


# --- (2) a second layer: latest, --at 0, --at ISO time -------------------------------


def test_second_layer_restores_new_tree_and_old_points_in_time(
    repo: Repository,
    repo_url: str,
    keyring,
    cli,
    awkward: tuple[Path, dict[str, object]],
    tmp_path: Path,
) -> None:
    src, facts = awkward
    old = snapshot(src)
    old_groups = link_groups(src)
    backup(repo, src)

    time.sleep(0.01)
    between = datetime.now().isoformat(timespec="microseconds")  # naive: local time
    between_aware = datetime.now().astimezone().isoformat(timespec="microseconds")
    time.sleep(0.01)

    mutate(src, bool(facts["xattrs"]))
    new = snapshot(src)
    new_groups = link_groups(src)
    assert new != old
    result = backup(repo, src)
    assert result.layer == 1 and result.complete and result.deleted >= 3

    latest = tmp_path / "latest"
    restore(reopen(repo_url, keyring.home), latest)
    assert_same_tree(new, snapshot(latest), "restore of the latest state")
    assert link_groups(latest) == new_groups

    layer0 = tmp_path / "layer0"
    restore(reopen(repo_url, keyring.home), layer0, at_layer=0)
    assert_same_tree(old, snapshot(layer0), "restore --at 0")
    assert link_groups(layer0) == old_groups

    # the CLI with an ISO time between the two backups gives the old tree too
    at_time = tmp_path / "at-time"
    cli("restore", "--repo", repo_url, "--to", str(at_time), "--at", between, check=0)
    assert_same_tree(old, snapshot(at_time), f"restore --at {between}")
    assert link_groups(at_time) == old_groups

    at_time2 = tmp_path / "at-time-aware"
    cli("restore", "--repo", repo_url, "--to", str(at_time2), "--at", between_aware, check=0)
    assert_same_tree(old, snapshot(at_time2), f"restore --at {between_aware}")

    # and --at 1 (the newest layer) gives the new tree
    at1 = tmp_path / "at1"
    cli("restore", "--repo", repo_url, "--to", str(at1), "--at", "1", check=0)
    assert_same_tree(new, snapshot(at1), "restore --at 1")

    # ls agrees: the deleted directory is listed at layer 0 only
    now_ls = cli("ls", "--repo", repo_url, "--json", check=0).out
    old_ls = cli("ls", "--repo", repo_url, "--json", "--at", "0", check=0).out
    now_paths = {json.loads(line)["path"] for line in now_ls.splitlines()}
    old_paths = {json.loads(line)["path"] for line in old_ls.splitlines()}
    assert "a/b/c/deepest-walrus.txt" in old_paths - now_paths
    assert "zz-quokka/inside" in now_paths - old_paths
    assert "new-dir/deeper/new-file" in now_paths - old_paths


# --- (3) subtree restore --------------------------------------------------------------


def test_subtree_restore_gives_exactly_the_subtree(
    repo: Repository, awkward: tuple[Path, dict[str, object]], tmp_path: Path, cli, repo_url: str
) -> None:
    src, _ = awkward
    before = snapshot(src)
    backup(repo, src)

    out = tmp_path / "sub"
    restore(repo, out, [b"d/e"])
    expected = {b"d": before[b"d"], **subtree(before, b"d/e")}
    # d/e/triple-2 is a hard link whose first member (a/b/triple-1) is not restored:
    # it must still come back, with its content
    assert_same_tree(expected, snapshot(out, with_root=False), "subtree restore of d/e")


def test_subtree_restore_of_a_file_a_non_utf8_dir_and_a_missing_path(
    repo: Repository, awkward: tuple[Path, dict[str, object]], tmp_path: Path, cli, repo_url: str
) -> None:
    src, _ = awkward
    before = snapshot(src)
    backup(repo, src)

    # a file as the subtree; a non-UTF-8 directory through the CLI
    out2 = tmp_path / "sub2"
    restore(repo, out2, [b"sizes/s4095"])
    assert_same_tree(
        {b"sizes": before[b"sizes"], b"sizes/s4095": before[b"sizes/s4095"]},
        snapshot(out2, with_root=False),
        "restore of a single file",
    )
    out3 = tmp_path / "sub3"
    cli("restore", "--repo", repo_url, "--to", str(out3), os.fsdecode(b"dir-\xff\xfe"), check=0)
    assert_same_tree(
        subtree(before, b"dir-\xff\xfe"), snapshot(out3, with_root=False), "non-UTF-8 subtree"
    )

    # a path that is not in the backup: usage error, nothing written
    out4 = tmp_path / "sub4"
    r = cli("restore", "--repo", repo_url, "--to", str(out4), "no/such/path")
    assert r.code == 2, r
    one_line(r.err)
    assert empty_or_missing(out4)


# --- (4) object keys carry no names ---------------------------------------------------


def test_store_keys_are_ascii_and_carry_no_file_names(
    repo: Repository, repo_url: str, awkward: tuple[Path, dict[str, object]]
) -> None:
    src, _ = awkward
    backup(repo, src)
    (src / "d/other.txt").write_bytes(b"changed")
    backup(repo, src)
    objects = store_files(repo_url)
    assert len(objects) >= 5  # config + 2 x (data + index)

    names = [*DISTINCTIVE_NAMES, *(os.fsencode(p) for p in os.listdir(src))]
    fragments = set()
    for name in names:
        for part in name.replace(b"/", b"\n").split(b"\n"):
            fragments.update(part[i : i + 5] for i in range(max(1, len(part) - 4)))
    fixed = b" config data/ index/ .tmp- "
    fragments = {f for f in fragments if len(f) >= 4 and f not in fixed}
    for key, body in objects.items():
        assert key.isascii() and key.isprintable(), key
        assert not key.startswith(".") and "/." not in key, f"leftover temporary {key}"
        raw = key.encode()
        hits = [f for f in fragments if f in raw]
        assert not hits, f"key {key} holds name fragment(s) {hits}"
        # names must not appear in plaintext inside any object either
        for name in DISTINCTIVE_NAMES:
            assert name not in body, f"{name!r} is readable inside {key}"


# --- (5) exit codes -------------------------------------------------------------------


def test_missing_repository_exits_10_and_creates_nothing(cli, tmp_path: Path) -> None:
    missing = tmp_path / "no-repo"
    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_bytes(b"f")
    for args in (
        ("ls", "--repo", str(missing)),
        ("layers", "--repo", str(missing)),
        ("backup", "--repo", str(missing), str(src)),
        ("restore", "--repo", str(missing), "--to", str(tmp_path / "out")),
    ):
        r = cli(*args)
        assert r.code == 10, (args, r)
        one_line(r.err)
        assert not missing.exists()
    assert empty_or_missing(tmp_path / "out")


def test_wrong_key_exits_12_with_one_line_and_touches_nothing(
    cli, repo: Repository, repo_url: str, stranger_home: str, tmp_path: Path
) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_bytes(b"secret content")
    backup(repo, src)
    objects = store_files(repo_url)
    env = {"GNUPGHOME": stranger_home}
    target = tmp_path / "out"
    r = cli("restore", "--repo", repo_url, "--to", str(target), env=env)
    assert r.code == 12, r
    one_line(r.err)
    assert empty_or_missing(target)
    for args in (("ls", "--repo", repo_url), ("backup", "--repo", repo_url, str(src))):
        r = cli(*args, env=env)
        assert r.code == 12, (args, r)
        one_line(r.err)
    # --gnupghome on the command line wins over GNUPGHOME
    r = cli("ls", "--repo", repo_url, "--gnupghome", stranger_home)
    assert r.code == 12, r
    assert store_files(repo_url) == objects


def test_init_twice_fails_with_1_and_keeps_the_config(cli, keyring, tmp_path: Path) -> None:
    url = str(tmp_path / "repo")
    cli("init", "--repo", url, "--key", keyring.fingerprint, check=0)
    first = store_files(url)
    r = cli("init", "--repo", url, "--key", keyring.fingerprint)
    assert r.code == 1, r
    one_line(r.err)
    r = cli("init", "--repo", url, "--key", keyring.other)
    assert r.code == 1, r
    assert store_files(url) == first
    cli("ls", "--repo", url, check=0)


def test_usage_errors_exit_2(cli, keyring, tmp_path: Path) -> None:
    url = str(tmp_path / "repo")
    src = tmp_path / "src"
    src.mkdir()
    cli("init", "--repo", url, "--key", keyring.fingerprint, check=0)
    for args in (
        ("backup", "--repo", url, "--pack-size", "12Q", str(src)),
        ("backup", "--repo", url, "--pack-size", "", str(src)),
        ("backup", "--repo", url, "--max-time", "soon", str(src)),
        ("restore", "--repo", url),  # no --to
        ("restore", "--repo", url, "--to", str(tmp_path / "o"), "--at", "yesterday"),
        ("frobnicate",),
        ("backup", "--repo", url, str(tmp_path / "no-such-source")),
    ):
        r = cli(*args)
        assert r.code == 2, (args, r)
        one_line(r.err)
    # nothing was committed by any of them
    assert sorted(store_files(url)) == ["config"]


def test_restore_into_the_source_is_refused_without_force(
    cli, repo: Repository, repo_url: str, tmp_path: Path
) -> None:
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "sub/f").write_bytes(b"f")
    set_odd_times(src)
    backup(repo, src)
    before = snapshot(src)
    for target in (src / "restored-here", src / "sub", src, tmp_path):
        r = cli("restore", "--repo", repo_url, "--to", str(target))
        assert r.code == 2, (target, r)
        one_line(r.err)
        assert_same_tree(before, snapshot(src), f"the source after refusing --to {target}")
    # with --force, restoring over the source is allowed (and changes nothing here)
    cli("restore", "--repo", repo_url, "--to", str(src), "--force", check=0)
    assert_same_tree(before, snapshot(src), "the source after a forced restore over it")


def test_another_source_is_refused(cli, repo: Repository, repo_url: str, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_bytes(b"f")
    backup(repo, src)
    objects = store_files(repo_url)
    other = tmp_path / "other"
    other.mkdir()
    r = cli("backup", "--repo", repo_url, str(other))
    assert r.code == 2, r
    one_line(r.err)
    assert store_files(repo_url) == objects
    # the same source through a symlink or with a trailing slash is the same source
    (tmp_path / "alias").symlink_to(src)
    cli("backup", "--repo", repo_url, str(tmp_path / "alias"), check=0)
    cli("backup", "--repo", repo_url, str(src) + "/", check=0)


def test_restore_never_follows_symlinks_already_in_the_target(
    repo: Repository, tmp_path: Path
) -> None:
    src = tmp_path / "src"
    (src / "d/sub").mkdir(parents=True)
    (src / "d/f").write_bytes(b"f")
    (src / "d/sub/g").write_bytes(b"g")
    (src / "top").write_bytes(b"top")
    set_odd_times(src)
    before = snapshot(src)
    backup(repo, src)

    outside = tmp_path / "outside"
    (outside / "sub").mkdir(parents=True)
    (outside / "victim").write_bytes(b"do not touch")
    outside_before = snapshot(outside)
    out = tmp_path / "out"
    out.mkdir()
    (out / "d").symlink_to(outside)  # a directory the restore needs is a symlink
    (out / "top").symlink_to(outside / "victim")  # a file the restore writes is a symlink
    run_restore(repo, RestoreOptions(str(out)))
    assert_same_tree(outside_before, snapshot(outside), "a directory outside the target")
    assert_same_tree(before, snapshot(out), "restore over planted symlinks")


# --- (6) passphrase mode --------------------------------------------------------------


def test_passphrase_repository_round_trip_and_wrong_passphrase(cli, tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "d").mkdir(parents=True)
    (src / "d" / os.fsdecode(b"\xff\xfe name")).write_bytes(os.urandom(100_000))
    (src / "d/link").symlink_to("../nowhere")
    (src / "top").write_bytes(b"top\n")
    os.link(src / "top", src / "d/hard")
    set_odd_times(src)
    before = snapshot(src)
    right = tmp_path / "pass"
    right.write_text("correct horse battery staple\n")
    wrong = tmp_path / "wrong"
    wrong.write_text("correct horse battery stapler\n")
    url = str(tmp_path / "repo")
    pf = ("--passphrase-file", str(right))

    r = cli("init", "--repo", url, "--key", "whatever", *pf)
    assert r.code == 2, r  # exactly one of --key and --passphrase-file
    cli("init", "--repo", url, *pf, check=0)
    cli("backup", "--repo", url, str(src), *pf, check=0)
    out = tmp_path / "out"
    cli("restore", "--repo", url, "--to", str(out), *pf, check=0)
    assert_same_tree(before, snapshot(out), "restore from a passphrase repository")
    assert link_groups(out) == link_groups(src) == {frozenset({b"top", b"d/hard"})}

    # a wrong passphrase right after the right one was used (a gpg-agent caching the
    # symmetric passphrase must not let it through)
    bad_out = tmp_path / "bad-out"
    r = cli("restore", "--repo", url, "--to", str(bad_out), "--passphrase-file", str(wrong))
    assert r.code == 12, r
    one_line(r.err)
    assert empty_or_missing(bad_out)
    r = cli("ls", "--repo", url, "--passphrase-file", str(wrong))
    assert r.code == 12, r
    # no passphrase at all
    r = cli("ls", "--repo", url)
    assert r.code == 12, r
    one_line(r.err)
    # the passphrase through the environment works
    cli("ls", "--repo", url, env={"BLANKET_PASSPHRASE_FILE": str(right)}, check=0)


# --- (7) many small packs -------------------------------------------------------------


def _small_files(src: Path, n: int = 200) -> None:
    for i in range(n):
        d = src / f"dir{i % 7}" / f"sub{i % 3}"
        d.mkdir(parents=True, exist_ok=True)
        (d / f"file{i:03d}").write_bytes(os.urandom(300 + (i * 37) % 900))
    set_odd_times(src)


def test_pack_size_1k_gives_many_commits_that_restore_identically(
    cli, repo_url: str, keyring, tmp_path: Path
) -> None:
    src = tmp_path / "src"
    _small_files(src)
    before = snapshot(src)
    cli("init", "--repo", repo_url, "--key", keyring.fingerprint, check=0)
    r = cli("backup", "--repo", repo_url, "--pack-size", "1K", "--json", str(src), check=0)
    commits = [json.loads(x) for x in r.out.splitlines() if json.loads(x)["type"] == "commit"]
    assert [c["seq"] for c in commits] == list(range(len(commits)))
    n_index = len([k for k in store_files(repo_url) if k.startswith("index/")])
    assert n_index == len(commits)

    out = tmp_path / "out"
    cli("restore", "--repo", repo_url, "--to", str(out), check=0)
    assert_same_tree(before, snapshot(out), "restore from 1K packs")
    rows = cli("layers", "--repo", repo_url, "--json", check=0).out.splitlines()
    layers = [json.loads(x) for x in rows]
    assert [(row["layer"], row["packs"], row["state"]) for row in layers] == [
        (0, len(commits), "complete")
    ]
    # 200 files of 300..1200 random (incompressible) bytes are ~150 KiB of pack data:
    # a 1 KiB pack target must seal far more than a handful of packs
    sizes = [c["bytes"] for c in commits]
    assert len(commits) >= 50, f"--pack-size 1K sealed only {len(commits)} packs: {sizes}"


def test_many_packs_restore_identically(
    repo: Repository, repo_url: str, keyring, tmp_path: Path, workers: int
) -> None:
    src = tmp_path / "src"
    _small_files(src, 80)
    before = snapshot(src)
    result = backup(repo, src, pack_size=1024, pack_entries=3)
    assert result.complete and result.packs >= 30, result.packs
    fresh = reopen(repo_url, keyring.home)
    assert len(fresh.refresh()) == result.packs
    out = tmp_path / "out"
    got = restore(fresh, out, workers=workers)
    assert result.packs // 2 < got.packs_read <= result.packs  # packs of only dirs are skipped
    assert_same_tree(before, snapshot(out), "restore from many packs")

    # edit a few files spread over the clock; the next layer is many packs too
    for i in (0, 41, 79):
        edit(
            next(src.glob(f"dir*/sub*/file{i:03d}")),
            b"edited %d" % i,
            1_750_000_000_000_000_000 + i,
        )
    shutil.rmtree(src / "dir4/sub2")
    after = snapshot(src)
    backup(repo, src, pack_size=1024, pack_entries=2)
    fresh = reopen(repo_url, keyring.home)
    for at, want in ((0, before), (None, after)):
        target = tmp_path / f"out-{at}"
        restore(fresh, target, at_layer=at, workers=workers)
        assert_same_tree(want, snapshot(target), f"restore --at {at} from many packs")
    # a subtree restore reads only what it needs
    out2 = tmp_path / "sub"
    got = restore(fresh, out2, [b"dir3/sub1"], workers=workers)
    assert_same_tree(
        {b"dir3": after[b"dir3"], **subtree(after, b"dir3/sub1")},
        snapshot(out2, with_root=False),
    )
    assert got.packs_read < result.packs


# --- (8) --json output ----------------------------------------------------------------


def test_json_output_lines_all_parse(
    cli, repo_url: str, keyring, awkward: tuple[Path, dict[str, object]], tmp_path: Path
) -> None:
    src, _ = awkward
    before = snapshot(src)
    outputs = [
        cli("init", "--repo", repo_url, "--key", keyring.fingerprint, "--json", check=0).out,
        cli("backup", "--repo", repo_url, str(src), "--json", check=0).out,
    ]
    ls = cli("ls", "--repo", repo_url, "--json", check=0).out
    outputs += [
        ls,
        cli("ls", "--repo", repo_url, "d/e", "--json", check=0).out,
        cli("layers", "--repo", repo_url, "--json", check=0).out,
        cli("restore", "--repo", repo_url, "--to", str(tmp_path / "o"), "--json", check=0).out,
    ]
    for out in outputs:
        lines = out.split("\n")
        assert lines[-1] == "", "output must end with a newline"
        for line in lines[:-1]:
            obj = json.loads(line)
            assert isinstance(obj, dict) and "type" in obj, line
    entries = [json.loads(line) for line in ls.splitlines()]
    assert all(e["type"] == "entry" for e in entries)
    assert len(entries) == len(before)
    paths = [e["path"] for e in entries]
    assert len(set(paths)) == len(paths), "two different paths shown as the same text"
    assert os.fsdecode(WEIRD_NAME) in paths
    sizes = {e["path"]: e["size"] for e in entries}
    assert sizes["giraffe-5M.bin"] == 5 << 20
    assert sizes["sparse-yak.img"] == 50 << 20
    sub = [json.loads(line)["path"] for line in outputs[3].splitlines()]
    assert sorted(sub) == sorted(
        os.fsdecode(p) for p in before if p == b"d/e" or p.startswith(b"d/e/")
    )
    # an error in --json mode is a JSON line too, and goes with the right exit code
    r = cli("ls", "--repo", str(tmp_path / "missing"), "--json")
    assert r.code == 10
    assert json.loads(r.out.splitlines()[-1])["type"] == "error"


# --- (9) a layer with no changes commits nothing --------------------------------------


def test_a_pass_without_changes_commits_nothing(
    repo: Repository,
    repo_url: str,
    keyring,
    awkward: tuple[Path, dict[str, object]],
    tmp_path: Path,
) -> None:
    src, facts = awkward
    snap0 = snapshot(src)
    backup(repo, src)
    mutate(src, bool(facts["xattrs"]))
    snap1 = snapshot(src)
    backup(repo, src)
    store_before = store_files(repo_url)
    n_layers = len(summarize(reopen(repo_url, keyring.home).refresh()))
    assert n_layers == 2

    result = backup(repo, src)
    assert (result.packs, result.files, result.deleted) == (0, 0, 0)
    assert result.complete
    assert store_files(repo_url) == store_before
    fresh = reopen(repo_url, keyring.home)
    assert len(summarize(fresh.refresh())) == n_layers
    out = tmp_path / "out"
    restore(fresh, out)
    assert_same_tree(snap1, snapshot(out), "latest after a no-change pass")

    # and the clock goes on normally afterwards
    edit(src / "d/other.txt", b"third edit\n", 1_800_000_000_000_000_003)
    snap3 = snapshot(src)
    result = backup(repo, src)
    assert result.layer == 2 and result.packs >= 1 and result.files == 1
    fresh = reopen(repo_url, keyring.home)
    for at, want in ((0, snap0), (1, snap1), (2, snap3), (None, snap3)):
        target = tmp_path / f"out-{at}"
        restore(fresh, target, at_layer=at)
        assert_same_tree(want, snapshot(target), f"restore --at {at}")


# --- (10) excludes --------------------------------------------------------------------


def test_excludes_and_a_path_excluded_later(
    cli, repo_url: str, keyring, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    src = tmp_path / "src"
    for rel, data in {
        "keep.txt": b"keep",
        "x.tmp": b"tmp",
        "sub/y.tmp": b"tmp",
        "sub/keep2": b"keep2",
        "sub/cache/c2": b"cached",
        "cache/c1": b"cached",
        "other/cache": b"a file called cache is not a directory",
        "later/l1": b"excluded later",
        "later/deep/l2": b"excluded later",
        "tmp.d/inside": b"a dir called tmp.d",
    }.items():
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        (src / rel).write_bytes(data)
    set_odd_times(src)
    full = snapshot(src)
    excluded = (b"x.tmp", b"sub/y.tmp", b"sub/cache", b"cache")
    cli("init", "--repo", repo_url, "--key", keyring.fingerprint, check=0)
    ex = ("--exclude", "*.tmp", "--exclude", "cache/")
    cli("backup", "--repo", repo_url, *ex, str(src), check=0)
    out0 = tmp_path / "out0"
    cli("restore", "--repo", repo_url, "--to", str(out0), check=0)
    assert_same_tree(without(full, *excluded), snapshot(out0), "restore with excludes")

    cli("backup", "--repo", repo_url, *ex, "--exclude", "later/", str(src), check=0)
    latest = tmp_path / "latest"
    cli("restore", "--repo", repo_url, "--to", str(latest), check=0)
    assert_same_tree(without(full, *excluded, b"later"), snapshot(latest), "latest")
    at0 = tmp_path / "at0"
    cli("restore", "--repo", repo_url, "--to", str(at0), "--at", "0", check=0)
    assert_same_tree(without(full, *excluded), snapshot(at0), "--at 0")

    # the later exclusion is recorded as a deletion marker in layer 1
    repo = reopen(repo_url, keyring.home)
    repo.refresh()
    markers = [
        e.path for h in repo.headers if h.layer == 1 for e in repo.entries(h.seq) if e.is_deletion
    ]
    assert markers == [b"later"]
    # ls agrees
    ls_now = cli("ls", "--repo", repo_url, "later").code
    assert ls_now == 2
    cli("ls", "--repo", repo_url, "--at", "0", "later", check=0)


# --- paths longer than PATH_MAX, names of NAME_MAX bytes -------------------------------


def test_paths_beyond_path_max_round_trip(
    repo: Repository, repo_url: str, keyring, tmp_path: Path
) -> None:
    src = tmp_path / "src"
    bottom = make_deep_tree(src)
    before = snapshot(src)
    backup(repo, src)
    out = tmp_path / "out"
    restore(reopen(repo_url, keyring.home), out)
    assert_same_tree(before, snapshot(out), "restore of a tree deeper than PATH_MAX")

    # a second layer: edit the deep file, delete a deep directory's subtree
    fd = open_deep(src, bottom)
    try:
        wfd = os.open("bottom-file", os.O_WRONLY | os.O_TRUNC, dir_fd=fd)
        os.write(wfd, b"edited deep down\n")
        os.close(wfd)
        os.utime("bottom-file", ns=(1_700_000_000_000_000_001,) * 2, dir_fd=fd)
    finally:
        os.close(fd)
    middle = bottom.split(b"/")
    fd = open_deep(src, b"/".join(middle[:19]))
    try:
        os.rename(middle[19], b"renamed-" + middle[19][:100], src_dir_fd=fd, dst_dir_fd=fd)
    finally:
        os.close(fd)
    after = snapshot(src)
    backup(repo, src)
    fresh = reopen(repo_url, keyring.home)
    for at, want in ((0, before), (None, after)):
        target = tmp_path / f"out-{at}"
        restore(fresh, target, at_layer=at)
        assert_same_tree(want, snapshot(target), f"deep tree --at {at}")
    # a subtree restore far down
    deep_top = b"/".join(middle[:19])
    target = tmp_path / "deep-subtree"
    restore(fresh, target, [deep_top])
    got = snapshot(target, with_root=False)
    assert sorted(got) == sorted(
        p for p in after if p != b"." and (deep_top.startswith(p + b"/") or p.startswith(deep_top))
    )


# --- interrupted runs -----------------------------------------------------------------


def _resume_tree(src: Path) -> None:
    for i in range(30):
        d = src / f"d{i % 4}"
        d.mkdir(parents=True, exist_ok=True)
        (d / f"f{i:02d}").write_bytes(os.urandom(2048))
    os.link(src / "d0/f00", src / "d3/link-to-f00")
    set_odd_times(src)


def test_interrupted_runs_are_restorable_and_resume(
    repo: Repository, repo_url: str, keyring, tmp_path: Path
) -> None:
    src = tmp_path / "src"
    _resume_tree(src)
    before = snapshot(src)
    runs: list[BackupResult] = []
    while True:
        result = backup(repo, src, pack_size=4096, max_bytes=10 * 1024)
        runs.append(result)
        assert result.packs >= 1, "a run with budget left must commit something"
        if len(runs) == 1:
            # what the first run committed is restorable right away, and correct
            assert result.stopped_early and not result.complete
            out = tmp_path / "first"
            restore(reopen(repo_url, keyring.home), out)
            got = snapshot(out)
            assert 1 < len(got) < len(before)
            pointer = model.clock_key(result.pointer or b".")
            for path, node in got.items():
                assert model.clock_key(path) <= pointer, path
                if node.kind != "dir":  # directories' mtimes come at the end of the pass
                    assert node == before[path], path
        if result.complete:
            break
        assert len(runs) < 20
    assert len(runs) >= 3
    assert {r.layer for r in runs} == {0}

    out = tmp_path / "out"
    restore(reopen(repo_url, keyring.home), out)
    assert_same_tree(before, snapshot(out), "restore after a pass made of interrupted runs")


def test_hard_link_split_by_an_interrupted_run_is_kept(
    repo: Repository, repo_url: str, keyring, tmp_path: Path
) -> None:
    """The first member of a hard-link group is committed by one run, the second is met
    by the next run (which resumes after the pointer): the group must survive."""
    src = tmp_path / "src"
    _resume_tree(src)
    groups = link_groups(src)
    while not backup(repo, src, pack_size=4096, max_bytes=10 * 1024).complete:
        pass
    out = tmp_path / "out"
    restore(reopen(repo_url, keyring.home), out)
    assert link_groups(out) == groups
