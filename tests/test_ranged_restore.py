"""Restoring one folder reads only the frames that hold it, and never trusts them blindly.

Real gpg, real zstd, real stores (a local folder, moto's S3). The trees here are one big
pack of many folders, so reading the whole pack for one folder would be many times its
size; each test checks both the bytes read and the restored files.
"""

from __future__ import annotations

import os
import random
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from moto import mock_aws
from test_backends import fake_aws_env, serialize_moto

from blanket.backends import open_backend
from blanket.backup import BackupOptions, run_backup
from blanket.crypto import SYMMETRIC, KeySpec
from blanket.repo import Repository, init_repository
from blanket.restore.run import RestoreOptions, RestoreResult, run_restore

FOLDERS = 24
PACK = BackupOptions(pack_size=64 << 20)


def make_folders(root: Path, seed: int = 1) -> dict[str, int]:
    """FOLDERS folders of 3-8 incompressible files (66-320 kB a folder); their sizes."""
    rng = random.Random(seed)
    sizes = {}
    for d in range(FOLDERS):
        folder = root / f"folder{d:02d}"
        folder.mkdir(parents=True)
        total = 0
        for i in range(rng.randrange(3, 9)):
            n = rng.randrange(22_000, 40_000)
            (folder / f"file{i}.bin").write_bytes(rng.randbytes(n))
            total += n
        sizes[folder.name] = total
    (root / "top.txt").write_bytes(b"top\n")
    return sizes


def same_tree(a: Path, b: Path) -> None:
    names_a = sorted(p.relative_to(a) for p in a.rglob("*"))
    names_b = sorted(p.relative_to(b) for p in b.rglob("*"))
    assert names_a == names_b
    for rel in names_a:
        if (a / rel).is_file():
            assert (a / rel).read_bytes() == (b / rel).read_bytes(), rel


def restore(
    repo: Repository | list[Repository], to: Path, *paths: bytes, workers: int | None = None
) -> RestoreResult:
    return run_restore(repo, RestoreOptions(str(to), list(paths), workers=workers))


def backed_up(repo: Repository, src: Path) -> dict[str, int]:
    sizes = make_folders(src)
    result = run_backup(repo, str(src), PACK)
    assert result.complete and result.packs == 1
    assert len(repo.headers[-1].frames) >= FOLDERS
    return sizes


def test_one_folder_reads_little_more_than_itself(repo: Repository, tmp_path: Path) -> None:
    src = tmp_path / "src"
    sizes = backed_up(repo, src)
    pack = repo.headers[-1].data_size
    for name in ("folder00", "folder11", f"folder{FOLDERS - 1:02d}"):
        out = tmp_path / f"out-{name}"
        result = restore(repo, out, name.encode())
        assert result.problems == []
        same_tree(src / name, out / name)
        assert result.packs_read == 1
        # the folder's own bytes (incompressible), the head, chunk and block rounding
        assert result.pack_bytes_read <= 1.3 * sizes[name] + 48_000, (name, result)
        assert result.pack_bytes_read < pack / 4
    # a whole restore still reads the whole pack, once
    result = restore(repo, tmp_path / "all")
    assert result.pack_bytes_read == pack
    same_tree(src, tmp_path / "all")


def test_a_damaged_frame_is_never_used(
    repo: Repository, repo_url: str, tmp_path: Path, workers: int
) -> None:
    """Flip a byte inside the folder's frames: the frame hash catches it, the whole pack
    is then tried (and found damaged), and the restore says so: no wrong file."""
    src = tmp_path / "src"
    backed_up(repo, src)
    h = repo.headers[-1]
    data = Path(repo_url) / h.data_key
    good = data.read_bytes()
    probe = tmp_path / "probe"
    read_ok = restore(repo, probe, b"folder12", workers=workers).pack_bytes_read
    assert read_ok < len(good) / 4
    # the frames of folder12 lie about in the middle of the pack, where the entries are
    listed = repo.entries(h.seq)
    first = next(i for i, e in enumerate(listed) if e.path.startswith(b"folder12/"))
    k = max(j for j, f in enumerate(h.frames) if f.first <= first)
    offset = sum(f.size for f in h.frames[:k]) + h.frames[k].size // 2
    damaged = bytearray(good)
    damaged[offset + 400] ^= 0x10  # the ciphertext is a little longer than the plaintext
    data.chmod(0o644)
    data.write_bytes(bytes(damaged))
    out = tmp_path / "out"
    result = restore(repo, out, b"folder12", workers=workers)
    assert result.problems, "the damage went unnoticed"
    for _path, message in result.problems:
        assert h.data_key in message or "does not match" in message, message
    restored = list((out / "folder12").glob("*")) if (out / "folder12").exists() else []
    for p in restored:  # whatever was written is right
        assert p.read_bytes() == (src / "folder12" / p.name).read_bytes()
    assert len(restored) < len(list((src / "folder12").glob("*")))


