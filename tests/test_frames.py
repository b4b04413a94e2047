"""A pack's zstd stream is cut into frames at member boundaries, listed in its index.

The frame table is what lets a restore read part of a pack; here it is checked against
the real pack: sizes and hashes cut the stream exactly, every frame decompresses alone,
every frame starts with the member of its first entry, and frames end at new folders.
"""

from __future__ import annotations

import hashlib
import os
import random
from pathlib import Path

import pytest
import zstandard

from blanket.backup import BackupOptions, run_backup
from blanket.frames import FRAME_MAX, FRAME_MIN, Compressors, FrameCompressor, frame_ends_before
from blanket.members import member_path
from blanket.repo import Repository
from blanket.tarread import TarReader


def frame_streams(repo: Repository, seq: int) -> list[bytes]:
    """The zstd stream of pack ``seq`` cut at its frames, each checked against its hash."""
    h = repo.by_seq[seq]
    data = Path(repo.backend.root) / h.data_key  # type: ignore[attr-defined]
    plain = data.with_suffix(".zst")
    repo.gpg.decrypt_to_file(str(data), str(plain), h.data_key)
    stream = plain.read_bytes()
    plain.unlink()
    pieces, pos = [], 0
    for f in h.frames:
        piece = stream[pos : pos + f.size]
        assert hashlib.sha256(piece).hexdigest() == f.sha256
        pieces.append(piece)
        pos += f.size
    assert pos == len(stream)
    return pieces


def members_of(piece: bytes) -> list[bytes]:
    """The member names in one frame alone (it must decompress without the others)."""
    tar = zstandard.ZstdDecompressor().decompressobj().decompress(piece)
    names = []
    reader = iter(TarReader(_reader(tar)))
    for m in reader:
        names.append(m.name)
        for _ in m.chunks():
            pass
    return names


def _reader(data: bytes):  # type: ignore[no-untyped-def]
    pos = 0

    def read(n: int) -> bytes:
        nonlocal pos
        out = data[pos : pos + n]
        pos += len(out)
        return out

    return read


def test_frames_cut_the_stream_at_folders(repo: Repository, tmp_path: Path) -> None:
    rng = random.Random(5)
    src = tmp_path / "src"
    sizes = {}
    for d in range(12):
        folder = src / f"d{d:02d}"
        folder.mkdir(parents=True)
        for i in range(rng.randrange(1, 12)):
            n = rng.choice([10, 3000, 20_000, 70_000])
            (folder / f"f{i:02d}").write_bytes(rng.randbytes(n))
            sizes[f"d{d:02d}/f{i:02d}".encode()] = n
    (src / "big").write_bytes(rng.randbytes(FRAME_MAX + 100_000))
    (src / "after").write_bytes(b"x")
    result = run_backup(repo, str(src), BackupOptions(pack_size=64 << 20))
    assert result.complete and result.packs == 1
    h = repo.headers[-1]
    entries = repo.entries(h.seq)
    pieces = frame_streams(repo, h.seq)
    assert len(h.frames) >= 8
    assert h.frames[0].first == 0
    names_by_frame = [members_of(p) for p in pieces]
    listed = [e for e in entries]
    for k, (f, names) in enumerate(zip(h.frames, names_by_frame, strict=True)):
        end = h.frames[k + 1].first if k + 1 < len(h.frames) else len(listed)
        want = [member_path(e.path) for e in listed[f.first : end] if e.kind != "x"]
        if k + 1 == len(h.frames):
            want.append(b"index.txt")
        assert names == want, k
    # every frame ends where a new folder starts, or once it holds FRAME_MAX bytes;
    # a frame that holds two folders held less than FRAME_MIN when the second started
    folder = [e.path.rpartition(b"/")[0] for e in listed]
    for k, f in enumerate(h.frames[1:], 1):
        grown = len(zstandard.ZstdDecompressor().decompressobj().decompress(pieces[k - 1]))
        assert folder[f.first] != folder[f.first - 1] or grown >= FRAME_MAX
        assert grown >= FRAME_MIN
    for k, f in enumerate(h.frames):
        end = h.frames[k + 1].first if k + 1 < len(h.frames) else len(listed)
        tar_bytes = 0
        for i in range(f.first, end):
            if i > f.first and folder[i] != folder[i - 1]:
                assert tar_bytes < FRAME_MIN
            tar_bytes += 512 + -(-sizes.get(listed[i].path, 0) // 512) * 512


def test_frame_boundaries_rule() -> None:
    assert not frame_ends_before(FRAME_MIN - 1, b"b", b"a")
    assert frame_ends_before(FRAME_MIN, b"b", b"a")
    assert not frame_ends_before(FRAME_MAX - 1, b"a", b"a")
    assert frame_ends_before(FRAME_MAX, b"a", b"a")


def test_compressor_reports_its_frames_and_errors(keyring: object) -> None:
    got: list[bytes] = []
    zc = Compressors(3)
    fc = FrameCompressor(got.append, zc)
    a, b = os.urandom(100), os.urandom(3 << 20)  # one-shot and streamed frames
    fc.write(a)
    fc.end_frame(7)
    fc.end_frame(7)  # an empty frame is not listed
    fc.write(b[: 1 << 20])
    fc.write(b[1 << 20 :])
    frames = fc.close()
    stream = b"".join(got)
    assert [f.first for f in frames] == [0, 7]
    assert sum(f.size for f in frames) == len(stream)
    first = stream[: frames[0].size]
    assert zstandard.ZstdDecompressor().decompressobj().decompress(first) == a
    assert hashlib.sha256(stream[frames[0].size :]).hexdigest() == frames[1].sha256

    def broken(data: bytes) -> None:
        raise OSError("gpg went away")

    fc = FrameCompressor(broken, zc)
    fc.write(os.urandom(10))
    fc.end_frame(1)
    with pytest.raises(OSError, match="gpg went away"):
        for _ in range(100):  # the writer learns of it at its next call
            fc.write(os.urandom(10))
            fc.end_frame(1)
        fc.close()
    fc.abandon()


def test_verify_checks_the_frame_table(tmp_path: Path) -> None:
    """``verify --deep`` holds the frames an index lists against the pack's stream."""
    from blanket.indexfmt import Frame
    from blanket.verify import frame_troubles

    a, b = os.urandom(1000), os.urandom(500)
    zst = tmp_path / "stream"
    zst.write_bytes(a + b)

    def frame(first: int, data: bytes) -> Frame:
        return Frame(first, len(data), hashlib.sha256(data).hexdigest())

    assert frame_troubles(str(zst), (frame(0, a), frame(3, b))) == []
    assert frame_troubles(str(zst), ()) == []  # packs of older versions have no table
    assert frame_troubles(str(zst), (frame(0, a),)) == [
        "holds more than the frames its index lists"
    ]
    assert frame_troubles(str(zst), (frame(0, a), frame(3, b + b"x"))) == [
        "frame 1 does not match the frames its index lists"
    ]
    assert frame_troubles(str(zst), (frame(0, b), frame(3, a))) == [
        "frame 0 does not match the frames its index lists"
    ]
