"""The restore's own tar reader against tarfile and GNU tar, on archives shaped like packs."""

from __future__ import annotations

import io
import os
import random
import subprocess
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from blanket import model
from blanket.members import member_name, tar_info
from blanket.model import Entry
from blanket.tarread import READ, TarReader


def _sparse_map(segments: tuple[tuple[int, int], ...], size: int) -> bytes:
    """GNU sparse 1.0 map as docs/format.md describes it (a file ending in a hole gets a
    last, empty segment at its end), padded to 512."""
    if sum(segments[-1]) < size:
        segments = (*segments, (size, 0))
    text = f"{len(segments)}\n" + "".join(f"{o}\n{n}\n" for o, n in segments)
    return text.encode() + bytes(-len(text) % 512)


def _sparse_dummy_name(path: bytes) -> str:
    head, _, tail = member_name(path).rpartition("/")
    return f"{head}/GNUSparseFile.0/{tail}"


def _read_all(data: bytes, piece: int = 7000) -> list[tuple[bytes, bytes, bytes]]:
    """(name, type, content) of every member, read through pieces of ``piece`` bytes."""
    stream = io.BytesIO(data)
    return [
        (m.name, m.type, b"".join(m.chunks()))
        for m in TarReader(lambda n: stream.read(min(n, piece)))
    ]


def _by_tarfile(data: bytes) -> list[tuple[bytes, bytes, bytes]]:
    out = []
    with tarfile.open(
        fileobj=io.BytesIO(data), mode="r|", encoding="utf-8", errors="surrogateescape"
    ) as tar:
        for info in tar:
            f = tar.extractfile(info) if info.isreg() else None
            out.append((os.fsencode(info.name), info.type, f.read() if f else b""))
    return out


def _pack_like(files: list[tuple[bytes, bytes]], extra: list[Entry] | None = None) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(
        fileobj=buf, mode="w", format=tarfile.PAX_FORMAT, encoding="utf-8", errors="surrogateescape"
    ) as tar:
        tar.addfile(tar_info(Entry(model.DIR, model.ROOT, mtime_ns=5), member_name(model.ROOT)))
        for path, content in files:
            e = Entry(model.FILE, path, mode=0o640, mtime_ns=1_700_000_000_123_456_789)
            ti = tar_info(e, member_name(path))
            ti.size = len(content)
            tar.addfile(ti, io.BytesIO(content))
        for e in extra or []:
            tar.addfile(tar_info(e, member_name(e.path)))
    return buf.getvalue()


def test_names_and_contents_match_tarfile() -> None:
    rng = random.Random(3)
    files = [
        (b"a.txt", b"hello"),
        (b"empty", b""),
        (b"dir/exact", bytes(512)),
        (b"dir/big", rng.randbytes(3 * READ + 17)),
        (b"l" * 150 + b"/long name \xc3\xa9", b"x" * 1000),
        (b"raw-\xff\xfe-not-utf8", b"bytes"),
        (b"dir/" + b"n" * 99, rng.randbytes(READ)),
    ]
    extra = [
        Entry(model.SYMLINK, b"s", target=b"../" * 60),
        Entry(model.DIR, b"dir"),
        Entry(model.FIFO, b"fifo"),
    ]
    data = _pack_like(files, extra)
    for piece in (1, 511, 7000, READ + 3):
        got = _read_all(data, piece) if piece > 1 else _read_all(data, 1 << 30)
        assert [(n, c) for n, _, c in got] == [(n, c) for n, _, c in _by_tarfile(data)]
    assert [n for n, _, _ in _read_all(data)][:2] == [b"tree", b"tree/a.txt"]


def test_unread_and_half_read_members_are_skipped() -> None:
    rng = random.Random(4)
    files = [(b"f%d" % i, rng.randbytes(rng.choice([0, 1, 511, 513, READ + 5]))) for i in range(30)]
    data = _pack_like(files)
    stream = io.BytesIO(data)
    seen = {}
    for i, m in enumerate(TarReader(stream.read)):
        if i % 3 == 0:
            seen[m.name] = b"".join(m.chunks())
        elif i % 3 == 1:
            next(iter(m.chunks()), None)
    expected = {member_name(p).encode(): c for p, c in files}
    expected[b"tree"] = b""
    assert len(seen) == 11 and all(expected[n] == c for n, c in seen.items())


