"""Shared by the mount tests: a real ``blanket mount`` in a process of its own
(:class:`Mounts`, whose fixture is in mountfixtures.py), repositories to mount, reading
through the mount with a time limit, and comparing a mounted point with a restore."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from treeutil import link_groups, snapshot

from blanket.backends import open_backend
from blanket.backup import BackupOptions, run_backup
from blanket.crypto import PUBKEY, KeySpec
from blanket.repo import Repository, init_repository
from blanket.restore.fuselib import use_libfuse3
from blanket.restore.run import RestoreOptions, run_restore

use_libfuse3()
needs_fuse = pytest.mark.skipif(
    not (
        os.path.exists("/dev/fuse")
        and shutil.which("fusermount3")
        and os.environ.get("FUSE_LIBRARY_PATH")
    ),
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
        polls = int(WAIT / 0.05)  # a bounded number of looks, not a clock
        while not mounted(point):
            if proc.poll() is not None:
                m.out, m.err = proc.communicate()
                raise AssertionError(f"the mount ended with {proc.returncode}: {m.err}")
            polls -= 1
            assert polls > 0, "the mount did not come up"
            time.sleep(0.05)
        return m

    def cleanup(self) -> None:
        for m in self.made:
            if m.proc.poll() is None:
                m.proc.kill()
                m.proc.communicate(timeout=WAIT)
            if mounted(m.point):
                subprocess.run(["fusermount3", "-uz", str(m.point)], check=False)


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


def folders(root: Path, count: int = 12, seed: int = 3) -> None:
    rnd = random.Random(seed)
    for d in range(count):
        (root / f"folder{d:02d}").mkdir(parents=True)
        for i in range(4):
            (root / f"folder{d:02d}/file{i}").write_bytes(rnd.randbytes(40_000))
