"""SafeWriter on a real filesystem: metadata round trips, sparse files, hostile paths.

These tests run as root (device nodes, chown); the unprivileged cases fork a child that
drops to ``nobody`` so that permission bits are really enforced.
"""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
import stat
import sys
import tempfile
import traceback
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from blanket.model import BLOCKDEV, CHARDEV, DIR, FIFO, FILE, HARDLINK, SYMLINK, Entry
from blanket.restore.writer import ContentMismatch, NotPermitted, SafeWriter, UnsafePath

MTIME = 1_234_567_890_123_456_789  # nanoseconds, not a multiple of 1000
NOBODY = 65534


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def file_entry(path: bytes, data: bytes, **changes: Any) -> Entry:
    entry = Entry(FILE, path, mode=0o644, mtime_ns=MTIME, size=len(data), sha256=sha(data))
    return replace(entry, **changes)


def leftovers(top: Path) -> list[str]:
    return [
        os.path.join(d, n)
        for d, dirs, files in os.walk(top)
        for n in dirs + files
        if n.startswith(".blanket-tmp-")
    ]


def snapshot(top: Path, skip: Path) -> dict[str, tuple[int, bytes]]:
    """Every path under ``top`` but outside ``skip``: type bits and content (or link text)."""
    seen: dict[str, tuple[int, bytes]] = {}
    for d, dirs, files in os.walk(top):
        dirs[:] = [n for n in dirs if Path(d, n) != skip]
        for n in dirs + files:
            p = Path(d, n)
            st = p.lstat()
            if stat.S_ISLNK(st.st_mode):
                body = os.readlink(p).encode()
            elif stat.S_ISREG(st.st_mode):
                body = p.read_bytes()
            else:
                body = b""
            seen[str(p)] = (stat.S_IFMT(st.st_mode), body)
    return seen


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.fixture
def target(tmp_path: Path) -> Path:
    return tmp_path / "target"


@pytest.fixture
def writer(target: Path) -> Iterator[SafeWriter]:
    with SafeWriter(str(target), restore_owner=False) as w:
        yield w


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    out = tmp_path / "outside_dir"
    out.mkdir()
    (out / "secret.txt").write_bytes(b"do not touch")
    return out


def as_nobody(action: Callable[[], None]) -> None:
    """Run ``action`` in a forked child with uid/gid nobody; fail if it raises."""
    pid = os.fork()
    if pid == 0:  # child: never return into pytest
        code = 1
        try:
            os.setgroups([])
            os.setgid(NOBODY)
            os.setuid(NOBODY)
            action()
            code = 0
        except BaseException:
            traceback.print_exc()
            sys.stderr.flush()
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, "the unprivileged child failed (see stderr)"


@pytest.fixture
def nobody_target() -> Iterator[Path]:
    top = Path(tempfile.mkdtemp(prefix="blanket-writer-"))
    try:
        top.chmod(0o755)
        os.chown(top, NOBODY, NOBODY)
        yield top / "target"
    finally:
        for d, dirs, _ in os.walk(top):
            for n in dirs:
                Path(d, n).chmod(0o700)
        shutil.rmtree(top)


# --- round trips ---------------------------------------------------------------------


