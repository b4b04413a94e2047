"""Every command within the open-file limit a user's shell or cron gives, whatever the
size of the repository (DESIGN invariant 7).

One repository is built once, in-process: a first layer of one pack per file (more packs
than the limit the commands then run under) and then more incremental layers than that
limit, each changing, adding and deleting a little. Every command then runs through the
real CLI with ``RLIMIT_NOFILE`` set far below the number of packs and of layers: a
command whose open files grew with either would die with EMFILE. The restores are
compared exactly with the source as it was at that point.
"""

from __future__ import annotations

import os
import resource
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from treeutil import Node, assert_same_tree, link_groups, snapshot, subtree

from blanket.backends import open_backend
from blanket.backup import BackupOptions, run_backup
from blanket.crypto import PUBKEY, KeySpec
from blanket.reach import may_hold, reach_of
from blanket.repo import Repository, init_repository
from blanket.restore.plan import select

LIMIT = 64  # open files each command may have; the repository has more packs and layers
FIRST_FILES = 12 * 8
LAYERS = 72


@dataclass
class Built:
    home: str
    src: Path
    repo: str
    state: Path
    at: dict[int, dict[bytes, Node]]  # a layer -> the source as that layer ended
    links: set[frozenset[bytes]]  # hard-link groups of the final source


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


@pytest.fixture(scope="module")
def built(keyring: object, tmp_path_factory: pytest.TempPathFactory) -> Built:
    home = keyring.home  # type: ignore[attr-defined]
    fpr = keyring.fingerprint  # type: ignore[attr-defined]
    root = tmp_path_factory.mktemp("limits")
    src, url, state = root / "src", str(root / "repo"), root / "state"
    for d in range(12):
        for f in range(8):
            _write(src / f"dir{d:02d}" / f"file{f}.txt", f"dir {d} file {f}\n" * (f + 1))
    os.link(src / "dir03" / "file1.txt", src / "dir07" / "hard-link-to-3-1")
    os.symlink("../dir00/file0.txt", src / "dir05" / "a-symlink")
    old = os.environ.get("BLANKET_STATE_DIR")
    os.environ["BLANKET_STATE_DIR"] = str(state)
    try:
        init_repository(open_backend(url), home, KeySpec(PUBKEY, fpr), now=1)
        repo = Repository.open(open_backend(url), home)
        at: dict[int, dict[bytes, Node]] = {}
        run_backup(repo, str(src), BackupOptions(pack_entries=1, pack_seconds=3600))
        at[0] = snapshot(src)
        for layer in range(1, LAYERS):
            d = layer % 12
            _write(src / f"dir{d:02d}" / f"file{layer % 8}.txt", f"changed in layer {layer}\n")
            _write(src / f"dir{d:02d}" / f"new-{layer}.txt", f"added in layer {layer}\n")
            gone = src / f"dir{(d + 5) % 12:02d}" / f"new-{layer - 7}.txt"
            if gone.exists():
                gone.unlink()
            run_backup(repo, str(src), BackupOptions(pack_seconds=3600))
            if layer in (LAYERS // 2, LAYERS - 1):
                at[layer] = snapshot(src)
        assert len(repo.packs) > FIRST_FILES > LIMIT and len({h.layer for h in repo.packs}) > LIMIT
    finally:
        if old is None:
            del os.environ["BLANKET_STATE_DIR"]
        else:
            os.environ["BLANKET_STATE_DIR"] = old
    return Built(home, src, url, state, at, link_groups(src))


def _limited(limit: int) -> Callable[[], None]:
    def apply() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit))

    return apply


def run(b: Built, *args: str, state: Path | None = None, limit: int = LIMIT) -> str:
    """``blanket ARGS`` under the open-file limit; it must exit 0 with no traceback."""
    env = dict(os.environ, GNUPGHOME=b.home, BLANKET_STATE_DIR=str(state or b.state))
    proc = subprocess.run(
        [sys.executable, "-m", "blanket", *args],
        capture_output=True,
        env=env,
        preexec_fn=_limited(limit),
        timeout=300,
    )
    err = proc.stderr.decode(errors="replace")
    assert proc.returncode == 0, (args, err[-3000:])
    assert "Traceback" not in err, err[-3000:]
    return proc.stdout.decode(errors="replace")


