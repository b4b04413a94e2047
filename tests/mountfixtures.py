"""The mount tests' fixtures (``pytest_plugins = ["mountfixtures"]``): the environment
of a ``blanket`` process, the mounts a test makes (all unmounted at its end, whatever
happened to their processes) and a repository with history to mount."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from mountutil import Mounts, backup, new_repo
from test_end_to_end import mutate
from treeutil import make_awkward_tree, xattrs_supported


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