def test_file_content_setuid_mode_and_mtime_ns(writer: SafeWriter, target: Path) -> None:
    data = b"hello\n" * 1000
    writer.write_file(file_entry(b"sub/f", data, mode=0o4755), [data[:7], data[7:]])
    st = (target / "sub/f").lstat()
    assert (target / "sub/f").read_bytes() == data
    assert stat.S_ISREG(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o4755
    assert st.st_mtime_ns == MTIME and st.st_atime_ns == MTIME
    assert leftovers(target) == []


def test_dir_sticky_mode_and_mtime_applied_by_finish_dir(writer: SafeWriter, target: Path) -> None:
    d = Entry(DIR, b"d", mode=0o1777, mtime_ns=MTIME)
    writer.make_dir(d)
    assert stat.S_IMODE((target / "d").stat().st_mode) == 0o700  # not yet
    writer.write_file(file_entry(b"d/f", b"x"), [b"x"])  # changes d's mtime
    writer.finish_dir(d)
    st = (target / "d").lstat()
    assert stat.S_IMODE(st.st_mode) == 0o1777 and st.st_mtime_ns == MTIME
    writer.make_dir(d)  # an existing directory stays, with its contents
    assert (target / "d/f").read_bytes() == b"x"


def test_root_dir_metadata_and_no_file_at_root(writer: SafeWriter, target: Path) -> None:
    root = Entry(DIR, b".", mode=0o751, mtime_ns=MTIME)
    writer.make_dir(root)
    writer.finish_dir(root)
    st = target.lstat()
    assert stat.S_IMODE(st.st_mode) == 0o751 and st.st_mtime_ns == MTIME
    with pytest.raises(UnsafePath):
        writer.write_file(file_entry(b".", b""), [])


def test_dangling_absolute_symlink_with_mtime(writer: SafeWriter, target: Path) -> None:
    text = b"/nonexistent/blanket/\xff-target"
    writer.make_symlink(Entry(SYMLINK, b"l", target=text, mtime_ns=MTIME))
    st = (target / "l").lstat()
    assert stat.S_ISLNK(st.st_mode) and st.st_mtime_ns == MTIME
    assert os.readlink(os.fsencode(target / "l")) == text
    assert leftovers(target) == []


def test_hardlink_shares_the_inode(writer: SafeWriter, target: Path) -> None:
    writer.write_file(file_entry(b"a/src", b"data"), [b"data"])
    link = Entry(HARDLINK, b"b/link", target=b"a/src")
    writer.make_hardlink(link)
    writer.make_hardlink(link)  # a rerun finds the link in place and leaves no temp behind
    src, dst = (target / "a/src").lstat(), (target / "b/link").lstat()
    assert (src.st_dev, src.st_ino) == (dst.st_dev, dst.st_ino) and src.st_nlink == 2
    assert leftovers(target) == []


def test_fifo(writer: SafeWriter, target: Path) -> None:
    writer.make_special(Entry(FIFO, b"p", mode=0o640, mtime_ns=MTIME))
    st = (target / "p").lstat()
    assert stat.S_ISFIFO(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o640
    assert st.st_mtime_ns == MTIME


@pytest.mark.parametrize(("kind", "is_kind"), [(CHARDEV, stat.S_ISCHR), (BLOCKDEV, stat.S_ISBLK)])
def test_device_nodes(
    writer: SafeWriter, target: Path, kind: str, is_kind: Callable[[int], bool]
) -> None:
    major, minor = (1, 3) if kind == CHARDEV else (7, 0)
    entry = Entry(kind, b"dev/n", mode=0o660, mtime_ns=MTIME, rdev_major=major, rdev_minor=minor)
    try:
        writer.make_special(entry)
    except NotPermitted as exc:
        pytest.skip(f"this root cannot create device nodes here (no CAP_MKNOD?): {exc}")
    st = (target / "dev/n").lstat()
    assert is_kind(st.st_mode) and st.st_rdev == os.makedev(major, minor)
    assert stat.S_IMODE(st.st_mode) == 0o660 and st.st_mtime_ns == MTIME
    assert leftovers(target) == []


def test_xattrs_on_special_files(writer: SafeWriter, target: Path) -> None:
    probe = target / "probe"
    probe.write_bytes(b"")
    try:
        os.setxattr(probe, b"trusted.probe", b"1")
    except OSError as exc:
        if exc.errno in (errno.ENOTSUP, errno.EOPNOTSUPP):
            pytest.skip(f"this filesystem keeps no trusted xattrs: {exc}")
        raise
    attrs = ((b"trusted.blanket", b"v"), (b"user.refused", b"x"))  # Linux: no user.* on FIFOs
    writer.make_special(Entry(FIFO, b"p", mode=0o600, xattrs=attrs))
    assert os.getxattr(target / "p", b"trusted.blanket", follow_symlinks=False) == b"v"
    assert len(writer.warnings) == 1 and "user.refused" in writer.warnings[0]
    assert stat.S_ISFIFO((target / "p").lstat().st_mode)


def test_xattrs_on_file_and_dir(writer: SafeWriter, target: Path) -> None:
    probe = target / "probe"
    probe.write_bytes(b"")
    try:
        os.setxattr(probe, b"user.probe", b"1")
    except OSError as exc:
        if exc.errno in (errno.ENOTSUP, errno.EOPNOTSUPP):
            pytest.skip(f"this filesystem does not support user xattrs: {exc}")
        raise
    attrs = ((b"user.one", b"1"), (b"user.bin", b"\x00\xff"))
    writer.write_file(file_entry(b"f", b"x", mode=0o444, xattrs=attrs), [b"x"])
    d = Entry(DIR, b"d", mode=0o755, xattrs=attrs)
    writer.make_dir(d)
    writer.finish_dir(d)
    for p in (target / "f", target / "d"):
        assert {k: os.getxattr(p, k) for k, _ in attrs} == dict(attrs)
    assert writer.warnings == []


def test_owner_numeric_when_names_unknown_and_setuid_kept(target: Path) -> None:
    owner: dict[str, Any] = {
        "uid": 1234,
        "gid": 5678,
        "user": b"blanket-no-such-user",
        "group": b"blanket-nog",
    }
    with SafeWriter(str(target), restore_owner=True) as w:
        w.write_file(file_entry(b"f", b"x", mode=0o6755, **owner), [b"x"])
        w.make_symlink(replace(Entry(SYMLINK, b"l", target=b"f"), **owner))
        w.make_special(replace(Entry(FIFO, b"p", mode=0o600), **owner))
        d = replace(Entry(DIR, b"d", mode=0o2775), **owner)
        w.make_dir(d)
        w.finish_dir(d)
    for name in ("f", "l", "p", "d"):
        st = (target / name).lstat()
        assert (st.st_uid, st.st_gid) == (1234, 5678), name
    assert stat.S_IMODE((target / "f").lstat().st_mode) == 0o6755  # chmod came after chown
    assert stat.S_IMODE((target / "d").lstat().st_mode) == 0o2775
    assert (target / "f").stat().st_uid == 1234  # the symlink's own owner, not its target's


def test_owner_name_known_here_wins(target: Path) -> None:
    with SafeWriter(str(target), restore_owner=True) as w:
        w.write_file(file_entry(b"f", b"", uid=1234, gid=5678, user=b"root", group=b"root"), [])
    st = (target / "f").lstat()
    assert (st.st_uid, st.st_gid) == (0, 0)


def test_owner_left_alone_when_not_asked(writer: SafeWriter, target: Path) -> None:
    writer.write_file(file_entry(b"f", b"", uid=1234, gid=5678), [])
    assert (target / "f").lstat().st_uid == os.geteuid()


# --- sparse --------------------------------------------------------------------------


def test_sparse_file_keeps_its_holes(writer: SafeWriter, target: Path) -> None:
    mib = 1 << 20
    data = os.urandom(4096)
    body = bytes(32 * mib) + data + bytes(32 * mib - 4096)
    chunks = [body[i : i + mib] for i in range(0, len(body), mib)]
    entry = file_entry(b"sparse", body, sparse=((32 * mib, 4096),))
    writer.write_file(entry, chunks)
    st = (target / "sparse").lstat()
    assert st.st_size == 64 * mib
    assert st.st_blocks * 512 <= 256 * 1024  # 4 KiB of data, not 64 MiB
    assert sha((target / "sparse").read_bytes()) == sha(body)


def test_sparse_with_unaligned_chunks_is_exact(writer: SafeWriter, target: Path) -> None:
    body = bytes(100_000) + b"\x01" * 3 + bytes(200_000) + b"tail" + bytes(70_001)
    chunks = [body[i : i + 12_345] for i in range(0, len(body), 12_345)]
    writer.write_file(file_entry(b"s", body, sparse=((100_000, 3), (300_003, 4))), chunks)
    assert (target / "s").read_bytes() == body


# --- hostile paths -------------------------------------------------------------------

HOSTILE = [b"../x", b"a/../../x", b"/etc/x", b"a//b", b"", b"./x", b"a/./b", b"a/\0b", b"x/.."]


@pytest.mark.parametrize("path", HOSTILE)
def test_unclean_paths_are_refused_everywhere(
    writer: SafeWriter, target: Path, tmp_path: Path, path: bytes
) -> None:
    before = snapshot(tmp_path, target)
    calls: list[Callable[[], object]] = [
        lambda: writer.write_file(file_entry(path, b"evil"), [b"evil"]),
        lambda: writer.make_dir(Entry(DIR, path)),
        lambda: writer.finish_dir(Entry(DIR, path)),
        lambda: writer.make_symlink(Entry(SYMLINK, path, target=b"x")),
        lambda: writer.make_hardlink(Entry(HARDLINK, path, target=b"x")),
        lambda: writer.make_special(Entry(FIFO, path)),
        lambda: writer.existing_matches(file_entry(path, b"")),
    ]
    for call in calls:
        with pytest.raises(UnsafePath):
            call()
    assert snapshot(tmp_path, target) == before
    assert list(target.iterdir()) == []
    assert not os.path.lexists("/etc/x")


def test_symlink_component_pointing_outside(
    writer: SafeWriter, target: Path, outside: Path
) -> None:
    (target / "link").symlink_to(outside)
    for call in (
        lambda: writer.write_file(file_entry(b"link/evil", b"x"), [b"x"]),
        lambda: writer.make_dir(Entry(DIR, b"link/sub")),
        lambda: writer.make_symlink(Entry(SYMLINK, b"link/s", target=b"x")),
        lambda: writer.make_special(Entry(FIFO, b"link/p")),
        lambda: writer.existing_matches(file_entry(b"link/secret.txt", b"do not touch")),
    ):
        with pytest.raises(UnsafePath):
            call()
    assert sorted(os.listdir(outside)) == ["secret.txt"]
    assert (target / "link").is_symlink()  # refused, not deleted


def test_symlink_component_pointing_inside(writer: SafeWriter, target: Path) -> None:
    (target / "real").mkdir()
    (target / "alias").symlink_to("real")
    with pytest.raises(UnsafePath):
        writer.write_file(file_entry(b"alias/x", b"x"), [b"x"])
    (target / "plain").write_bytes(b"")
    with pytest.raises(UnsafePath):  # a regular file as a component: refused, not deleted
        writer.write_file(file_entry(b"plain/x", b"x"), [b"x"])
    assert list((target / "real").iterdir()) == []
    assert (target / "alias").is_symlink() and (target / "plain").is_file()


def test_restored_symlink_is_never_followed(
    writer: SafeWriter, target: Path, outside: Path
) -> None:
    passwd = Path("/etc/passwd").read_bytes()
    writer.make_symlink(Entry(SYMLINK, b"lnk", target=b"/etc/passwd"))
    writer.make_symlink(Entry(SYMLINK, b"out", target=os.fsencode(outside)))
    with pytest.raises(UnsafePath):
        writer.write_file(file_entry(b"lnk/x", b"x"), [b"x"])
    with pytest.raises(UnsafePath):
        writer.write_file(file_entry(b"out/x", b"x"), [b"x"])
    with pytest.raises(UnsafePath):
        writer.finish_dir(Entry(DIR, b"out", mode=0o777))
    assert Path("/etc/passwd").read_bytes() == passwd
    assert sorted(os.listdir(outside)) == ["secret.txt"]
    assert stat.S_IMODE(outside.stat().st_mode) != 0o777


def test_file_replaces_symlink_instead_of_writing_through(
    writer: SafeWriter, target: Path, outside: Path
) -> None:
    (target / "victim").symlink_to(outside / "secret.txt")
    (target / "vdir").symlink_to(outside)
    writer.write_file(file_entry(b"victim", b"new", mode=0o600), [b"new"])
    writer.make_dir(Entry(DIR, b"vdir"))
    assert not (target / "victim").is_symlink()
    assert (target / "victim").read_bytes() == b"new"
    assert (target / "vdir").is_dir() and not (target / "vdir").is_symlink()
    assert (outside / "secret.txt").read_bytes() == b"do not touch"
    assert stat.S_IMODE((outside / "secret.txt").stat().st_mode) != 0o600


@pytest.mark.parametrize("source", [b"../outside_dir/secret.txt", b"sym", b"dir", b"fifo"])
def test_hardlink_to_anything_but_a_regular_file_inside_is_refused(
    writer: SafeWriter, target: Path, outside: Path, source: bytes
) -> None:
    writer.make_symlink(Entry(SYMLINK, b"sym", target=b"f"))
    writer.write_file(file_entry(b"f", b""), [])
    writer.make_dir(Entry(DIR, b"dir"))
    writer.make_special(Entry(FIFO, b"fifo"))
    with pytest.raises(UnsafePath):
        writer.make_hardlink(Entry(HARDLINK, b"h", target=source))
    assert not os.path.lexists(target / "h")
    assert (outside / "secret.txt").stat().st_nlink == 1
    assert leftovers(target) == []


def test_nonempty_directory_in_the_way_is_refused(writer: SafeWriter, target: Path) -> None:
    (target / "full").mkdir()
    (target / "full/keep").write_bytes(b"keep")
    (target / "empty").mkdir()
    with pytest.raises(UnsafePath, match="non-empty directory"):
        writer.write_file(file_entry(b"full", b"x"), [b"x"])
    writer.make_symlink(Entry(SYMLINK, b"empty", target=b"x"))
    assert (target / "full/keep").read_bytes() == b"keep"
    assert (target / "empty").is_symlink()
    assert leftovers(target) == []


def test_cached_directory_is_not_used_after_it_was_replaced(
    writer: SafeWriter, target: Path
) -> None:
    writer.make_dir(Entry(DIR, b"e/sub"))
    assert not writer.existing_matches(file_entry(b"e/sub/f", b"x"))  # caches e/sub
    writer.write_file(file_entry(b"e/sub", b"now a file"), [b"now a file"])
    with pytest.raises(UnsafePath):
        writer.write_file(file_entry(b"e/sub/g", b"x"), [b"x"])
    assert (target / "e/sub").read_bytes() == b"now a file"


# --- failures leave nothing behind ---------------------------------------------------


@pytest.mark.parametrize("wrong", ["sha256", "size"])
def test_content_mismatch(writer: SafeWriter, target: Path, wrong: str) -> None:
    data = b"payload"
    good = file_entry(b"dir/f", data)
    bad = Entry(
        FILE,
        b"dir/f",
        size=good.size + (wrong == "size"),
        sha256=sha(b"other") if wrong == "sha256" else good.sha256,
    )
    with pytest.raises(ContentMismatch, match="dir/f"):
        writer.write_file(bad, [data])
    assert not os.path.lexists(target / "dir/f")
    assert leftovers(target) == []


@pytest.mark.parametrize("error", [RuntimeError, KeyboardInterrupt])
def test_error_from_chunks_keeps_old_file(
    writer: SafeWriter, target: Path, error: type[BaseException]
) -> None:
    writer.write_file(file_entry(b"f", b"old", mode=0o640), [b"old"])

    def chunks() -> Iterator[bytes]:
        yield b"new" * 100_000
        raise error("source went away")

    with pytest.raises(error):
        writer.write_file(file_entry(b"f", b"new" * 200_000), chunks())
    assert (target / "f").read_bytes() == b"old"
    assert stat.S_IMODE((target / "f").stat().st_mode) == 0o640
    assert leftovers(target) == []


def test_error_on_first_file_leaves_no_file(writer: SafeWriter, target: Path) -> None:
    def chunks() -> Iterator[bytes]:
        yield b"partial"
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(OSError, match="No space"):
        writer.write_file(file_entry(b"f", b"partial!"), chunks())
    assert not os.path.lexists(target / "f")
    assert leftovers(target) == []


# --- reruns --------------------------------------------------------------------------


def test_existing_matches(writer: SafeWriter, target: Path) -> None:
    data = b"same content"
    entry = file_entry(b"d/f", data)
    assert not writer.existing_matches(entry)  # parent missing
    writer.write_file(entry, [data])
    assert writer.existing_matches(entry)
    assert not writer.existing_matches(file_entry(b"d/f", b"SAME CONTENT"))  # same size
    assert not writer.existing_matches(file_entry(b"d/f", data + b"!"))
    assert not writer.existing_matches(Entry(FILE, b"d/f", size=len(data)))  # no hash known
    writer.make_symlink(Entry(SYMLINK, b"d/l", target=b"f"))
    assert not writer.existing_matches(file_entry(b"d/l", data))  # a symlink to a match
    writer.make_dir(Entry(DIR, b"d/sub"))
    assert not writer.existing_matches(file_entry(b"d/sub", b""))
    writer.make_special(Entry(FIFO, b"d/p"))
    assert not writer.existing_matches(file_entry(b"d/p", b""))  # and does not block


# --- unprivileged --------------------------------------------------------------------


def test_read_only_dir_is_filled_before_finish_dir(nobody_target: Path) -> None:
    def restore() -> None:
        with SafeWriter(str(nobody_target)) as w:
            assert not w.restore_owner
            ro = Entry(DIR, b"ro", mode=0o500, mtime_ns=MTIME)
            w.make_dir(ro)
            w.write_file(file_entry(b"ro/child", b"c"), [b"c"])
            w.make_dir(Entry(DIR, b"ro/sub"))
            w.write_file(file_entry(b"ro/sub/grandchild", b"g"), [b"g"])
            w.finish_dir(Entry(DIR, b"ro/sub", mode=0o500))
            w.finish_dir(ro)

    as_nobody(restore)
    st = (nobody_target / "ro").lstat()
    assert stat.S_IMODE(st.st_mode) == 0o500 and st.st_mtime_ns == MTIME
    assert (nobody_target / "ro/child").read_bytes() == b"c"
    assert (nobody_target / "ro/sub/grandchild").read_bytes() == b"g"


def test_devices_need_root(nobody_target: Path) -> None:
    def restore() -> None:
        with SafeWriter(str(nobody_target)) as w:
            for kind in (CHARDEV, BLOCKDEV):
                try:
                    w.make_special(Entry(kind, b"dev", rdev_major=1, rdev_minor=3))
                except NotPermitted:
                    continue
                raise AssertionError("a device node was created without root")
            w.make_special(Entry(FIFO, b"fifo", mode=0o600))  # FIFOs need no privilege

    as_nobody(restore)
    assert not os.path.lexists(nobody_target / "dev")
    assert stat.S_ISFIFO((nobody_target / "fifo").lstat().st_mode)


# --- the target itself and descriptors -----------------------------------------------


def test_target_reached_through_a_symlink(tmp_path: Path) -> None:
    (tmp_path / "real").mkdir()
    (tmp_path / "via").symlink_to("real")
    with SafeWriter(os.fsencode(tmp_path / "via" / "new")) as w:
        w.write_file(file_entry(b"f", b"x"), [b"x"])
    assert (tmp_path / "real/new/f").read_bytes() == b"x"


def test_no_descriptor_leaks(target: Path) -> None:
    baseline = open_fds()
    with SafeWriter(str(target), restore_owner=False) as w:
        for i in range(20):
            w.write_file(file_entry(b"d%d/f" % (i % 3), b"x"), [b"x"])
            w.make_hardlink(Entry(HARDLINK, b"h%d" % i, target=b"d%d/f" % (i % 3)))
            with pytest.raises(UnsafePath):
                w.make_hardlink(Entry(HARDLINK, b"bad", target=b"d0"))
            with pytest.raises(ContentMismatch):
                w.write_file(file_entry(b"d1/g", b"x"), [b"y"])
            w.finish_dir(Entry(DIR, b"d%d" % (i % 3), mode=0o755))
    assert open_fds() == baseline
