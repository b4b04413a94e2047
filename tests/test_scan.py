"""Metadata scanning on real files: kinds, modes, owners, times, xattrs, sparse files."""

from __future__ import annotations

import errno
import os
import socket
import stat
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from blanket import model
from blanket.scan import data_segments, entry_for, group_name, open_for_read, user_name
from blanket.walker import WalkItem, walk

MiB = 1024 * 1024
SINCE = 1_700_000_000_123_456_789


def scan_tree(root: bytes) -> dict[bytes, model.Entry]:
    out: dict[bytes, model.Entry] = {}
    for item in walk(root, on_error=lambda p, e: pytest.fail(f"{p!r}: {e}")):
        entry = entry_for(root, item, since=SINCE)
        assert entry is not None
        out[item.path] = entry
    return out


def scan_one(root: bytes, path: bytes) -> model.Entry | None:
    full = root if path == b"." else root + b"/" + path
    return entry_for(root, WalkItem(path, os.lstat(full)), since=SINCE)


def test_regular_file(tmp_path: Path) -> None:
    root = os.fsencode(tmp_path)
    f = tmp_path / "file"
    f.write_bytes(b"hello")
    os.chmod(f, 0o640)
    mtime = 1_234_567_890_123_456_789
    os.utime(f, ns=(1_000_000_000_000_000_001, mtime))
    st = os.lstat(f)
    e = scan_one(root, b"file")
    assert e == model.Entry(
        kind=model.FILE,
        path=b"file",
        mode=0o640,
        uid=0,
        gid=0,
        user=b"root",
        group=b"root",
        mtime_ns=mtime,
        ctime_ns=st.st_ctime_ns,
        ino=st.st_ino,
        size=5,
        since=SINCE,
    )


def test_root_and_directory(tmp_path: Path) -> None:
    root = os.fsencode(tmp_path)
    os.mkdir(tmp_path / "d", 0o750)
    os.chmod(tmp_path / "d", 0o750)
    entries = scan_tree(root)
    assert entries[b"."].kind == model.DIR
    assert entries[b"d"].kind == model.DIR
    assert entries[b"d"].mode == 0o750
    assert entries[b"d"].size == 0


def test_special_mode_bits(tmp_path: Path) -> None:
    root = os.fsencode(tmp_path)
    for name, mode in (("suid", 0o4755), ("sgid", 0o2711), ("both", 0o6700)):
        (tmp_path / name).write_text("x")
        os.chmod(tmp_path / name, mode)
    os.mkdir(tmp_path / "sticky")
    os.chmod(tmp_path / "sticky", 0o1777)
    entries = scan_tree(root)
    assert entries[b"suid"].mode == 0o4755
    assert entries[b"sgid"].mode == 0o2711
    assert entries[b"both"].mode == 0o6700
    assert entries[b"sticky"].mode == 0o1777


def test_owner_ids_and_names(tmp_path: Path) -> None:
    root = os.fsencode(tmp_path)
    (tmp_path / "mine").write_text("x")
    (tmp_path / "nobody-known").write_text("x")
    os.chown(tmp_path / "nobody-known", 54321, 54322)
    entries = scan_tree(root)
    assert (entries[b"mine"].user, entries[b"mine"].group) == (b"root", b"root")
    odd = entries[b"nobody-known"]
    assert (odd.uid, odd.gid, odd.user, odd.group) == (54321, 54322, b"", b"")
    assert user_name(0) == b"root" and group_name(0) == b"root"


def test_symlinks(tmp_path: Path) -> None:
    root = os.fsencode(tmp_path)
    os.mkdir(tmp_path / "dir")
    (tmp_path / "file").write_text("x")
    os.symlink(b"file", root + b"/to_file")
    os.symlink(b"dir", root + b"/to_dir")
    os.symlink(b"no/such\xff", root + b"/dangling")
    os.symlink(b"loop", root + b"/loop")
    entries = scan_tree(root)
    for name, target in (
        (b"to_file", b"file"),
        (b"to_dir", b"dir"),
        (b"dangling", b"no/such\xff"),
        (b"loop", b"loop"),
    ):
        assert entries[name].kind == model.SYMLINK
        assert entries[name].target == target
        assert entries[name].size == 0
    assert entries[b"file"].target == b""