def test_a_mirror_serves_the_frames_a_damaged_copy_cannot(
    repo: Repository, repo_url: str, keyring: Any, tmp_path: Path, workers: int
) -> None:
    src = tmp_path / "src"
    backed_up(repo, src)
    mirror = tmp_path / "mirror"
    shutil.copytree(repo_url, mirror)
    h = repo.headers[-1]
    data = Path(repo_url) / h.data_key
    damaged = bytearray(data.read_bytes())
    for i in range(2000, len(damaged), 4096):  # everywhere
        damaged[i] ^= 0xFF
    data.chmod(0o644)
    data.write_bytes(bytes(damaged))
    second = Repository.open(open_backend(str(mirror)), keyring.home)
    out = tmp_path / "out"
    result = restore([repo, second], out, b"folder05", workers=workers)
    assert result.problems == []
    same_tree(src / "folder05", out / "folder05")
    assert result.pack_bytes_read < h.data_size / 2  # ranges from both copies, not whole


def test_passphrase_repository(keyring: Any, tmp_path: Path) -> None:
    url = str(tmp_path / "repo")
    init_repository(open_backend(url), keyring.home, KeySpec(SYMMETRIC, "", "pass word"), now=1)
    repo = Repository.open(open_backend(url), keyring.home, "pass word")
    src = tmp_path / "src"
    sizes = backed_up(repo, src)
    out = tmp_path / "out"
    result = restore(repo, out, b"folder07")
    assert result.problems == []
    same_tree(src / "folder07", out / "folder07")
    assert result.pack_bytes_read <= 1.3 * sizes["folder07"] + 48_000


@pytest.fixture
def s3_url(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[str]:
    fake_aws_env(monkeypatch, tmp_path)
    serialize_moto(monkeypatch)
    with mock_aws():
        url = "s3://ranged-bucket/some/prefix"
        open_backend(url).create()
        yield url


def test_s3_serves_ranges(s3_url: str, keyring: Any, tmp_path: Path) -> None:
    from blanket.crypto import PUBKEY

    init_repository(open_backend(s3_url), keyring.home, KeySpec(PUBKEY, keyring.fingerprint), now=1)
    repo = Repository.open(open_backend(s3_url), keyring.home)
    src = tmp_path / "src"
    sizes = backed_up(repo, src)
    out = tmp_path / "out"
    result = restore(repo, out, b"folder20")
    assert result.problems == []
    same_tree(src / "folder20", out / "folder20")
    assert result.pack_bytes_read <= 1.3 * sizes["folder20"] + 48_000
    assert os.path.exists(out / "folder20" / "file0.bin")


def test_split_files_and_their_neighbours(repo: Repository, tmp_path: Path, workers: int) -> None:
    """A folder next to a split file reads only its frames; a whole restore, with the
    split file, is exact and reads no pack more than twice (a pack holding a part and
    other files is read for each)."""
    src = tmp_path / "src"
    make_folders(src)
    rng = random.Random(9)
    # its last part shares a pack with small files, which are under half of that pack
    (src / "folder03" / "big.bin").write_bytes(rng.randbytes((3 << 20) + (700 << 10)))
    result = run_backup(repo, str(src), BackupOptions(pack_size=1 << 20))
    assert result.complete and result.packs > 4
    assert any(e.kind == "P" for h in repo.headers for e in repo.entries(h.seq))
    part = restore(repo, tmp_path / "part", b"folder10", workers=workers)
    assert part.problems == []
    same_tree(src / "folder10", tmp_path / "part" / "folder10")
    holding = [
        h.data_size
        for h in repo.headers
        if any(e.path.startswith(b"folder10/") for e in repo.entries(h.seq))
    ]
    assert part.pack_bytes_read < sum(holding) / 2
    biggest = max(h.data_size for h in repo.headers)
    out = tmp_path / "out"
    restored = restore(repo, out, workers=workers)
    assert restored.problems == []
    same_tree(src, out)
    total = sum(h.data_size for h in repo.headers)
    assert total <= restored.pack_bytes_read <= total + biggest
