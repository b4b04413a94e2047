"""The file clock walk on real trees: order, resume without rescan, kinds, errors, depth."""

from __future__ import annotations

import errno
import os
import socket
import stat
import subprocess
import tempfile
from collections.abc import Callable, Generator, Iterator
from pathlib import Path
from typing import Any, cast

import pytest

from blanket.model import clock_key, is_within
from blanket.walker import WalkItem, walk

Errors = list[tuple[bytes, OSError]]


def run(root: str | bytes, **kwargs: Any) -> tuple[list[WalkItem], Errors]:
    errors: Errors = []
    items = list(walk(root, on_error=lambda p, e: errors.append((p, e)), **kwargs))
    return items, errors


def paths(root: str | bytes, **kwargs: Any) -> list[bytes]:
    items, errors = run(root, **kwargs)
    assert errors == []
    return [item.path for item in items]


def fd_path(fd: int) -> bytes:
    return os.readlink(b"/proc/self/fd/%d" % fd)


def rel(root: bytes, absolute: bytes) -> bytes:
    return b"." if absolute == root else absolute[len(root) + 1 :]


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


# --- clock order --------------------------------------------------------------------

ODD = b"back\\slash and space"
ORDERED = [
    b".",
    b"B",
    b"_",
    b"a",
    b"a/b",
    b"a/b/c",
    b"a-b",
    b"a.b",
    ODD,
    b"x\ny",
    b"\xff\xfe",
]


@pytest.fixture
def tree(tmp_path: Path) -> bytes:
    root = os.fsencode(tmp_path)
    os.makedirs(root + b"/a/b")
    for name in (b"a/b/c", b"a-b", b"a.b", b"B", b"_", b"\xff\xfe", b"x\ny", ODD):
        with open(root + b"/" + name, "wb") as f:
            f.write(name)
    return root


def test_clock_order_exact(tree: bytes) -> None:
    got = paths(tree)
    assert got == ORDERED
    assert got == sorted(got, key=clock_key)
    assert got.index(b"a/b") < got.index(b"a-b") < got.index(b"a.b")


def test_items_carry_lstat(tree: bytes) -> None:
    items, _ = run(tree)
    by_path = {item.path: item for item in items}
    assert stat.S_ISDIR(by_path[b"."].st.st_mode)
    assert stat.S_ISDIR(by_path[b"a/b"].st.st_mode)
    assert by_path[b"x\ny"].st.st_size == len(b"x\ny")
    assert by_path[b"a/b/c"].st.st_ino == os.lstat(tree + b"/a/b/c").st_ino
    assert not any(item.listing_failed for item in items)


def test_str_root_accepted(tree: bytes) -> None:
    assert paths(os.fsdecode(tree)) == ORDERED