def test_hard_links_are_two_plain_entries(tmp_path: Path) -> None:
    root = os.fsencode(tmp_path)
    (tmp_path / "one").write_text("shared")
    os.link(tmp_path / "one", tmp_path / "two")
    entries = scan_tree(root)
    assert entries[b"one"].kind == entries[b"two"].kind == model.FILE
    assert entries[b"one"].ino == entries[b"two"].ino
    assert entries[b"two"].target == b"" and entries[b"two"].sha256 == ""


def test_fifo_and_devices(tmp_path: Path) -> None:
    root = os.fsencode(tmp_path)
    os.mkfifo(tmp_path / "fifo", 0o600)
    os.mknod(tmp_path / "null", stat.S_IFCHR | 0o666, os.makedev(1, 3))
    try:
        os.mknod(tmp_path / "loop7", stat.S_IFBLK | 0o660, os.makedev(7, 300))
    except PermissionError:
        pytest.skip("mknod of a block device not permitted here")
    entries = scan_tree(root)
    assert entries[b"fifo"].kind == model.FIFO
    assert entries[b"fifo"].mode == 0o600
    assert (entries[b"fifo"].rdev_major, entries[b"fifo"].rdev_minor) == (0, 0)
    null = entries[b"null"]
    assert (null.kind, null.rdev_major, null.rdev_minor, null.size) == (model.CHARDEV, 1, 3, 0)
    loop = entries[b"loop7"]
    assert (loop.kind, loop.rdev_major, loop.rdev_minor) == (model.BLOCKDEV, 7, 300)


def test_socket_gives_no_entry() -> None:
    short = tempfile.mkdtemp(dir="/tmp")
    try:
        sock = socket.socket(socket.AF_UNIX)
        sock.bind(os.path.join(short, "s"))
        try:
            assert scan_one(os.fsencode(short), b"s") is None
        finally:
            sock.close()
    finally:
        os.unlink(os.path.join(short, "s"))
        os.rmdir(short)


def set_xattr_or_skip(path: Path | bytes, name: bytes, value: bytes) -> None:
    try:
        os.setxattr(path, name, value, follow_symlinks=False)
    except OSError as exc:
        if exc.errno in (errno.ENOTSUP, errno.EOPNOTSUPP):
            pytest.skip("the filesystem of tmp_path does not support user xattrs")
        raise


def test_xattrs_sorted_and_binary(tmp_path: Path) -> None:
    root = os.fsencode(tmp_path)
    f = tmp_path / "f"
    f.write_text("x")
    set_xattr_or_skip(f, b"user.zeta", b"\x00\xff binary")
    set_xattr_or_skip(f, b"user.alpha", b"")
    os.mkdir(tmp_path / "d")
    set_xattr_or_skip(tmp_path / "d", b"user.on_dir", b"v")
    os.symlink("f", tmp_path / "link")
    entries = scan_tree(root)
    assert entries[b"f"].xattrs == ((b"user.alpha", b""), (b"user.zeta", b"\x00\xff binary"))
    assert entries[b"d"].xattrs == ((b"user.on_dir", b"v"),)
    assert entries[b"link"].xattrs == ()  # the target's xattrs are not the link's


def test_sparse_file_segments(tmp_path: Path) -> None:
    root = os.fsencode(tmp_path)
    path = tmp_path / "sparse"
    with open(path, "wb") as f:
        f.truncate(64 * MiB)
        f.seek(1 * MiB)
        f.write(b"z" * 4096)
    st = os.lstat(path)
    if st.st_blocks * 512 >= st.st_size:
        pytest.skip("the filesystem of tmp_path does not make sparse files")
    e = scan_one(root, b"sparse")
    assert e is not None and e.size == 64 * MiB
    assert 1 <= len(e.sparse) <= 2
    start, length = e.sparse[0]
    assert start <= 1 * MiB and start + length >= 1 * MiB + 4096
    assert sum(length for _, length in e.sparse) <= 256 * 1024
    assert all(off >= 0 and off + n <= e.size for off, n in e.sparse)


def test_sparse_file_with_data_at_both_ends(tmp_path: Path) -> None:
    path = tmp_path / "ends"
    with open(path, "wb") as f:
        f.write(b"a" * 4096)
        f.seek(32 * MiB - 4096)
        f.write(b"b" * 4096)
    e = scan_one(os.fsencode(tmp_path), b"ends")
    assert e is not None
    assert len(e.sparse) == 2
    assert e.sparse[0][0] == 0
    assert e.sparse[-1][0] + e.sparse[-1][1] == 32 * MiB


