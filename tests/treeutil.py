"""Helpers for end-to-end tests: describe a directory tree exactly, compare two trees with a
readable diff, and build a tree full of awkward cases.

A snapshot maps every path below a root (relative, as bytes, the root itself as ``b"."``)
to a :class:`Node`: its type, permission bits (``st_mode & 0o7777``), modification time
in nanoseconds (symlinks included: restore sets them too), owner, a description of its
data (SHA-256 and size of a file's content, a symlink's target, a device's numbers) and
its extended attributes. Hard links are described separately by :func:`link_groups`.
Nothing here follows a symlink.
"""

from __future__ import annotations

import hashlib
import os
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

ROOT = b"."

# Names that the awkward tree uses and that must never show up in an object key on the
# store (nor as plaintext inside any stored object). None of them is hex-only, or the
# word "data", "index" or "config", so none can occur in a key by accident.
DISTINCTIVE_NAMES: tuple[bytes, ...] = (
    b"zebra-secret-name.txt",
    b"quokka",
    b"deepest-walrus.txt",
    b"we ird\nname \\ =,x.txt",
    b"narwhal-hardlink",
    b"sparse-yak.img",
    b"xattr-owl.txt",
    b"pelican-owned",
    b"mongoose.fifo",
    b"wombat-null",
    b"readonly-lynx",
    b"giraffe-5M.bin",
)


class Node(NamedTuple):
    """What a snapshot records about one path."""

    kind: str  # "file", "dir", "symlink", "fifo", "chardev", "blockdev", "socket"
    mode: int
    mtime_ns: int
    uid: int
    gid: int
    data: object  # ("sha256", size) | symlink target | (major, minor) | None
    xattrs: tuple[tuple[str, bytes], ...]

    def show(self) -> str:
        data = self.data
        if self.kind == "file" and isinstance(data, tuple):
            data = f"{data[1]} bytes sha256 {data[0][:12]}"
        return (
            f"{self.kind} mode={self.mode:04o} mtime_ns={self.mtime_ns} "
            f"owner={self.uid}:{self.gid} data={data!r} xattrs={self.xattrs!r}"
        )


_KIND = {
    stat.S_IFREG: "file",
    stat.S_IFDIR: "dir",
    stat.S_IFLNK: "symlink",
    stat.S_IFIFO: "fifo",
    stat.S_IFCHR: "chardev",
    stat.S_IFBLK: "blockdev",
    stat.S_IFSOCK: "socket",
}


def _sha256_of(dir_fd: int, name: bytes) -> str:
    digest = hashlib.sha256()
    fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW, dir_fd=dir_fd)
    try:
        while block := os.read(fd, 1 << 20):
            digest.update(block)
    finally:
        os.close(fd)
    return digest.hexdigest()


def _xattrs(where: str, kind: str) -> tuple[tuple[str, bytes], ...]:
    if kind == "symlink":
        return ()
    try:
        names = os.listxattr(where, follow_symlinks=False)
    except OSError:
        return ()
    return tuple(sorted((n, os.getxattr(where, n, follow_symlinks=False)) for n in names))


def _node(dir_fd: int, name: bytes, st: os.stat_result) -> Node:
    """The :class:`Node` for ``name`` in directory ``dir_fd`` (never following it)."""
    kind = _KIND[stat.S_IFMT(st.st_mode)]
    data: object = None
    if kind == "file":
        data = (_sha256_of(dir_fd, name), st.st_size)
    elif kind == "symlink":
        data = os.readlink(name, dir_fd=dir_fd)
    elif kind in ("chardev", "blockdev"):
        data = (os.major(st.st_rdev), os.minor(st.st_rdev))
    where = (
        f"/proc/self/fd/{dir_fd}/{os.fsdecode(name)}" if name != b"." else f"/proc/self/fd/{dir_fd}"
    )
    return Node(
        kind,
        stat.S_IMODE(st.st_mode),
        st.st_mtime_ns,
        st.st_uid,
        st.st_gid,
        data,
        _xattrs(where, kind),
    )


