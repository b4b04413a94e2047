"""Shared fixtures: a real gpg keyring with throwaway keys, repositories, the real CLI, and a
real S3 engine (SeaweedFS, see seaweed.py)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import seaweed

from blanket.backends import open_backend
from blanket.crypto import PUBKEY, KeySpec, generate_key
from blanket.repo import Repository, init_repository


@dataclass(frozen=True)
class Keyring:
    home: str  # short path: gpg-agent's socket must fit in sun_path
    fingerprint: str
    other: str  # a second secret key in the same keyring (not the repository's)


@pytest.fixture(scope="session")
def keyring() -> Iterator[Keyring]:
    home = tempfile.mkdtemp(prefix="bgpg", dir="/tmp")
    os.chmod(home, 0o700)
    fpr = generate_key(home, "blanket test key")
    other = generate_key(home, "another key")
    yield Keyring(home, fpr, other)
    subprocess.run(["gpgconf", "--homedir", home, "--kill", "all"], check=False)
    shutil.rmtree(home, ignore_errors=True)


@pytest.fixture(scope="session")
def seaweedfs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[seaweed.Seaweed]:
    """One SeaweedFS (``weed mini``) per test process, started on first use: each xdist
    worker has its own. Fails (never skips) when it cannot start."""
    store = seaweed.start(tmp_path_factory.mktemp("seaweedfs"))
    yield store
    store.stop()


@pytest.fixture
def seaweed_env(seaweedfs: seaweed.Seaweed, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """This process talks to the test's SeaweedFS as its admin (``AWS_*`` set, the
    machine's AWS settings hidden); returns those variables for a ``cli(..., env=)``."""
    for name in seaweed.UNSET:
        monkeypatch.delenv(name, raising=False)
    env = seaweedfs.env()
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return env


@pytest.fixture(autouse=True)
def _isolated_state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every test gets its own local state folder."""
    monkeypatch.setenv("BLANKET_STATE_DIR", str(tmp_path / "state"))


@pytest.fixture
def repo_url(tmp_path: Path) -> str:
    return str(tmp_path / "repo")


@pytest.fixture
def repo(keyring: Keyring, repo_url: str) -> Repository:
    """A fresh local repository, opened."""
    backend = open_backend(repo_url)
    init_repository(backend, keyring.home, KeySpec(PUBKEY, keyring.fingerprint), now=1)
    return Repository.open(open_backend(repo_url), keyring.home)


@dataclass
class Run:
    code: int
    out: str
    err: str


@pytest.fixture
def cli(keyring: Keyring, tmp_path: Path) -> object:
    """Run the real ``blanket`` command in a subprocess: ``cli("backup", ...)``."""

    def run(*args: str, env: dict[str, str] | None = None, check: int | None = None) -> Run:
        full_env = dict(os.environ)
        full_env["GNUPGHOME"] = keyring.home
        full_env["BLANKET_STATE_DIR"] = str(tmp_path / "state")
        full_env.update(env or {})
        proc = subprocess.run(
            [sys.executable, "-m", "blanket", *args],
            capture_output=True,
            text=True,
            env=full_env,
            timeout=300,
        )
        result = Run(proc.returncode, proc.stdout, proc.stderr)
        if check is not None:
            assert proc.returncode == check, (args, result)
        return result

    return run


@pytest.fixture(params=[0, 2], ids=["in-process", "2-workers"])
def workers(request: pytest.FixtureRequest) -> int:
    """How many processes a restore forks to write files (restore.workers): a test that
    takes this fixture runs both ways."""
    return int(request.param)
