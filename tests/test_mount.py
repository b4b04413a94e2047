"""``blanket mount``: real FUSE (libfuse 3 through mfusepy), real gpg, real stores.

Every test mounts for real with the ``blanket`` command in a process of its own and
compares what ordinary tools see through the mount with what ``restore`` writes for the
same point. The ``mounts`` fixture unmounts whatever a test leaves mounted, whatever
happened to the process. Data is small: the awkward tree (tests/treeutil.py) and a few
folders of random bytes.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from test_end_to_end import mutate
from treeutil import link_groups, make_awkward_tree, snapshot, xattrs_supported

from blanket.backends import open_backend
from blanket.backup import BackupOptions, run_backup
from blanket.crypto import PUBKEY, KeySpec
from blanket.repo import Repository, init_repository
from blanket.restore.fuselib import use_libfuse3
from blanket.restore.run import RestoreOptions, run_restore
from blanket.units import parse_at

use_libfuse3()
FUSE_LIB = os.environ.get("FUSE_LIBRARY_PATH")
pytestmark = pytest.mark.skipif(
    not (os.path.exists("/dev/fuse") and shutil.which("fusermount3") and FUSE_LIB),
    reason="needs /dev/fuse, fusermount3 and libfuse 3 (bash scripts/setup.sh installs fuse3)",
)

# the tools below cannot read device nodes or FIFOs through a FUSE mount (nodev, no
# writer): diff and cmp skip them; the metadata comparison covers them
SPECIAL = ("wombat-null", "mongoose.fifo")
WAIT = 60.0


@dataclass
class Mount:
    proc: subprocess.Popen[str]
    point: Path
    out: str = ""
    err: str = ""

    def stop(self, sig: int = signal.SIGTERM) -> int:
        """Signal the mount and wait for it; its exit code."""
        self.proc.send_signal(sig)
        self.out, self.err = self.proc.communicate(timeout=WAIT)
        return self.proc.returncode

    def summary(self) -> dict[str, object]:
        lines = [json.loads(x) for x in self.out.splitlines() if x.startswith("{")]
        return next(x for x in lines if x["type"] == "summary")


def mounted(point: Path) -> bool:
    with open("/proc/mounts") as f:
        return any(line.split()[1] == str(point) for line in f)


@dataclass
class Mounts:
    env: dict[str, str]
    made: list[Mount] = field(default_factory=list)

    def __call__(self, point: Path, *urls: str, extra: tuple[str, ...] = ()) -> Mount:
        point.mkdir(exist_ok=True)
        args = [sys.executable, "-m", "blanket", "mount", "--json", *extra]
        for url in urls:
            args += ["--repo", url]
        proc = subprocess.Popen(
            [*args, str(point)],
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        m = Mount(proc, point)
        self.made.append(m)
        deadline = time.monotonic() + WAIT
        while not mounted(point):
            if proc.poll() is not None:
                m.out, m.err = proc.communicate()
                raise AssertionError(f"the mount ended with {proc.returncode}: {m.err}")
            assert time.monotonic() < deadline, "the mount did not come up"
            time.sleep(0.05)
        return m

    def cleanup(self) -> None:
        for m in self.made:
            if m.proc.poll() is None:
                m.proc.kill()
                m.proc.communicate(timeout=WAIT)
            if mounted(m.point):
                subprocess.run(["fusermount3", "-uz", str(m.point)], check=False)


@pytest.fixture
def env(keyring, tmp_path: Path) -> dict[str, str]:
    full = dict(os.environ)
    full.update(GNUPGHOME=keyring.home, BLANKET_STATE_DIR=str(tmp_path / "state"))
    return full


@pytest.fixture
def mounts(env: dict[str, str]) -> Iterator[Mounts]:
    made = Mounts(env)
    try:
        yield made
    finally:
        made.cleanup()


def new_repo(url: str, keyring) -> Repository:
    init_repository(open_backend(url), keyring.home, KeySpec(PUBKEY, keyring.fingerprint), now=1)
    return Repository.open(open_backend(url), keyring.home)


def backup(repo: Repository, src: Path, **opts: object) -> None:
    result = run_backup(repo, str(src), BackupOptions(**opts))  # type: ignore[arg-type]
    assert result.warnings == []


def restored(repos: list[Repository], target: Path, **at: int | None) -> Path:
    result = run_restore(repos, RestoreOptions(str(target), [], **at))  # type: ignore[arg-type]
    assert result.problems == []
    return target


def read(path: Path) -> tuple[int, bytes, str]:
    """``cat`` in a process of its own, so a hung mount fails the test, not the run."""
    proc = subprocess.run(["cat", str(path)], capture_output=True, timeout=WAIT)
    return proc.returncode, proc.stdout, proc.stderr.decode(errors="replace")


def assert_same(expected: Path, seen: Path) -> None:
    assert snapshot(seen) == snapshot(expected)
    assert link_groups(seen) == link_groups(expected)
    excluded = [x for name in SPECIAL for x in ("-x", name)]
    diff = subprocess.run(
        ["diff", "-r", "--no-dereference", *excluded, str(expected), str(seen)],
        capture_output=True,
        text=True,
        timeout=WAIT,
    )
    assert diff.returncode == 0, diff.stdout + diff.stderr


@pytest.fixture
def history(keyring, tmp_path: Path) -> tuple[str, Path]:
    """A local repository of the awkward tree: layer 0, layer 1 after many changes, and a
    partial layer 2; split files (1 MiB packs) and several commits per layer."""
    url = str(tmp_path / "repo")
    repo = new_repo(url, keyring)
    src = tmp_path / "src"
    make_awkward_tree(src)
    backup(repo, src, pack_size=1 << 20)
    mutate(src, xattrs_supported(tmp_path))
    backup(repo, src, pack_size=1 << 20)
    (src / "new-top").write_bytes(b"changed in the partial layer\n")
    (src / "giraffe-5M.bin").unlink()
    backup(repo, src, pack_size=64 << 10, max_bytes=1)
    return url, src


# --- every point is what restore gives ------------------------------------------------


def test_every_point_equals_restore_of_it(
    history: tuple[str, Path], keyring, mounts: Mounts, tmp_path: Path
) -> None:
    url, _ = history
    repo = Repository.open(open_backend(url), keyring.home)
    repo.refresh()
    layers = sorted({h.layer for h in repo.packs})
    assert layers == [0, 1, 2] and not repo.packs[-1].complete
    m = mounts(tmp_path / "mnt", url)
    top = m.point
    assert sorted(os.listdir(top)) == ["at", "latest", "layers"]
    assert sorted(os.listdir(top / "layers")) == ["0", "1", "2"]
    times = sorted(os.listdir(top / "at"))
    assert len(times) == len({h.created for h in repo.packs})
    for layer in layers:
        assert_same(
            restored([repo], tmp_path / f"r{layer}", at_layer=layer), top / f"layers/{layer}"
        )
    assert_same(restored([repo], tmp_path / "latest"), top / "latest")
    for name in (times[0], times[len(times) // 2], times[-1]):  # points inside layers
        at_time = parse_at(name)[1]
        assert_same(restored([repo], tmp_path / f"at-{name}", at_time=at_time), top / "at" / name)
    # the partial layer is part of latest, and an old version is still there
    assert (top / "latest/new-top").read_bytes() == b"changed in the partial layer\n"
    assert not (top / "latest/giraffe-5M.bin").exists()
    assert (top / "layers/1/giraffe-5M.bin").stat().st_size == 5 << 20
    assert m.stop() == 0
    assert not mounted(m.point)


def test_cp_a_out_of_the_mount_equals_restore(
    history: tuple[str, Path], keyring, mounts: Mounts, tmp_path: Path
) -> None:
    url, _ = history
    repo = Repository.open(open_backend(url), keyring.home)
    m = mounts(tmp_path / "mnt", url, extra=("--cache-size", "256K"))  # evicts as it goes
    expected = restored([repo], tmp_path / "r1", at_layer=1)
    copied = tmp_path / "copied"
    subprocess.run(["cp", "-a", f"{m.point}/layers/1/.", str(copied)], check=True, timeout=WAIT)
    # the cache keeps to its bound, give or take the frame just fetched (packs are 1 MiB)
    cached = sum(p.stat().st_size for p in (tmp_path / "state").glob("*/mount/*/*.tar"))
    assert 0 < cached <= (256 << 10) + (1100 << 10)
    assert snapshot(copied) == snapshot(expected)
    assert link_groups(copied) == link_groups(expected)
    if shutil.which("rsync"):
        synced = tmp_path / "synced"
        subprocess.run(
            ["rsync", "-aHAX", f"{m.point}/layers/1/", str(synced)], check=True, timeout=WAIT
        )
        assert snapshot(synced) == snapshot(expected)
    assert m.stop(signal.SIGINT) == 0
    summary = m.summary()
    assert summary["bytes_fetched"] > 0


def test_listing_reads_no_pack(history: tuple[str, Path], mounts: Mounts, tmp_path: Path) -> None:
    """find, ls -l and xattrs of every point come from the indexes: nothing is fetched."""
    url, _ = history
    m = mounts(tmp_path / "mnt", url)
    for args in (["find", str(m.point)], ["ls", "-lRa", str(m.point)]):
        subprocess.run(args, check=True, capture_output=True, timeout=WAIT)
    assert os.readlink(m.point / "layers/0/links/relative")
    points = 1 + len(os.listdir(m.point / "layers")) + len(os.listdir(m.point / "at"))
    assert m.stop() == 0
    summary = m.summary()
    assert summary["bytes_fetched"] == 0 and summary["frames_fetched"] == 0
    assert summary["points_built"] == points


def test_listing_the_points_builds_no_tree(
    history: tuple[str, Path], mounts: Mounts, tmp_path: Path
) -> None:
    """ls -l of layers/ and at/ (stat and xattrs of every point) replays no whole tree:
    a repository has one at/ folder per commit."""
    url, _ = history
    m = mounts(tmp_path / "mnt", url)
    for folder in ("", "layers", "at"):
        subprocess.run(["ls", "-la", str(m.point / folder)], check=True, capture_output=True)
        for name in os.listdir(m.point / folder):
            os.listxattr(m.point / folder / name)
    assert m.stop() == 0
    assert m.summary()["points_built"] == 0


# --- reading only what is needed ----------------------------------------------------


def folders(root: Path, count: int = 12, seed: int = 3) -> None:
    rnd = random.Random(seed)
    for d in range(count):
        (root / f"folder{d:02d}").mkdir(parents=True)
        for i in range(4):
            (root / f"folder{d:02d}/file{i}").write_bytes(rnd.randbytes(40_000))


def test_a_read_fetches_only_its_frame(keyring, mounts: Mounts, tmp_path: Path) -> None:
    url = str(tmp_path / "repo")
    repo = new_repo(url, keyring)
    src = tmp_path / "src"
    folders(src)
    backup(repo, src)
    repo.refresh()
    (pack,) = repo.packs
    assert len(pack.frames) >= 12
    m = mounts(tmp_path / "mnt", url)
    code, data, _ = read(m.point / "latest/folder07/file2")
    assert code == 0 and data == (src / "folder07/file2").read_bytes()
    assert m.stop() == 0
    fetched = m.summary()["bytes_fetched"]
    assert isinstance(fetched, int) and 0 < fetched < pack.data_size // 4


# --- the process ends: signals, SIGKILL, remount --------------------------------------


def test_past_layer_read_then_sigkill_and_remount(
    history: tuple[str, Path], mounts: Mounts, env: dict[str, str], tmp_path: Path
) -> None:
    url, _ = history
    point = tmp_path / "mnt"
    m = mounts(point, url)
    code, old, _ = read(point / "layers/0/d/other.txt")
    assert code == 0 and old != b"other, edited and longer\n"
    m.proc.kill()
    m.proc.communicate(timeout=WAIT)
    with pytest.raises(OSError) as dead:
        os.stat(point / "latest")
    assert dead.value.errno == errno.ENOTCONN
    again = subprocess.run(
        [sys.executable, "-m", "blanket", "mount", "--repo", url, str(point)],
        env=env,
        capture_output=True,
        text=True,
        timeout=WAIT,
    )
    assert again.returncode == 2
    assert again.stderr.count("\n") == 1 and "fusermount3 -u" in again.stderr
    subprocess.run(["fusermount3", "-u", str(point)], check=True)
    m2 = mounts(point, url)
    code, data, _ = read(point / "layers/0/d/other.txt")
    assert code == 0 and data == old
    assert (point / "layers/1/d/other.txt").read_bytes() == b"other, edited and longer\n"
    assert m2.stop() == 0


@pytest.mark.parametrize("why", ["missing", "not-empty", "a-file"])
def test_bad_mount_point_is_one_line_exit_2(
    history: tuple[str, Path], env: dict[str, str], tmp_path: Path, why: str
) -> None:
    url, _ = history
    point = tmp_path / "point"
    if why == "not-empty":
        point.mkdir()
        (point / "x").write_text("x")
    elif why == "a-file":
        point.write_text("x")
    proc = subprocess.run(
        [sys.executable, "-m", "blanket", "mount", "--repo", url, str(point)],
        env=env,
        capture_output=True,
        text=True,
        timeout=WAIT,
    )
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and str(point) in proc.stderr
    assert not mounted(point)


# --- trouble: damaged packs, a store that goes away, a mesh ------------------------------


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


def test_profile_names_the_repository_and_keyring(
    history: tuple[str, Path], keyring, mounts: Mounts, tmp_path: Path
) -> None:
    url, src = history
    config = tmp_path / "config.toml"
    config.write_text(
        f'[profiles.home]\nsource = "{src}"\nrepository = "{url}"\ngnupghome = "{keyring.home}"\n'
    )
    mounts.env.pop("GNUPGHOME")
    m = mounts(tmp_path / "mnt", extra=("--config", str(config), "--profile", "home"))
    assert (m.point / "latest/new-top").read_bytes() == b"changed in the partial layer\n"
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
