"""pgprange: reading byte ranges of packs that the real gpg writes (no mocks).

Every sample is encrypted once (module fixture) through blanket's own EncryptProcess, in
public-key and in symmetric mode; the tests check the layout facts the module relies on
against a plain walk of the whole message, then ranged extraction against the data.
"""

from __future__ import annotations

import os
import random
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import Any

import pytest

from blanket.crypto import PUBKEY, SYMMETRIC, EncryptProcess, Gpg, KeySpec
from blanket.errors import BlanketError, WrongKey
from blanket.pgprange import (
    HEAD_BYTES,
    Chunked,
    Layout,
    LayoutError,
    SessionKey,
    extract,
    layout,
    ranges,
    session_key,
)

KiB, MiB = 1 << 10, 1 << 20
PASSPHRASE = "correct horse"
# literal body = 6 header bytes + data: sizes at and around its chunk boundaries and
# across the tail's decomposition (3532 -> 2048 + 1024 + 460 and so on)
SIZES = [0, 1, 100, 511, 512, 8185, 8186, 8192, 8193, 65536, 3 * MiB + 7, 9 * MiB + 4093]
SIZES += [3 * 8192 + r - 6 for r in (505, 506, 511, 512, 1023, 1024, 3532, 8191)]


@dataclass
class Sample:
    mode: str
    gpg: Gpg
    data: bytes
    obj: bytes
    key: SessionKey
    lay: Layout


def _encrypt(gpg: Gpg, data: bytes, path: str, rnd: random.Random) -> bytes:
    proc = EncryptProcess(gpg, path)
    view, i = memoryview(data), 0
    while i < len(data):  # irregular writes, as zstd's output comes
        n = rnd.choice([1, 3, 511, 4096, 8193, 65536, 1 << 20]) + rnd.randrange(100)
        proc.write(view[i : i + n])
        i += n
    proc.finish()
    with open(path, "rb") as f:
        obj = f.read()
    os.unlink(path)
    return obj


def _ambiguous_sizes() -> list[int]:
    """Data sizes whose symmetric pack's size alone does not tell where its outer tail starts
    (two SEIPD body lengths, across a multiple of 8192, give the object's size): one where
    the true length is the shorter, one where it is the longer. The SKESK packet is 15
    bytes; the SEIPD body is the version, 18 bytes of prefix, the literal packet and the
    22-byte MDC."""
    found: dict[bool, int] = {}
    for n in range(40 * 8192, 60 * 8192):
        body = 42 + Chunked(0, 6 + n, 8192).end
        if 8 <= body % 8192 < 8192 - 8:
            continue
        totals = _totals(16 + Chunked(0, body, 8192).end, 16)
        if len(totals) > 1 and min(totals) // 8192 != max(totals) // 8192:
            found.setdefault(body == min(totals), n)
        if len(found) == 2:
            return list(found.values())
    raise AssertionError("no ambiguous sizes found")