def test_content_gives_small_files_in_one_piece() -> None:
    data = _pack_like([(b"small", b"abc" * 100), (b"large", bytes(5000))])
    stream = io.BytesIO(data)
    got = {m.name: m.content(4096) for m in TarReader(stream.read)}
    assert got[b"tree/small"] == b"abc" * 100
    assert got[b"tree/large"] is None and got[b"tree"] is None


def _sparse_pack(segments: tuple[tuple[int, int], ...], size: int, path: bytes) -> bytes:
    """A sparse member as docs/format.md describes it."""
    rng = random.Random(5)
    stored = b"".join(rng.randbytes(n) for _, n in segments)
    header = _sparse_map(segments, size)
    ti = tar_info(Entry(model.FILE, path, mode=0o600), _sparse_dummy_name(path))
    ti.pax_headers = {
        **ti.pax_headers,
        "GNU.sparse.major": "1",
        "GNU.sparse.minor": "0",
        "GNU.sparse.name": member_name(path),
        "GNU.sparse.realsize": str(size),
    }
    ti.size = len(header) + len(stored)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        tar.addfile(ti, io.BytesIO(header + stored))
        after = tarfile.TarInfo("tree/after")
        after.size = 3
        tar.addfile(after, io.BytesIO(b"end"))
    return buf.getvalue()


def _logical(segments: tuple[tuple[int, int], ...], size: int) -> bytes:
    rng = random.Random(5)
    out = bytearray(size)
    for off, n in segments:
        out[off : off + n] = rng.randbytes(n)
    return bytes(out)


@pytest.mark.parametrize(
    ("segments", "size"),
    [
        (((0, 100), (5000, 300)), 10_000),
        (((4096, 4096),), 3 * READ),
        (((0, 0),), 2 * READ + 1),
        (tuple((i * 8192, 10) for i in range(200)), 200 * 8192),
    ],
)
def test_sparse_members_give_their_logical_content(
    segments: tuple[tuple[int, int], ...], size: int
) -> None:
    path = b"some/dir/" + b"s" * 120 if len(segments) == 200 else b"some/disk.img"
    data = _sparse_pack(segments, size, path)
    got = _read_all(data)
    assert got[0][0] == member_name(path).encode()
    assert got[0][2] == _logical(segments, size)
    assert got[1][0] == b"tree/after" and got[1][2] == b"end"


def test_gnu_tar_sparse_and_long_names(tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / ("d" * 120)).mkdir(parents=True)
    with open(src / ("d" * 120) / "holes", "wb") as f:
        f.seek(3 * READ)
        f.write(b"tail")
        f.seek(100)
        f.write(b"head")
    (src / "plain").write_bytes(b"plain" * 999)
    for fmt, extra in (("posix", ["--sparse-version=1.0"]), ("gnu", [])):
        out = subprocess.run(
            ["tar", "-C", str(src), f"--format={fmt}", "--sparse", *extra, "-cf", "-", "."],
            check=True,
            capture_output=True,
        ).stdout
        got = {n: c for n, _, c in _read_all(out) if n.endswith((b"holes", b"plain"))}
        holes = (src / ("d" * 120) / "holes").read_bytes()
        if fmt == "posix":
            assert got[b"./" + b"d" * 120 + b"/holes"] == holes
        assert got[b"./plain"] == b"plain" * 999


def _corrupt(data: bytes, at: int, value: bytes) -> bytes:
    return data[:at] + value + data[at + len(value) :]


def _headers(data: bytes) -> Iterator[int]:
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        for info in tar:
            yield info.offset


def test_damage_raises_read_errors_not_others() -> None:
    data = _pack_like([(b"a", b"x" * 2000), (b"b", b"y" * 10)])
    offsets = list(_headers(data))
    bad = [
        _corrupt(data, offsets[1] + 130, b"\xff"),  # checksum no longer matches
        data[: offsets[1] + 700],  # truncated inside a member's data
        b"\1" * 100,
        b"",
    ]
    for blob in bad:
        with pytest.raises(tarfile.ReadError):
            _read_all(blob)
    # a pax record that lies about its length
    lying = _sparse_pack(((0, 10),), 10, b"x").replace(
        b"GNU.sparse.realsize=10", b"GNU.sparse.realsize=9"
    )
    with pytest.raises(tarfile.ReadError):
        _read_all(lying)
