"""pgpstream: whole packs decrypted in-process with their session key, checked first.

Packs are written by the real gpg through blanket's own EncryptProcess (public-key and
symmetric mode), stored in real local and in-memory stores; what comes back is compared
with the data, and a damaged, truncated or swapped copy must give nothing at all.
"""

from __future__ import annotations

import hashlib
import os
import random
import subprocess
from pathlib import Path
from typing import Any

import pytest
import zstandard

from blanket.backends import open_backend
from blanket.backends.base import Backend
from blanket.backends.memory import MemoryBackend
from blanket.crypto import PUBKEY, SYMMETRIC, EncryptProcess, Gpg, KeySpec
from blanket.errors import IntegrityError, WrongKey
from blanket.indexfmt import IndexHeader
from blanket.pgpstream import (
    InStore,
    Sealed,
    fetch_sealed,
    fetch_sealed_from_any,
    load,
    open_source,
    remove,
)

MiB = 1 << 20
PASSPHRASE = "correct horse"
SIZES = [0, 1, 511, 8185, 8186, 8192, 65536 + 7, 3 * MiB + 7]
KEY = "data/00/0000000001"


@pytest.fixture(scope="module")
def gpgs(keyring: Any) -> dict[str, Gpg]:
    symmetric = Gpg(keyring.home, KeySpec(SYMMETRIC, "", PASSPHRASE))
    symmetric.raw.options = ["--s2k-count", "65536"]  # a cheap passphrase hash
    return {PUBKEY: Gpg(keyring.home, KeySpec(PUBKEY, keyring.fingerprint)), SYMMETRIC: symmetric}


def _encrypt(gpg: Gpg, data: bytes, path: Path) -> bytes:
    proc = EncryptProcess(gpg, str(path))
    rnd = random.Random(len(data))
    i = 0
    while i < len(data):  # irregular writes, as zstd's output comes
        n = rnd.choice([1, 511, 4096, 8193, 1 << 20])
        proc.write(data[i : i + n])
        i += n
    proc.finish()
    obj = path.read_bytes()
    path.unlink()
    return obj


def _header(obj: bytes, key: str = KEY) -> IndexHeader:
    return IndexHeader(
        "repo", 1, 0, 0, True, None, b"a", False, 1, "host", b"/src", 1, "",
        data_key=key, data_size=len(obj), data_sha256=hashlib.sha256(obj).hexdigest(),
    )  # fmt: skip


def _store(kind: str, tmp_path: Path) -> Backend:
    if kind == "memory":
        return MemoryBackend()
    (tmp_path / "store").mkdir()
    return open_backend(str(tmp_path / "store"))


def _read(source: Sealed | str) -> bytes:
    with open_source(source) as f:
        parts = []
        while piece := f.read(100_000):
            parts.append(piece)
    return b"".join(parts)


@pytest.mark.parametrize("mode", [PUBKEY, SYMMETRIC])
@pytest.mark.parametrize("store", ["local", "memory"])
def test_whole_packs_decrypt_without_gpg(
    gpgs: dict[str, Gpg], mode: str, store: str, tmp_path: Path
) -> None:
    backend = _store(store, tmp_path)
    work = tmp_path / "work"
    work.mkdir()
    rnd = random.Random(7)
    for n in SIZES:
        data = rnd.randbytes(n)
        obj = _encrypt(gpgs[mode], data, tmp_path / "pack")
        key = f"data/00/{n:010d}"
        backend.put(key, obj)
        read: list[int] = []
        source = fetch_sealed(backend, gpgs[mode], _header(obj, key), str(work), read.append)
        assert isinstance(source, Sealed), n  # read here, not by gpg
        assert sum(read) == len(obj)
        assert _read(source) == data, n
        remove(source)
        assert not list(work.iterdir())


def test_a_real_pack_reads_as_its_zstd_stream(gpgs: dict[str, Gpg], tmp_path: Path) -> None:
    data = os.urandom(200_000) + bytes(300_000)
    zst = zstandard.ZstdCompressor(level=3).compress(data)
    obj = _encrypt(gpgs[PUBKEY], zst, tmp_path / "pack")
    backend = MemoryBackend()
    backend.put(KEY, obj)
    source = fetch_sealed(backend, gpgs[PUBKEY], _header(obj), str(tmp_path))
    with open_source(source) as raw:
        reader = zstandard.ZstdDecompressor().stream_reader(raw, read_across_frames=True)
        assert reader.read() == data