def _totals(object_size: int, start: int) -> list[int]:
    rest = object_size - start
    return [
        b
        for b in range(rest - rest // 8192 - 20, rest)
        if Chunked(start, b, 8192).end == object_size
    ]


@pytest.fixture(scope="module")
def gpgs(keyring: Any) -> dict[str, Gpg]:
    symmetric = Gpg(keyring.home, KeySpec(SYMMETRIC, "", PASSPHRASE))
    # a cheap passphrase hash (the count is in the pack): gpg's default takes ~1 s a pack here
    symmetric.raw.options = ["--s2k-count", "65536"]
    return {PUBKEY: Gpg(keyring.home, KeySpec(PUBKEY, keyring.fingerprint)), SYMMETRIC: symmetric}


@pytest.fixture(scope="module")
def samples(gpgs: dict[str, Gpg], tmp_path_factory: pytest.TempPathFactory) -> list[Sample]:
    rnd = random.Random(20240611)
    out = []
    cases = [(m, n) for m in (PUBKEY, SYMMETRIC) for n in SIZES]
    cases += [(SYMMETRIC, n) for n in _ambiguous_sizes()]
    path = str(tmp_path_factory.mktemp("packs") / "pack")
    for mode, n in cases:
        data = rnd.randbytes(n)
        obj = _encrypt(gpgs[mode], data, path, rnd)
        head = obj[:HEAD_BYTES]
        key = session_key(gpgs[mode], head)
        out.append(Sample(mode, gpgs[mode], data, obj, key, layout(head, key, len(obj), n)))
    return out


# --- the facts: a plain walk of the whole message ---------------------------------------


def _length(buf: bytes, pos: int) -> tuple[int, int, bool]:
    c = buf[pos]
    if c < 192:
        return c, 1, True
    if c < 224:
        return ((c - 192) << 8) + buf[pos + 1] + 192, 2, True
    assert c != 255, "gpg wrote a 5-octet length"
    return 1 << (c & 0x1F), 1, False


def _chunks(buf: bytes, pos: int) -> tuple[list[tuple[int, bool]], bytes, int]:
    """Walk a chunked body from its first header: (sizes and finality, body, end)."""
    sizes, parts = [], []
    while True:
        n, hlen, final = _length(buf, pos)
        sizes.append((n, final))
        parts.append(buf[pos + hlen : pos + hlen + n])
        pos += hlen + n
        if final:
            return sizes, b"".join(parts), pos


def _model(total: int) -> list[tuple[int, bool]]:
    items = list(Chunked(0, total, 8192).walk())
    return [(size, i == len(items) - 1) for i, (_, size, _, _) in enumerate(items)]


def _cfb(key: SessionKey, data: bytes) -> bytes:
    from cryptography.hazmat.decrepit.ciphers.modes import CFB
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms

    dec = Cipher(algorithms.AES(key.key), CFB(bytes(16))).decryptor()
    return dec.update(data) + dec.finalize()


def test_gpg_writes_packs_as_the_module_expects(samples: list[Sample]) -> None:
    for s in samples:
        obj, signed = s.obj, s.mode == PUBKEY
        pos = 0
        while obj[pos] != 0xD2:  # key packets (old format) up to the SEIPD packet
            assert (obj[pos] >> 2) & 0xF == (1 if signed else 3)
            assert obj[pos] & 3 == 0
            pos += 2 + obj[pos + 1]
        assert s.lay.outer_start == pos + 1
        sizes, body, end = _chunks(obj, pos + 1)
        assert end == len(obj)
        assert len(body) < 8192 or obj[pos + 1] == 0xED  # 8192-byte chunks
        assert sizes == _model(len(body)), (s.mode, len(s.data), sizes)
        assert body[0] == 1  # SEIPD version 1
        assert s.key.algo == 9 and len(s.key.key) == 32  # AES256
        pt = _cfb(s.key, body[1:])
        assert pt[14:16] == pt[16:18]  # quick check
        pos = 18
        if signed:  # one-pass signature packet, old format, 13 bytes
            assert pt[pos : pos + 2] == b"\x90\x0d"
            pos += 15
        assert pt[pos] == 0xCB  # literal data, new format
        assert s.lay.inner.start == pos + 1
        sizes, literal, end = _chunks(pt, pos + 1)
        assert sizes == _model(len(literal)), (s.mode, len(s.data), sizes)
        assert literal[:2] == b"b\x00" and s.lay.literal_header == 6
        assert literal[6:] == s.data
        assert s.lay.inner.end == end
        if signed:
            assert pt[end] in (0x88, 0x89, 0xC2)  # signature packet
        assert pt[-22:-20] == b"\xd3\x14" and (signed or end == len(pt) - 22)  # MDC


def test_the_tail_decomposition_example() -> None:
    assert [size for _, size, _, _ in Chunked(0, 3 * 8192 + 3532, 8192).walk()] == [
        *[8192] * 3,
        *[2048, 1024, 460],
    ]
    assert [size for _, size, _, _ in Chunked(0, 8192, 8192).walk()] == [8192, 0]


def test_gpg_shows_the_session_key_only_from_the_first_full_chunk(
    samples: list[Sample],
) -> None:
    s = next(s for s in samples if s.mode == PUBKEY and len(s.data) > MiB)
    first = s.lay.outer_start + 1 + 8192  # the key packets and the first chunk
    assert session_key(s.gpg, s.obj[:first]) == s.key
    cmd = s.gpg.raw.make_args(["--show-session-key", "--decrypt"], False)
    proc = subprocess.run(cmd, input=s.obj[: first - 200], capture_output=True, timeout=60)
    assert b"SESSION_KEY" not in proc.stderr
    with pytest.raises(LayoutError):
        session_key(s.gpg, s.obj[: first - 1])


# --- ranged extraction -------------------------------------------------------------------


def _fetch(obj: bytes, rngs: list[tuple[int, int]]) -> dict[int, bytes]:
    for off, n in rngs:
        assert off >= 0 and n > 0 and off + n <= len(obj)
    return {off: obj[off : off + n] for off, n in rngs}


def _spans(s: Sample, rnd: random.Random) -> Iterator[tuple[int, int]]:
    n = len(s.data)
    if n == 0:
        return
    yield from [(0, n), (0, 1), (n - 1, n), (0, min(n, 17)), (max(0, n - 100), n)]
    inner = s.lay.inner
    for body, size, _, _ in inner.walk():  # every literal chunk boundary (and 16-byte block)
        d = body - s.lay.literal_header
        for a, b in [(d - 1, d + 1), (d, d + 1), (d - 1, d), (d - 16, d + 16), (d, d + size)]:
            if 0 <= a < b <= n and rnd.random() < 0.05 + 10 * 8192 / (n + 1):
                yield a, b
    for _ in range(40):
        length = min(n, int(2 ** rnd.uniform(0, 24)))
        start = rnd.randrange(n - length + 1)
        yield start, start + length


def test_every_span_comes_back_exactly(samples: list[Sample]) -> None:
    rnd = random.Random(7)
    for s in samples:
        for a, b in _spans(s, rnd):
            got = extract(s.lay, s.key, _fetch(s.obj, ranges(s.lay, [(a, b)])), [(a, b)])
            assert got == [s.data[a:b]], (s.mode, len(s.data), a, b)


def test_many_spans_in_one_fetch(samples: list[Sample]) -> None:
    rnd = random.Random(8)
    for s in samples:
        n = len(s.data)
        cuts = sorted({0, n, *(rnd.randrange(n + 1) for _ in range(30))})
        spans = [(a, b) for a, b in zip(cuts, cuts[1:], strict=False) if rnd.random() < 0.5]
        spans.append((n, n))
        fetched = list(_fetch(s.obj, ranges(s.lay, spans)).items())
        assert extract(s.lay, s.key, fetched, spans) == [s.data[a:b] for a, b in spans]


def test_a_small_span_fetches_little(samples: list[Sample]) -> None:
    s = next(s for s in samples if len(s.data) > 8 * MiB)
    n = len(s.data)
    for a in (0, 1, n // 3, n // 2 + 8190, n - 40 * KiB, n - 9000, n - 100):
        for b in (a + 1, a + 100, min(n, a + 5000)):
            rngs = ranges(s.lay, [(a, b)])
            assert sum(size for _, size in rngs) < b - a + 40 * KiB, (a, b, rngs)
            assert extract(s.lay, s.key, _fetch(s.obj, rngs), [(a, b)]) == [s.data[a:b]]


def test_ranges_coalesce_near_spans_only(samples: list[Sample]) -> None:
    s = next(s for s in samples if len(s.data) > 8 * MiB)
    assert len(ranges(s.lay, [(1000, 2000), (5000, 6000), (20000, 21000)])) == 1
    assert len(ranges(s.lay, [(1000, 2000), (1 << 20, (1 << 20) + 1)])) == 2
    assert ranges(s.lay, [(5, 5)]) == []
    with pytest.raises(ValueError):
        ranges(s.lay, [(0, len(s.data) + 1)])


def test_missing_bytes_are_an_error(samples: list[Sample]) -> None:
    s = next(s for s in samples if len(s.data) > 8 * MiB)
    span = (100_000, 200_000)
    [(off, n)] = ranges(s.lay, [span])
    with pytest.raises(LayoutError):
        extract(s.lay, s.key, {off: s.obj[off : off + n - 1]}, [span])
    with pytest.raises(LayoutError):
        extract(s.lay, s.key, {off + 1: s.obj[off + 1 : off + n]}, [span])


# --- wrong keys, damage, wrong sizes -------------------------------------------------------


def _big(samples: list[Sample], mode: str) -> Sample:
    return next(s for s in samples if s.mode == mode and len(s.data) == 3 * MiB + 7)


@pytest.mark.parametrize("mode", [PUBKEY, SYMMETRIC])
def test_a_wrong_session_key_is_refused(samples: list[Sample], mode: str) -> None:
    s = _big(samples, mode)
    for key in (SessionKey(9, bytes(32)), SessionKey(7, s.key.key[:16])):
        with pytest.raises(LayoutError, match="quick check"):
            layout(s.obj[:HEAD_BYTES], key, len(s.obj), len(s.data))
    with pytest.raises(LayoutError):
        SessionKey(10, bytes(32))  # Twofish


def test_a_wrong_passphrase_or_keyring_is_wrong_key(samples: list[Sample], keyring: Any) -> None:
    s = _big(samples, SYMMETRIC)
    with pytest.raises(WrongKey):
        session_key(Gpg(keyring.home, KeySpec(SYMMETRIC, "", "wrong")), s.obj[:HEAD_BYTES])
    p = _big(samples, PUBKEY)
    home = tempfile.mkdtemp(prefix="bgpr", dir="/tmp")
    try:
        os.chmod(home, 0o700)
        with pytest.raises(WrongKey):
            session_key(Gpg(home, KeySpec(PUBKEY, keyring.fingerprint)), p.obj[:HEAD_BYTES])
    finally:
        subprocess.run(["gpgconf", "--homedir", home, "--kill", "all"], check=False)
        shutil.rmtree(home, ignore_errors=True)


@pytest.mark.parametrize("mode", [PUBKEY, SYMMETRIC])
def test_a_damaged_head_is_refused(samples: list[Sample], mode: str) -> None:
    s = _big(samples, mode)
    head, start = s.obj[:HEAD_BYTES], s.lay.outer_start

    def flip(pos: int, value: int | None = None) -> bytes:
        b = bytearray(head)
        b[pos] = b[pos] ^ 0x01 if value is None else value
        return bytes(b)

    with pytest.raises(BlanketError):  # a damaged key packet: gpg cannot decrypt it
        session_key(s.gpg, flip(start - 5))
    for damaged, why in [
        (flip(start - 1, 0xD4), "AEAD"),
        (flip(start - 1, 0xC9), "without MDC"),
        (flip(start, 0xEE), "past the first chunk"),  # 16 KiB chunks
        (flip(start + 1), "unknown version"),
        (flip(start + 2 + 15), "quick check"),
        (flip(start + 2 + 18), "packet"),  # the first inner packet's tag
        (flip(start + 2 + s.lay.inner.start), "not chunked as expected"),
    ]:
        with pytest.raises(LayoutError, match=why):
            layout(damaged, s.key, len(s.obj), len(s.data))


@pytest.mark.parametrize("mode", [PUBKEY, SYMMETRIC])
def test_wrong_sizes_are_refused(samples: list[Sample], mode: str) -> None:
    s = _big(samples, mode)
    head, n, size = s.obj[:HEAD_BYTES], len(s.data), len(s.obj)
    for object_size, data_size in [
        (size, n + 1),
        (size, n - 1),
        (size, n + 8192),
        (size + 1, n),
        (size - 1, n),
        (size + 8193, n),
    ]:
        with pytest.raises(LayoutError):  # at once, or where the tail is read
            lay = layout(head, s.key, object_size, data_size)
            tail = [(min(n, data_size) - 10, min(n, data_size))]
            fetched = _fetch(s.obj + bytes(8193), ranges(lay, tail))
            extract(lay, s.key, fetched, tail)


def test_a_small_pack_is_checked_whole_from_its_head(samples: list[Sample]) -> None:
    s = next(s for s in samples if s.mode == PUBKEY and len(s.data) == 100)
    for n in (99, 101):
        with pytest.raises(LayoutError, match="not chunked as expected"):
            layout(s.obj, s.key, len(s.obj), n)


def test_the_packet_after_the_literal_data_is_checked(samples: list[Sample]) -> None:
    s = _big(samples, PUBKEY)
    lay, n = replace(s.lay, next_tag=19), len(s.data)
    span = (n // 2, n // 2 + 10)
    assert extract(lay, s.key, _fetch(s.obj, ranges(lay, [span])), [span]) == [
        s.data[span[0] : span[1]]
    ]
    with pytest.raises(LayoutError, match="does not end where expected"):
        extract(lay, s.key, _fetch(s.obj, ranges(lay, [(n - 10, n)])), [(n - 10, n)])


def test_damage_in_the_fetched_bytes(samples: list[Sample]) -> None:
    s = _big(samples, PUBKEY)
    span = (1_000_000, 1_100_000)
    [(off, data)] = _fetch(s.obj, ranges(s.lay, [span])).items()

    def extract_damaged(pos: int) -> bytes:
        damaged = bytearray(data)
        damaged[pos - off] ^= 0x40
        return extract(s.lay, s.key, {off: bytes(damaged)}, [span])[0]

    # a data byte: wrong plaintext, caught by the caller's hash check
    got = extract_damaged(s.lay.outer_pos(s.lay.inner.pos(6 + 1_050_000) + 1))
    assert got != s.data[1_000_000:1_100_000] and len(got) == 100_000
    k = (off - s.lay.outer_start) // 8193 + 3  # a (cleartext) SEIPD chunk header
    with pytest.raises(LayoutError, match="encrypted data chunk header"):
        extract_damaged(s.lay.outer_start + k * 8193)
    k = (6 + 1_050_000) // 8192  # a literal chunk header (decrypts to another value)
    with pytest.raises(LayoutError, match="literal data chunk header"):
        extract_damaged(s.lay.outer_pos(s.lay.inner.start + k * 8193 + 1))


def test_compressed_or_non_aes_packs_are_refused(gpgs: dict[str, Gpg]) -> None:
    g = gpgs[SYMMETRIC]
    data = random.Random(3).randbytes(50_000)
    zipped = g.raw.encrypt(
        data, None, symmetric="AES256", passphrase=PASSPHRASE, armor=False,
        extra_args=["--compress-algo", "zlib"],
    )  # fmt: skip
    assert zipped.ok
    key = session_key(g, zipped.data[:HEAD_BYTES])
    with pytest.raises(LayoutError, match="compressed"):
        layout(zipped.data[:HEAD_BYTES], key, len(zipped.data), len(data))
    twofish = g.raw.encrypt(data, None, symmetric="TWOFISH", passphrase=PASSPHRASE, armor=False)
    with pytest.raises(LayoutError, match="algorithm"):
        session_key(g, twofish.data[:HEAD_BYTES])


def test_an_outer_tail_the_size_does_not_determine(samples: list[Sample]) -> None:
    for s in samples[-2:]:
        assert len(_totals(len(s.obj), s.lay.outer_start)) > 1
        n = len(s.data)
        for span in [(n - 1, n), (n - 9000, n - 8000), (n - 16500, n - 16400), (n - 20000, n)]:
            fetched = _fetch(s.obj, ranges(s.lay, [span]))
            assert extract(s.lay, s.key, fetched, [span]) == [s.data[span[0] : span[1]]]