def node_of(path: str | os.PathLike[str] | bytes) -> Node:
    """The :class:`Node` for one path (never following a symlink)."""
    parent, name = os.path.split(os.path.abspath(os.fsencode(path)))
    fd = os.open(parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        return _node(fd, name, os.lstat(name, dir_fd=fd))
    finally:
        os.close(fd)


def _walk(root: bytes) -> Iterator[tuple[bytes, os.stat_result, Node | None]]:
    """(relative path, lstat, Node or None) of the root and everything below it, walked
    through directory descriptors so that paths longer than PATH_MAX work too."""
    top = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    yield from _walk_fd(top, b"", want_nodes=True)


def _walk_fd(
    fd: int, prefix: bytes, *, want_nodes: bool
) -> Iterator[tuple[bytes, os.stat_result, Node | None]]:
    try:
        if not prefix:
            st = os.fstat(fd)
            yield ROOT, st, _node(fd, b".", st) if want_nodes else None
        for name in sorted(os.fsencode(n) for n in os.listdir(fd)):
            st = os.lstat(name, dir_fd=fd)
            rel = prefix + name
            yield rel, st, _node(fd, name, st) if want_nodes else None
            if stat.S_ISDIR(st.st_mode):
                child = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd)
                yield from _walk_fd(child, rel + b"/", want_nodes=want_nodes)
    finally:
        os.close(fd)


def snapshot(root: str | os.PathLike[str] | bytes, *, with_root: bool = True) -> dict[bytes, Node]:
    """Every path below ``root`` (and ``b"."`` for the root itself) mapped to its Node."""
    snap = {rel: node for rel, _st, node in _walk(os.fsencode(root)) if node is not None}
    if not with_root:
        del snap[ROOT]
    return snap


def link_groups(root: str | os.PathLike[str] | bytes) -> set[frozenset[bytes]]:
    """The sets of paths below ``root`` that are hard links of one regular file (2+ paths
    inside the tree)."""
    by_inode: dict[tuple[int, int], set[bytes]] = {}
    top = os.open(os.fsencode(root), os.O_RDONLY | os.O_DIRECTORY)
    for rel, st, _ in _walk_fd(top, b"", want_nodes=False):
        if stat.S_ISREG(st.st_mode) and st.st_nlink > 1:
            by_inode.setdefault((st.st_dev, st.st_ino), set()).add(rel)
    return {frozenset(paths) for paths in by_inode.values() if len(paths) > 1}


def subtree(snap: dict[bytes, Node], top: bytes) -> dict[bytes, Node]:
    """The part of ``snap`` at or below ``top``."""
    return {p: n for p, n in snap.items() if p == top or p.startswith(top + b"/")}


def without(snap: dict[bytes, Node], *tops: bytes) -> dict[bytes, Node]:
    """``snap`` minus the given paths and everything below them."""
    return {
        p: n for p, n in snap.items() if not any(p == t or p.startswith(t + b"/") for t in tops)
    }


def diff_trees(expected: dict[bytes, Node], actual: dict[bytes, Node]) -> list[str]:
    """Human-readable differences between two snapshots (empty when they are equal)."""
    lines: list[str] = []
    for path in sorted(expected.keys() - actual.keys()):
        lines.append(f"missing   {path!r}: {expected[path].show()}")
    for path in sorted(actual.keys() - expected.keys()):
        lines.append(f"extra     {path!r}: {actual[path].show()}")
    for path in sorted(expected.keys() & actual.keys()):
        want, got = expected[path], actual[path]
        if want != got:
            fields = [
                f"{field}: expected {getattr(want, field)!r}, got {getattr(got, field)!r}"
                for field in Node._fields
                if getattr(want, field) != getattr(got, field)
            ]
            lines.append(f"different {path!r}: " + "; ".join(fields))
    return lines


