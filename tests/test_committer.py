"""The committer keeps ``depth`` packs in flight: the run goes on while they commit."""

from __future__ import annotations

import threading
from typing import Any, cast

import pytest

from blanket.committer import Committer, Sealed
from blanket.errors import BlanketError
from blanket.indexfmt import IndexHeader


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