def test_missing_root_raises(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        paths(os.fsencode(tmp_path / "nope"))


# --- resume -------------------------------------------------------------------------


@pytest.mark.parametrize("index", range(len(ORDERED)))
def test_resume_after_every_existing_path(tree: bytes, index: int) -> None:
    assert paths(tree, after=ORDERED[index]) == ORDERED[index + 1 :]


def test_resume_after_directory_yields_its_children_next(tree: bytes) -> None:
    assert paths(tree, after=b"a")[:3] == [b"a/b", b"a/b/c", b"a-b"]


def test_resume_deep_inside(tree: bytes) -> None:
    assert paths(tree, after=b"a/b/c") == ORDERED[ORDERED.index(b"a-b") :]


def test_resume_after_last_path_yields_nothing(tree: bytes) -> None:
    assert paths(tree, after=b"\xff\xfe") == []


@pytest.mark.parametrize(
    ("after", "first"),
    [
        (b"a/b/bb", b"a/b/c"),  # gone, inside a directory that still exists
        (b"a/b/d", b"a-b"),
        (b"a0", ODD),  # gone top-level name between a.b and the next
        (b"a/gone/deeper/still", b"a-b"),  # gone directory chain
        (b"A", b"B"),
        (b"zz/q/r", b"\xff\xfe"),
        (b"\xff\xff", None),
    ],
)
def test_resume_after_path_that_no_longer_exists(
    tree: bytes, after: bytes, first: bytes | None
) -> None:
    got = paths(tree, after=after)
    assert got == [p for p in ORDERED if clock_key(p) > clock_key(after)]
    assert (got[0] if got else None) == first


def test_resume_after_file_turned_into_directory(tree: bytes) -> None:
    os.unlink(tree + b"/a.b")
    os.makedirs(tree + b"/a.b/inner")
    # a.b itself was committed; what now lies below it was not.
    assert paths(tree, after=b"a.b")[:2] == [b"a.b/inner", ODD]


def test_resume_does_not_rescan_before_the_pointer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = os.fsencode(tmp_path)
    for d in (b"early/sub", b"mid/early2", b"mid/ptr.d", b"mid/z", b"zlate/in"):
        os.makedirs(root + b"/" + d)
    for f in (b"early/f", b"early/sub/f", b"mid/a", b"mid/early2/f", b"mid/ptr", b"zlate/in/f"):
        Path(os.fsdecode(root + b"/" + f)).write_bytes(b"x")
    after = b"mid/ptr"

    scanned: list[bytes] = []
    statted: list[bytes] = []
    real_scandir, real_lstat = os.scandir, os.lstat

    def scandir(path: Any) -> Any:
        scanned.append(rel(root, fd_path(path)) if isinstance(path, int) else path)
        return real_scandir(path)

    def lstat(path: Any, *, dir_fd: int | None = None) -> os.stat_result:
        if dir_fd is not None:
            parent = rel(root, fd_path(dir_fd))
            statted.append(path if parent == b"." else parent + b"/" + path)
        return real_lstat(path, dir_fd=dir_fd)

    monkeypatch.setattr(os, "scandir", scandir)
    monkeypatch.setattr(os, "lstat", lstat)
    got = paths(root, after=after)
    monkeypatch.undo()

    assert got == [b"mid/ptr.d", b"mid/z", b"zlate", b"zlate/in", b"zlate/in/f"]

    def allowed(p: bytes) -> bool:
        return p == b"." or is_within(after, p) or clock_key(p) > clock_key(after)

    assert scanned and statted
    assert [p for p in scanned if not allowed(p)] == []
    assert [p for p in statted if not allowed(p)] == []
    assert b"early" not in statted and b"mid/a" not in statted
    assert b"mid" in scanned  # the ancestors are listed, nothing else before


def test_rejects_unclean_after(tree: bytes) -> None:
    with pytest.raises(ValueError):
        paths(tree, after=b"a/../b")


# --- kinds --------------------------------------------------------------------------


def test_symlinks_are_not_followed(tmp_path: Path) -> None:
    root = os.fsencode(tmp_path)
    os.makedirs(root + b"/dir/inner")
    Path(tmp_path / "file").write_text("x")
    os.symlink(b"dir", root + b"/to_dir")
    os.symlink(b"file", root + b"/to_file")
    os.symlink(b"nowhere", root + b"/dangling")
    os.symlink(b"loop", root + b"/loop")
    items, errors = run(root)
    assert errors == []
    by_path = {item.path: item for item in items}
    assert sorted(by_path) == sorted(
        [b".", b"dir", b"dir/inner", b"file", b"to_dir", b"to_file", b"dangling", b"loop"]
    )
    for name in (b"to_dir", b"to_file", b"dangling", b"loop"):
        assert stat.S_ISLNK(by_path[name].st.st_mode), name


def test_root_given_as_symlink_is_resolved(tmp_path: Path) -> None:
    os.makedirs(tmp_path / "real" / "x")
    os.symlink("real", tmp_path / "link")
    assert paths(os.fsencode(tmp_path / "link")) == [b".", b"x"]


def test_hard_links_fifo_device_and_socket(tmp_path: Path) -> None:
    short = tempfile.mkdtemp(dir="/tmp")  # AF_UNIX paths must stay short
    root = os.fsencode(short)
    try:
        Path(short, "h1").write_text("data")
        os.link(root + b"/h1", root + b"/h2")
        os.mkfifo(root + b"/fifo")
        os.mknod(root + b"/null", stat.S_IFCHR | 0o600, os.makedev(1, 3))
        sock = socket.socket(socket.AF_UNIX)
        sock.bind(os.path.join(short, "sock"))
        items, errors = run(root)
        sock.close()
    finally:
        for name in os.listdir(short):
            os.unlink(os.path.join(short, name))
        os.rmdir(short)
    assert errors == []
    by_path = {item.path: item for item in items}
    assert list(by_path) == [b".", b"fifo", b"h1", b"h2", b"null"]
    assert by_path[b"h1"].st.st_ino == by_path[b"h2"].st.st_ino
    assert stat.S_ISFIFO(by_path[b"fifo"].st.st_mode)
    assert stat.S_ISCHR(by_path[b"null"].st.st_mode)


# --- errors -------------------------------------------------------------------------


def refuse_listing(monkeypatch: pytest.MonkeyPatch, target: bytes) -> None:
    real = os.scandir

    def scandir(path: Any) -> Any:
        if isinstance(path, int) and fd_path(path) == target:
            raise PermissionError(errno.EACCES, "Permission denied")
        return real(path)

    monkeypatch.setattr(os, "scandir", scandir)


def unlistable_tree(root: bytes) -> None:
    for d in (b"a", b"b/deep"):
        os.makedirs(root + b"/" + d)
    for f in (b"a/x", b"b/y", b"c"):
        Path(os.fsdecode(root + b"/" + f)).write_text("x")


def test_unlistable_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = os.fsencode(tmp_path)
    unlistable_tree(root)
    refuse_listing(monkeypatch, root + b"/b")
    items, errors = run(root)
    assert [(i.path, i.listing_failed) for i in items] == [
        (b".", False),
        (b"a", False),
        (b"a/x", False),
        (b"b", True),
        (b"c", False),
    ]
    assert [(p, type(e)) for p, e in errors] == [(b"b", PermissionError)]


def test_unlistable_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = os.fsencode(tmp_path)
    unlistable_tree(root)
    refuse_listing(monkeypatch, root)
    items, errors = run(root)
    assert [(i.path, i.listing_failed) for i in items] == [(b".", True)]
    assert [p for p, _ in errors] == [b"."]


def test_unlistable_ancestor_of_pointer_is_reported_not_yielded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = os.fsencode(tmp_path)
    unlistable_tree(root)
    refuse_listing(monkeypatch, root + b"/b")
    items, errors = run(root, after=b"b/deep")
    assert [i.path for i in items] == [b"c"]
    assert [p for p, _ in errors] == [b"b"]


def test_lstat_failure_is_reported_and_skipped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = os.fsencode(tmp_path)
    unlistable_tree(root)
    real = os.lstat

    def lstat(path: Any, *, dir_fd: int | None = None) -> os.stat_result:
        if path == b"a":
            raise OSError(errno.EIO, "Input/output error")
        return real(path, dir_fd=dir_fd)

    monkeypatch.setattr(os, "lstat", lstat)
    items, errors = run(root)
    assert [i.path for i in items] == [b".", b"b", b"b/deep", b"b/y", b"c"]
    assert [(p, e.errno) for p, e in errors] == [(b"a", errno.EIO)]


def test_name_vanishing_after_listing_is_skipped_silently(tmp_path: Path) -> None:
    root = os.fsencode(tmp_path)
    unlistable_tree(root)
    errors: Errors = []
    it = walk(root, on_error=lambda p, e: errors.append((p, e)))
    assert next(it).path == b"."  # the root is listed before it is yielded
    os.unlink(root + b"/c")
    os.unlink(root + b"/b/y")
    os.rmdir(root + b"/b/deep")
    os.rmdir(root + b"/b")
    assert [i.path for i in it] == [b"a", b"a/x"]
    assert errors == []


# --- depth and descriptors ----------------------------------------------------------


def make_chain(root: bytes, depth: int) -> None:
    """``d/d/.../d`` ``depth`` deep with a file ``f`` at the bottom, via descriptors."""
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for _ in range(depth):
            os.mkdir(b"d", dir_fd=fd)
            next_fd = os.open(b"d", os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = next_fd
        file_fd = os.open(b"f", os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fd)
        os.write(file_fd, b"bottom")
        os.close(file_fd)
    finally:
        os.close(fd)


def chain_path(depth: int) -> bytes:
    return b"/".join([b"d"] * depth)


@pytest.fixture
def deep_root(tmp_path: Path) -> Iterator[bytes]:
    """A directory for trees deeper than shutil.rmtree (and so pytest's cleanup) can remove."""
    root = tmp_path / "deep"
    root.mkdir()
    yield os.fsencode(root)
    subprocess.run(["rm", "-rf", "--", root], check=True)


def test_deep_tree_beyond_path_max(deep_root: bytes) -> None:
    root = deep_root
    depth = 2100
    make_chain(root, depth)
    before = open_fds()
    got = paths(root)
    assert len(got) == depth + 2
    assert got[-1] == chain_path(depth) + b"/f"
    assert len(root + b"/" + got[-1]) > 4096
    assert got == sorted(got, key=clock_key)
    assert open_fds() == before
    assert paths(root, after=chain_path(1500)) == got[1501:]


def walk_until(it: Iterator[WalkItem], stop: Callable[[WalkItem], bool]) -> list[bytes]:
    seen = []
    for item in it:
        seen.append(item.path)
        if stop(item):
            break
    return seen


def test_directory_moved_during_deep_walk(tmp_path: Path) -> None:
    root = os.fsencode(tmp_path)
    make_chain(root, 200)
    before = open_fds()
    errors: Errors = []
    it = walk(root, on_error=lambda p, e: errors.append((p, e)))
    seen = walk_until(it, lambda item: item.path.endswith(b"/f"))
    # Move d51 out of d50 while the walk is below it: d50's descriptor was dropped and
    # can no longer be found through d51's "..", so it is reopened by name.
    os.rename(root + b"/" + chain_path(51), root + b"/moved")
    seen += [i.path for i in it]
    assert errors == []
    assert seen == [b"."] + [chain_path(n) for n in range(1, 201)] + [chain_path(200) + b"/f"]
    assert open_fds() == before


def test_directory_gone_during_deep_walk_is_reported(tmp_path: Path) -> None:
    root = os.fsencode(tmp_path)
    make_chain(root, 200)
    before = open_fds()
    errors: Errors = []
    it = walk(root, on_error=lambda p, e: errors.append((p, e)))
    walk_until(it, lambda item: item.path.endswith(b"/f"))
    os.rename(root + b"/" + chain_path(51), root + b"/moved")
    os.rename(root + b"/" + chain_path(50), root + b"/moved2")
    list(it)
    assert [(p, e.errno) for p, e in errors] == [(chain_path(50), errno.ENOENT)]
    assert open_fds() == before


def test_abandoned_walk_closes_descriptors(tmp_path: Path) -> None:
    root = os.fsencode(tmp_path)
    make_chain(root, 100)
    before = open_fds()
    it = cast(Generator[WalkItem, None, None], walk(root, on_error=lambda p, e: None))
    walk_until(it, lambda item: item.path.count(b"/") == 80)
    assert open_fds() > before
    it.close()
    assert open_fds() == before
