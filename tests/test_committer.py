"""The committer keeps ``depth`` packs in flight: the run goes on while they commit; the
local state is written once per commit."""

from __future__ import annotations

import os
import sys
import threading
from pathlib import Path
from typing import Any, cast

import pytest

from blanket.backends.local import LocalBackend
from blanket.backup import BackupOptions, run_backup
from blanket.committer import Committer, Sealed
from blanket.errors import BlanketError
from blanket.indexfmt import IndexHeader
from blanket.repo import Repository


class _Sealing:
    def __init__(self) -> None:
        self.aborted = False

    def abort(self) -> None:
        self.aborted = True


def sealed(seq: int) -> Sealed:
    header = cast(IndexHeader, seq)  # the committer only hands it to ``commit``
    return Sealed(cast(Any, _Sealing()), header, [], {})


def test_submit_waits_only_for_what_is_over_the_depth() -> None:
    gate = threading.Event()
    committed: list[int] = []

    def commit(s: Sealed) -> IndexHeader:
        gate.wait(10)
        committed.append(cast(int, s.header))
        return s.header

    c = Committer(commit, lambda final, s: None, depth=2)
    # No commit can finish while the gate is shut: a submit under the depth that waited
    # for one would never return (the guard's timeout only keeps a regression from hanging).
    first: list[Any] = []
    under = threading.Thread(
        target=lambda: first.extend([c.submit(sealed(0)), c.submit(sealed(1))])
    )
    under.start()
    under.join(30)
    assert not under.is_alive(), "a submit under the depth waited for a commit"
    assert first == [[], []]
    assert committed == []
    third: list[Any] = []
    runner = threading.Thread(target=lambda: third.append(c.submit(sealed(2))))
    runner.start()
    runner.join(0.3)
    assert runner.is_alive(), "a submit over the depth did not wait"
    gate.set()
    runner.join(10)
    finished = third[0] + c.done(wait_for=-1)
    assert third[0][:1] == [0]  # it waited for the oldest (and took what else was done)
    assert finished == [0, 1, 2]
    c.close()
    assert committed == [0, 1, 2]


def test_after_a_failure_later_packs_are_refused_and_aborted() -> None:
    gate = threading.Event()

    def commit(s: Sealed) -> IndexHeader:
        gate.wait(10)
        if s.header == 0:
            raise BlanketError("store went away")
        return s.header

    c = Committer(commit, lambda final, s: None, depth=2)
    first, second = sealed(0), sealed(1)
    c.submit(first)
    c.submit(second)
    gate.set()
    with pytest.raises(BlanketError, match="store went away"):
        c.done(wait_for=-1)
    with pytest.raises(BlanketError, match="earlier pack"):
        c.done(wait_for=-1)
    c.close()
    assert cast(_Sealing, second.sealing).aborted


def test_the_local_state_is_written_once_per_commit(
    repo: Repository, repo_url: str, keyring: Any, tmp_path: Path
) -> None:
    """Counted in a forked child by an audit hook on renames (every state file is
    replaced atomically): ``state.json`` once per commit, plus once for the pass's end."""
    src = tmp_path / "src"
    src.mkdir()
    for i in range(12):
        (src / f"f{i:02d}").write_bytes(os.urandom(20_000))
    counts = tmp_path / "counts"
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child
        code = 1
        try:
            renamed: list[str] = []

            def hook(event: str, args: tuple[Any, ...]) -> None:
                if event == "os.rename":
                    renamed.append(os.fsdecode(args[1]))

            sys.addaudithook(hook)
            opened = Repository.open(LocalBackend(repo_url), keyring.home)
            result = run_backup(opened, str(src), BackupOptions(pack_size=24 << 10))
            states = sum(1 for p in renamed if p.endswith("state.json"))
            counts.write_text(f"{result.packs} {states}")
            code = 0
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    packs, states = map(int, counts.read_text().split())
    assert packs > 3
    assert states == packs + 1  # each commit's, and the end of the pass
