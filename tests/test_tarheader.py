"""The pack writer's own tar headers are the bytes Python's tarfile writes, and GNU tar
reads them back to the same names, owners, times and link targets."""

from __future__ import annotations

import io
import os
import subprocess
import tarfile
from pathlib import Path
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from blanket import model
from blanket.members import tar_info
from blanket.model import Entry
from blanket.packer import entry_header
from blanket.tarheader import pax_mtime

NAME_BYTES = st.binary(min_size=1, max_size=180).filter(lambda b: b"\0" not in b)
OWNER = st.binary(max_size=40).filter(lambda b: b"\0" not in b)
KINDS = [model.FILE, model.DIR, model.SYMLINK, model.HARDLINK, model.FIFO, model.CHARDEV]


@st.composite
def entries(draw: st.DrawFn) -> tuple[Entry, bytes, int]:
    kind = draw(st.sampled_from([*KINDS, model.BLOCKDEV]))
    big = st.integers(min_value=0, max_value=2**40)
    e = Entry(
        kind,
        draw(NAME_BYTES),
        mode=draw(st.integers(min_value=0, max_value=0o7777)),
        uid=draw(st.one_of(st.integers(0, 70000), big)),
        gid=draw(st.one_of(st.integers(0, 70000), big)),
        user=draw(OWNER),
        group=draw(OWNER),
        mtime_ns=draw(st.integers(min_value=-(2**62), max_value=2**62)),
        target=draw(NAME_BYTES) if kind in (model.SYMLINK, model.HARDLINK) else b"",
        rdev_major=draw(st.integers(0, 4095)),
        rdev_minor=draw(st.integers(0, 2**20 - 1)),
    )
    size = draw(st.one_of(st.integers(0, 2**20), st.integers(2**33, 2**40)))
    return e, b"tree/" + e.path, size if kind == model.FILE else 0


ASCII_NAME = st.text(st.characters(min_codepoint=1, max_codepoint=127), min_size=1, max_size=110)
ASCII_OWNER = st.text(st.characters(min_codepoint=1, max_codepoint=127), max_size=34)


@st.composite
def usual_entries(draw: st.DrawFn) -> tuple[Entry, bytes, int]:
    """Members like most of a home directory's (ASCII names and owners, numbers that
    fit their fields, a nanosecond mtime or a whole second), with the field limits
    drawn often: the header writer's fast path."""
    kind = draw(st.sampled_from(KINDS))
    edge = st.sampled_from([0, 8**7 - 1, 8**7])
    seconds = st.one_of(st.integers(0, 2**33), st.sampled_from([8**11 - 1, 8**11]))
    e = Entry(
        kind,
        draw(ASCII_NAME).encode(),
        mode=draw(st.integers(min_value=0, max_value=0o7777)),
        uid=draw(st.one_of(st.integers(0, 70000), edge)),
        gid=draw(st.one_of(st.integers(0, 70000), edge)),
        user=draw(ASCII_OWNER).encode(),
        group=draw(ASCII_OWNER).encode(),
        mtime_ns=draw(seconds) * 10**9 + draw(st.sampled_from([0, 1, 999_999_999])),
        target=draw(ASCII_NAME).encode() if kind in (model.SYMLINK, model.HARDLINK) else b"",
    )
    size = draw(st.one_of(st.integers(0, 2**20), st.sampled_from([8**11 - 1, 8**11])))
    return e, b"tree/" + e.path, size if kind == model.FILE else 0


@settings(max_examples=400, deadline=None)
@given(st.one_of(entries(), usual_entries()))
def test_headers_equal_tarfile(case: tuple[Entry, bytes, int]) -> None:
    e, name, size = case
    ti = tar_info(e, os.fsdecode(name))
    ti.size = size
    assert entry_header(e, name, size=size) == ti.tobuf(
        tarfile.PAX_FORMAT, "utf-8", "surrogateescape"
    )


def test_sparse_records_follow_mtime_as_tarfile_writes_them() -> None:
    e = Entry(model.FILE, b"disk.img", mode=0o600, mtime_ns=1_700_000_000_123_456_789)
    extra = ((b"GNU.sparse.major", b"1"), (b"GNU.sparse.name", b"tree/disk.img"))
    ti = tar_info(e, "tree/GNUSparseFile.0/disk.img")
    ti.pax_headers = {**ti.pax_headers, "GNU.sparse.major": "1", "GNU.sparse.name": "tree/disk.img"}
    ti.size = 1024
    got = entry_header(e, b"tree/GNUSparseFile.0/disk.img", size=1024, extra=extra)
    assert got == ti.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")


