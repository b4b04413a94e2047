"""Helpers for the key tests: run gpg on a keyring, make keyrings and trees."""

from __future__ import annotations

import os
import subprocess
import tempfile
from pathlib import Path


def gpg(home: str, *args: str, data: bytes | None = None, check: bool = True) -> bytes:
    proc = subprocess.run(
        ["gpg", "--batch", "--homedir", home, *args], input=data, capture_output=True, check=False
    )
    if check:
        assert proc.returncode == 0, proc.stderr.decode()
    return proc.stdout


def new_home(prefix: str) -> str:
    home = tempfile.mkdtemp(prefix=prefix, dir="/tmp")  # short: gpg-agent's socket path
    os.chmod(home, 0o700)
    return home


def kill_agent(home: str) -> None:
    subprocess.run(["gpgconf", "--homedir", home, "--kill", "all"], check=False)


def make_tree(root: Path, files: int = 12, size: int = 30_000, seed: int = 0) -> None:
    for i in range(files):
        d = root / f"d{i % 3}"
        d.mkdir(parents=True, exist_ok=True)
        (d / f"f{i}.bin").write_bytes(os.urandom(size) if i % 2 else bytes([seed + i]) * size)
    (root / "secret.txt").write_bytes(b"the password is swordfish\n")


def decrypts(home: str, path: Path) -> bool:
    """Whether gpg with keyring ``home`` decrypts the object (whatever its signature)."""
    proc = subprocess.run(
        ["gpg", "--batch", "--status-fd", "2", "--homedir", home, "--decrypt", str(path)],
        capture_output=True,
        check=False,
    )
    return b"[GNUPG:] DECRYPTION_OKAY" in proc.stderr