def assert_same_tree(
    expected: dict[bytes, Node], actual: dict[bytes, Node], what: str = "restored tree"
) -> None:
    """Fail with a readable list of differences unless the snapshots are equal."""
    lines = diff_trees(expected, actual)
    if lines:
        shown = "\n  ".join(lines[:60])
        more = f"\n  ... and {len(lines) - 60} more" if len(lines) > 60 else ""
        raise AssertionError(f"{what} differs ({len(lines)} difference(s)):\n  {shown}{more}")


def xattrs_supported(directory: str | os.PathLike[str]) -> bool:
    probe = os.path.join(directory, ".xattr-probe")
    with open(probe, "wb"):
        pass
    try:
        os.setxattr(probe, "user.probe", b"1")
        return True
    except OSError:
        return False
    finally:
        os.unlink(probe)


# --- the awkward tree ------------------------------------------------------------------

SPARSE_SIZE = 50 * (1 << 20)
SPARSE_DATA_AT = 25 * (1 << 20)
WEIRD_NAME = b"we ird\nname \\ =,x.txt"
NON_UTF8 = b"\xff\xfe"


def make_awkward_tree(root: str | os.PathLike[str], *, seed: int = 1) -> dict[str, object]:
    """Fill (and create) ``root`` with every awkward kind of entry we can think of.

    Returns facts about what was made (e.g. whether xattrs are supported). Times are set
    last, deepest first, with odd nanoseconds, so that nothing created afterwards moves a
    directory's mtime.
    """
    import random

    rnd = random.Random(seed)
    top = Path(root)
    top.mkdir(parents=True, exist_ok=True)
    r = os.fsencode(top)

    def p(rel: bytes) -> bytes:
        return r + b"/" + rel

    def write(rel: bytes, data: bytes, mode: int = 0o644) -> None:
        with open(p(rel), "wb") as f:
            f.write(data)
        os.chmod(p(rel), mode)

    def mkdir(rel: bytes, mode: int = 0o755) -> None:
        os.makedirs(p(rel), exist_ok=True)
        os.chmod(p(rel), mode)

    # nested directories, the subtree d/e used by subtree restores
    mkdir(b"a")
    mkdir(b"a/b")
    mkdir(b"a/b/c")
    write(b"a/b/c/deepest-walrus.txt", b"at the bottom\n")
    mkdir(b"d")
    mkdir(b"d/e")
    mkdir(b"d/e/g")
    write(b"d/e/f.txt", b"f in e\n")
    write(b"d/e/g/h.bin", rnd.randbytes(3000))
    os.symlink(b"../e/f.txt", p(b"d/e/link-to-f"))
    write(b"d/other.txt", b"other\n")
    write(b"d/zebra-secret-name.txt", b"secret\n")
    mkdir(b"quokka")
    write(b"quokka/inside", b"quokka content\n")

    # the clock order compares per component: a/b < a-b < a.b
    write(b"a-b", b"dash\n")
    write(b"a.b", b"dot\n")

    # empty file and various sizes (4 MiB is the small/large boundary of the reader)
    write(b"empty", b"")
    mkdir(b"sizes")
    for size in (1, 4095, 4096, 65537, 1 << 20, 4 << 20, (4 << 20) + 1):
        write(b"sizes/s%d" % size, rnd.randbytes(size))
    write(b"giraffe-5M.bin", rnd.randbytes(5 << 20))
    write(b"compressible", b"all the same line\n" * 20000)

    # awkward names
    write(NON_UTF8, b"not utf-8\n")
    mkdir(b"dir-\xff\xfe")
    write(b"dir-\xff\xfe/\xfe\xff inside", b"non-utf-8 dir\n")
    write(WEIRD_NAME, b"weird name\n")
    write(b"-leading-dash", b"dash\n")
    write(b".hidden", b"dot file\n")

    # symlinks: relative, absolute, dangling, self-loop, to a directory, owned by others
    mkdir(b"links")
    os.symlink(b"../d/other.txt", p(b"links/relative"))
    os.symlink(b"/etc/hostname", p(b"links/absolute"))
    os.symlink(b"nowhere/at/all", p(b"links/dangling"))
    os.symlink(b"self-loop", p(b"links/self-loop"))
    os.symlink(b"../d", p(b"links/to-dir"))
    os.symlink(b"\xff\xfe-target\nwith newline", p(b"links/odd-target"))
    os.lchown(p(b"links/relative"), 1234, 5678)

    # hard links: a pair in one directory, a triple across directories whose first
    # member in clock order (a/b/...) is outside the d/e subtree
    mkdir(b"hard")
    write(b"hard/narwhal-hardlink", b"pair content\n")
    os.link(p(b"hard/narwhal-hardlink"), p(b"hard/pair-two"))
    write(b"a/b/triple-1", b"triple content\n" * 10)
    os.link(p(b"a/b/triple-1"), p(b"d/e/triple-2"))
    os.link(p(b"a/b/triple-1"), p(b"hard/triple-3"))
    # a pair whose first member lives in a directory that tests rename (b-dir -> c-dir,
    # still before "hard" in the clock: only the link's target changes, no inode does)
    mkdir(b"b-dir")
    write(b"b-dir/linked", b"linked from hard/\n")
    os.link(p(b"b-dir/linked"), p(b"hard/second-of-b"))

    # special files
    os.mkfifo(p(b"mongoose.fifo"), 0o640)
    os.mknod(p(b"wombat-null"), stat.S_IFCHR | 0o666, os.makedev(1, 3))

    # modes: setuid, setgid, sticky, a setgid dir owned by another group with a plain
    # subdirectory and file (new entries there inherit the group and the setgid bit)
    mkdir(b"modes")
    write(b"modes/setuid", b"#!/bin/sh\n", 0o4755)
    write(b"modes/setgid", b"#!/bin/sh\n", 0o2755)
    write(b"modes/all-bits", b"x\n", 0o7777)
    write(b"modes/no-bits", b"x\n", 0o000)
    mkdir(b"modes/sticky", 0o1777)
    write(b"modes/sticky/in-sticky", b"s\n")
    mkdir(b"modes/sgid-dir", 0o2775)
    os.chown(p(b"modes/sgid-dir"), 0, 5678)
    mkdir(b"modes/sgid-dir/plain-sub", 0o755)
    os.chown(p(b"modes/sgid-dir/plain-sub"), 0, 0)
    os.chmod(p(b"modes/sgid-dir/plain-sub"), 0o755)
    write(b"modes/sgid-dir/plain-file", b"p\n")
    os.chown(p(b"modes/sgid-dir/plain-file"), 0, 0)

    # a read-only directory with content (restore must fill it before locking it)
    mkdir(b"readonly-lynx")
    write(b"readonly-lynx/one", b"1\n")
    write(b"readonly-lynx/two", b"2\n", 0o400)
    mkdir(b"readonly-lynx/sub")
    write(b"readonly-lynx/sub/three", b"3\n")
    os.chmod(p(b"readonly-lynx/sub"), 0o500)
    os.chmod(p(b"readonly-lynx"), 0o500)

    # a sparse file: 50 MiB, 4 KiB of data in the middle
    with open(p(b"sparse-yak.img"), "wb") as f:
        f.truncate(SPARSE_SIZE)
        f.seek(SPARSE_DATA_AT)
        f.write(rnd.randbytes(4096))
    # an all-hole sparse file
    with open(p(b"all-hole.img"), "wb") as f:
        f.truncate(1 << 20)

    # extended attributes
    write(b"xattr-owl.txt", b"has an xattr\n")
    has_xattrs = True
    try:
        os.setxattr(p(b"xattr-owl.txt"), "user.test", b"value \x00\xff binary")
        os.setxattr(p(b"xattr-owl.txt"), "user.empty", b"")
        os.setxattr(p(b"d/e"), "user.on-a-dir", b"dir value")
    except OSError:
        has_xattrs = False

    # foreign owner
    write(b"pelican-owned", b"owned by 1234:5678\n")
    os.chown(p(b"pelican-owned"), 1234, 5678)
    mkdir(b"owned-dir")
    write(b"owned-dir/f", b"f\n")
    os.chown(p(b"owned-dir"), 1234, 5678)

    set_odd_times(top)
    return {"xattrs": has_xattrs}