def test_times_before_1970_keep_their_fraction() -> None:
    assert pax_mtime(-1_500_000_000) == b"-1.500000000"
    assert pax_mtime(1_500_000_000) == b"1.500000000"
    assert pax_mtime(-2_000_000_000) is None


def test_gnu_tar_reads_what_the_headers_say(tmp_path: Path) -> None:
    cases = [
        Entry(model.FILE, "é-ünï".encode() + b"\xff" * 3, mode=0o640, uid=1000, gid=100,
              user=b"someone-with-a-very-long-user-name-indeed", group=b"g",
              mtime_ns=1_234_567_890_987_654_321),
        Entry(model.DIR, b"d" * 150, mode=0o755, mtime_ns=-1_500_000_000),
        Entry(model.SYMLINK, b"link", mode=0o777, target=b"t" * 300, uid=2**22),
    ]  # fmt: skip
    buf = io.BytesIO()
    for e in cases:
        data = b"x" * 5 if e.kind == model.FILE else b""
        buf.write(entry_header(e, e.path, size=len(data)))
        buf.write(data + bytes(-len(data) % 512))
    buf.write(bytes(1024))
    archive = tmp_path / "a.tar"
    archive.write_bytes(buf.getvalue())
    listing = subprocess.run(
        ["tar", "--numeric-owner", "--full-time", "--quoting-style=literal", "-tvf", str(archive)],
        capture_output=True,
        check=True,
        env={**os.environ, "TZ": "UTC", "LC_ALL": "C"},
    ).stdout
    lines = listing.splitlines()
    assert len(lines) == 3
    assert b" 1000/100 " in lines[0] and b"2009-02-13 23:31:30.987654321" in lines[0]
    assert lines[0].endswith(cases[0].path)
    assert lines[1].endswith(b"d" * 150 + b"/")
    assert lines[2].endswith(b"link -> " + b"t" * 300) and b" 4194304/0 " in lines[2]
    with tarfile.open(archive, encoding="utf-8", errors="surrogateescape") as tf:
        first = tf.getmembers()[0]
        assert first.uname == "someone-with-a-very-long-user-name-indeed"
        assert os.fsencode(first.name) == cases[0].path
    out = tmp_path / "out"
    out.mkdir()
    subprocess.run(["tar", "-xf", str(archive), "-C", str(out)], capture_output=True, check=True)
    assert os.lstat(out / ("d" * 150)).st_mtime_ns == -1_500_000_000
    assert os.lstat(out / os.fsdecode(cases[0].path)).st_mtime_ns == cases[0].mtime_ns


def test_headers_at_every_field_limit_equal_tarfile() -> None:
    """Each field of a usual member at and just past what ustar holds, alone: the
    header is tarfile's on both sides of every limit."""
    usual: dict[str, Any] = {
        "name": b"a" * 20, "size": 100, "uid": 1000, "gid": 1000, "user": b"u",
        "group": b"g", "mtime_ns": 1_700_000_000_123_456_789, "target": b"t",
    }  # fmt: skip
    limits: dict[str, list[Any]] = {
        "name": [b"n" * 95, b"n" * 96, b"caf\xc3\xa9"],  # "tree/" + 95 = 100
        "size": [8**11 - 1, 8**11],
        "uid": [8**7 - 1, 8**7],
        "gid": [8**7 - 1, 8**7],
        "user": [b"u" * 32, b"u" * 33, b"\xc3\xa9"],
        "group": [b"g" * 32, b"g" * 33],
        "mtime_ns": [0, 10**9, (8**11 - 1) * 10**9 + 5, 8**11 * 10**9, -5],
        "target": [b"t" * 100, b"t" * 101],
    }
    for field_name, values in limits.items():
        for value in values:
            for kind in (model.FILE, model.SYMLINK, model.DIR):
                f = dict(usual, **{field_name: value})
                e = Entry(
                    kind, f["name"], mode=0o644, uid=f["uid"], gid=f["gid"], user=f["user"],
                    group=f["group"], mtime_ns=f["mtime_ns"],
                    target=f["target"] if kind == model.SYMLINK else b"",
                )  # fmt: skip
                name = b"tree/" + e.path
                size = f["size"] if kind == model.FILE else 0
                ti = tar_info(e, os.fsdecode(name))
                ti.size = size
                want = ti.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")
                assert entry_header(e, name, size=size) == want, (field_name, value, kind)
