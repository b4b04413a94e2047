"""``blanket mount``: real FUSE (libfuse 3 through mfusepy), real gpg, real stores.

Every test mounts for real with the ``blanket`` command in a process of its own
(tests/mountutil.py) and compares what ordinary tools see through the mount with what
``restore`` writes for the same point. Data is small: the awkward tree
(tests/treeutil.py) and a few folders of random bytes. The trouble cases (damaged packs,
a store that goes away, a mesh, gc) are in test_mount_trouble.py.
"""

from __future__ import annotations

import errno
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from mountutil import (
    WAIT,
    Mounts,
    assert_same,
    backup,
    folders,
    mounted,
    needs_fuse,
    new_repo,
    read,
    restored,
)
from treeutil import link_groups, snapshot

from blanket.backends import open_backend
from blanket.repo import Repository
from blanket.units import parse_at

pytest_plugins = ["mountfixtures"]
pytestmark = needs_fuse


# --- every point is what restore gives ------------------------------------------------


def test_every_point_equals_restore_of_it(
    history: tuple[str, Path], keyring, mounts: Mounts, tmp_path: Path
) -> None:
    url, _ = history
    repo = Repository.open(open_backend(url), keyring.home)
    repo.refresh()
    layers = sorted({h.layer for h in repo.packs})
    assert layers == [0, 1, 2] and not repo.packs[-1].complete
    m = mounts(tmp_path / "mnt", url)
    top = m.point
    assert sorted(os.listdir(top)) == ["at", "latest", "layers"]
    assert sorted(os.listdir(top / "layers")) == ["0", "1", "2"]
    times = sorted(os.listdir(top / "at"))
    assert len(times) == len({h.created for h in repo.packs})
    for layer in layers:
        assert_same(
            restored([repo], tmp_path / f"r{layer}", at_layer=layer), top / f"layers/{layer}"
        )
    assert_same(restored([repo], tmp_path / "latest"), top / "latest")
    for name in (times[0], times[len(times) // 2], times[-1]):  # points inside layers
        at_time = parse_at(name)[1]
        assert_same(restored([repo], tmp_path / f"at-{name}", at_time=at_time), top / "at" / name)
    # the partial layer is part of latest, and an old version is still there
    assert (top / "latest/new-top").read_bytes() == b"changed in the partial layer\n"
    assert not (top / "latest/giraffe-5M.bin").exists()
    assert (top / "layers/1/giraffe-5M.bin").stat().st_size == 5 << 20
    assert m.stop() == 0
    assert not mounted(m.point)


def test_cp_a_out_of_the_mount_equals_restore(
    history: tuple[str, Path], keyring, mounts: Mounts, tmp_path: Path
) -> None:
    url, _ = history
    repo = Repository.open(open_backend(url), keyring.home)
    m = mounts(tmp_path / "mnt", url, extra=("--cache-size", "256K"))  # evicts as it goes
    expected = restored([repo], tmp_path / "r1", at_layer=1)
    copied = tmp_path / "copied"
    subprocess.run(["cp", "-a", f"{m.point}/layers/1/.", str(copied)], check=True, timeout=WAIT)
    # the cache keeps to its bound, give or take the frame just fetched (packs are 1 MiB)
    cached = sum(p.stat().st_size for p in (tmp_path / "state").glob("*/mount/*/*.tar"))
    assert 0 < cached <= (256 << 10) + (1100 << 10)
    assert snapshot(copied) == snapshot(expected)
    assert link_groups(copied) == link_groups(expected)
    if shutil.which("rsync"):
        synced = tmp_path / "synced"
        subprocess.run(
            ["rsync", "-aHAX", f"{m.point}/layers/1/", str(synced)], check=True, timeout=WAIT
        )
        assert snapshot(synced) == snapshot(expected)
    assert m.stop(signal.SIGINT) == 0
    summary = m.summary()
    assert summary["bytes_fetched"] > 0


def test_listing_reads_no_pack(history: tuple[str, Path], mounts: Mounts, tmp_path: Path) -> None:
    """find, ls -l and xattrs of every point come from the indexes: nothing is fetched."""
    url, _ = history
    m = mounts(tmp_path / "mnt", url)
    for args in (["find", str(m.point)], ["ls", "-lRa", str(m.point)]):
        subprocess.run(args, check=True, capture_output=True, timeout=WAIT)
    assert os.readlink(m.point / "layers/0/links/relative")
    points = 1 + len(os.listdir(m.point / "layers")) + len(os.listdir(m.point / "at"))
    assert m.stop() == 0
    summary = m.summary()
    assert summary["bytes_fetched"] == 0 and summary["frames_fetched"] == 0
    assert summary["points_built"] == points


def test_listing_the_points_builds_no_tree(
    history: tuple[str, Path], mounts: Mounts, tmp_path: Path
) -> None:
    """ls -l of layers/ and at/ (stat and xattrs of every point) replays no whole tree:
    a repository has one at/ folder per commit."""
    url, _ = history
    m = mounts(tmp_path / "mnt", url)
    for folder in ("", "layers", "at"):
        subprocess.run(["ls", "-la", str(m.point / folder)], check=True, capture_output=True)
        for name in os.listdir(m.point / folder):
            os.listxattr(m.point / folder / name)
    assert m.stop() == 0
    assert m.summary()["points_built"] == 0


# --- reading only what is needed ----------------------------------------------------


def test_a_read_fetches_only_its_frame(keyring, mounts: Mounts, tmp_path: Path) -> None:
    url = str(tmp_path / "repo")
    repo = new_repo(url, keyring)
    src = tmp_path / "src"
    folders(src)
    backup(repo, src)
    repo.refresh()
    (pack,) = repo.packs
    assert len(pack.frames) >= 12
    m = mounts(tmp_path / "mnt", url)
    code, data, _ = read(m.point / "latest/folder07/file2")
    assert code == 0 and data == (src / "folder07/file2").read_bytes()
    assert m.stop() == 0
    fetched = m.summary()["bytes_fetched"]
    assert isinstance(fetched, int) and 0 < fetched < pack.data_size // 4


# --- the process ends: signals, SIGKILL, remount --------------------------------------


def test_past_layer_read_then_sigkill_and_remount(
    history: tuple[str, Path], mounts: Mounts, env: dict[str, str], tmp_path: Path
) -> None:
    url, _ = history
    point = tmp_path / "mnt"
    m = mounts(point, url)
    code, old, _ = read(point / "layers/0/d/other.txt")
    assert code == 0 and old != b"other, edited and longer\n"
    m.proc.kill()
    m.proc.communicate(timeout=WAIT)
    with pytest.raises(OSError) as dead:
        os.stat(point / "latest")
    assert dead.value.errno == errno.ENOTCONN
    again = subprocess.run(
        [sys.executable, "-m", "blanket", "mount", "--repo", url, str(point)],
        env=env,
        capture_output=True,
        text=True,
        timeout=WAIT,
    )
    assert again.returncode == 2
    assert again.stderr.count("\n") == 1 and "fusermount3 -u" in again.stderr
    subprocess.run(["fusermount3", "-u", str(point)], check=True)
    m2 = mounts(point, url)
    code, data, _ = read(point / "layers/0/d/other.txt")
    assert code == 0 and data == old
    assert (point / "layers/1/d/other.txt").read_bytes() == b"other, edited and longer\n"
    assert m2.stop() == 0


@pytest.mark.parametrize("why", ["missing", "not-empty", "a-file"])
def test_bad_mount_point_is_one_line_exit_2(
    history: tuple[str, Path], env: dict[str, str], tmp_path: Path, why: str
) -> None:
    url, _ = history
    point = tmp_path / "point"
    if why == "not-empty":
        point.mkdir()
        (point / "x").write_text("x")
    elif why == "a-file":
        point.write_text("x")
    proc = subprocess.run(
        [sys.executable, "-m", "blanket", "mount", "--repo", url, str(point)],
        env=env,
        capture_output=True,
        text=True,
        timeout=WAIT,
    )
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and str(point) in proc.stderr
    assert not mounted(point)


def test_profile_names_the_repository_and_keyring(
    history: tuple[str, Path], keyring, mounts: Mounts, tmp_path: Path
) -> None:
    url, src = history
    config = tmp_path / "config.toml"
    config.write_text(
        f'[profiles.home]\nsource = "{src}"\nrepository = "{url}"\ngnupghome = "{keyring.home}"\n'
    )
    mounts.env.pop("GNUPGHOME")
    m = mounts(tmp_path / "mnt", extra=("--config", str(config), "--profile", "home"))
    assert (m.point / "latest/new-top").read_bytes() == b"changed in the partial layer\n"
    assert m.stop() == 0
