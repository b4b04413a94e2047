"""``blanket mount`` in trouble: a damaged pack gives EIO for its files only (never
wrong bytes) and is reported once; a mesh reads any intact copy; a local or S3 store
that goes away midway gives EIO, not a hang, and serves again when it is back; versions
gc removed are absent and counted. Real FUSE, gpg and stores (tests/mountutil.py).
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from mountutil import (
    Mounts,
    assert_same,
    backup,
    folders,
    needs_fuse,
    new_repo,
    read,
    restored,
)
from treeutil import snapshot

from blanket.backends import open_backend
from blanket.backup import BackupOptions, run_backup
from blanket.repo import Repository
from blanket.restore.run import RestoreOptions, run_restore
from blanket.units import parse_at

pytest_plugins = ["mountfixtures"]
pytestmark = needs_fuse


def test_damaged_pack_gives_eio_for_its_files_only(keyring, mounts: Mounts, tmp_path: Path) -> None:
    url = str(tmp_path / "repo")
    repo = new_repo(url, keyring)
    src = tmp_path / "src"
    folders(src, count=3)
    backup(repo, src)
    (src / "folder01/file1").write_bytes(b"second version\n")
    (src / "late").mkdir()
    (src / "late/new").write_bytes(b"new in layer 1\n")
    backup(repo, src)
    repo.refresh()
    first = repo.packs[0].data_key
    blob = bytearray((Path(url) / first).read_bytes())
    for at in range(20_000, len(blob), 20_000):  # every frame of the first pack
        blob[at] ^= 0xFF
    (Path(url) / first).write_bytes(bytes(blob))
    m = mounts(tmp_path / "mnt", url)
    for _ in range(2):
        code, data, err = read(m.point / "latest/folder02/file0")
        assert code != 0 and data == b"" and "Input/output error" in err
    assert read(m.point / "latest/folder01/file1")[1] == b"second version\n"
    assert read(m.point / "latest/late/new")[1] == b"new in layer 1\n"
    assert sorted(os.listdir(m.point / "layers/0/folder02")) == [f"file{i}" for i in range(4)]
    assert m.stop() == 0
    warnings = [json.loads(x) for x in m.out.splitlines() if '"warning"' in x]
    assert len([w for w in warnings if first in str(w["path"])]) == 1


def test_mesh_with_one_damaged_copy_reads_everything(
    history: tuple[str, Path], keyring, mounts: Mounts, tmp_path: Path
) -> None:
    url, _ = history
    copy = str(tmp_path / "copy")
    shutil.copytree(url, copy)
    for name in sorted(os.listdir(Path(url) / "data")):  # every pack damaged in the first
        path = Path(url) / "data" / name
        blob = bytearray(path.read_bytes())
        blob[-100] ^= 0xFF
        path.write_bytes(bytes(blob))
    repo = Repository.open(open_backend(copy), keyring.home)
    m = mounts(tmp_path / "mnt", url, copy)
    assert_same(restored([repo], tmp_path / "r1", at_layer=1), m.point / "layers/1")
    assert m.stop() == 0


def test_local_store_gone_midway_gives_eio_then_recovers(
    keyring, mounts: Mounts, tmp_path: Path
) -> None:
    url = str(tmp_path / "repo")
    repo = new_repo(url, keyring)
    src = tmp_path / "src"
    folders(src, count=4)
    backup(repo, src)
    m = mounts(tmp_path / "mnt", url)
    assert read(m.point / "latest/folder00/file0")[1] == (src / "folder00/file0").read_bytes()
    os.rename(url, url + "-away")
    code, data, err = read(m.point / "latest/folder03/file1")
    assert code != 0 and data == b"" and "Input/output error" in err
    # what was read before is still there; listings need no store
    assert read(m.point / "latest/folder00/file0")[0] == 0
    assert sorted(os.listdir(m.point / "latest/folder03")) == [f"file{i}" for i in range(4)]
    os.rename(url + "-away", url)
    assert read(m.point / "latest/folder03/file1")[1] == (src / "folder03/file1").read_bytes()
    assert m.stop() == 0


@pytest.fixture
def moto_server() -> Iterator[tuple[str, object]]:
    from moto.server import ThreadedMotoServer

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield f"http://127.0.0.1:{port}", server
    finally:
        with contextlib.suppress(Exception):  # the test may have stopped it
            server.stop()


def test_s3_store_unreachable_midway_gives_eio_not_a_hang(
    keyring,
    mounts: Mounts,
    env: dict[str, str],
    moto_server: tuple[str, object],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    endpoint, server = moto_server
    aws = {
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_ACCESS_KEY_ID": "test",
        "AWS_SECRET_ACCESS_KEY": "test",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_CONFIG_FILE": str(tmp_path / "no-aws-config"),
        "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "no-aws-credentials"),
    }
    for k, v in aws.items():
        monkeypatch.setenv(k, v)
    env.update(aws)
    url = "s3://mount-bucket/repo"
    backend = open_backend(url)
    backend.create()
    repo = new_repo(url, keyring)
    src = tmp_path / "src"
    folders(src, count=4)
    backup(repo, src)
    m = mounts(tmp_path / "mnt", url)
    assert read(m.point / "latest/folder01/file0")[1] == (src / "folder01/file0").read_bytes()
    expected = restored([repo], tmp_path / "r")
    server.stop()  # type: ignore[attr-defined]
    code, data, err = read(m.point / "latest/folder03/file2")
    assert code != 0 and data == b"" and "Input/output error" in err
    assert read(m.point / "latest/folder01/file0")[1] == (expected / "folder01/file0").read_bytes()
    assert m.stop() == 0


def test_versions_gc_removed_are_absent_and_counted(
    keyring, mounts: Mounts, tmp_path: Path
) -> None:
    """After the cap made gc expire layers, an old point shows what restore --at gives
    (versions gc removed are absent, never wrong) and the mount says how many."""
    from test_gc import _round, _store_size

    url = str(tmp_path / "repo")
    repo = new_repo(url, keyring)
    rng = random.Random(3)
    src = tmp_path / "src"
    (src / "docs").mkdir(parents=True)
    for i in range(30):
        (src / "docs" / f"note{i:02d}.txt").write_bytes(rng.randbytes(1500))
    (src / "big.bin").write_bytes(rng.randbytes(150_000))
    opts = BackupOptions(pack_size=64 << 10)
    run_backup(repo, str(src), opts)
    opts.cap = 4 * _store_size(url)
    for n in range(1, 16):
        _round(src, rng, n)
        result = run_backup(Repository.open(open_backend(url), keyring.home), str(src), opts)
        if result.gc and result.gc.deleted_layers and n >= 6:
            break
    repo = Repository.open(open_backend(url), keyring.home)
    repo.refresh()
    layers = sorted({h.layer for h in repo.packs})
    assert layers[0] > 0, "gc expired no layer"
    m = mounts(tmp_path / "mnt", url)
    assert sorted(os.listdir(m.point / "layers"), key=int) == [str(n) for n in layers]
    folders = [f"layers/{n}" for n in layers] + [f"at/{t}" for t in os.listdir(m.point / "at")]
    lost: dict[str, int] = {}
    for i, folder in enumerate(folders):
        layer, when = parse_at(folder.split("/")[1])
        out = tmp_path / f"expected{i}"
        opts = RestoreOptions(str(out), at_layer=layer, at_time=when)
        problems = run_restore([repo], opts).problems
        assert all("removed by gc" in why for _, why in problems)
        lost[folder] = len(problems)
        assert snapshot(m.point / folder) == snapshot(out), folder
    assert m.stop() == 0
    said = {
        w["path"]: w["message"]
        for w in (json.loads(x) for x in m.out.splitlines() if "removed by gc" in x)
    }
    assert said == {
        folder: f"{k} version(s) of this point were removed by gc with an expired "
        "layer: absent, not wrong"
        for folder, k in lost.items()
        if k
    }
    assert any(lost.values()), "no point lost a version to gc"