@pytest.mark.parametrize(
    "damage",
    ["flip-head", "flip-middle", "flip-last", "truncate", "append", "swap"],
)
@pytest.mark.parametrize("store", ["local", "memory"])
def test_a_damaged_copy_gives_nothing(
    gpgs: dict[str, Gpg], damage: str, store: str, tmp_path: Path
) -> None:
    gpg = gpgs[PUBKEY]
    obj = _encrypt(gpg, os.urandom(100_000), tmp_path / "pack")
    other = _encrypt(gpg, os.urandom(100_000), tmp_path / "pack")
    bad = bytearray(obj)
    if damage.startswith("flip"):
        at = {"flip-head": 30, "flip-middle": len(obj) // 2, "flip-last": len(obj) - 1}[damage]
        bad[at] ^= 0x01
    elif damage == "truncate":
        del bad[-100:]
    elif damage == "append":
        bad += b"\0"
    else:
        bad = bytearray(other)
    backend = _store(store, tmp_path)
    backend.put(KEY, bytes(bad))
    work = tmp_path / "work"
    work.mkdir()
    with pytest.raises(IntegrityError, match="does not match its index"):
        fetch_sealed(backend, gpg, _header(obj), str(work))
    assert not list(work.iterdir())  # nothing left to be used


def test_a_mesh_takes_the_first_intact_copy(gpgs: dict[str, Gpg], tmp_path: Path) -> None:
    gpg = gpgs[PUBKEY]
    data = os.urandom(50_000)
    obj = _encrypt(gpg, data, tmp_path / "pack")
    damaged, missing, good = MemoryBackend(), MemoryBackend(), MemoryBackend()
    damaged.put(KEY, obj[:-1] + bytes([obj[-1] ^ 1]))
    good.put(KEY, obj)
    source = fetch_sealed_from_any([damaged, missing, good], gpg, _header(obj), str(tmp_path))
    assert _read(source) == data
    with pytest.raises(IntegrityError, match="no intact copy"):
        fetch_sealed_from_any([damaged, missing], gpg, _header(obj), str(tmp_path))


def test_a_pack_this_module_does_not_read_goes_to_gpg(
    gpgs: dict[str, Gpg], keyring: Any, tmp_path: Path
) -> None:
    """A compressed message (gpg's default, not what blanket writes): decrypted and
    checked by gpg, and handed back as the plaintext's path."""
    data = b"compressible " * 50_000
    plain, enc = tmp_path / "plain", tmp_path / "enc"
    plain.write_bytes(data)
    subprocess.run(
        ["gpg", "--homedir", keyring.home, "--batch", "--yes", "--trust-model", "always",
         "--compress-algo", "zlib", "--sign", "--encrypt", "-r", keyring.fingerprint,
         "-u", keyring.fingerprint, "-o", str(enc), str(plain)],
        check=True, capture_output=True,
    )  # fmt: skip
    obj = enc.read_bytes()
    backend = MemoryBackend()
    backend.put(KEY, obj)
    work = tmp_path / "work"
    work.mkdir()
    source = fetch_sealed(backend, gpgs[PUBKEY], _header(obj), str(work))
    assert isinstance(source, str)
    assert Path(source).read_bytes() == data
    assert [p.name for p in work.iterdir()] == [Path(source).name]


def test_a_pack_signed_by_another_key_matching_its_index_still_reads(
    gpgs: dict[str, Gpg], keyring: Any, tmp_path: Path
) -> None:
    """The hash against the signed index is what authenticates a pack here: the inner
    signature is not checked again (it stays for recovery by hand and verify --deep)."""
    other = Gpg(keyring.home, KeySpec(PUBKEY, keyring.other))
    data = os.urandom(20_000)
    obj = _encrypt(other, data, tmp_path / "pack")
    backend = MemoryBackend()
    backend.put(KEY, obj)
    source = fetch_sealed(backend, gpgs[PUBKEY], _header(obj), str(tmp_path))
    assert _read(source) == data


def test_a_wrong_key_is_a_wrong_key(gpgs: dict[str, Gpg], tmp_path: Path) -> None:
    obj = _encrypt(gpgs[SYMMETRIC], os.urandom(20_000), tmp_path / "pack")
    wrong = Gpg(gpgs[SYMMETRIC].raw.gnupghome, KeySpec(SYMMETRIC, "", "not it"))
    wrong.raw.options = ["--s2k-count", "65536"]
    backend = MemoryBackend()
    backend.put(KEY, obj)
    work = tmp_path / "work"
    work.mkdir()
    with pytest.raises(WrongKey):
        fetch_sealed(backend, wrong, _header(obj), str(work))
    assert not list(work.iterdir())


@pytest.mark.parametrize("mode", [PUBKEY, SYMMETRIC])
def test_a_local_pack_is_read_whole_by_its_reader(
    gpgs: dict[str, Gpg], mode: str, tmp_path: Path
) -> None:
    """A local store's pack is not copied: the reader reads it into memory, hashing it,
    and checks it there."""
    backend = _store("local", tmp_path)
    data = os.urandom(3 * MiB + 5)
    obj = _encrypt(gpgs[mode], data, tmp_path / "pack")
    backend.put(KEY, obj)
    work = tmp_path / "work"
    work.mkdir()
    read: list[int] = []
    found = fetch_sealed_from_any(
        [backend], gpgs[mode], _header(obj), str(work), read.append, in_place=True
    )
    assert isinstance(found, InStore) and sum(read) == len(obj)
    assert not list(work.iterdir())
    sealed = load(backend, found)
    assert _read(sealed) == data
    remove(sealed)
    assert (tmp_path / "store" / KEY).exists()  # the store's object is left alone


@pytest.mark.parametrize("change", ["flip", "grow", "head-forged-at-fetch"])
def test_a_local_pack_changed_after_it_was_found_gives_nothing(
    gpgs: dict[str, Gpg], change: str, tmp_path: Path
) -> None:
    """The store's file changes between the fetch (which took the session key from its
    head) and the read: the hash (or the head's) no longer matches, nothing is used."""
    gpg = gpgs[PUBKEY]
    backend = _store("local", tmp_path)
    obj = _encrypt(gpg, os.urandom(200_000), tmp_path / "pack")
    other = _encrypt(gpg, os.urandom(200_000), tmp_path / "pack")
    assert len(other) == len(obj)
    path = tmp_path / "store" / KEY
    if change == "head-forged-at-fetch":  # another pack's head (and key) while fetched,
        backend.put(KEY, other[:20_000] + obj[20_000:])  # the true pack when read
    else:
        backend.put(KEY, obj)
    found = fetch_sealed_from_any([backend], gpg, _header(obj), str(tmp_path), in_place=True)
    assert isinstance(found, InStore)
    path.chmod(0o644)
    if change == "flip":
        bad = bytearray(obj)
        bad[len(bad) // 2] ^= 1
        path.write_bytes(bytes(bad))
    elif change == "grow":
        path.write_bytes(obj + b"\0")
    else:
        path.write_bytes(obj)
    with pytest.raises(IntegrityError, match="does not match its index"):
        load(backend, found)


def test_a_truncated_local_copy_sends_the_mesh_to_the_next_store(
    gpgs: dict[str, Gpg], tmp_path: Path
) -> None:
    gpg = gpgs[PUBKEY]
    data = os.urandom(50_000)
    obj = _encrypt(gpg, data, tmp_path / "pack")
    local = _store("local", tmp_path)
    local.put(KEY, obj[:-10])
    good = MemoryBackend()
    good.put(KEY, obj)
    found = fetch_sealed_from_any([local, good], gpg, _header(obj), str(tmp_path), in_place=True)
    assert isinstance(found, Sealed) and _read(found) == data


def test_a_restore_runs_gpg_for_session_keys_only(
    repo: Any, repo_url: str, keyring: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The real restore, with worker processes: gpg (the real one, behind a logging
    shim first in PATH) gives each pack's session key and never decrypts a whole pack."""
    from blanket.backup import BackupOptions, run_backup
    from blanket.repo import Repository
    from blanket.restore.run import RestoreOptions, run_restore

    src = tmp_path / "src"
    (src / "d").mkdir(parents=True)
    files = {f"d/f{i}": os.urandom(300_000) for i in range(12)}
    for name, data in files.items():
        (src / name).write_bytes(data)
    result = run_backup(repo, str(src), BackupOptions(pack_size=1 << 20))
    assert result.packs >= 3
    real = subprocess.run(["which", "gpg"], capture_output=True, text=True).stdout.strip()
    shim, log = tmp_path / "bin", tmp_path / "gpg.log"
    shim.mkdir()
    (shim / "gpg").write_text(f'#!/bin/sh\necho "$*" >> {log}\nexec {real} "$@"\n')
    (shim / "gpg").chmod(0o755)
    monkeypatch.setenv("PATH", f"{shim}:{os.environ['PATH']}")
    fresh = Repository.open(open_backend(repo_url), keyring.home)
    out = tmp_path / "out"
    r = run_restore(fresh, RestoreOptions(str(out), workers=2))
    assert r.problems == [] and r.packs_read >= 3
    for name, data in files.items():
        assert (out / name).read_bytes() == data
    runs = log.read_text().splitlines()
    assert sum("--show-session-key" in run for run in runs) == r.packs_read
    assert not [run for run in runs if "--output" in run]  # no whole pack through gpg