def set_odd_times(root: str | os.PathLike[str], *, base: int = 1_600_000_000_123_456_789) -> None:
    """Give every path below ``root`` (and the root) a distinct mtime with odd nanoseconds,
    deepest first so that directories keep theirs."""
    n = 0
    for dirpath, dirnames, filenames in os.walk(os.fsencode(root), topdown=False):
        for name in sorted(filenames) + sorted(dirnames):
            n += 1
            t = base + n * 1_000_000_007
            os.utime(os.path.join(dirpath, name), ns=(t, t), follow_symlinks=False)
        n += 1
        t = base + n * 1_000_000_007
        os.utime(dirpath, ns=(t, t))


def blocks_used(path: str | os.PathLike[str]) -> int:
    """Bytes of disk a file occupies."""
    return os.lstat(path).st_blocks * 512


def make_deep_tree(root: str | os.PathLike[str], *, levels: int = 24) -> bytes:
    """A chain of directories with 200-byte names, deeper than PATH_MAX (4096) in total,
    holding a file, a symlink and a FIFO at the bottom; plus 255-byte names (NAME_MAX) at
    the top. Everything is made through directory descriptors. Returns the bottom
    directory's relative path."""
    Path(root).mkdir(parents=True, exist_ok=True)
    top = os.fsencode(root)
    long_name = b"L" * 255
    with open(top + b"/" + long_name, "wb") as f:
        f.write(b"255-byte name\n")
    with open(top + b"/" + b"\xe9" * 255, "wb") as f:
        f.write(b"255-byte non-UTF-8 name\n")
    rel = b""
    fd = os.open(top, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for level in range(levels):
            name = b"%03d-" % level + b"d" * 196
            os.mkdir(name, 0o755, dir_fd=fd)
            nxt = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd)
            os.close(fd)
            fd = nxt
            rel = name if not rel else rel + b"/" + name
        wfd = os.open(b"bottom-file", os.O_WRONLY | os.O_CREAT, 0o640, dir_fd=fd)
        os.write(wfd, b"at the bottom of a very deep tree\n" * 100)
        os.close(wfd)
        os.symlink(b"bottom-file", b"bottom-link", dir_fd=fd)
        os.mkfifo(b"bottom-fifo", 0o600, dir_fd=fd)
    finally:
        os.close(fd)
    assert len(top) + len(rel) > 4096
    set_times_fd(top)
    return rel


def set_times_fd(root: bytes, *, base: int = 1_610_000_000_000_000_001) -> None:
    """Like :func:`set_odd_times`, through directory descriptors (any depth)."""
    counter = [0]

    def visit(fd: int) -> None:
        for name in sorted(os.fsencode(n) for n in os.listdir(fd)):
            st = os.lstat(name, dir_fd=fd)
            if stat.S_ISDIR(st.st_mode):
                child = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd)
                try:
                    visit(child)
                finally:
                    os.close(child)
            counter[0] += 1
            t = base + counter[0] * 1_000_000_007
            os.utime(name, ns=(t, t), dir_fd=fd, follow_symlinks=False)

    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        visit(fd)
        os.utime(fd, ns=(base, base))
    finally:
        os.close(fd)


def open_deep(root: str | os.PathLike[str], rel: bytes) -> int:
    """A descriptor for directory ``root/rel`` however long the path (caller closes)."""
    fd = os.open(os.fsencode(root), os.O_RDONLY | os.O_DIRECTORY)
    for name in rel.split(b"/") if rel else []:
        nxt = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd)
        os.close(fd)
        fd = nxt
    return fd
