"""Hostile packs: validly signed by the repository key (as a compromised or buggy client
could write them), holding paths and links meant to escape the target. Nothing may be
written outside the target, and each is reported."""

from __future__ import annotations

import hashlib
import os
from dataclasses import replace
from pathlib import Path
from typing import Any

from blanket import model
from blanket.backends.local import LocalBackend
from blanket.backup import BackupOptions, run_backup
from blanket.indexfmt import render_index
from blanket.model import Entry
from blanket.packer import PackWriter
from blanket.repo import Repository
from blanket.restore.run import RestoreOptions, run_restore


def _commit(
    repo: Repository,
    items: list[tuple[Entry, bytes | None]],
    claim: Any = None,
) -> None:
    """Commit a pack holding exactly ``items`` (entry, content), signed as usual; its
    index lists ``claim(entries)`` when given (an index that lies about the pack)."""
    repo.refresh()
    last = repo.packs[-1]
    writer = PackWriter(repo.gpg, str(repo.state.spool_dir))
    for e, content in items:
        if content is None:
            writer.add_meta(e)
        else:
            writer.add_file(e, iter([content]))
    header = replace(
        last,
        seq=repo.next_seq(),
        layer=last.layer + 1,
        layer_pack=0,
        full=False,
        clock_from=None,
        complete=True,
        created=last.created + 10**9,
        entries=len(writer.entries),
        prev_index_sha256=repo.last_hash(),
        data_key="",
        data_size=0,
        data_sha256="",
    )
    listed = claim(writer.entries) if claim else writer.entries
    sealed = writer.seal(render_index(header, listed, with_data=False))
    repo.commit(sealed, header, listed)


def _file(path: bytes, content: bytes, since: int = 2 * 10**18) -> Entry:
    return Entry(
        model.FILE,
        path,
        mode=0o644,
        size=len(content),
        sha256=hashlib.sha256(content).hexdigest(),
        since=since,
    )


def _setup(repo: Repository, tmp_path: Path) -> Path:
    src = tmp_path / "src"
    src.mkdir()
    (src / "good.txt").write_text("good")
    run_backup(repo, str(src), BackupOptions())
    return src


def _restore_elsewhere(
    repo_url: str, keyring: Any, tmp_path: Path, workers: int
) -> tuple[Path, Any]:
    """Restore on a machine that only knows the store (nothing cached)."""
    os.environ["BLANKET_STATE_DIR"] = str(tmp_path / "other-machine")
    repo = Repository.open(LocalBackend(repo_url), keyring.home)
    target = tmp_path / "sandbox" / "target"
    return target, run_restore(repo, RestoreOptions(str(target), workers=workers))


def _outside(tmp_path: Path) -> set[str]:
    sandbox = tmp_path / "sandbox"
    return {
        str(p.relative_to(sandbox))
        for p in sandbox.rglob("*")
        if not str(p.relative_to(sandbox)).startswith("target")
    }


def test_escaping_paths_in_a_signed_index_are_refused(
    repo: Repository, repo_url: str, keyring: Any, tmp_path: Path, workers: int
) -> None:
    _setup(repo, tmp_path)
    _commit(repo, [(_file(b"../escape", b"evil"), b"evil")])
    target, result = _restore_elsewhere(repo_url, keyring, tmp_path, workers=workers)
    assert _outside(tmp_path) == set()
    assert (target / "good.txt").read_text() == "good"
    assert any("malformed" in m for _, m in result.problems)


def test_absolute_paths_are_refused(
    repo: Repository, repo_url: str, keyring: Any, tmp_path: Path, workers: int
) -> None:
    _setup(repo, tmp_path)
    victim = tmp_path / "sandbox" / "absolute"
    _commit(repo, [(_file(os.fsencode(victim), b"evil"), b"evil")])
    target, result = _restore_elsewhere(repo_url, keyring, tmp_path, workers=workers)
    assert not victim.exists() and result.problems


def test_a_file_through_a_symlink_and_links_to_outside_go_nowhere(
    repo: Repository, repo_url: str, keyring: Any, tmp_path: Path, workers: int
) -> None:
    _setup(repo, tmp_path)
    outside = tmp_path / "sandbox" / "outside"
    outside.mkdir(parents=True)
    (outside / "secret").write_text("keep me")
    t = 2 * 10**18
    items: list[tuple[Entry, bytes | None]] = [
        (Entry(model.SYMLINK, b"a-link", mode=0o777, target=os.fsencode(outside), since=t), None),
        (_file(b"a-link/secret", b"overwritten"), b"overwritten"),
        (Entry(model.SYMLINK, b"b-sym", mode=0o777, target=b"/etc/passwd", since=t), None),
        (Entry(model.HARDLINK, b"c-hard", mode=0o644, target=b"b-sym", since=t), None),
    ]
    _commit(repo, items)
    target, result = _restore_elsewhere(repo_url, keyring, tmp_path, workers=workers)
    assert (outside / "secret").read_text() == "keep me"
    assert _outside(tmp_path) == {"outside", "outside/secret"}
    assert os.readlink(target / "a-link") == os.fsencode(outside).decode()
    assert not (target / "c-hard").exists()
    assert any(p == b"c-hard" for p, _ in result.problems)


def test_a_hard_link_to_outside_is_refused(
    repo: Repository, repo_url: str, keyring: Any, tmp_path: Path, workers: int
) -> None:
    _setup(repo, tmp_path)
    t = 2 * 10**18
    _commit(repo, [(Entry(model.HARDLINK, b"h", target=b"../../etc/passwd", since=t), None)])
    target, result = _restore_elsewhere(repo_url, keyring, tmp_path, workers=workers)
    assert not (target / "h").exists() and result.problems


def test_absurd_declared_sizes_are_reported_and_never_written(
    repo: Repository, repo_url: str, keyring: Any, tmp_path: Path, workers: int
) -> None:
    _setup(repo, tmp_path)
    _commit(
        repo,
        [(_file(b"huge", b"tiny"), b"tiny")],
        claim=lambda entries: [replace(e, size=10**15) for e in entries],
    )
    target, result = _restore_elsewhere(repo_url, keyring, tmp_path, workers=workers)
    assert not (target / "huge").exists()
    assert any(p == b"huge" for p, _ in result.problems)
    assert not any(p.name.startswith(".blanket-tmp") for p in target.rglob("*"))
    assert (target / "good.txt").read_text() == "good"