def test_fully_sparse_file_gets_the_sentinel(tmp_path: Path) -> None:
    path = tmp_path / "holes"
    with open(path, "wb") as f:
        f.truncate(8 * MiB)
    e = scan_one(os.fsencode(tmp_path), b"holes")
    assert e is not None
    assert e.sparse == ((8 * MiB, 0),)
    fd = os.open(path, os.O_RDONLY)
    try:
        assert data_segments(fd, 8 * MiB) == []
    finally:
        os.close(fd)


def test_dense_file_is_not_sparse(tmp_path: Path) -> None:
    path = tmp_path / "dense"
    path.write_bytes(os.urandom(3 * 4096 + 17))
    e = scan_one(os.fsencode(tmp_path), b"dense")
    assert e is not None and e.sparse == ()
    fd = os.open(path, os.O_RDONLY)
    try:
        assert data_segments(fd, e.size) == [(0, e.size)]
        assert data_segments(fd, 0) == []
    finally:
        os.close(fd)


def test_empty_file(tmp_path: Path) -> None:
    (tmp_path / "empty").write_bytes(b"")
    e = scan_one(os.fsencode(tmp_path), b"empty")
    assert e is not None and (e.size, e.sparse) == (0, ())


def test_vanished_path_raises(tmp_path: Path) -> None:
    os.symlink("x", tmp_path / "link")
    item = WalkItem(b"link", os.lstat(tmp_path / "link"))
    os.unlink(tmp_path / "link")
    with pytest.raises(FileNotFoundError):
        entry_for(os.fsencode(tmp_path), item, since=SINCE)


def test_open_for_read(tmp_path: Path) -> None:
    root = os.fsencode(tmp_path)
    (tmp_path / "f").write_bytes(b"content")
    fd = open_for_read(root, b"f")
    try:
        assert os.read(fd, 100) == b"content"
        assert os.get_blocking(fd)
    finally:
        os.close(fd)


def test_open_for_read_refuses_symlink_and_fifo(tmp_path: Path) -> None:
    root = os.fsencode(tmp_path)
    (tmp_path / "f").write_bytes(b"content")
    os.symlink("f", tmp_path / "link")
    os.mkfifo(tmp_path / "fifo")  # opening it for reading must not block
    with pytest.raises(OSError) as info:
        open_for_read(root, b"link")
    assert info.value.errno == errno.ELOOP
    with pytest.raises(OSError) as info:
        open_for_read(root, b"fifo")
    assert info.value.errno == errno.EINVAL


@pytest.fixture
def deep_root(tmp_path: Path) -> Iterator[bytes]:
    """A directory for trees deeper than shutil.rmtree (and so pytest's cleanup) can remove."""
    root = tmp_path / "deep"
    root.mkdir()
    yield os.fsencode(root)
    subprocess.run(["rm", "-rf", "--", root], check=True)


def test_paths_beyond_path_max(deep_root: bytes) -> None:
    root = deep_root
    depth = 2100
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    for _ in range(depth):
        os.mkdir(b"d", dir_fd=fd)
        next_fd = os.open(b"d", os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
        os.close(fd)
        fd = next_fd
    os.symlink(b"far", b"link", dir_fd=fd)
    file_fd = os.open(b"f", os.O_WRONLY | os.O_CREAT, 0o600, dir_fd=fd)
    os.write(file_fd, b"deep")
    os.close(file_fd)
    os.close(fd)
    deep = b"/".join([b"d"] * depth)
    assert len(root + b"/" + deep) > 4096
    items = {i.path: i for i in walk(root, after=deep, on_error=lambda p, e: pytest.fail(str(e)))}
    link = entry_for(root, items[deep + b"/link"], since=SINCE)
    assert link is not None and (link.kind, link.target) == (model.SYMLINK, b"far")
    f = entry_for(root, items[deep + b"/f"], since=SINCE)
    assert f is not None and (f.kind, f.size, f.mode) == (model.FILE, 4, 0o600)
    read_fd = open_for_read(root, deep + b"/f")
    try:
        assert os.read(read_fd, 10) == b"deep"
    finally:
        os.close(read_fd)
