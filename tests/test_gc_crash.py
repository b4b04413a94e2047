"""gc survives being killed at any step: after a crash at each of its store calls, the
latest state restores exactly, the chain still verifies, and the next gc finishes."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

from test_crash import CRASHED, CountingBackend, _Counter

from blanket.backends.local import LocalBackend
from blanket.backup import BackupOptions, run_backup
from blanket.gc import run_gc
from blanket.repo import Repository
from blanket.restore.run import RestoreOptions, run_restore


def _files(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


def child_gc(
    url: str,
    home: str,
    crash_at: int | None,
    count_file: Path,
    *,
    cap: int = 1,
    keep_history: bool = False,
) -> int:
    """Run gc in a child process that dies at store call ``crash_at`` (None: never);
    a run that finishes writes how many store calls it made to ``count_file``."""
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child
        code = 1
        try:
            counter = _Counter(crash_at)
            repo = Repository.open(CountingBackend(LocalBackend(url), counter), home)
            run_gc(repo, cap=cap, keep_history=keep_history)
            count_file.write_text(str(counter.count))
            code = 0
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


def test_gc_killed_at_any_store_call_leaves_a_sound_repository(
    repo: Repository, repo_url: str, keyring: Any, tmp_path: Path
) -> None:
    def reopen() -> Repository:
        return Repository.open(LocalBackend(repo_url), keyring.home)

    src = tmp_path / "src"
    src.mkdir()
    for i in range(6):
        (src / f"f{i}").write_bytes(os.urandom(20_000))
    run_backup(repo, str(src), BackupOptions(pack_size=16 << 10))
    (src / "f0").write_bytes(os.urandom(20_000))
    run_backup(reopen(), str(src), BackupOptions(pack_size=16 << 10))
    run_gc(reopen(), cap=1)  # layer 0 expires
    (src / "f1").write_bytes(os.urandom(20_000))
    run_backup(reopen(), str(src), BackupOptions(pack_size=16 << 10))  # refreshes it
    latest = _files(src)
    before = reopen()
    before.refresh()
    layer0 = {h.data_key for h in before.packs if h.layer == 0}
    assert len(layer0) > 1
    pristine = tmp_path / "pristine"
    shutil.copytree(repo_url, pristine / "repo")
    shutil.copytree(os.environ["BLANKET_STATE_DIR"], pristine / "state")

    def reset() -> None:
        shutil.rmtree(repo_url)
        shutil.rmtree(os.environ["BLANKET_STATE_DIR"])
        shutil.copytree(pristine / "repo", repo_url)
        shutil.copytree(pristine / "state", os.environ["BLANKET_STATE_DIR"])

    count_file = tmp_path / "count"
    assert child_gc(repo_url, keyring.home, None, count_file) == 0
    points = int(count_file.read_text())
    assert points > 10
    for i in range(1, points + 1):
        reset()
        assert child_gc(repo_url, keyring.home, i, count_file) == CRASHED, f"point {i}"
        after = reopen()
        after.refresh()  # strict: the chain is sound right after the crash
        out = tmp_path / f"crash{i}"
        result = run_restore(after, RestoreOptions(str(out)))
        assert result.problems == [] and _files(out) == latest, f"point {i}"
        shutil.rmtree(out)
        finished = run_gc(reopen(), cap=1)
        left = {k for k in layer0 if (Path(repo_url) / k).exists()}
        assert not left, f"point {i}: {left} still there after the next gc {finished.warnings}"
    print(f"{points} crash points in gc, all survived")