def test_full_restore_of_more_packs_and_layers_than_open_files(
    built: Built, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    run(built, "restore", "--repo", built.repo, "--to", str(out))
    assert_same_tree(built.at[LAYERS - 1], snapshot(out))
    assert link_groups(out) == built.links


def test_restore_as_of_a_layer_and_a_subtree(built: Built, tmp_path: Path) -> None:
    mid = LAYERS // 2
    out = tmp_path / "mid"
    run(built, "restore", "--repo", built.repo, "--to", str(out), "--at", str(mid))
    assert_same_tree(built.at[mid], snapshot(out))
    first = tmp_path / "first"
    run(built, "restore", "--repo", built.repo, "--to", str(first), "--at", "0", "dir07")
    expected = subtree(built.at[0], b"dir07")
    assert_same_tree(expected, subtree(snapshot(first), b"dir07"))


def test_a_mesh_restore_and_sync_within_the_limit(built: Built, tmp_path: Path) -> None:
    replica = str(tmp_path / "replica")
    run(built, "sync", "--from", built.repo, "--to", replica)
    out = tmp_path / "mesh"
    run(built, "restore", "--repo", replica, "--repo", built.repo, "--to", str(out))
    assert_same_tree(built.at[LAYERS - 1], snapshot(out))


def test_looking_around_within_the_limit(built: Built, tmp_path: Path) -> None:
    assert "dir05/a-symlink" in run(built, "ls", "--repo", built.repo)
    assert "dir03/file1.txt" in run(built, "ls", "--repo", built.repo, "--at", "0", "dir03")
    text = run(built, "cat", "--repo", built.repo, "dir00/file0.txt", "--at", "0")
    assert text == "dir 0 file 0\n"
    assert "dir" in run(built, "diff", "--repo", built.repo, "--from", "0", "--to", "40")
    assert str(LAYERS - 1) in run(built, "layers", "--repo", built.repo)
    run(built, "status", "--repo", built.repo)
    tar = tmp_path / "tree.tar"
    env = dict(os.environ, GNUPGHOME=built.home, BLANKET_STATE_DIR=str(built.state))
    with open(tar, "wb") as f:
        proc = subprocess.run(
            [sys.executable, "-m", "blanket", "restore", "--repo", built.repo, "--to", "-"],
            stdout=f,
            stderr=subprocess.PIPE,
            env=env,
            preexec_fn=_limited(LIMIT),
            timeout=300,
        )
    assert proc.returncode == 0, proc.stderr[-2000:]
    listing = subprocess.run(["tar", "-tf", str(tar)], capture_output=True, check=True).stdout
    assert b"dir11/file7.txt" in listing


def test_verify_quick_and_deep_within_the_limit(built: Built) -> None:
    assert "no problems" in run(built, "verify", "--repo", built.repo)
    assert "no problems" in run(built, "verify", "--deep", "--repo", built.repo)


def test_a_new_machine_rebuilds_its_cache_within_the_limit(built: Built, tmp_path: Path) -> None:
    """A lost local state: every index comes from the store again."""
    fresh = tmp_path / "fresh-state"
    out = tmp_path / "out"
    run(built, "restore", "--repo", built.repo, "--to", str(out), state=fresh)
    assert_same_tree(built.at[LAYERS - 1], snapshot(out))


def test_backup_and_gc_within_the_limit(built: Built, tmp_path: Path) -> None:
    """Last in this module: it changes the repository (on a copy)."""
    copy, state = tmp_path / "repo", tmp_path / "state"
    shutil.copytree(built.repo, copy)
    shutil.copytree(built.state, state)
    # the source was recorded by path: the copy backs up the same folder
    run(built, "backup", "--repo", str(copy), str(built.src), state=state)
    run(built, "gc", "--repo", str(copy), "--cap", "10M", "--dry-run", state=state)
    run(built, "gc", "--repo", str(copy), "--cap", "10M", state=state)
    out = tmp_path / "out"
    run(built, "restore", "--repo", str(copy), "--to", str(out), state=state)
    assert_same_tree(built.at[LAYERS - 1], snapshot(out))


def test_running_out_of_open_files_is_one_line_and_exit_1(built: Built, tmp_path: Path) -> None:
    env = dict(os.environ, GNUPGHOME=built.home, BLANKET_STATE_DIR=str(built.state))
    proc = subprocess.run(
        [sys.executable, "-m", "blanket", "restore", "--repo", built.repo, "--to", "x"],
        capture_output=True,
        env=env,
        cwd=tmp_path,
        preexec_fn=_limited(12),
        timeout=300,
    )
    err = proc.stderr.decode(errors="replace")
    assert proc.returncode == 1, err
    assert "Traceback" not in err
    assert "too many open files" in err and "ulimit -n" in err
    assert len(err.strip().splitlines()) == 1, err


def test_a_path_reads_only_the_commits_that_can_hold_it(
    built: Built, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The clock ranges prune the replay without changing what it gives, for subtrees,
    files, deleted and absent paths, at every point; a one-folder request reads a small
    share of the commits."""
    monkeypatch.setenv("BLANKET_STATE_DIR", str(built.state))
    repo = Repository.open(open_backend(built.repo), built.home)
    repo.refresh()
    tops = [b"dir03", b"dir07/hard-link-to-3-1", b"dir05/a-symlink", b"dir11/file7.txt"]
    tops += [b"dir02/new-2.txt", b"dir09/new-21.txt", b"no-such", b"dir00", b"dir1"]
    for layer in (None, 0, LAYERS // 2):
        for top in tops:
            full = [i.entry for i in select(repo.tree(layer=layer), [top])]
            pruned = [i.entry for i in select(repo.tree(layer=layer, within=[top]), [top])]
            assert pruned == full, (layer, top)
    reach = reach_of([b"dir04/file2.txt"])
    read = [h for h in repo.packs if may_hold(h, reach)]
    layer0 = [h for h in repo.packs if h.layer == 0]
    # layer 0 has a pack per entry: the file's own and its two ancestors' (the root and
    # dir04), each with the next pack, which starts where it ends (both ends count)
    assert len([h for h in read if h.layer == 0]) <= 6 < len(layer0)
